"""The command line for a person using it: evaluate's saved outputs and run settings, `list`,
`--version`, help examples, `--config`/`--print-config`, plain folders as data sets.

Expected values are computed here independently: PSNRs from the saved PNG files with numpy,
evaluation counts from the run's own settings, the configuration hash from compose_config.
"""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from benchmarks.cli import app
from benchmarks.compose import compose_config
from benchmarks.evaluate import evaluate_command
from n2n_core.methods import build_method
from n2n_core.noise import parse_style
from n2n_core.seeding import make_generator
from n2n_core.train.checkpoint import save_checkpoint

runner = CliRunner()


def _folder(root, sizes, seed=0):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(60, 200, (h, w, 3), dtype=np.uint8)).save(root / f"im{i}.png")
    return root


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255**2 / mse)


def test_save_outputs_writes_inputs_outputs_and_a_csv_that_matches_the_files(tmp_path, capsys):
    images = _folder(tmp_path / "set", [(40, 36), (33, 40)])
    saved = tmp_path / "saved"
    summary = evaluate_command(noise="gaussian25", dataset=f"folder:{images}", method="noisy", checkpoint=None,
                               repeats=2, seed=3, device="cpu", data_dir=tmp_path, progress=True,
                               save_outputs=saved)
    assert "4/4" in capsys.readouterr().err  # the bar has a total
    rows = list(csv.DictReader(open(summary["per_image_csv"])))
    assert [(r["image_id"], r["repeat"]) for r in rows] == [("im0", "0"), ("im0", "1"), ("im1", "0"), ("im1", "1")]
    for row in rows:
        clean = np.asarray(Image.open(images / f"{row['image_id']}.png"))
        noisy = np.asarray(Image.open(saved / f"{row['image_id']}-r{row['repeat']}-noisy.png"))
        out = np.asarray(Image.open(saved / f"{row['image_id']}-r{row['repeat']}-denoised.png"))
        assert noisy.shape == out.shape == clean.shape and np.array_equal(noisy, out)  # identity method
        assert float(row["psnr"]) == pytest.approx(_psnr(out, clean), abs=1e-6)
    repeat_0, repeat_1 = (np.asarray(Image.open(saved / f"im0-r{r}-noisy.png")) for r in (0, 1))
    assert not np.array_equal(repeat_0, repeat_1)  # each repeat has its own noise
    assert summary["psnr_mean"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]))


def test_save_outputs_is_reported_by_the_command(tmp_path):
    images = _folder(tmp_path / "set", [(32, 32)])
    result = runner.invoke(app, ["evaluate", "--noise", "gaussian25", "--dataset", f"folder:{images}",
                                 "--save-outputs", str(tmp_path / "saved")])
    assert result.exit_code == 0, result.output
    assert str((tmp_path / "saved").resolve()) in result.output and "psnr-folder_" in result.output


def _checkpoint(tmp_path, images):
    cfg = compose_config("smoke", "n2c", "gaussian25", [
        f'eval.sets=["folder:{images}"]', "eval.center_crop=64", "eval.max_images=1",
        f'eval.repeats={{"folder:{images}" = 2}}', "eval.seed=5"])
    method = build_method(cfg.method, parse_style(cfg.noise), cfg.data.channels)
    model = method.build_model(make_generator(0))
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"model": model.state_dict(), "ema": None, "meta": {"config": cfg.canonical_json()}}, path)
    return path


def test_a_checkpoint_is_scored_with_its_runs_evaluation_settings_unless_told_otherwise(tmp_path):
    images = _folder(tmp_path / "set", [(80, 72), (70, 70)])
    checkpoint = _checkpoint(tmp_path, images)
    common = dict(noise=None, method="noisy", checkpoint=checkpoint, repeats=None, seed=None, device="cpu",
                  data_dir=tmp_path, progress=False)
    own = evaluate_command(dataset=None, **common)
    assert own["dataset"] == f"folder:{images}" and own["center_crop"] == 64 and own["pad_to"] == 64
    assert own["n_images"] == 1 and own["repeats"] == 2 and own["n_evaluations"] == 2 and own["seed"] == 5
    whole = evaluate_command(dataset=None, **{**common, "repeats": 1}, center_crop=0, max_images=0)
    assert whole["center_crop"] is None and whole["pad_to"] == 96 and whole["n_evaluations"] == 2


TINY = ["train.budget_images=8", "train.patch_size=32", "train.batch_size=4", "train.validation_images=1",
        "train.validate_every_images=4", "train.checkpoint_every_images=4", "eval.max_images=1",
        "eval.center_crop=64"]


def _train(uri, out, *extra, track=True):
    args = ["train", "--method", "n2c", "--noise", "gaussian25", "--profile", "smoke",
            *[a for o in TINY for a in ("--set", o)], *extra, "--out", str(out), "--json",
            "--tracking-uri", uri, "--track" if track else "--no-track"]
    result = runner.invoke(app, args, env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5"})
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, data_dir):
    """One store: a tracked train, its rerun, and a tracked train that reuses an untracked checkpoint."""
    tmp = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    first = _train(uri, tmp / "run")
    again = _train(uri, tmp / "run")
    _train(uri, tmp / "reused", "--seed", "1", track=False)  # trained, never logged
    reused = _train(uri, tmp / "reused", "--seed", "1")
    return {"uri": uri, "tmp": tmp, "first": first, "again": again, "reused": reused}


def test_train_logs_a_run_like_a_grid_job_and_reruns_do_not_log_twice(tracked, data_dir):
    from benchmarks.mlflow_tracker import open_store

    client, experiment_id = open_store(tracked["uri"])
    run = client.get_run(tracked["first"]["mlflow_run_id"])
    cfg = compose_config("smoke", "n2c", "gaussian25", TINY)
    assert run.info.status == "FINISHED" and run.info.run_name == "n2c · gaussian25 · smoke"
    assert run.data.params == {k: str(v) for k, v in cfg.flat().items()}
    tags = run.data.tags
    assert (tags["variant"], tags["noise"], tags["profile"], tags["config_hash"]) == \
        ("n2c", "gaussian25", "smoke", cfg.config_hash())
    assert tags["run_dir"] == str((tracked["tmp"] / "run").resolve()) and tags["training_history"] == "full"
    assert tags["bm3d_version"] not in ("unknown", "missing")  # from the installed package's metadata
    assert 0 < run.data.metrics["psnr_kodak24"] < 60
    assert len(client.get_metric_history(run.info.run_id, "psnr_kodak24")) == 1  # logged once
    assert client.get_metric_history(run.info.run_id, "val_psnr")
    assert any(k.startswith("system/") for k in run.data.metrics)  # system metrics while training
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint.pt", "config.json", "psnr-kodak24.csv"} <= logged
    assert not any(name.startswith(".") for name in logged)  # not the run folder's .lock
    assert tracked["again"]["mlflow_run_id"] == run.info.run_id
    children = [r for r in client.search_runs([experiment_id]) if r.data.tags.get("config_hash") == cfg.config_hash()]
    assert len(children) == 1  # the rerun logged nothing new
    experiment = client.get_experiment(experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "psnr_" in experiment.tags["mlflow.note.content"]

    # the grid finds train's run and does not train the configuration again; its summary shows the
    # table, the files written, the store and the command that opens it
    results = tracked["tmp"] / "results"
    grid = runner.invoke(app, ["grid", "--noise", "gaussian25", "--profile", "smoke", "--methods", "n2c",
                               *[a for o in TINY for a in ("--set", o)], "--tracking-uri", tracked["uri"],
                               "--runs-dir", str(tracked["tmp"] / "runs"), "--out", str(results)])
    assert grid.exit_code == 0, grid.output
    assert "0 ran, 1 already finished" in grid.output and "| n2c |" in grid.output
    assert str((results / "psnr-gaussian25-smoke.md").resolve()) in grid.output
    db = (tracked["tmp"] / "mlflow.db").resolve()
    assert f"mlflow ui --backend-store-uri sqlite:///{db}" in grid.output
    assert (results / "index.html").is_file()


def test_the_logged_network_loads_with_mlflow_pytorch_and_matches_the_checkpoint(tracked):
    import mlflow

    from benchmarks.mlflow_tracker import _global_tracking_uri
    from benchmarks.scoring import load_trained

    run = mlflow.MlflowClient(tracked["uri"]).get_run(tracked["first"]["mlflow_run_id"])
    # not set_tracking_uri(previous): that would leave MLflow's cwd default in $MLFLOW_TRACKING_URI
    # for every later test of this process
    with _global_tracking_uri(tracked["uri"]):
        network = mlflow.pytorch.load_model(run.data.tags["network_model_uri"])
        info = mlflow.models.get_model_info(run.data.tags["network_model_uri"])
    _, _, reference = load_trained(tracked["tmp"] / "run" / "checkpoint.pt", torch.device("cpu"))
    x = torch.rand(2, 3, 32, 32, generator=make_generator(7))
    with torch.no_grad():
        assert torch.equal(network.eval()(x), reference(x))
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] in ([-1, 3, -1, -1], (-1, 3, -1, -1))
    assert json.loads(info.metadata["config"])["method"]["name"] == "n2c"


def test_a_reused_checkpoint_is_tagged_and_the_curves_name_it(tracked, tmp_path):
    from benchmarks import figures
    from benchmarks.mlflow_tracker import open_store
    from benchmarks.report_runs import finished_job_runs

    client, experiment_id = open_store(tracked["uri"])
    run = client.get_run(tracked["reused"]["mlflow_run_id"])
    assert run.data.tags["training_history"] == "none"
    assert not client.get_metric_history(run.info.run_id, "val_psnr")
    runs = [r for r in finished_job_runs(client, experiment_id) if r.run_id == run.info.run_id]
    assert figures.runs_without_curve(client, runs) == {"n2c": "reused a finished checkpoint, trained before it was logged"}
    written = figures.learning_curves(client, runs, "gaussian25", "smoke", tmp_path)
    assert [p.name for p in written] == ["curves-gaussian25-smoke.png"]  # a figure saying so, not nothing


def test_denoise_finds_a_runs_checkpoint_by_its_run_id(tracked, tmp_path):
    noisy = np.random.default_rng(8).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "photo.png")
    outputs = {}
    for how, value in (("--run", tracked["first"]["mlflow_run_id"]), ("--checkpoint", tracked["first"]["checkpoint"])):
        result = runner.invoke(app, ["denoise", how, value, str(tmp_path / "photo.png"), "--out", str(tmp_path / how[2:]),
                                     "--tracking-uri", tracked["uri"]])
        assert result.exit_code == 0, result.output
        outputs[how] = np.asarray(Image.open(tmp_path / how[2:] / "photo.png"))
    assert outputs["--run"].shape == noisy.shape and np.array_equal(outputs["--run"], outputs["--checkpoint"])
    import mlflow  # without its run folder, the checkpoint comes from the run's artefacts

    client, run_id = mlflow.MlflowClient(tracked["uri"]), tracked["first"]["mlflow_run_id"]
    folder = client.get_run(run_id).data.tags["run_dir"]
    client.set_tag(run_id, "run_dir", str(tmp_path / "moved-away"))
    try:
        result = runner.invoke(app, ["denoise", "--run", run_id, str(tmp_path / "photo.png"), "--out",
                                     str(tmp_path / "from-artefacts"), "--tracking-uri", tracked["uri"]])
    finally:
        client.set_tag(run_id, "run_dir", folder)
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "from-artefacts" / "photo.png")), outputs["--checkpoint"])
    missing = runner.invoke(app, ["denoise", "--run", "0" * 32, str(tmp_path / "photo.png"), "--out",
                                  str(tmp_path / "x"), "--tracking-uri", tracked["uri"]])
    assert missing.exit_code == 2 and "no run" in missing.output


def test_without_tracking_uri_train_and_grid_use_the_home_store_from_any_folder(tmp_path, monkeypatch):
    """No --tracking-uri, started in a folder that is not the home: the runs go to <home>/mlflow.db,
    the commands say so, and the grid's report finds its finished runs. (Logging the trained network
    once left MLflow's cwd-relative default in $MLFLOW_TRACKING_URI, and the store resolved after it
    was the current folder's.)"""
    import os

    import mlflow.tracking._tracking_service.utils as mlflow_uri_state

    from benchmarks.mlflow_tracker import open_store

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "x")  # recorded as unset, so undo removes a leaked value
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setattr(mlflow_uri_state, "_tracking_uri", None)  # MLflow's own global, restored after
    sets = [a for o in TINY for a in ("--set", o)]
    env = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5"}

    home = tmp_path / "home"
    monkeypatch.setenv("N2N_HOME", str(home))
    store = f"sqlite:///{(home / 'mlflow.db').resolve()}"
    trained = runner.invoke(app, ["train", "--method", "n2c", "--noise", "gaussian25", "--profile", "smoke",
                                  *sets, "--track"], env=env)
    assert trained.exit_code == 0, trained.output
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the process environment is as it was
    run_id = re.search(r"MLflow run (\w+) in the MLflow store (\S+);", trained.output)
    assert run_id and run_id.group(2) == store, trained.output
    client, _ = open_store(store)
    assert client.get_run(run_id.group(1)).info.status == "FINISHED"

    # another budget, so that the grid trains (and logs a network) itself instead of finding train's run
    grid = runner.invoke(app, ["grid", "--noise", "gaussian25", "--profile", "smoke", "--methods", "n2c", *sets,
                               "--set", "train.budget_images=4"], env=env)
    assert grid.exit_code == 0, grid.output
    assert "1 ran, 0 already finished" in grid.output and "| n2c |" in grid.output  # the report found it
    assert (home / "results" / "psnr-gaussian25-smoke.md").is_file()
    assert f"mlflow ui --backend-store-uri sqlite:///{(home / 'mlflow.db').resolve()}" in grid.output
    assert not list(elsewhere.iterdir())  # nothing in the current folder


def test_version_and_lists():
    from importlib import metadata

    from benchmarks.compose import available
    from n2n_core.methods import METHODS

    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"n2n-bench {metadata.version('n2n-bench')}"
    methods = runner.invoke(app, ["list", "methods"]).output
    for name in [*available("methods"), *METHODS]:
        assert f"  {name} " in methods, name
    assert "path/to/file.py:ClassName" in methods
    # a description spread over several comment lines is listed whole, up to its first sentence's end
    n2v2 = next(line for line in methods.splitlines() if line.startswith("  n2v2 "))
    assert "the U-Net with MaxBlurPool and no top-level skip (methods/n2v2.py)." in n2v2 and "Trained" not in n2v2
    assert all(line.split()[1:] for line in methods.splitlines() if line.startswith("  ")), "a name without its description"
    profiles = runner.invoke(app, ["list", "profiles"]).output
    assert all(f"  {name} " in profiles for name in available("profiles"))
    noise = runner.invoke(app, ["list", "noise"]).output
    for style in ("gaussian25", "gaussian5_50", "poisson30", "poisson5_50", "impulse50", "impulse0_100"):
        assert style in noise
        parse_style(style)  # every example it shows is accepted
    datasets = runner.invoke(app, ["list", "datasets"]).output
    assert all(name in datasets for name in ("kodak24", "bsd300", "set14", "small32", "folder:PATH"))
    bad = runner.invoke(app, ["list", "metods"])
    assert bad.exit_code == 2 and "methods, noise, datasets, profiles" in bad.output


COMMANDS = ["evaluate", "train", "grid", "sweep", "report", "denoise", "download", "list"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_has_examples_and_uncut_defaults(command):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0
    examples = [line for line in result.output.split("Examples:")[1].splitlines() if "n2n-bench " in line]
    assert len(examples) >= 2, result.output
    for line in examples:  # each example is a command the parser accepts (up to its placeholders)
        assert line.strip().split()[1] == command
    assert "…" not in result.output  # nothing cut with an ellipsis
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())  # the table's cells, rejoined
    if command == "train":
        assert "[default: quick]" in result.output
    if command in ("train", "denoise"):  # the store's real default (benchmarks/paths.py), not MLflow's cwd one
        assert "(default $MLFLOW_TRACKING_URI, else mlflow.db of the home folder: $N2N_HOME, the project, " \
               "or the per-user data folder" in text and "sqlite:///mlflow.db" not in text


def test_a_plain_folder_is_a_data_set_and_the_error_suggests_folder(tmp_path):
    from n2n_core.data.sets import resolve_set
    from n2n_core.errors import ConfigError

    images = _folder(tmp_path / "mine", [(32, 32), (32, 40)])
    result = runner.invoke(app, ["evaluate", "--noise", "gaussian25", "--dataset", str(images), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["n_images"] == 2
    with pytest.raises(ConfigError, match=f"folder:{images}"):
        resolve_set(str(images), tmp_path)


def test_config_file_is_the_same_as_set_and_print_config_runs_nothing(tmp_path):
    (tmp_path / "run.toml").write_text('seed = 2\n[train]\nlr = 1e-4\nbudget_images = 64\n'
                                       '[eval]\nrepeats = { kodak24 = 3 }\nsets = ["kodak24"]\n')
    by_hand = compose_config("smoke", "n2c", "gaussian25", [
        "seed=2", "train.lr=1e-4", "train.budget_images=96", 'eval.repeats={kodak24=3}', 'eval.sets=["kodak24"]'])
    result = runner.invoke(app, ["train", "--method", "n2c", "--noise", "gaussian25", "--profile", "smoke",
                                 "--config", str(tmp_path / "run.toml"), "--set", "train.budget_images=96",
                                 "--out", str(tmp_path / "run"), "--print-config"])
    assert result.exit_code == 0, result.output
    assert f"config_hash {by_hand.config_hash()}" in result.output  # --set won over the file
    printed = json.loads(result.output[result.output.index("{"):])
    assert printed["train"]["budget_images"] == 96 and printed["seed"] == 2 and printed["eval"]["repeats"] == {"kodak24": 3}
    assert not (tmp_path / "run").exists()  # nothing ran
    grid = runner.invoke(app, ["grid", "--noise", "gaussian25", "--profile", "smoke", "--methods", "noisy,n2c",
                               "--config", str(tmp_path / "run.toml"), "--print-config"])
    assert grid.exit_code == 0 and grid.output.count("config_hash ") == 2, grid.output
    bad = tmp_path / "bad.toml"
    bad.write_text('noise = "gaussian25"\n')
    refused = runner.invoke(app, ["train", "--method", "n2c", "--noise", "gaussian25", "--config", str(bad), "--print-config"])
    assert refused.exit_code == 2 and "--noise on the command line" in refused.output


def test_grid_progress_is_weighted_by_training_images():
    from benchmarks.grid import job_weight, select_jobs

    jobs, _ = select_jobs("gaussian25", "smoke", ["noisy", "n2c"], ["train.budget_images=40"])
    assert [job_weight(j) for j in jobs] == [1, 40]


def test_index_page_escapes_text_links_figures_relatively_and_colours_methods_stably(tmp_path):
    from html.parser import HTMLParser

    from benchmarks import figures, report_html

    (tmp_path / "figures").mkdir()
    figure = tmp_path / "figures" / "curves-x.png"
    figure.write_bytes(b"png")
    section = report_html.Section("gaussian25 <b>", 'caption with <script>alert("x")</script> & more',
                                  ["method", "kodak24"], [["n2c", "30.00"], ["<img src=x>", "1"]], [figure])
    (tmp_path / "sweep-a.csv").write_text("batch,psnr\n4,27.5\n")
    # a PSNR table an earlier report wrote from another store, with its figures
    (tmp_path / "psnr-poisson30-quick.csv").write_text("variant,kodak24\nn2v,29.1\n")
    (tmp_path / "psnr-poisson30-quick.md").write_text("| method | kodak24 ours (published, Δ) |\n|---|---|\n"
                                                      "| n2v | 29.10 (30.00, Δ -0.90) |\n\nPSNR for poisson30 <i>.\n")
    (tmp_path / "figures" / "curves-poisson30-quick.png").write_bytes(b"png")
    (tmp_path / "figures" / "curves-poisson30-smoke.png").write_bytes(b"png")
    page = report_html.write_index(tmp_path, [section], "sqlite:///<store>", written=[figure]).read_text()

    class Collect(HTMLParser):
        tags, text = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))

        def handle_data(self, data):
            self.text.append(data)

    parser = Collect()
    parser.feed(page)
    assert "script" not in [t for t, _ in parser.tags] and "i" not in [t for t, _ in parser.tags]
    assert [a["src"] for t, a in parser.tags if t == "img"] == ["figures/curves-x.png", "figures/curves-poisson30-quick.png"]
    text = "".join(parser.text)
    assert 'alert("x")' in text and "<img src=x>" in text and "gaussian25 <b>" in text  # shown as text
    assert "sweep-a" in text and "27.5" in text  # a table the report did not write is on the page too
    assert "poisson30, profile quick (an earlier report)" in text and "29.10 (30.00, Δ -0.90)" in text
    assert "PSNR for poisson30 <i>." in text
    assert f"background:{figures.method_colour('n2c')}" in page
    assert figures.method_colour("n2c") == figures.FIXED_COLOURS["n2c"] != figures.method_colour("n2n")
    assert len(set(figures.FIXED_COLOURS.values())) == len(figures.FIXED_COLOURS)  # no two variants share one
    assert figures.method_colour("my-method") == figures.method_colour("my-method")  # stable for any name

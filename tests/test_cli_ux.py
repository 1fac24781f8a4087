"""The command line for a person using it: evaluate's saved outputs and run settings, `list`,
`--version`, help examples, `--config`/`--print-config`, plain folders as data sets.

Expected values are computed here independently: PSNRs from the saved PNG files with numpy,
evaluation counts from the run's own settings, the configuration hash from compose_config.
"""

from __future__ import annotations

import csv
import json
import math

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
    from benchmarks.grid import run_grid
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
    assert {"checkpoint.pt", "config.json", "psnr-kodak24.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert tracked["again"]["mlflow_run_id"] == run.info.run_id
    children = [r for r in client.search_runs([experiment_id]) if r.data.tags.get("config_hash") == cfg.config_hash()]
    assert len(children) == 1  # the rerun logged nothing new
    experiment = client.get_experiment(experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "psnr_" in experiment.tags["mlflow.note.content"]
    # the grid finds train's run and does not train the configuration again
    outcome = run_grid("gaussian25", "smoke", ["n2c"], TINY, tracked["uri"], runs_root=tracked["tmp"] / "runs",
                       data_dir=data_dir, progress=False)
    assert outcome.skipped == ["n2c"] and outcome.ran == []


def test_the_logged_network_loads_with_mlflow_pytorch_and_matches_the_checkpoint(tracked):
    import mlflow

    from benchmarks.scoring import load_trained

    run = mlflow.MlflowClient(tracked["uri"]).get_run(tracked["first"]["mlflow_run_id"])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracked["uri"])
    try:
        network = mlflow.pytorch.load_model(run.data.tags["network_model_uri"])
        info = mlflow.models.get_model_info(run.data.tags["network_model_uri"])
    finally:
        mlflow.set_tracking_uri(previous)
    _, _, reference = load_trained(tracked["tmp"] / "run" / "checkpoint.pt", torch.device("cpu"))
    x = torch.rand(2, 3, 32, 32, generator=make_generator(7))
    with torch.no_grad():
        assert torch.equal(network.eval()(x), reference(x))
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] in ([-1, 3, -1, -1], (-1, 3, -1, -1))
    assert json.loads(info.metadata["config"])["method"]["name"] == "n2c"


def test_a_reused_checkpoint_is_tagged_and_the_curves_name_it(tracked, tmp_path):
    from benchmarks import figures
    from benchmarks.mlflow_tracker import open_store
    from benchmarks.report import finished_job_runs

    client, experiment_id = open_store(tracked["uri"])
    run = client.get_run(tracked["reused"]["mlflow_run_id"])
    assert run.data.tags["training_history"] == "none"
    assert not client.get_metric_history(run.info.run_id, "val_psnr")
    runs = [r for r in finished_job_runs(client, experiment_id) if r.run_id == run.info.run_id]
    assert figures.runs_without_curve(client, runs) == {"n2c": "reused a finished checkpoint, trained before it was logged"}
    written = figures.learning_curves(client, runs, "gaussian25", "smoke", tmp_path)
    assert [p.name for p in written] == ["curves-gaussian25-smoke.png"]  # a figure saying so, not nothing

"""The 32×32 course benchmark (docs/methods.md §10): small32, course32:DIR, the course networks, the sweep.

Every course network trains on small32 under the smoke profile through `n2n-bench train` and its
checkpoint scores through `n2n-bench evaluate --dataset small32`; small32's crops are compared with
the BSD300 test images they are cut from; the course32 loader round-trips plain-tensor pickles and
refuses one that carries code; the scratch network trains through the ordinary Trainer without
autograd and resumes bit for bit; the course grid (batch × loss × lr) is one generic sweep.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from benchmarks.cli import app
from benchmarks.compose import compose_config
from benchmarks.grid import expand
from n2n_core.config import TrainConfig
from n2n_core.data import small32 as small32_module
from n2n_core.data.course32 import PairStream, load_pair_file
from n2n_core.data.images import to_float
from n2n_core.data.sets import resolve_set
from n2n_core.data.train_stream import CropStream
from n2n_core.errors import DataError
from n2n_core.evaluation.paired import make_evaluator
from n2n_core.evaluation.psnr import psnr_uint8
from n2n_core.methods import build_method, method_config
from n2n_core.noise import parse_style
from n2n_core.seeding import make_generator
from n2n_core.train.checkpoint import load_checkpoint
from n2n_core.train.trainer import Trainer

NETWORKS = ["strided", "residual", "bn-dropout", "prelu", "scratch", "scratch-torch", "scratch-tconv",
            "scratch-tconv-torch"]
TINY = ["--set", "train.budget_images=8", "--set", "train.batch_size=4"]
CPU = torch.device("cpu")


def invoke(args: list[str]):
    return CliRunner().invoke(app, args, catch_exceptions=True)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def train_cli(variant: str, out: Path, data_dir: Path, *extra: str) -> dict:
    result = invoke(["train", "--method", variant, "--noise", "gaussian25", "--profile", "smoke", *TINY,
                     *extra, "--out", str(out), "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return last_json(result.stdout)


# ----------------------------------------------------------------------------- the networks


@pytest.mark.parametrize("network", NETWORKS)
def test_course_network_trains_on_small32_and_its_checkpoint_scores_there(tmp_path, data_dir, network):
    summary = train_cli(f"course-{network}", tmp_path / network, data_dir)
    saved = load_checkpoint(Path(summary["checkpoint"]))
    config = json.loads(saved["meta"]["config"])
    assert config["train"]["patch_size"] == 32 and config["eval"]["sets"] == ["small32"]
    assert config["method"]["network"] == network.replace("-", "_")
    assert summary["images_seen"] == 8 and summary["skipped_steps"] == 0
    result = invoke(["evaluate", "--checkpoint", summary["checkpoint"], "--dataset", "small32",
                     "--max-images", "50", "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    scored = last_json(result.stdout)
    assert scored["dataset"] == "small32" and scored["n_evaluations"] == 50 and scored["pad_to"] == 32
    assert scored["method"] == "course" and scored["convention"] == "uint8"
    assert math.isfinite(scored["psnr_mean"]) and 5 < scored["psnr_mean"] < 60


def test_grid_runs_the_course_networks_on_small32_and_the_others_as_before():
    jobs, _ = expand("gaussian25", "quick")
    by_name = {job.variant: job.config for job in jobs}
    for network in NETWORKS:
        for variant in (f"course-{network}", f"course-{network}-n2c"):
            cfg = by_name[variant]
            assert cfg.train.patch_size == 32 and cfg.eval.sets == ["small32"], variant
            assert cfg.method.target == ("n2c" if variant.endswith("n2c") else "n2n")
    assert by_name["n2c"].train.patch_size == 64 and by_name["n2c"].eval.sets == ["kodak24"]
    # the command line still wins over the variant's own overrides
    assert compose_config("smoke", "course-prelu", "gaussian25", ["train.patch_size=64"]).train.patch_size == 64


# ----------------------------------------------------------------------------- small32


def test_small32_is_a_fixed_set_of_1000_crops_cut_from_the_bsd300_test_images(data_dir):
    first = resolve_set("small32", data_dir)
    crops = first.load()
    small32_module._crops.cache_clear()
    small32_module._positions.cache_clear()
    again = resolve_set("small32", data_dir).load()
    assert len(crops) == 1000 and all(c.shape == (3, 32, 32) and c.dtype == torch.uint8 for c in crops)
    assert all(torch.equal(a, b) for a, b in zip(crops, again)), "small32 must be the same every time"
    assert first.image_ids()[:2] == ["small32-0000", "small32-0001"] and len(set(first.image_ids())) == 1000
    bsd = resolve_set("bsd300", data_dir)
    sources = dict(zip(bsd.image_ids(), bsd.load()))
    positions = first.crop_positions()
    for crop, (source, top, left) in zip(crops[::37], positions[::37]):
        assert torch.equal(crop, sources[source][:, top : top + 32, left : left + 32])
    used = [source for source, _, _ in positions]
    assert set(used) == set(sources) and all(used.count(s) == 10 for s in sources)
    assert len({(t, l) for _, t, l in positions}) > 900, "positions must vary"


# ----------------------------------------------------------------------------- course32:DIR


def write_course_files(folder: Path, n_train: int = 12, n_val: int = 5) -> dict[str, torch.Tensor]:
    g = make_generator(7)
    data = {name: torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
            for name, n in (("a", n_train), ("b", n_train), ("noisy", n_val), ("clean", n_val))}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save((data["a"], data["b"]), folder / "train_data.pkl")
    torch.save((data["noisy"], data["clean"]), folder / "val_data.pkl")
    return data


def test_course32_files_round_trip_and_score_the_given_pairs(tmp_path):
    data = write_course_files(tmp_path / "course")
    course = resolve_set(f"course32:{tmp_path / 'course'}", tmp_path)
    assert course.name == "course32" and len(course.image_ids()) == 5
    assert all(torch.equal(x, y) for x, y in zip(course.load(), data["clean"]))
    assert all(torch.equal(x, y) for x, y in zip(course.load_noisy(), data["noisy"]))
    stream = PairStream(*course.train_pairs(), patch_size=32, seed=0)

    class BothDraws:  # a method that hands back what given_pair receives, input draw ‖ target draw
        def given_pair(self, first, second, step):
            return torch.cat([first, second], dim=1)

    def pairs(seen: int):
        return stream.training_pair(BothDraws(), seen, 4, None, torch.device("cpu"))

    epoch = torch.cat([pairs(i) for i in range(0, 12, 4)])  # one pass: each pair once
    expected = torch.cat([data["a"], data["b"]], dim=1).float() / 255
    assert sorted(map(tuple, epoch.flatten(1)[:, :8].tolist())) == sorted(map(tuple, expected.flatten(1)[:, :8].tolist()))
    assert torch.equal(pairs(4), pairs(4))
    evaluator = make_evaluator(course, noise=None, max_images=4)
    result = evaluator.run(lambda items: [item.noisy.noisy for item in items])  # identity "denoiser"
    want = [psnr_uint8(to_float(n), c) for n, c in zip(data["noisy"][:4], data["clean"][:4])]
    assert result.n_evaluations == 4 and result.noise == "given"
    assert result.psnr_mean == pytest.approx(sum(want) / 4, rel=1e-12)


def test_course32_trains_n2n_from_the_command_line_and_refuses_n2c(tmp_path, data_dir):
    write_course_files(tmp_path / "course")
    where = f"course32:{tmp_path / 'course'}"
    sets = ["--set", f'train.train_set="{where}"', "--set", f'train.validation_set="{where}"',
            "--set", f'eval.sets=["{where}"]']
    summary = train_cli("course-bn-dropout", tmp_path / "run", data_dir, *sets)
    result = invoke(["evaluate", "--checkpoint", summary["checkpoint"], "--dataset", where,
                     "--data-dir", str(data_dir), "--max-images", "0", "--json"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    scored = last_json(result.stdout)
    assert scored["dataset"] == "course32" and scored["n_evaluations"] == 5 and scored["noise"] == "given"
    refused = invoke(["train", "--method", "course-bn-dropout-n2c", "--noise", "gaussian25", "--profile",
                      "smoke", *TINY, *sets, "--out", str(tmp_path / "n2c"), "--data-dir", str(data_dir)])
    assert refused.exit_code == 2 and "n2n" in refused.stderr
    assert not (tmp_path / "n2c").exists()


class Payload:
    """Unpickling this would create a file: the loader must refuse before anything runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_course32_pickle_carrying_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "train_data.pkl"
    torch.save((Payload(marker), torch.zeros(1, 3, 32, 32, dtype=torch.uint8)), path)
    with pytest.raises(DataError, match="refused"):
        load_pair_file(path)
    assert not marker.exists(), "code from the pickle ran"
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps((Payload(marker), 1)))
    with pytest.raises(DataError, match="refused"):
        load_pair_file(plain)
    assert not marker.exists()
    torch.save((torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)), path)  # float, not uint8
    with pytest.raises(DataError, match="uint8"):
        load_pair_file(path)


# ----------------------------------------------------------------------------- the scratch network


class Stop(Exception):
    """Raised by the stream to cut a run short, like a killed process."""


def scratch_trainer(images, tmp_path, budget=24, stop_at=None, **method_fields):
    method = build_method(method_config("course", network="scratch", **method_fields), parse_style("gaussian25"))
    stream = CropStream(images, patch_size=32, seed=3)
    if stop_at is not None:
        inner = stream

        class Stopping:
            def training_pair(self, method, images_seen, n, step, device):
                if images_seen >= stop_at:
                    raise Stop(images_seen)
                return inner.training_pair(method, images_seen, n, step, device)

        stream = Stopping()
    cfg = TrainConfig(budget_images=budget, batch_size=4, patch_size=32, lr=1.0, checkpoint_every_images=8,
                      validation_images=0, ema_decay=0.9)
    return method, Trainer(method, stream, cfg, seed=1, device=CPU, progress=False)


def test_scratch_network_trains_through_the_trainer_without_autograd(tiny_images, tmp_path):
    method, trainer = scratch_trainer(tiny_images(4, 40, 40), tmp_path)
    model = method.build_model(make_generator(0))
    before = [p.clone() for p in model.parameters()]
    seen: list[bool] = []
    forward, backward = model.forward, model.backward

    def spy(fn):
        def wrapped(*args):
            seen.append(torch.is_grad_enabled())
            return fn(*args)
        return wrapped

    model.forward, model.backward = spy(forward), spy(backward)
    with torch.enable_grad():
        trainer.fit(model, tmp_path / "ckpt.pt")
    assert len(seen) >= 2 * 6 and not any(seen), "the scratch network ran with autograd enabled"
    assert not any(p.requires_grad for p in model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "SGD did not move every weight"
    saved = load_checkpoint(tmp_path / "ckpt.pt")  # weights_only=True: plain tensors and numbers only
    assert saved["images_seen"] == 24 and set(saved["model"]) == set(saved["ema"])
    assert saved["optimizer"]["param_groups"][0]["momentum"] == 0.0


@pytest.mark.parametrize("loss", ["l2", "l1"])
def test_scratch_resume_equals_the_uninterrupted_run(tiny_images, tmp_path, loss):
    images = tiny_images(4, 40, 40)
    method, whole = scratch_trainer(images, tmp_path, loss=loss, momentum=0.5, optimizer="sgd")
    reference, _ = whole.fit(method.build_model(make_generator(0)), tmp_path / "whole.pt")
    method, broken = scratch_trainer(images, tmp_path, stop_at=12, loss=loss, momentum=0.5, optimizer="sgd")
    with pytest.raises(Stop):
        broken.fit(method.build_model(make_generator(0)), tmp_path / "resumed.pt")
    assert load_checkpoint(tmp_path / "resumed.pt")["images_seen"] == 8
    method, resumed = scratch_trainer(images, tmp_path, loss=loss, momentum=0.5, optimizer="sgd")
    final, _ = resumed.fit(method.build_model(make_generator(1)), tmp_path / "resumed.pt")  # init overwritten
    for (name, a), b in zip(reference.state_dict().items(), final.state_dict().values()):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------- the sweep


def sweep_args(tmp_path, data_dir, method: str, *axes: str) -> list[str]:
    return ["sweep", "--method", method, "--noise", "gaussian25", "--profile", "smoke",
            *[a for axis in axes for a in ("--axis", axis)], "--set", "train.budget_images=4",
            "--set", "train.validation_images=0", "--set", "eval.max_images=2",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--runs-dir", str(tmp_path / "runs"),
            "--out", str(tmp_path / "results"), "--data-dir", str(data_dir)]


def test_the_course_grid_is_one_sweep_of_three_axes(tmp_path, data_dir):
    import pandas as pd
    from mlflow import MlflowClient

    args = sweep_args(tmp_path, data_dir, "course-scratch", "train.batch_size=2,4", "train.lr=0.5,1",
                      "method.loss=l1,l2")
    result = invoke(args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    stem = tmp_path / "results" / "sweep-course-scratch-gaussian25-smoke-train.batch_size-train.lr-method.loss"
    table = pd.read_csv(f"{stem}.csv")
    cells = {(int(r[0]), r[1], float(r[2])) for r in table[["train.batch_size", "method.loss", "train.lr"]].values}
    assert cells == {(b, loss, lr) for b in (2, 4) for loss in ("l1", "l2") for lr in (0.5, 1.0)}
    assert table.psnr.notna().all() and (table.set == "small32").all()
    markdown = Path(f"{stem}.md").read_text()
    assert "| method.loss=l1: train.batch_size \\ train.lr | 0.5 | 1 |" in markdown and "Best:" in markdown
    assert "No figure: 3 axes" in markdown and "No figure: 3 axes" in result.stderr
    assert not Path(f"{stem}.png").exists()
    # nested runs: one parent holding the table, one child per cell with that cell's configuration
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("n2n-bench-sweep")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "1"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert set(children) == set(table.run_id)
    for row in table.to_dict("records"):
        params = children[row["run_id"]].data.params
        assert float(params["train.lr"]) == row["train.lr"] and params["method.loss"] == row["method.loss"]
        assert int(params["train.batch_size"]) == row["train.batch_size"] and params["train.patch_size"] == "32"
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} == {f"{stem.name}.md", f"{stem.name}.csv"}
    again = invoke(args)  # every cell is finished: read back from MLflow, nothing retrained
    assert again.exit_code == 0, again.output
    assert pd.read_csv(f"{stem}.csv").run_id.tolist() == table.run_id.tolist()


def test_a_sweep_of_one_axis_draws_psnr_against_it(tmp_path, data_dir):
    result = invoke(sweep_args(tmp_path, data_dir, "course-scratch", "train.lr=0.5,1"))
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    stem = tmp_path / "results" / "sweep-course-scratch-gaussian25-smoke-train.lr"
    assert Path(f"{stem}.md").read_text().startswith("| train.lr | PSNR (dB) |\n|---|---|\n| 0.5 |")
    assert Path(f"{stem}.png").stat().st_size > 1000
    assert "sweep course-scratch: 2 cells; best" in result.stdout


def test_sweep_tables_and_figures_follow_the_axes():
    import pandas as pd

    from benchmarks.sweep import to_markdown, write_outputs

    rows = [{"a.x": x, "b.y": y, "psnr": 20 + 10 * x + (y == "l2"), "set": "small32"}
            for x in (4, 1) for y in ("l2", "l1")]
    table = pd.DataFrame(rows)
    text = to_markdown(table, ["a.x", "b.y"], "caption")
    assert text.splitlines()[:4] == ["| a.x \\ b.y | l2 | l1 |", "|---|---|---|", "| 4 | 61.00 | 60.00 |",
                                     "| 1 | 31.00 | 30.00 |"]  # the axes' order, not sorted
    assert "Best: 61.00 dB at a.x=4, b.y=l2." in text and text.endswith("caption\n")


@pytest.mark.parametrize("words", ["line", "bars", "heatmap"])
def test_sweep_figures(tmp_path, words):
    import pandas as pd

    from benchmarks.sweep import write_outputs

    if words == "heatmap":
        table, keys = pd.DataFrame({"k.a": [1, 1, 2, 2], "k.b": [3, 4, 3, 4], "psnr": [1.0, 2, 3, 4]}), ["k.a", "k.b"]
    else:
        values = [1e-4, 1e-3, 1e-2] if words == "line" else ["l1", "l2", "l3"]
        table, keys = pd.DataFrame({"k.a": values, "psnr": [20.0, 21, 22]}), ["k.a"]
    table["set"] = "small32"
    paths, note = write_outputs(table, keys, tmp_path / "s-k.a", "caption: text")
    assert note == "" and [p.name for p in paths] == ["s-k.a.md", "s-k.a.csv", "s-k.a.png"]
    assert paths[2].read_bytes().startswith(b"\x89PNG") and paths[2].stat().st_size > 1000


def test_split_values_respects_brackets_and_quotes():
    from benchmarks.sweep import split_values

    assert split_values(" 1e-4, 1e-3 ,") == ["1e-4", "1e-3"]
    assert split_values('["a","b"],["c"]') == ['["a","b"]', '["c"]']
    assert split_values('"x,y",z') == ['"x,y"', "z"]


@pytest.mark.parametrize(
    "axes, needle",
    [
        (["train.batch_size=4", "train.lr=1e-3,-1"], "train.lr"),  # the second cell is invalid
        (["train.lr"], "section.key=v1,v2"),
        (["train.lr="], "no values"),
        (["train.lrr=1e-3"], "did you mean 'lr'"),
        (["train.lr=1e-3,0.001"], "same configuration"),
        (["train.lr=1e-3", "train.lr=1e-4"], "names a key twice"),
    ],
    ids=["invalid-cell", "no-equals", "no-values", "misspelt-key", "same-cell-twice", "key-twice"],
)
def test_a_bad_sweep_fails_before_anything_is_written(tmp_path, data_dir, axes, needle):
    store = tmp_path / "mlflow.db"
    result = invoke(["sweep", "--method", "course-strided", "--noise", "gaussian25", "--profile", "smoke",
                     *[a for axis in axes for a in ("--axis", axis)], "--tracking-uri", f"sqlite:///{store}",
                     "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "results"),
                     "--data-dir", str(data_dir)])
    assert result.exit_code == 2 and needle in result.output, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no runs, no results


# ----------------------------------------------------------------------------- the report


def test_report_names_the_32px_crops_and_joins_course32_baselines_whatever_the_noise():
    from benchmarks.captions import crop_sizes
    from benchmarks.report import build_table
    from benchmarks.report_runs import JobRun

    def run(variant, patch, metrics):
        return JobRun(variant, variant, "gaussian25", "quick", {"train.patch_size": patch}, metrics, {}, 0)

    runs = [run("n2c", "128", {"psnr_kodak24": 30.0}), run("n2n", "128", {"psnr_kodak24": 30.0}),
            run("course-strided", "32", {"psnr_course32": 25.0}), run("course-prelu", "32", {}),
            run("cbm3d", "64", {"psnr_kodak24": 31.0, "images_seen": 0})]  # trained on nothing
    assert crop_sizes(runs) == "128² (32² for course-prelu, course-strided)"
    table, sets = build_table(runs, "gaussian25")
    row = table.set_index("variant").loc["course-strided"]
    assert "course32" in sets and row["course32_published"] == pytest.approx(25.81)
    assert row["course32_delta"] == pytest.approx(25.0 - 25.81)

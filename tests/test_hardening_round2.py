"""Hardening, round two (issue 15): what hostile and careless use found beyond test_hardening.py.

Each test here failed on the code before the fix (the commit messages say so). Where the items
live:

| item | test |
|---|---|
| report paths from hostile tags / metric names | test_report_never_writes_outside_out_for_hostile_names, test_report_refuses_a_link_that_leads_out_of_out |
| LaTeX injection | test_latex_table_escapes_tag_and_parameter_text |
| report with nothing to report | test_report_without_finished_runs_is_one_line_and_creates_nothing |
| lr=inf, lr=1e38 (train.lr, zs-n2n's method.lr), gaussian0, 16-bit / float images, --out or --save-outputs a file, absurd patch size, data dir that cannot be made | test_round_two_catalogue |
| decompression bomb | test_decompression_bomb_is_one_line |
| the depth of an image file | test_bit_depth_reads_the_depth_the_file_was_written_with |
| paths that do not depend on the current folder | test_default_paths_do_not_depend_on_the_current_folder |
| a wheel installed non-editable | .ci/check_install.sh (run by .ci/run) |
| non-finite loss skipped | test_non_finite_loss_with_finite_gradients_is_skipped |
| non-finite weights never saved nor scored | test_weights_that_overflow_stop_the_run_before_they_are_saved, test_checkpoint_with_non_finite_weights_is_not_scored |
| non-finite output never scored (evaluate, grid job) | test_output_that_is_not_finite_is_refused_and_nothing_is_saved, test_grid_job_whose_output_is_not_finite_fails_and_is_not_scored |
| unfinished checkpoint scored | test_unfinished_checkpoint_is_scored_with_a_warning_and_says_so_in_json |
| valid JSON only | test_json_line_writes_non_finite_numbers_as_null |
| read-only folder, clean-up failing too | test_read_only_folder_reports_the_write_error_not_the_cleanup_error |
| grid wrong for every job | test_grid_wrong_for_every_job_is_refused_before_any_store_exists |
| tracking store on a full disk | test_tracking_store_on_a_full_disk_says_disk_full (mid-job), test_tracking_store_already_on_a_full_disk_says_so_when_a_run_is_created |
| half-migrated store | test_half_migrated_store_is_named_with_the_way_out |
| server that trickles bytes | test_tracking_server_trickling_bytes_cannot_hang_a_command |

Concurrency, signals and stale RUNNING runs use real processes: tests/test_concurrency.py.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.mlflow_tracker import open_store
from test_hardening import N2C, SCORE, SMALL, digest, invoke, last_json, one_error_line

TINY_GRID = ["--set", "train.budget_images=4", "--set", "train.patch_size=32", "--set", "train.validation_images=0",
             "--set", "eval.max_images=1", "--set", "eval.center_crop=64"]


@pytest.fixture(autouse=True)
def no_readme_update(monkeypatch):
    monkeypatch.setattr("benchmarks.report.update_readme", lambda *a, **k: None)  # never touch README.md


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A finished tiny n2c run (checkpoint at 4 images kept as .prev, finished at 8)."""
    root = tmp_path_factory.mktemp("round2")
    last_json(invoke(["train", *N2C, *SMALL, "--out", root / "ref", "--data-dir", data_dir, "--json"]))
    return root / "ref"


def finished_run(client, experiment_id, tags: dict, metrics: dict, params: dict | None = None) -> str:
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for key, value in (params or {}).items():
        client.log_param(run_id, key, value)
    client.set_terminated(run_id, "FINISHED")
    return run_id


HONEST = {"variant": "n2c", "noise": "gaussian25", "profile": "smoke"}


# ----------------------------------------------------------------------------- 1. security


def test_report_never_writes_outside_out_for_hostile_names(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment_id = open_store(uri)
    finished_run(client, experiment_id, HONEST, {"psnr_kodak24": 30.0})
    hostile = {
        "profile": finished_run(client, experiment_id, {**HONEST, "profile": "x/../../../../pwned/owned"},
                                {"psnr_kodak24": 1.0}),
        "metric": finished_run(client, experiment_id, {**HONEST, "variant": "n2n"}, {"psnr_sub/evil": 1.0}),
    }
    out = tmp_path / "A" / "B" / "results"
    result = invoke(["report", "--tracking-uri", uri, "--out", out])
    assert result.exit_code == 0, result.output
    outside = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                     if p.is_file() and not p.is_relative_to(out) and "mlartifacts" not in p.parts)
    assert outside == ["mlflow.db", "mlflow.db.lock"], outside
    for run_id in hostile.values():  # left out, and named
        assert f"warning: run {run_id} left out of the report" in result.stderr
    table = (out / "psnr-gaussian25-smoke.md").read_text()
    assert "| n2c | 30.00" in table and "| n2n |" not in table


def test_report_refuses_a_link_that_leads_out_of_out(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment_id = open_store(uri)
    finished_run(client, experiment_id, HONEST, {"psnr_kodak24": 30.0})
    out, elsewhere = tmp_path / "results", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "psnr-gaussian25-smoke.md").symlink_to(elsewhere / "owned.md")
    line = one_error_line(invoke(["report", "--tracking-uri", uri, "--out", out]))
    assert "outside the report folder" in line and "remove the link" in line
    assert list(elsewhere.iterdir()) == []


def test_latex_table_escapes_tag_and_parameter_text(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment_id = open_store(uri)
    finished_run(client, experiment_id, HONEST, {"psnr_kodak24": 30.0},
                 params={"train.train_set": r"\input{/etc/hostname}", "train.budget_images": "8",
                         "train.patch_size": "32", "train.batch_size": "4 & $x^2$ #1 ~ 50%"})
    assert invoke(["report", "--tracking-uri", uri, "--out", tmp_path / "results"]).exit_code == 0
    tex = (tmp_path / "results" / "psnr-gaussian25-smoke.tex").read_text()
    caption = tex[tex.index(r"\caption{") + len(r"\caption{"):tex.rindex("}\n\\end{table}")]
    assert r"\textbackslash{}input\{/etc/hostname\}" in caption
    assert r"4 \& \$x\^{}2\$ \#1 \textasciitilde{} 50\%" in caption
    # what is left once every escape is removed holds no command, group, math or comment
    bare = caption
    for escape in (r"\textbackslash{}", r"\textasciitilde{}", r"\^{}", r"$\Delta$", r"$\times$", r"$^2$", r"\S{}",
                   r"\{", r"\}", r"\$", r"\&", r"\#", r"\%", r"\_"):
        bare = bare.replace(escape, "")
    assert not set(bare) & set("\\{}$&#^~%_"), bare


def test_report_without_finished_runs_is_one_line_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere.db"
    line = one_error_line(invoke(["report", "--tracking-uri", f"sqlite:///{missing}", "--out", tmp_path / "r"]))
    assert "no tracking store at" in line and "run 'n2n-bench grid' first" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the report created a store or a folder"

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment_id = open_store(uri)
    run_id = client.create_run(experiment_id, tags=HONEST).info.run_id
    client.set_terminated(run_id, "FAILED")
    line = one_error_line(invoke(["report", "--tracking-uri", uri, "--out", tmp_path / "r"]))
    assert "has no finished runs to report" in line
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- 3./4. the catalogue


def _images(folder: Path, kind: str) -> Path:
    folder.mkdir(parents=True)
    if kind == "png16":
        Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(folder / "deep.png")
    elif kind == "tiff-float":
        Image.fromarray(np.full((64, 64), 0.5, dtype=np.float32)).save(folder / "deep.tiff")
    else:
        Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(folder / "plain.png")
    return folder


def _zs_n2n_grid(t: Path) -> list:
    return ["grid", "--noise", "gaussian25", "--profile", "smoke", "--methods", "zs-n2n", "--set",
            "method.iterations=5", "--tracking-uri", f"sqlite:///{t / 'grid.db'}", "--out", t / "r",
            "--runs-dir", t / "runs"]


# case → (command line built from tmp_path, words the one error line must hold)
CATALOGUE = {
    "lr-infinite": (lambda t: ["train", *N2C, *SMALL, "--set", "train.lr=inf", "--out", t / "run"],
                    ["train.lr", "finite number"]),
    "lr-overflows-adam": (lambda t: ["train", *N2C, *SMALL, "--set", "train.lr=1e38", "--out", t / "run"],
                          ["train.lr", "less than or equal to 10"]),
    "zs-n2n-lr-infinite": (lambda t: [*_zs_n2n_grid(t), "--set", "method.lr=inf"], ["method.lr", "finite number"]),
    "zs-n2n-lr-too-large": (lambda t: [*_zs_n2n_grid(t), "--set", "method.lr=1e38"],
                            ["method.lr", "less than or equal to 10"]),
    "zero-noise-level": (lambda t: ["evaluate", "--noise", "gaussian0", "--json"],
                         ["'gaussian0' has a level of zero", "use a level > 0"]),
    "png-16-bit": (lambda t: ["evaluate", "--noise", "gaussian25", "--dataset", f"folder:{_images(t / 'in', 'png16')}"],
                   ["deep.png has 16 bits per channel", "convert it to 8 bits"]),
    "tiff-float": (lambda t: ["evaluate", "--noise", "gaussian25", "--dataset",
                              f"folder:{_images(t / 'in', 'tiff-float')}"],
                   ["deep.tiff has 32 bits per channel", "convert it to 8 bits"]),
    "out-is-a-file": (lambda t: ["train", *N2C, *SMALL, "--out", t / "file"],
                      ["is a file, not a folder"]),
    "out-under-a-file": (lambda t: ["train", *N2C, *SMALL, "--out", t / "file" / "run"],
                         ["is a file, not a folder"]),
    "grid-out-under-a-file": (lambda t: ["grid", "--noise", "gaussian25", "--profile", "smoke", "--methods", "noisy",
                                         "--tracking-uri", f"sqlite:///{t / 'grid.db'}", "--out", t / "file" / "r",
                                         "--runs-dir", t / "runs"],
                              ["--out", "is a file, not a folder"]),
    "report-out-is-a-file": (lambda t: ["report", "--tracking-uri", f"sqlite:///{t / 'none.db'}", "--out", t / "file"],
                             ["--out", "is a file, not a folder"]),
    "save-outputs-is-a-file": (lambda t: ["evaluate", "--noise", "gaussian25", *SCORE, "--save-outputs", t / "file"],
                               ["--save-outputs", "is a file, not a folder"]),
    "save-outputs-under-a-file": (lambda t: ["evaluate", "--noise", "gaussian25", *SCORE,
                                             "--save-outputs", t / "file" / "saved"],
                                  ["--save-outputs", "is a file, not a folder"]),
    "absurd-patch-size": (lambda t: ["train", *N2C, "--set", "train.patch_size=1048576", "--out", t / "run"],
                          ["train.patch_size=1048576", "would need about", "PiB", "or less"]),
    "data-dir-cannot-be-made": (lambda t: ["download", "kodak24", "--data-dir", "/dev/null/x"],
                                ["/dev/null/x", "set N2N_DATA (or --data-dir) to a folder you can write"]),
}


@pytest.mark.parametrize("case", CATALOGUE)
def test_round_two_catalogue(case, tmp_path, data_dir, monkeypatch):
    build, words = CATALOGUE[case]
    (tmp_path / "file").write_text("a file where a folder is meant\n")
    args = [str(a) for a in build(tmp_path)]
    if "--data-dir" not in args and args[0] != "report":
        args += ["--data-dir", str(data_dir)]
    monkeypatch.chdir(tmp_path)
    before = digest(tmp_path)
    line = one_error_line(invoke(args))
    print(f"{case} -> {line}")
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert digest(tmp_path) == before, "a refused command wrote or changed a file"
    assert not (tmp_path / "run").exists() and not (tmp_path / "grid.db").exists()


def _png_rgb16(path: Path, rgb: np.ndarray) -> Path:
    """A 16-bit RGB PNG written by hand (PIL cannot write one): IHDR bit depth 16, colour type 2."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_bit_depth_reads_the_depth_the_file_was_written_with(tmp_path):
    # Pillow opens a 16-bit RGB PNG as mode RGB (already cut to 8 bits); the depth is the file's
    from n2n_core.data.images import bit_depth

    files = {
        8: tmp_path / "rgb8.png", 16: tmp_path / "grey16.png", 32: tmp_path / "float.tiff", 1: tmp_path / "bw.png",
    }
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(files[8])
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(files[16])
    Image.fromarray(np.zeros((8, 8), np.float32)).save(files[32])
    Image.fromarray(np.zeros((8, 8), bool)).save(files[1])
    rgb16 = _png_rgb16(tmp_path / "rgb16.png", np.full((8, 8, 3), 40000))
    for depth, path in [*files.items(), (16, rgb16)]:
        with Image.open(path) as img:
            assert bit_depth(img) == depth, path.name
    with Image.open(rgb16) as img:
        assert img.mode == "RGB"  # what made the 16 bits invisible to a check of the mode alone


def test_default_paths_do_not_depend_on_the_current_folder(tmp_path, data_dir, monkeypatch):
    # from any folder, a train without --out writes under the home folder's runs/ ($N2N_HOME here),
    # and nothing into the folder it was started from
    from benchmarks import paths

    monkeypatch.setenv("N2N_HOME", str(tmp_path / "home"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    summary = last_json(invoke(["train", *N2C, *SMALL, "--data-dir", data_dir, "--json"]))
    assert Path(summary["checkpoint"]).is_relative_to(tmp_path / "home" / "runs"), summary["checkpoint"]
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert paths.store_path() == tmp_path / "home" / "mlflow.db" and paths.project_readme() is None
    # an installed copy (no pyproject.toml beside benchmarks/) uses the per-user data folder
    monkeypatch.delenv("N2N_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(paths, "SOURCE_ROOT", tmp_path / "site-packages")
    assert paths.clone_root() is None and paths.home() == tmp_path / "xdg" / "n2n-bench"
    assert paths.project_readme() is None


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    # Pillow refuses images of more than 2 × MAX_IMAGE_PIXELS pixels with DecompressionBombError
    # (not an OSError); lowered here so that a 64² file is such a bomb
    folder = _images(tmp_path / "in", "plain")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    line = one_error_line(invoke(["evaluate", "--noise", "gaussian25", "--dataset", f"folder:{folder}"]))
    assert "plain.png is refused as a decompression bomb" in line and "remove it" in line


# ----------------------------------------------------------------------------- 3. no silent garbage


def _tiny_stream():
    from conftest import synthetic_uint8
    from n2n_core.data.train_stream import CropStream

    images = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in synthetic_uint8(6, 40, 44, 1)]
    return CropStream(images, patch_size=32, seed=5)


def test_non_finite_loss_with_finite_gradients_is_skipped(tmp_path):
    # loss = mse + inf (a constant): infinite, while its gradients (the mse's) are finite, so the old
    # check let Adam take the step; a non-finite loss is now a skipped step like a non-finite gradient
    from n2n_core.methods.base import LossOutput
    from n2n_core.seeding import make_generator
    from test_trainer import TinyMethod, cfg, params, tiny_method, trainer

    class InfiniteSecondLoss(TinyMethod):
        calls = 0

        def loss(self, model, pair):
            out = super().loss(model, pair)
            self.calls += 1
            return LossOutput(out.loss + float("inf")) if self.calls == 2 else out

    method = InfiniteSecondLoss(tiny_method().config, tiny_method().noise)
    model = method.build_model(make_generator(0))
    snapshots = []
    stream = _tiny_stream()
    real_batch = stream.batch
    stream.batch = lambda seen, n: (snapshots.append(params(model)), real_batch(seen, n))[1]
    run = trainer(method, stream, cfg(ramp_up=0.0, ramp_down=0.0))  # constant lr: every step taken moves
    _, state = run.fit(model)
    snapshots.append(params(model))
    moved = [not all(torch.equal(a, b) for a, b in zip(snapshots[k], snapshots[k + 1])) for k in range(4)]
    assert moved == [True, False, True, True] and state.skipped_steps == 1


def test_weights_that_overflow_stop_the_run_before_they_are_saved(tmp_path):
    # an SGD step with lr 1e38 on gradients of ~1e5 overflows float32 (max 3.4e38) to ±inf, as
    # lr=1e38 once did inside Adam; the following losses are NaN (skipped), and the run stops at its
    # first checkpoint with TrainingDiverged instead of saving infinite weights
    from n2n_core.methods.base import LossOutput
    from n2n_core.seeding import make_generator
    from n2n_core.train.trainer import TrainingDiverged
    from test_trainer import TinyMethod, cfg, tiny_method, trainer

    class SgdOnALargeLoss(TinyMethod):
        def make_optimizer(self, model, train_cfg):
            return torch.optim.SGD(model.parameters(), lr=train_cfg.lr)

        def loss(self, model, pair):
            return LossOutput(1e6 * super().loss(model, pair).loss)

    method = SgdOnALargeLoss(tiny_method().config, tiny_method().noise)
    # past the validated bound (model_copy does not validate): a step that overflows, whatever its cause
    train_cfg = cfg(budget_images=32, ramp_up=0.0, ramp_down=0.0).model_copy(update={"lr": 1e38})
    with pytest.raises(TrainingDiverged, match="weights are not finite any more at 8 images"):
        trainer(method, _tiny_stream(), train_cfg).fit(method.build_model(make_generator(0)), tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists(), "infinite weights were checkpointed"


def test_checkpoint_with_non_finite_weights_is_not_scored(trained, tmp_path):
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    for weights in (state["model"], state["ema"]):  # what evaluation loads: the EMA where there is one
        if weights is not None:
            first = next(iter(weights))
            weights[first] = torch.full_like(weights[first], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    line = one_error_line(invoke(["evaluate", "--checkpoint", tmp_path / "nan.pt", *SCORE]))
    assert "nan.pt holds weights that are not finite" in line and "retrain with a lower train.lr" in line


NAN_METHOD = '''"""A training-free method whose every output is NaN, as a fit that diverged returns."""
from typing import Literal

import torch

from n2n_core.methods import Method, MethodConfigBase


class NanOut(Method):
    trainable = False

    class Config(MethodConfigBase):
        name: Literal["nan-out"] = "nan-out"

    def build_model(self, rng):
        return None

    def denoise(self, model, batch):
        return torch.full_like(batch.noisy, float("nan"))
'''


def _nan_method(folder: Path) -> str:
    (folder / "nan_out.py").write_text(NAN_METHOD)
    return f"{folder / 'nan_out.py'}:NanOut"


def test_output_that_is_not_finite_is_refused_and_nothing_is_saved(tmp_path, data_dir):
    # quantised to uint8, NaN scored a plausible 6.39 dB (zs-n2n with method.lr=inf)
    saved = tmp_path / "saved"
    line = one_error_line(invoke(["evaluate", "--method", _nan_method(tmp_path), "--noise", "gaussian25", *SCORE,
                                  "--save-outputs", saved, "--data-dir", data_dir, "--json"]))
    assert "nan-out returned a denoised image that is not finite (NaN or inf) for image kodim01 of kodak24" in line
    assert "nothing is scored" in line and "method.lr" in line
    assert [p for p in saved.rglob("*") if p.is_file()] == [], "an output or a CSV of the refused run was written"


def test_grid_job_whose_output_is_not_finite_fails_and_is_not_scored(tmp_path, data_dir):
    from benchmarks.grid import run_grid

    uri = f"sqlite:///{tmp_path / 'grid.db'}"
    overrides = [o for o in TINY_GRID if o != "--set"]
    outcome = run_grid("gaussian25", "smoke", ["noisy", _nan_method(tmp_path)], overrides, uri,
                       runs_root=tmp_path / "runs", data_dir=data_dir, progress=False)
    assert outcome.ran == ["noisy"], outcome
    assert outcome.failed["nan-out"].startswith("NonFiniteOutput: nan-out returned a denoised image that is not "
                                                "finite"), outcome.failed
    assert list((tmp_path / "runs").glob("nan-out-*/scores-*.json")) == []
    client, experiment_id = open_store(uri)
    (run,) = client.search_runs([experiment_id], filter_string="tags.variant = 'nan-out'")
    assert run.info.status == "FAILED" and not any(k.startswith("psnr_") for k in run.data.metrics)


def test_unfinished_checkpoint_is_scored_with_a_warning_and_says_so_in_json(trained, tmp_path):
    unfinished = tmp_path / "checkpoint.pt"
    unfinished.write_bytes((trained / "checkpoint.pt.prev").read_bytes())  # the checkpoint at 4 of 8
    result = invoke(["evaluate", "--checkpoint", unfinished, *SCORE, "--json"])
    summary = last_json(result)
    assert f"warning: checkpoint {unfinished} has trained 4 of 8 images" in result.stderr
    assert (summary["images_seen"], summary["budget_images"], summary["finished"]) == (4, 8, False)
    whole = invoke(["evaluate", "--checkpoint", trained / "checkpoint.pt", *SCORE, "--json"])
    assert "warning" not in whole.stderr and last_json(whole)["finished"] is True


def test_json_line_writes_non_finite_numbers_as_null():
    from benchmarks.cli import json_line

    text = json_line({"psnr_mean": float("inf"), "nested": [float("nan"), 1.5], "n": 2})
    assert json.loads(text) == {"psnr_mean": None, "nested": [None, 1.5], "n": 2}
    assert "Infinity" not in text and "NaN" not in text


# ----------------------------------------------------------------------------- 4. one line


def test_read_only_folder_reports_the_write_error_not_the_cleanup_error(tmp_path, monkeypatch):
    # on a read-only mount the write fails with EROFS, and so does removing the temporary file:
    # the error must be the write's, as one StorageError, not a second traceback from the clean-up
    from n2n_core.errors import StorageError
    from n2n_core.train.checkpoint import atomic_write

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(StorageError, match="could not write .*table.md \\(Read-only file system\\)"):
        atomic_write(tmp_path / "table.md", read_only)


def test_grid_wrong_for_every_job_is_refused_before_any_store_exists(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    base = ["grid", "--noise", "gaussian25", "--profile", "smoke", "--methods", "noisy,n2c",
            "--tracking-uri", f"sqlite:///{tmp_path / 'grid.db'}", "--runs-dir", tmp_path / "runs",
            "--out", tmp_path / "results", "--data-dir", data_dir]
    for extra, words in ((["--set", 'eval.sets=["kodak23"]'], ["'kodak23'", "expected one of"]),
                         (["--set", "train.device=cuda"], ["CUDA is not available"])):
        line = one_error_line(invoke([*base, *extra]))
        assert all(w in line for w in words), line
        assert sorted(p.name for p in tmp_path.iterdir()) == [], "a store or a run folder was created"


def _real_disk_full_error() -> Exception:
    """The error MLflow raises when SQLite answers SQLITE_FULL, made for real: a database capped at
    its current size (PRAGMA max_page_count) that an insert must grow."""
    import sqlalchemy
    from mlflow.exceptions import MlflowException

    engine = sqlalchemy.create_engine("sqlite://")
    with engine.connect() as con:
        con.exec_driver_sql("CREATE TABLE metrics (key TEXT, value TEXT)")
        pages = con.exec_driver_sql("PRAGMA page_count").scalar()
        con.exec_driver_sql(f"PRAGMA max_page_count = {pages}")
        try:
            for _ in range(100):
                con.exec_driver_sql("INSERT INTO metrics VALUES ('train_loss', ?)", ("x" * 4000,))
        except sqlalchemy.exc.OperationalError as err:  # as MLflow's session maker wraps it
            return MlflowException(f"{err}")
    raise AssertionError("SQLite never reported a full database")


def test_tracking_store_on_a_full_disk_says_disk_full(tmp_path, data_dir, monkeypatch):
    from mlflow import MlflowClient

    from benchmarks import training
    from benchmarks.grid import run_grid

    full = _real_disk_full_error()
    assert "database or disk is full" in str(full)
    real_train = training.train

    def disk_fills_then_train(*args, **kwargs):  # the run exists and holds its params by now
        def refuse(*a, **k):
            raise full

        monkeypatch.setattr(MlflowClient, "log_batch", refuse)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train", disk_fills_then_train)
    overrides = [o for o in TINY_GRID if o != "--set"]
    outcome = run_grid("gaussian25", "smoke", ["n2c"], overrides, f"sqlite:///{tmp_path / 'full.db'}",
                       runs_root=tmp_path / "runs", data_dir=data_dir, progress=False)
    why = outcome.failed["n2c"]
    assert why.startswith("TrackingError: the tracking store's disk is full"), why
    assert "free some disk space, then rerun the same command to log them" in why
    assert "stopped answering" not in why


@pytest.mark.parametrize("command", ["grid", "train"])
def test_tracking_store_already_on_a_full_disk_says_so_when_a_run_is_created(command, tmp_path, data_dir,
                                                                            monkeypatch):
    # the store opens (opening reads), then its first write, creating the run, meets the full disk
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'full.db'}"
    open_store(uri)
    full = _real_disk_full_error()

    def refuse(*args, **kwargs):
        raise full

    monkeypatch.setattr(MlflowClient, "create_run", refuse)
    args = {"grid": ["grid", "--noise", "gaussian25", "--profile", "smoke", "--methods", "noisy", *TINY_GRID,
                     "--runs-dir", tmp_path / "runs", "--out", tmp_path / "results"],
            "train": ["train", *N2C, *SMALL, "--track", "--out", tmp_path / "run"]}[command]
    line = one_error_line(invoke([*args, "--tracking-uri", uri, "--data-dir", data_dir]))
    assert f"the tracking store {uri} is on a full disk (" in line and "database or disk is full" in line, line
    assert "free some disk space, or pass --tracking-uri with a store on a disk that has room" in line


def test_half_migrated_store_is_named_with_the_way_out(tmp_path):
    # the state two racing first commands once left: a migration's leftover _alembic_tmp_ table and
    # the schema version one step behind the head
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    from benchmarks.mlflow_tracker import TrackingError

    db = tmp_path / "mlflow.db"
    open_store(f"sqlite:///{db}")
    script = ScriptDirectory.from_config(_get_alembic_config(""))
    previous = script.get_revision(script.get_current_head()).down_revision
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE _alembic_tmp_tags (key VARCHAR(250), value VARCHAR(5000))")
        con.execute("UPDATE alembic_version SET version_num = ?", (previous,))
    again = f"sqlite:///{tmp_path}/./mlflow.db"  # another URI for the same file: MLflow caches stores by URI
    with pytest.raises(TrackingError) as refused:
        open_store(again)
    message = str(refused.value)
    assert f"the tracking store {db} is half-migrated: it holds the migration's leftover table _alembic_tmp_tags" \
        in message, message
    assert "mv " in message and ".broken" in message and "back it up" in message


# ----------------------------------------------------------------------------- a server that trickles


class TricklingServer:
    """Accepts connections on 127.0.0.1 and answers each with an HTTP response one byte per second
    (at most `limit` bytes, then it closes): MLflow's per-read timeout never fires on it."""

    def __init__(self, limit: int = 60):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        self.port, self.limit, self.stop = self.sock.getsockname()[1], limit, threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        answer = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{"experiments": []}' + b" " * 40
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self.trickle, args=(conn, answer), daemon=True).start()

    def trickle(self, conn, answer):
        with conn:
            conn.settimeout(1)
            try:
                conn.recv(65536)
                for byte in answer[: self.limit]:
                    if self.stop.wait(1.0):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self):
        self.stop.set()
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.mark.parametrize("command", ["report", "grid"])
def test_tracking_server_trickling_bytes_cannot_hang_a_command(command, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("N2N_TRACKING_DEADLINE", "2")  # MLflow's own retries (2) stay on: all within it
    server = TricklingServer()
    uri = f"http://127.0.0.1:{server.port}"
    args = {"report": ["report", "--tracking-uri", uri, "--out", tmp_path / "results"],
            "grid": ["grid", "--noise", "gaussian25", "--profile", "smoke", "--methods", "noisy", "--tracking-uri",
                     uri, "--runs-dir", tmp_path / "runs", "--out", tmp_path / "results", "--data-dir", data_dir]}
    started = time.monotonic()
    try:
        line = one_error_line(invoke(args[command]))
    finally:
        server.close()
    seconds = time.monotonic() - started
    assert seconds < 20, f"{command} waited {seconds:.0f} s on a server that trickles bytes"
    assert f"tracking server {uri} sent no complete answer within 2 s" in line and "N2N_TRACKING_DEADLINE" in line

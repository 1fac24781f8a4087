"""`n2n-bench train` / `evaluate` end to end: every method variant trains under the smoke profile.

The issue's acceptance check: `n2n-bench train --method M --noise gaussian25 --profile smoke
--set train.budget_images=8 --set train.patch_size=32 --set train.validation_images=0 --out DIR
--json` succeeds for every variant in benchmarks/configs/methods (training-free ones excepted).
The variants run in this process through typer's CliRunner (one import of torch, one read of the
training set); one test goes through the installed entry point in a subprocess.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from benchmarks.cli import app
from benchmarks.compose import CONFIG_DIR, compose_config
from n2n_core.methods import METHODS

SMOKE_SET = ["--set", "train.budget_images=8", "--set", "train.patch_size=32",
             "--set", "train.validation_images=0"]
ENTRY_POINT = Path(sys.executable).with_name("n2n-bench")


def variant_method(variant: str) -> str:
    return tomllib.loads((CONFIG_DIR / "methods" / f"{variant}.toml").read_text())["method"]["name"]


TRAINABLE = [p.stem for p in sorted((CONFIG_DIR / "methods").glob("*.toml"))
             if METHODS[variant_method(p.stem)].trainable]
RUNS = [(v, "gaussian25") for v in TRAINABLE] + [("ssdn-known", "poisson30"), ("ssdn-mu", "poisson30")]


def invoke(args: list[str]):
    return CliRunner().invoke(app, args, catch_exceptions=True)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """trained(variant, noise) → (summary, out_dir); each run is trained once per module."""
    root = tmp_path_factory.mktemp("cli-runs")
    cache: dict[tuple[str, str], tuple[dict, Path]] = {}

    def run(variant: str, noise: str):
        if (variant, noise) not in cache:
            out = root / f"{variant}-{noise}"
            result = invoke(["train", "--method", variant, "--noise", noise, "--profile", "smoke",
                             *SMOKE_SET, "--out", str(out), "--data-dir", str(data_dir), "--json"])
            assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
            cache[(variant, noise)] = (last_json(result.stdout), out)
        return cache[(variant, noise)]

    return run


def test_every_trainable_variant_is_covered():
    assert {"n2c", "n2n", "n2v", "ssdn-known", "ssdn-constant", "ssdn-per-image", "ssdn-mu"} <= set(TRAINABLE)
    assert "noisy" not in TRAINABLE


@pytest.mark.parametrize(("variant", "noise"), RUNS, ids=[f"{v}-{n}" for v, n in RUNS])
def test_smoke_training_succeeds(trained, variant, noise):
    summary, out = trained(variant, noise)
    expected = compose_config("smoke", variant, noise, SMOKE_SET[1::2])
    assert summary["images_seen"] == 8 and summary["skipped_steps"] == 0
    assert summary["method"] == variant_method(variant) and summary["noise"] == noise
    assert summary["config_hash"] == expected.config_hash()
    assert Path(summary["checkpoint"]) == out / "checkpoint.pt"
    saved = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert saved["finished"] is True and saved["images_seen"] == 8
    cfg = json.loads(saved["meta"]["config"])
    assert cfg["train"]["budget_images"] == 8 and cfg["train"]["patch_size"] == 32
    assert (saved["ema"] is not None) == (expected.train.ema_decay is not None)
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    assert json.loads((out / "config.json").read_text()) == json.loads(expected.canonical_json())


@pytest.mark.parametrize("variant", ["n2c", "ssdn-known"])
def test_rerun_returns_the_finished_run_without_training(trained, data_dir, variant):
    summary, out = trained(variant, "gaussian25")
    checkpoint = out / "checkpoint.pt"
    before = (checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns)
    result = invoke(["train", "--method", variant, "--noise", "gaussian25", "--profile", "smoke",
                     *SMOKE_SET, "--out", str(out), "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, result.output
    again = last_json(result.stdout)
    assert again["images_seen"] == summary["images_seen"] == 8
    assert again["checkpoint"] == summary["checkpoint"]
    assert again["train_seconds"] == summary["train_seconds"], "the training time must be the stored one"
    assert (checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns) == before, "the checkpoint was rewritten"


def test_other_configuration_in_the_same_folder_is_refused(trained, data_dir):
    _, out = trained("n2c", "gaussian25")
    config_before = (out / "config.json").read_text()
    result = invoke(["train", "--method", "n2c", "--noise", "gaussian25", "--profile", "smoke",
                     *SMOKE_SET, "--set", "train.lr=1e-4", "--out", str(out), "--data-dir", str(data_dir)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and "another run" in result.stderr
    assert (out / "config.json").read_text() == config_before, "the refused run overwrote the folder's config"


@pytest.mark.parametrize("variant", ["n2c", "ssdn-known", "ssdn-mu"])
def test_checkpoint_evaluates_from_the_command_line(trained, data_dir, variant):
    summary, _ = trained(variant, "gaussian25")
    result = invoke(["evaluate", "--checkpoint", summary["checkpoint"], "--dataset", "kodak24",
                     "--max-images", "1", "--center-crop", "64", "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    scored = last_json(result.stdout)
    assert scored["method"] == variant_method(variant)
    assert scored["noise"] == "gaussian25" and scored["dataset"] == "kodak24"
    assert scored["n_evaluations"] == 1 and scored["center_crop"] == 64 and scored["pad_to"] == 64
    assert scored["convention"] == "uint8"
    assert math.isfinite(scored["psnr_mean"]) and 0 < scored["psnr_mean"] < 100


BAD_INPUTS = [
    pytest.param(["--method", "n2v", "--noise", "impulse50"], "n2c, n2n", id="n2v-impulse"),
    pytest.param(["--method", "ssdn-constant", "--noise", "gaussian5_50"], "per_image", id="constant-variable"),
    pytest.param(["--method", "n2c", "--noise", "gaussian25", "--set", "train.budgt=5"], "budgt", id="misspelt-key"),
    pytest.param(["--method", "n2c", "--noise", "gaussian25", "--set", "train.patch_size=50"], "multiple of 32",
                 id="patch-50"),
    pytest.param(["--method", "n2c", "--noise", "gausian25"], "gaussian25", id="bad-noise"),
    pytest.param(["--method", "n3c", "--noise", "gaussian25"], "n2c", id="bad-method"),
]


@pytest.mark.parametrize(("args", "hint"), BAD_INPUTS)
def test_bad_inputs_exit_2_with_one_error_line(tmp_path, args, hint):
    result = invoke(["train", *args, "--profile", "smoke", "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert hint in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert not (tmp_path / "run").exists(), "nothing may be written before the configuration is valid"


@pytest.mark.skipif(not ENTRY_POINT.exists(), reason="n2n-bench entry point not installed in this environment")
def test_installed_entry_point_trains(tmp_path, data_dir, trained):
    env = {**os.environ, "N2N_DATA": str(data_dir)}
    out = tmp_path / "n2c"
    done = subprocess.run(
        [str(ENTRY_POINT), "train", "--method", "n2c", "--noise", "gaussian25", "--profile", "smoke",
         *SMOKE_SET, "--out", str(out), "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = last_json(done.stdout)
    assert summary["images_seen"] == 8 and Path(summary["checkpoint"]).is_file()
    assert "Traceback" not in done.stderr
    # a separate process with the same configuration and seed trains the very same weights
    in_process, _ = trained("n2c", "gaussian25")
    assert summary["config_hash"] == in_process["config_hash"]
    ours = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)["model"]
    theirs = torch.load(in_process["checkpoint"], map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)

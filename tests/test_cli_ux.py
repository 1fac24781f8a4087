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

"""`n2n-bench denoise`: real images in, denoised images out at their size and bit depth.

Expected outputs are computed independently: pixels read back with Pillow / pypng / tifffile,
padding with numpy's reflect mode, quantisation from its formula, and the blind-spot output from
the evaluator's own denoiser (scoring.make_denoiser) on an input built here.
"""

from __future__ import annotations

import math
import re

import numpy as np
import png
import pytest
import tifffile
import torch
from PIL import Image
from typer.testing import CliRunner

from benchmarks.cli import app
from benchmarks.compose import compose_config
from benchmarks.denoise import denoise_command
from benchmarks.scoring import make_denoiser
from n2n_core.evaluation.protocol import EvalInput
from n2n_core.methods import build_method
from n2n_core.noise import NoisyBatch, parse_style
from n2n_core.seeding import make_generator
from n2n_core.train.checkpoint import save_checkpoint

runner = CliRunner()


def _identity(inputs, out, **kw):
    lines = []
    written = denoise_command(inputs=inputs, out=out, checkpoint=None, run=None, method="noisy",
                              noise=kw.get("noise", "gaussian25"), level=kw.get("level"), device="cpu",
                              tracking_uri=None, say=lines.append)
    return written, lines


def test_identity_method_returns_the_same_pixels_for_png_jpeg_and_grey(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)  # sides not multiples of 32
    grey = rng.integers(0, 256, (20, 41), dtype=np.uint8)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "a.png")
    Image.fromarray(grey).save(folder / "g.png")
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=80)
    written, lines = _identity([folder], tmp_path / "out")
    assert sorted(p.name for p in written) == ["a.png", "g.png", "photo.png"]  # JPEG → lossless PNG
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")), rgb)
    out_grey = Image.open(tmp_path / "out" / "g.png")
    assert out_grey.mode == "L" and np.array_equal(np.asarray(out_grey), grey)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "photo.png")),
                          np.asarray(Image.open(folder / "photo.jpg").convert("RGB")))
    assert any("level 25" in line and "training level" in line for line in lines)


def test_sixteen_bit_png_and_tiff_keep_sixteen_bits(tmp_path):
    rng = np.random.default_rng(2)
    deep = rng.integers(0, 65536, (19, 35, 3), dtype=np.uint16)
    deep[0, 0] = [1, 257, 65535]  # values an 8-bit round trip would change
    path = tmp_path / "deep.png"
    with open(path, "wb") as handle:
        png.Writer(width=35, height=19, greyscale=False, bitdepth=16).write(handle, deep.reshape(19, -1).tolist())
    tifffile.imwrite(tmp_path / "deep.tif", deep[..., 1], photometric="minisblack")
    _identity([path, tmp_path / "deep.tif"], tmp_path / "out")
    width, height, rows, info = png.Reader(filename=str(tmp_path / "out" / "deep.png")).read()
    assert info["bitdepth"] == 16 and (width, height) == (35, 19)
    assert np.array_equal(np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(19, 35, 3), deep)
    back = tifffile.imread(tmp_path / "out" / "deep.tif")
    assert back.dtype == np.uint16 and np.array_equal(back, deep[..., 1])


def _blindspot_checkpoint(tmp_path):
    cfg = compose_config("smoke", "ssdn-constant", "gaussian25", ["train.patch_size=32"])
    method = build_method(cfg.method, parse_style(cfg.noise), cfg.data.channels)
    model = method.build_model(make_generator(3)).eval()
    with torch.no_grad():  # a level far from softplus(-4), so that using it is visible
        for name, p in model.named_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=make_generator(hash(name) % 1000)))
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"model": model.state_dict(), "ema": None, "meta": {"config": cfg.canonical_json()}}, path)
    return cfg, method, model, path


def test_blindspot_checkpoint_is_tiled_as_the_evaluator_tiles_it(tmp_path):
    cfg, method, model, checkpoint = _blindspot_checkpoint(tmp_path)
    noisy = np.random.default_rng(4).integers(0, 256, (35, 40, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    lines = []
    denoise_command(inputs=[tmp_path / "noisy.png"], out=tmp_path / "out", checkpoint=checkpoint, run=None,
                    method=None, noise=None, level=None, device="cpu", tracking_uri=None, say=lines.append)
    got = np.asarray(Image.open(tmp_path / "out" / "noisy.png"))

    side = 64  # 32·ceil(40/32): the evaluator's padded square for a set of this one image
    padded = np.pad(noisy, ((0, side - 35), (0, side - 40), (0, 0)), mode="reflect")
    x = torch.from_numpy(padded.astype(np.float32) / 255).permute(2, 0, 1)[None]
    item = EvalInput("noisy", 0, NoisyBatch(x, torch.tensor([25 / 255])), 35, 40)
    expected = make_denoiser(method, model, torch.device("cpu"), cfg)([item])[0].reshape(3, side, side)[:, :35, :40]
    expected = torch.clamp(torch.floor(expected.double() * 255 + 0.5), 0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(got, expected)

    with torch.no_grad():  # whole-image denoising (no tiles) gives something else: the tiles were used
        estimate = model.estimated_level(x).expand(1)
        whole = method.denoise(model, NoisyBatch(x, torch.tensor([25 / 255]), estimate))[0, :, :35, :40]
    whole = torch.clamp(torch.floor(whole.double() * 255 + 0.5), 0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert not np.array_equal(got, whole)
    printed = float(re.search(r"level ([0-9.e+-]+) std", lines[0]).group(1))
    assert "estimated" in lines[0] and math.isclose(printed, 255 * float(estimate[0]), rel_tol=1e-3)


@pytest.mark.parametrize("channels, noise_args", [
    (3, ["--noise", "gaussian25", "--level", "25"]),
    (3, ["--level", "25"]),  # the command: a bare --level is Gaussian noise of that std
    (1, ["--noise", "gaussian25", "--level", "25"]),  # grey: bm3d's single-channel path, not NaN (black)
])
def test_cbm3d_writes_the_file_and_removes_noise(tmp_path, channels, noise_args):
    clean = np.tile(np.linspace(30, 220, 32), (32, 1))
    clean = clean[..., None].repeat(3, axis=2) if channels == 3 else clean
    noisy = np.clip(np.round(clean + np.random.default_rng(5).normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    result = runner.invoke(app, ["denoise", "--method", "cbm3d", *noise_args,
                                 str(tmp_path / "noisy.png"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "gaussian level 25 std on the 0-255 scale, given" in result.output
    written = Image.open(tmp_path / "out" / "noisy.png")
    assert written.mode == ("RGB" if channels == 3 else "L")
    out = np.asarray(written).astype(float)
    assert out.shape == noisy.shape
    mse = lambda a: float(np.mean((a - clean) ** 2))  # noqa: E731
    assert mse(out) < mse(noisy.astype(float)) / 4  # 6 dB better than the input, at least


@pytest.mark.parametrize("args, message", [
    (["--method", "noisy", "--noise", "gaussian5_50"], "needs --level"),
    (["--method", "cbm3d"], "needs --noise (e.g. --noise gaussian25 or poisson30) or a Gaussian --level"),
    (["--method", "cbm3d", "--level", "0"], "without --noise is a Gaussian std on the 0-255 scale and must be > 0"),
    (["--method", "noisy", "--noise", "gaussian25", "--level", "-3"], "must be ≥ 0"),
    (["--method", "n2c", "--noise", "gaussian25"], "must be trained first"),
    (["--noise", "gaussian25"], "exactly one of"),
])
def test_bad_denoise_input_is_one_line(tmp_path, args, message):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    result = runner.invoke(app, ["denoise", *args, str(tmp_path / "x.png"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o" / "x.png").exists()


def test_two_inputs_with_one_output_name_or_overwriting_the_input_are_refused(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.jpg")
    for inputs, out, message in (([tmp_path / "x.png", tmp_path / "x.jpg"], tmp_path / "o", "both be written"),
                                 ([tmp_path / "x.png"], tmp_path, "would overwrite")):
        result = runner.invoke(app, ["denoise", "--method", "noisy", "--noise", "gaussian25",
                                     *map(str, inputs), "--out", str(out)])
        assert result.exit_code == 2 and message in result.output, result.output


def test_images_that_cannot_keep_their_depth_or_have_alpha_are_refused_in_one_line(tmp_path):
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((8, 8, 3), np.float32), photometric="rgb")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "alpha.png")
    for name, message in (("float.tif", "8- or 16-bit integers"), ("alpha.png", "alpha channel")):
        result = runner.invoke(app, ["denoise", "--method", "noisy", "--noise", "gaussian25",
                                     str(tmp_path / name), "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())

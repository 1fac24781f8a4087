"""The evaluation protocol (docs/methods.md section 8): pad, seeded noise per (image, repeat), crop, PSNR.

References are computed independently: images are re-read with PIL, padding is rebuilt by index
arithmetic, PSNR comes from skimage.metrics on arrays quantised with a numpy copy of the rule.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from n2n_core.data.sets import resolve_set
from n2n_core.evaluation.protocol import Evaluator
from n2n_core.noise import parse_style
from n2n_core.seeding import derive_seed, make_generator

SIZES = ((24, 32), (32, 20), (40, 37))  # (h, w); the largest side, 40, pads to 64


def pil_uint8(path: Path) -> np.ndarray:
    """(3, H, W) uint8 read with PIL directly, not through the library."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1).copy()


def reflect_pad_np(image: np.ndarray, size: int) -> np.ndarray:
    """Bottom/right reflect padding (edge not repeated) to size×size, built from explicit indices."""
    _, h, w = image.shape

    def idx(i: int, n: int) -> int:
        period = 2 * (n - 1)
        i %= period
        return i if i < n else period - i

    return image[:, [idx(i, h) for i in range(size)]][:, :, [idx(j, w) for j in range(size)]]


def np_quantize(v) -> np.ndarray:
    return np.clip(np.floor(np.asarray(v, dtype=np.float64) * 255.0 + 0.5), 0, 255).astype(np.uint8)


def skimage_psnr_uint8(output: np.ndarray, clean_uint8: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identical images: divide by zero → inf
        return peak_signal_noise_ratio(clean_uint8, np_quantize(output), data_range=255)


class Recorder:
    """A denoiser that records every input it is handed and returns transform(item)."""

    def __init__(self, transform=lambda item: item.noisy.noisy):
        self.transform = transform
        self.seen = []  # EvalInput, in call order
        self.chunks: list[int] = []

    def __call__(self, items):
        self.chunks.append(len(items))
        self.seen.extend(items)
        return [self.transform(item) for item in items]


@pytest.fixture
def folder(png_folder) -> Path:
    return png_folder(SIZES, seed=1, name="evalset")


@pytest.fixture
def image_set(folder):
    return resolve_set(f"folder:{folder}", Path("/nonexistent-data-dir"))


# ----------------------------------------------------------------------------- pad / crop


def test_zero_noise_identity_round_trip_is_exact(image_set, folder):
    evaluator = Evaluator(image_set, parse_style("gaussian0"), seed=0, repeats=1)
    assert evaluator.pad_to == 64
    recorder = Recorder()
    result = evaluator.run(recorder)
    assert [r.psnr for r in result.records] == [math.inf] * len(SIZES)
    paths = sorted(folder.glob("*.png"))
    assert [item.image_id for item in recorder.seen] == [p.stem for p in paths]
    for item, path in zip(recorder.seen, paths, strict=True):
        clean = pil_uint8(path)
        assert (item.height, item.width) == clean.shape[1:]
        noisy = item.noisy.noisy
        assert noisy.shape == (1, 3, 64, 64)
        # padded at bottom/right only, by reflection, before the (here zero) noise
        assert np.array_equal(noisy[0].numpy(), reflect_pad_np(clean, 64).astype(np.float32) / 255)


def test_output_is_cropped_back_to_the_top_left_original(image_set):
    evaluator = Evaluator(image_set, parse_style("gaussian0"))

    def garbage_in_padding(item):  # wrong values only where padding was: must not be scored
        out = item.noisy.noisy[0].clone()  # (3, S, S): a 3-D output is accepted too
        out[:, item.height :, :] = 7.0
        out[:, :, item.width :] = -3.0
        return out

    assert all(r.psnr == math.inf for r in evaluator.run(Recorder(garbage_in_padding)).records)

    def shifted(item):  # the true image moved one pixel: scored, so finite
        return torch.roll(item.noisy.noisy, shifts=1, dims=-1)

    assert all(math.isfinite(r.psnr) for r in evaluator.run(Recorder(shifted)).records)


def test_psnr_mean_equals_independent_skimage_scores(image_set, folder):
    repeats = 3
    evaluator = Evaluator(image_set, parse_style("gaussian5_50"), seed=4, repeats=repeats)
    recorder = Recorder()
    result = evaluator.run(recorder)
    clean = {p.stem: pil_uint8(p) for p in folder.glob("*.png")}
    expected = []
    for item, record in zip(recorder.seen, result.records, strict=True):
        assert (record.image_id, record.repeat) == (item.image_id, item.repeat)
        out = item.noisy.noisy[0, :, : item.height, : item.width].numpy()
        score = skimage_psnr_uint8(out, clean[item.image_id])
        assert record.psnr == pytest.approx(score, rel=1e-12)
        assert record.level == pytest.approx(float(item.noisy.level[0]))
        expected.append(score)
    assert result.psnr_mean == pytest.approx(np.mean(expected), rel=1e-12)
    per_image = result.per_image()
    for image_id in clean:
        mine = [s for s, it in zip(expected, recorder.seen) if it.image_id == image_id]
        assert per_image[image_id] == pytest.approx(np.mean(mine), rel=1e-12)
    assert all(12 < s < 35 for s in expected)  # σ ∈ [5, 50]/255: roughly 14 to 34 dB


def test_denoiser_quality_changes_the_score_in_the_right_direction(image_set, folder):
    evaluator = Evaluator(image_set, parse_style("gaussian25"), seed=0)
    clean = {p.stem: torch.from_numpy(pil_uint8(p)).float() / 255 for p in folder.glob("*.png")}

    def half_way(item):  # halve the noise on the image area: MSE ÷ 4 → about +6 dB
        x = reflect_pad_np(clean[item.image_id].numpy(), evaluator.pad_to)
        return (item.noisy.noisy[0] + torch.from_numpy(x)) / 2

    noisy_score = evaluator.run(Recorder()).psnr_mean
    better = evaluator.run(Recorder(half_way)).psnr_mean
    assert 5.0 < better - noisy_score < 7.0


# ----------------------------------------------------------------------------- same noisy inputs


def test_two_denoisers_receive_identical_noisy_inputs(image_set):
    evaluator = Evaluator(image_set, parse_style("poisson5_50"), seed=9, repeats=2)
    identity, constant = Recorder(), Recorder(lambda item: torch.full_like(item.noisy.noisy, 0.5))
    a, b = evaluator.run(identity), evaluator.run(constant, chunk=4)
    assert len(identity.seen) == len(constant.seen) == len(SIZES) * 2
    for x, y in zip(identity.seen, constant.seen, strict=True):
        assert (x.image_id, x.repeat) == (y.image_id, y.repeat)
        assert torch.equal(x.noisy.noisy, y.noisy.noisy) and torch.equal(x.noisy.level, y.noisy.level)
    assert a.psnr_mean != b.psnr_mean
    assert constant.chunks == [4, 2]  # chunking changes batching, not inputs
    # a second Evaluator instance (as in another process or for another method) draws the same
    again = Recorder()
    Evaluator(image_set, parse_style("poisson5_50"), seed=9, repeats=2).run(again)
    assert all(torch.equal(x.noisy.noisy, y.noisy.noisy) for x, y in zip(identity.seen, again.seen))


def test_noise_depends_on_seed_image_and_repeat(png_folder):
    # two files with identical pixels: the noise must still differ, since it is keyed by image id
    folder = png_folder(((32, 32), (32, 32)), seed=5, name="twins")
    twin = folder / "img01.png"
    twin.write_bytes((folder / "img00.png").read_bytes())
    image_set = resolve_set(f"folder:{folder}", Path("/unused"))

    def draws(seed, repeats, max_images=None):
        recorder = Recorder()
        noise = parse_style("gaussian25")
        Evaluator(image_set, noise, seed=seed, repeats=repeats, max_images=max_images).run(recorder)
        return {(i.image_id, i.repeat): i.noisy.noisy for i in recorder.seen}

    base = draws(seed=0, repeats=3)
    assert not torch.equal(base[("img00", 0)], base[("img01", 0)])  # image
    assert not torch.equal(base[("img00", 0)], base[("img00", 1)])  # repeat
    assert not torch.equal(base[("img00", 1)], base[("img00", 2)])
    other_seed = draws(seed=1, repeats=3)
    assert not torch.equal(base[("img00", 0)], other_seed[("img00", 0)])  # seed
    fewer = draws(seed=0, repeats=2, max_images=1)  # same (seed, image, repeat) → same draw
    assert set(fewer) == {("img00", 0), ("img00", 1)}
    for key, value in fewer.items():
        assert torch.equal(value, base[key])


def test_noise_for_each_image_and_repeat_comes_from_its_own_documented_seed(image_set, folder):
    # the protocol's contract (protocol.py docstring): the draw for (image, repeat) is
    # noise.sample(padded clean, generator seeded with derive_seed(seed, set name, image id, repeat)),
    # so any outside tool can rebuild a single evaluation input without replaying the others
    noise = parse_style("gaussian5_50")
    evaluator = Evaluator(image_set, noise, seed=12, repeats=3)
    clean = {p.stem: pil_uint8(p) for p in folder.glob("*.png")}
    for item in evaluator.inputs():
        padded = torch.from_numpy(reflect_pad_np(clean[item.image_id], 64).astype(np.float32) / 255)[None]
        generator = make_generator(derive_seed(12, image_set.name, item.image_id, item.repeat))
        expected = noise.sample(padded, generator)
        assert torch.equal(item.noisy.noisy, expected.noisy) and torch.equal(item.noisy.level, expected.level)


def test_noise_added_after_padding_covers_the_padding(image_set):
    evaluator = Evaluator(image_set, parse_style("gaussian25"), seed=0)
    clean_eval = Evaluator(image_set, parse_style("gaussian0"), seed=0)
    for noisy, clean in zip(evaluator.inputs(), clean_eval.inputs(), strict=True):
        residual = noisy.noisy.noisy - clean.noisy.noisy  # (1, 3, S, S)
        pad_region = residual[..., noisy.height :, :]
        assert pad_region.numel() > 0
        assert pad_region.std().item() == pytest.approx(25 / 255, rel=0.1)
        assert residual[..., : noisy.height, : noisy.width].std().item() == pytest.approx(25 / 255, rel=0.1)


# ----------------------------------------------------------------------------- counting


@pytest.mark.parametrize(("repeats", "max_images"), [(1, None), (4, None), (3, 2)])
def test_repeats_counted(image_set, repeats, max_images):
    evaluator = Evaluator(image_set, parse_style("impulse50"), seed=0, repeats=repeats, max_images=max_images)
    n_images = len(SIZES) if max_images is None else max_images
    ticks = []
    result = evaluator.run(Recorder(), progress=ticks.append)
    assert evaluator.n_evaluations == result.n_evaluations == n_images * repeats == len(ticks)
    keys = [(r.image_id, r.repeat) for r in result.records]
    ids = sorted(p.stem for p in image_set.paths)[:n_images]
    assert sorted(keys) == sorted((i, k) for i in ids for k in range(repeats))
    summary = result.summary()
    assert summary["n_evaluations"] == n_images * repeats and summary["n_images"] == n_images
    assert summary["repeats"] == repeats and summary["noise"] == "impulse50"
    assert summary["convention"] == "uint8"


# ----------------------------------------------------------------------------- pad size, centre crop


@pytest.mark.parametrize(("name", "expected"), [("kodak24", 768), ("bsd300", 512)])
def test_pad_to_is_common_multiple_of_32_covering_every_side(data_dir, name, expected):
    evaluator = Evaluator(resolve_set(name, data_dir), parse_style("gaussian25"))
    sides = [s for img in evaluator.clean_images() for s in img.shape[1:]]
    assert evaluator.pad_to == expected
    assert evaluator.pad_to % 32 == 0 and evaluator.pad_to >= max(sides)
    assert evaluator.pad_to - 32 < max(sides)  # the smallest such size


def test_center_crop_honoured(png_folder):
    folder = png_folder(((41, 49), (21, 49)), seed=2, name="cc")
    image_set = resolve_set(f"folder:{folder}", Path("/unused"))
    size = 16
    evaluator = Evaluator(image_set, parse_style("gaussian0"), center_crop=size)
    assert evaluator.pad_to == 32
    full = {p.stem: pil_uint8(p) for p in sorted(folder.glob("*.png"))}
    # top/left = floor((side − size) / 2), by hand: (41, 49) → rows 12..27, cols 16..31;
    # (21, 49) → rows 2..17 (odd differences, so rounding the other way would be caught)
    windows = {"img00": (12, 16), "img01": (2, 16)}
    for item in evaluator.inputs():
        assert (item.height, item.width) == (size, size)
        top, left = windows[item.image_id]
        expected = full[item.image_id][:, top : top + size, left : left + size]
        assert np.array_equal(np_quantize(item.noisy.noisy[0, :, :size, :size].numpy()), expected)

    def true_centre(item):  # the output a perfect denoiser would give for the centre crop
        top, left = windows[item.image_id]
        crop = full[item.image_id][:, top : top + size, left : left + size]
        return torch.from_numpy(reflect_pad_np(crop, 32).astype(np.float32) / 255)

    def off_by_one(item):
        top, left = windows[item.image_id]
        crop = full[item.image_id][:, top + 1 : top + 1 + size, left : left + size]
        return torch.from_numpy(crop.astype(np.float32) / 255)

    assert all(r.psnr == math.inf for r in evaluator.run(Recorder(true_centre)).records)
    assert all(math.isfinite(r.psnr) for r in evaluator.run(Recorder(off_by_one)).records)
    result = evaluator.run(Recorder(true_centre))
    assert result.center_crop == size and result.summary()["center_crop"] == size


def test_center_crop_larger_than_a_side_keeps_that_side(png_folder):
    folder = png_folder(((20, 51),), seed=3, name="cc2")
    image_set = resolve_set(f"folder:{folder}", Path("/unused"))
    evaluator = Evaluator(image_set, parse_style("gaussian0"), center_crop=32)
    (item,) = list(evaluator.inputs())
    assert (item.height, item.width) == (20, 32)
    expected = pil_uint8(folder / "img00.png")[:, :, 9:41]  # (51 - 32) // 2 = 9
    assert np.array_equal(np_quantize(item.noisy.noisy[0, :, :20, :32].numpy()), expected)

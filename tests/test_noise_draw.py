"""train.noise_draw="fixed" and noisy:SET training sets (docs/methods.md §2, "Fixed noise").

References are computed here, not by the stream: a fixed realisation is drawn from its documented
seed, derive_seed(seed, "fixed-noise", image, k), on the whole image and cut where the clean crop
is found by brute-force search (random uint8 images: each window occurs once); fresh noise is a
direct `noise.sample` on a generator seeded like the step's; a noisy: set's crops are found pixel
for pixel in the inputs the evaluator itself hands a denoiser.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from benchmarks.cli import app
from benchmarks.compose import compose_config
from benchmarks.grid import expand
from n2n_core.config import EvalConfig, TrainConfig
from n2n_core.data.sets import resolve_set
from n2n_core.data.train_stream import CropStream, stream_for
from n2n_core.errors import N2NError, TrainingSetNotSupported
from n2n_core.evaluation.paired import make_evaluator
from n2n_core.methods import METHODS, build_method, method_config
from n2n_core.methods.base import Method, MethodConfigBase, Step, TrainingPair
from n2n_core.methods.r2r import recorrupt
from n2n_core.noise import parse_style
from n2n_core.seeding import derive_seed, make_generator
from n2n_core.train.trainer import Trainer

CPU = torch.device("cpu")
GAUSS25 = parse_style("gaussian25")
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers


class ObservedConfig(MethodConfigBase):
    name: Literal["observed"] = "observed"


class Observed(Method):
    """Records what its training pair is handed: the clean argument and `draws` step.noisy calls."""

    Config = ObservedConfig

    def __init__(self, noise=GAUSS25, draws: int = 1):
        super().__init__(ObservedConfig(), noise)
        self.n_draws = draws

    def training_pair(self, clean, step):
        self.clean = clean
        self.draws = [step.noisy(self.noise, clean) for _ in range(self.n_draws)]
        return TrainingPair(inputs=self.draws[0].noisy, targets=self.draws[-1].noisy)


def a_step(seed: int = 10) -> Step:
    return Step(noise=make_generator(seed), method=make_generator(seed + 1))


def observe(stream, images_seen: int, batch_size: int = 3, draws: int = 1) -> Observed:
    method = Observed(draws=draws)
    stream.training_pair(method, images_seen, batch_size, a_step(), CPU)
    return method


def windows(image: torch.Tensor, crop: torch.Tensor) -> list[tuple[int, int]]:
    """Every (top, left) where `crop` (C, P, P) sits in `image` (C, H, W), by brute force."""
    p = crop.shape[-1]
    unfolded = image.unfold(1, p, 1).unfold(2, p, 1)  # (C, H-P+1, W-P+1, P, P)
    match = (unfolded == crop[:, None, None]).flatten(3).all(-1).all(0)
    return [tuple(int(v) for v in idx) for idx in match.nonzero()]


def locate(images: list[torch.Tensor], crop: torch.Tensor) -> tuple[int, int, int]:
    """(image, top, left) of the one place `crop` comes from."""
    found = [(i, *w) for i, image in enumerate(images) for w in windows(image, crop)]
    assert len(found) == 1, f"crop found {len(found)} times"
    return found[0]


def reference_realisation(image: torch.Tensor, seed: int, index: int, k: int, noise=GAUSS25):
    """Realisation k of whole image `index` as documented: noise.sample on the whole float image."""
    whole = (image.float() / 255)[None]
    return noise.sample(whole, make_generator(derive_seed(seed, "fixed-noise", index, k)))


def fixed_stream(images, seed: int = 5, patch: int = 32, noise=GAUSS25) -> CropStream:
    return CropStream(images, patch, seed, fixed_noise=noise)


# ----------------------------------------------------------------------------- the fixed draw


def test_fixed_crops_are_cut_from_the_documented_whole_image_realisations(tiny_images):
    images, seed = tiny_images(3, 40, 44, seed=1), 5
    method = observe(fixed_stream(images, seed), images_seen=4, draws=2)  # N2N's two realisations
    for j, clean in enumerate(method.clean):
        index, top, left = locate([i.float() / 255 for i in images], clean)
        for k, drawn in enumerate(method.draws):
            whole = reference_realisation(images[index], seed, index, k)
            assert torch.equal(drawn.noisy[j], whole.noisy[0, :, top:top + 32, left:left + 32]), (j, k)
            assert torch.equal(drawn.level[j:j + 1], whole.level)


def test_fixed_draw_is_identical_across_resumes(tiny_images):
    images = tiny_images(4, 40, 44, seed=2)
    first = observe(fixed_stream(images), images_seen=7, draws=2)  # two fresh streams, as after a restart
    again = observe(fixed_stream(images), images_seen=7, draws=2)
    for a, b in zip(first.draws, again.draws, strict=True):
        assert torch.equal(a.noisy, b.noisy) and torch.equal(a.level, b.level)


CHILD = textwrap.dedent("""
    import torch
    from n2n_core.data.train_stream import CropStream
    from n2n_core.methods.base import Step
    from n2n_core.noise import parse_style
    from n2n_core.seeding import make_generator

    def fixed_batch(noise_style):
        rng = make_generator(123)
        images = [torch.randint(0, 256, (3, 40, 44), generator=rng, dtype=torch.uint8) for _ in range(3)]
        stream = CropStream(images, 32, seed=9, fixed_noise=parse_style(noise_style))
        seen = {}

        class Grab:
            def training_pair(self, clean, step):
                seen["noisy"] = [step.noisy(None, clean).noisy for _ in range(2)]

        step = Step(noise=make_generator(0), method=make_generator(1))
        stream.training_pair(Grab(), 5, 3, step, torch.device("cpu"))
        return torch.stack(seen["noisy"])
""")


@pytest.mark.parametrize("style", ["gaussian25", "poisson5_50"])
def test_fixed_draw_is_identical_across_processes(style, tmp_path):
    out = tmp_path / "child.pt"
    script = CHILD + f"\ntorch.save(fixed_batch({style!r}), {str(out)!r})\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    here: dict = {}
    exec(CHILD, here)
    assert torch.equal(torch.load(out, weights_only=True), here["fixed_batch"](style))


def test_the_same_pixel_keeps_its_noise_at_every_step(tiny_images):
    """Crops of one image at different steps (other positions, other epochs) agree where they overlap."""
    images = tiny_images(2, 40, 44, seed=3)
    stream = fixed_stream(images)
    floats = [i.float() / 255 for i in images]
    seen_crops = []  # (image, top, left, noisy crop), over four steps: six passes over the two images
    for seen in range(0, 12, 3):
        method = observe(stream, seen)
        seen_crops += [(*locate(floats, clean), noisy) for clean, noisy in zip(method.clean, method.draws[0].noisy)]
    moved = 0
    for n, (i, t1, l1, a) in enumerate(seen_crops):
        for j, t2, l2, b in seen_crops[n + 1:]:
            if i != j:
                continue
            top, left = max(t1, t2), max(l1, l2)  # 32² crops of a 40×44 image always overlap
            rows, cols = slice(top, min(t1, t2) + 32), slice(left, min(l1, l2) + 32)
            shift = lambda crop, t, l: crop[:, rows.start - t:rows.stop - t, cols.start - l:cols.stop - l]  # noqa: E731
            assert torch.equal(shift(a, t1, l1), shift(b, t2, l2)), (i, t1, l1, t2, l2)
            moved += (t1, l1) != (t2, l2)
    assert moved >= 3, "crops at other positions were compared"


def test_fixed_noise_differs_between_images_and_between_the_two_realisations(tiny_images):
    images = tiny_images(2, 40, 44, seed=4)
    stream = fixed_stream(images, seed=5)
    whole = {(i, k): stream.realisation(i, k).noisy[0] - images[i].float() / 255 for i in (0, 1) for k in (0, 1)}
    for a, b in [((0, 0), (1, 0)), ((0, 0), (0, 1)), ((1, 0), (1, 1))]:
        differ = (whole[a] != whole[b]).float().mean()
        assert differ > 0.99, (a, b, float(differ))
        correlation = torch.corrcoef(torch.stack([whole[a].flatten(), whole[b].flatten()]))[0, 1]
        assert abs(float(correlation)) < 0.05, (a, b, float(correlation))  # independent draws
    method = observe(stream, 0, draws=2)  # N2N's pair: input and target are different realisations
    assert (method.draws[0].noisy != method.draws[1].noisy).float().mean() > 0.99


def test_a_method_that_draws_its_own_noise_is_refused_under_fixed_noise(tiny_images):
    class OwnNoise(Observed):
        def training_pair(self, clean, step):
            return TrainingPair(inputs=self.noise.sample(clean, step.noise).noisy, targets=clean)

    with pytest.raises(N2NError, match=r"step\.noisy") as err:
        fixed_stream(tiny_images(2, 40, 44)).training_pair(OwnNoise(), 0, 2, a_step(), CPU)
    assert "\n" not in str(err.value)
    # fresh noise: the same method trains as before
    CropStream(tiny_images(2, 40, 44), 32, seed=5).training_pair(OwnNoise(), 0, 2, a_step(), CPU)


def test_a_method_that_changes_the_crops_before_the_draw_is_refused(tiny_images):
    class FlipsFirst(Observed):
        def training_pair(self, clean, step):
            return super().training_pair(clean.flip(-1), step)

    with pytest.raises(N2NError, match="draw first"):
        fixed_stream(tiny_images(2, 40, 44)).training_pair(FlipsFirst(), 0, 2, a_step(), CPU)


def test_course_flips_under_fixed_noise_flip_the_fixed_realisations(tiny_images):
    images = tiny_images(3, 40, 44, seed=6)
    course = build_method(method_config("course", flips=True), GAUSS25)
    pair = fixed_stream(images).training_pair(course, 3, 3, a_step(), CPU)
    plain = observe(fixed_stream(images), 3, draws=2)
    chosen = []
    for j in range(3):
        candidates = [(d.noisy[j], d.noisy[j].flip(-1), d.noisy[j].flip(-2), d.noisy[j].flip(-1).flip(-2))
                      for d in plain.draws]
        flips = [[torch.equal(t, c) for c in cands] for t, cands in zip((pair.inputs[j], pair.targets[j]), candidates)]
        assert flips[0] == flips[1] and sum(flips[0]) == 1, f"crop {j}: input and target flipped alike"
        chosen.append(flips[0].index(True))
    assert any(chosen), "no crop was flipped: the check saw no flip"


# ----------------------------------------------------------------------------- fresh mode is today's


@pytest.mark.parametrize("style", ["gaussian25", "poisson5_50", "impulse50"])
def test_fresh_step_noisy_is_a_direct_draw_on_step_noise(style):
    noise, clean = parse_style(style), torch.rand(2, 3, 16, 16, generator=make_generator(1))
    step, direct = a_step(10), make_generator(10)
    for _ in range(2):  # also the second draw: the generator advanced exactly as a direct draw does
        ours, theirs = step.noisy(noise, clean), noise.sample(clean, direct)
        assert torch.equal(ours.noisy, theirs.noisy) and torch.equal(ours.level, theirs.level)


TRAINABLE = [name for name, cls in METHODS.items() if cls.trainable]


@pytest.mark.parametrize("name", TRAINABLE)
def test_fresh_pairs_hold_the_direct_draw_bit_for_bit(name, tiny_images):
    """What each method trained on before step.noisy existed: noise.sample(clean, step.noise)."""
    stream = CropStream(tiny_images(3, 40, 44, seed=7), 32, seed=5)
    method = build_method(method_config(name), GAUSS25)
    pair = stream.training_pair(method, 2, 2, a_step(10), CPU)
    clean, direct = stream.batch(2, 2), make_generator(10)
    first = GAUSS25.sample(clean, direct)
    if name == "r2r":  # the recorruption continues on the same generator
        inputs, targets = recorrupt(first.noisy, first.level, method.config.alpha, direct)
        assert torch.equal(pair.inputs, inputs) and torch.equal(pair.targets, targets)
    else:
        assert torch.equal(pair.inputs, first.noisy) or torch.equal(pair.targets, first.noisy)
    if method.training_needs(method.config)[1] == 2:  # n2n, course: the target is the next direct draw
        assert torch.equal(pair.targets, GAUSS25.sample(clean, direct).noisy)


def test_fresh_runs_keep_their_identity_and_fixed_ones_get_their_own():
    fresh = compose_config("smoke", "n2n", "gaussian25")
    fixed = compose_config("smoke", "n2n", "gaussian25", ["train.noise_draw=fixed"])
    assert "noise_draw" not in fresh.canonical_json()
    assert '"noise_draw":"fixed"' in fixed.canonical_json()
    assert fresh.config_hash() != fixed.config_hash()


# ----------------------------------------------------------------------------- training and resume


class Stop(Exception):
    pass


class StoppingStream(CropStream):
    def __init__(self, *args, stop_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_at = stop_at

    def training_pair(self, method, images_seen, batch_size, step, device):
        if self.stop_at is not None and images_seen >= self.stop_at:
            raise Stop(images_seen)
        return super().training_pair(method, images_seen, batch_size, step, device)


def train_n2n(images, path: Path, fixed: bool = True, stop_at=None) -> dict:
    method = build_method(method_config("n2n"), GAUSS25)
    cfg = TrainConfig(budget_images=8, batch_size=2, patch_size=32, checkpoint_every_images=4,
                      validation_images=0, noise_draw="fixed" if fixed else "fresh")
    stream = StoppingStream(images, 32, 3, fixed_noise=GAUSS25 if fixed else None, stop_at=stop_at)
    Trainer(method, stream, cfg, seed=3, device=CPU, progress=False).fit(
        method.build_model(make_generator(0)), path)
    return torch.load(path, weights_only=True)["model"]


def test_a_resumed_fixed_noise_run_ends_bit_equal_to_an_uninterrupted_one(tiny_images, tmp_path):
    images = tiny_images(3, 40, 44, seed=8)
    whole = train_n2n(images, tmp_path / "whole.pt")
    with pytest.raises(Stop):
        train_n2n(images, tmp_path / "resumed.pt", stop_at=6)  # killed after the checkpoint at 4 images
    resumed = train_n2n(images, tmp_path / "resumed.pt")
    fresh = train_n2n(images, tmp_path / "fresh.pt", fixed=False)
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    assert any(not torch.equal(whole[k], fresh[k]) for k in whole), "the fixed run trained on other noise"


def test_a_configured_fixed_run_trains_on_fixed_noise_end_to_end(data_dir, tmp_path, monkeypatch):
    from benchmarks.training import train
    from n2n_core.methods.n2n import N2N

    fixed = []
    original = N2N.training_pair

    def recording(self, clean, step):
        fixed.append(step.noise_is_fixed)
        return original(self, clean, step)

    monkeypatch.setattr(N2N, "training_pair", recording)
    cfg = compose_config("smoke", "n2n", "gaussian25", [
        "train.noise_draw=fixed", "train.budget_images=8", "train.patch_size=32", "train.batch_size=4",
        "train.validation_images=0", "train.device=cpu"])
    assert train(cfg, tmp_path / "run", data_dir=data_dir, progress=False).images_seen == 8
    assert fixed == [True, True]


# ----------------------------------------------------------------------------- seeds


def test_the_seed_changes_every_random_stream(tiny_images):
    images = tiny_images(6, 40, 44, seed=9)
    a, b = fixed_stream(images, seed=0), fixed_stream(images, seed=1)
    assert [a.image_index(c) for c in range(12)] != [b.image_index(c) for c in range(12)], "crop order"
    assert [a.crop_box(c)[1:] for c in range(12)] != [b.crop_box(c)[1:] for c in range(12)], "crop positions"
    assert not torch.equal(a.realisation(0, 0).noisy, b.realisation(0, 0).noisy), "fixed noise"
    steps = [Trainer(None, None, TrainConfig(budget_images=8), seed=s, device=CPU).step_context(0, 0)
             for s in (0, 1)]
    clean = torch.full((1, 3, 32, 32), 0.5)
    assert not torch.equal(steps[0].noisy(GAUSS25, clean).noisy, steps[1].noisy(GAUSS25, clean).noisy), "fresh noise"
    n2v = build_method(method_config("n2v"), GAUSS25)
    masks = [n2v.training_pair(clean, step).mask for step in steps]
    assert not torch.equal(masks[0], masks[1]), "method masks"


# ----------------------------------------------------------------------------- noisy:SET


NOISY_EVAL = EvalConfig(sets=["kodak24"], center_crop=64, max_images=2, seed=4)


@pytest.fixture(scope="module")
def scored_inputs(data_dir):
    """The noisy inputs and clean images the evaluator scores (repeat 0, cut back to the image)."""
    evaluator = make_evaluator(resolve_set("kodak24", data_dir), GAUSS25, seed=NOISY_EVAL.seed, repeats=3,
                               center_crop=NOISY_EVAL.center_crop, max_images=NOISY_EVAL.max_images)
    noisy = [item.noisy.noisy[0, :, :item.height, :item.width] for item in evaluator.inputs() if item.repeat == 0]
    return noisy, [c.float() / 255 for c in evaluator.clean_images()]


@pytest.fixture(scope="module")
def noisy_stream(data_dir):
    return stream_for(resolve_set("noisy:kodak24", data_dir), 32, seed=1, noise=GAUSS25, noise_draw="fixed",
                      evaluation=NOISY_EVAL)


def test_noisy_set_crops_are_the_evaluators_noisy_inputs_and_clean_never_reaches_the_method(
        noisy_stream, scored_inputs):
    noisy_inputs, _ = scored_inputs
    for seen in (0, 3, 6):
        method = observe(noisy_stream, seen)
        assert method.clean.isnan().all(), "the method's clean argument is a placeholder"
        for crop in method.draws[0].noisy:
            locate(noisy_inputs, crop)  # exactly one place in the evaluator's noisy inputs


NOISY_SET_METHODS = [name for name in TRAINABLE if METHODS[name].training_needs(method_config(name)) == (False, 1)]


@pytest.mark.parametrize("name", NOISY_SET_METHODS)
def test_no_clean_value_is_in_a_pair_built_from_a_noisy_set(name, noisy_stream, scored_inputs):
    noisy_inputs, clean_images = scored_inputs
    where = [locate(noisy_inputs, crop) for crop in observe(noisy_stream, 3, batch_size=2).draws[0].noisy]
    pair = noisy_stream.training_pair(build_method(method_config(name), GAUSS25), 3, 2, a_step(), CPU)
    for j, (index, top, left) in enumerate(where):
        clean = clean_images[index][:, top:top + 32, left:left + 32]
        for part in (pair.inputs[j], pair.targets[j]):
            assert not part.isnan().any(), "the placeholder leaked into the pair"
            assert not (part == clean).any(), "a clean pixel value reached the pair"


def test_training_on_a_noisy_set_end_to_end_never_hands_the_method_a_clean_crop(data_dir, tmp_path, monkeypatch):
    from benchmarks.training import train
    from n2n_core.methods.n2v import N2V

    handed = []
    original = N2V.training_pair

    def recording(self, clean, step):
        handed.append(clean.clone())
        return original(self, clean, step)

    monkeypatch.setattr(N2V, "training_pair", recording)
    cfg = compose_config("smoke", "n2v", "gaussian25", [
        "train.train_set=noisy:kodak24", "train.budget_images=8", "train.patch_size=32", "train.batch_size=4",
        "train.validation_images=0", "train.device=cpu", "eval.center_crop=64", "eval.max_images=2"])
    assert cfg.train.noise_draw == "fixed", "a noisy: set is recorded as fixed noise"
    result = train(cfg, tmp_path / "run", data_dir=data_dir, progress=False)
    assert result.images_seen == 8 and len(handed) == 2
    assert all(clean.isnan().all() for clean in handed)


REFUSED = ["n2c", "n2n", "course-strided", "course-strided-n2c"]


@pytest.mark.parametrize("variant", REFUSED)
def test_methods_that_need_clean_targets_or_two_draws_are_refused_on_noisy_sets(variant):
    with pytest.raises(ValidationError) as err:
        compose_config("quick", variant, "gaussian25", ["train.train_set=noisy:kodak24"])
    refusals = [e.get("ctx", {}).get("error") for e in err.value.errors()]
    assert len(refusals) == 1 and isinstance(refusals[0], TrainingSetNotSupported)
    message = str(refusals[0])
    assert "\n" not in message and "noisy:kodak24" in message
    assert "n2v" in message and "ssdn-mu" in message  # names methods that can


def test_the_grid_lists_refused_methods_as_not_applicable_and_the_cli_refuses_in_one_line(tmp_path):
    jobs, left_out = expand("gaussian25", "quick", ["n2c", "n2n", "n2v", "ssdn-mu"],
                            ["train.train_set=noisy:kodak24"])
    assert sorted(job.variant for job in jobs) == ["n2v", "ssdn-mu"]
    assert set(left_out) == {"n2c", "n2n"}
    result = CliRunner().invoke(app, ["train", "--method", "n2n", "--noise", "gaussian25", "--profile", "smoke",
                                      "--set", "train.train_set=noisy:kodak24", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "n2n cannot train on noisy:kodak24" in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("overrides", "hint"), [
    (["train.train_set=noisy:kodak24", "train.noise_draw=fresh"], "fixed"),
    (["eval.sets=[\"noisy:kodak24\"]"], "training set only"),
    (["train.validation_set=noisy:kodak24"], "training set only"),
    (["train.train_set=course32:/nowhere", "train.noise_draw=fixed"], "its own noisy pairs"),
])
def test_noisy_sets_are_for_training_with_fixed_noise_only(overrides, hint):
    with pytest.raises(ValidationError, match=hint):
        compose_config("smoke", "n2v", "gaussian25", overrides)


def test_a_noisy_set_must_name_an_evaluation_set(data_dir):
    with pytest.raises(N2NError, match="noisy:kodak24"):
        resolve_set("noisy:", data_dir)

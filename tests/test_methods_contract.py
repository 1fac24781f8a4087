"""Every registered method, and one method from a file outside the package, honours the contract.

The variant list is generated from the registry: every `Literal` field of a trainable method's
config is expanded (SSDN: sigma × covariance), so a new method or option is tested before anyone
writes a test for it. Each is run for every noise kind it accepts (its own `check` decides), on
crops that are not 32² and scored on inputs larger than its crops. The checks are behaviour a
broken method fails: a few steps on one fixed batch lower the loss; `denoise` returns the input's
shape, finite; the same seeds give bit-identical weights; a run killed and resumed equals an
uninterrupted one. Methods' own math is tested in their own files (test_ssdn.py, test_n2v_masking.py …).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest
import torch
from pydantic import ValidationError

from n2n_core.config import DataConfig, EvalConfig, TrainConfig
from n2n_core.data.train_stream import CropStream
from n2n_core.errors import ConfigError
from n2n_core.methods import METHODS, Step, external
from n2n_core.noise import parse_style
from n2n_core.seeding import make_generator
from n2n_core.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
STYLES = ("gaussian25", "poisson30", "impulse50")
CROP = 64  # training crops; denoise sees 96² inputs, so nothing may assume inputs the crop's size
CPU = torch.device("cpu")


def readme_example(folder: Path) -> Path:
    """The README's complete external method ("Adding a method"), written to a file of its own."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Adding a method"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = folder / "tiny_method.py"
    path.write_text(code)
    return path


@pytest.fixture(scope="module")
def example_spec(tmp_path_factory) -> str:
    path = readme_example(tmp_path_factory.mktemp("external"))
    return f"{path}:TinyN2N"


def literal_variants() -> list[tuple[str, type, dict]]:
    """(label, method class, config fields) for every combination of a trainable method's Literal options."""
    out = []
    for name, cls in METHODS.items():
        if not cls.trainable:
            continue
        choices = {field: get_args(info.annotation) for field, info in cls.Config.model_fields.items()
                   if field != "name" and get_origin(info.annotation) is Literal}
        for combo in itertools.product(*choices.values()):
            out.append(("-".join([name, *map(str, combo)]), cls, dict(zip(choices, combo))))
    return out


def accepts(cls, config, style: str) -> bool:
    train = TrainConfig(budget_images=8, batch_size=2, patch_size=CROP)
    try:
        cls.check(config, parse_style(style), train, EvalConfig(), DataConfig())
        return True
    except ConfigError:
        return False


CASES = []
for label, cls, fields in literal_variants():
    config = cls.Config(**fields)
    defaults = not fields or all(cls.Config.model_fields[k].default == v for k, v in fields.items())
    for style in (STYLES if defaults else ("gaussian25",)):  # every noise kind for each method's defaults
        if accepts(cls, config, style):
            CASES.append(pytest.param(cls, config, style, id=f"{label}-{style}"))


def clean_batch(n: int = 2, size: int = CROP, seed: int = 1) -> torch.Tensor:
    return 0.1 + 0.8 * torch.rand(n, 3, size, size, generator=make_generator(seed))


def step(images_seen: int = 0, budget: int = 64) -> Step:
    return Step(noise=make_generator(10), method=make_generator(20), images_seen=images_seen,
                budget_images=budget)


def check_contract(cls, config, style: str) -> None:
    method = cls(config, parse_style(style))
    model = method.build_model(make_generator(0))
    pair = method.training_pair(clean_batch(), step())
    assert pair.inputs.shape[0] == 2 and pair.targets.shape[0] == 2, "tensors of a pair are batch-first"
    pair = method.training_pair(clean_batch(n=1), step())  # one image: the cheapest batch that can show it

    # a few steps on one fixed batch lower the loss from its first value
    optimizer = method.make_optimizer(model, TrainConfig(budget_images=8, lr=1e-3, patch_size=CROP))
    losses = []
    for _ in range(4):
        optimizer.zero_grad(set_to_none=True)
        out = method.loss(model, pair)
        assert out.loss.dim() == 0 and torch.isfinite(out.loss), f"loss {out.loss}"
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    assert min(losses[1:]) < losses[0], f"the loss never went below its first value: {losses}"

    # denoise an input larger than the crops: its shape back, finite
    batch = parse_style(style).sample(clean_batch(n=1, size=96, seed=2), make_generator(3))
    with torch.no_grad():
        model.eval()
        denoised = method.denoise(model, method_batch(method, model, batch))
    assert denoised.shape == batch.noisy.shape and torch.isfinite(denoised).all()


def method_batch(method, model, batch):
    import dataclasses

    return dataclasses.replace(batch, estimate=method.image_estimate(model, batch))


@pytest.mark.parametrize(("cls", "config", "style"), CASES)
def test_every_registered_method_honours_the_contract(cls, config, style):
    check_contract(cls, config, style)


def test_an_external_method_from_a_file_honours_the_contract(example_spec):
    cls = external.load_class(external.normalise(example_spec))
    for style in STYLES:
        if accepts(cls, cls.Config(), style):
            check_contract(cls, cls.Config(), style)


def test_training_free_methods_build_no_model():
    for name, cls in METHODS.items():
        if not cls.trainable:
            assert cls(cls.Config(), parse_style("gaussian25")).build_model(make_generator(0)) is None, name


# ----------------------------------------------------------------------------- the trainer's promises


class Stop(Exception):
    pass


class StoppingStream(CropStream):
    def __init__(self, images, patch_size, seed, stop_at=None):
        super().__init__(images, patch_size, seed)
        self.stop_at = stop_at

    def training_pair(self, method, images_seen, batch_size, step, device):
        if self.stop_at is not None and images_seen >= self.stop_at:
            raise Stop(images_seen)
        return super().training_pair(method, images_seen, batch_size, step, device)


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def trained(cls, config, style, images, path: Path, stop_at=None):
    method = cls(config, parse_style(style))
    cfg = TrainConfig(budget_images=3, batch_size=1, patch_size=CROP, checkpoint_every_images=2,
                      validation_images=0, ramp_up=0.0)
    trainer = Trainer(method, StoppingStream(images, CROP, seed=3, stop_at=stop_at), cfg, seed=3, device=CPU,
                      progress=False)
    return trainer.fit(method.build_model(make_generator(0)), path)


REPRO = [pytest.param(cls, cls.Config(), "gaussian25", id=name)
         for name, cls in METHODS.items() if cls.trainable and accepts(cls, cls.Config(), "gaussian25")]


def check_reproducible(cls, config, style, images, tmp_path: Path) -> None:
    """Same seeds, bit-identical weights; killed after the first checkpoint and resumed, the same again."""
    trained(cls, config, style, images, tmp_path / "a.pt")
    trained(cls, config, style, images, tmp_path / "b.pt")
    with pytest.raises(Stop):
        trained(cls, config, style, images, tmp_path / "c.pt", stop_at=2)  # killed after the first checkpoint
    trained(cls, config, style, images, tmp_path / "c.pt")  # resumed
    a, b, c = (weights(tmp_path / f"{k}.pt") for k in "abc")
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"same seeds, different {key}"
        assert torch.equal(a[key], c[key]), f"resumed run differs in {key}"


@pytest.mark.parametrize(("cls", "config", "style"), REPRO)
def test_same_seeds_give_identical_weights_and_a_resumed_run_equals_an_uninterrupted_one(
        cls, config, style, tiny_images, tmp_path):
    check_reproducible(cls, config, style, tiny_images(3, 80, 72), tmp_path)


def test_an_external_method_from_a_file_is_reproducible_and_resumes_exactly(example_spec, tiny_images, tmp_path):
    cls = external.load_class(external.normalise(example_spec))
    check_reproducible(cls, cls.Config(), "gaussian25", tiny_images(3, 80, 72), tmp_path)


def test_external_method_is_refused_in_one_line_when_it_breaks_the_contract(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("class NotAMethod:\n    pass\n")
    with pytest.raises(ConfigError, match="not a subclass"):
        external.load_class(f"{bad}:NotAMethod")
    with pytest.raises(ConfigError, match="does not exist"):
        external.load_class(f"{tmp_path / 'missing.py'}:X")
    with pytest.raises((ConfigError, ValidationError), match="unknown method"):
        from benchmarks.compose import compose_config

        compose_config("smoke", "no-such-method", "gaussian25")

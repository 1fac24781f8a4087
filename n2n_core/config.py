"""Validated run configuration: pydantic models, TOML profiles, `--set` overrides, the run's hash.

A run is composed from plain dicts merged in a fixed order and validated once:
profile TOML ([train], [eval]) → method TOML ([method]) → noise style → `--set section.key=value`.
A key set by both the profile and the method file is an error, not a silent win.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .errors import ConfigError, NoiseNotSupported
from .methods import METHODS
from .noise import canonical_style, parse_style


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_LR = 10.0
TRAIN_BYTES_PER_PIXEL = 2048
"""Rough memory of one training step per crop pixel (activations, gradients): 25–100 MB were
measured for batches of 4 crops of 128² (n2n_core/train/trainer.py, keep_freed_memory)."""


def device_memory_bytes(device) -> int | None:
    """Memory of the device a run trains on: the GPU's, else this machine's RAM (None: unknown)."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _size(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**50 else f"{n / 2**50:,.1f} PiB"


def check_training_memory(train: "TrainConfig", device) -> None:
    """Refuse crops whose training step cannot fit the device, before a step runs out of memory.

    Checked where a run is about to train (train, grid), not when a configuration is read: a
    checkpoint trained on a large GPU can still be scored on a small machine.
    """
    need, have = train.batch_size * train.patch_size**2 * TRAIN_BYTES_PER_PIXEL, device_memory_bytes(device)
    if have is not None and need > have:
        largest = 32 * int((have / (train.batch_size * TRAIN_BYTES_PER_PIXEL)) ** 0.5 // 32)
        raise ConfigError(
            f"train.patch_size={train.patch_size} with batch_size {train.batch_size} would need about "
            f"{_size(need)} for one training step (~{TRAIN_BYTES_PER_PIXEL} bytes per crop pixel), more "
            f"than the {_size(have)} of memory on {device}; use train.patch_size={largest} or less"
        )


class TrainConfig(Frozen):
    budget_images: int = Field(gt=0)
    """Images seen in training; the paper's "2M iterations" is 2_000_000 here (METHODS.md §2)."""
    batch_size: int = Field(4, gt=0)
    """Minibatch size in images (paper: 4)."""
    patch_size: int = Field(256, gt=0, multiple_of=32)
    """Side of the square training crops in pixels (paper: 256)."""
    lr: float = Field(3e-4, gt=0, le=MAX_LR, allow_inf_nan=False)
    """Base learning rate of Adam (paper: 3e-4); finite and at most 10 (the scratch network's SGD
    uses 1.5; beyond that a step overflows the weights instead of training them)."""
    ramp_up: float = Field(0.1, ge=0, le=1)
    """Fraction of the budget spent in the sin² ramp-up."""
    ramp_down: float = Field(0.3, ge=0, le=1)
    """Fraction of the budget spent in the cos⁴ ramp-down."""
    ema_decay: float | None = Field(None, gt=0, lt=1)
    """Decay of the exponential moving average of the weights used for evaluation; None: off."""
    amp: bool = False
    """Mixed precision (bfloat16 autocast) on CUDA for methods that allow it; ignored on CPU."""
    checkpoint_every_images: int = Field(20_000, gt=0)
    """Write a resumable checkpoint every this many images."""
    validate_every_images: int = Field(10_000, gt=0)
    """Score the validation crops every this many images (logged against images seen)."""
    validation_images: int = Field(4, ge=0)
    """Number of validation crops (from the validation set, fixed, training-crop sized)."""
    max_consecutive_skips: int = Field(50, gt=0)
    """Stop the run when this many steps in a row had a non-finite gradient."""
    train_set: str = "bsd300-train"
    """Image set the training crops come from (paper: imagenet-val)."""
    validation_set: str = "bsd300"
    """Image set the periodic validation crops come from."""
    device: str = "auto"
    """auto, cpu or cuda."""

    @model_validator(mode="after")
    def _ramps_fit(self):
        if self.ramp_up + self.ramp_down > 1:
            raise ValueError("ramp_up + ramp_down must be at most 1")
        return self


class EvalConfig(Frozen):
    sets: list[str] = ["kodak24"]
    """Evaluation sets scored at the end of training."""
    repeats: dict[str, int] = {}
    """Evaluations per image, per set (paper: kodak24 10, bsd300 3, set14 20); default 1."""
    center_crop: int | None = Field(None, gt=0, multiple_of=32)
    """Score central crops of this side instead of whole images (the smoke and quick profiles)."""
    max_images: int | None = Field(None, gt=0)
    """Score only the first this many images of each set (smoke profile only)."""
    blindspot_tiles: Literal["auto", "off"] = "auto"
    """Blind-spot methods on images larger than their training crop: 'auto' denoises in
    overlapping tiles of the training-crop size keeping each tile's centre (METHODS.md §4);
    'off' scores whole images and is refused when the images are larger than the crop."""
    seed: int = 0
    """Evaluation noise seed: identical noisy inputs for every method."""

    def repeats_for(self, name: str) -> int:
        return self.repeats.get(name, 1)


def _method_union():
    configs = tuple(cfg for cfg, _ in METHODS.values())
    return Annotated[Union[configs], Field(discriminator="name")]  # noqa: UP007


NoiseStyle = Annotated[str, AfterValidator(canonical_style)]


class ExperimentConfig(Frozen):
    profile: str
    """Name of the profile the run was composed from."""
    seed: int = 0
    """Training seed: crop order, crops, noise and masks all derive from it."""
    noise: NoiseStyle
    """Noise style, e.g. gaussian25 (aliases such as gauss25 are canonicalised)."""
    method: _method_union()
    train: TrainConfig
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _method_accepts_noise(self):
        try:
            self.method.check_noise(parse_style(self.noise))
        except NoiseNotSupported:
            raise
        except ConfigError as err:  # typed, so the grid can tell "not applicable" from a bad config
            raise NoiseNotSupported(str(err)) from None
        return self

    @model_validator(mode="after")
    def _blind_spot_scored_at_training_scale(self):
        # METHODS.md §4: a blind-spot net scored on images larger than its crops breaks.
        blind = METHODS[self.method.name][1].blind_spot
        scored = self.eval.center_crop
        if blind and self.eval.blindspot_tiles == "off" and (scored is None or scored > self.train.patch_size):
            raise ConfigError(
                f"{self.method.name} would be scored on images larger than its {self.train.patch_size}² "
                "training crops with eval.blindspot_tiles=off; set it to auto (tiles) or raise "
                "train.patch_size to the evaluation size"
            )
        return self

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def config_hash(self) -> str:
        """Identity of the run: equal configs share checkpoints and finished results."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def flat(self) -> dict[str, object]:
        """Flattened fields ('train.budget_images': 2000) for MLflow params."""
        return flatten(self.model_dump(mode="json"))


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def load_toml(path: Path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"configuration file {path} is not valid TOML: {err}") from None


def parse_override(text: str) -> tuple[list[str], object]:
    """'train.lr=1e-4' → (['train', 'lr'], 1e-4); the value is read as a TOML literal."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.lr=1e-4")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare words such as `cpu` are strings
    return key.split("."), value


def merge_layers(profile: dict, method: dict, overrides: list[str]) -> dict:
    """Merge profile and method dicts (a shared leaf is an error), then apply overrides."""
    merged = json.loads(json.dumps(profile))
    for section, values in method.items():
        if not isinstance(values, dict):
            raise ConfigError(f"method file: top-level key {section!r} must be a [section]")
        target = merged.setdefault(section, {})
        for key, value in values.items():
            if key in target:
                raise ConfigError(
                    f"{section}.{key} is set by both the profile and the method file; keep one"
                )
            target[key] = value
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return merged

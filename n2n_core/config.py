"""Validated run configuration: pydantic models, TOML profiles, `--set` overrides, the run's hash.

A run is composed from plain dicts merged in a fixed order and validated once:
profile TOML ([train], [eval], [data]) → method TOML ([method]) → noise style → `--set section.key=value`.
A key set by both the profile and the method file is an error, not a silent win.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator

from .errors import ConfigError
from .methods import MethodConfigBase, method_class
from .methods.external import MethodSource
from .noise import canonical_style, parse_style


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_LR = 10.0
TRAIN_BYTES_PER_PIXEL = 2048
"""Memory of one training step per crop pixel, on the low side: the paper's U-Net saves about
5.4 KB per pixel for its backward pass (counted with torch.autograd.graph.saved_tensors_hooks on
one 128² crop), smaller networks less; so only a patch size that cannot fit is refused."""


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
    """Images seen in training; the paper's "2M iterations" is 2_000_000 here (docs/methods.md §2)."""
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
    noise_draw: Literal["fresh", "fixed"] = "fresh"
    """fresh: every crop gets a new noise draw (the papers); fixed: each training image has one noisy
    realisation (N2N: two) drawn once from the run's seed, and crops are cut from it."""
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
    """Blind-spot methods: 'auto' denoises images larger than the training crop in overlapping
    tiles of the crop size, keeping each tile's centre (the quick and smoke profiles); 'off' scores
    whole padded images as the released code does (the paper and reproduction profiles; a warning
    when the images are more than twice the crop). docs/methods.md §4."""
    blindspot_stride: float = Field(0.5, gt=0, le=1)
    """With blindspot_tiles='auto': the step from one tile to the next as a fraction of the tile
    (0.5: each pixel kept from a tile whose centre is within a quarter tile; 1: tiles side by side).
    PSNR against cost per stride: benchmarks/perf/README.md."""
    seed: int = 0
    """Evaluation noise seed: identical noisy inputs for every method."""

    def repeats_for(self, name: str) -> int:
        return self.repeats.get(name, 1)


class DataConfig(Frozen):
    channels: Literal[1, 3] = 3
    """Image channels: 3 (RGB) or 1 (greyscale, the paper's "mono" runs). Training, validation and
    evaluation images are converted as the released code's `set_color_channels`
    (data/images.set_channels: the mean of R, G, B, rounded for uint8 images)."""


NoiseStyle = Annotated[str, AfterValidator(canonical_style)]


def _method_section(config: type[MethodConfigBase], fields: dict) -> MethodConfigBase:
    """The [method] section validated by its method's class; its errors keep the `method.` prefix,
    and an unknown key is named with that method's own keys (not every method's)."""
    import difflib

    name = fields.get("name")
    for key in fields:
        if key not in config.model_fields:
            valid = sorted(config.model_fields)
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            raise ConfigError(f"method.{key}: unknown key of method {name}"
                              + (f"; did you mean 'method.{close[0]}'?" if close else "")
                              + f" (its keys: {', '.join(valid)})")
    try:
        return config.model_validate(fields)
    except ValidationError as err:  # raised inside the outer model's validator: its locations lack `method`
        try:
            prefixed = ValidationError.from_exception_data(
                err.title, [{**e, "loc": ("method", *e["loc"])} for e in err.errors()])
        except KeyError:  # a method's own error type, which pydantic cannot rebuild: keep the error as it is
            raise err from None
        raise prefixed from None


class ExperimentConfig(Frozen):
    profile: str
    """Name of the profile the run was composed from."""
    seed: int = 0
    """Training seed: crop order, crops, noise and masks all derive from it."""
    noise: NoiseStyle
    """Noise style, e.g. gaussian25 (aliases such as gauss25 are canonicalised)."""
    method: SerializeAsAny[MethodConfigBase]
    """The method's own configuration (its class is `Method.Config`, found by `name`)."""
    method_source: MethodSource | None = None
    """Where a method from outside the package came from (spec and sha256 of its file)."""
    train: TrainConfig
    eval: EvalConfig = EvalConfig()
    data: DataConfig = DataConfig()

    @model_validator(mode="before")
    @classmethod
    def _method_config_of_its_class(cls, data):
        # the method section is validated by the configuration class of the method it names
        if isinstance(data, dict) and isinstance(data.get("method"), dict):
            source = data.get("method_source")
            source = MethodSource.model_validate(source) if isinstance(source, dict) else source
            name = data["method"].get("name")
            if not isinstance(name, str):
                raise ConfigError("method.name is missing; name a method, e.g. method.name=\"n2c\"")
            data = {**data, "method": _method_section(method_class(name, source).Config, data["method"])}
        return data

    @model_validator(mode="after")
    def _method_can_run_so(self):
        # each method states what it refuses (methods/base.py Method.check); a NoiseNotSupported
        # keeps its type, so the grid can tell "not applicable" from a bad configuration
        method_class(self.method.name, self.method_source).check(
            self.method, parse_style(self.noise), self.train, self.eval, self.data)
        return self

    def identity_dump(self) -> dict:
        """The configuration as plain data, without the options added since format 1 that are at
        their default (OMITTED_AT_DEFAULT): adding an option keeps the identity of every run that
        does not use it, so finished runs and checkpoints stay valid across releases."""
        tree = self.model_dump(mode="json")
        for dotted, default in OMITTED_AT_DEFAULT.items():
            *parents, leaf = dotted.split(".")
            node = tree
            for part in parents:
                node = node.get(part, {})
            if leaf in node and node[leaf] == default:
                del node[leaf]
        return {k: v for k, v in tree.items() if v != {}}

    def canonical_json(self) -> str:
        return json.dumps(self.identity_dump(), sort_keys=True, separators=(",", ":"))

    def config_hash(self) -> str:
        """Identity of the run: equal configs share checkpoints and finished results."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def flat(self) -> dict[str, object]:
        """Flattened fields ('train.budget_images': 2000) for MLflow params."""
        return flatten(self.identity_dump())


# Options added after the first release, left out of a run's identity while at their default.
OMITTED_AT_DEFAULT: dict[str, object] = {
    "method_source": None,
    "data.channels": 3,
    "eval.blindspot_stride": 0.5,
    "train.noise_draw": "fresh",
}


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

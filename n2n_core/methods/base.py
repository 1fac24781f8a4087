"""The Method contract: everything a denoiser may declare, with its default, in one place.

The trainer, the evaluator and the runner only ever talk to this interface; nothing outside
`methods/` branches on a method's name. A new method subclasses `Method`, nests its configuration
as `Config` (a `MethodConfigBase` whose `name` is a `Literal`) and overrides what differs:

- always: `build_model`, `training_pair`, `loss`, `denoise` (trainable methods), or
  `trainable = False` and `denoise` alone (training-free methods such as CBM3D);
- where needed: `check` (what the method refuses, at configuration time), `make_optimizer`,
  `ema_decay`, `given_pair` (training on given noisy pairs), `image_estimate` (a per-image
  estimate every tile shares), `denoise_many` with `eval_chunk` (several images at once),
  `with_cache_dir`, `clean_targets` / `noisy_draws` / `training_needs` (what its training pair
  needs from the data).

Randomness: take the noisy observation of the clean crops from `step.noisy(self.noise, clean)`,
draw any other noise (R2R's recorruption) from `step.noise` and everything else (masks,
sub-samplers, dropout) from `step.method`; the generators are made fresh for every step from (run
seed, purpose, step), so runs are bit-reproducible and resume exactly. Under multi-process training
every tensor of a `TrainingPair` must have the batch as its first dimension: each process trains
on its rows.

Observation noise goes through `step.noisy` because it is not always fresh. Under
train.noise_draw="fresh" (the default) it is exactly `self.noise.sample(clean, step.noise)`. Under
"fixed" each training image has noisy realisations drawn once from the run's seed, and `step.noisy`
returns the batch's crops of realisation 0 on its first call and of realisation 1 on its second
(N2N's pair); on a noisy:SET training set realisation 0 is the evaluator's noisy input and `clean`
is a NaN placeholder. So a training_pair calls `step.noisy` on the crops as given (flips: draw
first, then flip every part alike); one that never calls it is refused at its first fixed step.
What a method needs from the data it declares in `clean_targets` and `noisy_draws` (or
`training_needs` where its configuration decides); noisy:SET sets refuse, at configuration time,
methods that need clean targets or more than one realisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from ..errors import ConfigError, NoiseNotSupported
from ..noise import NoiseModel, NoisyBatch

if TYPE_CHECKING:  # configuration sections, only for annotations (config.py imports this module)
    from ..config import DataConfig, EvalConfig, TrainConfig
    from ..data.train_stream import FixedCrops


IMPULSE_MODELS = "n2c, n2n, ssdn-mu or ssdn (RGB)"  # the methods that model impulse noise (§5b)


def refuse_impulse(name: str, noise: NoiseModel, why: str) -> None:
    """Raise NoiseNotSupported, naming the methods that do model it, when `noise` is impulse noise.

    `why` completes "<name> cannot model <style>: …" (e.g. its L2 target's biased mean)."""
    if noise.kind == "impulse":
        raise NoiseNotSupported(f"{name} cannot model {noise.style}: {why}; for impulse noise use {IMPULSE_MODELS}")


class MethodConfigBase(BaseModel):
    """Base of every method's configuration: frozen, unknown keys rejected, `name` a Literal."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Step:
    """What a method may know about the training step it builds a pair for."""

    noise: torch.Generator  # every noise draw, so all methods see the same noisy crops at a step
    method: torch.Generator  # masks, sub-samplers and any other method-side randomness
    images_seen: int = 0  # images trained on before this step
    budget_images: int = 0  # the run's budget N; 0 when only evaluating
    index: int = 0  # the step's number from 0 (images_seen // batch size): per-step schedules
    fixed: FixedCrops | None = None  # the batch's fixed noisy crops (data/train_stream.py); None: fresh

    @property
    def progress(self) -> float:
        """images_seen / budget in [0, 1]; 1 when there is no budget (evaluation)."""
        return min(1.0, self.images_seen / self.budget_images) if self.budget_images else 1.0

    @property
    def noise_is_fixed(self) -> bool:
        """Whether `noisy` hands out fixed realisations (then they belong to the crops as cut)."""
        return self.fixed is not None

    def noisy(self, noise: NoiseModel, clean: Tensor) -> NoisyBatch:
        """The noisy observation of the batch's clean crops: a fresh draw from `self.noise`, or
        under fixed noise the batch's next fixed realisation (first call 0, second call 1)."""
        if self.fixed is None:
            return noise.sample(clean, self.noise)
        return self.fixed.next(clean)


@dataclass(frozen=True)
class TrainingPair:
    inputs: Tensor  # what the network sees, (N, C, P, P), C = data.channels
    targets: Tensor  # what the loss compares against, batch first
    mask: Tensor | None = None  # N2V: 1 where the loss is taken
    level: Tensor | None = None  # per-image noise level (N,), for known-level variants


@dataclass(frozen=True)
class LossOutput:
    loss: Tensor  # scalar, differentiable
    logs: Mapping[str, Tensor] = field(default_factory=dict)  # detached scalars the trainer logs (e.g. σ̂)


class Method:
    """Base class with the defaults; subclasses override what differs."""

    Config: ClassVar[type[MethodConfigBase]]  # the nested configuration class
    trainable: ClassVar[bool] = True  # False: no training; `denoise` alone (noisy, cbm3d, zero-shot)
    amp_safe: ClassVar[bool] = True  # False where float64 math must not be autocast
    blind_spot: ClassVar[bool] = False  # True: scored in tiles when the crops are small (§4)
    eval_chunk: ClassVar[int] = 1  # evaluation inputs handed to one `denoise_many` call
    clean_targets: ClassVar[bool] = False
    """True: its training pair uses the clean crops themselves (N2C), so noisy:SET sets are refused."""
    noisy_draws: ClassVar[int] = 1
    """Noisy realisations of each crop its training pair takes from step.noisy (N2N: 2, its pair)."""

    def __init__(self, config: MethodConfigBase, noise: NoiseModel, channels: int = 3):
        self.config = config
        self.noise = noise
        self.channels = channels  # image channels (data.channels): 3 RGB, 1 greyscale

    # --- configuration time -------------------------------------------------------------
    @classmethod
    def check(cls, config: MethodConfigBase, noise: NoiseModel, train: TrainConfig,
              evaluation: EvalConfig, data: DataConfig) -> None:
        """Raise ConfigError (NoiseNotSupported for a noise or channel count it cannot model) when
        this method cannot run so; called by configuration validation, before anything is trained."""

    @classmethod
    def training_needs(cls, config: MethodConfigBase) -> tuple[bool, int]:
        """(clean_targets, noisy_draws) of a run with `config`; override where the config decides."""
        return cls.clean_targets, cls.noisy_draws

    @classmethod
    def with_cache_dir(cls, config: MethodConfigBase, folder: str) -> MethodConfigBase:
        """The config pointed at a result cache in `folder` (not part of the hash); default: as is."""
        return config

    # --- training ----------------------------------------------------------------------------
    def build_model(self, rng: torch.Generator) -> nn.Module | None:
        """One module holding every trainable parameter, initialised from `rng`."""
        raise NotImplementedError

    def training_pair(self, clean: Tensor, step: Step) -> TrainingPair:
        """The pair for clean float crops (N, C, P, P) in [0, 1]; their noisy observation from
        step.noisy(self.noise, clean), any other noise from step.noise."""
        raise NotImplementedError

    def given_pair(self, first: Tensor, second: Tensor, step: Step) -> TrainingPair:
        """The pair for a data set that brings two noisy draws and no clean image (course32)."""
        raise ConfigError(f"{self.config.name} needs clean training images; a set of given noisy pairs "
                          "(course32:DIR) only trains the course variants as N2N (method.target=\"n2n\")")

    def loss(self, model: nn.Module, pair: TrainingPair) -> LossOutput:
        """The training loss of one pair, a 0-dim tensor the trainer backpropagates, with any
        numbers to log beside it (`LossOutput.logs`, 0-dim tensors: read back only when logging)."""
        raise NotImplementedError

    def make_optimizer(self, model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
        """Adam(β1 0.9, β2 0.99, ε 1e-8) at train.lr, as in the paper (docs/methods.md §2); fused on
        CUDA, where it skips a non-finite step by itself and the trainer need not wait (finite.py)."""
        params = list(model.parameters())
        fused = bool(params) and all(p.is_cuda for p in params)
        return torch.optim.Adam(params, lr=train.lr, betas=(0.9, 0.99), eps=1e-8, fused=fused or None)

    def ema_decay(self, decay: float, step: int) -> float:
        """Decay of the weights' moving average (train.ema_decay) at update `step`; default constant."""
        return decay

    # --- evaluation -------------------------------------------------------------------------
    def take_eval_logs(self) -> dict[str, float]:
        """Numbers about the evaluations since the last call, then forgotten (zs-n2n: its fits'
        seconds and final loss); a grid job logs each as the metric `<key>_<set>`. Default: none."""
        return {}

    def image_estimate(self, model: nn.Module | None, batch: NoisyBatch) -> Tensor | None:
        """What this method estimates once per whole (padded) image, (N,), for every tile of it
        to share as `batch.estimate` in `denoise` (SSDN: its noise level); None: nothing."""
        return None

    def denoise(self, model: nn.Module | None, batch: NoisyBatch) -> Tensor:
        """Denoised (N, C, H, W) for a noisy batch whose sides are multiples of 32."""
        raise NotImplementedError

    def denoise_many(self, model: nn.Module | None, inputs: Sequence, device: torch.device) -> list[Tensor]:
        """Denoise up to `eval_chunk` evaluation inputs on `device`; CBM3D overrides it with a pool."""
        outputs = []
        with torch.inference_mode():
            for item in inputs:
                outputs.append(self.denoise(model, item.noisy.to(device)).float().cpu())
        return outputs

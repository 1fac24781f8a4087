"""The 32×32 course networks (docs/methods.md §10) as one method: trained as N2N or N2C, with L2 or L1.

`network` picks one of the four torch.nn U-Nets of networks/course.py, one of the two from-scratch
networks of n2n_core/scratch (no autograd, no torch.nn; hand-written backward, its own SGD):
`scratch` (nearest upsampling) or `scratch_tconv` (report E's transposed convolutions), or the
torch.nn twin of either (`scratch_torch`, `scratch_tconv_torch`). A scratch network plugs into
the ordinary Trainer by duck typing: its model offers parameters/state_dict/
load_state_dict/train/eval/to, `make_optimizer` hands the trainer its SGD, and its loss is a
`HandwrittenLoss`, a 0-d tensor whose `backward()` runs the network's own backward under
`torch.no_grad()`.

Training pairs follow N2N/N2C (docs/methods.md §1): the input is the step's first noise draw; the target
is a second independent draw (n2n) or the clean crop (n2c). On `course32:DIR` the pairs are given
(data/course32.PairStream calls `given_pair`) and only n2n can train. Under impulse noise a
course network trained as N2N takes the same annealed loss as N2N (n2n.py, docs/methods.md §5b) in place
of `loss`; as N2C it keeps `loss`. RGB only: greyscale data (data.channels=1) is refused.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from ..errors import ConfigError, NoiseNotSupported
from ..networks.course import course_unet
from ..scratch import MSE, SGD, course_network, course_network_torch, tconv_network, tconv_network_torch
from .base import LossOutput, Method, MethodConfigBase
from .losses import annealed_l_loss_grad
from .n2n import NoisyTargetPair, noisy_target_loss, step_exponent

SCRATCH_WIDTH = 24  # report C's C
# network -> builder(channels, rng): the from-scratch networks (hand-written backward) and their twins
SCRATCH_NETWORKS = {"scratch": course_network, "scratch_tconv": tconv_network}
SCRATCH_TWINS = {"scratch_torch": course_network_torch, "scratch_tconv_torch": tconv_network_torch}


class CourseConfig(MethodConfigBase):
    name: Literal["course"] = "course"
    network: Literal["strided", "residual", "bn_dropout", "prelu", "scratch", "scratch_torch", "scratch_tconv",
                     "scratch_tconv_torch"] = "strided"
    """Course network of docs/methods.md §10; scratch, scratch_tconv: no-autograd networks; *_torch: twins."""
    target: Literal["n2n", "n2c"] = "n2n"
    """n2n: a second independent noisy draw is the target; n2c: the clean crop is."""
    loss: Literal["l2", "l1"] = "l2"
    """Mean squared (l2) or mean absolute (l1) error over pixels and channels. Under impulse noise
    with target n2n the annealed loss of losses.py replaces it, as for N2N (docs/methods.md §5b)."""
    channels: int | None = Field(None, gt=0)
    """Base width; None: the network's own (32 for the U-Nets, 24 for scratch as in report C)."""
    optimizer: Literal["adam", "sgd"] | None = None
    """None: the course default, SGD for the scratch networks and their twins (report C), else Adam."""
    momentum: float = Field(0.0, ge=0, lt=1)
    """SGD momentum (report C's best run used plain SGD)."""
    flips: bool = False
    """Random horizontal and vertical flips of each training crop (report A's augmentation)."""

    @model_validator(mode="after")
    def _momentum_is_for_sgd(self):
        if self.momentum and self.resolved_optimizer() != "sgd":
            raise ConfigError("method.momentum applies to SGD only; set method.optimizer=\"sgd\" or drop it")
        return self

    def resolved_optimizer(self) -> str:
        return self.optimizer or ("sgd" if self.network.startswith("scratch") else "adam")


class HandwrittenLoss(Tensor):
    """A 0-d loss tensor whose `backward()` runs a hand-written backward pass (no autograd)."""

    @staticmethod
    def wrap(value: Tensor, backward: Callable[[], None]) -> HandwrittenLoss:
        out = value.detach().as_subclass(HandwrittenLoss)
        out.__dict__["_run_backward"] = backward
        return out

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):  # noqa: ARG002
        run = self.__dict__.get("_run_backward")
        if run is None:  # a copy made by a tensor operation carries no backward
            raise RuntimeError("this loss value has no hand-written backward (call it on the method's loss)")
        with torch.no_grad():
            run()


@dataclass(frozen=True)
class CoursePair(NoisyTargetPair):
    rng: torch.Generator | None = None  # the step's method generator: dropout masks


def random_flips(images: Tensor, rng: torch.Generator) -> Tensor:
    """Flip each image of (N, C, H, W) left-right and/or top-bottom, each with probability 1/2."""
    n = images.shape[0]
    draws = torch.rand(2, n, generator=rng, device=rng.device).to(images.device) < 0.5
    images = torch.where(draws[0].view(n, 1, 1, 1), images.flip(-1), images)
    return torch.where(draws[1].view(n, 1, 1, 1), images.flip(-2), images)


def flip_pair(pair: CoursePair, rng: torch.Generator) -> CoursePair:
    """The pair with one random_flips decision per image applied to its input and target alike."""
    c = pair.inputs.shape[1]
    both = random_flips(torch.cat([pair.inputs, pair.targets], dim=1), rng)
    return dataclasses.replace(pair, inputs=both[:, :c], targets=both[:, c:])


class Course(Method):
    """A course network of §10 trained as N2N or N2C on 32×32 crops (or given course32 pairs)."""

    Config = CourseConfig

    def __init__(self, config: CourseConfig, noise, channels: int = 3):
        super().__init__(config, noise, channels)
        self.scratch = config.network in SCRATCH_NETWORKS
        self.amp_safe = not self.scratch  # the scratch framework is float32 by construction
        # the N2N rule under impulse noise (n2n.py): noisy targets take the annealed loss
        self.annealed = config.target == "n2n" and noise.kind == "impulse"

    @classmethod
    def training_needs(cls, config):
        """As N2C (the clean crop) or as N2N (a second noisy realisation), per method.target."""
        return (True, 1) if config.target == "n2c" else (False, 2)

    @classmethod
    def check(cls, config, noise, train, evaluation, data):
        if train.train_set.startswith("course32:") and config.target != "n2n":
            raise ConfigError(f"{train.train_set} holds given noisy pairs without clean targets; only "
                              "course variants trained as N2N (method.target=\"n2n\") can train on it")
        if data.channels != 3:
            raise NoiseNotSupported(f"course networks take RGB images only, not data.channels={data.channels}; "
                                    "use data.channels=3")

    def build_model(self, rng):
        channels, network = self.config.channels, self.config.network
        if network in SCRATCH_NETWORKS:
            return SCRATCH_NETWORKS[network](channels or SCRATCH_WIDTH, rng, input_grad=False)
        if network in SCRATCH_TWINS:
            return SCRATCH_TWINS[network](channels or SCRATCH_WIDTH, rng)
        return course_unet(network, rng, channels)

    def make_optimizer(self, model, train_cfg):
        """The trainer's Adam (docs/methods.md §2), or SGD (the framework's own for the scratch network)."""
        if self.config.resolved_optimizer() == "adam":
            return super().make_optimizer(model, train_cfg)
        sgd = SGD if self.scratch else torch.optim.SGD
        return sgd(list(model.parameters()), lr=train_cfg.lr, momentum=self.config.momentum)

    def given_pair(self, first, second, rngs):
        """course32's given pairs: the first draw is the input, the second the target (N2N)."""
        if self.config.target != "n2n":
            return super().given_pair(first, second, rngs)
        if self.config.flips:  # one flip decision per pair, applied to both draws alike
            both = random_flips(torch.cat([first, second], dim=1), rngs.method)
            first, second = both[:, :3], both[:, 3:]
        return CoursePair(inputs=first, targets=second, rng=rngs.method, exponent=step_exponent(rngs))

    def training_pair(self, clean, rngs):
        if self.config.flips and rngs.noise_is_fixed:
            # fixed realisations belong to the crops as cut: draw first, then flip input and target alike
            return flip_pair(self._pair(clean, rngs), rngs.method)
        if self.config.flips:
            clean = random_flips(clean, rngs.method)
        return self._pair(clean, rngs)

    def _pair(self, clean, rngs) -> CoursePair:
        first = rngs.noisy(self.noise, clean)
        if self.config.target == "n2c":
            target = clean
        else:
            target = rngs.noisy(self.noise, clean).noisy  # its own level for variable styles
        return CoursePair(inputs=first.noisy, targets=target, level=first.level, rng=rngs.method,
                          exponent=step_exponent(rngs))

    def _forward(self, model, inputs: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """The course U-Nets take the step's generator (report B's dropout); scratch nets do not."""
        if self.config.network.startswith("scratch"):
            return model(inputs)
        return model(inputs, rng=rng)

    def loss(self, model, pair):
        if self.scratch:
            return LossOutput(self._handwritten_loss(model, pair))
        pred = self._forward(model, pair.inputs, getattr(pair, "rng", None))
        if self.annealed:
            return LossOutput(noisy_target_loss(self.noise, pred, pair.targets, pair.exponent))
        error = F.mse_loss if self.config.loss == "l2" else F.l1_loss
        return LossOutput(error(pred, pair.targets))

    def _handwritten_loss(self, model, pair) -> HandwrittenLoss:
        """Forward now; the returned loss's backward() feeds dL/dpred through model.backward."""
        with torch.no_grad():
            pred = model(pair.inputs)
            if self.annealed:
                value = noisy_target_loss(self.noise, pred, pair.targets, pair.exponent)
                grad = annealed_l_loss_grad(pred, pair.targets, pair.exponent)
                return HandwrittenLoss.wrap(value, lambda: model.backward(grad))
            if self.config.loss == "l2":
                mse = MSE()
                value = mse.forward(pred, pair.targets)
                return HandwrittenLoss.wrap(value, lambda: model.backward(mse.backward()))
            diff = pred - pair.targets
            value = diff.abs().mean()
            return HandwrittenLoss.wrap(value, lambda: model.backward(diff.sign() / diff.numel()))

    def denoise(self, model, batch):
        with torch.no_grad():
            return self._forward(model, batch.noisy)

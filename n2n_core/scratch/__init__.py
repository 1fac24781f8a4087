"""From-scratch CNN framework (METHODS.md section 10): hand-written forward and backward passes.

Built from tensor operations and ``fold``/``unfold`` only: no autograd and no ``torch.nn``
modules. See :mod:`.functional` (pure functions), :mod:`.layers` (modules with forward/backward/
param), :mod:`.optim` (SGD as torch.optim.SGD), :mod:`.serialization` (pickle-free weight files)
and :mod:`.network` (the course network and its torch.nn twin).
"""

from n2n_core.scratch import functional
from n2n_core.scratch.layers import (
    MSE,
    Conv2d,
    ConvTranspose2d,
    LeakyReLU,
    Module,
    MSELoss,
    NearestUpsampling,
    ReLU,
    Sequential,
    Sigmoid,
    Upsampling,
)
from n2n_core.scratch.network import copy_weights, course_network, course_network_torch
from n2n_core.scratch.optim import SGD, train_step
from n2n_core.scratch.serialization import load, load_state, save, save_state

__all__ = [
    "MSE",
    "SGD",
    "Conv2d",
    "ConvTranspose2d",
    "LeakyReLU",
    "MSELoss",
    "Module",
    "NearestUpsampling",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Upsampling",
    "copy_weights",
    "course_network",
    "course_network_torch",
    "functional",
    "load",
    "load_state",
    "save",
    "save_state",
    "train_step",
]

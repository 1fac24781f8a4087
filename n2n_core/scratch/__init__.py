"""From-scratch CNN framework (docs/methods.md section 10): hand-written forward and backward passes.

Built from tensor operations only: no autograd and no ``torch.nn`` modules. See
:mod:`.functional` (pure functions), :mod:`.layers` (modules with forward/backward/param),
:mod:`.optim` (SGD as torch.optim.SGD), :mod:`.serialization` (pickle-free weight files: the
course API's save and load) and :mod:`.network` (the course networks and their torch.nn twins).
"""

from n2n_core.scratch import functional
from n2n_core.scratch.layers import MSE, Conv2d, ConvTranspose2d, Module, ReLU, Sequential, Sigmoid, Upsampling
from n2n_core.scratch.network import (
    copy_weights,
    course_network,
    course_network_torch,
    tconv_network,
    tconv_network_torch,
)
from n2n_core.scratch.optim import SGD
from n2n_core.scratch.serialization import load, load_state, save, save_state

__all__ = [
    "MSE",
    "SGD",
    "Conv2d",
    "ConvTranspose2d",
    "Module",
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
    "tconv_network",
    "tconv_network_torch",
]

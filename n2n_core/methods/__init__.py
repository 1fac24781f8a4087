"""Registry of methods: name → (config class, method class). Plain dict; grep it."""

from __future__ import annotations

from ..errors import ConfigError
from ..noise import NoiseModel
from .base import LossOutput, Method, MethodConfigBase, Rngs, TrainingPair
from .cbm3d import CBM3D, CBM3DConfig
from .course import Course, CourseConfig
from .n2c import N2C, N2CConfig
from .n2n import N2N, N2NConfig
from .n2v import N2V, N2VConfig
from .n2v2 import N2V2, N2V2Config
from .noisy import Noisy, NoisyConfig
from .ssdn import SSDN, SSDNConfig, SSDNMu, SSDNMuConfig
from .zs_n2n import ZSN2N, ZSN2NConfig

METHODS: dict[str, tuple[type[MethodConfigBase], type[Method]]] = {
    "noisy": (NoisyConfig, Noisy),
    "n2c": (N2CConfig, N2C),
    "n2n": (N2NConfig, N2N),
    "n2v": (N2VConfig, N2V),
    "ssdn": (SSDNConfig, SSDN),
    "ssdn-mu": (SSDNMuConfig, SSDNMu),
    "n2v2": (N2V2Config, N2V2),
    "zs-n2n": (ZSN2NConfig, ZSN2N),
    "cbm3d": (CBM3DConfig, CBM3D),
    "course": (CourseConfig, Course),
}


def method_config(name: str, **fields) -> MethodConfigBase:
    """Validated config for method `name` (unknown names and keys are errors)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; expected one of: {', '.join(METHODS)}")
    return METHODS[name][0](**fields)


def build_method(config: MethodConfigBase, noise: NoiseModel) -> Method:
    """Instantiate the method for a validated config; refuses method–noise pairs it cannot model."""
    return METHODS[config.name][1](config, noise)


__all__ = [
    "METHODS", "LossOutput", "Method", "MethodConfigBase", "Rngs", "TrainingPair",
    "build_method", "method_config",
]

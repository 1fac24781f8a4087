"""Registry of methods: name → (config class, method class). Plain dict; grep it."""

from __future__ import annotations

from ..errors import ConfigError
from ..noise import NoiseModel
from .base import LossOutput, Method, MethodConfigBase, Rngs, TrainingPair
from .noisy import Noisy, NoisyConfig

METHODS: dict[str, tuple[type[MethodConfigBase], type[Method]]] = {
    "noisy": (NoisyConfig, Noisy),
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

"""Registry of methods: name → Method class (its configuration is `cls.Config`). Plain dict; grep it.

Methods from elsewhere are found by `method_class` too: a file or module spec
(`path/to/file.py:ClassName`, `package.module:ClassName`, see external.py) or a name an installed
package registers in the entry-point group `n2n_bench.methods`.
"""

from __future__ import annotations

from ..errors import ConfigError, TrainingSetNotSupported
from ..noise import NoiseModel
from . import external
from .base import LossOutput, Method, MethodConfigBase, Step, TrainingPair
from .cbm3d import CBM3D
from .course import Course
from .n2c import N2C
from .n2n import N2N
from .n2v import N2V
from .n2v2 import N2V2
from .neighbor2neighbor import Neighbor2Neighbor
from .noise2self import Noise2Self
from .noisy import Noisy
from .r2r import R2R
from .ssdn import SSDN, SSDNMu
from .zs_n2n import ZSN2N

METHODS: dict[str, type[Method]] = {
    "noisy": Noisy,
    "n2c": N2C,
    "n2n": N2N,
    "n2v": N2V,
    "ssdn": SSDN,
    "ssdn-mu": SSDNMu,
    "n2v2": N2V2,
    "zs-n2n": ZSN2N,
    "ne2ne": Neighbor2Neighbor,
    "n2self": Noise2Self,
    "r2r": R2R,
    "cbm3d": CBM3D,
    "course": Course,
}


def method_class(name: str, source: external.MethodSource | None = None) -> type[Method]:
    """The Method class for a registry name, or for the external source a run recorded."""
    if source is not None:
        return external.load_recorded(source)
    if name in METHODS:
        return METHODS[name]
    plugin = external.entry_point_spec(name)
    if plugin is not None:
        return external.load_class(plugin)
    raise ConfigError(f"unknown method {name!r}; expected one of: {', '.join(METHODS)} "
                      "(or path/to/file.py:ClassName, package.module:ClassName)")


def trainable_on_noisy_sets() -> list[str]:
    """Registered methods that can train on a noisy:SET set: no clean targets, one noisy draw."""
    return [name for name, cls in METHODS.items()
            if cls.trainable and cls.training_needs(cls.Config()) == (False, 1)]


def check_noisy_training_set(cls: type[Method], config: MethodConfigBase, train_set: str) -> None:
    """Refuse, at configuration time, a method whose training pair a noisy:SET set cannot give:
    it holds one noisy realisation of each image and no clean image (Method.training_needs)."""
    if not cls.trainable:
        return  # nothing is trained: the training set is never read
    clean_targets, draws = cls.training_needs(config)
    if clean_targets or draws > 1:
        needs = "the clean images as targets" if clean_targets else f"{draws} noisy realisations of each image"
        raise TrainingSetNotSupported(f"{config.name} cannot train on {train_set}: it needs {needs}, but a noisy: "
                                      "set has one noisy realisation of each image and no clean image; train "
                                      f"{', '.join(trainable_on_noisy_sets())} on it instead")


def method_config(name: str, **fields) -> MethodConfigBase:
    """Validated config for registry method `name` (unknown names and keys are errors)."""
    return method_class(name).Config(**fields)


def build_method(config: MethodConfigBase, noise: NoiseModel, channels: int = 3,
                 source: external.MethodSource | None = None) -> Method:
    """Instantiate the method of a validated config on `channels`-channel images (data.channels);
    configuration validation has run its `check`."""
    return method_class(config.name, source)(config, noise, channels)


__all__ = [
    "METHODS", "LossOutput", "Method", "MethodConfigBase", "Step", "TrainingPair",
    "build_method", "check_noisy_training_set", "method_class", "method_config",
]

"""Methods from outside the package: a file (`path/to/m.py:ClassName`), a module
(`package.module:ClassName`), or a name registered in the entry-point group `n2n_bench.methods`.

A run of such a method records a `MethodSource`: the absolute spec and the sha256 of the source
file. Both are part of the run's configuration, so editing the file makes a new run instead of
silently reusing an old checkpoint, and `evaluate --checkpoint` finds the class again from the
record alone (refusing, in one line, a file that changed since).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import get_args

from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError

ENTRY_POINT_GROUP = "n2n_bench.methods"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")  # names become folder names and tags


class MethodSource(BaseModel):
    """Where an external method came from: its spec and the sha256 of its source file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    spec: str
    sha256: str


def is_spec(text: str) -> bool:
    """True for 'file.py:Class' and 'package.module:Class' (not for registry or variant names)."""
    return ":" in text and not text.startswith(("folder:", "course32:"))


def _split(spec: str) -> tuple[str, str]:
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise ConfigError(f"method {spec!r} must look like path/to/file.py:ClassName or "
                          "package.module:ClassName")
    return where, name


def _module_from_file(path: Path):
    if not path.is_file():
        raise ConfigError(f"method file {path} does not exist; pass path/to/file.py:ClassName")
    module_name = f"n2n_external_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # pickling (multi-process grids) finds the class again
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise ConfigError(f"method file {path} failed to import ({type(err).__name__}: {err})") from None
    return module


def normalise(spec: str) -> str:
    """A spec with an absolute file path (module specs unchanged), so the record works from anywhere."""
    where, name = _split(spec)
    if where.endswith(".py"):
        return f"{Path(where).expanduser().resolve()}:{name}"
    return spec


@lru_cache(maxsize=64)
def load_class(spec: str):
    """The Method subclass a spec names, checked against the contract (methods/base.py)."""
    from .base import Method, MethodConfigBase

    where, name = _split(spec)
    if where.endswith(".py"):
        module = _module_from_file(Path(where).expanduser().resolve())
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ConfigError(f"method module {where!r} cannot be imported ({err})") from None
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"{spec}: {name} is not a subclass of n2n_core.methods.Method")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, MethodConfigBase)) or "name" not in config.model_fields:
        raise ConfigError(f"{spec}: {name}.Config must be a MethodConfigBase with a `name: Literal[...]` field")
    literal = get_args(config.model_fields["name"].annotation)
    if len(literal) != 1 or not NAME_PATTERN.match(str(literal[0])):
        raise ConfigError(f"{spec}: {name}.Config.name must be one Literal of lower-case letters, digits, "
                          "'-', '_' or '.' (it names run folders)")
    return cls


def source_file(spec: str) -> Path:
    where, _ = _split(spec)
    if where.endswith(".py"):
        return Path(where).expanduser().resolve()
    return Path(inspect.getsourcefile(load_class(spec)))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def source_of(spec: str) -> MethodSource:
    """The record of a spec as it is now (class loaded and checked first)."""
    spec = normalise(spec)
    load_class(spec)
    return MethodSource(spec=spec, sha256=file_sha256(source_file(spec)))


def load_recorded(source: MethodSource):
    """The class a run recorded; refused when its file is gone or changed since (another run, then)."""
    where, _ = _split(source.spec)
    if where.endswith(".py") and not Path(where).expanduser().is_file():
        raise ConfigError(f"this run was trained with the method file {where}, which no longer exists; "
                          "restore it unchanged (its sha256 is part of the run), or train anew")
    cls = load_class(source.spec)
    now = file_sha256(source_file(source.spec))
    if now != source.sha256:
        raise ConfigError(f"method source {source_file(source.spec)} changed since this run was configured "
                          f"(sha256 {source.sha256[:12]}… then, {now[:12]}… now); restore it, or train anew")
    return cls


def default_name(cls) -> str:
    """The `name` literal of a method class's Config (its variant name in grids and folders)."""
    return get_args(cls.Config.model_fields["name"].annotation)[0]


def entry_point_spec(name: str) -> str | None:
    """'package.module:Class' that an installed package registers for `name`, if any."""
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == name:
            return entry.value
    return None

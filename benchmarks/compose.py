"""Compose a run's configuration from profile, method variant, noise and overrides; name its folder.

A run is composed from plain dicts merged in a fixed order and validated once (n2n_core/config.py):
profile TOML → method variant TOML (or a registry name, or an external method spec) → noise →
the variant's own `set` overrides → the command line's `--set`.
"""

from __future__ import annotations

import re
from pathlib import Path

from n2n_core.config import ExperimentConfig, load_toml, merge_layers
from n2n_core.errors import ConfigError
from n2n_core.methods import METHODS, external

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # found from a clone or an install
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def available(kind: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.toml"))


def variant_name(method: str) -> str:
    """What a run of `method` (variant, registry name or external spec) is called in folders and tables."""
    if external.is_spec(method):
        return external.default_name(external.load_class(external.normalise(method)))
    return method


def _method_layer(method: str) -> tuple[dict, dict]:
    """(method layer, top-level fields) for a variant file, a registry name or an external spec."""
    path = CONFIG_DIR / "methods" / f"{method}.toml"
    if path.exists():
        return load_toml(path), {}
    if external.is_spec(method):
        source = external.source_of(method)
        cls = external.load_class(source.spec)
        return {"method": {"name": external.default_name(cls)}}, {"method_source": source.model_dump()}
    if method in METHODS:
        return {"method": {"name": method}}, {}
    plugin = external.entry_point_spec(method)
    if plugin is not None:
        literal = external.default_name(external.load_class(plugin))
        if literal != method:  # method.name is the Config literal; folders and tables use the entry name
            raise ConfigError(f"entry point {method!r} ({external.ENTRY_POINT_GROUP}) names {plugin}, whose "
                              f"Config name is {literal!r}; register it as {literal!r} or rename the literal")
        return {"method": {"name": method}}, {"method_source": external.source_of(plugin).model_dump()}
    raise ConfigError(
        f"unknown method {method!r}; expected a variant ({', '.join(available('methods'))}), "
        f"a method ({', '.join(METHODS)}) or path/to/file.py:ClassName"
    )


def compose_config(profile: str, method: str, noise: str, overrides: list[str] = (),
                   seed: int | None = None) -> ExperimentConfig:
    """profile TOML → method TOML (or a bare registry name, or a spec) → noise → overrides, validated once.

    A method file may carry a top-level `set = ["section.key=value", ...]`: overrides that win over
    the profile (the 32×32 course variants set their crop size and evaluation set this way), applied
    before the command line's own, which win over both.
    """
    profile_path = CONFIG_DIR / "profiles" / f"{profile}.toml"
    if not _SAFE_NAME.match(profile) or not profile_path.exists():
        raise ConfigError(f"unknown profile {profile!r}; expected one of: {', '.join(available('profiles'))}")
    method_layer, top = _method_layer(method)
    variant_overrides = method_layer.pop("set", [])
    if not (isinstance(variant_overrides, list) and all(isinstance(o, str) for o in variant_overrides)):
        raise ConfigError(f"method {method}: `set` must be a list of 'section.key=value' strings")
    merged = merge_layers(load_toml(profile_path), method_layer, [*variant_overrides, *overrides])
    merged.update(profile=profile, noise=noise, **top)
    if seed is not None:
        merged["seed"] = seed
    return ExperimentConfig.model_validate(merged)


def run_dir(variant: str, cfg: ExperimentConfig, root: Path) -> Path:
    """The run folder: `<variant>-<noise>-<profile>-<hash>` under root, for `train` and `grid` alike.

    The configuration hash is the run's identity, so a folder of the same hash under another name
    (the same configuration reached through another variant name) is that run's folder: reused,
    never trained twice.
    """
    digest = cfg.config_hash()
    existing = sorted(Path(root).glob(f"*-{digest}")) if Path(root).is_dir() else []
    if existing:
        return existing[0]
    name = f"{variant}-{cfg.noise}-{cfg.profile}-{digest}"
    if not _SAFE_NAME.match(name):
        raise ConfigError(f"run name {name!r} is not a safe folder name; rename the variant")
    return Path(root) / name


def _toml_literal(value) -> str:
    """A Python value read from TOML, written back as a TOML literal (what --set parses)."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_literal(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"configuration value {value!r} ({type(value).__name__}) cannot be a --set value")


def file_overrides(path: Path) -> list[str]:
    """`--config run.toml`: its [section] keys as `section.key=value` overrides, the keys --set takes
    (a top-level `seed` too). Applied before the command line's --set, which wins over them."""
    tree = load_toml(Path(path))
    overrides = []
    for key, value in tree.items():
        if key in ("method", "noise", "profile") and not isinstance(value, dict) or key == "set":
            raise ConfigError(f"{path}: top-level {key!r} is not a configuration key; pass --{key} on the "
                              "command line (the file holds [train], [eval], [data], [method] sections and seed)")
        if isinstance(value, dict):
            overrides += [f"{key}.{sub}={_toml_literal(v)}" for sub, v in value.items()]
        else:
            overrides.append(f"{key}={_toml_literal(value)}")
    return overrides

"""requirements.lock carries every pin of pyproject.toml, its extras included, at the same version.

The set-up script installs the lock (scripts/ensure_venv.sh), so a pin that is only in
pyproject.toml (as the `gpu` extra's nvidia-ml-py was) is never installed by it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """PEP 503 normalised name: 'Flask' and 'flask', 'nvidia_ml_py' and 'nvidia-ml-py' are one."""
    return re.sub(r"[-_.]+", "-", requirement).lower()


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not pinned with ==: {line!r}"
            pins[_name(name.strip())] = version.strip()
    return pins


def test_the_lock_pins_every_dependency_and_extra_of_pyproject_at_its_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"])
    for requirements in project["optional-dependencies"].values():
        wanted.update(_pins(requirements))
    locked = _pins((ROOT / "requirements.lock").read_text().splitlines())
    wrong = {name: (version, locked.get(name)) for name, version in wanted.items() if locked.get(name) != version}
    assert not wrong, f"(pyproject.toml pin, requirements.lock pin) differ: {wrong}"

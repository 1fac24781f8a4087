"""Where the MLflow store, `runs/` and `results/` live, whatever the current directory.

`home()` is the folder holding all three (README "Where files go"):
- `$N2N_HOME` when set;
- else the project folder when this code runs from a clone (editable install or `python -m`);
- else (a wheel installed into site-packages) the per-user data folder, e.g.
  `~/.local/share/n2n-bench` on Linux, so nothing is ever written into site-packages.
Each command's own option (`--tracking-uri`, `--runs-dir`, `--out`) and `$MLFLOW_TRACKING_URI` win
over these defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the clone, or site-packages when installed
HOME_ENV = "N2N_HOME"


def clone_root() -> Path | None:
    """The project folder when running from a clone (it has pyproject.toml beside benchmarks/)."""
    if (SOURCE_ROOT / "pyproject.toml").is_file() and (SOURCE_ROOT / "benchmarks" / "cli.py").is_file():
        return SOURCE_ROOT
    return None


def home() -> Path:
    """$N2N_HOME, else the clone, else the per-user data folder (never site-packages)."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return clone_root() or Path(platformdirs.user_data_dir("n2n-bench"))


def store_path() -> Path:
    return home() / "mlflow.db"


def runs_root() -> Path:
    return home() / "runs"


def results_dir() -> Path:
    return home() / "results"


def project_readme() -> Path | None:
    """README.md whose results block `report` refreshes: only a clone's, never an installed copy's."""
    root = clone_root()
    return root / "README.md" if root is not None and os.environ.get(HOME_ENV) is None else None

"""Tracker protocol (params, metrics, artifacts) and NullTracker; MLflow lives in benchmarks/."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol


class Tracker(Protocol):
    def log_params(self, params: Mapping[str, object]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path) -> None: ...


class NullTracker:
    """Logs nothing: the library's default."""

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step):
        pass

    def log_artifact(self, path):
        pass

"""MLflow behind the library's Tracker protocol: the embedded SQLite default, any server by URI.

Only `benchmarks/` imports MLflow. The store is checked before any compute starts, so an
unreachable or malformed tracking URI is one clear error, not a failure an hour into a grid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from n2n_core.errors import N2NError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "n2n-bench"
# Fail fast against a server that is down, instead of MLflow's minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class TrackingError(N2NError):
    """The tracking store cannot be reached or used."""


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the embedded SQLite store `mlflow.db` at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def open_store(uri: str | None = None, experiment: str = EXPERIMENT):
    """Connect, create the experiment once, and return (client, experiment_id); errors name the fix."""
    from mlflow import MlflowClient

    uri = uri or default_tracking_uri()
    if not uri.startswith(("sqlite:///", "http://", "https://", "file:", "postgresql", "mysql", "databricks")):
        raise TrackingError(
            f"tracking URI {uri!r} is malformed; use sqlite:///path/mlflow.db or http://host:port"
        )
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, found.experiment_id
        artifacts = None
        if uri.startswith("sqlite:///"):  # keep artifacts beside the embedded store, git-ignored
            artifacts = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
        return client, client.create_experiment(experiment, artifact_location=artifacts)
    except TrackingError:
        raise
    except Exception as err:  # connection refused, DNS, HTTP 5xx, bad database...
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise TrackingError(
            f"tracking server {uri} is unreachable or unusable ({first}); start it, fix "
            "--tracking-uri / MLFLOW_TRACKING_URI, or leave both unset for the local sqlite store"
        ) from None


class MlflowTracker:
    """Tracker for one MLflow run; metrics are buffered and sent in batches."""

    def __init__(self, client, run_id: str, flush_every: int = 50):
        self.client, self.run_id, self.flush_every = client, run_id, flush_every
        self._pending: list = []
        self.failed_writes = 0  # metrics that could not be logged (server gone): reported, not fatal

    def log_params(self, params: Mapping[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            for i in range(0, len(batch), 500):
                self.client.log_batch(self.run_id, metrics=batch[i : i + 500])
        except Exception:
            self.failed_writes += len(batch)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

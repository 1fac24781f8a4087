"""MLflow behind the library's Tracker protocol: the embedded SQLite default, any server by URI.

Only `benchmarks/` imports MLflow. The store is checked before any compute starts, so an
unreachable or malformed tracking URI is one clear error, not a failure an hour into a grid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from n2n_core.errors import N2NError, first_line

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
        raise TrackingError(
            f"tracking server {uri} is unreachable or unusable ({first_line(err, 200)}); start it, fix "
            "--tracking-uri / MLFLOW_TRACKING_URI, or leave both unset for the local sqlite store"
        ) from None


class MlflowTracker:
    """Tracker for one MLflow run; metrics are buffered and sent in batches.

    A write that fails (server gone, timeout, refused) never stops the job: it is counted in
    `unlogged`, and from then on nothing more is sent (`broken` holds the first error), so a dead
    server costs one round of MLflow's bounded retries per job, not one per call. The caller
    reports what was not logged (benchmarks/grid.py); a rerun logs it from the kept files.
    """

    def __init__(self, client, run_id: str, flush_every: int = 50):
        self.client, self.run_id, self.flush_every = client, run_id, flush_every
        self._pending: list = []
        self.unlogged: dict[str, int] = {}  # "metrics" / "params" / "artifacts" / "tags" → count
        self.broken: str | None = None  # the first failed write's error; nothing is sent after it

    def _send(self, kind: str, count: int, write) -> bool:
        """Run write() unless an earlier write failed; count what was not logged."""
        if self.broken is None:
            try:
                write()
                return True
            except Exception as err:
                self.broken = first_line(err)
        self.unlogged[kind] = self.unlogged.get(kind, 0) + count
        return False

    def unlogged_summary(self) -> str:
        """e.g. '120 metrics, 6 artifacts' (empty when everything was logged)."""
        return ", ".join(f"{n} {kind}" for kind, n in self.unlogged.items())

    def log_params(self, params: Mapping[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            chunk = items[i : i + 100]
            self._send("params", len(chunk), lambda c=chunk: self.client.log_batch(self.run_id, params=c))

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
        for i in range(0, len(batch), 500):
            chunk = batch[i : i + 500]
            self._send("metrics", len(chunk), lambda c=chunk: self.client.log_batch(self.run_id, metrics=c))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._send("artifacts", 1, lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def set_tags(self, tags: Mapping[str, object]) -> None:
        for key, value in tags.items():
            self._send("tags", 1, lambda k=key, v=value: self.client.set_tag(self.run_id, k, str(v)))

"""MLflow behind the library's Tracker protocol: the embedded SQLite default, any server by URI.

Only `benchmarks/` imports MLflow. The store is checked before any compute starts, so an
unreachable or malformed tracking URI is one clear error, not a failure an hour into a grid.
"""

from __future__ import annotations

import logging
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
# MLflow's own INFO lines (database set-up, system metrics start/stop) stay off the terminal;
# MLFLOW_LOGGING_LEVEL=INFO brings them back.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
# Opens in MLflow's classic training view (runs table, charts), not the GenAI one; the tag name and
# value are those of MLflow 3.17's UI (`mlflow.experimentKind`, ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
EXPERIMENT_DESCRIPTION = """**n2n-bench**: image denoisers trained without clean data (N2C, N2N, N2V, SSDN, CBM3D, ...),
trained and scored the same way. One run per (method variant, noise style, profile), named
`<variant> · <noise> · <profile>`; a grid's jobs are nested under the grid's run.

- `psnr_<set>`: the final score (dB, uint8 PSNR, docs/methods.md §8), logged once; add it as a
  column of the runs table, or compare runs in the chart view.
- `val_psnr`, `train_loss`, `lr`: curves against images seen (the step); `system/*`: CPU, memory
  and GPU while training.
- Tags: `variant`, `noise`, `profile`, `config_hash` (the run's identity), `run_dir` (checkpoint
  folder), versions, data digest; the trained network is a logged PyTorch model.

Rebuild the tables: `n2n-bench report`. Denoise with a run: `n2n-bench denoise --run RUN_ID IMAGE --out DIR`.
"""


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
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            if "mlflow.experimentKind" not in found.tags:  # made by an older release: label it once
                _describe(client, found.experiment_id)
            return client, found.experiment_id
        artifacts = None
        if uri.startswith("sqlite:///"):  # keep artifacts beside the embedded store, git-ignored
            artifacts = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
        experiment_id = client.create_experiment(experiment, artifact_location=artifacts)
        _describe(client, experiment_id)
        return client, experiment_id
    except TrackingError:
        raise
    except Exception as err:  # connection refused, DNS, HTTP 5xx, bad database...
        raise TrackingError(
            f"tracking server {uri} is unreachable or unusable ({first_line(err, 200)}); start it, fix "
            "--tracking-uri / MLFLOW_TRACKING_URI, or leave both unset for the local sqlite store"
        ) from None


def _describe(client, experiment_id: str) -> None:
    """The experiment's description (shown on its page) and its kind (the classic training view)."""
    for key, value in {"mlflow.note.content": EXPERIMENT_DESCRIPTION, **EXPERIMENT_KIND}.items():
        client.set_experiment_tag(experiment_id, key, value)


def start_system_metrics(tracking_uri: str, run_id: str):
    """MLflow's system metrics (CPU, memory, disk, network; GPU with the `gpu` extra) for one run,
    sampled every 10 s (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL) in a thread; None when psutil
    is missing. The caller calls .finish()."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception:  # psutil missing, or the monitor cannot start: the run goes on without
        return None


def log_network(client, experiment_id: str, run_id: str, network, signature_channels: tuple[int, int],
                metadata: Mapping[str, str], step: int) -> str:
    """Log `network` as an MLflow PyTorch model of the run; return its URI (models:/<id>).

    Logged at the step of the final scores, so MLflow shows them as the model's metrics. The
    signature is the network's own: float32 (N, C_in, H, W) → (N, C_out, H, W), H and W multiples
    of 32 (what it computes: SSDN's network outputs μ and the prior's factors, not the posterior
    mean; denoise with `n2n-bench denoise --run`). Pickle format (MLflow's `pt2` needs a fixed
    input shape): `mlflow.pytorch.load_model` unpickles code, so load models from stores you trust.
    """
    import numpy as np
    import mlflow
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    c_in, c_out = signature_channels
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, c_in, -1, -1))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, c_out, -1, -1))]))
    previous_uri, quiet = mlflow.get_tracking_uri(), logging.getLogger("mlflow.pytorch")
    level = quiet.level
    try:
        mlflow.set_tracking_uri(client.tracking_uri)
        quiet.setLevel(logging.ERROR)  # its pickle-format warning is the docstring's last sentence
        logged = client.create_logged_model(experiment_id, name="network", source_run_id=run_id)
        info = mlflow.pytorch.log_model(network, name="network", signature=signature, metadata=dict(metadata),
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                        serialization_format="pickle", run_id=run_id,
                                        model_id=logged.model_id, step=step)
    finally:
        quiet.setLevel(level)
        mlflow.set_tracking_uri(previous_uri)
    return info.model_uri


class MlflowTracker:
    """Tracker for one MLflow run; metrics are buffered and sent in batches.

    A write that fails (server gone, timeout, refused) never stops the job: it is counted in
    `unlogged`, and from then on nothing more is sent (`broken` holds the first error), so a dead
    server costs one round of MLflow's bounded retries per job, not one per call. The caller
    reports what was not logged (benchmarks/grid.py); a rerun logs it from the kept files.
    """

    def __init__(self, client, run_id: str, flush_every: int = 50, on_step=None):
        self.client, self.run_id, self.flush_every = client, run_id, flush_every
        self.on_step = on_step  # called with each logged step (images seen): the grid's overall bar
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
        if self.on_step is not None:
            self.on_step(int(step))
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

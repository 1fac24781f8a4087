"""MLflow behind the library's Tracker protocol: the embedded SQLite default, any server by URI.

Only `benchmarks/` imports MLflow. The store is checked before any compute starts, so an
unreachable or malformed tracking URI is one clear error, not a failure an hour into a grid.

Two commands may open one SQLite store at once: its creation (MLflow's schema migrations) runs
under a file lock beside it (`mlflow.db.lock`), and a store left half-migrated by an older crash is
named as such with the way out. Every HTTP request to a tracking server has an overall deadline
(`$N2N_TRACKING_DEADLINE` seconds, default 120), so a server that trickles bytes cannot hang a
command: MLflow's own timeout applies per read, not per request.

Why one long module: it is the only module that talks to MLflow (opening and locking the store,
the per-request deadline, the Tracker), which keeps MLflow out of every other module.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from n2n_core.errors import N2NError, first_line

from . import paths

PROJECT_ROOT = paths.home()  # kept for older callers; new code asks benchmarks.paths
EXPERIMENT = "n2n-bench"
# Fail fast against a server that is down, instead of MLflow's minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
DEADLINE_ENV = "N2N_TRACKING_DEADLINE"
DEFAULT_DEADLINE_S = 120.0
STORE_LOCK_TIMEOUT_S = 300.0  # another process creating or migrating the same store
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


class NoFinishedRuns(N2NError):
    """The store holds no finished run to report on."""


TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the embedded SQLite store `mlflow.db` in benchmarks.paths.home()."""
    return os.environ.get(TRACKING_URI_ENV) or f"sqlite:///{paths.store_path()}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative or absolute), else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def is_disk_full(text: str) -> bool:
    """SQLite's SQLITE_FULL ('database or disk is full') or the OS's ENOSPC, in an error's text."""
    text = text.lower()
    return "disk is full" in text or os.strerror(errno.ENOSPC).lower() in text


def _half_migrated(db: Path, message: str) -> str | None:
    """Why a SQLite store that failed to open looks half-created (MLflow's migrations interrupted)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            leftovers = [row[0] for row in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_alembic\\_tmp\\_%' ESCAPE '\\'")]
    except sqlite3.Error:
        leftovers = []
    if leftovers:
        return f"it holds the migration's leftover table {leftovers[0]}"
    if "out-of-date database schema" in message:
        return "its schema version is older than this MLflow's"
    return None


def _store_error(uri: str, err: Exception) -> TrackingError:
    """One line for a store that failed to open, naming the fix that applies."""
    text, db = str(err), sqlite_file(uri)
    if is_disk_full(text):
        return TrackingError(f"the tracking store {uri} is on a full disk ({first_line(err, 200)}); free "
                             "some disk space, or pass --tracking-uri with a store on a disk that has room, "
                             "then rerun the same command")
    if DEADLINE_ENV in text:  # our overall deadline ended the request (_with_deadline)
        return TrackingError(f"tracking server {uri} sent no complete answer within {request_deadline():g} s "
                             f"(overloaded, or trickling bytes); check it, or raise {DEADLINE_ENV}")
    why = _half_migrated(db, text) if db is not None and db.is_file() else None
    if why is not None:
        return TrackingError(
            f"the tracking store {db} is half-migrated: {why} (an earlier command stopped while creating "
            f"or upgrading it); move it aside (mv {db} {db}.broken) and rerun to start a fresh store, or, "
            f"if it holds runs you need, back it up and run 'mlflow db upgrade sqlite:///{db}' on the copy"
        )
    return TrackingError(
        f"tracking server {uri} is unreachable or unusable ({first_line(err, 200)}); start it, fix "
        "--tracking-uri / MLFLOW_TRACKING_URI, or leave both unset for the local sqlite store"
    )


@contextlib.contextmanager
def store_errors(uri: str):
    """A store call after open_store (creating a run) that fails becomes open_store's one line: a
    store on a full disk still opens, since opening only reads, and fails at its first write."""
    try:
        yield
    except N2NError:
        raise
    except Exception as err:  # MLflow's exceptions: disk full, server gone, deadline...
        raise _store_error(uri, err) from None


def _store_lock(db: Path):
    """Held while a process opens (and maybe creates) a SQLite store: MLflow's schema creation is
    not safe against a second process doing the same (two fresh `grid`s once left a store
    half-migrated)."""
    from filelock import FileLock

    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrackingError(f"could not create the folder of the tracking store {db} ({err.strerror or err}); "
                            "pass --tracking-uri with a folder you can write") from None
    return FileLock(str(db) + ".lock", timeout=STORE_LOCK_TIMEOUT_S)


def open_store(uri: str | None = None, experiment: str = EXPERIMENT, create: bool = True):
    """Connect, create the experiment once, and return (client, experiment_id); errors name the fix.

    create=False (the report): a SQLite store that does not exist is an error, never created empty.
    """
    from filelock import Timeout
    from mlflow import MlflowClient

    uri = uri or default_tracking_uri()
    if not uri.startswith(("sqlite:///", "http://", "https://", "file:", "postgresql", "mysql", "databricks")):
        raise TrackingError(
            f"tracking URI {uri!r} is malformed; use sqlite:///path/mlflow.db or http://host:port"
        )
    install_request_deadline()
    db = sqlite_file(uri)
    if db is not None and not create and not db.is_file():
        raise NoFinishedRuns(f"there is no tracking store at {db.resolve()}; run 'n2n-bench grid' first, or "
                             "pass --tracking-uri (or set MLFLOW_TRACKING_URI) to the store holding the runs")
    lock = _store_lock(db) if db is not None else None
    try:
        if lock is not None:
            lock.acquire()
        try:
            logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                if "mlflow.experimentKind" not in found.tags:  # made by an older release: label it once
                    _describe(client, found.experiment_id)
                return client, found.experiment_id
            if not create:
                raise NoFinishedRuns(f"the tracking store {uri} has no experiment {experiment!r}; run "
                                     "'n2n-bench grid' first, or pass the --tracking-uri that holds the runs")
            artifacts = None
            if db is not None:  # keep artifacts beside the embedded store, git-ignored
                artifacts = (db.resolve().parent / "mlartifacts").as_uri()
            experiment_id = client.create_experiment(experiment, artifact_location=artifacts)
            _describe(client, experiment_id)
            return client, experiment_id
        finally:
            if lock is not None and lock.is_locked:
                lock.release()
    except N2NError:
        raise
    except Timeout:
        raise TrackingError(f"the tracking store {db} stayed locked by another command for "
                            f"{STORE_LOCK_TIMEOUT_S:.0f} s; wait for it or remove {db}.lock if none runs") from None
    except Exception as err:  # connection refused, DNS, HTTP 5xx, bad database, disk full...
        raise _store_error(uri, err) from None


# ------------------------------------------------------------------ an overall deadline per HTTP request

_watch = threading.local()  # the deadline of the request this thread is making, if any


def request_deadline() -> float:
    try:
        seconds = float(os.environ.get(DEADLINE_ENV, DEFAULT_DEADLINE_S))
    except ValueError:
        raise TrackingError(f"{DEADLINE_ENV} must be a number of seconds") from None
    return seconds if seconds > 0 else DEFAULT_DEADLINE_S


class _Deadline:
    """Shuts down the sockets of one request once its time is up, so a blocked read returns."""

    def __init__(self, seconds: float):
        self.seconds, self.expired, self.connections = seconds, False, []
        self._lock = threading.Lock()
        self.timer = threading.Timer(seconds, self.expire)
        self.timer.daemon = True

    def watch(self, conn) -> None:
        with self._lock:
            self.connections.append(conn)
            if self.expired:
                self._shut(conn)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for conn in self.connections:
                self._shut(conn)

    @staticmethod
    def _shut(conn) -> None:
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _watched_pool(base):
    class Watched(base):
        def _get_conn(self, timeout=None):
            conn = super()._get_conn(timeout)
            deadline = getattr(_watch, "deadline", None)
            if deadline is not None:
                if deadline.expired:  # a retry after the deadline: give up at once
                    self._put_conn(conn)
                    from urllib3.exceptions import NewConnectionError

                    raise NewConnectionError(conn, f"no answer within {deadline.seconds:g} s")
                deadline.watch(conn)
            return conn

    Watched.__name__ = f"Deadline{base.__name__}"
    return Watched


def _with_deadline(request):
    @functools.wraps(request)
    def call(method, url, *args, **kwargs):
        import requests

        deadline = _Deadline(request_deadline())
        previous, _watch.deadline = getattr(_watch, "deadline", None), deadline
        deadline.timer.start()
        try:
            return request(method, url, *args, **kwargs)
        except Exception as err:
            if deadline.expired:
                raise requests.exceptions.ReadTimeout(
                    f"no complete answer from {url} within {deadline.seconds:g} s ({DEADLINE_ENV})") from err
            raise
        finally:
            deadline.timer.cancel()
            _watch.deadline = previous

    return call


def _arm(session) -> None:
    from urllib3 import HTTPConnectionPool, HTTPSConnectionPool

    pools = {"http": _watched_pool(HTTPConnectionPool), "https": _watched_pool(HTTPSConnectionPool)}
    for adapter in session.adapters.values():
        manager = getattr(adapter, "poolmanager", None)
        if manager is not None:
            manager.pool_classes_by_scheme = pools
    session.request = _with_deadline(session.request)
    session.n2n_deadline = True


def install_request_deadline() -> None:
    """Give every requests session MLflow makes an overall deadline per request (idempotent).

    MLflow's MLFLOW_HTTP_REQUEST_TIMEOUT bounds each socket read, so a server sending one byte
    every few seconds never trips it; here a timer shuts the request's sockets when its time is up
    and the request fails as a timeout, which the callers turn into their one-line error.
    """
    from mlflow.utils import request_utils

    original = request_utils._cached_get_request_session
    if getattr(original, "n2n_deadline", False):
        return

    @functools.wraps(original)
    def session_with_deadline(*args, **kwargs):
        session = original(*args, **kwargs)  # cached per process by MLflow
        if not getattr(session, "n2n_deadline", False):
            _arm(session)
        return session

    session_with_deadline.n2n_deadline = True
    request_utils._cached_get_request_session = session_with_deadline


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

        class EveryRunMonitor(SystemMetricsMonitor):
            """MLflow's monitor drops its first sample when the run ends within one interval (its
            loop returns from the wait without publishing); this one publishes it then, so every
            training run has system metrics, however short."""

            def finish(self):
                if self._process is not None:
                    self._shutdown_event.set()
                    self._process.join()
                    if self._logging_step == 0:
                        try:  # best effort, as MLflow's own loop: a store that fails is the run's to report
                            sampled = self.aggregate_metrics()
                            if sampled:
                                self.publish_metrics(sampled)
                        except Exception:
                            pass
                super().finish()  # flushes what was published

        monitor = EveryRunMonitor(run_id, tracking_uri=tracking_uri)
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
    quiet = logging.getLogger("mlflow.pytorch")
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)  # its pickle-format warning is the docstring's last sentence
        with _global_tracking_uri(client.tracking_uri):
            logged = client.create_logged_model(experiment_id, name="network", source_run_id=run_id)
            info = mlflow.pytorch.log_model(network, name="network", signature=signature, metadata=dict(metadata),
                                            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                            serialization_format="pickle", run_id=run_id,
                                            model_id=logged.model_id, step=step)
    finally:
        quiet.setLevel(level)
    return info.model_uri


@contextlib.contextmanager
def _global_tracking_uri(uri: str):
    """MLflow's global tracking URI set to `uri` inside, and afterwards exactly as it was.

    mlflow.pytorch.log_model logs through the global URI (it takes no client). Restoring it with
    `mlflow.set_tracking_uri(mlflow.get_tracking_uri())` is not the same: when nothing had set one,
    get_tracking_uri() returns MLflow's default, the current folder's sqlite:///mlflow.db, and
    set_tracking_uri writes it into $MLFLOW_TRACKING_URI, which default_tracking_uri() then takes
    for the user's choice. So both the environment variable and MLflow's own global are put back.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as uri_state

    saved_env, saved_global = os.environ.get(TRACKING_URI_ENV), uri_state._tracking_uri
    try:
        mlflow.set_tracking_uri(uri)
        yield
    finally:
        mlflow.set_tracking_uri(saved_global)  # None unsets it (and the variable) again
        if saved_env is None:
            os.environ.pop(TRACKING_URI_ENV, None)
        else:
            os.environ[TRACKING_URI_ENV] = saved_env


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

    def not_logged_error(self, kept_in: Path) -> TrackingError:
        """The job's one line once a write failed: what was lost, where the results are, the fix."""
        if is_disk_full(self.broken or ""):
            what = f"the tracking store's disk is full ({self.broken})"
            fix = "free some disk space, then rerun the same command to log them"
        else:
            what = f"the tracking server stopped answering ({self.broken})"
            fix = "rerun the same command once the server is back to log them"
        return TrackingError(f"{what}; not logged: {self.unlogged_summary()}; the checkpoint and scores "
                             f"are kept in {kept_in}; {fix}")

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

"""`n2n-bench grid --executor ray`: every job of the grid as one Ray task on a cluster.

A task runs the grid's `jobs.Attempt`, the very callable the local executor runs: skip the job when
its configuration hash already has a FINISHED run, else train (resuming `runs/<...>/checkpoint.pt`)
and score it, marking the MLflow run FAILED on an error. The driver only submits the tasks and
gathers ("ran" | "skipped" | "failed", why). Tasks ask for one GPU each where the cluster has
GPUs, else `--ray-cpus` CPUs each, and are not retried (a rerun of the grid resumes the job).

What the nodes must share: the tracking server (an `mlflow server` reachable from every node; a
sqlite/file store or a localhost URL only works when the whole cluster is this one machine), the
runs folder and the data folder (same absolute paths, e.g. on a shared filesystem), and this
project installed in the Python environment Ray runs its workers with. Ray is the optional
`cluster` extra (`pip install .[cluster]`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from urllib.parse import urlparse

from n2n_core.errors import N2NError, first_line

from .jobs import Attempt, Job, attempt_from_json

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}
FORWARDED_ENV = ("N2N_", "MLFLOW_")  # data locations and tracking credentials reach the workers


def _import_ray():
    try:
        import ray
    except ImportError:
        raise N2NError("--executor ray needs Ray, an optional extra: pip install .[cluster] "
                       "(or use the default --executor local)") from None
    return ray


def address_is_local(address: str | None) -> bool:
    """True for a Ray instance on this machine: none given, 'local', or a loopback host."""
    if address in (None, "", "local"):
        return True
    host = urlparse(address if "://" in address else f"ray://{address}").hostname or ""
    return host in LOCAL_HOSTS


def store_is_local(uri: str) -> bool:
    """True when the tracking URI only works on this machine: a sqlite/file store or a localhost URL."""
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return True
    return (urlparse(uri).hostname or "") in LOCAL_HOSTS


def _refuse_local_store(uri: str, where: str) -> None:
    raise N2NError(
        f"tracking URI {uri} only works on this machine, but the Ray cluster {where}; start a "
        "shared server (mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri "
        "sqlite:///mlflow.db) and pass --tracking-uri http://<its host>:5000"
    )


def check(tracking_uri: str, address: str | None) -> None:
    """Before anything is written: Ray is installed, and a remote cluster gets a shared store."""
    _import_ray()
    if store_is_local(tracking_uri) and not address_is_local(address):
        _refuse_local_store(tracking_uri, f"at {address} is not local")


def connect(tracking_uri: str, address: str | None) -> bool:
    """Join (or start, address None) the Ray cluster; True when this call started Ray.

    Refuses a machine-local tracking store when the cluster turns out to span several nodes.
    """
    check(tracking_uri, address)
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        local = address in (None, "", "local")
        try:
            ray.init(address=None if local else address, runtime_env={"env_vars": env} if env else None,
                     include_dashboard=False if local else None)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise N2NError(f"could not connect to the Ray cluster at {address} ({first_line(err)}); start it with "
                           "`ray start --head` or fix --ray-address") from None
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if store_is_local(tracking_uri) and len(alive) > 1:
        if started:
            ray.shutdown()
        _refuse_local_store(tracking_uri, f"has {len(alive)} nodes")
    return started


def _run_attempt(attempt: Attempt, variant: str, config_json: str, eval_id: str | None,
                 axes: tuple = ()) -> tuple[str, str]:
    """One Ray task: the attempt opens the tracking store on this node and runs the job, rebuilt
    from its JSON configuration (an external method's class is imported again from its recorded
    file on the node; a pickled Job holding it would not unpickle there)."""
    return attempt_from_json(attempt, variant, config_json, eval_id, axes)


def run_ray(jobs: list[Job], attempt: Attempt, address: str | None = None,
            cpus: float = 1) -> Iterator[tuple[Job, tuple[str, str]]]:
    """Submit every unfinished job at once to the cluster at `address` (None: a local Ray); yield
    (job, outcome) as tasks finish. One GPU per task where the cluster has GPUs, else `cpus` CPUs.

    Jobs already FINISHED are reported here without taking a slot on the cluster (the task would
    skip them too: it runs the same check first). Interrupted: the pending tasks are cancelled.
    """
    started_ray = connect(attempt.tracking_uri, address)
    ray = _import_ray()
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(_run_attempt).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    attempt = dataclasses.replace(attempt, progress=False)  # workers' bars would interleave
    pending = {}
    try:
        for job in jobs:
            if attempt.finished(job):
                yield job, ("skipped", "")
            else:
                pending[task.remote(attempt, job.variant, job.config.model_dump_json(), job.eval_id,
                                    job.axes)] = job
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as err:  # the worker or its node died: no Python error to report
                    outcome = ("failed", f"{type(err).__name__}: {first_line(err, 500)}")
                yield job, outcome
    finally:
        for ref in pending:  # interrupted: the tasks' own handlers mark their runs KILLED
            ray.cancel(ref)
        if started_ray:
            ray.shutdown()

"""One job of a grid or sweep: skip it when finished, else train and score it inside an MLflow run.

A job's identity is its configuration hash: a job whose hash already has a FINISHED run is
skipped; an interrupted one resumes from the checkpoint in its run folder; a failing one is marked
FAILED (with its error and traceback as tags) and the caller goes on. Every executor
(`run_local` here, `ray_executor.run_ray`) runs jobs through the same `Attempt`, so skipping,
resuming and failure marking are one piece of code.

Two processes never train one job twice: a job trains only while its process holds the run
folder's lock (n2n_core/train/checkpoint.py run_folder_lock), and one whose folder is locked, or
whose RUNNING run belongs to a live process, is "busy" (reported as running elsewhere). Every run
records the host and process that own it, so a run a SIGKILL left RUNNING can be marked KILLED
by the next grid (close_orphans).

Why one long module: it is one job's whole life (identity tags, who owns a RUNNING run, train and
log, skip/resume/fail) that every executor shares; split, the executors would import each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from tqdm import tqdm

from n2n_core.config import ExperimentConfig, check_training_memory
from n2n_core.data.sets import resolve_set
from n2n_core.device import resolve_device
from n2n_core.errors import N2NError
from n2n_core.methods import external, method_class
from n2n_core.train.checkpoint import RunFolderBusy, checkpoint_progress, run_folder_lock

from . import artefacts, paths, training
from .compose import run_dir
from .mlflow_tracker import (MlflowTracker, TrackingError, log_network, open_store, start_system_metrics,
                             store_errors)


# Called with a job's images seen whenever it logs (in this process only): `run_grid` points it at
# its overall progress bar while jobs run here; jobs in other processes advance it when they end.
progress_hook = None


@dataclass
class Job:
    variant: str
    config: ExperimentConfig
    eval_id: str | None = None  # the released experiment list's id (grid --table paper)
    axes: tuple[tuple[str, str], ...] = ()
    """The grid axes this job is one value of, e.g. (("seed", "1"),) for `grid --seeds`: several
    jobs of one variant differ only there, so the grid names each by its label."""

    @property
    def label(self) -> str:
        """How a grid names the job (progress, outcomes, dry run): the variant, plus its axis values
        where it has any (`n2c seed=1 noise_draw=fixed`)."""
        return " ".join([self.variant, *(f"{key}={value}" for key, value in self.axes)])


def git_commit() -> str:
    root = paths.clone_root()  # an installed copy is no checkout: never ask git about site-packages
    if root is None:
        return "unknown"
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_digest(cfg: ExperimentConfig, data_dir: Path) -> str:
    """sha256 over the (sorted) file hashes or names of every set the job reads."""
    digest = hashlib.sha256()
    for name in sorted({cfg.train.train_set, cfg.train.validation_set, *cfg.eval.sets}):
        image_set = resolve_set(name, data_dir)
        for path, sha in zip(image_set.paths, image_set.sha256):
            digest.update(f"{name}:{path.name}:{sha}".encode())
    return digest.hexdigest()


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def job_tags(job: Job, data_dir: Path) -> dict[str, str]:
    cfg = job.config
    return {
        "method": cfg.method.name, "variant": job.variant, "noise": cfg.noise,
        "profile": cfg.profile, "config_hash": cfg.config_hash(), "git_commit": git_commit(),
        "torch_version": torch.__version__, "numpy_version": np.__version__,
        "bm3d_version": package_version("bm3d"), "python_version": platform.python_version(),
        "device": str(resolve_device(cfg.train.device)), "data_sha256": data_digest(cfg, data_dir),
        "torch_threads": str(torch.get_num_threads()),
        # what tells the runs of one variant apart in the report's rows (report_runs.finished_run_groups)
        "seed": str(cfg.seed), "noise_draw": cfg.train.noise_draw, "train_set": cfg.train.train_set,
        **({"method_source": cfg.method_source.spec} if cfg.method_source else {}),
        **({"eval_id": job.eval_id} if job.eval_id else {}),
    }


def finished_run(client, experiment_id: str, config_hash: str):
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.config_hash = '{config_hash}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0] if runs else None


# ------------------------------------------------------------------ who owns a RUNNING run


def _start_ticks(pid: int | str) -> str:
    """The process's start time since boot (/proc/PID/stat field 22), '' where unknown: with the
    pid it names one process, even after the pid is reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_tags() -> dict[str, str]:
    """Tags naming this process as the owner of a run (checked by process_alive)."""
    return {"n2n.host": socket.gethostname(), "n2n.pid": str(os.getpid()), "n2n.pid_start": _start_ticks(os.getpid())}


def process_alive(tags: dict) -> bool | None:
    """Is the process a run's tags name still running? None where this machine cannot tell
    (another host, or a run logged before these tags existed)."""
    pid = tags.get("n2n.pid")
    if tags.get("n2n.host") != socket.gethostname() or not pid:
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except (ValueError, OverflowError):
        return None
    start = tags.get("n2n.pid_start")
    return not (start and _start_ticks(pid) != start)  # a reused pid is another process


def close_orphans(client, experiment_id: str, jobs: list[Job], noise: str, profile: str) -> list[str]:
    """Mark KILLED the RUNNING runs of these jobs (and grid parents of this noise and profile) whose
    process on this machine is gone, e.g. after a SIGKILL; return (and print) a line for each."""
    hashes = {job.config.config_hash() for job in jobs}
    closed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  max_results=5000):
        tags = run.data.tags
        is_job = tags.get("config_hash") in hashes
        is_grid = tags.get("grid") == "1" and tags.get("noise") == noise and tags.get("profile") == profile
        if not (is_job or is_grid) or process_alive(tags) is not False:
            continue
        client.set_tag(run.info.run_id, "error", f"its process (pid {tags['n2n.pid']} on {tags['n2n.host']}) "
                       "ended without closing the run (SIGKILL, power cut); marked KILLED by the next grid")
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(f"{tags.get('variant', 'grid')} run {run.info.run_id} (left RUNNING by pid {tags['n2n.pid']})")
        tqdm.write(f"marked KILLED: {closed[-1]}", file=sys.stderr)  # now: this grid may be stopped too
    return closed


def running_elsewhere(client, experiment_id: str, config_hash: str) -> str | None:
    """'pid N on HOST' when a live process other than this one runs this configuration now."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.config_hash = '{config_hash}' and "
                              "attributes.status = 'RUNNING'", max_results=100)
    for run in runs:
        tags = run.data.tags
        if process_alive(tags) and tags.get("n2n.pid") != str(os.getpid()):
            return f"pid {tags['n2n.pid']} on {tags['n2n.host']}"
    return None


# ------------------------------------------------------------------ messages for stops and resumes


def resume_note(variant: str, out_dir: Path, cfg: ExperimentConfig) -> str | None:
    """'resuming VARIANT from N of M images' when out_dir holds an unfinished checkpoint of cfg."""
    progress = checkpoint_progress(out_dir / "checkpoint.pt", identity=cfg.config_hash())
    if progress is None or progress[1]:
        return None
    return f"resuming {variant} from {progress[0]} of {cfg.train.budget_images} images"


def interruption_note(variant: str, out_dir: Path, cfg: ExperimentConfig) -> str:
    """What an interrupted job kept: the images of its last checkpoint, the way to go on."""
    if not method_class(cfg.method.name, cfg.method_source).trainable:
        return f"{variant}: interrupted while scoring; rerun the same command to score it"
    progress = checkpoint_progress(out_dir / "checkpoint.pt", identity=cfg.config_hash())
    seen = progress[0] if progress else 0
    return f"{variant}: interrupted at {seen} of {cfg.train.budget_images} images; rerun the same command to resume"


def check_jobs(jobs: list[Job], data_dir: Path, check_device: bool = True) -> None:
    """Refuse, before any store or run exists, a grid whose every job would fail at its start
    (an unknown or missing evaluation set, CUDA asked for and absent, crops too large)."""
    first = None
    for job in jobs:
        try:
            data_digest(job.config, data_dir)
            if check_device:
                device = resolve_device(job.config.train.device)
                if method_class(job.config.method.name, job.config.method_source).trainable:
                    check_training_memory(job.config.train, device)
            return  # one job can run: the others' problems are theirs, reported per job
        except N2NError as err:
            first = first or err
    if first is not None:
        raise first


def run_name(job: Job) -> str:
    """What MLflow shows for a job's run: `<variant> · <noise> · <profile>` (`<variant> seed=1 · …`
    for a job of a grid axis)."""
    return f"{job.label} · {job.config.noise} · {job.config.profile}"


def history_tags(images_before: int, budget: int) -> dict[str, str]:
    """Tags saying how much of the training curve this run holds: all of it, the part after a
    resume, or none (a finished checkpoint reused, e.g. one trained before it was logged)."""
    if images_before >= budget:
        return {"training_history": "none", "training_history_note":
                f"a finished checkpoint ({images_before} images) was reused: no curves in this run"}
    if images_before > 0:
        return {"training_history": "partial", "training_history_note":
                f"resumed at {images_before} of {budget} images: curves start there"}
    return {"training_history": "full"}


@dataclass
class JobResult:
    run_id: str
    train: training.TrainResult
    scores: dict


def run_job(client, experiment_id: str, parent_id: str | None, job: Job, runs_root: Path,
            data_dir: Path, progress: bool, out_dir: Path | None = None) -> JobResult:
    """Train and score one job inside its own MLflow run (a child of parent_id when given: a grid's
    job; `n2n-bench train` passes none); mark the run FAILED on any error.

    Everything a job logs is logged here, for grid and train alike: the flattened configuration as
    params, job_tags, curves and system metrics while training, the final scores once, every file
    of the run folder, and the network as an MLflow PyTorch model.
    """
    cfg = job.config
    out_dir = Path(out_dir) if out_dir is not None else run_dir(job.variant, cfg, runs_root)
    tags = {**({"mlflow.parentRunId": parent_id} if parent_id else {}), **job_tags(job, data_dir),
            "run_dir": str(out_dir.resolve()), **process_tags()}
    with store_errors(client.tracking_uri):  # a store on a full disk: one line, not a traceback
        run = client.create_run(experiment_id, run_name=run_name(job), tags=tags)
    hook = progress_hook  # the grid's display: (job label, images seen) as the job trains
    tracker = MlflowTracker(client, run.info.run_id,
                            on_step=None if hook is None else lambda seen: hook(job.label, seen))
    monitor = None
    try:
        tracker.log_params(cfg.flat())
        out_dir.mkdir(parents=True, exist_ok=True)
        note = resume_note(job.label, out_dir, cfg)
        if note:
            tqdm.write(note, file=sys.stderr)  # above the grid's progress bar, not inside it
        started = time.time()
        cached = method_class(cfg.method.name, cfg.method_source).with_cache_dir(
            cfg.method, str(runs_root / f"{cfg.method.name}-cache"))
        cfg = cfg.model_copy(update={"method": cached})  # a result cache is not part of the identity
        trainable = method_class(cfg.method.name, cfg.method_source).trainable
        if trainable:
            before = checkpoint_progress(out_dir / "checkpoint.pt", identity=cfg.config_hash())
            tracker.set_tags(history_tags(before[0] if before else 0, cfg.train.budget_images))
            monitor = start_system_metrics(client.tracking_uri, run.info.run_id)
        result = training.train(cfg, out_dir, tracker=tracker, data_dir=data_dir, progress=progress,
                                 count_flops=True)
        if monitor is not None:
            monitor.finish()
            monitor = None
        tracker.flush()
        method_logs: dict[str, dict[str, float]] = {}
        scores = artefacts.score_all(result, out_dir, data_dir, progress=progress, method_logs=method_logs)
        tracker.log_metrics({f"{key}_{name}": value for name, logs in method_logs.items()
                             for key, value in logs.items()}, step=result.images_seen)
        # the final scores, logged once, at the last step: MLflow also shows them as the model's metrics
        tracker.log_metrics({f"psnr_{name}": evaluation.psnr_mean for name, evaluation in scores.items()},
                            step=result.images_seen)
        tracker.set_tags({f"n_evaluations_{name}": evaluation.n_evaluations for name, evaluation in scores.items()})
        # counted FLOPs, for the grid's floor (benchmarks/flops.py)
        tracker.log_metrics({**({"train_flops": result.flops} if result.flops else {}),
                             **{f"scoring_flops_{name}": evaluation.flops_per_evaluation * evaluation.n_evaluations
                                for name, evaluation in scores.items() if evaluation.flops_per_evaluation is not None}},
                            step=result.images_seen)
        # what scoring costs per evaluation: the whole cost of a method that fits every image (zs-n2n)
        tracker.log_metrics({f"scoring_seconds_per_evaluation_{name}": evaluation.seconds / evaluation.n_evaluations
                             for name, evaluation in scores.items() if evaluation.seconds is not None},
                            step=result.images_seen)
        tracker.log_metrics({"train_seconds": result.seconds, "job_seconds": time.time() - started,
                             "images_seen": result.images_seen,
                             "skipped_steps_total": result.skipped_steps}, step=result.images_seen)
        tracker.flush()
        for path in sorted(out_dir.iterdir()):  # not the folder's .lock, temporary or previous files
            if path.is_file() and not path.name.startswith(".") and not path.name.endswith((".tmp", ".prev")):
                tracker.log_artifact(path)
        if cfg.method_source is not None:  # the external method's code, beside its results
            tracker.log_artifact(external.source_file(cfg.method_source.spec), "method")
        _log_network(client, experiment_id, run.info.run_id, tracker, result)
        if tracker.broken is not None:  # never a silent loss: the job fails, naming what is missing
            raise tracker.not_logged_error(out_dir)
        client.set_terminated(run.info.run_id, "FINISHED")
        return JobResult(run.info.run_id, result, scores)
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):  # for the command's last line (cli.friendly_errors)
            err.n2n_note = interruption_note(job.label, out_dir, cfg)
        if monitor is not None:
            monitor.finish()
        if tracker.broken is not None:  # one bounded attempt: the server may be back
            try:
                client.set_terminated(run.info.run_id, "FAILED")
            except Exception:
                pass
            raise
        try:
            client.set_tag(run.info.run_id, "error", f"{type(err).__name__}: {err}"[:5000])
            client.set_tag(run.info.run_id, "traceback", traceback.format_exc()[-5000:])
            client.set_terminated(run.info.run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        except Exception:
            print(f"could not mark run {run.info.run_id} failed in MLflow", file=sys.stderr)
        raise


def _log_network(client, experiment_id: str, run_id: str, tracker: MlflowTracker, result) -> None:
    """The evaluation network as an MLflow PyTorch model (tag `network_model_uri`); a network that
    is not a torch module (the from-scratch course network) or fails to log is said so in a tag."""
    model = result.model
    if model is None or tracker.broken is not None:
        return
    if not isinstance(model, torch.nn.Module):
        tracker.set_tags({"network_model": f"not logged: {type(model).__name__} is not a torch.nn.Module"})
        return
    channels = result.config.data.channels
    try:
        probe = next(p for p in model.parameters())
        with torch.inference_mode():
            out_channels = model(torch.zeros(1, channels, 32, 32, device=probe.device)).shape[1]
        uri = log_network(client, experiment_id, run_id, model.cpu() if probe.device.type != "cpu" else model,
                          (channels, out_channels),
                          {"config": result.config.canonical_json(), "method": result.config.method.name,
                           "denoise_with": f"n2n-bench denoise --run {run_id} IMAGE --out DIR"},
                          step=result.images_seen)
        tracker.set_tags({"network_model_uri": uri})
    except Exception as err:  # the run's results stand without it
        tracker.set_tags({"network_model": f"not logged: {type(err).__name__}: {err}"[:500]})


def train_and_log(cfg: ExperimentConfig, variant: str, out_dir: Path, tracking_uri: str | None,
                  runs_root: Path, data_dir: Path, progress: bool) -> tuple[training.TrainResult, str, bool]:
    """`n2n-bench train` as one grid job without a grid: (result, MLflow run id, already finished).

    A configuration that already has a FINISHED run whose checkpoint is still there is not logged
    again: the finished result is returned with that run's id.
    """
    client, experiment_id = open_store(tracking_uri)
    done = finished_run(client, experiment_id, cfg.config_hash())
    if done is not None and (Path(out_dir) / "checkpoint.pt").exists():
        return training.train(cfg, out_dir, data_dir=data_dir, progress=progress), done.info.run_id, True
    outcome = run_job(client, experiment_id, None, Job(variant, cfg), Path(runs_root), data_dir, progress,
                      out_dir=out_dir)
    return outcome.train, outcome.run_id, False


def attempt_job(client, experiment_id: str, parent_id: str, job: Job, runs_root: Path,
                data_dir: Path, progress: bool) -> tuple[str, str]:
    """Skip a job whose configuration already has a FINISHED run, else run it (resuming its
    checkpoint); ("skipped" | "ran" | "busy" | "failed", why).

    "busy": another live process is running the job (its run folder is locked, or its RUNNING run
    names a live process); it is not trained a second time here."""
    config_hash = job.config.config_hash()
    try:
        if finished_run(client, experiment_id, config_hash) is not None:
            return "skipped", ""
        holder = running_elsewhere(client, experiment_id, config_hash)
        if holder is not None:
            return "busy", f"its run is RUNNING in {holder}"
        with run_folder_lock(run_dir(job.variant, job.config, runs_root)):
            if finished_run(client, experiment_id, config_hash) is not None:  # finished while we looked
                return "skipped", ""
            run_job(client, experiment_id, parent_id, job, runs_root, data_dir, progress)
        return "ran", ""
    except KeyboardInterrupt:
        raise
    except RunFolderBusy as err:
        return "busy", str(err)
    except Exception as err:  # one broken job must not sink the grid
        return "failed", f"{type(err).__name__}: {err}"


@dataclass(frozen=True)
class Attempt:
    """`attempt_job` with everything but the job bound; plain data, so it can travel to a worker,
    which opens the tracking store itself (once per process)."""

    tracking_uri: str
    experiment: str
    parent_id: str
    runs_root: Path
    data_dir: Path
    progress: bool = True

    def __call__(self, job: Job) -> tuple[str, str]:
        try:
            client, experiment_id = _store(self.tracking_uri, self.experiment)
        except TrackingError as err:
            return "failed", f"{type(err).__name__}: {err}"
        return attempt_job(client, experiment_id, self.parent_id, job, self.runs_root,
                           self.data_dir, self.progress)

    def finished(self, job: Job) -> bool:
        """True when the job would be skipped (a store hiccup counts as not finished)."""
        try:
            client, experiment_id = _store(self.tracking_uri, self.experiment)
            return finished_run(client, experiment_id, job.config.config_hash()) is not None
        except Exception:
            return False


_stores: dict[tuple[str, str], tuple] = {}


def _store(uri: str, experiment: str):
    key = (uri, experiment)
    if key not in _stores:
        _stores[key] = open_store(uri, experiment)
    return _stores[key]


def run_local(jobs: Iterable[Job], attempt: Attempt) -> Iterator[tuple[Job, tuple[str, str]]]:
    """One job after another in this process; each runs when the caller asks for its outcome."""
    for job in jobs:
        yield job, attempt(job)


def _die_with_the_grid(grid_pid: int) -> None:
    """Have the kernel send this worker SIGTERM when the grid's process dies (Linux's
    PR_SET_PDEATHSIG): a grid killed with SIGKILL cannot stop its workers itself, and a worker
    left training would hold its run folder, so the rerun would find the job "running elsewhere".
    The worker then unwinds like Ctrl-C: run KILLED, checkpoint kept."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the grid's own SIGTERM handling still applies
        return
    if os.getppid() != grid_pid:  # the grid died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _init_worker(threads: int, progress_queue=None, grid_pid: int | None = None) -> None:
    """A parallel grid's worker: `threads` intra-op threads, CBM3D's pool sized to the same share,
    its jobs' training progress sent to the grid's one display through `progress_queue`, and
    stopped when the grid's process dies."""
    global progress_hook
    if progress_queue is not None:
        progress_hook = lambda label, seen: progress_queue.put((label, seen))  # noqa: E731
        # progress not yet sent when the worker exits is dropped, not waited for: with the grid
        # gone nothing reads the pipe (its siblings hold it open), and the exit would hang
        progress_queue.cancel_join_thread()
    os.environ["N2N_CORES"] = str(threads)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)
    # the grid's SIGTERM, or a terminal's Ctrl-C (it reaches every process of the group; also when
    # the grid was started with SIGINT ignored): unwind like Ctrl-C
    signal.signal(signal.SIGTERM, _stop_worker)
    signal.signal(signal.SIGINT, _stop_worker)
    if grid_pid is not None:
        global _grid_pid
        _grid_pid = grid_pid
        _die_with_the_grid(grid_pid)


_stopping = False  # set in a worker by the grid's SIGTERM: it takes no further job
_grid_pid: int | None = None  # in a pool worker: the grid process that started it


def _stop_worker(signum, frame):
    global _stopping
    _stopping = True
    for name in (signal.SIGTERM, signal.SIGINT):  # one is enough: let the job mark its run KILLED
        signal.signal(name, signal.SIG_IGN)
    raise KeyboardInterrupt


def attempt_from_json(attempt: Attempt, variant: str, config_json: str, eval_id: str | None,
                      axes: tuple = ()):
    """The attempt of one job sent to another process as plain data (a pool worker, a Ray task)."""
    # the configuration travels as JSON: an external method's class is imported again from its
    # recorded file in the worker (a pickled instance of it would not unpickle there)
    if _stopping:  # a job the pool had queued before the grid stopped
        raise KeyboardInterrupt
    job = Job(variant, ExperimentConfig.model_validate_json(config_json), eval_id,
              tuple((str(key), str(value)) for key, value in axes))
    try:
        return attempt(job)
    finally:
        if _grid_pid is not None and os.getppid() != _grid_pid:
            # the grid died (SIGKILL): its job has unwound (run KILLED, checkpoint kept); nothing
            # will read a result or send another job, and the pool's pipes would keep this worker
            # waiting forever
            os._exit(143)


def _stop_workers(pool) -> None:
    """SIGTERM every live worker of `pool`: each running job marks its run KILLED and keeps its
    checkpoint, as a job stopped by Ctrl-C does. The pool has no public way to stop a call that is
    running (cancel only reaches queued ones), hence its private process table."""
    for process in list(getattr(pool, "_processes", {}).values()):
        if process.is_alive():
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:  # it ended meanwhile
                pass


def run_parallel(jobs: Iterable[Job], attempt: Attempt, workers: int = 2,
                 cores: int = 2) -> Iterator[tuple[Job, tuple[str, str]]]:
    """`workers` jobs at once, each in its own process with cores ÷ workers threads (fewer workers,
    each with more threads, when fewer jobs are left to run); outcomes in the order jobs finish.
    Finished jobs are reported without a slot.

    A standard-library process pool (spawn: no inherited torch thread state); every process writes
    to the one tracking store through its own client.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from queue import Empty

    attempt = dataclasses.replace(attempt, progress=False)  # one display: the grid's own bar
    todo = []
    for job in jobs:
        if attempt.finished(job):
            yield job, ("skipped", "")
        else:
            todo.append(job)
    if not todo:
        return
    context = multiprocessing.get_context("spawn")
    shown = progress_hook  # the display of this process (the grid's bar), fed from the workers
    queue = context.Queue() if shown is not None else None

    def relay() -> None:
        while queue is not None:
            try:
                shown(*queue.get_nowait())
            except Empty:
                return

    workers = min(workers, len(todo))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                             initializer=_init_worker, initargs=(max(1, cores // workers), queue, os.getpid())) as pool:
        pending = {pool.submit(attempt_from_json, attempt, job.variant, job.config.model_dump_json(),
                               job.eval_id, job.axes): job for job in todo}
        try:
            while pending:
                done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                relay()
                for future in done:
                    job = pending.pop(future)
                    try:
                        outcome = future.result()
                    except Exception as err:  # the worker process died (killed, out of memory)
                        outcome = ("failed", f"{type(err).__name__}: {err}")
                    yield job, outcome
        except BaseException:  # Ctrl-C or SIGTERM of the grid: stop the running jobs too
            for future in pending:
                future.cancel()
            _stop_workers(pool)
            pool.shutdown(wait=True, cancel_futures=True)
            raise


run_local.runs_here = True  # its jobs use this machine's device (the grid checks it, measures its rate)
run_parallel.runs_here = True

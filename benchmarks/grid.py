"""`n2n-bench grid`: expand the method variants for a noise style, run each job, log to MLflow.

One parent MLflow run per grid, one nested child run per job. A job whose resolved configuration
hash already has a FINISHED run is skipped; an interrupted one resumes from its checkpoint in
`runs/<hash>`; a failing one is marked FAILED and the grid goes on.

Two grids at once never train a job twice: a job trains only while its process holds the run
folder's lock (n2n_core/train/checkpoint.py run_folder_lock), and one whose folder is locked, or
whose RUNNING run belongs to a live process, is reported as running elsewhere. Every run records
the host and pid that own it, so a run a SIGKILL left RUNNING is marked KILLED by the next grid.

Executors: `local` runs the jobs one after another in this process; `ray` (benchmarks/ray_executor.py)
runs each job as a Ray task on a cluster. Both run every job through `attempt_job`, so skipping,
resuming and failure marking are the same code.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from tqdm import tqdm

from n2n_core.config import ExperimentConfig, check_training_memory, load_toml
from n2n_core.data.images import default_data_dir
from n2n_core.data.sets import resolve_set
from n2n_core.device import resolve_device
from n2n_core.errors import N2NError, NoiseNotSupported
from n2n_core.methods import METHODS
from n2n_core.noise import parse_style
from n2n_core.train.checkpoint import RunFolderBusy, checkpoint_progress, run_folder_lock

from . import experiment, paths
from .mlflow_tracker import MlflowTracker, default_tracking_uri, open_store

GRID_FILE = experiment.CONFIG_DIR / "grid.toml"


@dataclass
class Job:
    variant: str
    config: ExperimentConfig


@dataclass
class GridOutcome:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)
    busy: dict[str, str] = field(default_factory=dict)  # running in another live process: not run here
    closed: list[str] = field(default_factory=list)  # runs a killed process left RUNNING, now KILLED


def expand(noise: str, profile: str, methods: list[str] | None = None,
           overrides: list[str] = ()) -> tuple[list[Job], dict[str, str]]:
    """Jobs of the grid valid for `noise`, and the variants left out with the reason."""
    variants: dict = load_toml(GRID_FILE)["variants"]
    if methods:
        unknown = [m for m in methods if m not in variants]
        if unknown:
            raise N2NError(f"unknown grid variant(s) {', '.join(unknown)}; expected: {', '.join(variants)}")
        variants = {k: v for k, v in variants.items() if k in methods}
    variable = parse_style(noise).variable
    jobs, left_out = [], {}
    for name, rule in variants.items():
        levels = rule.get("levels")
        if levels and (levels == "variable") != variable:
            left_out[name] = f"paired with {levels}-level styles only"
            continue
        try:
            jobs.append(Job(name, experiment.compose_config(profile, name, noise, overrides)))
        except ValidationError as err:
            refusals = [e.get("ctx", {}).get("error") for e in err.errors()]
            if not all(isinstance(r, NoiseNotSupported) for r in refusals):
                raise  # a bad --set value or profile: an error for the whole grid, not "not applicable"
            left_out[name] = "; ".join(str(r) for r in refusals)
    return jobs, left_out


def default_profile() -> str:
    """quick on a CPU-only machine; reproduction where CUDA is available (README says so)."""
    return "reproduction" if torch.cuda.is_available() else "quick"


def _git_commit() -> str:
    root = paths.clone_root()  # an installed copy is no checkout: never ask git about site-packages
    if root is None:
        return "unknown"
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
    process on this machine is gone, e.g. after a SIGKILL; return a line for each."""
    hashes = {job.config.config_hash(): job.variant for job in jobs}
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


def job_dir(job: Job, runs_root: Path) -> Path:
    cfg = job.config
    return runs_root / f"{job.variant}-{cfg.noise}-{cfg.profile}-{cfg.config_hash()}"


def resume_note(variant: str, out_dir: Path, cfg: ExperimentConfig) -> str | None:
    """'resuming VARIANT from N of M images' when out_dir holds an unfinished checkpoint."""
    progress = checkpoint_progress(out_dir / "checkpoint.pt", identity=cfg.config_hash())
    if progress is None or progress[1]:
        return None
    return f"resuming {variant} from {progress[0]} of {cfg.train.budget_images} images"


def interruption_note(variant: str, out_dir: Path, cfg: ExperimentConfig) -> str:
    """What an interrupted job kept: the images of its last checkpoint, the way to go on."""
    if not METHODS[cfg.method.name][1].trainable:
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
                if METHODS[job.config.method.name][1].trainable:
                    check_training_memory(job.config.train, device)
            return  # one job can run: the others' problems are theirs, reported per job
        except N2NError as err:
            first = first or err
    if first is not None:
        raise first


def data_digest(cfg: ExperimentConfig, data_dir: Path) -> str:
    """sha256 over the (sorted) file hashes or names of every set the job reads."""
    digest = hashlib.sha256()
    for name in sorted({cfg.train.train_set, cfg.train.validation_set, *cfg.eval.sets}):
        image_set = resolve_set(name, data_dir)
        for path, sha in zip(image_set.paths, image_set.sha256):
            digest.update(f"{name}:{path.name}:{sha}".encode())
    return digest.hexdigest()


def job_tags(job: Job, data_dir: Path) -> dict[str, str]:
    cfg = job.config
    try:
        import bm3d

        bm3d_version = getattr(bm3d, "__version__", "unknown")
    except Exception:
        bm3d_version = "missing"
    return {
        "method": cfg.method.name, "variant": job.variant, "noise": cfg.noise,
        "profile": cfg.profile, "config_hash": cfg.config_hash(), "git_commit": _git_commit(),
        "torch_version": torch.__version__, "numpy_version": np.__version__,
        "bm3d_version": bm3d_version, "python_version": platform.python_version(),
        "device": str(resolve_device(cfg.train.device)), "data_sha256": data_digest(cfg, data_dir),
    }


def finished_run(client, experiment_id: str, config_hash: str):
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.config_hash = '{config_hash}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0] if runs else None


def attempt_job(client, experiment_id: str, parent_id: str, job: Job, runs_root: Path,
                data_dir: Path, progress: bool) -> tuple[str, str]:
    """Skip a job whose configuration already has a FINISHED run, else run it (resuming its
    checkpoint); ("skipped" | "ran" | "busy" | "failed", why). Every executor runs jobs through this.

    "busy": another live process is running the job (its run folder is locked, or its RUNNING run
    names a live process); it is not trained a second time here."""
    config_hash = job.config.config_hash()
    try:
        if finished_run(client, experiment_id, config_hash) is not None:
            return "skipped", ""
        holder = running_elsewhere(client, experiment_id, config_hash)
        if holder is not None:
            return "busy", f"its run is RUNNING in {holder}"
        with run_folder_lock(job_dir(job, runs_root)):
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


def run_grid(noise: str, profile: str, methods: list[str] | None = None, overrides: list[str] = (),
             tracking_uri: str | None = None, runs_root: Path | None = None,
             data_dir: Path | None = None, progress: bool = True, executor: str = "local",
             ray_address: str | None = None, ray_cpus: float = 1) -> GridOutcome:
    """Run every job of the grid; never stops at a failing job.

    executor "local": one job after another in this process; "ray": every job as a Ray task on the
    cluster at `ray_address` (None: a local Ray instance), one GPU each where the cluster has GPUs,
    else `ray_cpus` CPUs each.
    """
    data_dir = data_dir or default_data_dir()
    runs_root = runs_root or paths.runs_root()
    if executor not in ("local", "ray"):
        raise N2NError(f"unknown executor {executor!r}; use local or ray")
    if ray_address and executor != "ray":
        raise N2NError("--ray-address is for --executor ray")
    jobs, left_out = expand(noise, profile, methods, overrides)  # bad input: an error, nothing written
    check_jobs(jobs, data_dir, check_device=executor == "local")  # the cluster's nodes have their own
    if executor == "ray":
        from . import ray_executor

        tracking_uri = tracking_uri or default_tracking_uri()
        ray_executor.check(tracking_uri, ray_address)  # Ray installed; a remote cluster needs a server
    client, experiment_id = open_store(tracking_uri)  # before any compute: unreachable → one error
    if executor == "ray":
        started_ray = ray_executor.connect(tracking_uri, ray_address)
    outcome = GridOutcome(not_applicable=left_out)
    outcome.closed = close_orphans(client, experiment_id, jobs, parse_style(noise).style, profile)
    parent = client.create_run(experiment_id, run_name=f"grid {noise} {profile}",
                               tags={"grid": "1", "noise": parse_style(noise).style, "profile": profile,
                                     "git_commit": _git_commit(), **process_tags()})
    parent_id = parent.info.run_id
    started = time.time()
    bar = tqdm(total=len(jobs), desc=f"grid {noise} {profile}", unit="job", disable=not progress, position=0)
    if executor == "ray":
        results = ray_executor.run_on_ray(jobs, client, experiment_id, tracking_uri, parent_id, runs_root,
                                          data_dir, ray_cpus, started_ray)
    else:
        def local():  # one job after another, each run when the loop below asks for it
            for job in jobs:
                bar.set_postfix(job=job.variant, refresh=True)
                yield job, attempt_job(client, experiment_id, parent_id, job, runs_root, data_dir, progress)

        results = local()
    by_variant = {}
    try:
        for job, (status, why) in results:
            by_variant[job.variant] = (status, why)
            bar.update(1)
    except BaseException as err:  # interrupted, or the cluster went away
        client.set_terminated(parent_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    bar.close()
    for job in jobs:  # in grid order, whatever order the executor finished them in
        status, why = by_variant[job.variant]
        if status == "failed":
            outcome.failed[job.variant] = why
        elif status == "busy":
            outcome.busy[job.variant] = why
        else:
            (outcome.ran if status == "ran" else outcome.skipped).append(job.variant)
    try:
        client.log_metric(parent_id, "grid_wall_seconds", time.time() - started)
        client.set_terminated(parent_id, "FAILED" if outcome.failed else "FINISHED")
    except Exception:  # the server went away: the jobs' outcomes are still reported to the user
        print(f"could not close the grid run {parent_id} in MLflow (tracking server unreachable)",
              file=sys.stderr)
    return outcome


def with_result_cache(cfg: ExperimentConfig, runs_root: Path) -> ExperimentConfig:
    """Point a method that can cache its outputs (CBM3D) at runs/<method>-cache unless set.

    The cache is keyed by the noisy input's content and the method's settings, and cache_dir is
    not part of the configuration hash, so this changes how long a rerun takes, never its numbers.
    """
    if "cache_dir" not in type(cfg.method).model_fields or cfg.method.cache_dir is not None:
        return cfg
    method = cfg.method.model_copy(update={"cache_dir": str(runs_root / f"{cfg.method.name}-cache")})
    return cfg.model_copy(update={"method": method})


def run_job(client, experiment_id: str, parent_id: str, job: Job, runs_root: Path,
            data_dir: Path, progress: bool) -> None:
    """Train and score one job inside its own child run; mark the run FAILED on any error."""
    cfg = job.config
    tags = {"mlflow.parentRunId": parent_id, **job_tags(job, data_dir), **process_tags()}
    run = client.create_run(experiment_id, run_name=f"{job.variant} {cfg.noise}", tags=tags)
    tracker = MlflowTracker(client, run.info.run_id)
    out_dir = job_dir(job, runs_root)
    try:
        tracker.log_params(cfg.flat())
        out_dir.mkdir(parents=True, exist_ok=True)
        note = resume_note(job.variant, out_dir, cfg)
        if note:
            tqdm.write(note, file=sys.stderr)  # above the grid's progress bar, not inside it
        started = time.time()
        cfg = with_result_cache(cfg, runs_root)
        result = experiment.train(cfg, out_dir, tracker=tracker, data_dir=data_dir, progress=progress)
        tracker.flush()
        scores = experiment.score_all(result, out_dir, data_dir, progress=progress)
        for name, evaluation in scores.items():
            tracker.log_metrics({f"psnr_{name}": evaluation.psnr_mean,
                                 f"n_evaluations_{name}": evaluation.n_evaluations}, step=result.images_seen)
        tracker.log_metrics({"train_seconds": result.seconds, "job_seconds": time.time() - started,
                             "images_seen": result.images_seen,
                             "skipped_steps_total": result.skipped_steps}, step=result.images_seen)
        tracker.flush()
        for path in sorted(out_dir.glob("*")):
            if path.is_file() and not path.name.endswith((".tmp", ".prev")) and not path.name.startswith("."):
                tracker.log_artifact(path)
        if tracker.broken is not None:  # never a silent loss: the job fails, naming what is missing
            raise tracker.not_logged_error(out_dir)
        client.set_terminated(run.info.run_id, "FINISHED")
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):  # for the command's last line (cli.friendly_errors)
            err.n2n_note = interruption_note(job.variant, out_dir, cfg)
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

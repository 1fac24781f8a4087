"""`n2n-bench grid`: expand the method variants for a noise style and run every job, logging to MLflow.

One parent MLflow run per grid, one nested child run per job (benchmarks/jobs.py: a finished
configuration is skipped, an interrupted one resumes, a failing one is marked FAILED and the grid
goes on). The executor decides where jobs run: `jobs.run_local` one after another in this process,
`ray_executor.run_ray` as Ray tasks on a cluster; both take (jobs, attempt) and yield outcomes.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import sys
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import ValidationError
from tqdm import tqdm

from n2n_core.config import ExperimentConfig, TrainConfig, load_toml
from n2n_core.data.images import default_data_dir
from n2n_core.errors import N2NError, NoiseNotSupported
from n2n_core.methods import external
from n2n_core.noise import parse_style

from . import paths
from .compose import CONFIG_DIR, compose_config, variant_name
from . import jobs as jobs_module
from .jobs import (Attempt, Job, check_jobs, close_orphans, finished_run, git_commit, process_tags, run_local,
                   run_parallel)
from .mlflow_tracker import EXPERIMENT, default_tracking_uri, open_store, store_errors

GRID_FILE = CONFIG_DIR / "grid.toml"
PAPER_FILE = CONFIG_DIR / "paper.toml"  # the released code's experiment list (config_lst)
RELEASED_BUDGET = 2_000_000  # the paper profile's budget, to which the list's budgets are relative
TABLES = ("default", "paper")
Executor = Callable[[list[Job], Attempt], Iterator[tuple[Job, tuple[str, str]]]]


@dataclass
class GridOutcome:
    """The jobs of a grid by what became of them, each named by its label (Job.label: the variant,
    plus its seed and noise draw in a grid with --seeds or --noise-draw)."""

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
        unknown = [m for m in methods if m not in variants and not external.is_spec(m)
                   and external.entry_point_spec(m) is None]  # a name an installed package registers
        if unknown:
            raise N2NError(f"unknown grid variant(s) {', '.join(unknown)}; expected: {', '.join(variants)}, "
                           f"path/to/file.py:ClassName or a name in the entry-point group {external.ENTRY_POINT_GROUP}")
        variants = {m: variants.get(m, {}) for m in methods}
    variable = parse_style(noise).variable
    jobs, left_out = [], {}
    for name, rule in variants.items():
        levels, profiles = rule.get("levels"), rule.get("profiles")
        if levels and (levels == "variable") != variable:
            left_out[name] = f"paired with {levels}-level styles only"
            continue
        if profiles and profile not in profiles and not (methods and name in methods):
            left_out[name] = f"run in the {', '.join(profiles)} profiles only (grid.toml; ask for it with --methods)"
            continue
        try:
            jobs.append(Job(variant_name(name), compose_config(profile, name, noise, overrides)))
        except ValidationError as err:
            refusals = [e.get("ctx", {}).get("error") for e in err.errors()]
            if not all(isinstance(r, NoiseNotSupported) for r in refusals):
                raise  # a bad --set value or profile: an error for the whole grid, not "not applicable"
            left_out[name] = "; ".join(str(r) for r in refusals)
    return jobs, left_out


JOB_MEMORY_BYTES = 3 << 30  # what one local job may need at the quick profile, with room to spare


def auto_jobs(cores: int | None = None, available_bytes: int | None = None) -> int:
    """`--jobs auto`: on a CPU one job per usable core, each with one thread; with CUDA one job.

    On the 2-core development machine, quiet, side by side was as fast as one 2-thread job at a
    time for the U-Net and blind-spot jobs and faster for the small course networks; under load two
    OpenMP threads per job were pathological (benchmarks/perf/README.md, "Jobs side by side").
    Jobs on one GPU would only queue on it. Capped at one job per JOB_MEMORY_BYTES of free memory."""
    if torch.cuda.is_available():
        return 1
    from n2n_core.device import free_memory
    from n2n_core.methods.cbm3d import usable_cores

    cores = cores or usable_cores()
    available = free_memory(torch.device("cpu")) if available_bytes is None else available_bytes
    return max(1, min(cores, available // JOB_MEMORY_BYTES))


def parse_jobs(value: str) -> int:
    """--jobs: a whole number of at least 1, or auto."""
    if value.strip().lower() == "auto":
        return auto_jobs()
    try:
        return int(value)
    except ValueError:
        raise N2NError(f"--jobs takes a whole number or auto, got {value!r}; e.g. --jobs 2") from None


def make_executor(name: str, tracking_uri: str | None = None, ray_address: str | None = None,
                  ray_cpus: float = 1, jobs: int = 1, cores: int | None = None) -> Executor:
    """The executor called `name` with its options; refuses bad combinations before anything is written.

    local with jobs > 1: that many jobs at once, each with cores // jobs threads (cores: the usable
    cores of this machine unless given)."""
    if name == "local":
        if ray_address:
            raise N2NError("--ray-address is for --executor ray")
        if jobs < 1:
            raise N2NError(f"--jobs must be at least 1, got {jobs}")
        if jobs == 1:
            return run_local
        from n2n_core.methods.cbm3d import usable_cores

        cores = cores or usable_cores()
        if jobs > cores:
            raise N2NError(f"--jobs {jobs} is more than the {cores} usable cores; use --jobs {cores} or fewer")
        return functools.partial(run_parallel, workers=jobs, cores=cores)
    if name == "ray":
        from . import ray_executor

        ray_executor.check(tracking_uri or default_tracking_uri(), ray_address)
        return functools.partial(ray_executor.run_ray, address=ray_address, cpus=ray_cpus)
    raise N2NError(f"unknown executor {name!r}; use local or ray")


def expand_paper(profile: str, noise: str | None = None, overrides: list[str] = (),
                 methods: list[str] | None = None) -> list[Job]:
    """The released experiment list (configs/paper.toml) under `profile`, optionally one noise style.

    Each run keeps its released budget relative to the paper's 2,000,000 images: the profile's
    budget_images × (released budget / 2,000,000), e.g. impulse N2N 16,000 images in `quick`.
    """
    profile_file = CONFIG_DIR / "profiles" / f"{profile}.toml"  # compose_config refuses a bad name
    base = load_toml(profile_file)["train"]["budget_images"] if profile_file.exists() else RELEASED_BUDGET
    wanted = parse_style(noise).style if noise else None
    jobs = []
    for run in load_toml(PAPER_FILE)["run"]:
        if (wanted is not None and run["noise"] != wanted) or (methods and run["variant"] not in methods):
            continue
        budget = max(1, run["budget_images"] * base // RELEASED_BUDGET)
        cfg = compose_config(profile, run["variant"], run["noise"], [f"train.budget_images={budget}", *overrides])
        jobs.append(Job(run["variant"], cfg, eval_id=run["eval_id"]))
    if not jobs:
        raise N2NError(f"the paper table has no run for noise {noise!r} and variants {methods}; its styles are "
                       f"{', '.join(sorted({r['noise'] for r in load_toml(PAPER_FILE)['run']}))}")
    return jobs


def plan(jobs: list[Job], tracking_uri: str | None = None) -> list[dict]:
    """What a grid would run, one dict per job, without training or creating a store."""
    finished: set[str] = set()
    uri = tracking_uri or default_tracking_uri()
    exists = not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()
    if exists and jobs:
        client, experiment_id = open_store(uri)
        finished = {job.config.config_hash() for job in jobs
                    if finished_run(client, experiment_id, job.config.config_hash()) is not None}
    return [{"variant": job.variant, "label": job.label, "seed": job.config.seed,
             "noise_draw": job.config.train.noise_draw,
             "noise": job.config.noise, "budget_images": job.config.train.budget_images,
             "channels": getattr(getattr(job.config, "data", None), "channels", 3),
             "eval_id": job.eval_id, "config_hash": job.config.config_hash(),
             "finished": job.config.config_hash() in finished} for job in jobs]


def job_weight(job: Job) -> int:
    """A job's share of the grid's progress: its training images (1 for a training-free job)."""
    from n2n_core.methods import method_class

    trainable = method_class(job.config.method.name, job.config.method_source).trainable
    return job.config.train.budget_images if trainable else 1


def default_profile() -> str:
    """quick on a CPU-only machine; reproduction where CUDA is available (README says so)."""
    return "reproduction" if torch.cuda.is_available() else "quick"


NOISE_DRAWS: tuple[str, ...] = typing.get_args(TrainConfig.model_fields["noise_draw"].annotation)


def parse_seeds(value: str | None) -> list[int] | None:
    """--seeds 0,1,2: distinct whole numbers of at least 0, in the order given; None when not given."""
    if value is None:
        return None
    items = [item.strip() for item in value.split(",")]
    if not all(item.isascii() and item.isdigit() for item in items):
        raise N2NError(f"--seeds takes comma-separated whole numbers of at least 0, got {value!r}; e.g. --seeds 0,1,2")
    seeds = [int(item) for item in items]
    if len(set(seeds)) != len(seeds):
        raise N2NError(f"--seeds {value}: a seed is named twice; name each seed once, e.g. --seeds 0,1,2")
    return seeds


def parse_noise_draws(value: str | None) -> list[str] | None:
    """--noise-draw fresh,fixed: distinct values of train.noise_draw; None when not given."""
    if value is None:
        return None
    draws = [item.strip() for item in value.split(",")]
    unknown = [d for d in draws if d not in NOISE_DRAWS]
    if unknown or len(set(draws)) != len(draws):
        raise N2NError(f"--noise-draw takes distinct values among {', '.join(NOISE_DRAWS)} (comma-separated), "
                       f"got {value!r}; e.g. --noise-draw fresh,fixed")
    return draws


def with_axes(jobs: list[Job], seeds: list[int] | None = None,
              noise_draws: list[str] | None = None) -> tuple[list[Job], dict[str, str]]:
    """Every trainable job once per seed and noise draw given, the value set in its configuration
    (so in its identity) and named in its label; without axes the jobs as they are. Also returns
    the jobs a method refuses (NoiseNotSupported, as expand leaves variants out) with the reason.

    A training-free job (noisy, cbm3d, zs-n2n) stays one job as composed: no training seed or
    training noise reaches it (benchmarks/training.py returns before either is used; zs-n2n's fit
    has its own method.seed), so more copies would repeat one result under new identities. Seed
    first, then noise draw, then the grid's order: an interrupted grid has finished whole seeds."""
    if seeds is None and noise_draws is None:
        return jobs, {}
    from n2n_core.methods import method_class

    out, left_out = [], {}
    for seed, draw in itertools.product(seeds or [None], noise_draws or [None]):
        for job in jobs:
            if not method_class(job.config.method.name, job.config.method_source).trainable:
                if (seed, draw) == ((seeds or [None])[0], (noise_draws or [None])[0]):
                    out.append(job)  # once, where its turn comes first
                continue
            tree = job.config.model_dump(mode="json")  # validated again: a method may refuse a draw
            axes = []
            if seed is not None:
                tree["seed"] = seed
                axes.append(("seed", str(seed)))
            if draw is not None:
                tree["train"]["noise_draw"] = draw
                axes.append(("noise_draw", draw))
            labelled = Job(job.variant, job.config, job.eval_id, tuple(axes))
            try:
                out.append(dataclasses.replace(labelled, config=ExperimentConfig.model_validate(tree)))
            except ValidationError as err:
                refusals = [e.get("ctx", {}).get("error") for e in err.errors()]
                if not all(isinstance(r, NoiseNotSupported) for r in refusals):
                    raise
                left_out[labelled.label] = "; ".join(str(r) for r in refusals)
    return out, left_out


def select_jobs(noise: str | None, profile: str, methods: list[str] | None = None,
                overrides: list[str] = (), table: str = "default", seeds: list[int] | None = None,
                noise_draws: list[str] | None = None) -> tuple[list[Job], dict[str, str]]:
    """The jobs of a grid: the default table's variants for one noise style (grid.toml), or the
    released experiment list (`paper`, configs/paper.toml), optionally narrowed to some variants,
    each trainable one once per seed and noise draw when those are given (with_axes)."""
    if table not in TABLES:
        raise N2NError(f"unknown table {table!r}; expected one of: {', '.join(TABLES)}")
    if table == "default":
        if noise is None:
            raise N2NError("--noise is required (e.g. --noise gaussian25), unless --table paper is given")
        jobs, left_out = expand(noise, profile, methods, overrides)
    else:
        jobs, left_out = expand_paper(profile, noise, overrides, methods), {}
    jobs, refused = with_axes(jobs, seeds, noise_draws)
    return jobs, {**left_out, **refused}


def matmul_rate(jobs: list) -> float | None:
    """Float32 matmul GFLOP/s of this machine on the jobs' device, all cores (benchmarks/flops.py)."""
    from n2n_core.device import resolve_device

    from .flops import MatmulRate

    if not jobs:
        return None
    return MatmulRate(device=resolve_device(jobs[0].config.train.device)).best_of()


def grid_floor(client, experiment_id: str, parent_id: str, rate: float | None) -> dict[str, float]:
    """The parent run's account of the jobs it ran: their seconds summed, their counted FLOPs, and
    the floor (those FLOPs at the matmul rate measured in this run); {} when nothing ran."""
    children = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                  max_results=10000)
    if not children:
        return {}
    metrics = [run.data.metrics for run in children]
    flops = sum(value for m in metrics for key, value in m.items()
                if key == "train_flops" or key.startswith("scoring_flops_"))
    account = {"grid_job_seconds": sum(m.get("job_seconds", 0.0) for m in metrics), "grid_flops": flops}
    if rate:
        account |= {"matmul_gflops": rate, "grid_floor_seconds": flops / (rate * 1e9)}
    return account


def run_grid(noise: str | None, profile: str, methods: list[str] | None = None, overrides: list[str] = (),
             tracking_uri: str | None = None, runs_root: Path | None = None,
             data_dir: Path | None = None, progress: bool = True,
             executor: Executor = run_local, table: str = "default", seeds: list[int] | None = None,
             noise_draws: list[str] | None = None) -> GridOutcome:
    """Run every job of the grid through `executor`; never stops at a failing job.

    seeds, noise_draws: grid axes (`--seeds`, `--noise-draw`), every trainable variant once per value."""
    data_dir = data_dir or default_data_dir()
    runs_root = runs_root or paths.runs_root()
    tracking_uri = tracking_uri or default_tracking_uri()
    jobs, left_out = select_jobs(noise, profile, methods, overrides, table, seeds, noise_draws)  # bad input: nothing written
    # an executor says whether its jobs run on this machine (Ray nodes have their own devices)
    here = getattr(getattr(executor, "func", executor), "runs_here", False)
    check_jobs(jobs, data_dir, check_device=here)  # a grid wrong for every job: refused, nothing written
    client, experiment_id = open_store(tracking_uri)  # before any compute: unreachable → one error
    outcome = GridOutcome(not_applicable=left_out)
    label = parse_style(noise).style if noise else "all"
    name = f"grid {table if table != 'default' else ''} {label} {profile}".replace("  ", " ")
    with store_errors(tracking_uri):  # the grid's first writes: a full disk is one line, not a traceback
        outcome.closed = close_orphans(client, experiment_id, jobs, label, profile)
        parent = client.create_run(experiment_id, run_name=name,
                                   tags={"grid": "1", "noise": label, "profile": profile, "table": table,
                                         "git_commit": git_commit(), **process_tags()})
    parent_id = parent.info.run_id
    attempt = Attempt(tracking_uri, EXPERIMENT, parent_id, Path(runs_root).resolve(),
                      Path(data_dir).resolve(), progress)
    started = time.time()
    rate = matmul_rate(jobs) if here else None  # the floor's yardstick, on the jobs' device
    # the bar counts training images over all jobs, so its rate and ETA weigh a 2M-image job as
    # such; a finished (skipped) job leaves the total instead of advancing it at no cost
    bar = tqdm(total=sum(job_weight(job) for job in jobs), desc=f"grid {label} {profile}", unit="img",
               unit_scale=True, disable=not progress, position=0, dynamic_ncols=True)
    # keyed by job label, not variant: the jobs of one variant at several seeds are separate jobs
    by_label, done = {}, 0
    shown: dict[str, int] = {}  # per running job: its images already on the bar
    running: dict[str, int] = {}  # the jobs training now and their images seen, for the display

    def advance(label: str, images_seen: int) -> None:  # running jobs report as they train
        running[label] = images_seen
        if images_seen > shown.get(label, 0):
            bar.update(images_seen - shown.get(label, 0))
            shown[label] = images_seen
        show_running()

    def show_running() -> None:
        now = ", ".join(f"{v} {n:,}" for v, n in running.items())
        bar.set_postfix_str(f"{done}/{len(jobs)} jobs" + (f"; training {now}" if now else ""))

    jobs_module.progress_hook = advance
    try:
        for job, (status, why) in executor(jobs, attempt):
            by_label[job.label] = (status, why)
            done += 1
            running.pop(job.label, None)
            seen = min(shown.pop(job.label, 0), job_weight(job))
            if status == "skipped":
                bar.total -= job_weight(job)
            else:
                bar.update(job_weight(job) - seen)
            show_running()
    except BaseException as err:  # interrupted, or the cluster went away
        client.set_terminated(parent_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        jobs_module.progress_hook = None
    bar.close()
    for job in jobs:  # in grid order, whatever order the executor finished them in
        status, why = by_label[job.label]
        if status == "failed":
            outcome.failed[job.label] = why
        elif status == "busy":
            outcome.busy[job.label] = why
        else:
            (outcome.ran if status == "ran" else outcome.skipped).append(job.label)
    try:
        client.log_metric(parent_id, "grid_wall_seconds", time.time() - started)
        for key, value in grid_floor(client, experiment_id, parent_id, rate).items():
            client.log_metric(parent_id, key, value)
        client.set_terminated(parent_id, "FAILED" if outcome.failed else "FINISHED")
    except Exception:  # the server went away: the jobs' outcomes are still reported to the user
        print(f"could not close the grid run {parent_id} in MLflow (tracking server unreachable)",
              file=sys.stderr)
    return outcome

"""The `n2n-bench` command line: parses options, calls the library, prints results.

Every user-fixable problem (an N2NError or a configuration validation error) is printed as one
line on stderr with exit code 2, never as a traceback. Ctrl-C and SIGTERM (what Slurm, `timeout`,
Ray and `docker stop` send) stop a command the same way: the last checkpoint is kept, MLflow runs
are marked KILLED, the last line says how far training got and how to resume, and the exit code
is 130 (SIGINT) or 143 (SIGTERM), as a shell reports a process killed by that signal.

Why one long module: it declares all eight commands (options, help texts, examples), the whole
user-visible surface in one place; the work itself is in the modules the commands call.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from n2n_core.errors import N2NError

HELP_WIDTH = 150  # help is laid out at least this wide, so no default or example is cut at 80 columns


def _wide_help() -> None:
    """Rich (typer's help renderer) lays help out at the terminal's width, 80 when it cannot tell
    (a pipe, CI): at least HELP_WIDTH columns instead, or $TERMINAL_WIDTH when set."""
    import os
    import shutil

    import typer.rich_utils

    if not os.environ.get("TERMINAL_WIDTH"):
        typer.rich_utils.MAX_WIDTH = max(shutil.get_terminal_size((HELP_WIDTH, 24)).columns, HELP_WIDTH)


_wide_help()
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"max_content_width": HELP_WIDTH},
                  epilog="Start with: n2n-bench list methods; n2n-bench train --help; docs/methods.md for the methods.")


def _examples(*lines: str) -> str:
    """A command's epilog: its examples, one per paragraph (rich keeps paragraphs apart)."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            version = metadata.version("n2n-bench")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed: pip install -e .)"
        typer.echo(f"n2n-bench {version}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """n2n-bench: train and score image denoisers that learn without clean data, the same way."""


def _valid_keys(loc: tuple) -> list[str]:
    """The keys a configuration section accepts, for the 'unknown key' message."""
    from pydantic import BaseModel

    from n2n_core.config import ExperimentConfig

    # (the method section names its own keys: n2n_core.config._method_section)
    section = loc[0] if len(loc) > 1 else None
    field = ExperimentConfig.model_fields.get(section) if section else None
    if field is not None and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
        models = [field.annotation]
    else:
        models = [ExperimentConfig]
    return sorted({key for model in models for key in model.model_fields})


def _one_line_validation(err: ValidationError) -> str:
    import difflib

    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden" and e["loc"]:  # a misspelt --set key: name the right ones
            valid = _valid_keys(tuple(e["loc"]))
            close = difflib.get_close_matches(str(e["loc"][-1]), valid, n=1, cutoff=0.5)
            message = "unknown key" + (f"; did you mean {close[0]!r}?" if close else "") + \
                f" (valid keys here: {', '.join(valid)})"
        parts.append(f"{where}: {message}" if where else message)
    return "invalid configuration: " + "; ".join(parts)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it unwinds exactly as Ctrl-C does."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the clean-up finish
    raise Terminated()


def _close_progress_bars() -> None:
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar half torn down by the interruption: nothing left to draw
            pass


def friendly_errors(fn):
    """Turn user-fixable errors into one line on stderr and exit code 2; an interruption into its
    note (set by the code that was interrupted) and exit code 130 / 143."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except N2NError as err:
            typer.echo(f"error: {err}", err=True)
        except ValidationError as err:
            typer.echo(f"error: {_one_line_validation(err)}", err=True)
        except KeyboardInterrupt as err:
            _close_progress_bars()  # now, not at exit, where clearing them could overwrite the note
            typer.echo("\n" + getattr(err, "n2n_note", "interrupted; rerun the same command"), err=True)
            raise typer.Exit(128 + (signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT)) from None
        raise typer.Exit(2)

    return wrapper


def json_line(value) -> str:
    """One line of strictly valid JSON: a non-finite number (an infinite PSNR) becomes null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False)


def writable_folder(path: Path, option: str) -> Path:
    """Refuse, before any work starts, a folder option that cannot become a folder this process may
    write: one that is a file or lies under one, or whose nearest existing parent is read-only."""
    from n2n_core.errors import StorageError

    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise StorageError(f"{option} {path}: {probe} is a file, not a folder; pass a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StorageError(f"{option} {path}: {probe} is not writable (read-only or no permission); "
                           "pass a folder you can write")
    return Path(path)


def _dataset_name(value: Optional[str]) -> Optional[str]:
    """A plain folder path where a data set name is expected means `folder:PATH`."""
    if value is None or ":" in value:
        return value
    from n2n_core.data.sets import REGISTERED

    if value not in REGISTERED and value != "small32" and Path(value).expanduser().is_dir():
        return f"folder:{value}"
    return value


def _data_dir(value: Optional[Path]) -> Path:
    from n2n_core.data.images import default_data_dir

    return value if value is not None else default_data_dir()


@app.command(epilog=_examples(
    "n2n-bench evaluate --method noisy --noise gaussian25 --dataset kodak24",
    "n2n-bench evaluate --method cbm3d --noise poisson30 --dataset bsd300 --max-images 5 --save-outputs out/",
    "n2n-bench evaluate --checkpoint runs/n2c-gaussian25-quick-<hash>/checkpoint.pt --center-crop 0"))
@friendly_errors
def evaluate(
    noise: Optional[str] = typer.Option(None, help="noise style, e.g. gaussian25 (default: the checkpoint's)"),
    dataset: Optional[str] = typer.Option(None, help="kodak24, bsd300, bsd300-train, set14, small32, folder:PATH "
                                          "(or a plain folder), course32:DIR (default: the checkpoint's first "
                                          "evaluation set, else kodak24)"),
    method: str = typer.Option("noisy", help="a training-free method (noisy, cbm3d, or path/to/file.py:ClassName)"),
    checkpoint: Optional[Path] = typer.Option(None, help="score a trained checkpoint instead, with its run's "
                                              "evaluation settings unless the options below say otherwise"),
    repeats: Optional[int] = typer.Option(None, min=1, help="evaluations per image (default: the run's, else 1)"),
    seed: Optional[int] = typer.Option(None, help="evaluation seed: same seed, same noisy inputs (default: the run's, 0)"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    center_crop: Optional[int] = typer.Option(None, min=0, help="score central crops of this side; 0: whole "
                                              "images (default: the run's)"),
    max_images: Optional[int] = typer.Option(None, min=0, help="score only the first N images; 0: all "
                                             "(default: the run's)"),
    save_outputs: Optional[Path] = typer.Option(None, help="folder for every noisy input and output (PNG) "
                                                "and the per-image PSNR CSV"),
    data_dir: Optional[Path] = typer.Option(None, help="data directory (default $N2N_DATA)"),
    json_out: bool = typer.Option(False, "--json", help="last stdout line: one JSON object"),
) -> None:
    """Score a method on an evaluation set with the fixed protocol (docs/methods.md §8)."""
    from benchmarks.evaluate import evaluate_command

    summary = evaluate_command(
        noise=noise, dataset=_dataset_name(dataset), method=method, checkpoint=checkpoint,
        repeats=repeats, seed=seed, device=device, data_dir=_data_dir(data_dir),
        progress=sys.stderr.isatty() or not json_out, center_crop=center_crop, max_images=max_images,
        save_outputs=writable_folder(save_outputs, "--save-outputs") if save_outputs is not None else None,
    )
    if summary.get("saved_outputs"):
        typer.echo(f"saved noisy inputs and outputs in {summary['saved_outputs']}, "
                   f"PSNR per image and repeat in {summary['per_image_csv']}", err=True)
    if json_out:
        typer.echo(json_line(summary))
    else:
        crop = f"central {summary['center_crop']}² crops" if summary["center_crop"] else "whole images"
        typer.echo(
            f"{summary['method']} on {summary['dataset']} with {summary['noise']}: "
            f"{summary['psnr_mean']:.2f} dB over {summary['n_evaluations']} evaluations "
            f"({summary['n_images']} images x {summary['repeats']}, {crop}; {summary['convention']} PSNR)"
        )


@app.command(epilog=_examples(
    "n2n-bench train --method n2v --noise gaussian25 --profile smoke",
    "n2n-bench train --method ssdn-known --noise poisson30 --set train.lr=1e-4 --print-config",
    "n2n-bench train --method n2c --noise gaussian25 --config run.toml --tracking-uri http://mlflow:5000"))
@friendly_errors
def train(
    method: str = typer.Option(..., help="method variant (n2c, n2v, ssdn-known, ...), method name, or your own "
                               "method: path/to/file.py:ClassName or package.module:ClassName (README 'Adding a method')"),
    noise: str = typer.Option(..., help="noise style, e.g. gaussian25"),
    profile: str = typer.Option("quick", help="smoke, quick, reproduction or paper"),
    overrides: list[str] = typer.Option([], "--set", help="section.key=value, e.g. train.lr=1e-4"),
    seed: Optional[int] = typer.Option(None, help="training seed (default: the profile's, 0)"),
    out: Optional[Path] = typer.Option(None, help="run folder (default runs/<variant>-<noise>-<profile>-<hash> of the project)"),
    data_dir: Optional[Path] = typer.Option(None, help="data directory (default $N2N_DATA)"),
    json_out: bool = typer.Option(False, "--json", help="last stdout line: one JSON object"),
    nproc: int = typer.Option(1, min=1, help="data-parallel processes (torchrun; one per GPU on CUDA)"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow URI (default $MLFLOW_TRACKING_URI, else mlflow.db of the home "
                                               "folder: $N2N_HOME, the project, or the per-user data folder; README 'Where files go')"),
    track: bool = typer.Option(True, envvar="N2N_TRACK", help="log the run to MLflow and score it, as a grid job "
                               "(--no-track: train only, nothing logged)"),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with train, eval, data and method sections: "
                                          "keys (the keys --set takes); --set wins over it"),
    print_config: bool = typer.Option(False, "--print-config", help="print the resolved configuration and its "
                                      "hash, and run nothing"),
) -> None:
    """Train a method; rerunning the same command resumes an unfinished run or returns the finished one.

    With --nproc N (or when started by `torchrun --nproc_per_node N -m benchmarks.cli train`), each
    global minibatch is split across N processes and their gradients averaged (DDP).
    """
    from benchmarks import paths
    from benchmarks.compose import compose_config, run_dir, variant_name
    from benchmarks.jobs import interruption_note, resume_note
    from benchmarks.training import train as train_run
    from n2n_core.config import check_training_memory
    from n2n_core.device import resolve_device
    from n2n_core.train import distributed
    from n2n_core.train.checkpoint import run_folder_lock

    overrides = [*_file_overrides(config), *overrides]
    cfg = compose_config(profile, method, noise, overrides, seed=seed)
    out_dir = writable_folder(out if out is not None else run_dir(variant_name(method), cfg, paths.runs_root()),
                              "--out")
    if print_config:
        _print_configs([(variant_name(method), cfg, out_dir)])
        return
    check_training_memory(cfg.train, resolve_device(cfg.train.device))
    if nproc > 1 and distributed.env_world_size() == 1:
        distributed.check_divisible(cfg.train.batch_size, cfg.train.budget_images, nproc)
        argv = ["--method", method, "--noise", noise, "--profile", profile, "--out", str(out_dir),
                *[a for o in overrides for a in ("--set", o)], *(["--seed", str(seed)] if seed is not None else []),
                *(["--data-dir", str(data_dir)] if data_dir is not None else []), *(["--json"] if json_out else []),
                *(["--tracking-uri", tracking_uri] if tracking_uri else []), *([] if track else ["--no-track"])]
        raise typer.Exit(distributed.launch(nproc, ["-m", "benchmarks.cli", "train", *argv]))
    show = sys.stderr.isatty() or not json_out
    run_id = None
    main_rank = distributed.env_rank() == 0
    # one process per run folder (the torchrun ranks of one run share rank 0's)
    lock = run_folder_lock(out_dir) if main_rank else _no_lock()
    try:
        with lock:
            if track and main_rank:  # rank 0 logs for the whole torchrun job (run_job says "resuming …")
                from benchmarks.jobs import train_and_log

                result, run_id, _ = train_and_log(cfg, variant_name(method), out_dir, tracking_uri,
                                                  paths.runs_root(), _data_dir(data_dir), show)
            else:
                note = resume_note(method, out_dir, cfg) if main_rank else None
                if note:
                    typer.echo(note, err=True)
                result = train_run(cfg, out_dir, data_dir=_data_dir(data_dir), progress=show)
    except KeyboardInterrupt as err:
        err.n2n_note = interruption_note(method, out_dir, cfg)
        raise
    finally:
        distributed.shutdown()
    if not main_rank:
        return  # rank 0 reports for the job
    summary = {
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "images_seen": result.images_seen, "skipped_steps": result.skipped_steps,
        "train_seconds": round(result.seconds, 3), "method": cfg.method.name, "noise": cfg.noise,
        "profile": profile, "config_hash": cfg.config_hash(), "mlflow_run_id": run_id,
    }
    if run_id is not None and not json_out:
        _print_store(tracking_uri, f"MLflow run {run_id}")
    typer.echo(json_line(summary) if json_out else
               f"trained {cfg.method.name} on {cfg.noise}: {result.images_seen} images -> {result.checkpoint}")


def _no_lock():
    import contextlib

    return contextlib.nullcontext()


def _file_overrides(config: Optional[Path]) -> list[str]:
    from benchmarks.compose import file_overrides

    return file_overrides(config) if config is not None else []


def _print_configs(items) -> None:
    """--print-config: each resolved configuration as JSON with its hash (and its run folder)."""
    for variant, cfg, folder in items:
        typer.echo(f"# {variant} · {cfg.noise} · {cfg.profile}  config_hash {cfg.config_hash()}"
                   + (f"  run folder {folder}" if folder is not None else ""))
        typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))


def _print_store(tracking_uri: Optional[str], what: str) -> None:
    """Where the runs went and the exact command that opens them in the browser."""
    from benchmarks.mlflow_tracker import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):  # a server: its UI is at the same address
        typer.echo(f"{what} in the MLflow server {uri}; open {uri} in a browser", err=True)
        return
    if uri.startswith("sqlite:///"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    typer.echo(f"{what} in the MLflow store {uri}; open it with: mlflow ui --backend-store-uri {uri}", err=True)


@app.command(epilog=_examples(
    "n2n-bench grid --noise gaussian25 --profile smoke --methods noisy,n2c,ssdn-known",
    "n2n-bench grid --table paper --profile reproduction --dry-run",
    "n2n-bench grid --noise poisson30 --config run.toml --jobs 2 --tracking-uri http://mlflow:5000",
    "n2n-bench grid --noise gaussian25 --methods n2c,n2n,n2v --seeds 0,1,2 --noise-draw fresh,fixed"))
@friendly_errors
def grid(
    noise: Optional[str] = typer.Option(None, help="noise style, e.g. gaussian25 (with --table paper: all when omitted)"),
    profile: Optional[str] = typer.Option(None, help="smoke, quick, reproduction, paper (default: quick on CPU)"),
    methods: Optional[str] = typer.Option(None, help="comma-separated subset of the grid's variants, path/to/m.py:Class "
                                          "or an installed plugin's name (n2n-bench list methods)"),
    table: str = typer.Option("default", help="default (grid.toml's variants) or paper (the released experiment list)"),
    overrides: list[str] = typer.Option([], "--set", help="section.key=value for every job"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="train every variant once per training seed, e.g. 0,1,2 "
                                        "(the report shows mean ± std over seeds; training-free methods run once)"),
    noise_draw: Optional[str] = typer.Option(None, "--noise-draw", help="train every variant once per train.noise_draw "
                                             "value, e.g. fresh,fixed (default: the configuration's, fresh)"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow URI (default $MLFLOW_TRACKING_URI, else mlflow.db of the project)"),
    data_dir: Optional[Path] = typer.Option(None, help="data directory (default $N2N_DATA)"),
    report: bool = typer.Option(True, help="rebuild results/ from MLflow afterwards"),
    out: Optional[Path] = typer.Option(None, help="report folder (default results/ of the project)"),
    runs_dir: Optional[Path] = typer.Option(None, help="checkpoints and per-job files (default runs/ of the project)"),
    executor: str = typer.Option("local", help="local (jobs on this machine) or ray (a task per job)"),
    jobs: str = typer.Option("auto", help="local: jobs at once, each with cores/jobs threads; auto: one "
                             "1-thread job per core on a CPU (fastest measured), 1 with CUDA"),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster to join, e.g. HEAD:6379 (default: a local Ray)"),
    ray_cpus: float = typer.Option(1, min=0.01, help="CPUs per Ray task where the cluster has no GPU (else 1 GPU)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print one line per job (and whether it is finished); train nothing"),
    json_out: bool = typer.Option(False, "--json", help="with --dry-run: one JSON object per line"),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with train, eval, data and method sections: "
                                          "keys for every job (the keys --set takes); --set wins over it"),
    print_config: bool = typer.Option(False, "--print-config", help="print every job's resolved configuration "
                                      "and hash, and run nothing"),
) -> None:
    """Train and score every method variant valid for a noise style; log every run to MLflow."""
    from benchmarks import paths
    from benchmarks.grid import (default_profile, make_executor, parse_jobs, parse_noise_draws, parse_seeds, plan,
                                 run_grid, select_jobs)

    profile = profile or default_profile()
    out = writable_folder(out or paths.results_dir(), "--out")
    runs_dir = writable_folder(runs_dir or paths.runs_root(), "--runs-dir")
    chosen = [m.strip() for m in methods.split(",")] if methods else None
    overrides = [*_file_overrides(config), *overrides]
    axes = {"seeds": parse_seeds(seeds), "noise_draws": parse_noise_draws(noise_draw)}
    if print_config:
        _print_configs([(job.label, job.config, None)
                        for job in select_jobs(noise, profile, chosen, overrides, table, **axes)[0]])
        return
    if dry_run:
        jobs, left_out = select_jobs(noise, profile, chosen, overrides, table, **axes)
        for line in plan(jobs, tracking_uri):
            typer.echo(json.dumps(line) if json_out else
                       f"{line['label']:<26} {line['noise']:<13} {line['budget_images']:>10,} images  "
                       f"{line['channels']} ch  {'finished' if line['finished'] else 'to run'}")
        for name, why in left_out.items():
            typer.echo(f"not applicable: {name} ({why})", err=True)
        return
    run_on = make_executor(executor, tracking_uri, ray_address, ray_cpus, parse_jobs(jobs))  # checked before any write
    outcome = run_grid(noise, profile, chosen, overrides, tracking_uri, runs_root=runs_dir,
                       data_dir=_data_dir(data_dir), executor=run_on, table=table, **axes)
    for name, why in outcome.not_applicable.items():
        typer.echo(f"not applicable: {name} ({why})", err=True)
    typer.echo(f"grid {noise or table} {profile}: {len(outcome.ran)} ran, {len(outcome.skipped)} already finished, "
               f"{len(outcome.busy)} running elsewhere, {len(outcome.failed)} failed", err=True)
    for name, why in outcome.busy.items():
        typer.echo(f"running elsewhere, not run here: {name} ({why}); rerun once it is done to report it", err=True)
    for name, why in outcome.failed.items():  # before the report, which may fail on its own
        typer.echo(f"FAILED {name}: {why}", err=True)
    if report:
        from benchmarks.mlflow_tracker import NoFinishedRuns
        from benchmarks.report import build_report

        try:
            written = build_report(tracking_uri, out)
            _grid_summary(written, noise, profile, table, out)
        except NoFinishedRuns:
            typer.echo("report: no finished runs to report yet", err=True)
    _print_store(tracking_uri, "every run is")
    if outcome.failed:
        raise typer.Exit(1)


def _grid_summary(written: list[Path], noise: Optional[str], profile: str, table: str, out: Path) -> None:
    """The grid's table on stdout, then every file the report wrote."""
    from n2n_core.noise import canonical_style

    wanted = (f"table1-{profile}.md" if table == "paper" else
              f"psnr-{canonical_style(noise)}-{profile}.md" if noise else None)
    for path in written:
        if wanted and Path(path).name == wanted:
            typer.echo(Path(path).read_text())
    typer.echo(f"report: {len(written)} files in {Path(out).resolve()}:", err=True)
    for path in written:
        typer.echo(f"  {Path(path).resolve()}", err=True)


@app.command("list", epilog=_examples("n2n-bench list methods", "n2n-bench list noise",
                                      "n2n-bench list datasets --data-dir /data"))
@friendly_errors
def list_(
    kind: str = typer.Argument(..., help="methods, noise, datasets or profiles"),
    data_dir: Optional[Path] = typer.Option(None, help="data directory for `datasets` (default $N2N_DATA)"),
) -> None:
    """What can be named on the command line: method variants, noise styles, data sets, profiles."""
    from benchmarks.listing import KINDS, listing

    if kind not in KINDS:
        raise N2NError(f"unknown list {kind!r}; expected one of: {', '.join(KINDS)}")
    for line in listing(kind, _data_dir(data_dir)):
        typer.echo(line)


@app.command(epilog=_examples(
    "n2n-bench sweep --method course-prelu --noise gaussian25 --profile smoke --axis train.batch_size=4,16 --axis train.lr=1e-4,1e-3",
    "n2n-bench sweep --method course-bn-dropout --noise gaussian25 --axis train.batch_size=32,64,128 --axis method.loss=l1,l2"))
@friendly_errors
def sweep(
    method: str = typer.Option(..., help="method variant, e.g. course-bn-dropout, or path/to/file.py:ClassName"),
    noise: str = typer.Option(..., help="noise style, e.g. gaussian25"),
    axes: list[str] = typer.Option(..., "--axis", help="section.key=v1,v2,... (repeat: the cells are the product)"),
    profile: str = typer.Option("quick", help="smoke, quick, reproduction or paper"),
    overrides: list[str] = typer.Option([], "--set", help="section.key=value for every cell (an axis wins)"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow URI (default $MLFLOW_TRACKING_URI, else mlflow.db of the project)"),
    data_dir: Optional[Path] = typer.Option(None, help="data directory (default $N2N_DATA)"),
    out: Optional[Path] = typer.Option(None, help="folder for the table and the figure (default results/ of the project)"),
    runs_dir: Optional[Path] = typer.Option(None, help="checkpoints and per-cell files (default runs/ of the project)"),
) -> None:
    """Train one variant on every cell of the product of the axes; every cell is a run.

    Rows are the first axis's values, columns the second's, one block per value of the others.
    Report B's grid: --method course-bn-dropout --axis train.batch_size=32,64,128
    --axis train.lr=1e-4,1e-3,2e-3 --axis method.loss=l1,l2
    """
    from benchmarks import paths
    from benchmarks.sweep import best_cell, parse_axis, run_sweep

    out = writable_folder(out or paths.results_dir(), "--out")
    runs_dir = writable_folder(runs_dir or paths.runs_root(), "--runs-dir")
    outcome = run_sweep(method, noise, profile, [parse_axis(a) for a in axes], overrides, tracking_uri,
                        runs_root=runs_dir, data_dir=_data_dir(data_dir), out=out, progress=sys.stderr.isatty())
    for path in outcome.written:
        typer.echo(f"wrote {path}", err=True)
    if outcome.note:
        typer.echo(outcome.note, err=True)
    if not outcome.table.empty:
        best = best_cell(outcome.table, outcome.keys)
        typer.echo(f"sweep {method}: {len(outcome.table)} cells" + (f"; best {best}" if best else ""))
    for name, why in outcome.failed.items():
        typer.echo(f"FAILED {name}: {why}", err=True)
    if outcome.failed:
        raise typer.Exit(1)


@app.command(epilog=_examples("n2n-bench report", "n2n-bench report --tracking-uri http://mlflow:5000 --out results-gpu"))
@friendly_errors
def report(
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow URI (default $MLFLOW_TRACKING_URI, else mlflow.db of the project)"),
    out: Optional[Path] = typer.Option(None, help="report folder (default results/ of the project)"),
) -> None:
    """Rebuild tables and figures under results/ from MLflow alone (no training)."""
    from benchmarks import paths
    from benchmarks.report import build_report

    out = writable_folder(out or paths.results_dir(), "--out")
    written = build_report(tracking_uri, out)
    typer.echo(f"report: {len(written)} files in {out}")


@app.command(epilog=_examples(
    "n2n-bench denoise --run 3b2d97cc171042dd8cebd11d25dfc629 photo.png --out denoised/",
    "n2n-bench denoise --checkpoint runs/ssdn-per-image-gaussian5_50-quick-<hash>/checkpoint.pt scans/ --out out/",
    "n2n-bench denoise --method cbm3d --noise gaussian25 --level 25 noisy.png --out DIR"))
@friendly_errors
def denoise(
    inputs: list[Path] = typer.Argument(..., help="noisy image files (PNG, JPEG, 16-bit PNG, TIFF) or folders of them"),
    out: Path = typer.Option(..., help="folder for the outputs (same file names; JPEG and others written as PNG)"),
    checkpoint: Optional[Path] = typer.Option(None, help="a trained run's checkpoint.pt"),
    run: Optional[str] = typer.Option(None, "--run", help="an MLflow run id (its checkpoint is found in its run folder or artefacts)"),
    method: Optional[str] = typer.Option(None, help="a training-free method instead (cbm3d, noisy); needs --noise, or --level "
                                         "alone for Gaussian noise"),
    noise: Optional[str] = typer.Option(None, help="noise style (default: the run's), e.g. gaussian25"),
    level: Optional[float] = typer.Option(None, help="noise level in the style's units: Gaussian std 0-255, Poisson λ, impulse % "
                                          "(default: estimated where the method estimates it, else the style's fixed level); "
                                          "with --method and no --noise, a Gaussian std (--level 25: gaussian25)"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow URI for --run (default $MLFLOW_TRACKING_URI, else mlflow.db of the "
                                               "home folder: $N2N_HOME, the project, or the per-user data folder)"),
) -> None:
    """Denoise your own noisy images with a trained run or a training-free method.

    Outputs keep each input's size and bit depth (16-bit in, 16-bit out); blind-spot networks are
    tiled as the evaluator tiles them; the level used (given, estimated or the training level) is
    printed per image (benchmarks/denoise.py).
    """
    from benchmarks.denoise import denoise_command

    written = denoise_command(inputs=inputs, out=out, checkpoint=checkpoint, run=run, method=method,
                              noise=noise, level=level, device=device, tracking_uri=tracking_uri,
                              say=lambda line: typer.echo(line, err=True))
    typer.echo(f"denoised {len(written)} image(s) into {out.resolve()}")


@app.command(epilog=_examples("n2n-bench download kodak24", "n2n-bench download bsd300 --data-dir /data",
                             "n2n-bench download set14 --allow-unverified"))
@friendly_errors
def download(
    name: str = typer.Argument(..., help="kodak24, bsd300, bsd300-train or set14"),
    data_dir: Optional[Path] = typer.Option(None, help="data directory (default $N2N_DATA)"),
    mirror: Optional[str] = typer.Option(None, help="base URL of a mirror (default: canonical)"),
    allow_unverified: bool = typer.Option(False, help="accept files with no known checksum (set14)"),
) -> None:
    """Download a data set into the data directory, verifying every file's sha256."""
    from n2n_core.data.download import download_set
    from n2n_core.errors import DataError

    folder = _data_dir(data_dir)
    try:
        target = download_set(name, folder, mirror=mirror, allow_unverified=allow_unverified)
    except OSError as err:  # the data directory cannot be created or written
        raise DataError(f"could not write into the data directory {folder} ({err.strerror or err}); set "
                        "N2N_DATA (or --data-dir) to a folder you can write") from None
    typer.echo(f"{name}: ready in {target}")


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)  # handled like Ctrl-C (friendly_errors)
    app()


if __name__ == "__main__":
    main()

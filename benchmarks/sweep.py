"""`n2n-bench sweep`: batch size × loss × learning rate for one 32×32 course network (reports B, C).

Every cell is an ordinary run of the course variant (`configs/methods/course-<network>.toml`) with
`train.batch_size`, `method.loss` and `train.lr` overridden: trained under the profile (the budget
is in images, so a larger batch takes fewer steps, as in the reports' fixed-epoch grids), scored on
the variant's evaluation set (small32) and logged to MLflow like a grid job, but in its own
experiment (`n2n-bench-sweep`) so sweep cells never enter the grid's tables. A cell whose
configuration already has a finished run is read back, not retrained. Writes
`<out>/sweep-<network>-<target>-<noise>-<profile>.md|.csv` and a heatmap `.png` beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from n2n_core.data.images import default_data_dir
from n2n_core.errors import ConfigError
from n2n_core.noise import parse_style
from n2n_core.train.checkpoint import atomic_write

from . import experiment
from .grid import Job, attempt_job, finished_run
from .mlflow_tracker import PROJECT_ROOT, open_store

SWEEP_EXPERIMENT = "n2n-bench-sweep"


@dataclass
class SweepOutcome:
    table: pd.DataFrame
    written: list[Path]
    failed: dict[str, str] = field(default_factory=dict)


def variant_for(network: str, target: str = "n2n") -> str:
    """'bn_dropout', 'n2c' → 'course-bn-dropout-n2c' (a file in configs/methods)."""
    name = f"course-{network.replace('_', '-')}" + ("-n2c" if target == "n2c" else "")
    if name not in experiment.available("methods"):
        known = sorted({v.removeprefix("course-").removesuffix("-n2c")
                        for v in experiment.available("methods") if v.startswith("course-")})
        raise ConfigError(f"unknown course network {network!r} (or target {target!r}); expected one of: "
                          f"{', '.join(known)}, target n2n or n2c")
    return name


def sweep_jobs(network: str, noise: str, profile: str, batches: list[int], losses: list[str],
               lrs: list[float], target: str = "n2n", overrides: list[str] = ()) -> list[Job]:
    """One validated job per (batch, loss, lr) cell; any invalid cell fails before compute."""
    variant = variant_for(network, target)
    jobs = []
    for batch in batches:
        for loss in losses:
            for lr in lrs:
                cell = [f"train.batch_size={batch}", f'method.loss="{loss}"', f"train.lr={lr!r}"]
                cfg = experiment.compose_config(profile, variant, noise, [*overrides, *cell])
                jobs.append(Job(f"{variant}-b{batch}-{loss}-lr{lr:g}", cfg))
    return jobs


def run_sweep(network: str, noise: str, profile: str, batches: list[int], losses: list[str],
              lrs: list[float], target: str = "n2n", overrides: list[str] = (),
              tracking_uri: str | None = None, runs_root: Path | None = None,
              data_dir: Path | None = None, out: Path = Path("results"),
              progress: bool = True) -> SweepOutcome:
    """Run (or read back) every cell, then write the table and the heatmap."""
    data_dir = data_dir or default_data_dir()
    runs_root = runs_root or PROJECT_ROOT / "runs"
    jobs = sweep_jobs(network, noise, profile, batches, losses, lrs, target, overrides)  # bad input: nothing written
    client, experiment_id = open_store(tracking_uri, experiment=SWEEP_EXPERIMENT)
    noise = parse_style(noise).style
    parent = client.create_run(experiment_id, run_name=f"sweep {network} {target} {noise} {profile}",
                               tags={"sweep": "1", "network": network, "noise": noise, "profile": profile})
    rows, failed = [], {}
    for job in jobs:
        cfg = job.config
        score = f"psnr_{cfg.eval.sets[0]}"
        # the grid's own skip / resume / mark-FAILED logic; one broken cell does not sink the sweep
        status, why = attempt_job(client, experiment_id, parent.info.run_id, job, runs_root, data_dir, progress)
        if status in ("failed", "busy"):  # busy: another live process runs this cell now
            failed[job.variant] = why
            continue
        run = finished_run(client, experiment_id, cfg.config_hash())
        metrics = run.data.metrics
        rows.append({"batch": cfg.train.batch_size, "loss": cfg.method.loss, "lr": cfg.train.lr,
                     "psnr": metrics.get(score), "train_seconds": metrics.get("train_seconds"),
                     "set": cfg.eval.sets[0], "run_id": run.info.run_id})
    client.set_terminated(parent.info.run_id, "FAILED" if failed else "FINISHED")
    table = pd.DataFrame(rows, columns=["batch", "loss", "lr", "psnr", "train_seconds", "set", "run_id"])
    stem = out / f"sweep-{network}-{target}-{noise}-{profile}"
    written = write_outputs(table, stem, describe(jobs[0].config, network, target)) if rows else []
    return SweepOutcome(table, written, failed)


def describe(cfg, network: str, target: str) -> str:
    return (f"Sweep of the course network '{network}' trained as {target.upper()} on {cfg.noise}, profile "
            f"'{cfg.profile}': {cfg.train.budget_images} images of {cfg.train.patch_size}² crops from "
            f"{cfg.train.train_set} per cell; PSNR (dB, uint8-quantised, METHODS.md §8) on "
            f"{cfg.eval.sets[0]}. Every cell is one run in the MLflow experiment '{SWEEP_EXPERIMENT}'.")


def to_markdown(table: pd.DataFrame, text: str) -> str:
    """One block per loss: rows batch size, columns learning rate."""
    parts = []
    for loss, group in table.groupby("loss", sort=True):
        pivot = group.pivot_table(index="batch", columns="lr", values="psnr")
        head = f"| {loss}: batch \\ lr | " + " | ".join(f"{lr:g}" for lr in pivot.columns) + " |"
        lines = [head, "|---|" + "---|" * len(pivot.columns)]
        for batch, row in pivot.iterrows():
            lines.append(f"| {batch} | " + " | ".join("" if pd.isna(v) else f"{v:.2f}" for v in row) + " |")
        parts.append("\n".join(lines))
    best = table.loc[table.psnr.idxmax()]
    parts.append(f"Best: {best.psnr:.2f} dB at batch {best.batch}, {best.loss}, lr {best.lr:g}.")
    return "\n\n".join(parts) + f"\n\n{text}\n"


def heatmap(table: pd.DataFrame, path: Path, text: str) -> Path:
    """One annotated panel per loss: batch size × learning rate → PSNR."""
    from . import figures

    losses = sorted(table.loss.unique())
    fig, axes = figures.plt.subplots(1, len(losses), figsize=(4.2 * len(losses), 3.4), squeeze=False)
    low, high = table.psnr.min(), table.psnr.max()
    for ax, loss in zip(axes[0], losses):
        pivot = table[table.loss == loss].pivot_table(index="batch", columns="lr", values="psnr")
        figures.sns.heatmap(pivot, annot=True, fmt=".2f", cmap="viridis", vmin=low, vmax=high, ax=ax,
                            cbar=ax is axes[0][-1], cbar_kws={"label": f"PSNR (dB) on {table.set.iloc[0]}"})
        ax.set_title(f"loss {loss}")
        ax.set_xticklabels([f"{lr:g}" for lr in pivot.columns])
        ax.set_xlabel("learning rate")
        ax.set_ylabel("batch size")
    fig.suptitle(text.split(":")[0], fontsize=9)
    fig.tight_layout()
    return figures._save(fig, path)


def write_outputs(table: pd.DataFrame, stem: Path, text: str) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(table, text)
    csv = table.to_csv(index=False, float_format="%.6g")
    paths = [stem.with_suffix(".md"), stem.with_suffix(".csv")]
    atomic_write(paths[0], lambda tmp: tmp.write_text(markdown))
    atomic_write(paths[1], lambda tmp: tmp.write_text(csv))
    return [*paths, heatmap(table, stem.with_suffix(".png"), text)]


def parse_list(text: str, kind, what: str) -> list:
    """'4,16,32' → [4, 16, 32]; a bad item is a ConfigError naming the option."""
    try:
        items = [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--{what} {text!r}: expected comma-separated values, e.g. 4,16,32") from None
    if not items:
        raise ConfigError(f"--{what} is empty")
    return items

"""`n2n-bench sweep`: one method variant over the cartesian product of configuration axes.

An axis is `--axis section.key=v1,v2,...`: a configuration key and its values, each read as
`--set section.key=value` reads it (a TOML literal; a bare word is a string; commas inside
`[...]`, `{...}` or quotes do not split). The cells are the product of the axes, in the order
given; every cell is an ordinary run of the variant with the axis values applied after the
`--set`s, so the variant's own overrides (e.g. the course networks' 32² crops) hold unless an axis
names them. Every cell is validated before the store is opened (one bad cell: nothing written).
The cells are trained under the profile (its budget is in images, so a larger batch takes fewer
steps, as in the course reports' fixed-epoch grids), scored on the variant's first evaluation
set, and logged as child runs of one parent run in the MLflow experiment `n2n-bench-sweep`, apart
from the grid's tables. A cell whose configuration already has a finished run there is read
back, not retrained.

Writes `<out>/sweep-<variant>-<noise>-<profile>-<keys>.md|.csv` and a figure beside them: for
one axis a line chart (numbers) or a bar chart (words), for two a heatmap; with three or more
the table only (one block per combination of the third and later axes), and it says so. The
parent run holds the same files as artefacts. Report B's grid (docs/methods.md §10) is one call:

    n2n-bench sweep --method course-bn-dropout --noise gaussian25 --axis train.batch_size=32,64,128 \\
        --axis train.lr=1e-4,1e-3,2e-3 --axis method.loss=l1,l2     # one block per loss: batch × lr
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from n2n_core.data.images import default_data_dir
from n2n_core.errors import ConfigError, first_line
from n2n_core.train.checkpoint import atomic_write

from . import compose
from .jobs import Job, attempt_job, finished_run
from .mlflow_tracker import open_store
from .paths import runs_root as default_runs_root

SWEEP_EXPERIMENT = "n2n-bench-sweep"
MAX_FIGURE_AXES = 2


@dataclass(frozen=True)
class Axis:
    key: str  # "train.lr"
    items: tuple[str, ...]  # raw values, each applied as the override f"{key}={item}"


@dataclass(frozen=True)
class Cell:
    values: dict[str, object]  # axis key -> the value the validated configuration holds
    job: Job

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={show(value)}" for key, value in self.values.items())


@dataclass
class SweepOutcome:
    table: pd.DataFrame  # one row per finished cell: the axis keys, psnr, train_seconds, set, run_id
    keys: list[str]
    written: list[Path]
    failed: dict[str, str] = field(default_factory=dict)  # cell label -> why
    note: str = ""  # e.g. why no figure was drawn


def split_values(raw: str) -> list[str]:
    """'1e-4, 1e-3' -> ['1e-4', '1e-3']; a comma inside [...], {...} or quotes does not split."""
    items, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(raw):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(raw[start:i])
            start = i + 1
    items.append(raw[start:])
    return [item.strip() for item in items if item.strip()]


def parse_axis(text: str) -> Axis:
    """'train.lr=1e-4,1e-3' -> Axis('train.lr', ('1e-4', '1e-3')); bad syntax is a ConfigError."""
    key, sep, raw = (part.strip() for part in text.partition("="))
    if not sep or "." not in key or not all(key.split(".")):
        raise ConfigError(f"--axis {text!r} must look like section.key=v1,v2,..., e.g. train.lr=1e-4,1e-3")
    items = split_values(raw)
    if not items:
        raise ConfigError(f"--axis {key}: no values; list them after '=', e.g. {key}=1,2")
    return Axis(key, tuple(items))


def show(value: object) -> str:
    """How a cell value is printed: floats in %g, lists and tables as JSON, the rest as str."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def _resolved(cfg, key: str, fallback: object) -> object:
    """The validated configuration's value at `key` ('method.loss' -> cfg.method.loss)."""
    try:
        value = functools.reduce(getattr, key.split("."), cfg)
    except AttributeError:
        return fallback
    return value if isinstance(value, (bool, int, float, str)) or value is None else show(value)


def sweep_cells(method: str, noise: str, profile: str, axes: list[Axis], overrides: list[str] = ()) -> list[Cell]:
    """One validated job per cell of the axes' product; any invalid cell fails before compute."""
    if not axes:
        raise ConfigError("a sweep needs at least one --axis section.key=v1,v2,..., e.g. --axis train.lr=1e-4,1e-3")
    keys = [axis.key for axis in axes]
    if len(set(keys)) < len(keys):
        raise ConfigError(f"--axis names a key twice ({', '.join(keys)}); give each key once with all its values")
    cells, by_hash = [], {}
    variant = compose.variant_name(method)  # an external spec's run folders and tags use its name literal
    for items in itertools.product(*(axis.items for axis in axes)):
        cfg = compose.compose_config(profile, method, noise, [*overrides, *(f"{k}={v}" for k, v in zip(keys, items))])
        cell = Cell({k: _resolved(cfg, k, v) for k, v in zip(keys, items)}, Job(variant, cfg))
        same = by_hash.setdefault(cfg.config_hash(), cell)
        if same is not cell:
            raise ConfigError(f"sweep cells {same.label} and {cell.label} are the same configuration; drop one value")
        cells.append(cell)
    return cells


def run_sweep(method: str, noise: str, profile: str, axes: list[Axis], overrides: list[str] = (),
              tracking_uri: str | None = None, runs_root: Path | None = None,
              data_dir: Path | None = None, out: Path = Path("results"),
              progress: bool = True) -> SweepOutcome:
    """Run (or read back) every cell as a child run, then write the table and the figure."""
    data_dir = data_dir or default_data_dir()
    runs_root = runs_root or default_runs_root()
    cells = sweep_cells(method, noise, profile, axes, overrides)  # bad input: nothing written
    keys = [axis.key for axis in axes]
    first, variant = cells[0].job.config, cells[0].job.variant
    client, experiment_id = open_store(tracking_uri, experiment=SWEEP_EXPERIMENT)
    parent = client.create_run(
        experiment_id, run_name=f"sweep {variant} {first.noise} {profile}: {' × '.join(keys)}",
        tags={"sweep": "1", "variant": variant, "noise": first.noise, "profile": profile,
              "sweep.axes": " × ".join(keys), "sweep.cells": str(len(cells))},
    )
    parent_id = parent.info.run_id
    rows, failed = [], {}
    try:
        for cell in cells:
            cfg = cell.job.config
            # the grid's own skip / resume / mark-FAILED logic; one broken cell does not sink the sweep
            status, why = attempt_job(client, experiment_id, parent_id, cell.job, runs_root, data_dir, progress)
            if status in ("failed", "busy"):  # busy: another live process runs this cell now
                failed[cell.label] = why
                continue
            run = finished_run(client, experiment_id, cfg.config_hash())
            if status == "ran":  # name the child after its cell, so the nested list reads as the sweep
                client.set_tag(run.info.run_id, "mlflow.runName", f"{variant} {cell.label}")
            score = run.data.metrics.get(f"psnr_{cfg.eval.sets[0]}")
            rows.append({**cell.values, "psnr": score, "train_seconds": run.data.metrics.get("train_seconds"),
                         "set": cfg.eval.sets[0], "run_id": run.info.run_id})
        table = pd.DataFrame(rows, columns=[*keys, "psnr", "train_seconds", "set", "run_id"])
        name = re.sub(r"[^A-Za-z0-9._=-]+", "_", f"sweep-{variant}-{first.noise}-{profile}-{'-'.join(keys)}")
        written, note = write_outputs(table, keys, out / name, describe(first, variant, keys)) if rows else ([], "")
        try:
            for path in written:
                client.log_artifact(parent_id, str(path))
        except Exception as err:  # the files are written; a store that stopped answering keeps them out
            note = f"{note} The table is not in MLflow ({first_line(err)}); it is in {out}.".strip()
    except BaseException as err:
        client.set_terminated(parent_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")
    return SweepOutcome(table, keys, written, failed, note)


def describe(cfg, method: str, keys: list[str]) -> str:
    return (f"Sweep of {method} over {' × '.join(keys)} on {cfg.noise}, profile '{cfg.profile}': "
            f"{cfg.train.budget_images} images of {cfg.train.patch_size}² crops from {cfg.train.train_set} "
            f"per cell unless an axis changes them; PSNR (dB, uint8-quantised, docs/methods.md §8) on "
            f"{cfg.eval.sets[0]}. Every cell is one run in the MLflow experiment '{SWEEP_EXPERIMENT}'.")


def best_cell(table: pd.DataFrame, keys: list[str]) -> str:
    """'24.15 dB at train.batch_size=32, method.loss=l2' (empty when no cell has a score)."""
    if not table.psnr.notna().any():
        return ""
    best = table.loc[table.psnr.idxmax()]
    return f"{best.psnr:.2f} dB at " + ", ".join(f"{k}={show(best[k])}" for k in keys)


def _in_order(values) -> list:
    return list(dict.fromkeys(values))


def _grid(table: pd.DataFrame, rows: str, columns: str) -> pd.DataFrame:
    """PSNR with one row per value of `rows` and one column per value of `columns`, in axis order."""
    psnr = {(r, c): p for r, c, p in zip(table[rows], table[columns], table.psnr)}
    row_values, column_values = _in_order(table[rows]), _in_order(table[columns])
    return pd.DataFrame([[psnr.get((r, c), math.nan) for c in column_values] for r in row_values],
                        index=[show(r) for r in row_values], columns=[show(c) for c in column_values])


def _blocks(table: pd.DataFrame, keys: list[str]):
    """(title, sub-table) per combination of the third and later axes; one untitled block otherwise."""
    rest = keys[2:]
    if not rest:
        yield "", table
        return
    for combo in _in_order(zip(*(table[k] for k in rest))):
        mask = functools.reduce(lambda m, kv: m & (table[kv[0]] == kv[1]), zip(rest, combo), True)
        yield ", ".join(f"{k}={show(v)}" for k, v in zip(rest, combo)), table[mask]


def _cell(value: float) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.2f}"


def to_markdown(table: pd.DataFrame, keys: list[str], text: str, note: str = "") -> str:
    """One axis: a two-column table; two or more: rows the first axis, columns the second."""
    parts = []
    if len(keys) == 1:
        lines = [f"| {keys[0]} | PSNR (dB) |", "|---|---|"]
        lines += [f"| {show(v)} | {_cell(p)} |" for v, p in zip(table[keys[0]], table.psnr)]
        parts.append("\n".join(lines))
    else:
        for title, block in _blocks(table, keys):
            grid = _grid(block, keys[0], keys[1])
            head = f"| {title + ': ' if title else ''}{keys[0]} \\ {keys[1]} | " + " | ".join(grid.columns) + " |"
            lines = [head, "|---|" + "---|" * len(grid.columns)]
            lines += [f"| {index} | " + " | ".join(_cell(v) for v in row) + " |" for index, row in grid.iterrows()]
            parts.append("\n".join(lines))
    if best := best_cell(table, keys):
        parts.append(f"Best: {best}.")
    return "\n\n".join([*parts, *([note] if note else []), text]) + "\n"


def figure(table: pd.DataFrame, keys: list[str], path: Path, text: str) -> Path:
    """One axis: PSNR against its values (a line for numbers, bars for words); two: a heatmap."""
    from . import figures

    label = f"PSNR (dB) on {table.set.iloc[0]}"
    if len(keys) == 1:
        fig, ax = figures.plt.subplots(figsize=(5, 3.4))
        values = table[keys[0]].tolist()
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            ax.plot(values, table.psnr, marker="o")
            if min(values) > 0 and max(values) >= 10 * min(values):
                ax.set_xscale("log")
        else:
            ax.bar([show(v) for v in values], table.psnr)
            ax.set_ylim(table.psnr.min() - 1, table.psnr.max() + 0.5)  # bars that differ by a dB show it
        ax.set_xlabel(keys[0])
        ax.set_ylabel(label)
    else:
        grid = _grid(table, keys[0], keys[1])
        fig, ax = figures.plt.subplots(figsize=(1.2 * len(grid.columns) + 3, 0.6 * len(grid) + 2))
        figures.sns.heatmap(grid, annot=True, fmt=".2f", cmap="viridis", ax=ax, cbar_kws={"label": label})
        ax.set_xlabel(keys[1])
        ax.set_ylabel(keys[0])
    fig.suptitle(text.split(":")[0], fontsize=9)
    fig.tight_layout()
    return figures._save(fig, path)


def write_outputs(table: pd.DataFrame, keys: list[str], stem: Path, text: str) -> tuple[list[Path], str]:
    """The table as Markdown and CSV, and the figure where one fits; (paths, note)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    note = "" if len(keys) <= MAX_FIGURE_AXES else (
        f"No figure: {len(keys)} axes (a figure is drawn for one or two); the table above has every cell.")
    markdown, csv = to_markdown(table, keys, text, note), table.to_csv(index=False, float_format="%.6g")
    paths = [stem.parent / f"{stem.name}.md", stem.parent / f"{stem.name}.csv"]  # keys hold dots
    atomic_write(paths[0], lambda tmp: tmp.write_text(markdown))
    atomic_write(paths[1], lambda tmp: tmp.write_text(csv))
    if not note:
        paths.append(figure(table, keys, stem.parent / f"{stem.name}.png", text))
    return paths, note

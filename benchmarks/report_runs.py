"""The report's rows, read from the tracking store: finished child runs grouped per table row.

A row is one variant in one setting (noise, profile, noise draw, noisy training set), holding one
run per training seed of its newest configuration (`finished_run_groups`). Whoever can log to the
tracking server decides the tags read here, and they become file names: a run with a name that is
not plain (`unsafe_names`) is left out with a warning. Captions live in captions.py, the text of
tables in table_text.py, the writing of results/ in report.py.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from n2n_core.config import load_toml
from n2n_core.data.sets import NOISY_PREFIX as NOISY_SET

from .spread import mean_std

GRID_FILE = Path(__file__).resolve().parent / "configs" / "grid.toml"
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
"""What a variant, noise, profile or set name must look like to become part of a file name."""


@dataclass
class JobRun:
    run_id: str
    variant: str
    noise: str
    profile: str
    params: dict
    metrics: dict
    tags: dict
    end_time: int


# What tells the runs of one variant apart (benchmarks/jobs.py job_tags): the tag where the run has
# it, else the logged parameter (runs logged before the tags existed), else the default.
SEED, NOISE_DRAW, TRAIN_SET = ("seed", "seed", "0"), ("noise_draw", "train.noise_draw", "fresh"), \
    ("train_set", "train.train_set", "")




def setting(tags: dict, params: dict, which: tuple[str, str, str]) -> str:
    tag, param, default = which
    return str(tags.get(tag, params.get(param, default)))


def noisy_training_set(tags: dict, params: dict) -> str:
    """'noisy:<set>' for a run trained on an evaluation set's noisy images, else '' (a clean set)."""
    name = setting(tags, params, TRAIN_SET)
    return name if name.startswith(NOISY_SET) else ""


def trains_nothing(run: "JobRun") -> bool:
    """A run of a method that saw no training image (noisy, cbm3d, zs-n2n): no crops, no seed."""
    return run.metrics.get("images_seen", 1) == 0


def run_seed(run: "JobRun") -> int:
    return int(setting(run.tags, run.params, SEED))


def finished_job_runs(client, experiment_id) -> list[JobRun]:
    """Every run of every table row (finished_run_groups), rows one after another."""
    return [run for group in finished_run_groups(client, experiment_id) for run in group.runs]


def finished_run_groups(client, experiment_id) -> list["RunGroup"]:
    """The report's rows: per (variant, noise, profile, noise draw, noisy training set) the FINISHED
    child runs of the newest configuration, the newest one per training seed.

    A row is a variant in one setting: when its configuration changed (a fix, a --set), the newest
    run's configuration is the one shown, and only runs of that configuration but for the seed are
    its other seeds; the older ones stay in MLflow to compare in `mlflow ui`. Noise draw and a
    training set of noisy evaluation images make rows of their own (tables beside the main one);
    a clean training set is part of the configuration, as before."""
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'",
                              max_results=50000, order_by=["attributes.end_time DESC"])
    configuration: dict[tuple, dict] = {}  # per row: its newest run's configuration, seed aside
    members: dict[tuple, dict[int, JobRun]] = {}
    for run in runs:  # newest first
        tags, params = run.data.tags, run.data.params
        if "variant" not in tags:
            continue  # grid parent runs
        bad = unsafe_names(run)
        if bad:
            print(f"warning: run {run.info.run_id} left out of the report: its {bad} is not a plain name "
                  "(letters, digits, '_', '.', '+', '-')", file=sys.stderr)
            continue
        key = (tags["variant"], tags["noise"], tags["profile"], setting(tags, params, NOISE_DRAW),
               noisy_training_set(tags, params))
        without_seed = {k: v for k, v in params.items() if k != SEED[1]}
        if configuration.setdefault(key, without_seed) != without_seed:
            continue  # an older configuration of this row
        job_run = JobRun(run.info.run_id, tags["variant"], tags["noise"], tags["profile"], dict(params),
                         dict(run.data.metrics), dict(tags), run.info.end_time or 0)
        members.setdefault(key, {}).setdefault(run_seed(job_run), job_run)
    return [RunGroup([runs[seed] for seed in sorted(runs)]) for runs in members.values()]


@dataclass
class RunGroup:
    """One row of a table: runs of one variant, noise, profile, noise draw and training set, one
    per training seed (seed ascending)."""

    runs: list[JobRun]

    @property
    def first(self) -> JobRun:
        return self.runs[0]

    @property
    def variant(self) -> str:
        return self.first.variant

    @property
    def seeds(self) -> list[int]:
        return [run_seed(run) for run in self.runs]

    @property
    def noise_draw(self) -> str:
        return setting(self.first.tags, self.first.params, NOISE_DRAW)

    @property
    def noisy_set(self) -> str:
        return noisy_training_set(self.first.tags, self.first.params)

    @property
    def train_set(self) -> str:
        return setting(self.first.tags, self.first.params, TRAIN_SET)

    def by_seed(self) -> dict[int, JobRun]:
        return dict(zip(self.seeds, self.runs))

    def values(self, metric: str) -> list[float]:
        return [run.metrics[metric] for run in self.runs if metric in run.metrics]

    def values_by_seed(self, metric: str) -> dict[int, float]:
        return {seed: run.metrics[metric] for seed, run in self.by_seed().items() if metric in run.metrics}

    def spread(self, metric: str) -> tuple[float | None, float | None, int]:
        """(mean, sample standard deviation, seeds) of a metric over the row's seeds; the standard
        deviation is None for one seed, the mean None for none."""
        values = self.values(metric)
        if not values:
            return None, None, 0
        mean, std = mean_std(values)
        return mean, std, len(values)

    def summary(self) -> JobRun:
        """The row as one run: its lowest seed's (curves and crops are drawn from it), with every
        psnr_ metric the mean over the seeds that have it."""
        first = self.first
        means = {key: self.spread(key)[0] for key in first.metrics if key.startswith("psnr_")}
        return dataclasses.replace(first, metrics={**first.metrics, **means})


def as_groups(rows: list) -> list[RunGroup]:
    """Table rows given as runs (one seed each) or as RunGroups, as RunGroups."""
    return [row if isinstance(row, RunGroup) else RunGroup([row]) for row in rows]


def unsafe_names(run) -> str:
    """'' when every name of the run that may end up in a path is plain, else which one is not
    (a noisy training set and the noise draw name tables; the seed must be a whole number)."""
    tags, params = run.data.tags, run.data.params
    for key in ("variant", "noise", "profile"):
        if not PLAIN_NAME.fullmatch(tags.get(key, "")):
            return f"{key} tag {tags.get(key, '')!r}"
    for metric in run.data.metrics:
        if metric.startswith("psnr_") and not PLAIN_NAME.fullmatch(metric[5:]):
            return f"metric name {metric!r}"
    draw = setting(tags, params, NOISE_DRAW)
    if not PLAIN_NAME.fullmatch(draw):
        return f"noise draw {draw!r}"
    noisy = noisy_training_set(tags, params)
    if noisy and not PLAIN_NAME.fullmatch(noisy.removeprefix(NOISY_SET)):
        return f"training set {noisy!r}"
    seed = setting(tags, params, SEED)
    if not re.fullmatch(r"-?[0-9]+", seed):
        return f"seed {seed!r}"
    return ""


def variant_order() -> list[str]:
    return list(load_toml(GRID_FILE)["variants"])


def grid_accounts(client, runs: list[JobRun]) -> list[tuple[int, dict[str, float]]]:
    """(rows of this table it ran, metrics) of every grid run that trained rows of this table and
    measured its floor, oldest first: a table filled by several grids (e.g. new variants run
    later) states each one's wall time and floor, not only the newest's."""
    from mlflow.exceptions import MlflowException

    rows = Counter(r.tags.get("mlflow.parentRunId") for r in runs if r.tags.get("mlflow.parentRunId"))
    accounts = []
    for parent_id, n in rows.items():
        try:
            parent = client.get_run(parent_id)
        except MlflowException:  # deleted since
            continue
        if parent.data.tags.get("grid") == "1" and "grid_floor_seconds" in parent.data.metrics:
            accounts.append((parent.info.start_time or 0, n, dict(parent.data.metrics)))
    return [(n, metrics) for _, n, metrics in sorted(accounts, key=lambda a: a[0])]


def in_grid_order(runs: list[JobRun]) -> list[JobRun]:
    """Runs in the grid's row order (grid.toml), unknown variants last by name."""
    order = variant_order()
    return sorted(runs, key=lambda r: (order.index(r.variant) if r.variant in order else len(order), r.variant))


def is_default_setting(group: RunGroup) -> bool:
    """A row as every run was before seeds and noise draws were axes: seed 0, fresh noise, a clean training set."""
    return group.seeds == [0] and group.noise_draw == "fresh" and not group.noisy_set

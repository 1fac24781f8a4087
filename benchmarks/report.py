"""`n2n-bench report`: rebuild results/ (tables and figures) from MLflow alone.

For each (noise, profile) with finished runs: a table in Markdown, LaTeX and CSV (rows = method
variants in grid order, columns = evaluation sets; ours beside the published number and Δ when
baselines/ has one) with a caption stating the profile, plus figures: validation PSNR against
images seen and against wall-clock seconds, per-image PSNR differences against N2C with a bootstrap
95% interval (and the vs-n2c table saying which the interval resolves), and a crop grid. Output is
deterministic for a given store.

A variant trained with several seeds (`grid --seeds`) is one row: mean ± standard deviation over
its seeds, their number in a seeds column, and the N2C intervals from a two-level bootstrap
(benchmarks/spread.py). Runs with fixed noise (`train.noise_draw`) or trained on an evaluation
set's noisy images (`train.train_set = "noisy:<set>"`) get a table per setting beside the main one
(fresh noise, clean training set), with the difference to the main row and its interval. A store
of seed-0, fresh-noise runs only gives the tables it gave before these existed.

Whoever can log to the tracking server decides the tags and metric names this reads, and those
become file names and LaTeX: a run whose variant, noise, profile, evaluation-set name, noise draw
or noisy training set is not a plain name (or whose seed is no whole number) is left out with a
warning naming it, every file written is checked to stay inside the report folder, and all text set
into LaTeX is escaped.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from n2n_core.config import load_toml
from n2n_core.train.checkpoint import atomic_write

from n2n_core.errors import N2NError

from . import paths
from .mlflow_tracker import NoFinishedRuns, default_tracking_uri, open_store
from .spread import BOOTSTRAP_SAMPLES, mean_std, paired_mean_difference, resolved

# benchmarks/baselines is a link to the project's baselines/ folder, so a wheel carries the
# published numbers as package data (pyproject.toml) and a clone reads the very same file
BASELINES = Path(__file__).resolve().parent / "baselines" / "published.csv"
GRID_FILE = Path(__file__).resolve().parent / "configs" / "grid.toml"
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
"""What a variant, noise, profile or set name must look like to become part of a file name."""
SET_ORDER = ["kodak24", "bsd300", "set14", "small32"]
README_MARK = "<!-- results:{noise}:{profile} -->"


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
NOISY_SET = "noisy:"  # train.train_set = "noisy:<set>": trained on the evaluation set's noisy images


def setting(tags: dict, params: dict, which: tuple[str, str, str]) -> str:
    tag, param, default = which
    return str(tags.get(tag, params.get(param, default)))


def noisy_training_set(tags: dict, params: dict) -> str:
    """'noisy:<set>' for a run trained on an evaluation set's noisy images, else '' (a clean set)."""
    name = setting(tags, params, TRAIN_SET)
    return name if name.startswith(NOISY_SET) else ""


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


def inside(out: Path, path: Path) -> Path:
    """`path`, once it is certain that it resolves (links followed) to a place inside `out`."""
    if not path.resolve().is_relative_to(out.resolve()):
        raise N2NError(f"refusing to write {path}: it resolves to {path.resolve()}, outside the report "
                       f"folder {out.resolve()}; remove the link that leads there")
    return path


def variant_order() -> list[str]:
    return list(load_toml(GRID_FILE)["variants"])


def load_baselines() -> pd.DataFrame:
    table = pd.read_csv(BASELINES)
    return table.drop_duplicates(["variant", "noise", "dataset"], keep="first")


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


def floor_note(accounts: list[tuple[int, dict[str, float]]]) -> str:
    """'; grid runs of these rows: wall time 20.4 min, floor 13.8 min (20 rows, at 324 GFLOP/s); …'
    or '' where no grid measured its floor."""
    if not accounts:
        return ""
    parts = [f"wall time {m['grid_wall_seconds'] / 60:.1f} min, floor {m['grid_floor_seconds'] / 60:.1f} min "
             f"({n} rows, at {m['matmul_gflops']:.0f} GFLOP/s)" for n, m in accounts]
    return (f"; grid runs of these rows: {'; '.join(parts)} (floor: the counted FLOPs of the jobs a grid ran "
            "at the float32 matmul rate it measured; CBM3D counts 0)")


def in_grid_order(runs: list[JobRun]) -> list[JobRun]:
    """Runs in the grid's row order (grid.toml), unknown variants last by name."""
    order = variant_order()
    return sorted(runs, key=lambda r: (order.index(r.variant) if r.variant in order else len(order), r.variant))


def build_table(rows: list, noise: str) -> pd.DataFrame:
    """One row per variant (a run, or a RunGroup of its seeds): ours, published, Δ and the
    published number's convention per set. Where a row has several seeds, ours is their mean,
    with `<set>_std` (sample standard deviation) and a `seeds` column (the number of runs)."""
    groups = as_groups(rows)
    runs = [group.first for group in groups]
    several = any(len(group.runs) > 1 for group in groups)
    sets = [s for s in SET_ORDER if any(f"psnr_{s}" in r.metrics for r in runs)]
    sets += sorted({k[5:] for r in runs for k in r.metrics if k.startswith("psnr_")} - set(sets))
    published = load_baselines()
    # noise "*": a number measured on data that brings its own corruption (course32)
    published = published[published.noise.isin([noise, "*"])].set_index(["variant", "dataset"])
    rows = []
    for group in in_grid_order(groups):
        run = group.first
        row = {"variant": run.variant, **({"seeds": len(group.runs)} if several else {})}
        for name in sets:
            ours, std, _ = group.spread(f"psnr_{name}")
            row[f"{name}"] = ours
            if several:
                row[f"{name}_std"] = std
            if (run.variant, name) in published.index:
                pub = published.loc[(run.variant, name)]
                row[f"{name}_published"] = float(pub.psnr)
                row[f"{name}_published_convention"] = pub.convention
                row[f"{name}_delta"] = None if ours is None else ours - float(pub.psnr)
        rows.append(row)
    return pd.DataFrame(rows), sets


def crop_sizes(runs: list[JobRun]) -> str:
    """'128²', or '128² (32² for course-prelu, course-strided)' when variants trained on other crops.

    The first trained run's size leads (table order: the paper's methods before the course's);
    training-free runs (noisy, cbm3d: images_seen 0) saw no crops and are left out.
    """
    trained = [run for run in in_grid_order(runs) if run.metrics.get("images_seen", 1) > 0] or runs
    by_size: dict[str, list[str]] = defaultdict(list)
    for run in trained:
        by_size[str(run.params.get("train.patch_size"))].append(run.variant)
    main = str(trained[0].params.get("train.patch_size"))
    others = "; ".join(f"{size}² for {', '.join(sorted(names))}"
                       for size, names in sorted(by_size.items()) if size != main)
    return f"{main}²" + (f" ({others})" if others else "")


def scoring_cost(runs: list[JobRun], sets: list[str]) -> str:
    """'; scoring seconds per evaluation (kodak24) of the methods that train nothing: cbm3d 3.1, zs-n2n 312'.

    For a training-free method scoring is its whole cost (Zero-Shot Noise2Noise fits a network to
    every image); '' when no such run logged the time."""
    for name in sets:
        key = f"scoring_seconds_per_evaluation_{name}"
        costs = [f"{run.variant} {run.metrics[key]:.3g}" for run in in_grid_order(runs)
                 if run.metrics.get("images_seen", 1) == 0 and key in run.metrics]
        if costs:
            return f"; scoring seconds per evaluation ({name}) of the methods that train nothing: {', '.join(costs)}"
    return ""


EVAL_KEYS = {"eval.max_images": "first images", "eval.center_crop": "central crop"}


def scored_differently(runs: list[JobRun], params: dict) -> str:
    """'; scored otherwise: zs-n2n (first images 2)' for rows whose evaluation settings differ from
    the caption's (e.g. a method too slow on a CPU for every image); '' when none does."""
    notes = []
    for run in in_grid_order(runs):
        if run.params.get("eval.sets") != params.get("eval.sets"):
            continue  # another column (the course networks' small32), described by its own crops note
        changed = [f"{what} {run.params.get(key)}" for key, what in EVAL_KEYS.items()
                   if run.params.get(key) != params.get(key)]
        if changed:
            notes.append(f"{run.variant} ({', '.join(changed)})")
    return f"; scored otherwise: {'; '.join(notes)}" if notes else ""


def seeds_note(groups: list[RunGroup]) -> str:
    """'training seeds 0, 1, 2 (seed 0 alone: cbm3d, noisy); a cell over several seeds is their
    mean ± sample standard deviation (n − 1), their number in the seeds column'."""
    by_seeds: dict[tuple, list[str]] = defaultdict(list)
    for group in in_grid_order(groups):
        by_seeds[tuple(group.seeds)].append(group.variant)
    main = max(by_seeds, key=lambda seeds: (len(by_seeds[seeds]), len(seeds)))  # the seeds most rows have
    word = "seeds" if len(main) > 1 else "seed"
    others = "; ".join(f"{'seeds' if len(s) > 1 else 'seed'} {', '.join(map(str, s))}: {', '.join(names)}"
                       for s, names in by_seeds.items() if s != main)
    text = f"training {word} {', '.join(map(str, main))}" + (f" ({others})" if others else "")
    if any(len(group.runs) > 1 for group in groups):
        text += ("; a cell over several seeds is their mean ± sample standard deviation (n − 1), their number "
                 "in the seeds column")
    return text


def settings_note(groups: list[RunGroup]) -> str:
    """Seeds, noise draw and training set of a table's rows, for its caption."""
    draws = sorted({group.noise_draw for group in groups})
    noisy = sorted({group.noisy_set for group in groups} - {""})
    where = f"noisy images of {', '.join(n.removeprefix(NOISY_SET) for n in noisy)} (train.train_set)" if noisy else ""
    noise = " and ".join(f"{DRAW_WORDS.get(d, d)} (train.noise_draw {d})" for d in draws)
    return f"{seeds_note(groups)}; noise {noise}" + (f"; trained on the {where}" if where else "")


DRAW_WORDS = {"fresh": "drawn afresh for every training crop", "fixed": "drawn once per training image"}


def is_default_setting(group: RunGroup) -> bool:
    """A row as every run was before seeds and noise draws were axes: seed 0, fresh noise, a clean training set."""
    return group.seeds == [0] and group.noise_draw == "fresh" and not group.noisy_set


def caption(runs: list[JobRun], noise: str, profile: str, sets: list[str],
            accounts: list[tuple[int, dict[str, float]]] = (), members: list[JobRun] | None = None,
            settings: str = "", published: bool = True) -> str:
    """The table's caption; accounts: the grid runs behind its rows (grid_accounts); members: every
    run behind its rows (all seeds: devices and wall time), default `runs`; settings: seeds, noise
    draw and training set (settings_note), if any is not the default in this noise and profile."""
    members = members or runs
    params = next((r.params for r in runs if r.params.get("train.budget_images")), runs[0].params)
    repeats = ", ".join(f"{s} ×{params.get(f'eval.repeats.{s}', 1)}" for s in sets)
    crop = params.get("eval.center_crop")
    first = params.get("eval.max_images")
    which = f"the first {first}" if first not in (None, "None") else "all"
    crop_note = f"; central {crop}² crops of {which} images" if crop not in (None, "None") else ""
    crop_note += scored_differently(runs, params)
    devices = sorted({r.tags.get("device", "?") for r in members})
    # the thread count changes float reduction order, which training amplifies (perf README)
    threads = sorted({r.tags["torch_threads"] for r in members if r.tags.get("torch_threads")}, key=int)
    devices[-1] += f" ({' or '.join(threads)} torch thread{'s' if threads != ['1'] else ''} per job)" if threads else ""
    wall = sum(r.metrics.get("job_seconds", 0.0) for r in members)
    return (
        f"PSNR (dB) for {noise}, profile '{profile}': training budget {params.get('train.budget_images')} images "
        f"of {crop_sizes(runs)} crops from {params.get('train.train_set')} (batch "
        f"{params.get('train.batch_size')}){'; ' + settings if settings else ''}; evaluations per image: "
        f"{repeats}{crop_note}; PSNR on "
        f"uint8-quantised images (docs/methods.md §8); {scoring_note(runs)}; device {', '.join(devices)}; total job wall time "
        f"{wall / 60:.1f} min{floor_note(list(accounts))}{scoring_cost(runs, sets)}."
        + (" Published numbers from baselines/published.csv (first source per cell); a number marked (float) "
           "was measured on unquantised floats and is not directly comparable." if published else "")
    )


def _fmt(value, digits=2) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _ours(row: pd.Series | dict, name: str) -> str:
    """'28.31', or '28.31 ± 0.07' for the mean and standard deviation over seeds."""
    std = row.get(f"{name}_std")
    return _fmt(row.get(name)) + ("" if _missing(std) or _missing(row.get(name)) else f" ± {_fmt(std)}")


def _cell(row: pd.Series, name: str) -> str:
    ours = _ours(row, name)
    pub = row.get(f"{name}_published")
    if pub is None or (isinstance(pub, float) and np.isnan(pub)):
        return ours
    flag = " (float)" if row.get(f"{name}_published_convention") == "float" else ""
    delta = row.get(f"{name}_delta")
    return f"{ours} ({_fmt(pub)}{flag}, Δ {'+' if delta >= 0 else ''}{_fmt(delta)})" if delta is not None and not np.isnan(delta) else ours


def _seeds_cells(table: pd.DataFrame, row: pd.Series | None = None) -> list[str]:
    """The seeds column's header (row None) or cell, where the table has one (several seeds)."""
    if "seeds" not in table.columns:
        return []
    return ["seeds"] if row is None else [str(int(row["seeds"]))]


def to_markdown(table: pd.DataFrame, sets: list[str], text: str) -> str:
    head = "| " + " | ".join(["method", *_seeds_cells(table), *(f"{s} ours (published, Δ)" for s in sets)]) + " |"
    lines = [head, "|---|" + "---|" * (len(sets) + len(_seeds_cells(table)))]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join([row["variant"], *_seeds_cells(table, row), *(_cell(row, s) for s in sets)])
                     + " |")
    return "\n".join(lines) + f"\n\n{text}\n"


LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
    "^": r"\^{}", "_": r"\_", "~": r"\textasciitilde{}", "%": r"\%",
    "Δ": r"$\Delta$", "×": r"$\times$", "²": r"$^2$", "§": r"\S{}", "±": r"$\pm$", "−": r"$-$",
}


def latex_escape(text: object) -> str:
    """Text as LaTeX prints it literally: every special character escaped (one pass, so an escape's
    own backslash and braces are never escaped again)."""
    return "".join(LATEX_SPECIAL.get(c, c) for c in str(text))


def to_latex(table: pd.DataFrame, sets: list[str], text: str) -> str:
    esc = latex_escape
    seeds = _seeds_cells(table)
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(sets) + len(seeds)) + "}",
             r"\toprule", " & ".join(["method", *seeds, *(esc(s) for s in sets)]) + r" \\", r"\midrule"]
    for _, row in table.iterrows():
        lines.append(" & ".join([esc(row["variant"]), *_seeds_cells(table, row), *(esc(_cell(row, s)) for s in sets)])
                     + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(text)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _write_text(out: Path, path: Path, text: str) -> Path:
    inside(out, path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def build_report(tracking_uri: str | None, out: Path,
                 readme: Path | None | str = "project") -> list[Path]:
    """Write every table and figure for every (noise, profile) in the store; return the files.

    readme: the README whose results blocks are refreshed; "project" means the clone's README.md
    (none for an installed copy, benchmarks/paths.py). A store without a finished run is an error.
    """
    if readme == "project":
        readme = paths.project_readme()
    client, experiment_id = open_store(tracking_uri, create=False)  # a report never creates a store
    groups: dict[tuple[str, str], list[RunGroup]] = defaultdict(list)
    for group in finished_run_groups(client, experiment_id):
        groups[(group.first.noise, group.first.profile)].append(group)
    if not groups:
        raise NoFinishedRuns(f"the tracking store {tracking_uri or default_tracking_uri()} has no finished "
                             "runs to report; run 'n2n-bench grid' first (or pass the --tracking-uri "
                             "that holds them)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise N2NError(f"could not create the report folder {out} ({err.strerror or err}); pass --out "
                       "with a folder you can write") from None
    written: list[Path] = []
    from . import report_html

    sections: list[report_html.Section] = []
    main_rows: dict[tuple[str, str], list[RunGroup]] = {}  # per (noise, profile): its main table's rows
    for (noise, profile), rows in sorted(groups.items(), key=lambda item: item[0]):
        # the main table: fresh noise on a clean training set (every run before those were axes);
        # other settings get tables of their own beside it (comparison_tables)
        main = in_grid_order([g for g in rows if g.noise_draw == "fresh" and not g.noisy_set])
        settings = "" if all(is_default_setting(g) for g in rows) else settings_note(main)
        if main:
            files, section = main_table(client, experiment_id, main, noise, profile, out, settings, readme)
            written += files
            sections += section
            main_rows[(noise, profile)] = main
        for files, section in comparison_tables(client, rows, main, noise, profile, out):
            written += files
            sections.append(section)
    paper = paper_tables(main_rows, out)
    written += paper
    for path in paper:
        if path.suffix == ".csv":
            sections.append(report_html.csv_section(path, f"Table 1 layout, profile {path.stem.removeprefix('table1-')}",
                                                    path.with_suffix(".md").read_text().strip().splitlines()[-1]))
    if sections:
        written.append(report_html.write_index(out, sections, client.tracking_uri, written))
    return written


def main_table(client, experiment_id: str, main: list[RunGroup], noise: str, profile: str, out: Path,
               settings: str, readme: Path | None) -> tuple[list[Path], list]:
    """`psnr-<noise>-<profile>.md|.tex|.csv`, its figures and the Δ vs N2C table; (files, HTML sections)."""
    from . import figures, report_html

    runs = [group.summary() for group in main]
    table, sets = build_table(main, noise)
    if any(len(group.runs) > 1 for group in main):  # the figures draw one run per row
        settings += "; curves and crops show each row's lowest seed"
    members = [run for group in main for run in group.runs]
    text = caption(runs, noise, profile, sets, grid_accounts(client, members), members=members, settings=settings)
    stem = out / f"psnr-{noise}-{profile}"
    markdown = to_markdown(table, sets, text)
    written = [_write_text(out, stem.with_suffix(".md"), markdown),
               _write_text(out, stem.with_suffix(".tex"), to_latex(table, sets, text)),
               _write_text(out, stem.with_suffix(".csv"), table.to_csv(index=False, float_format="%.4f"))]
    figures_dir = inside(out, out / "figures")  # its names are plain (unsafe_names): only a link could lead out
    vs_n2c = figures.vs_n2c_rows(client, {g.variant: g.by_seed() for g in main}, sets[0]) if sets else None
    drawn = figures.all_figures(client, runs, noise, profile, sets, figures_dir, vs_n2c=vs_n2c)
    written += drawn
    sections = [report_html.Section(
        f"{noise}, profile {profile}", text,
        ["method", *_seeds_cells(table), *(f"{s} ours (published, Δ)" for s in sets)],
        [[row["variant"], *_seeds_cells(table, row), *(_cell(row, s) for s in sets)] for _, row in table.iterrows()],
        drawn)]
    if vs_n2c is not None and not vs_n2c.empty:
        header, cells, note = vs_n2c_table(vs_n2c, sets[0], noise, profile)
        stem = out / f"vs-n2c-{sets[0]}-{noise}-{profile}"
        written += [_write_text(out, stem.with_suffix(".md"), plain_markdown(header, cells, note)),
                    _write_text(out, stem.with_suffix(".csv"), vs_n2c.to_csv(index=False, float_format="%.4f"))]
        sections.append(report_html.Section(f"Δ vs N2C on {sets[0]}, {noise}, profile {profile}", note, header, cells))
    if readme is not None and readme.exists():
        update_readme(readme, noise, profile, markdown)
    return written, sections


def _interval(low: float, high: float) -> str:
    return f"[{low:+.2f}, {high:+.2f}]"


def interval_note(several: bool, reference: str) -> str:
    """How the report's intervals of a paired difference are made (docs/methods.md, seeds)."""
    how = ("a two-level bootstrap (resample the training seeds, then the images within each drawn seed)"
           if several else "a bootstrap over images (one training seed)")
    return (f"95% interval from {how}: each run's per-image PSNRs (mean over repeats) paired with {reference}'s "
            f"run of the same training seed where {reference} has that seed, else with {reference}'s per-image "
            f"mean over its seeds; {BOOTSTRAP_SAMPLES} resamples, generator seed 0; resolved: the interval excludes 0")


def vs_n2c_table(rows: pd.DataFrame, dataset: str, noise: str, profile: str) -> tuple[list[str], list[list[str]], str]:
    """(header, cells, caption) of the Δ vs N2C table: which differences the intervals resolve."""
    header = ["method", "seeds", "PSNR − N2C (dB)", "95% interval", "resolved"]
    cells = [[row.method, str(row.seeds), f"{row.mean:+.2f}", _interval(row.low, row.high),
              "yes" if row.resolved else "no"] for row in rows.itertuples()]
    named = {flag: ", ".join(rows.method[rows.resolved == flag]) or "none" for flag in (True, False)}
    note = (f"Per-image PSNR of each method minus N2C's on {dataset}, {noise}, profile '{profile}': the mean over "
            f"images and training seeds; {interval_note(bool((rows.seeds > 1).any()), 'N2C')}. "
            f"Resolved: {named[True]}; not resolved: {named[False]}.")
    return header, cells, note


def plain_markdown(header: list[str], cells: list[list[str]], text: str) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + f"\n\n{text}\n"


def plain_latex(header: list[str], cells: list[list[str]], text: str) -> str:
    esc = latex_escape
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in row) + r" \\" for row in cells]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(text)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def setting_label(draw: str, noisy: str) -> str:
    """A row setting in words: 'fresh noise', 'fixed noise', 'trained on noisy:kodak24', ..."""
    words = [f"{draw} noise"] if draw != "fresh" or not noisy else []
    return ", ".join(words + ([f"trained on {noisy}"] if noisy else []))


def setting_suffix(draw: str, noisy: str) -> str:
    """The file name part of a setting's table: 'fixed-noise', 'trained-on-noisy-kodak24', ...
    (both parts are plain names: unsafe_names)."""
    parts = [f"{draw}-noise"] if draw != "fresh" else []
    return "-".join(parts + ([f"trained-on-noisy-{noisy.removeprefix(NOISY_SET)}"] if noisy else []))


def comparison_table(client, groups: list[RunGroup], reference: dict[str, RunGroup],
                     sets: list[str]) -> pd.DataFrame:
    """Per row of one setting: the same variant's reference row (fresh noise, clean training set)
    and this row per set, mean and standard deviation over seeds, and Δ = this − reference with its
    two-level bootstrap interval (figures.paired_rows). Δ pairs seeds as the interval does
    (spread.paired_mean_difference), so it is the interval's centre; with the same seeds on both
    sides, the difference of the two means."""
    from . import figures

    rows = []
    for group in in_grid_order(groups):
        ref = reference.get(group.variant)
        row = {"variant": group.variant, "seeds_reference": len(ref.runs) if ref else 0, "seeds": len(group.runs)}
        for name in sets:
            metric = f"psnr_{name}"
            ref_mean, ref_std, _ = ref.spread(metric) if ref else (None, None, 0)
            mean, std, _ = group.spread(metric)
            delta = low = high = None
            if ref_mean is not None and mean is not None:
                delta = paired_mean_difference(group.values_by_seed(metric), ref.values_by_seed(metric))
                paired = figures.paired_rows(client, {group.variant: group.by_seed()}, ref.by_seed(), name)
                if not paired.empty:
                    low, high = float(paired.low.iloc[0]), float(paired.high.iloc[0])
            row |= {f"{name}_reference": ref_mean, f"{name}_reference_std": ref_std, name: mean,
                    f"{name}_std": std, f"{name}_delta": delta, f"{name}_low": low, f"{name}_high": high}
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_cells(table: pd.DataFrame, sets: list[str], label: str) -> tuple[list[str], list[list[str]]]:
    """(header, cells): per set the reference, this setting, and Δ [interval] (resolved)."""
    header = ["method", "seeds (fresh / this)"]
    for name in sets:
        header += [f"{name} fresh noise", f"{name} {label}", f"{name} Δ [95% interval]"]
    cells = []
    for _, row in table.iterrows():
        line = [row["variant"], f"{int(row['seeds_reference'])} / {int(row['seeds'])}"]
        for name in sets:
            reference = {name: row.get(f"{name}_reference"), f"{name}_std": row.get(f"{name}_reference_std")}
            delta, low, high = row.get(f"{name}_delta"), row.get(f"{name}_low"), row.get(f"{name}_high")
            change = "" if _missing(delta) else f"{delta:+.2f}"
            if change and not (_missing(low) or _missing(high)):
                change += f" {_interval(low, high)}" + (" resolved" if resolved(low, high) else "")
            line += [_ours(reference, name), _ours(row, name), change]
        cells.append(line)
    return header, cells


def comparison_tables(client, rows: list[RunGroup], main: list[RunGroup], noise: str, profile: str,
                      out: Path) -> list[tuple[list[Path], object]]:
    """`psnr-<noise>-<profile>-<setting>.md|.tex|.csv` for every setting other than fresh noise on a
    clean training set (fixed noise; trained on noisy:<set>): its rows beside the same variants'
    main-table rows, with the differences; [(files, HTML section)]."""
    from . import report_html

    reference = {group.variant: group for group in main}
    settings = sorted({(g.noise_draw, g.noisy_set) for g in rows} - {("fresh", "")})
    made = []
    for draw, noisy in settings:
        groups = in_grid_order([g for g in rows if (g.noise_draw, g.noisy_set) == (draw, noisy)])
        runs = [g.summary() for g in groups]
        sets = [s for s in SET_ORDER if any(f"psnr_{s}" in r.metrics for r in runs)]
        sets += sorted({k[5:] for r in runs for k in r.metrics if k.startswith("psnr_")} - set(sets))
        label = setting_label(draw, noisy)
        table = comparison_table(client, groups, reference, sets)
        header, cells = comparison_cells(table, sets, label)
        several = any(len(g.runs) > 1 for g in [*groups, *reference.values()])
        text = (caption(runs, noise, profile, sets, members=[r for g in groups for r in g.runs],
                        settings=settings_note(groups), published=False)
                + f" Rows: {label}, beside the same variant with fresh noise on its clean training set "
                f"(its row of psnr-{noise}-{profile}); Δ = {label} − fresh noise, over this row's seeds, each "
                f"against the fresh-noise run of the same seed where there is one, else against the fresh-noise "
                f"mean (with the same seeds on both sides: the difference of the two means); "
                f"{interval_note(several, 'the fresh-noise row')}; seeds: runs behind the fresh-noise row / this row.")
        stem = out / f"psnr-{noise}-{profile}-{setting_suffix(draw, noisy)}"
        files = [_write_text(out, stem.with_suffix(".md"), plain_markdown(header, cells, text)),
                 _write_text(out, stem.with_suffix(".tex"), plain_latex(header, cells, text)),
                 _write_text(out, stem.with_suffix(".csv"), table.to_csv(index=False, float_format="%.4f"))]
        made.append((files, report_html.Section(f"{noise}, profile {profile}: {label}", text, header, cells)))
    return made


def paper_tables(groups: dict[tuple[str, str], list], out: Path) -> list[Path]:
    """`table1-<profile>.md|.csv`: the paper's Table 1 layout for every profile with paper-list runs
    (rows as runs or RunGroups; a row of several seeds shows their mean, RunGroup.summary)."""
    from . import table1

    written = []
    for profile in sorted({p for _, p in groups}):
        rows = [g for (n, p), gs in groups.items() if p == profile for g in as_groups(gs)
                if g.variant in table1.PAPER_VARIANTS]
        if not rows:
            continue
        runs = [g.summary() for g in rows]
        several = [g for g in rows if len(g.runs) > 1]
        seeds = ("; a cell of a variant trained with several seeds is their mean (standard deviations in the "
                 "per-noise tables)" if several else "")
        sets = [s for s in SET_ORDER if any(f"psnr_{s}" in r.metrics for r in runs)]
        table, names = table1.build(runs, load_baselines(), sets)
        text = (f"PSNR (dB) in the layout of the SSDN paper's Table 1, profile '{profile}' "
                f"(each run's budget: the released list's budget scaled by the profile, see "
                f"benchmarks/configs/paper.toml; {scoring_note(runs)}{seeds}); published numbers in parentheses "
                f"from baselines/published.csv, empty where no source gives one.")
        stem = out / f"table1-{profile}"
        if stem.with_suffix(".csv").exists():
            earlier = pd.read_csv(stem.with_suffix(".csv"), dtype=str, keep_default_na=False)
            table, names, carried = table1.keep_earlier_rows(table, names, earlier)
            if carried:
                text += (f" Rows {', '.join(carried)}: from an earlier report into this folder (another store), "
                         "as that report wrote them; the caption of its psnr-<noise>-<profile> table says how "
                         "they were made.")
        written.append(_write_text(out, stem.with_suffix(".md"), table1.to_markdown(table, names, text)))
        written.append(_write_text(out, stem.with_suffix(".csv"), table.to_csv(index=False)))
    return written


def scoring_note(runs: list[JobRun]) -> str:
    """How blind-spot variants were scored: in training-crop tiles or on whole images."""
    blind = [r for r in runs if r.params.get("method.name") in ("ssdn", "ssdn-mu")]
    if not blind:
        return "no blind-spot method"
    modes = sorted({r.params.get("eval.blindspot_tiles", "auto") for r in blind})
    sizes = sorted({str(r.params.get("train.patch_size")) for r in blind})
    if modes == ["off"]:
        return "blind-spot methods scored on whole images, as the released code"
    if modes == ["auto"]:
        strides = sorted({float(r.params.get("eval.blindspot_stride", 0.5)) for r in blind})
        return (f"blind-spot methods scored in overlapping {'/'.join(s + '²' for s in sizes)} tiles of their "
                f"training crops, {' or '.join(f'{s:g}' for s in strides)} of a tile apart")
    return "blind-spot methods scored partly in tiles, partly on whole images (see each run's eval.blindspot_tiles)"


def update_readme(readme: Path, noise: str, profile: str, markdown: str) -> None:
    """Replace the block between the README's marker pair for (noise, profile), if it has one."""
    mark = README_MARK.format(noise=noise, profile=profile)
    text = readme.read_text()
    pattern = re.compile(re.escape(mark) + r".*?" + re.escape(mark.replace("<!-- ", "<!-- /")), re.S)
    if not pattern.search(text):
        return
    block = f"{mark}\n{markdown}\n{mark.replace('<!-- ', '<!-- /')}"
    atomic_write(readme, lambda tmp: tmp.write_text(pattern.sub(lambda _: block, text)))

"""`n2n-bench report`: rebuild results/ (tables and figures) from MLflow alone.

For each (noise, profile) with finished runs: a table in Markdown, LaTeX and CSV (rows = method
variants in grid order, columns = evaluation sets; ours beside the published number and Δ when
baselines/ has one) with a caption stating the profile, plus figures: validation PSNR against
images seen and against wall-clock seconds, per-image PSNR differences against N2C with a bootstrap
95% interval, and a crop grid. Output is deterministic for a given store.

Whoever can log to the tracking server decides the tags and metric names this reads, and those
become file names and LaTeX: a run whose variant, noise, profile or evaluation-set name is not a
plain name is left out with a warning naming it, every file written is checked to stay inside the
report folder, and all text set into LaTeX is escaped.
"""

from __future__ import annotations

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


def finished_job_runs(client, experiment_id) -> list[JobRun]:
    """The newest FINISHED child run per (variant, noise, profile).

    A table row is a variant: when its configuration changed (a fix, a --set), the newest run is
    the one shown; the older ones stay in MLflow to compare in `mlflow ui`."""
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'",
                              max_results=50000, order_by=["attributes.end_time DESC"])
    newest: dict[tuple, JobRun] = {}
    for run in runs:
        tags = run.data.tags
        if "variant" not in tags:
            continue  # grid parent runs
        bad = unsafe_names(run)
        if bad:
            print(f"warning: run {run.info.run_id} left out of the report: its {bad} is not a plain name "
                  "(letters, digits, '_', '.', '+', '-')", file=sys.stderr)
            continue
        key = (tags["variant"], tags["noise"], tags["profile"])
        if key not in newest:
            newest[key] = JobRun(run.info.run_id, tags["variant"], tags["noise"], tags["profile"],
                                 dict(run.data.params), dict(run.data.metrics), dict(tags),
                                 run.info.end_time or 0)
    return list(newest.values())


def unsafe_names(run) -> str:
    """'' when every name of the run that may end up in a path is plain, else which one is not."""
    tags = run.data.tags
    for key in ("variant", "noise", "profile"):
        if not PLAIN_NAME.fullmatch(tags.get(key, "")):
            return f"{key} tag {tags.get(key, '')!r}"
    for metric in run.data.metrics:
        if metric.startswith("psnr_") and not PLAIN_NAME.fullmatch(metric[5:]):
            return f"metric name {metric!r}"
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


def build_table(runs: list[JobRun], noise: str) -> pd.DataFrame:
    """One row per variant: ours, published, Δ and the published number's convention per set."""
    sets = [s for s in SET_ORDER if any(f"psnr_{s}" in r.metrics for r in runs)]
    sets += sorted({k[5:] for r in runs for k in r.metrics if k.startswith("psnr_")} - set(sets))
    published = load_baselines()
    # noise "*": a number measured on data that brings its own corruption (course32)
    published = published[published.noise.isin([noise, "*"])].set_index(["variant", "dataset"])
    rows = []
    for run in in_grid_order(runs):
        row = {"variant": run.variant}
        for name in sets:
            ours = run.metrics.get(f"psnr_{name}")
            row[f"{name}"] = ours
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


def caption(runs: list[JobRun], noise: str, profile: str, sets: list[str],
            accounts: list[tuple[int, dict[str, float]]] = ()) -> str:
    params = next((r.params for r in runs if r.params.get("train.budget_images")), runs[0].params)
    repeats = ", ".join(f"{s} ×{params.get(f'eval.repeats.{s}', 1)}" for s in sets)
    crop = params.get("eval.center_crop")
    first = params.get("eval.max_images")
    which = f"the first {first}" if first not in (None, "None") else "all"
    crop_note = f"; central {crop}² crops of {which} images" if crop not in (None, "None") else ""
    crop_note += scored_differently(runs, params)
    devices = sorted({r.tags.get("device", "?") for r in runs})
    wall = sum(r.metrics.get("job_seconds", 0.0) for r in runs)
    return (
        f"PSNR (dB) for {noise}, profile '{profile}': training budget {params.get('train.budget_images')} images "
        f"of {crop_sizes(runs)} crops from {params.get('train.train_set')} (batch "
        f"{params.get('train.batch_size')}); evaluations per image: {repeats}{crop_note}; PSNR on "
        f"uint8-quantised images (docs/methods.md §8); {scoring_note(runs)}; device {', '.join(devices)}; total job wall time "
        f"{wall / 60:.1f} min{floor_note(list(accounts))}{scoring_cost(runs, sets)}. Published numbers from baselines/published.csv (first source per cell); "
        f"a number marked (float) was measured on unquantised floats and is not directly comparable."
    )


def _fmt(value, digits=2) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _cell(row: pd.Series, name: str) -> str:
    ours = _fmt(row.get(name))
    pub = row.get(f"{name}_published")
    if pub is None or (isinstance(pub, float) and np.isnan(pub)):
        return ours
    flag = " (float)" if row.get(f"{name}_published_convention") == "float" else ""
    delta = row.get(f"{name}_delta")
    return f"{ours} ({_fmt(pub)}{flag}, Δ {'+' if delta >= 0 else ''}{_fmt(delta)})" if delta is not None and not np.isnan(delta) else ours


def to_markdown(table: pd.DataFrame, sets: list[str], text: str) -> str:
    head = "| method | " + " | ".join(f"{s} ours (published, Δ)" for s in sets) + " |"
    lines = [head, "|---|" + "---|" * len(sets)]
    for _, row in table.iterrows():
        lines.append(f"| {row['variant']} | " + " | ".join(_cell(row, s) for s in sets) + " |")
    return "\n".join(lines) + f"\n\n{text}\n"


LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
    "^": r"\^{}", "_": r"\_", "~": r"\textasciitilde{}", "%": r"\%",
    "Δ": r"$\Delta$", "×": r"$\times$", "²": r"$^2$", "§": r"\S{}",
}


def latex_escape(text: object) -> str:
    """Text as LaTeX prints it literally: every special character escaped (one pass, so an escape's
    own backslash and braces are never escaped again)."""
    return "".join(LATEX_SPECIAL.get(c, c) for c in str(text))


def to_latex(table: pd.DataFrame, sets: list[str], text: str) -> str:
    esc = latex_escape
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * len(sets) + "}", r"\toprule",
             "method & " + " & ".join(esc(s) for s in sets) + r" \\", r"\midrule"]
    for _, row in table.iterrows():
        lines.append(esc(row["variant"]) + " & " + " & ".join(esc(_cell(row, s)) for s in sets) + r" \\")
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
    groups: dict[tuple[str, str], list[JobRun]] = defaultdict(list)
    for run in finished_job_runs(client, experiment_id):
        groups[(run.noise, run.profile)].append(run)
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
    for (noise, profile), runs in sorted(groups.items()):
        table, sets = build_table(runs, noise)
        text = caption(runs, noise, profile, sets, grid_accounts(client, runs))
        stem = out / f"psnr-{noise}-{profile}"
        markdown = to_markdown(table, sets, text)
        written.append(_write_text(out, stem.with_suffix(".md"), markdown))
        written.append(_write_text(out, stem.with_suffix(".tex"), to_latex(table, sets, text)))
        written.append(_write_text(out, stem.with_suffix(".csv"), table.to_csv(index=False, float_format="%.4f")))
        from . import figures

        figures_dir = inside(out, out / "figures")  # its names are plain (unsafe_names): only a link could lead out
        drawn = figures.all_figures(client, in_grid_order(runs), noise, profile, sets, figures_dir)
        written += drawn
        sections.append(report_html.Section(
            f"{noise}, profile {profile}", text, ["method", *(f"{s} ours (published, Δ)" for s in sets)],
            [[row["variant"], *(_cell(row, s) for s in sets)] for _, row in table.iterrows()], drawn))
        if readme is not None and readme.exists():
            update_readme(readme, noise, profile, markdown)
    paper = paper_tables(groups, out)
    written += paper
    for path in paper:
        if path.suffix == ".csv":
            sections.append(report_html.csv_section(path, f"Table 1 layout, profile {path.stem.removeprefix('table1-')}",
                                                    path.with_suffix(".md").read_text().strip().splitlines()[-1]))
    if sections:
        written.append(report_html.write_index(out, sections, client.tracking_uri, written))
    return written


def paper_tables(groups: dict[tuple[str, str], list[JobRun]], out: Path) -> list[Path]:
    """`table1-<profile>.md|.csv`: the paper's Table 1 layout for every profile with paper-list runs."""
    from . import table1

    written = []
    for profile in sorted({p for _, p in groups}):
        runs = [r for (n, p), rs in groups.items() if p == profile for r in rs if r.variant in table1.PAPER_VARIANTS]
        if not runs:
            continue
        sets = [s for s in SET_ORDER if any(f"psnr_{s}" in r.metrics for r in runs)]
        table, names = table1.build(runs, load_baselines(), sets)
        text = (f"PSNR (dB) in the layout of the SSDN paper's Table 1, profile '{profile}' "
                f"(each run's budget: the released list's budget scaled by the profile, see "
                f"benchmarks/configs/paper.toml; {scoring_note(runs)}); published numbers in parentheses "
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

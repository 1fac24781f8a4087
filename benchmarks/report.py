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

import re
from collections import defaultdict
from pathlib import Path

import pandas as pd

from n2n_core.errors import N2NError
from n2n_core.train.checkpoint import atomic_write

from . import paths
from .captions import caption, interval_note, scoring_note, setting_label, setting_suffix, settings_note
from .mlflow_tracker import NoFinishedRuns, default_tracking_uri, open_store
from .report_runs import (RunGroup, as_groups, finished_run_groups, grid_accounts, in_grid_order,
                          is_default_setting, trains_nothing)
from .spread import judged, not_judged_reason, paired_mean_difference, resolved
from .table_text import (cell_text, interval_text, is_missing, ours_text, plain_latex, plain_markdown,
                         seeds_cells, to_latex, to_markdown)

# benchmarks/baselines is a link to the project's baselines/ folder, so a wheel carries the
# published numbers as package data (pyproject.toml) and a clone reads the very same file
BASELINES = Path(__file__).resolve().parent / "baselines" / "published.csv"
SET_ORDER = ["kodak24", "bsd300", "set14", "small32"]
README_MARK = "<!-- results:{noise}:{profile} -->"


def inside(out: Path, path: Path) -> Path:
    """`path`, once it is certain that it resolves (links followed) to a place inside `out`."""
    if not path.resolve().is_relative_to(out.resolve()):
        raise N2NError(f"refusing to write {path}: it resolves to {path.resolve()}, outside the report "
                       f"folder {out.resolve()}; remove the link that leads there")
    return path


def scored_sets(runs: list) -> list[str]:
    """The evaluation sets the runs were scored on: the known ones in SET_ORDER, then the rest by name."""
    sets = [s for s in SET_ORDER if any(f"psnr_{s}" in r.metrics for r in runs)]
    return sets + sorted({k[5:] for r in runs for k in r.metrics if k.startswith("psnr_")} - set(sets))


def load_baselines() -> pd.DataFrame:
    table = pd.read_csv(BASELINES)
    return table.drop_duplicates(["variant", "noise", "dataset"], keep="first")


def build_table(rows: list, noise: str) -> pd.DataFrame:
    """One row per variant (a run, or a RunGroup of its seeds): ours, published, Δ and the
    published number's convention per set. Where a row has several seeds, ours is their mean,
    with `<set>_std` (sample standard deviation) and a `seeds` column (the number of runs)."""
    groups = as_groups(rows)
    runs = [group.first for group in groups]
    several = any(len(group.runs) > 1 for group in groups)
    sets = scored_sets(runs)
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
        ["method", *seeds_cells(table), *(f"{s} ours (published, Δ)" for s in sets)],
        [[row["variant"], *seeds_cells(table, row), *(cell_text(row, s) for s in sets)] for _, row in table.iterrows()],
        drawn)]
    if vs_n2c is not None and not vs_n2c.empty:
        vs_n2c = vs_n2c.assign(verdict=verdicts(vs_n2c))  # the CSV says what the table says
        header, cells, note = vs_n2c_table(vs_n2c, sets[0], noise, profile)
        stem = out / f"vs-n2c-{sets[0]}-{noise}-{profile}"
        written += [_write_text(out, stem.with_suffix(".md"), plain_markdown(header, cells, note)),
                    _write_text(out, stem.with_suffix(".csv"), vs_n2c.to_csv(index=False, float_format="%.4f"))]
        sections.append(report_html.Section(f"Δ vs N2C on {sets[0]}, {noise}, profile {profile}", note, header, cells))
    if readme is not None and readme.exists():
        update_readme(readme, noise, profile, markdown)
    return written, sections


def verdicts(rows: pd.DataFrame) -> list[str]:
    """Per row of paired_rows: yes or no (resolved), or why its interval cannot judge (spread.judged)."""
    several = bool((rows.seed_rows > 1).any())
    return [("yes" if row.resolved else "no") if judged(row.seed_rows, several, row.images)
            else not_judged_reason(row.images) for row in rows.itertuples()]


def vs_n2c_table(rows: pd.DataFrame, dataset: str, noise: str, profile: str) -> tuple[list[str], list[list[str]], str]:
    """(header, cells, caption) of the Δ vs N2C table: which differences the intervals resolve, and
    which they cannot judge (verdicts). `rows` carries its verdict column (main_table adds it)."""
    several = bool((rows.seed_rows > 1).any())
    verdict = list(rows.verdict)
    header = ["method", "seeds", "PSNR − N2C (dB)", "95% interval", "resolved"]
    cells = [[row.method, str(row.seeds), f"{row.mean:+.2f}", interval_text(row.low, row.high), word]
             for row, word in zip(rows.itertuples(), verdict)]
    named = {word: ", ".join(m for m, v in zip(rows.method, verdict) if v == word) for word in dict.fromkeys(verdict)}
    note = (f"Per-image PSNR of each method minus N2C's on {dataset}, {noise}, profile '{profile}': the mean over "
            f"images and training seeds; {interval_note(several, 'N2C', bool((rows.images < 2).any()))}. "
            f"Resolved: {named.get('yes') or 'none'}; not resolved: {named.get('no') or 'none'}"
            + "".join(f"; {word}: {names}" for word, names in named.items() if word not in ("yes", "no")) + ".")
    return header, cells, note


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
            seed_rows = images = 0
            if ref_mean is not None and mean is not None:
                delta = paired_mean_difference(group.values_by_seed(metric), ref.values_by_seed(metric),
                                               seed_free=all(map(trains_nothing, group.runs)))
                paired = figures.paired_rows(client, {group.variant: group.by_seed()}, ref.by_seed(), name)
                if not paired.empty:
                    low, high = float(paired.low.iloc[0]), float(paired.high.iloc[0])
                    seed_rows, images = int(paired.seed_rows.iloc[0]), int(paired.images.iloc[0])
            row |= {f"{name}_reference": ref_mean, f"{name}_reference_std": ref_std, name: mean,
                    f"{name}_std": std, f"{name}_delta": delta, f"{name}_low": low, f"{name}_high": high,
                    f"{name}_seed_rows": seed_rows, f"{name}_images": images}
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_cells(table: pd.DataFrame, sets: list[str], label: str,
                     several: bool) -> tuple[list[str], list[list[str]]]:
    """(header, cells): per set the reference, this setting, and Δ [interval] with 'resolved' where
    it is, or 'not judged (one seed)' where the interval resamples images alone (spread.judged)."""
    header = ["method", "seeds (fresh / this)"]
    for name in sets:
        header += [f"{name} fresh noise", f"{name} {label}", f"{name} Δ [95% interval]"]
    cells = []
    for _, row in table.iterrows():
        line = [row["variant"], f"{int(row['seeds_reference'])} / {int(row['seeds'])}"]
        for name in sets:
            reference = {name: row.get(f"{name}_reference"), f"{name}_std": row.get(f"{name}_reference_std")}
            delta, low, high = row.get(f"{name}_delta"), row.get(f"{name}_low"), row.get(f"{name}_high")
            change = "" if is_missing(delta) else f"{delta:+.2f}"
            if change and not (is_missing(low) or is_missing(high)):
                change += f" {interval_text(low, high)}"
                images = int(row.get(f"{name}_images", 2))
                if not judged(int(row.get(f"{name}_seed_rows", 1)), several, images):
                    change += f" {not_judged_reason(images)}"
                elif resolved(low, high):
                    change += " resolved"
            line += [ours_text(reference, name), ours_text(row, name), change]
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
        sets = scored_sets(runs)
        label = setting_label(draw, noisy)
        table = comparison_table(client, groups, reference, sets)
        several = any(len(g.runs) > 1 for g in [*groups, *reference.values()])
        header, cells = comparison_cells(table, sets, label, several)
        one_image = any((table[c] == 1).any() for c in table.columns if c.endswith("_images"))
        text = (caption(runs, noise, profile, sets, members=[r for g in groups for r in g.runs],
                        settings=settings_note(groups), published=False)
                + f" Rows: {label}, beside the same variant with fresh noise on its clean training set "
                f"(its row of psnr-{noise}-{profile}); Δ = {label} − fresh noise, over this row's seeds, each "
                f"against the fresh-noise run of the same seed where there is one, else against the fresh-noise "
                f"mean (with the same seeds on both sides: the difference of the two means); "
                f"{interval_note(several, 'the fresh-noise row', one_image)}; seeds: runs behind the fresh-noise row / this row.")
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


def update_readme(readme: Path, noise: str, profile: str, markdown: str) -> None:
    """Replace the block between the README's marker pair for (noise, profile), if it has one."""
    mark = README_MARK.format(noise=noise, profile=profile)
    text = readme.read_text()
    pattern = re.compile(re.escape(mark) + r".*?" + re.escape(mark.replace("<!-- ", "<!-- /")), re.S)
    if not pattern.search(text):
        return
    block = f"{mark}\n{markdown}\n{mark.replace('<!-- ', '<!-- /')}"
    atomic_write(readme, lambda tmp: tmp.write_text(pattern.sub(lambda _: block, text)))

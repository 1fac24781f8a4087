"""The paper's Table 1 layout: rows = noise styles, columns = method × evaluation set.

Built from the same finished runs as the per-noise tables (report.py), for one profile at a time:
a cell is "ours (published)" where baselines/published.csv has the published number. A method
column whose level is estimated takes the variant the released list pairs with the style (one
constant for fixed-level styles, the per-image network for variable ones, docs/methods.md §5).
"""

from __future__ import annotations

import pandas as pd

from n2n_core.noise import parse_style

NOISE_ORDER = ["gaussian25", "gaussian5_50", "poisson30", "poisson5_50", "impulse50", "impulse0_100"]
# (column label, variant for fixed-level styles, variant for variable-level styles)
COLUMNS = [
    ("N2C", "n2c", "n2c"),
    ("N2N", "n2n", "n2n"),
    ("SSDN σ known", "ssdn-known", "ssdn-known"),
    ("SSDN σ estimated", "ssdn-constant", "ssdn-per-image"),
    ("SSDN diag. σ known", "ssdn-known-diagonal", "ssdn-known-diagonal"),
    ("SSDN diag. σ estimated", "ssdn-constant-diagonal", "ssdn-per-image-diagonal"),
    ("μ-only", "ssdn-mu", "ssdn-mu"),
    ("mono N2C", "n2c-mono", "n2c-mono"),
    ("mono SSDN σ known", "ssdn-known-mono", "ssdn-known-mono"),
    ("mono SSDN σ estimated", "ssdn-constant-mono", "ssdn-per-image-mono"),
]
PAPER_VARIANTS = {v for _, fixed, variable in COLUMNS for v in (fixed, variable)}


def column_variant(column: tuple[str, str, str], noise: str) -> str:
    _, fixed, variable = column
    return variable if parse_style(noise).variable else fixed


def build(runs, published: pd.DataFrame, sets: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """(table, column names): one row per noise style with runs, cells 'ours (published)'."""
    by_key = {(r.noise, r.variant): r for r in runs}
    noises = [n for n in NOISE_ORDER if any(k[0] == n for k in by_key)]
    noises += sorted({n for n, _ in by_key} - set(noises))
    index = published.set_index(["variant", "noise", "dataset"]) if len(published) else None
    used = [c for c in COLUMNS if any((n, column_variant(c, n)) in by_key for n in noises)]
    names = [f"{label} {s}" for label, *_ in used for s in sets]
    rows = []
    for noise in noises:
        row = {"noise": noise}
        for column in used:
            variant = column_variant(column, noise)
            run = by_key.get((noise, variant))
            for s in sets:
                ours = run.metrics.get(f"psnr_{s}") if run else None
                pub = None
                if index is not None and (variant, noise, s) in index.index:
                    entry = index.loc[(variant, noise, s)]
                    pub = f"{float(entry.psnr):.2f}" + (" float" if entry.convention == "float" else "")
                text = "" if ours is None else f"{ours:.2f}"
                row[f"{column[0]} {s}"] = f"{text} ({pub})" if pub else text
        rows.append(row)
    return pd.DataFrame(rows, columns=["noise", *names]), names


def keep_earlier_rows(table: pd.DataFrame, names: list[str],
                      earlier: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(table, column names, carried noise styles): the rows of an earlier Table 1 of this results
    folder whose noise style has no run in this store, added to this store's rows in NOISE_ORDER.
    A report reads one store, but a folder may hold tables from several (results/ does)."""
    carried = earlier[~earlier["noise"].isin(table["noise"])]
    if carried.empty:
        return table, names, []
    names = [*names, *(c for c in carried.columns if c != "noise" and c not in names)]
    merged = pd.concat([table, carried], ignore_index=True).fillna("")
    rank = {n: i for i, n in enumerate(NOISE_ORDER)}
    merged = merged.sort_values("noise", key=lambda col: col.map(lambda n: (rank.get(n, len(rank)), n)), kind="stable")
    return merged[["noise", *names]].reset_index(drop=True), names, list(carried["noise"])


def to_markdown(table: pd.DataFrame, names: list[str], caption: str) -> str:
    lines = ["| noise | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for _, row in table.iterrows():
        lines.append(f"| {row['noise']} | " + " | ".join(str(row[n]) for n in names) + " |")
    return "\n".join(lines) + f"\n\n{caption}\n"

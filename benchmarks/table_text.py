"""Cells and whole tables as Markdown and LaTeX text (LaTeX escaped: names come from the store)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def fmt_number(value, digits=2) -> str:
    return "" if is_missing(value) else f"{value:.{digits}f}"


def ours_text(row: pd.Series | dict, name: str) -> str:
    """'28.31', or '28.31 ± 0.07' for the mean and standard deviation over seeds."""
    mean, std = row.get(name), row.get(f"{name}_std")
    return fmt_number(mean) + ("" if is_missing(std) or is_missing(mean) else f" ± {fmt_number(std)}")


def cell_text(row: pd.Series, name: str) -> str:
    ours = ours_text(row, name)
    pub = row.get(f"{name}_published")
    delta = row.get(f"{name}_delta")
    if is_missing(pub) or is_missing(delta):
        return ours
    flag = " (float)" if row.get(f"{name}_published_convention") == "float" else ""
    return f"{ours} ({fmt_number(pub)}{flag}, Δ {'+' if delta >= 0 else ''}{fmt_number(delta)})"


def seeds_cells(table: pd.DataFrame, row: pd.Series | None = None) -> list[str]:
    """The seeds column's header (row None) or cell, where the table has one (several seeds)."""
    if "seeds" not in table.columns:
        return []
    return ["seeds"] if row is None else [str(int(row["seeds"]))]


def to_markdown(table: pd.DataFrame, sets: list[str], text: str) -> str:
    head = "| " + " | ".join(["method", *seeds_cells(table), *(f"{s} ours (published, Δ)" for s in sets)]) + " |"
    lines = [head, "|---|" + "---|" * (len(sets) + len(seeds_cells(table)))]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join([row["variant"], *seeds_cells(table, row), *(cell_text(row, s) for s in sets)])
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
    seeds = seeds_cells(table)
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(sets) + len(seeds)) + "}",
             r"\toprule", " & ".join(["method", *seeds, *(esc(s) for s in sets)]) + r" \\", r"\midrule"]
    for _, row in table.iterrows():
        lines.append(" & ".join([esc(row["variant"]), *seeds_cells(table, row), *(esc(cell_text(row, s)) for s in sets)])
                     + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(text)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def interval_text(low: float, high: float) -> str:
    return f"[{low:+.2f}, {high:+.2f}]"


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

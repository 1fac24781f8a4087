"""`results/index.html`: one page holding every table and figure `n2n-bench report` wrote.

A section per (noise, profile) table (caption, table, its figures: curves, Δ vs N2C, crop grid),
then the paper-layout tables and any other result in the folder (the sweeps'). Every piece of text
is HTML-escaped; images are linked relatively, so the folder can be moved or served as it is.
Each method row carries the colour its curves and markers have in every figure
(figures.method_colour). Deterministic: the same store gives the same page.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from n2n_core.train.checkpoint import atomic_write

from .figures import method_colour

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em; vertical-align: middle; }
figure { margin: 1em 0; } img { max-width: 100%; } p.caption { color: #555; font-size: 0.9em; }
nav a { margin-right: 1em; }
"""


@dataclass
class Section:
    """One table with its caption and figures (files under the results folder)."""

    title: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    figures: list[Path] = field(default_factory=list)
    variant_column: bool = True  # the first column names a method variant (gets its colour swatch)


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


def _table(section: Section) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in section.header)
    body = []
    for row in section.rows:
        first, rest = row[0], row[1:]
        swatch = (f'<span class="swatch" style="background:{method_colour(first)}"></span>'
                  if section.variant_column else "")
        body.append(f"<tr><td>{swatch}{e(first)}</td>" + "".join(f"<td>{e(c)}</td>" for c in rest) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figures(paths: list[Path], out: Path) -> str:
    parts = []
    for path in paths:
        rel = Path(path).resolve().relative_to(out.resolve()).as_posix()
        parts.append(f'<figure><img src="{html.escape(rel, quote=True)}" alt="{html.escape(Path(path).stem, quote=True)}">'
                     f"<figcaption>{html.escape(Path(path).name)}</figcaption></figure>")
    return "".join(parts)


def csv_section(path: Path, title: str, caption: str = "", variant_column: bool = False) -> Section:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return Section(title, caption, list(table.columns), table.values.tolist(), variant_column=variant_column)


def render(sections: list[Section], out: Path, store: str) -> str:
    e = html.escape
    nav = "".join(f'<a href="#{_anchor(s.title)}">{e(s.title)}</a>' for s in sections)
    body = []
    for s in sections:
        body.append(f'<section id="{_anchor(s.title)}"><h2>{e(s.title)}</h2>{_table(s)}'
                    f'<p class="caption">{e(s.caption)}</p>{_figures(s.figures, out)}</section>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>n2n-bench results</title><style>{STYLE}</style></head><body>"
            f"<h1>n2n-bench results</h1><p>Written by <code>n2n-bench report</code> from the MLflow store "
            f"<code>{e(store)}</code>; nothing here is typed by hand.</p><nav>{nav}</nav>"
            + "".join(body) + "</body></html>\n")


def markdown_section(path: Path, title: str) -> Section:
    """A table as the report wrote it in markdown (its cells formatted as in the README), caption last."""
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    table = [line for line in lines if line.startswith("|")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
    rows = [row for row in cells[1:] if not all(set(c) <= set("-: ") for c in row)]  # no separator line
    return Section(title, lines[-1] if lines and not lines[-1].startswith("|") else "", cells[0] if cells else [], rows)


def other_results(out: Path, known: set[Path]) -> list[Section]:
    """Tables in the folder that this report did not write, with their figures: PSNR tables written
    earlier from another store (`psnr-<noise>-<profile>`, with that noise and profile's figures) and
    the sweeps' tables. Each keeps the caption it was written with."""
    out = Path(out)
    sections = []
    for path in sorted(out.glob("*.csv")):
        if path.resolve() in known:
            continue
        caption_file = path.with_suffix(".md")
        if path.stem.startswith("psnr-") and caption_file.exists():
            noise, _, profile = path.stem.removeprefix("psnr-").rpartition("-")
            section = markdown_section(caption_file, f"{noise}, profile {profile} (an earlier report)")
            section.figures = sorted((out / "figures").glob(f"*-{noise}-{profile}.png"))
            sections.append(section)
            continue
        figure = path.with_suffix(".png")
        caption = caption_file.read_text().strip().splitlines()[-1] if caption_file.exists() else ""
        section = csv_section(path, path.stem, caption)
        section.figures = [figure] if figure.exists() else []
        sections.append(section)
    return sections


def write_index(out: Path, sections: list[Section], store: str, written: list[Path]) -> Path:
    known = {Path(p).resolve() for p in written}
    page = render([*sections, *other_results(out, known)], Path(out), store)
    target = Path(out) / "index.html"
    atomic_write(target, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return target

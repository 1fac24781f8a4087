"""Report figures from MLflow runs (seaborn): learning curves, per-image Δ vs N2C, crop grid."""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from n2n_core.train.checkpoint import atomic_write  # noqa: E402

from .spread import paired_differences, resolved, two_level_ci  # noqa: E402
from .report_runs import trains_nothing  # noqa: E402

PNG_META = {"Software": None}  # no version stamp: the same store gives byte-identical files
# One colour per method variant in every figure of every report (curves, Δ vs N2C): keyed by the
# variant's name, so a method keeps its colour whatever runs a store holds. Families share a hue
# family (tab20's light/dark pairs); variants not listed get a stable colour from their name.
FIXED_COLOURS = dict(zip(
    ["n2c", "n2n", "n2v", "ssdn-known", "ssdn-constant", "ssdn-per-image", "ssdn-mu", "cbm3d", "noisy",
     "ssdn-known-diagonal", "ssdn-constant-diagonal", "ssdn-per-image-diagonal", "n2c-mono",
     "ssdn-known-mono", "ssdn-constant-mono", "ssdn-per-image-mono"],
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
     "#ff9896", "#c5b0d5", "#c49c94", "#aec7e8", "#e7969c", "#9edae5", "#dbdb8d"]))
for _network, (_dark, _light) in zip(  # the course networks: N2N dark, N2C light, one hue per network
        ["strided", "residual", "bn-dropout", "prelu", "scratch", "scratch-torch"],
        [("#393b79", "#9c9ede"), ("#637939", "#cedb9c"), ("#8c6d31", "#e7cb94"), ("#843c39", "#ad494a"),
         ("#7b4173", "#de9ed6"), ("#17becf", "#6baed6")]):
    FIXED_COLOURS[f"course-{_network}"], FIXED_COLOURS[f"course-{_network}-n2c"] = _dark, _light
_SPARE = ["#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d",
          "#31a354", "#756bb1", "#636363", "#6baed6", "#fd8d3c", "#74c476", "#9e9ac8", "#969696",
          "#5254a3", "#8ca252", "#bd9e39", "#ad494a", "#a55194"]


def method_colour(variant: str) -> str:
    """The variant's colour: fixed for the known ones, else picked by a hash of the name."""
    if variant in FIXED_COLOURS:
        return FIXED_COLOURS[variant]
    import hashlib

    return _SPARE[int(hashlib.sha256(variant.encode()).hexdigest(), 16) % len(_SPARE)]


def method_palette(variants) -> dict[str, str]:
    return {v: method_colour(v) for v in dict.fromkeys(variants)}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, metadata=PNG_META))
    plt.close(fig)
    return path


def why_no_curve(run, points: int) -> str | None:
    """Why a trained run has no validation curve (None when it has one, or trains nothing)."""
    if points:
        return None
    if trains_nothing(run):
        return None  # training-free (noisy, cbm3d): no curve expected
    if run.tags.get("training_history") == "none":
        return "reused a finished checkpoint, trained before it was logged"
    if str(run.params.get("train.validation_images")) == "0":
        return "trained without validation (train.validation_images=0)"
    return "no val_psnr logged"


def runs_without_curve(client, runs) -> dict[str, str]:
    """variant → why it has no validation curve, for every trained run that has none."""
    missing = {}
    for run in runs:
        reason = why_no_curve(run, len(client.get_metric_history(run.run_id, "val_psnr")))
        if reason:
            missing[run.variant] = reason
    return missing


def learning_curves(client, runs, noise: str, profile: str, out: Path) -> list[Path]:
    """Validation PSNR against images seen and against training seconds, every trained method.

    One row per training-crop size (validation uses crops of that size, so PSNRs of different rows
    are not comparable), methods in the order given (the grid's), legend beside each row. Trained
    runs without a curve are named under the figure with the reason (why_no_curve), never dropped
    silently; a figure is written even when no run has a curve.
    """
    rows, missing = [], {}
    for run in runs:
        psnr = client.get_metric_history(run.run_id, "val_psnr")
        reason = why_no_curve(run, len(psnr))
        if reason:
            missing[run.variant] = reason
        seconds = {m.step: m.value for m in client.get_metric_history(run.run_id, "train_seconds")}
        crop = run.params.get("train.patch_size", "?")
        rows += [{"method": run.variant, "crop": f"{crop}² crops", "images seen": m.step,
                  "validation PSNR (dB)": m.value, "training seconds": seconds.get(m.step, np.nan)}
                 for m in psnr]
    if not rows and not missing:
        return []
    note = ("no curve: " + "; ".join(f"{variant} ({why})" for variant, why in missing.items())) if missing else ""
    if not rows:
        fig, ax = plt.subplots(figsize=(13, 1.6))
        ax.axis("off")
        ax.text(0.01, 0.5, textwrap.fill(note, 150), fontsize=9, va="center")
        fig.suptitle(f"Validation PSNR, {noise}, profile {profile}")
        return [_save(fig, out / f"curves-{noise}-{profile}.png")]
    data = pd.DataFrame(rows)
    groups = list(dict.fromkeys(data["crop"]))  # first appearance: the grid's main methods first
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 3.6 * len(groups) + (0.5 if note else 0)),
                             squeeze=False)
    palette = method_palette(data["method"])
    for row, crop in zip(axes, groups):
        part = data[data["crop"] == crop].sort_values(["images seen"], kind="stable")
        order = list(dict.fromkeys(part["method"]))
        for ax, x in zip(row, ["images seen", "training seconds"]):
            sns.lineplot(data=part, x=x, y="validation PSNR (dB)", hue="method", hue_order=order,
                         palette=palette, marker="o", ax=ax, legend=ax is row[1])
        row[0].set_title(f"{crop}: per image seen")
        row[1].set_title(f"{crop}: per second of training (time-to-quality)")
        sns.move_legend(row[1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8, title="method")
    fig.suptitle(f"Validation PSNR, {noise}, profile {profile}")
    if note:
        fig.text(0.01, 0.005, textwrap.fill(note, 150), fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, 0.06 / len(groups) if note else 0, 1, 1))
    return [_save(fig, out / f"curves-{noise}-{profile}.png")]


def _artifact(client, run_id: str, name: str, folder: Path) -> Path | None:
    try:
        return Path(client.download_artifacts(run_id, name, str(folder)))
    except Exception:
        return None


def per_image_psnr(client, runs, dataset: str) -> dict[str, pd.Series]:
    """run id → PSNR per image id (mean over the image's repeats), from each run's psnr-<dataset>.csv
    artefact; a run without one is left out."""
    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            path = _artifact(client, run.run_id, f"psnr-{dataset}.csv", Path(tmp) / run.run_id)
            if path is not None:
                tables[run.run_id] = pd.read_csv(path).groupby("image_id").psnr.mean()
    return tables


def paired_rows(client, runs_by_variant: dict[str, dict[int, object]], reference: dict[int, object],
                dataset: str, skip: str | None = None) -> pd.DataFrame:
    """Per variant (in the order given): the mean per-image PSNR difference to `reference` on
    `dataset` over every seed and image, and its two-level bootstrap 95% interval.

    runs_by_variant: variant → {training seed: run}; reference: {seed: run} of the method compared
    against (paired seed by seed where it has the seed, else its mean over seeds; a variant that
    trains nothing against each of its seeds: spread.paired_differences). Columns method, seeds,
    seed_rows (rows of seeds the interval resamples), images (scored by both), mean, low, high,
    resolved; variants without per-image PSNRs (or `skip`) left out."""
    every = [run for runs in [*runs_by_variant.values(), reference] for run in runs.values()]
    tables = per_image_psnr(client, list({run.run_id: run for run in every}.values()), dataset)
    against = {seed: tables[run.run_id] for seed, run in reference.items() if run.run_id in tables}
    rows = []
    for variant, runs in runs_by_variant.items():
        mine = {seed: tables[run.run_id] for seed, run in runs.items() if run.run_id in tables}
        diffs = (paired_differences(mine, against, seed_free=all(map(trains_nothing, runs.values())))
                 if variant != skip else np.empty((0, 0)))
        if diffs.size == 0:
            continue
        low, high = two_level_ci(diffs)
        rows.append({"method": variant, "seeds": len(mine), "seed_rows": len(diffs), "images": diffs.shape[1],
                     "mean": float(diffs.mean()), "low": low, "high": high, "resolved": resolved(low, high)})
    return pd.DataFrame(rows, columns=["method", "seeds", "seed_rows", "images", "mean", "low", "high", "resolved"])


def vs_n2c_rows(client, runs_by_variant: dict[str, dict[int, object]], dataset: str) -> pd.DataFrame:
    """paired_rows against N2C's runs; empty without an N2C run or another variant to compare."""
    if "n2c" not in runs_by_variant:
        return paired_rows(client, {}, {}, dataset)
    return paired_rows(client, runs_by_variant, runs_by_variant["n2c"], dataset, skip="n2c")


def vs_n2c_figure(data: pd.DataFrame, noise, profile, dataset: str, out: Path) -> list[Path]:
    """Mean per-image PSNR difference to N2C with its 95% interval, per method (vs_n2c_rows)."""
    if data.empty:
        return []
    several = bool((data["seeds"] > 1).any())
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(data) + 1.5))
    for i, row in data.iterrows():
        label = row["method"] + (f" ({row['seeds']} seeds)" if row["seeds"] > 1 else "") \
            + (" (1 image)" if row["images"] < 2 else "")
        ax.errorbar([row["mean"]], [label], xerr=[[row["mean"] - row["low"]], [row["high"] - row["mean"]]],
                    fmt="o", capsize=4, color=method_colour(row["method"]))
    ax.axvline(0, color="grey", lw=1)
    ax.set_xlabel(f"PSNR − N2C (dB), per image on {dataset}\n95% "
                  + ("two-level bootstrap interval (seeds, then images)" if several else "bootstrap interval"))
    ax.set_title(f"{noise}, profile {profile}")
    fig.tight_layout()
    return [_save(fig, out / f"vs-n2c-{dataset}-{noise}-{profile}.png")]


def per_image_vs_n2c(client, runs, noise, profile, dataset: str, out: Path) -> list[Path]:
    """The figure of vs_n2c_rows for runs of one seed each."""
    rows = vs_n2c_rows(client, {run.variant: {0: run} for run in runs}, dataset)
    return vs_n2c_figure(rows, noise, profile, dataset, out)


def crop_grid(client, runs, noise, profile, dataset: str, out: Path) -> list[Path]:
    """noisy / each method (in the order given) / clean on the same crop of the first image.

    The `noisy` method's output is the noisy input, shown once as the first panel."""
    from PIL import Image

    panels = []
    with tempfile.TemporaryDirectory() as tmp:
        first = None
        for run in runs:
            if run.variant == "noisy":
                continue
            path = _artifact(client, run.run_id, f"crop-{dataset}-denoised.png", Path(tmp) / run.run_id)
            if path is None:
                continue
            first = first or run
            panels.append((run.variant, np.asarray(Image.open(path).convert("RGB"))))
        if first is None:
            return []
        ends = [(label, _artifact(client, first.run_id, f"crop-{dataset}-{label}.png", Path(tmp) / "ends"))
                for label in ("noisy", "clean")]
        ends = [(label, np.asarray(Image.open(p).convert("RGB"))) for label, p in ends if p is not None]
    panels = ends[:1] + panels + ends[1:]
    # rows of at most 5 panels; nearest-neighbour scaling keeps the pixels as the methods made them
    # (and the PNG small: smoothed noise does not compress)
    cols = min(5, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, image) in zip(axes.flat, panels):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"{dataset}, first image, {noise}, profile {profile}", fontsize=10)
    fig.tight_layout()
    return [_save(fig, out / f"crops-{dataset}-{noise}-{profile}.png")]


def all_figures(client, runs, noise, profile, sets, out: Path, vs_n2c: pd.DataFrame | None = None) -> list[Path]:
    """Curves, Δ vs N2C and crops of `runs` (one per variant); vs_n2c: the Δ rows when computed
    already (over several seeds: vs_n2c_rows), else from these runs."""
    written = learning_curves(client, runs, noise, profile, out)
    if sets:
        written += (per_image_vs_n2c(client, runs, noise, profile, sets[0], out) if vs_n2c is None
                    else vs_n2c_figure(vs_n2c, noise, profile, sets[0], out))
        written += crop_grid(client, runs, noise, profile, sets[0], out)
    return written

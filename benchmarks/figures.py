"""Report figures from MLflow runs (seaborn): learning curves, per-image Δ vs N2C, crop grid."""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from n2n_core.train.checkpoint import atomic_write  # noqa: E402

PNG_META = {"Software": None}  # no version stamp: the same store gives byte-identical files
BOOTSTRAP_SAMPLES = 2000


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, metadata=PNG_META))
    plt.close(fig)
    return path


def learning_curves(client, runs, noise: str, profile: str, out: Path) -> list[Path]:
    """Validation PSNR against images seen and against training seconds, every trained method.

    One row per training-crop size (validation uses crops of that size, so PSNRs of different rows
    are not comparable), methods in the order given (the grid's), legend beside each row.
    """
    rows = []
    for run in runs:
        psnr = client.get_metric_history(run.run_id, "val_psnr")
        seconds = {m.step: m.value for m in client.get_metric_history(run.run_id, "train_seconds")}
        crop = run.params.get("train.patch_size", "?")
        rows += [{"method": run.variant, "crop": f"{crop}² crops", "images seen": m.step,
                  "validation PSNR (dB)": m.value, "training seconds": seconds.get(m.step, np.nan)}
                 for m in psnr]
    if not rows:
        return []
    data = pd.DataFrame(rows)
    groups = list(dict.fromkeys(data["crop"]))  # first appearance: the grid's main methods first
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 3.6 * len(groups)), squeeze=False)
    for row, crop in zip(axes, groups):
        part = data[data["crop"] == crop].sort_values(["images seen"], kind="stable")
        order = list(dict.fromkeys(part["method"]))
        for ax, x in zip(row, ["images seen", "training seconds"]):
            sns.lineplot(data=part, x=x, y="validation PSNR (dB)", hue="method", hue_order=order,
                         marker="o", ax=ax, legend=ax is row[1])
        row[0].set_title(f"{crop}: per image seen")
        row[1].set_title(f"{crop}: per second of training (time-to-quality)")
        sns.move_legend(row[1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8, title="method")
    fig.suptitle(f"Validation PSNR, {noise}, profile {profile}")
    fig.tight_layout()
    return [_save(fig, out / f"curves-{noise}-{profile}.png")]


def bootstrap_ci(diffs: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of `diffs` (fixed seed: reproducible)."""
    rng = np.random.default_rng(seed)
    means = rng.choice(diffs, size=(samples, len(diffs)), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _artifact(client, run_id: str, name: str, folder: Path) -> Path | None:
    try:
        return Path(client.download_artifacts(run_id, name, str(folder)))
    except Exception:
        return None


def per_image_vs_n2c(client, runs, noise, profile, dataset: str, out: Path) -> list[Path]:
    """Mean per-image PSNR difference to N2C with a bootstrap 95% interval, per method."""
    with tempfile.TemporaryDirectory() as tmp:
        tables = {}
        for run in runs:
            path = _artifact(client, run.run_id, f"psnr-{dataset}.csv", Path(tmp) / run.run_id)
            if path is not None:
                tables[run.variant] = pd.read_csv(path).groupby("image_id").psnr.mean()
    if "n2c" not in tables or len(tables) < 2:
        return []
    rows = []
    for variant, per_image in tables.items():
        if variant == "n2c":
            continue
        diffs = (per_image - tables["n2c"]).dropna().to_numpy()
        low, high = bootstrap_ci(diffs)
        rows.append({"method": variant, "mean": diffs.mean(), "low": low, "high": high})
    data = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(data) + 1.5))
    ax.errorbar(data["mean"], data["method"], xerr=[data["mean"] - data["low"], data["high"] - data["mean"]],
                fmt="o", capsize=4)
    ax.axvline(0, color="grey", lw=1)
    ax.set_xlabel(f"PSNR − N2C (dB), per image on {dataset}; 95% bootstrap interval")
    ax.set_title(f"{noise}, profile {profile}")
    fig.tight_layout()
    return [_save(fig, out / f"vs-n2c-{dataset}-{noise}-{profile}.png")]


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


def all_figures(client, runs, noise, profile, sets, out: Path) -> list[Path]:
    written = learning_curves(client, runs, noise, profile, out)
    if sets:
        written += per_image_vs_n2c(client, runs, noise, profile, sets[0], out)
        written += crop_grid(client, runs, noise, profile, sets[0], out)
    return written

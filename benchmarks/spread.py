"""Spread over training seeds: mean ± standard deviation, and paired differences with a two-level
bootstrap interval (training seeds, then images within each seed).

At small budgets the training seed can move a method by more than the evaluation images do, so an
interval that resamples images alone is too narrow when several seeds were trained. The two-level
bootstrap resamples the seeds a method was trained with, then the images within each drawn seed,
and takes the mean of the per-image differences over both: with one seed it is the image bootstrap
the report always used (bootstrap_ci), with identical draws. docs/methods.md ("Seeds").

Pure functions of numbers and per-image tables; the report (report.py, figures.py) feeds them the
runs' logged metrics and per-image PSNR files from MLflow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 95  # percent: the intervals are the 2.5th and 97.5th percentiles of the resampled means


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n − 1 in the denominator: seeds are a sample of all
    seeds one could train with); no standard deviation for a single value."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), (float(array.std(ddof=1)) if len(array) > 1 else None)


def bootstrap_ci(diffs: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of `diffs` (fixed seed: reproducible)."""
    rng = np.random.default_rng(seed)
    means = rng.choice(diffs, size=(samples, len(diffs)), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def two_level_ci(diffs: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean of `diffs` (rows: training seeds, columns: the same images in each)
    from a two-level percentile bootstrap.

    Each resample draws as many seeds as there are rows, with replacement, then for each drawn
    seed as many images as there are columns, with replacement, and averages the drawn
    differences. The draws, in this order from one numpy Generator seeded with `seed`:
    seeds = rng.integers(0, k, size=(samples, k)), then images = rng.integers(0, n, size=(samples, k, n)).
    One row: bootstrap_ci of that row (the one-level interval, unchanged)."""
    diffs = np.atleast_2d(np.asarray(diffs, dtype=float))
    k, n = diffs.shape
    if k == 1:
        return bootstrap_ci(diffs[0], samples, seed)
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, k, size=(samples, k))
    images = rng.integers(0, n, size=(samples, k, n))
    means = diffs[seeds[:, :, None], images].mean(axis=(1, 2))  # every drawn seed weighs its n draws equally
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_differences(runs: dict[int, pd.Series], reference: dict[int, pd.Series],
                       seed_free: bool = False) -> np.ndarray:
    """Per-image PSNR differences of a method's runs against a reference's, one row per seed of
    `runs` (ascending), one column per image that every row has (image ids ascending).

    Each run (seed → PSNR per image id) is paired with the reference's run of the same training
    seed where the reference has one (same seed: same crop order and noise draws, so their
    difference carries less chance), else with the reference's per-image mean over its seeds.
    A seed-free method (one run of a method that trains nothing, so no training seed moves it) is
    set against every seed of the reference instead, a row each: the bootstrap then resamples the
    reference's seeds, whose spread is the whole seed spread of such a difference."""
    if not runs or not reference:
        return np.empty((0, 0))
    if seed_free and len(runs) == 1:
        (only,) = runs.values()
        rows = {seed: (only - psnr).dropna() for seed, psnr in sorted(reference.items())}
    else:
        reference_mean = pd.concat(list(reference.values()), axis=1).mean(axis=1)
        rows = {seed: (psnr - reference.get(seed, reference_mean)).dropna() for seed, psnr in sorted(runs.items())}
    common = sorted(set.intersection(*(set(row.index) for row in rows.values())))
    return np.array([row.loc[common].to_numpy() for row in rows.values()]).reshape(len(rows), len(common))


def paired_mean_difference(values: dict[int, float], reference: dict[int, float], seed_free: bool = False) -> float:
    """A method's mean (seed → value) minus a reference's under paired_differences' rule: each seed
    against the reference's value of the same seed where it has one, else against the reference's
    mean (a seed-free method: against the mean); so the centre of the bootstrap interval. With the
    same seeds on both sides it is the difference of the two means."""
    mean = float(np.mean(list(reference.values())))
    if seed_free and len(values) == 1:
        return float(next(iter(values.values())) - mean)
    return float(np.mean([value - reference.get(seed, mean) for seed, value in values.items()]))


def judged(seed_rows: int, several: bool, images: int = 2) -> bool:
    """Whether an interval may call a difference resolved or not: it rests on two images or more,
    and it covers the training seeds (two rows or more of paired_differences) or no row of its table
    has several (the one-seed report). An interval of one seed among rows of several resamples
    images alone, and one of a single image resamples nothing of the images: too narrow to judge."""
    return images > 1 and (seed_rows > 1 or not several)


def not_judged_reason(images: int) -> str:
    """Why `judged` said no, as the report prints it."""
    return "not judged (one image)" if images < 2 else "not judged (one seed)"


def resolved(low: float, high: float) -> bool:
    """A difference is resolved when its interval excludes 0."""
    return low > 0 or high < 0

"""Scoring sets whose noisy inputs are given (course32 validation), and the evaluator factory.

The course's `val_data.pkl` holds noisy inputs and clean targets; nothing is drawn. The
`PairedEvaluator` is the §8 Evaluator with its inputs replaced by the given noisy images: every
method still sees identical inputs, outputs are cropped and scored with psnr_uint8 against the
clean file, one evaluation per image. The recorded noise level is NaN (unknown).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..data.images import to_float
from ..data.train_stream import pad_reflect
from ..noise import NoisyBatch
from .protocol import EvalInput, Evaluator


@dataclass(frozen=True)
class GivenNoise:
    """Stands in for a noise model where the noisy images come with the data."""

    style: str = "given"
    variable: bool = False

    def sample(self, clean, rng):  # pragma: no cover - never called: inputs are given
        raise RuntimeError("noise is given with this data set; nothing is drawn")


@dataclass
class PairedEvaluator(Evaluator):
    """Evaluator over given (noisy, clean) pairs; center_crop is not supported, repeats is 1."""

    def __post_init__(self):
        self.noise, self.repeats, self.center_crop = GivenNoise(), 1, None

    def inputs(self) -> Iterator[EvalInput]:
        size = self.pad_to
        given = self.image_set.load_noisy()
        for image_id, clean, noisy in zip(self.image_ids(), self.clean_images(), given):
            padded = to_float(pad_reflect(noisy, size, size))[None]  # (1, 3, S, S)
            yield EvalInput(image_id, 0, NoisyBatch(padded, torch.full((1,), math.nan)),
                            clean.shape[1], clean.shape[2])


def make_evaluator(image_set, noise, seed: int = 0, repeats: int = 1, center_crop: int | None = None,
                   max_images: int | None = None) -> Evaluator:
    """The §8 Evaluator, or the PairedEvaluator for a set whose noisy inputs are given."""
    if getattr(image_set, "given_noisy", False):
        return PairedEvaluator(image_set, GivenNoise(), seed=seed, max_images=max_images)
    return Evaluator(image_set, noise, seed=seed, repeats=repeats, center_crop=center_crop,
                     max_images=max_images)

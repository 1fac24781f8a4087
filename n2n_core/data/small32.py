"""`small32`: a fixed, seeded evaluation set of 1,000 32×32 crops from the BSD300 test images.

It stands in for the course's own validation files (docs/methods.md §10) so the 32×32 benchmark runs
anywhere the BSD300 test set is. Crop i comes from source image i mod 100 (ten crops per image),
at a position drawn from `derive_seed("small32", i)`; the crops are the same on every machine and
in every run. The noise is the run's style, drawn per (crop, repeat) by the usual Evaluator (§8),
so numbers on small32 are *not* comparable with the course reports' (their corruption differs).
Training for the 32×32 networks uses 32² crops of bsd300-train through the ordinary crop stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..seeding import derive_seed, make_generator

SIZE = 32
COUNT = 1000
NAME = "small32"


@dataclass(frozen=True)
class Small32Set:
    """Duck-type twin of ImageSet for the Evaluator: name, image_ids(), load(), pad_to()."""

    source: object  # the bsd300 ImageSet the crops are cut from
    name: str = NAME
    default_repeats: int = 1

    @property
    def paths(self) -> tuple[Path, ...]:  # the source files (the grid's data digest reads these)
        return self.source.paths

    @property
    def sha256(self) -> tuple[str | None, ...]:
        return self.source.sha256

    def __len__(self) -> int:
        return COUNT

    def image_ids(self) -> list[str]:
        return [f"{NAME}-{i:04d}" for i in range(COUNT)]

    def crop_positions(self) -> list[tuple[str, int, int]]:
        """(source image id, top, left) of every crop, in order."""
        return list(_positions(self.source))

    def load(self) -> list[torch.Tensor]:
        """The 1,000 uint8 (3, 32, 32) crops (source images verified against their checksums)."""
        return list(_crops(self.source))

    def pad_to(self) -> int:
        return SIZE


def small32_set(source) -> Small32Set:
    """small32 cut from `source` (the resolved bsd300 test set)."""
    return Small32Set(source)


def _draw_positions(images: list[torch.Tensor], ids: list[str]) -> list[tuple[str, int, int]]:
    out = []
    for i in range(COUNT):
        k = i % len(images)
        _, h, w = images[k].shape
        rng = make_generator(derive_seed(NAME, i))
        top = int(torch.randint(h - SIZE + 1, (1,), generator=rng))
        left = int(torch.randint(w - SIZE + 1, (1,), generator=rng))
        out.append((ids[k], top, left))
    return out


# keyed on the (frozen, hashable) source set: one decode per process, however often a run scores
@lru_cache(maxsize=4)
def _positions(source) -> tuple[tuple[str, int, int], ...]:
    return tuple(_draw_positions(source.load(), source.image_ids()))


@lru_cache(maxsize=4)
def _crops(source) -> tuple[torch.Tensor, ...]:
    images = dict(zip(source.image_ids(), source.load()))
    return tuple(images[k][:, t : t + SIZE, l : l + SIZE].clone() for k, t, l in _positions(source))

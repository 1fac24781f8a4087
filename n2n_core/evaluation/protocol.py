"""The evaluation protocol of docs/methods.md §8: pad → seeded noise per (image, repeat) → denoise → crop → PSNR.

Every method sees the very same noisy inputs: the noise for (set, image, repeat) comes from
`derive_seed(seed, set, image_id, repeat)` and is drawn on the CPU, whatever device denoises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..data.images import to_float
from ..data.sets import ImageSet
from ..data.train_stream import pad_reflect
from ..noise import NoiseModel, NoisyBatch
from ..seeding import derive_seed, make_generator
from .psnr import CONVENTION_UINT8, psnr_uint8


@dataclass(frozen=True)
class EvalInput:
    """One noisy evaluation input: padded to the set's common size; crop back to (height, width)."""

    image_id: str
    repeat: int
    noisy: NoisyBatch  # (1, C, S, S) on the CPU, S the set's common multiple of 32, C = data.channels
    height: int
    width: int


@dataclass(frozen=True)
class EvalRecord:
    image_id: str
    repeat: int
    psnr: float
    level: float  # the noise level drawn for this evaluation


@dataclass(frozen=True)
class EvalResult:
    """Per-(image, repeat) PSNRs and how they were obtained."""

    dataset: str
    noise: str
    repeats: int
    pad_to: int
    records: tuple[EvalRecord, ...]
    center_crop: int | None = None
    convention: str = CONVENTION_UINT8
    seconds: float | None = None  # wall time of the whole scoring, when the caller measured it
    flops_per_evaluation: float | None = None  # counted FLOPs of one evaluation, when counted

    @property
    def n_evaluations(self) -> int:
        return len(self.records)

    @property
    def psnr_mean(self) -> float:
        return math.fsum(r.psnr for r in self.records) / len(self.records)

    def per_image(self) -> dict[str, float]:
        """Mean PSNR per image over its repeats."""
        sums: dict[str, list[float]] = {}
        for r in self.records:
            sums.setdefault(r.image_id, []).append(r.psnr)
        return {k: math.fsum(v) / len(v) for k, v in sums.items()}

    def summary(self) -> dict:
        return {
            "dataset": self.dataset,
            "noise": self.noise,
            "psnr_mean": self.psnr_mean,
            "n_evaluations": self.n_evaluations,
            "n_images": len(self.per_image()),
            "repeats": self.repeats,
            "convention": self.convention,
            "pad_to": self.pad_to,
            "center_crop": self.center_crop,
        }


# A denoiser maps a chunk of inputs to one (C, ≥h, ≥w) or (1, C, ≥h, ≥w) output each, in [0, 1]
# scale (values outside are fine: quantisation clips). Learned methods get chunks of one;
# CBM3D takes larger chunks to run images in parallel.
Denoiser = Callable[[Sequence[EvalInput]], Sequence[torch.Tensor]]


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Central size×size crop of (C, H, W) (sides smaller than size are kept whole)."""
    _, h, w = image.shape
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[:, top : top + size, left : left + size]


@dataclass
class Evaluator:
    """Score any denoiser on one image set with the §8 protocol."""

    image_set: ImageSet
    noise: NoiseModel
    seed: int = 0
    repeats: int = 1
    center_crop: int | None = None  # smoke-sized profiles only; stated in every caption
    max_images: int | None = None
    _clean: list[torch.Tensor] = field(default_factory=list, repr=False)

    def clean_images(self) -> list[torch.Tensor]:
        """The uint8 (C, H, W) reference images (C = the set's channels), after the optional centre crop."""
        if not self._clean:
            images = self.image_set.load()[: self.max_images]
            if self.center_crop is not None:
                images = [center_crop(img, self.center_crop) for img in images]
            self._clean = images
        return self._clean

    def image_ids(self) -> list[str]:
        return self.image_set.image_ids()[: len(self.clean_images())]

    @property
    def pad_to(self) -> int:
        return 32 * math.ceil(max(max(img.shape[1:]) for img in self.clean_images()) / 32)

    def noise_seed(self, image_id: str, repeat: int) -> int:
        return derive_seed(self.seed, self.image_set.name, image_id, repeat)

    def inputs(self) -> Iterator[EvalInput]:
        """Deterministic noisy inputs in (image, repeat) order."""
        size = self.pad_to
        for image_id, clean in zip(self.image_ids(), self.clean_images()):
            # noise is added after padding, as in the reference code (docs/methods.md §8)
            padded = to_float(pad_reflect(clean, size, size))[None]  # (1, C, S, S)
            for repeat in range(self.repeats):
                rng = make_generator(self.noise_seed(image_id, repeat))
                noisy = self.noise.sample(padded, rng)
                yield EvalInput(image_id, repeat, noisy, clean.shape[1], clean.shape[2])

    def run(self, denoise: Denoiser, chunk: int = 1, progress: Callable | None = None) -> EvalResult:
        """Denoise every input (in chunks), crop back, and score with psnr_uint8."""
        clean_by_id = dict(zip(self.image_ids(), self.clean_images()))
        records: list[EvalRecord] = []
        pending: list[EvalInput] = []

        def flush() -> None:
            outputs = denoise(pending)
            for item, out in zip(pending, outputs, strict=True):
                out = out.detach().to("cpu")
                out = out[0] if out.dim() == 4 else out
                cropped = out[:, : item.height, : item.width]
                score = psnr_uint8(cropped, clean_by_id[item.image_id])
                records.append(EvalRecord(item.image_id, item.repeat, score, float(item.noisy.level[0])))
                if progress is not None:
                    progress(1)
            pending.clear()

        for item in self.inputs():
            pending.append(item)
            if len(pending) >= chunk:
                flush()
        if pending:
            flush()
        return EvalResult(
            dataset=self.image_set.name,
            noise=self.noise.style,
            repeats=self.repeats,
            pad_to=self.pad_to,
            records=tuple(records),
            center_crop=self.center_crop,
        )

    @property
    def n_evaluations(self) -> int:
        return len(self.clean_images()) * self.repeats

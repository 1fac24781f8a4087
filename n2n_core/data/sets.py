"""Registry of image sets: kodak24, bsd300, bsd300-train, set14, imagenet-val, folder:PATH and noisy:SET."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from .images import IMAGE_SUFFIXES, read_image_cached, set_channels
from .sources import files_under, sha256_file

# name → (checksums kept, folder under the data dir, default evaluation repeats of the paper, §8)
REGISTERED: dict[str, tuple[bool, str, int]] = {
    "kodak24": (True, "kodak24", 10),
    "bsd300": (True, "bsd300/test", 3),
    "bsd300-train": (True, "bsd300/train", 1),
    "set14": (False, "set14", 20),  # download only; no checksums kept (see sources.py)
    "imagenet-val": (False, "imagenet-val", 1),  # a folder the user provides: $N2N_IMAGENET
}
SET_FORMS = ", ".join(REGISTERED) + ", small32, folder:PATH, course32:DIR, noisy:SET (training only)"
NOISY_PREFIX = "noisy:"  # train.train_set = "noisy:kodak24": the evaluator's noisy inputs of kodak24
IMAGENET_SIDES = (256, 512)  # the paper's training set: ILSVRC2012 val images with both sides here


@dataclass(frozen=True)
class ImageSet:
    """A named, ordered list of image files, optionally with the sha256 each must have."""

    name: str
    paths: tuple[Path, ...]
    sha256: tuple[str | None, ...]
    default_repeats: int = 1
    channels: int = 3  # what load() returns: 3 RGB, 1 greyscale (images.set_channels)

    def __len__(self) -> int:
        return len(self.paths)

    def image_ids(self) -> list[str]:
        return [p.stem for p in self.paths]

    def load(self) -> list[torch.Tensor]:
        """Verify (where a checksum is known) and decode every image to uint8 (channels, H, W).

        The one place where images enter training crops, validation and evaluation, so the
        greyscale conversion (data.channels) is applied here and nowhere else.
        """
        return [set_channels(_verified_image(p, h), self.channels) for p, h in zip(self.paths, self.sha256)]

    def pad_to(self) -> int:
        """The common square size, a multiple of 32, that every image fits (Kodak 768, BSD 512)."""
        biggest = max(max(img.shape[1:]) for img in self.load())
        return 32 * math.ceil(biggest / 32)


@dataclass(frozen=True)
class NoisyEvalSet:
    """`noisy:SET`: the noisy inputs the evaluator scores on SET, as a training set (its clean
    images never leave this object: `noisy_images` is all a training stream gets)."""

    name: str  # noisy:SET
    scored: ImageSet  # SET, whose clean images the evaluator draws the noisy inputs from

    @property
    def paths(self) -> tuple[Path, ...]:  # what the run's data digest hashes (benchmarks/jobs.py)
        return self.scored.paths

    @property
    def sha256(self) -> tuple[str | None, ...]:
        return self.scored.sha256

    def __len__(self) -> int:
        return len(self.scored)

    def image_ids(self) -> list[str]:
        return self.scored.image_ids()

    def load(self) -> list[torch.Tensor]:
        raise ConfigError(f"{self.name} is a training set only (the evaluator's noisy inputs); "
                          f"score or validate on {self.scored.name} instead")

    def noisy_images(self, noise, seed: int, center_crop: int | None,
                     max_images: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(noisy float32 (C, h, w), level 0-dim) per image: repeat 0 of exactly the inputs that
        make_evaluator(SET, noise, seed, center_crop, max_images) scores, cut back to the image
        (the evaluator pads before drawing; the padding is not part of the image)."""
        from ..evaluation.paired import make_evaluator  # evaluation imports this module

        evaluator = make_evaluator(self.scored, noise, seed=seed, repeats=1, center_crop=center_crop,
                                   max_images=max_images)
        return [(item.noisy.noisy[0, :, : item.height, : item.width].clone(), item.noisy.level[0].clone())
                for item in evaluator.inputs() if item.repeat == 0]


def _verified_image(path: Path, sha256: str | None) -> torch.Tensor:
    if sha256 is not None:
        if not path.is_file():
            raise DataError(f"image {path} is missing; run 'n2n-bench download <set>' or set N2N_DATA")
        stat = path.stat()
        # keyed on (mtime, size) like read_image_cached: a file changed since it was verified is
        # hashed again, so a long-lived process never trusts a stale check
        _check_hash(str(path), stat.st_mtime_ns, stat.st_size, sha256)
    return read_image_cached(path)


@lru_cache(maxsize=4096)
def _check_hash(path: str, mtime_ns: int, size: int, expected: str) -> None:
    actual = sha256_file(Path(path))
    if actual != expected:
        raise DataError(
            f"image {path} is corrupt (sha256 {actual[:12]}…, expected {expected[:12]}…); "
            "delete it and run 'n2n-bench download <set>' again"
        )


def resolve_set(name: str, data_dir: Path, channels: int = 3) -> ImageSet:
    """Build the ImageSet for a registered name or 'folder:PATH'; fails early with the fix.

    `channels` (data.channels: 3 RGB, 1 greyscale) is what its `load()` returns.
    Two 32×32 sets answer the same questions by duck typing: 'small32' (1,000 seeded crops of the
    BSD300 test images, data/small32.py) and 'course32:DIR' (the course's files, data/course32.py).
    'noisy:SET' (NoisyEvalSet) is a training set only: the evaluator's noisy inputs of SET.
    """
    if name.startswith(NOISY_PREFIX):
        scored = name[len(NOISY_PREFIX):]
        if not scored or scored.startswith(NOISY_PREFIX):
            raise ConfigError(f"data set {name!r}: name the evaluation set after noisy:, e.g. noisy:kodak24")
        return NoisyEvalSet(name, resolve_set(scored, data_dir, channels))
    if name == "small32":
        from .small32 import small32_set

        return small32_set(resolve_set("bsd300", data_dir, channels))
    if name.startswith("course32:"):
        if channels != 3:
            raise ConfigError(f"{name} holds RGB noisy pairs; it cannot be read with data.channels={channels}")
        from .course32 import course32_set

        return course32_set(name)
    return dataclasses.replace(_resolve_files(name, data_dir), channels=channels)


def _resolve_files(name: str, data_dir: Path) -> ImageSet:
    """The registered or folder set `name` as RGB files."""
    if name.startswith("folder:"):
        return _folder_set(name, Path(name.split(":", 1)[1]).expanduser(), filter_sides=None)
    if name not in REGISTERED:
        hint = f" (a folder of images is named folder:{name})" if Path(name).expanduser().is_dir() else ""
        raise ConfigError(f"unknown data set {name!r}{hint}; expected one of: {SET_FORMS}")
    verified, folder, repeats = REGISTERED[name]
    if name == "imagenet-val":
        root = Path(os.environ.get("N2N_IMAGENET", data_dir / folder))
        return _folder_set(name, root, filter_sides=IMAGENET_SIDES)
    _require_data_dir(data_dir, name)
    if not verified:
        return _folder_set(name, data_dir / folder, filter_sides=None, repeats=repeats)
    files = files_under(folder)
    paths = tuple(data_dir / rel for rel in files)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"data set {name}: {len(missing)} of {len(paths)} images missing (first: {missing[0]}); "
            f"run 'n2n-bench download {name}' or point N2N_DATA at a directory that has them"
        )
    return ImageSet(name, paths, tuple(files.values()), repeats)


def _require_data_dir(data_dir: Path, name: str) -> None:
    if not data_dir.is_dir():
        raise DataError(
            f"data directory {data_dir} does not exist; set N2N_DATA to the folder holding the "
            f"data sets or run 'n2n-bench download {name}'"
        )


def _folder_set(name: str, root: Path, filter_sides, repeats: int = 1) -> ImageSet:
    if not root.is_dir():
        if name == "imagenet-val":
            hint = "set N2N_IMAGENET to it"
        elif name in REGISTERED:
            hint = f"run 'n2n-bench download {name}' or set N2N_DATA"
        else:
            hint = "check the path"
        raise DataError(f"data set {name}: folder {root} does not exist; {hint}")
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if filter_sides is not None:
        paths = [p for p in paths if _sides_within(p, *filter_sides)]
    if not paths:
        raise DataError(
            f"data set {name}: no images ({', '.join(IMAGE_SUFFIXES)}) in {root}; "
            "point it at a folder of images"
        )
    return ImageSet(name, tuple(paths), (None,) * len(paths), repeats)


def _sides_within(path: Path, low: int, high: int) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
    except OSError:
        return True  # keep it, so reading it later gives the clear unreadable-image error
    return low <= width <= high and low <= height <= high

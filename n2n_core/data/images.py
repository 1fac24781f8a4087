"""Read an image file into a uint8 (3, H, W) tensor, with errors that name the file and the fix;
convert it to the run's channel count (`set_channels`)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import platformdirs
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp")


def default_data_dir() -> Path:
    """$N2N_DATA if set, else the per-user cache folder (e.g. ~/.cache/n2n-bench/data)."""
    env = os.environ.get("N2N_DATA")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("n2n-bench")) / "data"


def read_image(path: Path) -> torch.Tensor:
    """Decode `path` to a uint8 tensor (3, H, W).

    Greyscale (and palette) images are converted to RGB by repeating the channel: the noise
    models are defined on RGB. Images with an alpha channel are refused, because dropping
    transparency silently would score pixels nobody meant to show.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} is missing; run 'n2n-bench download <set>' or check N2N_DATA")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
                raise DataError(
                    f"image {path} has an alpha channel ({mode}); flatten it to RGB first "
                    "(e.g. PIL: Image.open(p).convert('RGB')) or remove it from the folder"
                )
            if mode != "RGB":
                img = img.convert("RGB")
            array = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"image {path} is unreadable or truncated ({err}); delete it and run "
            "'n2n-bench download <set>' again, or replace the file"
        ) from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


@lru_cache(maxsize=4096)
def _cached(path: str, mtime_ns: int, size: int) -> torch.Tensor:
    return read_image(Path(path))


def read_image_cached(path: Path) -> torch.Tensor:
    """read_image, memoised per (path, mtime, size) so a stream never decodes a file twice."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return read_image(path)  # raises the clear error
    return _cached(str(path), stat.st_mtime_ns, stat.st_size)


def set_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """(C, H, W) image with C in {1, 3} → `channels` (1 or 3) channels, keeping the dtype.

    As the released SSDN code's `set_color_channels` (NVlabs/selfsupervised-denoising,
    `selfsupervised_denoising.py`): an image that already has `channels` is returned as is; one
    channel is repeated to three; three become their mean (R + G + B)/3, rounded to the nearest
    integer for integer images (the mean of three integers is never exactly half-way, so the
    rounding rule does not matter).
    """
    if channels not in (1, 3) or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"set_channels converts (1 or 3, H, W) images to 1 or 3 channels, got shape "
            f"{tuple(image.shape)} and channels={channels}"
        )
    if image.shape[0] == channels:
        return image
    if image.shape[0] == 1:
        return image.repeat(3, 1, 1)
    if image.dtype.is_floating_point:
        return image.mean(dim=0, keepdim=True)
    mean = image.to(torch.float64).mean(dim=0, keepdim=True)
    return torch.round(mean).to(image.dtype)


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 → float32 in [0, 1] as x / 255 (no mean offset, docs/methods.md §1)."""
    return image.to(torch.float32) / 255.0

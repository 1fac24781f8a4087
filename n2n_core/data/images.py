"""Read an image file into a uint8 (3, H, W) tensor, with errors that name the file and the fix;
convert it to the run's channel count (`set_channels`).

Only 8-bit images are read for training and scoring: the evaluation protocol scores
uint8-quantised images (docs/methods.md §8), so a 16-bit PNG or a float TIFF squeezed into 8 bits
would be scored as something it is not (Pillow clips 16-bit greyscale to white and float images to
black). They are refused with one line; `bit_depth` tells the depth, and `read_image_any_depth`
keeps it (8 or 16 bits) for `n2n-bench denoise`, which writes outputs at the input's depth.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import platformdirs
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp")


def default_data_dir() -> Path:
    """$N2N_DATA if set, else the per-user cache folder (e.g. ~/.cache/n2n-bench/data)."""
    env = os.environ.get("N2N_DATA")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("n2n-bench")) / "data"


def bit_depth(img: Image.Image) -> int:
    """Bits per channel of an opened (not yet loaded) Pillow image: 1, 8, 16 or 32.

    Pillow opens 16-bit RGB PNGs and TIFFs as mode RGB, already cut to 8 bits while decoding; only
    the raw mode of the file's tiles still says 16, so this must be asked before `load()`.
    """
    if img.mode == "1":
        return 1
    if img.mode.startswith("I;16"):
        return 16
    if img.mode in ("I", "F"):
        return 32
    for tile in getattr(img, "tile", None) or ():
        args = tile.args if hasattr(tile, "args") else tile[3]
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str) and (";16" in raw or ";32" in raw):
            return 16 if ";16" in raw else 32
    return 8


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
            depth = bit_depth(img)
            if depth > 8:
                raise DataError(
                    f"image {path} has {depth} bits per channel ({img.mode}); the benchmark scores 8-bit "
                    "images (PSNR on uint8, docs/methods.md §8): convert it to 8 bits first or remove it "
                    "from the folder"
                )
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
    except Image.DecompressionBombError as err:  # more pixels than Pillow will decode: a hostile file
        raise DataError(
            f"image {path} is refused as a decompression bomb ({err}); remove it from the folder, or "
            "raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"image {path} is unreadable or truncated ({err}); delete it and run "
            "'n2n-bench download <set>' again, or replace the file"
        ) from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _refuse_alpha(path: Path, channels: int) -> None:
    if channels in (2, 4):
        raise DataError(f"image {path} has an alpha channel; flatten it first (e.g. PIL: "
                        "Image.open(p).convert('RGB')) or leave it out")


def _png_bit_depth(path: Path) -> int:
    """The PNG header's bit depth (byte 24: 8 signature + 8 chunk head + 8 width/height)."""
    with open(path, "rb") as handle:
        head = handle.read(25)
    return head[24] if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" else 8


def read_image_any_depth(path: Path) -> np.ndarray:
    """Decode `path` at its real depth into (H, W, 1 or 3) uint8 or uint16 pixels.

    16-bit PNGs are read with pypng and TIFFs with tifffile (Pillow cuts 16-bit colour to 8 bits,
    see bit_depth); everything else with Pillow, refusing what it would cut. Alpha is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist; check the path")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            array = np.asarray(tifffile.imread(path))
        elif suffix == ".png" and _png_bit_depth(path) == 16:
            import png

            width, height, rows, info = png.Reader(filename=str(path)).asDirect()
            array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, info["planes"])
        else:
            with Image.open(path) as img:
                depth = bit_depth(img)
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    _refuse_alpha(path, 4)
                if depth > 8 and not img.mode.startswith("I;16"):
                    raise DataError(f"image {path} has {depth} bits per channel ({img.mode}), which this "
                                    "format cannot be read at in full; save it as a 16-bit PNG or TIFF")
                img.load()
                if img.mode.startswith("I;16"):
                    array = np.asarray(img, dtype=np.uint16)
                else:
                    array = np.asarray(img.convert("L" if img.mode in ("1", "L") else "RGB"), dtype=np.uint8)
    except DataError:
        raise
    except Exception as err:  # Pillow, pypng and tifffile each have their own error types
        raise DataError(f"image {path} is unreadable ({first_line(err)}); pass a PNG, JPEG or TIFF file") from None
    array = array[..., None] if array.ndim == 2 else array
    if array.ndim != 3:
        raise DataError(f"image {path} has shape {array.shape}; expected one 2-D image (a multi-page TIFF "
                        "is not supported: save one page per file)")
    _refuse_alpha(path, array.shape[-1])
    if array.shape[-1] not in (1, 3) or array.dtype not in (np.uint8, np.uint16):
        raise DataError(f"image {path} holds {array.shape[-1]} channels of {array.dtype}; expected 1 or 3 "
                        "channels of 8- or 16-bit integers")
    return np.ascontiguousarray(array)


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

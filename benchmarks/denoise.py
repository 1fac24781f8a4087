"""`n2n-bench denoise`: denoise your own noisy images with a trained run or a training-free method.

Each image goes through the evaluator's own denoiser (`scoring.make_denoiser`), so a blind-spot
network is tiled in its training crops exactly as when it is scored, and what a method estimates
per image (SSDN's noise level) comes from the whole padded image. The image is reflect-padded at
bottom/right to a square whose side is the next multiple of 32 of its longer side (what the
evaluation protocol does for a set of one image, docs/methods.md §8) and cropped back.

Files are read at their real bit depth by n2n_core/data/images.read_image_any_depth: 8-bit
PNG/JPEG/BMP/WebP with Pillow, 16-bit PNG with pypng (Pillow reads 16-bit colour PNGs as 8-bit),
TIFF with tifffile. Pixels are scaled to [0, 1] by
the depth's maximum (255 or 65535) and the output is quantised back to the same depth as
clip(floor(max·v + 0.5), 0, max). Output formats: a PNG or TIFF keeps its format; anything else
(JPEG included, whose re-compression would add artefacts back) is written as a lossless PNG of
the same stem. Greyscale stays greyscale (an RGB network sees the grey value in all three channels
and its output's channel mean is kept); a greyscale network (`data.channels=1`) gets an RGB image's
channel mean and writes greyscale. Images with an alpha channel are refused.

The noise level `--level` is in the style's own units: Gaussian standard deviation on the 0–255
scale of the full range (whatever the bit depth), Poisson λ, impulse percent. Without it, a method
that estimates the level (`Method.image_estimate`, e.g. SSDN with sigma constant or per_image)
estimates it per image and the estimate is printed; otherwise a fixed-level style's level is used
(gaussian25: 25) and a variable-level style needs `--level`. A training-free `--method` given
`--level` without `--noise` denoises Gaussian noise of that level (`--level 25`: gaussian25).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from n2n_core.config import ExperimentConfig
from n2n_core.data.images import IMAGE_SUFFIXES, read_image_any_depth, set_channels
from n2n_core.data.train_stream import pad_reflect
from n2n_core.device import resolve_device
from n2n_core.errors import CheckpointError, ConfigError, DataError, first_line
from n2n_core.evaluation.protocol import EvalInput
from n2n_core.methods import Method, build_method
from n2n_core.noise import NoisyBatch, parse_style
from n2n_core.train.checkpoint import atomic_write

from .scoring import load_trained, make_denoiser

KEEP_FORMAT = {".png": ".png", ".tif": ".tif", ".tiff": ".tiff"}  # else written as .png
UNITS = {"gaussian": "std on the 0-255 scale", "poisson": "λ", "impulse": "% of pixels"}


@dataclass(frozen=True)
class Picture:
    """An image as read from disk: (H, W, C) uint8 or uint16 pixels, C in {1, 3}."""

    pixels: np.ndarray

    @property
    def max_value(self) -> int:
        return int(np.iinfo(self.pixels.dtype).max)

    @property
    def bit_depth(self) -> int:
        return 8 * self.pixels.dtype.itemsize


def read_picture(path: Path) -> Picture:
    """The image at its real depth (n2n_core/data/images.read_image_any_depth)."""
    return Picture(read_image_any_depth(path))


def write_image_any_depth(path: Path, pixels: np.ndarray) -> None:
    """Write (H, W, 1 or 3) uint8/uint16 pixels as PNG or TIFF (by suffix), atomically."""
    path = Path(path)
    grey = pixels.shape[-1] == 1

    def write(tmp: Path) -> None:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, pixels[..., 0] if grey else pixels, photometric="minisblack" if grey else "rgb")
        elif pixels.dtype == np.uint16:
            import png

            h, w, c = pixels.shape
            writer = png.Writer(width=w, height=h, greyscale=grey, bitdepth=16)
            with open(tmp, "wb") as handle:
                writer.write(handle, pixels.reshape(h, w * c).tolist())
        else:
            from PIL import Image

            Image.fromarray(pixels[..., 0] if grey else pixels).save(tmp, format="PNG")

    atomic_write(path, write)


def to_unit(picture: Picture) -> torch.Tensor:
    """(C, H, W) float32 in [0, 1]: pixels / (2^depth − 1)."""
    return torch.from_numpy(picture.pixels.astype(np.float32) / picture.max_value).permute(2, 0, 1).contiguous()


def quantize(image: torch.Tensor, max_value: int) -> np.ndarray:
    """(C, H, W) float in [0, 1] → (H, W, C) integers clip(floor(max·v + 0.5), 0, max)."""
    dtype = np.uint8 if max_value == 255 else np.uint16
    values = torch.clamp(torch.floor(image.to(torch.float64) * max_value + 0.5), 0, max_value)
    return values.permute(1, 2, 0).numpy().astype(dtype)


def padded_input(image: torch.Tensor, level: float, image_id: str = "image") -> EvalInput:
    """The evaluator's input for one (C, H, W) float image: reflect-padded to a square of side
    32·ceil(max(H, W)/32) at bottom/right, with `level` (model units) as the noise level."""
    _, h, w = image.shape
    side = 32 * math.ceil(max(h, w) / 32)
    padded = pad_reflect(image, side, side)[None]
    return EvalInput(image_id, 0, NoisyBatch(padded, torch.tensor([float(level)], dtype=torch.float32)), h, w)


def collect_inputs(inputs: Iterable[Path]) -> list[Path]:
    """Files as given, folders as their image files (sorted, not recursive)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {item} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"input {item} does not exist; pass image files or folders of images")
    return files


def output_path(source: Path, out_dir: Path) -> Path:
    return out_dir / (source.stem + KEEP_FORMAT.get(source.suffix.lower(), ".png"))


def plan_outputs(files: list[Path], out_dir: Path) -> list[Path]:
    """Where each file's output goes; refuses two inputs with one output name, or overwriting an input."""
    targets = [output_path(f, out_dir) for f in files]
    seen: dict[Path, Path] = {}
    for source, target in zip(files, targets):
        if target.resolve() == source.resolve():
            raise ConfigError(f"--out {out_dir} would overwrite the input {source}; choose another folder")
        if target in seen:
            raise ConfigError(f"inputs {seen[target]} and {source} would both be written to {target}; "
                              "denoise them into different --out folders")
        seen[target] = source
    return targets


@dataclass
class Loaded:
    """What denoises: a method, its network (None when training-free) and the run's configuration."""

    method: Method
    model: object
    cfg: ExperimentConfig


def checkpoint_of_run(run_id: str, tracking_uri: str | None, scratch: Path) -> Path:
    """The checkpoint of an MLflow run: in its run folder (tag run_dir) when that still exists,
    else downloaded from the run's artefacts into `scratch`."""
    from .mlflow_tracker import TrackingError, open_store

    client, _ = open_store(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as err:
        raise TrackingError(f"no run {run_id!r} in the tracking store ({first_line(err, 120)}); copy the run "
                            "id from `mlflow ui` or pass --tracking-uri of the store that has it") from None
    folder = run.data.tags.get("run_dir")
    if folder and (Path(folder) / "checkpoint.pt").is_file():
        return Path(folder) / "checkpoint.pt"
    try:
        return Path(client.download_artifacts(run_id, "checkpoint.pt", str(scratch)))
    except Exception:
        method = run.data.tags.get("method", "?")
        raise CheckpointError(
            f"run {run_id} ({run.data.tags.get('variant', method)}) has no checkpoint.pt; a training-free "
            f"method has none: use --method {method} --noise {run.data.tags.get('noise', 'gaussian25')}"
        ) from None


def bare_level_noise(method: str, level: float | None) -> str:
    """The noise style of a training-free method given --level but no --noise: Gaussian noise of
    that standard deviation on the 0-255 scale (--level 25 → gaussian25), the noise CBM3D is for."""
    if level is None:
        raise ConfigError(f"--method {method} needs --noise (e.g. --noise gaussian25 or poisson30) or a "
                          "Gaussian --level (std on the 0-255 scale, e.g. --level 25)")
    if not level > 0:
        raise ConfigError(f"--level {level:g} without --noise is a Gaussian std on the 0-255 scale and must be "
                          "> 0, e.g. --level 25")
    return "gaussian" + np.format_float_positional(level, trim="-")


def load_denoiser(*, checkpoint: Path | None, run: str | None, method: str | None, noise: str | None,
                  tracking_uri: str | None, device: torch.device, scratch: Path,
                  level: float | None = None) -> Loaded:
    """A trained run's method and network (--checkpoint or --run), or a training-free method
    (its noise from --noise, else Gaussian at --level: bare_level_noise)."""
    if sum(x is not None for x in (checkpoint, run, method)) != 1:
        raise ConfigError("pass exactly one of --checkpoint PATH, --run RUN_ID or --method NAME "
                          "(a training-free method such as cbm3d, with --noise or a Gaussian --level)")
    if method is not None:
        from .compose import compose_config

        noise = noise if noise is not None else bare_level_noise(method, level)
        cfg = compose_config("evaluate", method, noise)
        built = build_method(cfg.method, parse_style(noise), cfg.data.channels, cfg.method_source)
        if built.trainable:
            raise ConfigError(f"method {method!r} must be trained first; pass --checkpoint or --run")
        return Loaded(built, None, cfg)
    if run is not None:
        checkpoint = checkpoint_of_run(run, tracking_uri, scratch)
    cfg, built, model = load_trained(Path(checkpoint), device)
    if noise is not None and parse_style(noise).style != parse_style(cfg.noise).style:
        built = build_method(cfg.method, parse_style(noise), cfg.data.channels, cfg.method_source)
        cfg = cfg.model_copy(update={"noise": parse_style(noise).style})
    return Loaded(built, model, cfg)


def level_in_model_units(noise_style: str, level: float) -> float:
    """--level in the style's units (0–255 std, λ, percent) → the noise model's units."""
    model = parse_style(noise_style)
    if model.kind == "poisson" and level <= 0:
        raise ConfigError(f"--level {level:g}: Poisson λ must be > 0")
    if model.kind == "impulse" and not 0 <= level <= 100:
        raise ConfigError(f"--level {level:g}: an impulse level is a percentage in [0, 100]")
    if level < 0:
        raise ConfigError(f"--level {level:g} must be ≥ 0")
    return level * model.scale


def denoise_picture(loaded: Loaded, picture: Picture, level: float | None, device: torch.device,
                    image_id: str = "image") -> tuple[np.ndarray, float | None, str]:
    """(output pixels at the input's depth, level used in the style's units, 'given' | 'estimated'
    | 'training level')."""
    cfg, method = loaded.cfg, loaded.method
    style = parse_style(cfg.noise)
    image = to_unit(picture)
    input_channels = image.shape[0]
    image = set_channels(image, cfg.data.channels)
    given = None if level is None else level_in_model_units(cfg.noise, level)
    probe = padded_input(image, style.low if given is None else given, image_id)
    with torch.inference_mode():
        estimate = None if loaded.model is None else method.image_estimate(loaded.model, probe.noisy.to(device))
    if estimate is not None:
        model_level = float(estimate.reshape(-1)[0])
        how = "estimated" + ("; --level is not used by this method" if level is not None else "")
    elif level is not None:
        model_level, how = given, "given"
    elif not style.variable:
        model_level, how = style.low, "the training level"
    else:
        raise ConfigError(f"{cfg.method.name} on {style.style} (a variable-level style) needs --level "
                          f"in {UNITS[style.kind]}, e.g. --level {_fmt(style.high / style.scale)}")
    item = padded_input(image, model_level, image_id)
    output = make_denoiser(method, loaded.model, device, cfg)([item])[0]
    output = (output[0] if output.dim() == 4 else output).float().cpu()[:, : item.height, : item.width]
    if output.shape[0] != input_channels and input_channels == 1:
        output = set_channels(output, 1)  # a grey input through an RGB network stays grey
    return quantize(output, picture.max_value), model_level / style.scale, how


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def denoise_files(loaded: Loaded, inputs: Iterable[Path], out_dir: Path, level: float | None,
                  device: torch.device, say: Callable[[str], None] = print) -> list[Path]:
    """Denoise every input image into out_dir (same stem; PNG/TIFF kept, others as PNG)."""
    files = collect_inputs(inputs)
    targets = plan_outputs(files, Path(out_dir))
    style = parse_style(loaded.cfg.noise)
    for source, target in zip(files, targets):
        picture = read_picture(source)
        pixels, used, how = denoise_picture(loaded, picture, level, device, source.stem)
        write_image_any_depth(target, pixels)
        say(f"{source} -> {target} ({picture.bit_depth}-bit, {pixels.shape[1]}x{pixels.shape[0]}; "
            f"{style.kind} level {_fmt(used)} {UNITS[style.kind]}, {how})")
    return targets


def denoise_command(*, inputs: list[Path], out: Path, checkpoint: Path | None, run: str | None,
                    method: str | None, noise: str | None, level: float | None, device: str,
                    tracking_uri: str | None, say: Callable[[str], None] = print) -> list[Path]:
    torch_device = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="n2n-denoise-") as scratch:
        loaded = load_denoiser(checkpoint=checkpoint, run=run, method=method, noise=noise,
                               tracking_uri=tracking_uri, device=torch_device, scratch=Path(scratch), level=level)
        return denoise_files(loaded, inputs, out, level, torch_device, say)


__all__ = ["Picture", "read_picture", "write_image_any_depth", "denoise_command", "denoise_files",
           "load_denoiser", "padded_input", "quantize", "to_unit"]

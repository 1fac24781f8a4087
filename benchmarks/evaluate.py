"""`n2n-bench evaluate`: score a training-free method, or a trained checkpoint, on one set.

A checkpoint is scored with its own run's evaluation settings (its profile's first evaluation set,
centre crop, image count, repeats and seed) unless an option says otherwise; `--center-crop 0` and
`--max-images 0` ask for whole images and every image. `--save-outputs DIR` keeps, for every
(image, repeat), the noisy input and the output as PNGs (cropped back to the image, quantised to
uint8 as the PSNR is; the network saw the unclipped noisy floats) and a CSV of the PSNRs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from n2n_core.device import resolve_device
from n2n_core.errors import CheckpointError, ConfigError
from n2n_core.evaluation.psnr import quantize_uint8
from n2n_core.train.checkpoint import atomic_write, checkpoint_progress
from n2n_core.train.finite import weights_are_finite

from .artefacts import set_label, write_per_image_csv
from .compose import compose_config
from .scoring import evaluate_model, load_trained


def _pick(option, saved, off_value: int = 0):
    """An option's value when given (off_value: explicitly none), else the run's saved one."""
    if option is None:
        return saved
    return None if option == off_value else option


def output_saver(folder: Path):
    """on_output callback writing `<image>-r<repeat>-noisy.png` and `-denoised.png` into folder."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)

    def png(path: Path, image: torch.Tensor) -> None:
        array = quantize_uint8(image).permute(1, 2, 0).contiguous().numpy()
        array = array[..., 0] if array.shape[-1] == 1 else array
        atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))

    def save(item, output: torch.Tensor) -> None:
        output = output.detach().float().cpu()
        output = output[0] if output.dim() == 4 else output
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(item.image_id)) + f"-r{item.repeat}"
        crop = (slice(None), slice(0, item.height), slice(0, item.width))
        png(folder / f"{stem}-noisy.png", item.noisy.noisy[0].float()[crop])
        png(folder / f"{stem}-denoised.png", output[crop])

    return save


def evaluate_command(*, noise, dataset, method, checkpoint, repeats, seed, device, data_dir: Path,
                     progress: bool, center_crop: int | None = None,
                     max_images: int | None = None, save_outputs: Path | None = None) -> dict:
    torch_device = resolve_device(device)
    trained = None  # (images seen, budget, finished) of a checkpoint
    if checkpoint is not None:
        cfg, the_method, model = load_trained(checkpoint, torch_device)
        name = cfg.method.name
        noise = noise or cfg.noise
        if not weights_are_finite(model):
            raise CheckpointError(f"checkpoint {checkpoint} holds weights that are not finite (NaN or inf: "
                                  "its training diverged); retrain with a lower train.lr")
        seen, finished = checkpoint_progress(checkpoint) or (cfg.train.budget_images, True)
        trained = (seen, cfg.train.budget_images, finished)
        if not finished:  # scored as asked, but never passed off as the finished run
            print(f"warning: checkpoint {checkpoint} has trained {seen} of {cfg.train.budget_images} "
                  "images (its run is unfinished); rerun its train command to finish it", file=sys.stderr)
        dataset = dataset or cfg.eval.sets[0]
        repeats = repeats or cfg.eval.repeats_for(dataset)
    else:
        if noise is None:
            raise ConfigError("--noise is required unless --checkpoint is given")
        cfg = compose_config("evaluate", method, noise)
        from n2n_core.methods import build_method
        from n2n_core.noise import parse_style

        # an external method (file, module or entry point) is found again through its recorded source
        the_method = build_method(cfg.method, parse_style(noise), cfg.data.channels, cfg.method_source)
        if the_method.trainable:
            raise ConfigError(f"method {method!r} must be trained first; pass --checkpoint")
        model, name = None, cfg.method.name
        dataset = dataset or "kodak24"
        repeats = repeats or 1
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
        "seed": cfg.eval.seed if seed is None else seed,
        "center_crop": _pick(center_crop, cfg.eval.center_crop),
        "max_images": _pick(max_images, cfg.eval.max_images)})})
    # the bar opens once the set is loaded (on_start): a data error stays the only line on stderr
    bars: list[tqdm] = []

    def start(total: int) -> None:
        bars.append(tqdm(total=total, desc=f"{name} {dataset}", unit="img", disable=not progress,
                         file=sys.stderr))

    try:
        result = evaluate_model(the_method, model, cfg, dataset, noise, torch_device, data_dir,
                                repeats=repeats, progress=lambda n=1: bars[0].update(n), on_start=start,
                                on_output=output_saver(save_outputs) if save_outputs else None)
    finally:
        for bar in bars:
            bar.close()
    summary = {"method": name, **result.summary(), "seed": cfg.eval.seed,
               "checkpoint": str(checkpoint) if checkpoint else None,
               "max_images": cfg.eval.max_images}
    if trained is not None:
        summary.update(images_seen=trained[0], budget_images=trained[1], finished=trained[2])
    if save_outputs is not None:
        csv = save_outputs / f"psnr-{set_label(dataset)}.csv"
        write_per_image_csv(result, csv)
        summary["saved_outputs"] = str(save_outputs.resolve())
        summary["per_image_csv"] = str(csv.resolve())
    return summary

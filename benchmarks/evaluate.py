"""`n2n-bench evaluate`: score a training-free method, or a trained checkpoint, on one set."""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from n2n_core.device import resolve_device
from n2n_core.errors import CheckpointError, ConfigError
from n2n_core.train.checkpoint import checkpoint_progress
from n2n_core.train.trainer import weights_are_finite

from .compose import compose_config
from .scoring import evaluate_model, load_trained


def evaluate_command(*, noise, dataset, method, checkpoint, repeats, seed, device, data_dir: Path,
                     progress: bool, center_crop: int | None = None,
                     max_images: int | None = None) -> dict:
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
    else:
        if noise is None:
            raise ConfigError("--noise is required unless --checkpoint is given")
        cfg = compose_config("evaluate", method, noise, overrides=[f"eval.seed={seed}"])
        from n2n_core.methods import build_method
        from n2n_core.noise import parse_style

        the_method = build_method(cfg.method, parse_style(noise), cfg.data.channels)
        if the_method.trainable:
            raise ConfigError(f"method {method!r} must be trained first; pass --checkpoint")
        model, name = None, cfg.method.name
    # score what was asked for, not the training profile's (possibly smoke-sized) evaluation
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(
        update={"seed": seed, "center_crop": center_crop, "max_images": max_images})})
    # the bar opens at the first scored image, after the set is resolved and loaded: a data error
    # must stay the only line on stderr (cli.friendly_errors)
    bar = None

    def tick(n: int = 1) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(desc=f"{name} {dataset}", disable=not progress, file=sys.stderr)
        bar.update(n)

    try:
        result = evaluate_model(the_method, model, cfg, dataset, noise, torch_device, data_dir,
                                repeats=repeats or 1, progress=tick)
    finally:
        if bar is not None:
            bar.close()
    summary = {"method": name, **result.summary(), "seed": seed,
               "checkpoint": str(checkpoint) if checkpoint else None}
    if trained is not None:
        summary.update(images_seen=trained[0], budget_images=trained[1], finished=trained[2])
    return summary

"""`n2n-bench evaluate`: build the evaluator and the method (or load a checkpoint) and score it."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from n2n_core.data.sets import resolve_set
from n2n_core.errors import ConfigError
from n2n_core.evaluation.protocol import Evaluator
from n2n_core.methods import build_method, method_config
from n2n_core.noise import parse_style


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when available, else cpu; 'cuda' without CUDA is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def evaluate_command(*, noise, dataset, method, checkpoint, repeats, seed, device, data_dir: Path,
                     progress: bool) -> dict:
    noise_model = parse_style(noise)
    torch_device = resolve_device(device)
    if checkpoint is not None:
        raise ConfigError("--checkpoint scoring arrives with the trainer; use --method noisy for now")
    the_method = build_method(method_config(method), noise_model)
    if the_method.trainable:
        raise ConfigError(f"method {method!r} must be trained first; pass --checkpoint")
    image_set = resolve_set(dataset, data_dir)
    evaluator = Evaluator(image_set, noise_model, seed=seed, repeats=repeats or 1)
    with tqdm(total=evaluator.n_evaluations, desc=f"{method} {dataset}", disable=not progress,
              file=__import__("sys").stderr) as bar:
        result = evaluator.run(
            lambda items: the_method.denoise_many(None, items, torch_device), progress=bar.update
        )
    return {"method": method, **result.summary(), "seed": seed}

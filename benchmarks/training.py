"""Train one composed run: build noise, method, crop stream and trainer, resume where it stopped.

Under torchrun (WORLD_SIZE > 1) this process joins the job as one rank of a data-parallel run
(n2n_core/train/distributed.py); only rank 0 writes config.json, validates, logs and saves.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from n2n_core.config import ExperimentConfig
from n2n_core.data.images import default_data_dir
from n2n_core.data.sets import resolve_set
from n2n_core.data.train_stream import stream_for
from n2n_core.device import resolve_device
from n2n_core.evaluation.paired import make_evaluator
from n2n_core.methods import Method, build_method
from n2n_core.noise import parse_style
from n2n_core.seeding import derive_seed, make_generator
from n2n_core.tracking import NullTracker, Tracker
from n2n_core.train import distributed
from n2n_core.train.checkpoint import atomic_write
from n2n_core.train.trainer import Trainer

from .flops import training_step_flops
from .scoring import make_denoiser


@dataclass
class TrainResult:
    checkpoint: Path | None
    images_seen: int
    skipped_steps: int
    seconds: float
    model: nn.Module | None
    method: Method
    config: ExperimentConfig
    flops: float | None = None  # counted training FLOPs: one step's × the steps (benchmarks/flops.py)


def _validation(method: Method, cfg: ExperimentConfig, device, data_dir: Path):
    """Fixed validation crops (training-crop sized) scored with the evaluation protocol; always of
    the clean validation set, also when training on a noisy:SET set (its curve stays comparable)."""
    if cfg.train.validation_images == 0:
        return None
    evaluator = make_evaluator(resolve_set(cfg.train.validation_set, data_dir, cfg.data.channels),
                               parse_style(cfg.noise),
                               seed=derive_seed(cfg.eval.seed, "validation"), repeats=1,
                               center_crop=cfg.train.patch_size, max_images=cfg.train.validation_images)

    def validate(model) -> float:
        model.eval()
        try:
            return evaluator.run(make_denoiser(method, model, device, cfg)).psnr_mean
        finally:
            model.train()

    return validate


def train(cfg: ExperimentConfig, out_dir: Path, tracker: Tracker | None = None,
          data_dir: Path | None = None, progress: bool = True, count_flops: bool = False) -> TrainResult:
    """Train (or resume, or return the finished run in out_dir) and return the evaluation model.

    count_flops: also count one step's FLOPs (result.flops), for a logged job's floor."""
    data_dir = data_dir or default_data_dir()
    device = resolve_device(cfg.train.device)
    method = build_method(cfg.method, parse_style(cfg.noise), cfg.data.channels, cfg.method_source)
    if not method.trainable:
        return TrainResult(None, 0, 0, 0.0, None, method, cfg)
    dist_ctx, device = distributed.init_from_env(device)
    main = dist_ctx is None or dist_ctx.is_main
    stream = stream_for(resolve_set(cfg.train.train_set, data_dir, cfg.data.channels), cfg.train.patch_size,
                        cfg.seed, noise=parse_style(cfg.noise), noise_draw=cfg.train.noise_draw, evaluation=cfg.eval)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "checkpoint.pt"
    config_file, config_text = out_dir / "config.json", json.dumps(cfg.identity_dump(), indent=2)
    # a folder holding a checkpoint may belong to another run (fit() refuses it): its config.json
    # is only rewritten once fit() has accepted the checkpoint as this run's
    fresh = not (checkpoint.exists() or checkpoint.with_name(checkpoint.name + ".prev").exists())
    if fresh and main:
        atomic_write(config_file, lambda tmp: tmp.write_text(config_text))
    model = method.build_model(make_generator(derive_seed(cfg.seed, "init")))
    trainer = Trainer(method, stream, cfg.train, cfg.seed, device, tracker or NullTracker(),
                      validate=_validation(method, cfg, device, data_dir) if main else None,
                      identity=cfg.config_hash(), meta={"config": cfg.canonical_json()},
                      progress=progress, dist=dist_ctx)
    eval_model, state = trainer.fit(model, checkpoint)
    if not fresh and main:
        atomic_write(config_file, lambda tmp: tmp.write_text(config_text))
    flops = None
    if main and count_flops:
        steps = math.ceil(cfg.train.budget_images / cfg.train.batch_size)
        flops = steps * training_step_flops(method, model, stream, cfg.train.batch_size,
                                            cfg.train.budget_images, device, cfg.seed)
    return TrainResult(checkpoint, state.images_seen, state.skipped_steps, state.seconds,
                       eval_model, method, cfg, flops)

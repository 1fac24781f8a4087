"""The iteration loop for any Method; budgets are counted in images (METHODS.md §2).

The trainer never asks which method it runs: it gets clean crops from the stream, asks the method
for a training pair and a loss, and steps Adam under the sin²/cos⁴ schedule. Every random draw of
a step comes from generators derived from (seed, purpose, step) and the crop stream is addressed
by images seen, so a checkpoint needs only weights, optimizer, EMA and counters to resume exactly.
"""

from __future__ import annotations

import copy
import ctypes
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig
from ..data.train_stream import CropStream
from ..errors import CheckpointError, N2NError
from ..methods.base import Method, Rngs
from ..seeding import derive_seed, make_generator
from ..tracking import NullTracker, Tracker
from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .schedule import lr_at


class TrainingDiverged(N2NError):
    """Too many consecutive steps with a non-finite gradient."""


@dataclass
class TrainState:
    images_seen: int = 0
    skipped_steps: int = 0
    consecutive_skips: int = 0
    seconds: float = 0.0  # training wall time, summed over resumed segments


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's malloc.h


def keep_freed_memory() -> bool:
    """On Linux glibc, stop malloc from handing large freed blocks back to the OS; True if applied.

    PyTorch's CPU tensors come from malloc. glibc serves blocks above its mmap threshold (at most
    32 MB; a step's activations at 128² are 25–100 MB) with a fresh mmap and unmaps them on free,
    so every training step page-faults all of its activations in again and the kernel zero-fills
    them page by page: cloning a 100 MB tensor ran at 1.0–1.2 GB/s here, 2.9 GB/s with this, and
    whole CPU training steps took 0.86× the time (benchmarks/perf/README.md). The cost: the
    process keeps its peak memory. Process-wide and idempotent; elsewhere (macOS, musl) a no-op.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam(β1 0.9, β2 0.99, ε 1e-8) as in the paper (METHODS.md §2)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8)


_SUMMABLE = (torch.float32, torch.float16, torch.bfloat16)  # finite sums of these fit in float64


def grads_are_finite(model: nn.Module, loss: torch.Tensor | None = None) -> bool:
    """True when every parameter gradient (and the loss, if given) is finite; one host sync."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if loss is not None:
        grads.append(loss.detach().reshape(1))
    return tensors_are_finite(grads)


def tensors_are_finite(tensors: list[torch.Tensor]) -> bool:
    """True when every element of every tensor is finite (one reduction per tensor, one host sync)."""
    if not tensors:
        return True
    if all(t.dtype in _SUMMABLE for t in tensors):
        # Σ of each tensor in float64: finite float32 values (< 3.5e38, fewer than 2³¹ of them)
        # cannot overflow it, and one inf or NaN makes the total inf or NaN. One pass per tensor
        # instead of isfinite's four (==, abs, !=, all): 1.8 ms instead of 5.0 ms for the U-Net's
        # 40 gradients on this project's 2-core CPU, 1.5 % of a 64² step.
        total = torch.stack([t.sum(dtype=torch.float64) for t in tensors]).sum()
        return bool(total.isfinite())
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors if t.is_floating_point()]).all())


def weights_are_finite(*models: nn.Module | None) -> bool:
    """True when every floating-point parameter and buffer of every model given is finite."""
    return tensors_are_finite([t.detach() for m in models if m is not None
                               for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()])


class Trainer:
    """Train `model` with `method` on crops from `stream` until the image budget is spent."""

    def __init__(self, method: Method, stream: CropStream, cfg: TrainConfig, seed: int,
                 device: torch.device, tracker: Tracker | None = None,
                 validate: Callable[[nn.Module], float] | None = None,
                 identity: str = "", meta: dict | None = None, progress: bool = True,
                 dist: distributed.DistContext | None = None):
        self.method, self.stream, self.cfg, self.seed = method, stream, cfg, seed
        self.device = device
        self.tracker = tracker or NullTracker()
        self.validate = validate
        self.identity = identity  # config hash: a checkpoint of another run is refused
        self.meta = meta or {}  # plain values stored with every checkpoint (e.g. the config JSON)
        self.progress = progress
        # one process of a torchrun job (distributed.py): only rank 0 logs, validates and saves
        self.dist = dist
        if dist is not None and not dist.is_main:
            self.tracker, self.validate, self.progress = NullTracker(), None, False

    def _refuse_non_finite(self, model, ema, state: TrainState) -> None:
        """Stop a run whose weights (or their average) are no longer finite: saving or scoring them
        would pass garbage off as a result. The last checkpoint on disk is still a finite one."""
        if not weights_are_finite(model, ema):
            raise TrainingDiverged(
                f"the weights are not finite any more at {state.images_seen} images (an optimizer step "
                "overflowed); lower train.lr; the last checkpoint written before is kept"
            )

    def rngs(self, step: int) -> Rngs:
        """Fresh generators for step `step` (noise drawn on the training device)."""
        return Rngs(
            noise=make_generator(derive_seed(self.seed, "noise", step), self.device),
            method=make_generator(derive_seed(self.seed, "method", step), self.device),
        )

    def _autocast(self):
        enabled = self.cfg.amp and self.method.amp_safe and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _state_dict(self, model, optimizer, ema, state: TrainState, finished: bool) -> dict:
        return {
            "identity": self.identity,
            "meta": self.meta,
            "images_seen": state.images_seen,
            "skipped_steps": state.skipped_steps,
            "consecutive_skips": state.consecutive_skips,
            "seconds": state.seconds,
            "finished": finished,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
        }

    def _restore(self, path: Path, model, optimizer, ema) -> TrainState:
        saved = load_checkpoint(path, map_location=self.device)
        if self.identity and saved.get("identity") != self.identity:
            raise CheckpointError(
                f"checkpoint {path} belongs to another run (config {saved.get('identity')}, "
                f"this run {self.identity}); use another --out folder or delete it"
            )
        try:
            model.load_state_dict(saved["model"])
            if ema is not None and saved["ema"] is not None:
                ema.load_state_dict(saved["ema"])
        except (RuntimeError, KeyError) as err:
            raise CheckpointError(f"checkpoint {path} does not fit this method's network ({err})") from None
        optimizer.load_state_dict(saved["optimizer"])
        return TrainState(saved["images_seen"], saved["skipped_steps"],
                          saved["consecutive_skips"], saved["seconds"])

    def fit(self, model: nn.Module, checkpoint_path: Path | None = None) -> nn.Module:
        """Train to the budget (resuming from checkpoint_path if it exists); return the eval model."""
        model.to(self.device).train()
        if self.device.type == "cpu":
            keep_freed_memory()  # CPU steps reuse their activation memory instead of faulting it in
        # a method may bring its own optimizer (the scratch network's SGD); else Adam (§2)
        optimizer = getattr(self.method, "make_optimizer", make_optimizer)(model, self.cfg)
        ema = copy.deepcopy(model).eval().requires_grad_(False) if self.cfg.ema_decay else None
        state = TrainState()
        if checkpoint_path is not None and (Path(checkpoint_path).exists()
                                            or Path(str(checkpoint_path) + ".prev").exists()):
            state = self._restore(Path(checkpoint_path), model, optimizer, ema)
        budget, batch = self.cfg.budget_images, self.cfg.batch_size
        stepped = model  # what a step trains through: the model itself, or its DDP view
        if self.dist is not None:
            distributed.check_divisible(batch, budget, self.dist.world_size)
            stepped = distributed.wrap(model, self.device)
        from tqdm import tqdm

        bar = tqdm(total=budget, initial=state.images_seen, unit="img", disable=not self.progress,
                   desc="train", dynamic_ncols=True, leave=False)
        next_ckpt = (state.images_seen // self.cfg.checkpoint_every_images + 1) * self.cfg.checkpoint_every_images
        next_val = (state.images_seen // self.cfg.validate_every_images + 1) * self.cfg.validate_every_images
        started = time.perf_counter() - state.seconds
        while state.images_seen < budget:
            n = min(batch, budget - state.images_seen)
            loss_value = self._step(stepped, optimizer, ema, state, n)
            state.images_seen += n
            state.seconds = time.perf_counter() - started
            bar.update(n)
            bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)
            if state.images_seen % (batch * 10) == 0 or state.images_seen >= budget:
                self.tracker.log_metrics(
                    {"train_loss": loss_value, "lr": optimizer.param_groups[0]["lr"],
                     "skipped_steps": state.skipped_steps,
                     "images_per_s": state.images_seen / max(state.seconds, 1e-9)},
                    step=state.images_seen,
                )
            if self.validate is not None and (state.images_seen >= next_val or state.images_seen >= budget):
                next_val += self.cfg.validate_every_images
                paused = time.perf_counter()
                self.tracker.log_metrics({"val_psnr": self.validate(ema or model),
                                          "train_seconds": state.seconds}, step=state.images_seen)
                started += time.perf_counter() - paused  # train_seconds counts training only
            if checkpoint_path is not None and (state.images_seen >= next_ckpt or state.images_seen >= budget):
                next_ckpt += self.cfg.checkpoint_every_images
                paused = time.perf_counter()
                self._refuse_non_finite(model, ema, state)  # never checkpointed, never scored
                if self.dist is None or self.dist.is_main:
                    save_checkpoint(self._state_dict(model, optimizer, ema, state,
                                                     finished=state.images_seen >= budget), checkpoint_path)
                if self.dist is not None:
                    distributed.barrier()  # the other ranks wait until the file is whole
                started += time.perf_counter() - paused
        bar.close()
        self._refuse_non_finite(model, ema, state)
        self.final_state = state
        return (ema or model).eval()

    def _step(self, model, optimizer, ema, state: TrainState, n: int) -> float:
        """One optimizer step on n images; a step with any non-finite gradient is skipped entirely.

        In a torchrun job every rank builds the same global pair and trains on its own rows of it
        (distributed.py); DDP averages the gradients, so all ranks skip or step together.
        """
        step = state.images_seen // self.cfg.batch_size
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state.images_seen, self.cfg.budget_images, self.cfg.lr,
                                self.cfg.ramp_up, self.cfg.ramp_down)
        clean = self.stream.batch(state.images_seen, n).to(self.device, non_blocking=True)
        pair = self.method.training_pair(clean, self.rngs(step))
        if self.dist is not None:
            pair = distributed.shard_pair(pair, self.dist, n, self.seed, step)
        optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.method.loss(model, pair)
        out.loss.backward()
        # a non-finite loss is skipped like a non-finite gradient; so is every step after one that
        # made the weights non-finite, since their loss is then NaN too (and _refuse_non_finite
        # stops such a run at its next checkpoint at the latest). Under DDP only the all-reduced
        # gradients, identical on every rank, decide, so that all ranks skip together.
        if not grads_are_finite(model, out.loss if self.dist is None else None):
            state.skipped_steps += 1
            state.consecutive_skips += 1
            if state.consecutive_skips >= self.cfg.max_consecutive_skips:
                raise TrainingDiverged(
                    f"{state.consecutive_skips} consecutive steps had a non-finite gradient or loss at "
                    f"{state.images_seen} images; lower train.lr or check the data"
                )
            return float("nan")
        state.consecutive_skips = 0
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                decay = self.method.ema_decay(self.cfg.ema_decay, step)
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
        if self.dist is not None:
            return distributed.mean_over_ranks(out.loss)  # the global batch's loss
        return float(out.loss.detach())

"""The iteration loop for any Method; budgets are counted in images (docs/methods.md §2).

The trainer never asks which method it runs: it gets clean crops from the stream, asks the method
for a training pair and a loss, and steps Adam under the sin²/cos⁴ schedule. Every random draw of
a step comes from generators derived from (seed, purpose, step) and the crop stream is addressed
by images seen, so a checkpoint needs only weights, optimizer, EMA and counters to resume exactly.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig
from ..data.train_stream import CropStream
from ..errors import CheckpointError, N2NError
from ..methods.base import Method, Step
from ..seeding import derive_seed, make_generator
from ..tracking import NullTracker, Tracker
from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .schedule import lr_at


class TrainingDiverged(N2NError):
    """Too many consecutive steps with a non-finite gradient."""


LOG_EVERY_STEPS = 10  # metrics (and the loss read back from the device) every this many steps


@dataclass
class TrainState:
    images_seen: int = 0
    skipped_steps: int = 0
    consecutive_skips: int = 0
    seconds: float = 0.0  # training wall time, summed over resumed segments


@dataclass
class StepOutput:
    images: int  # images this step spent (a skipped step spends them too)
    loss: torch.Tensor  # detached, on the training device: read back only when logged
    logs: Mapping[str, torch.Tensor]  # the method's LossOutput.logs

    def loss_value(self) -> float:
        return float(self.loss)


class Clock:
    """Training wall time that resumes from a saved total and excludes paused stretches."""

    def __init__(self, already: float = 0.0):
        self._start = time.perf_counter() - already

    def seconds(self) -> float:
        return time.perf_counter() - self._start

    @contextmanager
    def paused(self):
        """Validation and checkpoint writing do not count as training time."""
        paused = time.perf_counter()
        try:
            yield
        finally:
            self._start += time.perf_counter() - paused


def crossed(before: int, after: int, every: int) -> bool:
    """True when a step from `before` to `after` images passed a multiple of `every`."""
    return before // every != after // every


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
        # cannot overflow it, and one inf or NaN makes the total inf or NaN; one pass per tensor
        # instead of isfinite's four (benchmarks/perf/README.md, item 7).
        total = torch.stack([t.sum(dtype=torch.float64) for t in tensors]).sum()
        return bool(total.isfinite())
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors if t.is_floating_point()]).all())


def weights_are_finite(*models: nn.Module | None) -> bool:
    """True when every floating-point parameter and buffer of every model given is finite (the
    scratch network, not a torch.nn module, has parameters and no buffers)."""
    def tensors(m):
        return (*m.parameters(), *(m.buffers() if hasattr(m, "buffers") else ()))

    return tensors_are_finite([t.detach() for m in models if m is not None
                               for t in tensors(m) if t.is_floating_point()])


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

    def step_context(self, step: int, images_seen: int) -> Step:
        """Fresh generators for step `step` (noise drawn on the training device) and its progress."""
        return Step(
            noise=make_generator(derive_seed(self.seed, "noise", step), self.device),
            method=make_generator(derive_seed(self.seed, "method", step), self.device),
            images_seen=images_seen, budget_images=self.cfg.budget_images, index=step,
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

    def _restore(self, path: Path | None, model, optimizer, ema) -> TrainState:
        """Counters (and weights, optimizer, EMA) of the checkpoint at path; a fresh state without one."""
        if path is None or not (Path(path).exists() or Path(str(path) + ".prev").exists()):
            return TrainState()
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

    def fit(self, model: nn.Module, checkpoint_path: Path | None = None) -> tuple[nn.Module, TrainState]:
        """Train to the budget, resuming from checkpoint_path if it exists; (eval model, final state).

        The eval model is the weights' moving average when train.ema_decay is set, else the model.
        """
        model.to(self.device).train()
        optimizer = self.method.make_optimizer(model, self.cfg)  # the paper's Adam unless the method says
        ema = copy.deepcopy(model).eval().requires_grad_(False) if self.cfg.ema_decay else None
        state = self._restore(checkpoint_path, model, optimizer, ema)
        stepped = self._distributed(model)  # the model itself, or its DDP view
        budget, cfg = self.cfg.budget_images, self.cfg
        clock = Clock(state.seconds)
        with self._progress_bar(state) as bar:
            while state.images_seen < budget:
                before = state.images_seen
                out = self._step(stepped, optimizer, ema, state, min(cfg.batch_size, budget - before))
                state.images_seen += out.images
                state.seconds = clock.seconds()
                bar.update(out.images)
                done = state.images_seen >= budget
                if done or crossed(before, state.images_seen, cfg.batch_size * LOG_EVERY_STEPS):
                    self._log(out, optimizer, state, bar)
                if self.validate is not None and (done or crossed(before, state.images_seen,
                                                                  cfg.validate_every_images)):
                    with clock.paused():
                        self.tracker.log_metrics({"val_psnr": self.validate(ema or model),
                                                  "train_seconds": state.seconds}, step=state.images_seen)
                if checkpoint_path is not None and (done or crossed(before, state.images_seen,
                                                                    cfg.checkpoint_every_images)):
                    with clock.paused():
                        self._refuse_non_finite(model, ema, state)  # never checkpointed, never scored
                        self._save(checkpoint_path, model, optimizer, ema, state)
        self._refuse_non_finite(model, ema, state)
        return (ema or model).eval(), state

    def _refuse_non_finite(self, model, ema, state: TrainState) -> None:
        """Stop a run whose weights (or their average) are no longer finite: saving or scoring them
        would pass garbage off as a result. The last checkpoint on disk is still a finite one."""
        if not weights_are_finite(model, ema):
            raise TrainingDiverged(
                f"the weights are not finite any more at {state.images_seen} images (an optimizer step "
                "overflowed); lower train.lr; the last checkpoint written before is kept"
            )

    def _distributed(self, model: nn.Module) -> nn.Module:
        if self.dist is None:
            return model
        distributed.check_divisible(self.cfg.batch_size, self.cfg.budget_images, self.dist.world_size)
        return distributed.wrap(model, self.device)

    def _progress_bar(self, state: TrainState):
        from tqdm import tqdm

        return tqdm(total=self.cfg.budget_images, initial=state.images_seen, unit="img", leave=False,
                    disable=not self.progress, desc="train", dynamic_ncols=True)

    def _log(self, out: StepOutput, optimizer, state: TrainState, bar) -> None:
        """Metrics against images seen; reading the loss back is the only host sync it costs."""
        loss = out.loss_value()
        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        self.tracker.log_metrics(
            {"train_loss": loss, "lr": optimizer.param_groups[0]["lr"], "skipped_steps": state.skipped_steps,
             "images_per_s": state.images_seen / max(state.seconds, 1e-9),
             **{name: float(value) for name, value in out.logs.items()}},
            step=state.images_seen,
        )

    def _save(self, path: Path, model, optimizer, ema, state: TrainState) -> None:
        if self.dist is None or self.dist.is_main:
            finished = state.images_seen >= self.cfg.budget_images
            save_checkpoint(self._state_dict(model, optimizer, ema, state, finished), path)
        if self.dist is not None:
            distributed.barrier()  # the other ranks wait until the file is whole

    def _step(self, model, optimizer, ema, state: TrainState, n: int) -> StepOutput:
        """One optimizer step on n images; a step with a non-finite gradient or loss is skipped entirely.

        In a torchrun job every rank builds the same global pair and trains on its own rows of it
        (distributed.py); DDP averages the gradients, so all ranks skip or step together.
        """
        step = state.images_seen // self.cfg.batch_size
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state.images_seen, self.cfg.budget_images, self.cfg.lr,
                                self.cfg.ramp_up, self.cfg.ramp_down)
        pair = self.stream.training_pair(self.method, state.images_seen, n,
                                         self.step_context(step, state.images_seen), self.device)
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
            return StepOutput(n, torch.tensor(float("nan")), {})
        state.consecutive_skips = 0
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                decay = self.method.ema_decay(self.cfg.ema_decay, step)
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
        loss = out.loss.detach()
        if self.dist is not None:
            loss = torch.tensor(distributed.mean_over_ranks(loss))  # the global batch's loss
        return StepOutput(n, loss, out.logs)

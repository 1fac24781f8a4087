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
from ..errors import CheckpointError
from ..methods.base import Method, Step
from ..seeding import derive_seed, make_generator
from ..tracking import NullTracker, Tracker
from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .finite import DeviceSkip, HostSkip, TrainingDiverged, weights_are_finite
from .schedule import lr_at


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


class Trainer:
    """Train `model` with `method` on crops from `stream` until the image budget is spent."""

    def __init__(self, method: Method, stream: CropStream, cfg: TrainConfig, seed: int,
                 device: torch.device, tracker: Tracker | None = None,
                 validate: Callable[[nn.Module], float] | None = None,
                 identity: str = "", meta: dict | None = None, progress: bool = True,
                 dist: distributed.DistContext | None = None, defer_host_reads: bool | None = None):
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
        # On CUDA a step must not wait for the device (finite.py); under torchrun the all-reduced
        # loss is read back anyway, so those runs keep the host's decision.
        self.defer_host_reads = (device.type == "cuda" and dist is None) if defer_host_reads is None \
            else defer_host_reads

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
        self.guard = self._skip_guard(optimizer, state)
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
                    self._log(out, optimizer, state, bar, clock)
                if self.validate is not None and (done or crossed(before, state.images_seen,
                                                                  cfg.validate_every_images)):
                    with clock.paused():
                        self.tracker.log_metrics({"val_psnr": self.validate(ema or model),
                                                  "train_seconds": state.seconds}, step=state.images_seen)
                if checkpoint_path is not None and (done or crossed(before, state.images_seen,
                                                                    cfg.checkpoint_every_images)):
                    with clock.paused():
                        self.guard.settle(state)  # the skip counters, as saved
                        self._refuse_non_finite(model, ema, state)  # never checkpointed, never scored
                        self._save(checkpoint_path, model, optimizer, ema, state)
        self.guard.settle(state)
        self._refuse_non_finite(model, ema, state)
        return (ema or model).eval(), state

    def _skip_guard(self, optimizer, state: TrainState):
        """How non-finite steps are skipped: decided on the device when asked and the optimizer can
        obey a device flag (the default Adam is fused on CUDA), else on the host (finite.py)."""
        if self.defer_host_reads and DeviceSkip.supports(optimizer):
            return DeviceSkip(self.cfg.max_consecutive_skips, state, self.device)
        return HostSkip(self.cfg.max_consecutive_skips)

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

    def _log(self, out: StepOutput, optimizer, state: TrainState, bar, clock: Clock) -> None:
        """Metrics against images seen: the loss, the method's logs and the skip counters come back
        from the device in one read, the only host sync a logged step costs."""
        loss, *logs = self.guard.settle(state, [out.loss, *out.logs.values()])
        state.seconds = clock.seconds()  # after the read-back, so that queued CUDA work is counted
        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        self.tracker.log_metrics(
            {"train_loss": loss, "lr": optimizer.param_groups[0]["lr"], "skipped_steps": state.skipped_steps,
             "images_per_s": state.images_seen / max(state.seconds, 1e-9), **dict(zip(out.logs, logs))},
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
        decay = self.method.ema_decay(self.cfg.ema_decay, step) if ema is not None else 0.0
        skipped = state.skipped_steps
        loss = self.guard.step(model, optimizer, ema, out.loss, decay, state, decide_on_loss=self.dist is None)
        if self.dist is not None and state.skipped_steps == skipped:  # every rank took the step
            loss = torch.tensor(distributed.mean_over_ranks(loss))  # the global batch's loss
        return StepOutput(n, loss, out.logs)

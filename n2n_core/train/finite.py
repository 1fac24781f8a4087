"""Non-finite steps: detected, skipped and counted, with or without a host sync per step.

A step whose loss or gradient is not finite is skipped entirely (no Adam update, no EMA update, its
images still spent), and too many in a row stop the run. Two ways to decide, same outcome:

- `HostSkip` reads the decision back to the host at every step. On the CPU that read is free, and
  it keeps today's CPU numerics (the foreach Adam) untouched.
- `DeviceSkip` keeps the decision on the device: a 0-dim `found_inf` tensor that a fused optimizer
  obeys by itself (the mechanism `torch.amp.GradScaler` uses), an EMA weight multiplied by the
  same flag, and skip counters that live on the device. The host reads the counters only when the
  trainer logs or saves (`settle`), so a CUDA step queues its kernels without waiting for them.
  A run of consecutive skips is therefore caught at the next read-back instead of at the step
  itself, at most `LOG_EVERY_STEPS` steps late; the weights are untouched meanwhile.

Every deliberate read-back goes through `host_read`, so that a test can count them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import N2NError

_SUMMABLE = (torch.float32, torch.float16, torch.bfloat16)  # finite sums of these fit in float64


class TrainingDiverged(N2NError):
    """Too many consecutive steps with a non-finite gradient."""


def host_read(tensors: list[torch.Tensor]) -> list[float]:
    """The values of 0-dim tensors on the host: one transfer (one host sync on CUDA) for all."""
    return torch.stack([t.detach().reshape(()).to(torch.float64) for t in tensors]).cpu().tolist()


def finite_flag(tensors: list[torch.Tensor]) -> torch.Tensor:
    """0-dim bool tensor on the tensors' device: every element of every tensor is finite. No sync."""
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    if all(t.dtype in _SUMMABLE for t in tensors):
        # Σ of each tensor in float64: finite float32 values (< 3.5e38, fewer than 2³¹ of them)
        # cannot overflow it, and one inf or NaN makes the total inf or NaN; one pass per tensor
        # instead of isfinite's four (benchmarks/perf/README.md, item 7).
        return torch.stack([t.sum(dtype=torch.float64) for t in tensors]).sum().isfinite()
    return torch.stack([torch.isfinite(t).all() for t in tensors if t.is_floating_point()]).all()


def tensors_are_finite(tensors: list[torch.Tensor]) -> bool:
    """True when every element of every tensor is finite (one host sync)."""
    return host_read([finite_flag(tensors)])[0] > 0


def step_tensors(model: nn.Module, loss: torch.Tensor | None) -> list[torch.Tensor]:
    """What decides a step: every parameter gradient, and the loss if given."""
    tensors = [p.grad for p in model.parameters() if p.grad is not None]
    if loss is not None:
        tensors.append(loss.detach().reshape(1))
    return tensors


def grads_are_finite(model: nn.Module, loss: torch.Tensor | None = None) -> bool:
    """True when every parameter gradient (and the loss, if given) is finite; one host sync."""
    return tensors_are_finite(step_tensors(model, loss))


def weights_are_finite(*models: nn.Module | None) -> bool:
    """True when every floating-point parameter and buffer of every model given is finite (the
    scratch network, not a torch.nn module, has parameters and no buffers)."""
    def tensors(m):
        return (*m.parameters(), *(m.buffers() if hasattr(m, "buffers") else ()))

    return tensors_are_finite([t.detach() for m in models if m is not None
                               for t in tensors(m) if t.is_floating_point()])


def diverged(skips: int, images_seen: int) -> TrainingDiverged:
    return TrainingDiverged(f"{skips} consecutive steps had a non-finite gradient or loss at "
                            f"{images_seen} images; lower train.lr or check the data")


def _lerp_ema(ema: nn.Module, model: nn.Module, weight: float | torch.Tensor) -> None:
    """ema ← ema + weight·(model − ema); a tensor weight is passed once per parameter, because the
    single-tensor overload of _foreach_lerp_ reads its value back to the host."""
    averaged, current = list(ema.parameters()), list(model.parameters())
    with torch.no_grad():
        if isinstance(weight, torch.Tensor):
            torch._foreach_lerp_(averaged, current, [weight] * len(averaged))
        else:
            torch._foreach_lerp_(averaged, current, weight)


class HostSkip:
    """Decide on the host at every step (one sync per step: free on the CPU)."""

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive

    def step(self, model, optimizer, ema, loss, decay: float, state, decide_on_loss: bool = True):
        """Take or skip one step; returns the loss to report (NaN for a skipped step)."""
        if not grads_are_finite(model, loss if decide_on_loss else None):
            state.skipped_steps += 1
            state.consecutive_skips += 1
            if state.consecutive_skips >= self.max_consecutive:
                raise diverged(state.consecutive_skips, state.images_seen)
            return torch.tensor(float("nan"))
        state.consecutive_skips = 0
        optimizer.step()
        if ema is not None:
            _lerp_ema(ema, model, 1.0 - decay)
        return loss.detach()

    def settle(self, state, extra: list[torch.Tensor] = ()) -> list[float]:
        """The counters are already on the host; read `extra` back (one sync if any)."""
        return host_read(list(extra)) if extra else []


class DeviceSkip:
    """Decide on the device; the optimizer must obey `found_inf` (fused Adam/AdamW/SGD do)."""

    def __init__(self, max_consecutive: int, state, device: torch.device):
        self.max_consecutive = max_consecutive
        zero = torch.zeros((), dtype=torch.float32, device=device)
        self.skipped = zero.clone()  # skips since the last settle
        self.run = torch.full((), float(state.consecutive_skips), device=device)  # current streak
        self.worst = self.run.clone()  # longest streak since the last settle

    @staticmethod
    def supports(optimizer: torch.optim.Optimizer) -> bool:
        return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and any(
            g.get("fused") for g in optimizer.param_groups)

    def step(self, model, optimizer, ema, loss, decay: float, state, decide_on_loss: bool = True):
        bad = (~finite_flag(step_tensors(model, loss if decide_on_loss else None))).to(torch.float32)
        optimizer.grad_scale, optimizer.found_inf = None, bad  # read by the fused kernel
        optimizer.step()
        if ema is not None:
            _lerp_ema(ema, model, (1.0 - decay) * (1.0 - bad))
        self.skipped += bad
        self.run = (self.run + bad) * bad
        self.worst = torch.maximum(self.worst, self.run)
        return torch.where(bad > 0, torch.full_like(loss.detach(), float("nan")), loss.detach())

    def settle(self, state, extra: list[torch.Tensor] = ()) -> list[float]:
        """Fold the device counters into `state` and read `extra` back, in one sync; raise if a
        streak of skips reached the limit since the last settle."""
        skipped, run, worst, *values = host_read([self.skipped, self.run, self.worst, *extra])
        state.skipped_steps += int(skipped)
        state.consecutive_skips = int(run)
        self.skipped.zero_()
        self.worst.copy_(self.run)
        if worst >= self.max_consecutive:
            raise diverged(int(worst), state.images_seen)
        return values

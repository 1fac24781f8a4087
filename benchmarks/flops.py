"""The FLOP floor of a grid: counted FLOPs of every job ÷ the matmul rate measured in the same run.

A job's floor is the time its counted FLOPs would take at the dense float32 matmul rate of the
machine: training = FLOPs of one step (pair, loss, backward; torch's FlopCounterMode counts the
matmuls and convolutions, not the elementwise work or Adam's update) × its steps; scoring = FLOPs
of the first evaluation × the evaluations. CBM3D runs outside torch and counts 0: its time is all
above the floor. The grid's wall time ÷ its floor says how far the whole table is from the
hardware's limit (benchmarks/perf/README.md has the breakdown per job class).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from n2n_core.methods.base import Step
from n2n_core.seeding import derive_seed, make_generator


class MatmulRate:
    """float32 GFLOP/s of one (n × n) @ (n × n) torch.mm into a preallocated output, on `device`."""

    def __init__(self, n: int = 1024, device: torch.device | str = "cpu"):
        gen = torch.Generator().manual_seed(0)
        self.device = torch.device(device)
        self.a = torch.randn(n, n, generator=gen).to(self.device)
        self.b = torch.randn(n, n, generator=gen).to(self.device)
        self.out = torch.empty(n, n, device=self.device)
        self.flops = 2 * n**3
        torch.mm(self.a, self.b, out=self.out)  # warm-up
        self._sync()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, repeats: int = 1) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(self.a, self.b, out=self.out)
        self._sync()
        return repeats * self.flops / (time.perf_counter() - start) / 1e9

    def best_of(self, rounds: int = 5, repeats: int = 4) -> float:
        """The best of a few rounds: the rate the hardware reaches, not a moment of contention."""
        return max(self(repeats) for _ in range(rounds))


def count_flops(run: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def training_step_flops(method, model: torch.nn.Module, stream, batch_size: int, budget_images: int,
                        device: torch.device, seed: int = 0) -> int:
    """Counted FLOPs of one training step on a copy of `model` (the trained weights are not touched)."""
    probe = copy.deepcopy(model).to(device).train()
    step = Step(noise=make_generator(derive_seed(seed, "flops-noise"), device),
                method=make_generator(derive_seed(seed, "flops-method"), device),
                images_seen=0, budget_images=budget_images, index=0)

    def one_step() -> None:
        pair = stream.training_pair(method, 0, batch_size, step, device)
        method.loss(probe, pair).loss.backward()

    return count_flops(one_step)


class CountFirstCall:
    """A denoiser whose first call runs under the FLOP counter: FLOPs per evaluation of that chunk."""

    def __init__(self, denoise):
        self.denoise = denoise
        self.flops_per_evaluation: float | None = None

    def __call__(self, items):
        if self.flops_per_evaluation is not None:
            return self.denoise(items)
        with FlopCounterMode(display=False) as counter:
            outputs = self.denoise(items)
        self.flops_per_evaluation = counter.get_total_flops() / max(1, len(items))
        return outputs

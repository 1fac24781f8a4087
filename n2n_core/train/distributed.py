"""Data-parallel training across processes: torchrun + DistributedDataParallel (DDP).

The rule that keeps a multi-process run exact and resumable on any number of ranks: the training
stream stays a pure function of (seed, images seen). Every rank builds the same global minibatch
(the same crops, the same training pair from the same step generators) and keeps its own
contiguous block of rows, so ranks never train on the same crops or noise and, with gradients
averaged by DDP, a W-rank step is the single-process step on the same global batch. A checkpoint
holds only weights, optimizer, EMA and counters, so it resumes on any number of ranks.

Generators carried inside a training pair (dropout masks of a course network) are re-derived per
rank from (seed, "method", step, rank), so no two ranks draw the same masks either.

Only the trainer and `benchmarks/training.py` use this module; with one process nothing here runs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..methods.base import TrainingPair
from ..seeding import derive_seed, make_generator


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job (rank 0 logs, validates and writes checkpoints)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's contiguous block of rows of an n-row global batch (n divisible by world size)."""
        per = n // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)


def env_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """RANK as set by torchrun (0 when not launched by it)."""
    return int(os.environ.get("RANK", "0"))


def launch(nproc: int, args: list[str]) -> int:
    """Run `python <args>` as nproc local processes under torchrun; return its exit code."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", *args]
    return subprocess.run(command, check=False).returncode


def init_from_env(device: torch.device) -> tuple[DistContext | None, torch.device]:
    """Join the torchrun job described by the environment; (None, device) in a single process.

    Backend nccl on CUDA (one GPU per process: cuda:LOCAL_RANK), gloo on CPU. Idempotent.
    """
    if env_world_size() <= 1:
        return None, device
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA "
                              "device(s); use --nproc_per_node at most the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank), device


def shutdown() -> None:
    """Leave the process group (if one was joined)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_divisible(batch_size: int, budget_images: int, world_size: int) -> None:
    """Every step's global batch must split into equal blocks, the last (partial) one included."""
    if batch_size % world_size or budget_images % world_size:
        raise ConfigError(
            f"the global batch (train.batch_size={batch_size}) and the budget "
            f"(train.budget_images={budget_images}) must be divisible by the number of processes "
            f"({world_size}); change --nproc or set train.batch_size"
        )


def shard_pair(pair: TrainingPair, ctx: DistContext, n: int, seed: int, step: int) -> TrainingPair:
    """This rank's rows of a global training pair: n-row tensors are sliced, generators re-derived."""
    rows = ctx.rows(n)
    changes = {}
    for f in dataclasses.fields(pair):
        value = getattr(pair, f.name)
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
            changes[f.name] = value[rows]
        elif isinstance(value, torch.Generator):
            changes[f.name] = make_generator(derive_seed(seed, "method", step, "rank", ctx.rank),
                                             value.device)
    return dataclasses.replace(pair, **changes)


class DataParallel(nn.parallel.DistributedDataParallel):
    """DDP that also answers the wrapped network's own attributes (SSDN's estimated_level, …),
    so a method's loss works on it unchanged."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":  # not set yet (inside DDP's own __init__)
                raise
            return getattr(self.module, name)


def wrap(model, device: torch.device) -> DataParallel:
    """The DDP view of `model` used for training steps; `model` itself stays what is saved.

    On CUDA, batch norm layers become SyncBatchNorm (statistics over the global batch); they share
    their parameters and buffers with `model`. Networks that are not torch.nn modules (the
    from-scratch network) cannot be averaged by DDP and are refused.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{type(model).__name__} is not a torch.nn module, so DistributedDataParallel "
                          "cannot average its gradients; train this method in one process")
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return DataParallel(model, device_ids=ids, output_device=device.index if ids else None)


def mean_over_ranks(value: Tensor) -> float:
    """The mean of a scalar over all ranks (the global batch's loss, for logging)."""
    import torch.distributed as dist

    total = value.detach().float().reshape(1).clone()
    dist.all_reduce(total)
    return float(total) / dist.get_world_size()


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()

"""Device choice: 'auto' prefers CUDA; asking for CUDA where there is none is a clear error."""

from __future__ import annotations

import ctypes
import sys

import torch

from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when available, else cpu; 'cuda' without CUDA is a ConfigError.

    Choosing the CPU also applies `keep_freed_memory` (once per process)."""
    device = _choose(name)
    if device.type == "cpu":
        keep_freed_memory()
    return device


def _choose(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} was asked for but CUDA is not available on this machine; "
                              "use cpu (--device cpu, or --set train.device=cpu when training)")
        return torch.device(name)
    if name != "cpu":
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device("cpu")


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's malloc.h
_freed_memory_kept: bool | None = None


def keep_freed_memory() -> bool:
    """On Linux glibc, stop malloc from handing large freed blocks back to the OS; True if applied.

    PyTorch's CPU tensors come from malloc, and glibc serves blocks above its mmap threshold
    (≤ 32 MB; a training step's activations are larger) with a fresh mmap that it unmaps on free,
    so every step would page-fault and zero-fill its activations again (measured in
    benchmarks/perf/README.md, item 6). The cost: the process keeps its peak memory. Process-wide,
    applied once; elsewhere (macOS, musl) a no-op.
    """
    global _freed_memory_kept
    if _freed_memory_kept is None:
        _freed_memory_kept = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL("libc.so.6").mallopt
                _freed_memory_kept = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)
                                          and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
            except (OSError, AttributeError):  # not glibc
                pass
    return _freed_memory_kept


def free_memory(device: torch.device) -> int:
    """Bytes free for new tensors on `device` (CUDA: the driver's count; CPU: available memory)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available

"""The only place seeds become random generators: derive_seed(*keys) and make_generator(seed)."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*keys: object) -> int:
    """Return a 63-bit seed that depends only on the keys' reprs (stable across runs and machines).

    `derive_seed(run_seed, "noise", step)` gives every step its own independent stream, so a
    resumed run draws exactly what an uninterrupted one would have drawn.
    """
    text = "\x1f".join(repr(k) for k in keys).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh torch.Generator on `device`, seeded with `seed`."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(seed)
    return generator

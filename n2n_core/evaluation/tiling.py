"""Denoise a large image in overlapping tiles, each output pixel taken from its most central tile.

Blind-spot networks learn their deep levels from the training crops, so on images much larger than
those crops they break (docs/methods.md §4: 25.9 dB on 64² crops, 18.5 dB on 256² after training on
64²). Scoring them in tiles of the training-crop size at stride tile/2, keeping from each tile the
pixels closest to its centre, recovers the crop-sized quality (25.8 dB in the same measurement).
What a method estimates per image (`NoisyBatch.estimate`) comes from the whole image and is handed
to every tile of it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..device import free_memory
from ..noise import NoisyBatch


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile offsets covering [0, size): 0, stride, 2·stride, …, and a last one ending at size."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def nearest_tile(size: int, starts: list[int], tile: int) -> Tensor:
    """For each coordinate, the index of the tile whose centre is nearest (ties: the earlier one)."""
    centres = torch.tensor([s + (tile - 1) / 2 for s in starts])
    coords = torch.arange(size, dtype=torch.float64)[:, None]
    return torch.argmin((coords - centres[None]).abs(), dim=1)


# Bytes a network of this project may hold per input pixel while it denoises tiles in inference
# mode: the blind-spot network (four rotations of up to 144 float32 channels, a few alive at once)
# peaks below this; the measurement is in benchmarks/perf/README.md.
ACTIVATION_BYTES_PER_PIXEL = 12 << 10


def tiles_per_call(noisy: Tensor, tile: int, free_bytes: int | None = None) -> int:
    """How many tiles of a (N, C, H, W) batch to denoise in one call: every tile of it where a
    quarter of the free memory of its device holds their activations, fewer otherwise (at least 1)."""
    if free_bytes is None:
        free_bytes = free_memory(noisy.device)
    per_tile = noisy.shape[0] * tile * tile * ACTIVATION_BYTES_PER_PIXEL
    return max(1, (free_bytes // 4) // per_tile)


def denoise_tiled(denoise: Callable[[NoisyBatch], Tensor], batch: NoisyBatch, tile: int,
                  stride: int | None = None, tiles_per_call: int = 8) -> Tensor:
    """Apply `denoise` to square tiles of a (N, 3, H, W) batch, `tiles_per_call` tiles of every image
    per call, and stitch the central parts."""
    noisy = batch.noisy
    n, c, h, w = noisy.shape
    if h <= tile and w <= tile:
        return denoise(batch)
    stride = stride or tile // 2
    ys, xs = tile_starts(h, tile, stride), tile_starts(w, tile, stride)
    owner_y, owner_x = nearest_tile(h, ys, tile), nearest_tile(w, xs, tile)
    out = torch.empty_like(noisy)
    positions = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
    for first in range(0, len(positions), tiles_per_call):
        chunk = positions[first : first + tiles_per_call]
        tiles = torch.cat([noisy[:, :, ys[iy] : ys[iy] + tile, xs[ix] : xs[ix] + tile] for iy, ix in chunk])
        level = batch.level.repeat(len(chunk))  # tile k of image n sits at row k·N + n, as cat does
        estimate = None if batch.estimate is None else batch.estimate.repeat(len(chunk))
        result = denoise(NoisyBatch(tiles, level, estimate)).to(out.dtype)
        for k, (iy, ix) in enumerate(chunk):
            rows = torch.nonzero(owner_y == iy).flatten()
            cols = torch.nonzero(owner_x == ix).flatten()
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            part = result[k * n : (k + 1) * n]
            out[:, :, r0:r1, c0:c1] = part[:, :, r0 - ys[iy] : r1 - ys[iy], c0 - xs[ix] : c1 - xs[ix]]
    return out

"""Tiled denoising for blind-spot networks (docs/methods.md §4): tiles cover the image, and every output
pixel comes from the tile whose centre is nearest to it.

The reference is a brute-force loop over pixels and tiles (Euclidean distance to each tile centre,
first tile in row-major order on ties). Inputs encode (image, row, column) in their values, so a
test denoiser can tell which tile it was handed without any help from the code under test.
"""

from __future__ import annotations

import pytest
import torch

from n2n_core.evaluation.tiling import (ACTIVATION_BYTES_PER_PIXEL, denoise_tiled, nearest_tile, tile_starts,
                                        tiles_per_call)
from n2n_core.noise import NoisyBatch

CODE_IMAGE = 1_000_000  # value = image·1e6 + row·1000 + col (exact in float64)


@pytest.mark.parametrize(("size", "tile", "stride"), [
    (128, 64, 32), (130, 64, 32), (64, 64, 32), (40, 64, 32), (97, 32, 16), (65, 64, 32), (200, 64, 64),
])
def test_tile_starts_cover_the_whole_range(size, tile, stride):
    starts = tile_starts(size, tile, stride)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert all(0 <= s <= max(0, size - tile) for s in starts), "a tile reaches outside the image"
    covered = set()
    for s in starts:
        covered.update(range(s, min(s + tile, size)))
    assert covered == set(range(size))
    assert all(b - a <= stride for a, b in zip(starts, starts[1:])), "tiles further apart than the stride"
    if size >= tile:
        assert starts[-1] == size - tile  # the last tile ends exactly at the border


def coded_batch(n: int, h: int, w: int) -> torch.Tensor:
    img = torch.arange(n, dtype=torch.float64).view(n, 1, 1, 1)
    rows = torch.arange(h, dtype=torch.float64).view(1, 1, h, 1)
    cols = torch.arange(w, dtype=torch.float64).view(1, 1, 1, w)
    return (img * CODE_IMAGE + rows * 1000 + cols).expand(n, 3, h, w).clone()  # (N, 3, H, W)


def brute_force_owner(h: int, w: int, tile: int, stride: int) -> dict[tuple[int, int], tuple[int, int]]:
    """(row, col) → (tile top, tile left) of the nearest tile centre, by checking every tile."""
    ys, xs = tile_starts(h, tile, stride), tile_starts(w, tile, stride)
    tiles = [(y0, x0) for y0 in ys for x0 in xs]  # row-major: ties go to the earlier tile
    half = (tile - 1) / 2
    owner = {}
    for r in range(h):
        for c in range(w):
            best, best_d = None, None
            for y0, x0 in tiles:
                d = (r - (y0 + half)) ** 2 + (c - (x0 + half)) ** 2
                if best_d is None or d < best_d:
                    best, best_d = (y0, x0), d
            owner[(r, c)] = best
    return owner


def test_identity_denoiser_returns_the_input_exactly():
    noisy = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    batch = NoisyBatch(noisy, torch.tensor([0.1, 0.2]))
    out = denoise_tiled(lambda b: b.noisy.clone(), batch, tile=32, tiles_per_call=5)
    assert torch.equal(out, noisy)


@pytest.mark.parametrize(("h", "w", "tile", "stride", "per_call"), [
    (128, 128, 64, None, 8),  # the smoke profile: 128² crops in 64² tiles at stride 32
    (96, 80, 32, 16, 5),  # uneven last tiles (80 = 32 + 3·16), chunks that do not divide the count
    (75, 75, 32, 20, 3),  # odd spacing of the last tile: ties between two centres occur
])
def test_every_pixel_comes_from_the_tile_with_the_nearest_centre(h, w, tile, stride, per_call):
    n = 2
    levels = torch.tensor([0.25, 0.75])
    seen = []

    def tagging_denoiser(batch: NoisyBatch) -> torch.Tensor:
        x = batch.noisy  # (k·n, 3, tile, tile)
        assert x.shape[-2:] == (tile, tile), "tiles must be square and tile-sized"
        corner = x[:, 0, 0, 0]
        image = torch.div(corner, CODE_IMAGE, rounding_mode="floor")
        top = torch.div(corner - image * CODE_IMAGE, 1000, rounding_mode="floor")
        left = corner - image * CODE_IMAGE - top * 1000
        # each tile carries the level of the image it was cut from
        assert torch.equal(batch.level, levels[image.long()]), "levels do not follow their images"
        seen.extend(zip(top.tolist(), left.tolist()))
        out = torch.empty_like(x)
        out[:, 0] = top.view(-1, 1, 1)  # channel 0: tile top, channel 1: tile left
        out[:, 1] = left.view(-1, 1, 1)
        out[:, 2] = x[:, 2]  # channel 2: the input itself, to check pixels land where they belong
        return out

    noisy = coded_batch(n, h, w)
    out = denoise_tiled(tagging_denoiser, NoisyBatch(noisy, levels), tile, stride=stride,
                        tiles_per_call=per_call)
    stride = stride or tile // 2
    n_tiles = len(tile_starts(h, tile, stride)) * len(tile_starts(w, tile, stride))
    assert len(seen) == n * n_tiles, "every tile of every image is denoised exactly once"
    assert torch.equal(out[:, 2], noisy[:, 2])

    owner = brute_force_owner(h, w, tile, stride)
    want_top = torch.tensor([[owner[(r, c)][0] for c in range(w)] for r in range(h)], dtype=torch.float64)
    want_left = torch.tensor([[owner[(r, c)][1] for c in range(w)] for r in range(h)], dtype=torch.float64)
    for i in range(n):
        assert torch.equal(out[i, 0], want_top), "rows taken from a tile that is not the most central"
        assert torch.equal(out[i, 1], want_left), "columns taken from a tile that is not the most central"
    # the owning tile always contains the pixel
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]
    assert ((rows >= want_top) & (rows < want_top + tile) & (cols >= want_left) & (cols < want_left + tile)).all()


def test_nearest_tile_breaks_ties_towards_the_earlier_tile():
    # tiles of 4 at 0 and 3 on a size-7 axis: centres 1.5 and 4.5; pixel 3 is equidistant
    assert nearest_tile(7, [0, 3], 4).tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_images_no_larger_than_a_tile_go_through_in_one_call():
    calls = []

    def denoiser(batch):
        calls.append(batch.noisy.shape)
        return batch.noisy * 2

    noisy = torch.rand(3, 3, 64, 64)
    out = denoise_tiled(denoiser, NoisyBatch(noisy, torch.zeros(3)), tile=64)
    assert calls == [noisy.shape] and torch.equal(out, noisy * 2)


def test_tiles_per_call_is_what_a_quarter_of_the_free_memory_holds():
    noisy = torch.zeros(2, 3, 256, 256)  # two images: a tile of each per position
    per_tile = 2 * 64 * 64 * ACTIVATION_BYTES_PER_PIXEL
    assert tiles_per_call(noisy, 64, free_bytes=4 * 10 * per_tile + 3) == 10
    assert tiles_per_call(noisy, 64, free_bytes=4 * 10 * per_tile - 1) == 9
    assert tiles_per_call(noisy, 64, free_bytes=0) == 1  # never none

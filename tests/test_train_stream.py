"""The training crop stream (docs/methods.md section 2): epochs without replacement, true crops, resumable.

Source images are random uint8 noise, so a crop's position can be recovered by exhaustive search
(a random 8x8 window occurs only once), independently of how the stream chose it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from n2n_core.data.train_stream import CropStream, pad_reflect


def find_window(image: torch.Tensor, crop: torch.Tensor) -> list[tuple[int, int]]:
    """Every (top, left) where `crop` (C, P, P) sits inside `image` (C, H, W), by brute force."""
    _, h, w = image.shape
    p = crop.shape[-1]
    windows = image.unfold(1, p, 1).unfold(2, p, 1)  # (C, H-P+1, W-P+1, P, P)
    match = (windows == crop[:, None, None]).flatten(3).all(-1).all(0)
    return [tuple(int(v) for v in idx) for idx in match.nonzero()]


def reflect_index(i: int, n: int) -> int:
    """numpy 'reflect' (edge not repeated) continued periodically: 0 1 2 1 0 1 2 … for n = 3."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i %= period
    return i if i < n else period - i


def reflect_pad_by_hand(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    _, h, w = image.shape
    rows = [reflect_index(i, h) for i in range(max(h, height))]
    cols = [reflect_index(j, w) for j in range(max(w, width))]
    return image[:, rows][:, :, cols]


# ----------------------------------------------------------------------------- order


def test_every_image_once_per_pass_and_epochs_reshuffled(tiny_images):
    n = 7
    stream = CropStream(tiny_images(n, 8, 8), patch_size=4, seed=3)
    orders = []
    for epoch in range(6):
        order = [stream.image_index(epoch * n + k) for k in range(n)]
        assert sorted(order) == list(range(n)), f"epoch {epoch} is not a permutation: {order}"
        orders.append(tuple(order))
    assert len(set(orders)) >= 5  # reshuffled every pass (7! orders; a repeat is unlikely)
    assert orders[0] != tuple(range(n))  # shuffled, not file order


def test_order_does_not_depend_on_query_order(tiny_images):
    images = tiny_images(5, 8, 8)
    forward = CropStream(images, 4, seed=1)
    backward = CropStream(images, 4, seed=1)
    counters = list(range(30))
    a = [forward.image_index(c) for c in counters]
    b = [backward.image_index(c) for c in reversed(counters)][::-1]
    assert a == b


def test_order_depends_on_seed(tiny_images):
    images = tiny_images(10, 8, 8)
    a = [CropStream(images, 4, seed=0).image_index(c) for c in range(30)]
    b = [CropStream(images, 4, seed=1).image_index(c) for c in range(30)]
    assert a != b


# ----------------------------------------------------------------------------- crops


def test_crops_are_true_windows_of_the_scheduled_image(tiny_images):
    images = tiny_images(5, 20, 27, seed=4)
    p = 8
    stream = CropStream(images, patch_size=p, seed=11)
    for counter in range(15):
        crop = stream.crop(counter)
        assert crop.shape == (3, p, p) and crop.dtype == torch.uint8
        hits = {i: find_window(img, crop) for i, img in enumerate(images)}
        found = {i: h for i, h in hits.items() if h}
        assert list(found) == [stream.image_index(counter)], f"counter {counter}: found in {list(found)}"
        assert len(next(iter(found.values()))) == 1


def test_crop_position_is_uniform_over_all_valid_offsets(tiny_images):
    image = tiny_images(1, 12, 11, seed=9)[0]
    p = 8  # 5 × 4 = 20 valid positions
    stream = CropStream([image], patch_size=p, seed=2)
    counts = np.zeros((12 - p + 1, 11 - p + 1))
    draws = 2000
    for counter in range(draws):
        (top, left), = find_window(image, stream.crop(counter))
        counts[top, left] += 1
    assert (counts > 0).all()  # corners included: randint upper bound is not off by one
    chi2 = ((counts - draws / counts.size) ** 2 / (draws / counts.size)).sum()
    assert stats.chi2(counts.size - 1).sf(chi2) > 1e-3


def test_batch_is_float32_unit_range_and_equals_crops_over_255(tiny_images):
    stream = CropStream(tiny_images(3, 10, 13), patch_size=6, seed=0)
    batch = stream.batch(5, 4)
    assert batch.shape == (4, 3, 6, 6) and batch.dtype == torch.float32
    assert batch.min() >= 0 and batch.max() <= 1
    for i in range(4):
        assert torch.equal(batch[i], stream.crop(5 + i).to(torch.float32) / 255)


# ----------------------------------------------------------------------------- reproducible, resumable


def test_same_seed_and_position_same_batch_other_seed_different(tiny_images):
    images = tiny_images(6, 16, 16)
    a = CropStream(images, 8, seed=5).batch(12, 4)
    b = CropStream(images, 8, seed=5).batch(12, 4)
    c = CropStream(images, 8, seed=6).batch(12, 4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(("first", "split"), [(0, 4), (4, 4), (3, 5), (9, 2)])
def test_resumed_addressing_matches_an_uninterrupted_stream(tiny_images, first, split):
    images = tiny_images(5, 12, 12)  # batches cross epoch boundaries (5 images)
    whole = CropStream(images, 6, seed=8).batch(first, 12)
    resumed = CropStream(images, 6, seed=8)  # a fresh stream, as after a restart
    head = resumed.batch(first, split)
    tail = CropStream(images, 6, seed=8).batch(first + split, 12 - split)
    assert torch.equal(torch.cat([head, tail]), whole)


def test_batch_8_4_is_tail_of_batch_4_8(tiny_images):
    stream = CropStream(tiny_images(5, 12, 12), 6, seed=0)
    assert torch.equal(stream.batch(8, 4), stream.batch(4, 8)[4:])


def test_different_counters_give_different_crops_of_the_same_image(tiny_images):
    stream = CropStream(tiny_images(1, 32, 32), 8, seed=0)
    positions = {find_window(stream.images[0], stream.crop(c))[0] for c in range(20)}
    assert len(positions) > 10  # the crop position is drawn per counter, not per image


# ----------------------------------------------------------------------------- small images


@pytest.mark.parametrize(("h", "w"), [(5, 7), (3, 20), (20, 2), (1, 1), (8, 8)])
def test_images_smaller_than_patch_are_reflect_padded(tiny_images, h, w):
    p = 8
    image = tiny_images(1, h, w, seed=h * 100 + w)[0]
    expected = reflect_pad_by_hand(image, p, p)
    assert torch.equal(pad_reflect(image, p, p), expected)
    stream = CropStream([image], patch_size=p, seed=0)
    for counter in range(6):
        crop = stream.crop(counter)
        assert crop.shape == (3, p, p)
        assert find_window(expected, crop), "crop is not a window of the reflect-padded image"
    batch = stream.batch(0, 3)
    assert batch.shape == (3, 3, p, p) and batch.dtype == torch.float32


def test_pad_reflect_leaves_large_images_alone_and_pads_only_the_short_side(tiny_images):
    image = tiny_images(1, 10, 4)[0]
    assert pad_reflect(image, 8, 4) is image
    padded = pad_reflect(image, 8, 9)
    assert padded.shape == (3, 10, 9)
    assert torch.equal(padded, reflect_pad_by_hand(image, 8, 9))
    assert torch.equal(padded[:, :, :4], image)  # padding only at the right


def test_empty_image_list_rejected():
    with pytest.raises(ValueError):
        CropStream([], 8, seed=0)


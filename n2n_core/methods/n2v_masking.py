"""Noise2Void blind-spot masking (docs/methods.md section 6): a pure, vectorised, seeded function.

`n2v_mask(noisy, rng, percent, radius, allow_center)` picks the masked positions and replaces
their values by a random neighbour (N2V); `n2v_median_mask(noisy, rng, percent, radius)` picks
them the same way and replaces them by the median of the window without the centre (N2V2); `masked_mse(pred, target, mask)` is the loss on the masked entries only. The target
of Noise2Void is the *same* noisy tensor that was handed to `n2v_mask` (not a second noisy draw).

Documented choices (they follow the original N2V code unless said otherwise):

* ``percent`` is a percentage (0.2 means 0.2 % of the pixels), 0 < percent <= 100.
* Box side ``b = round(sqrt(100 / percent))`` with Python's ``round`` (half to even, as NumPy's
  ``np.round`` in the original). percent = 0.2 gives b = 22, i.e. 1/484 = 0.2066 % of the entries.
* Stratified grid: the image is tiled by ``ceil(H/b) x ceil(W/b)`` boxes of side b starting at
  (0, 0). In every box one offset (oy, ox) is drawn uniformly from {0..b-1}^2, **also in the boxes
  cut off by the bottom/right border**, and the position is **dropped if it falls outside the
  image** (exactly what the original ``get_stratified_coords2D`` does). Consequence: every pixel is
  masked with probability exactly 1/b^2, borders included (no over-sampling of the partial boxes);
  each full box holds exactly one masked position, a partial box holds zero or one, so the number
  of masked entries varies a little from draw to draw.
* Positions are drawn independently for every image and every channel (each channel has its own
  set of positions).
* Replacement: the masked value is replaced by the value, in the same image and channel, of a pixel
  drawn uniformly from the (2r+1)x(2r+1) window centred on it, cropped at the image border. With
  ``allow_center=False`` it is drawn uniformly from the cropped window *minus the centre* (no
  redraw): an index k is drawn uniformly from {0..M-2} (M = cropped window size) and k is shifted
  by one when k >= the centre's index, which is exactly uniform over the M-1 allowed pixels.
  With ``allow_center=True`` k is drawn from {0..M-1}. The uniform index is taken as a 62-bit
  random integer modulo M (M <= (2r+1)^2), so the deviation from exact uniformity is below
  M / 2^62 (about 3e-17 for r = 5), i.e. none that any experiment can see.
* Replacement sources are read from the *original* noisy tensor, never from an already replaced
  value.
* Draw order from ``rng``: oy, ox, then the window index; each is one call for the whole batch,
  so the result depends only on (rng state, shape, percent, radius, allow_center) and not on the
  device's thread count. CPU and CUDA generators produce different streams (torch's own property).
* No host/device synchronisation: positions in dropped boxes are written to a scratch slot that is
  discarded, instead of filtering them with a data-dependent boolean index.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from n2n_core.errors import ConfigError

__all__ = ["n2v_box_size", "n2v_mask", "n2v_median_mask", "masked_mse"]

_RANDOM_BITS_HIGH = 2**62


def n2v_box_size(percent: float) -> int:
    """Side of the stratified box for `percent` % masked pixels: round(sqrt(100 / percent))."""
    percent = float(percent)
    if not math.isfinite(percent) or not 0.0 < percent <= 100.0:
        raise ConfigError(
            f"N2V masked-pixel percentage must be in (0, 100], got {percent!r}; "
            "it is a percentage, e.g. 0.2 for 0.2 % of the pixels"
        )
    return max(1, round(math.sqrt(100.0 / percent)))


def _check_inputs(noisy: Tensor, rng: torch.Generator, radius: int, who: str) -> int:
    """Validate the arguments shared by both maskers; returns the radius as an int."""
    if not isinstance(noisy, Tensor) or noisy.dim() != 4:
        shape = tuple(noisy.shape) if isinstance(noisy, Tensor) else type(noisy).__name__
        raise ConfigError(f"{who} expects a tensor of shape (N, C, H, W), got {shape}")
    if not isinstance(rng, torch.Generator):
        raise ConfigError(f"{who} needs an explicit torch.Generator, got {type(rng).__name__}")
    if rng.device.type != noisy.device.type:
        raise ConfigError(
            f"{who}: generator is on {rng.device.type} but the tensor is on "
            f"{noisy.device.type}; make the generator with "
            "n2n_core.seeding.make_generator(seed, device=tensor.device)"
        )
    if isinstance(radius, bool) or int(radius) != radius or radius < 0:
        raise ConfigError(f"N2V replacement radius must be an integer >= 0, got {radius!r}")
    return int(radius)


def _stratified_positions(shape, b: int, rng: torch.Generator, device) -> tuple[Tensor, Tensor, Tensor]:
    """One (y, x) per b×b box and channel, as the module docstring says: (y, x, valid), each of
    shape (N, C, ceil(H/b), ceil(W/b)); out-of-image positions are clamped and marked invalid.
    Draws oy then ox from `rng` (one call each for the whole batch)."""
    n, c, h, w = shape
    nby, nbx = -(-h // b), -(-w // b)
    box_shape = (n, c, nby, nbx)
    oy = torch.randint(0, b, box_shape, generator=rng, device=device)
    ox = torch.randint(0, b, box_shape, generator=rng, device=device)
    y = torch.arange(nby, device=device).view(1, 1, nby, 1) * b + oy
    x = torch.arange(nbx, device=device).view(1, 1, 1, nbx) * b + ox
    valid = (y < h) & (x < w)
    return y.clamp_max(h - 1), x.clamp_max(w - 1), valid  # clamped: written to scratch below


def _scatter_replacements(noisy: Tensor, y: Tensor, x: Tensor, valid: Tensor, values: Tensor,
                          mask_dtype) -> tuple[Tensor, Tensor]:
    """Copy of `noisy` with values[k] written at (image, channel, y[k], x[k]) where valid, and the
    0/1 mask of those entries. Invalid positions go to a scratch slot that is discarded (no
    data-dependent indexing, so no host/device synchronisation)."""
    n, c, h, w = noisy.shape
    numel = noisy.numel()
    device = noisy.device
    image = torch.arange(n, device=device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=device).view(1, c, 1, 1)
    plane = (image * c + channel) * (h * w)
    target_idx = torch.where(valid, plane + y * w + x, torch.full_like(y, numel)).reshape(-1)
    inputs = torch.empty(numel + 1, dtype=noisy.dtype, device=device)
    inputs[:numel] = noisy.reshape(-1)
    inputs[target_idx] = values.reshape(-1).to(noisy.dtype)
    mask = torch.zeros(numel + 1, dtype=mask_dtype, device=device)
    mask[target_idx] = 1
    return inputs[:numel].view(noisy.shape), mask[:numel].view(noisy.shape)


def n2v_mask(
    noisy: Tensor,
    rng: torch.Generator,
    percent: float = 0.2,
    radius: int = 5,
    allow_center: bool = False,
) -> tuple[Tensor, Tensor]:
    """Return (network input, loss mask) for one Noise2Void step on `noisy` of shape (N, C, H, W).

    The input is a copy of `noisy` whose masked entries are replaced by a uniformly random pixel
    of the same channel within the (2*radius+1)^2 window (cropped at the border; the centre
    excluded unless `allow_center`). The mask has the shape of `noisy`, dtype float (that of
    `noisy` when it is floating point, else float32), 1 at the masked entries and 0 elsewhere.
    All randomness comes from `rng`, which must live on the device type of `noisy`.
    See the module docstring for the exact sampling scheme.
    """
    radius = _check_inputs(noisy, rng, radius, "n2v_mask")
    b = n2v_box_size(percent)
    n, c, h, w = noisy.shape
    if not allow_center and (radius == 0 or h * w == 1):
        raise ConfigError(
            "N2V with allow_center=False needs radius >= 1 and an image of more than one pixel "
            f"(got radius={radius}, H={h}, W={w}): the window minus its centre would be empty"
        )

    device = noisy.device
    mask_dtype = noisy.dtype if noisy.is_floating_point() else torch.float32
    if noisy.numel() == 0:
        return noisy.clone(), torch.zeros(noisy.shape, dtype=mask_dtype, device=device)

    y, x, valid = _stratified_positions(noisy.shape, b, rng, device)
    raw = torch.randint(0, _RANDOM_BITS_HIGH, y.shape, generator=rng, device=device)

    # Cropped window [y0, y1] x [x0, x1] and a uniform index into it (minus the centre if asked).
    y0, y1 = (y - radius).clamp_min(0), (y + radius).clamp_max(h - 1)
    x0, x1 = (x - radius).clamp_min(0), (x + radius).clamp_max(w - 1)
    wy, wx = y1 - y0 + 1, x1 - x0 + 1
    size = wy * wx
    if allow_center:
        k = raw % size
    else:
        k = raw % (size - 1)
        centre = (y - y0) * wx + (x - x0)
        k = k + (k >= centre).to(k.dtype)
    sy = y0 + torch.div(k, wx, rounding_mode="floor")
    sx = x0 + k % wx

    image = torch.arange(n, device=device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=device).view(1, c, 1, 1)
    source_idx = ((image * c + channel) * (h * w) + sy * w + sx).reshape(-1)
    values = noisy.reshape(-1)[source_idx]
    return _scatter_replacements(noisy, y, x, valid, values, mask_dtype)


def n2v_median_mask(
    noisy: Tensor,
    rng: torch.Generator,
    percent: float = 1.5,
    radius: int = 5,
) -> tuple[Tensor, Tensor]:
    """N2V2's 'median' manipulator: like `n2v_mask`, but each masked entry is replaced by the
    median of its (2*radius+1)^2 window without the centre (same image and channel, window
    cropped at the border), read from the original `noisy`.

    Follows juglab/n2v `n2v/utils/n2v_utils.py`, `pm_median`: the window of radius
    `n2v_neighborhood_radius` (default 5, an 11×11 window) is cropped at the image border and
    the centre is masked out before `np.median`, which for an even count (120 values in the
    interior) is the mean of the two middle values. CAREamics' port (`median_manipulate`) clips
    the window coordinates at the border instead (repeating border pixels) and takes torch's
    lower middle value; we follow the TensorFlow code the N2V2 paper was run with.
    Masked positions are drawn exactly as in `n2v_mask` (same stratified grid, same draws of
    oy, ox from `rng`; nothing else is drawn).
    """
    radius = _check_inputs(noisy, rng, radius, "n2v_median_mask")
    n, c, h, w = noisy.shape
    if radius == 0 or h * w == 1:
        raise ConfigError(
            f"N2V2's median replacement needs radius >= 1 and an image of more than one pixel "
            f"(got radius={radius}, H={h}, W={w}): the window minus its centre would be empty"
        )
    if not noisy.is_floating_point():
        raise ConfigError(f"n2v_median_mask needs a floating-point tensor, got {noisy.dtype}")
    b = n2v_box_size(percent)
    device = noisy.device
    if noisy.numel() == 0:
        return noisy.clone(), torch.zeros(noisy.shape, dtype=noisy.dtype, device=device)

    y, x, valid = _stratified_positions(noisy.shape, b, rng, device)
    offsets = torch.arange(-radius, radius + 1, device=device)
    wy = y[..., None, None] + offsets.view(-1, 1)  # (N, C, nby, nbx, 2r+1, 1)
    wx = x[..., None, None] + offsets.view(1, -1)  # (N, C, nby, nbx, 1, 2r+1)
    inside = (wy >= 0) & (wy < h) & (wx >= 0) & (wx < w)
    inside = inside & ~((offsets.view(-1, 1) == 0) & (offsets.view(1, -1) == 0))  # drop the centre
    image = torch.arange(n, device=device).view(n, 1, 1, 1, 1, 1)
    channel = torch.arange(c, device=device).view(1, c, 1, 1, 1, 1)
    flat = ((image * c + channel) * h + wy.clamp(0, h - 1)) * w + wx.clamp(0, w - 1)
    window = noisy.reshape(-1)[flat.flatten(-2)]  # (N, C, nby, nbx, (2r+1)^2)
    inside = inside.expand(*flat.shape).flatten(-2)
    # outside values sort last (+inf); the median of the `count` real ones is the mean of the
    # two middle sorted values (the same one twice for an odd count), as np.median
    ordered = torch.where(inside, window, torch.full_like(window, math.inf)).sort(dim=-1).values
    count = inside.sum(dim=-1, keepdim=True)
    low = ordered.gather(-1, (count - 1) // 2)
    high = ordered.gather(-1, count // 2)
    medians = ((low + high) / 2).squeeze(-1)
    return _scatter_replacements(noisy, y, x, valid, medians, noisy.dtype)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the masked entries: sum(mask * (pred - target)^2) / sum(mask).

    `mask` is the float mask of `n2v_mask` (0/1; other non-negative weights act as weights).
    With an all-zero mask the result is 0 (and its gradient 0), not NaN.
    """
    if pred.shape != target.shape or pred.shape != mask.shape:
        raise ConfigError(
            "masked_mse needs pred, target and mask of one shape, got "
            f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.to(pred.dtype)
    total = (mask * (pred - target).square()).sum()
    count = mask.sum()
    safe = torch.where(count > 0, count, torch.ones_like(count))
    return total / safe

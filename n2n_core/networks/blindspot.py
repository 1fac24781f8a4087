"""The blind-spot U-Net of METHODS.md §4 (SSDN, SSDN μ-only): four rotated, upward-looking views.

Each view runs the §3 body with every 3×3 conv and every pool looking only at its own row and the
rows above; a final one-row shift makes each pixel see strictly the rows above it. Undoing the
rotations turns the four half-planes into up/left/down/right, whose union is every pixel but the
centre, so the output at a pixel does not depend on the input at that pixel.

Implementation: the spec's "pad a zero row on top, convolve same, drop the last row" is done as one
pad (2 rows top, 1 column each side) and a valid convolution: the same numbers, one copy instead of
pad + crop, and no wasted row. Keeping conv padding (2, 1) and carrying 2 junk rows at the bottom
instead avoids even that copy, but measured 2× slower training steps on CPU: oneDNN's backward is
slow for padding ≥ 2 on a 3×3 kernel, while the pad copy costs only a few percent of the forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from .unet import DEC_CH, UNetBody, check_image_batch, init_network_, make_head

N_VIEWS = 4  # rotations by 0°, 90°, 180°, 270°


class UpwardConv2d(nn.Conv2d):
    """3×3 conv whose output row i sees input rows i-2, i-1, i only (METHODS.md §4 step 2)."""

    def __init__(self, in_ch: int, out_ch: int, device=None, dtype=None):
        super().__init__(in_ch, out_ch, 3, padding=0, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        # = conv_same(pad_top_1(x))[..., :-1, :], with one copy instead of two
        return super().forward(F.pad(x, (1, 1, 2, 0)))


def upward_conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    """An `UpwardConv2d` left uninitialised (`init_network_` fills it)."""
    return skip_init(UpwardConv2d, in_ch, out_ch)


def shift_down(x: Tensor) -> Tensor:
    """Rows one down: a zero row on top, the last row dropped; one pad, negative at the end."""
    return F.pad(x, (0, 0, 1, -1))


def upward_max_pool2x2(x: Tensor) -> Tensor:
    """2×2 max-pool after a one-row downward shift: coarse row j sees rows ≤ 2j (§4 step 3)."""
    return F.max_pool2d(shift_down(x), 2)


def _memory_format(x: Tensor) -> torch.memory_format:
    """channels_last if x is stored that way, so the copies below keep the caller's layout."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def stack_rotations(x: Tensor) -> Tensor:
    """(N, C, S, S) → (4N, C, S, S): x rotated by k·90° (torch.rot90) in batch block k."""
    n = x.shape[0]
    out = torch.empty((N_VIEWS * n, *x.shape[1:]), dtype=x.dtype, device=x.device,
                      memory_format=_memory_format(x))
    for k in range(N_VIEWS):  # copied into place: torch.cat of rotated views drops channels_last
        out[k * n:(k + 1) * n].copy_(torch.rot90(x, k, dims=(2, 3)))
    return out


def unstack_rotations(h: Tensor) -> Tensor:
    """(4N, C, S, S) → (N, 4C, S, S): batch block k, rotated by -k·90°, into channel block k."""
    n, c = h.shape[0] // N_VIEWS, h.shape[1]
    out = torch.empty((n, N_VIEWS * c, *h.shape[2:]), dtype=h.dtype, device=h.device,
                      memory_format=_memory_format(h))
    for k in range(N_VIEWS):
        out[:, k * c:(k + 1) * c].copy_(torch.rot90(h[k * n:(k + 1) * n], -k, dims=(2, 3)))
    return out


class BlindSpotUNet(nn.Module):
    """The blind-spot net of METHODS.md §4: (N, in_channels, S, S) → (N, n_out, S, S), 32 | S.

    Args:
        n_out: output channels (3 for μ-only, 9 for SSDN full covariance).
        in_channels: image channels.
        zero_init_last: zero the last layer's weights and bias.
        rng: generator for the He-normal init; None uses torch's default generator.
    """

    def __init__(
        self,
        n_out: int = 3,
        in_channels: int = 3,
        zero_init_last: bool = False,
        *,
        rng: torch.Generator | None = None,
    ):
        super().__init__()
        self.body = UNetBody(in_channels, upward_conv3x3, upward_max_pool2x2)
        self.head = make_head([N_VIEWS * DEC_CH, N_VIEWS * DEC_CH, DEC_CH], n_out)
        init_network_(self, self.head[-1], zero_init_last, rng)

    def features(self, x: Tensor) -> Tensor:
        """The head's input, (N, 384, S, S); channel block k is from the view rotated by k·90°."""
        check_image_batch(x, "BlindSpotUNet")
        size = x.shape[-1]
        if x.shape[-2] != size:
            raise ValueError(
                f"BlindSpotUNet needs square inputs (it stacks 90° rotations along the batch), "
                f"got {x.shape[-2]}×{size}; crop to a square or denoise in square tiles"
            )
        views = self.body(stack_rotations(x))  # (4N, 96, S, S), row i sees rows ≤ i
        return unstack_rotations(shift_down(views))  # row i now sees rows < i only (§4 step 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (N, n_out, S, S)

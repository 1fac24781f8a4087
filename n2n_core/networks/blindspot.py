"""The blind-spot U-Net of METHODS.md §4 (SSDN, SSDN μ-only): four rotated, upward-looking views.

Each view runs the §3 body with every 3×3 conv and every pool looking only at its own row and the
rows above; a final one-row shift makes each pixel see strictly the rows above it. Undoing the
rotations turns the four half-planes into up/left/down/right, whose union is every pixel but the
centre, so the output at a pixel does not depend on the input at that pixel.

Implementation: the spec's "pad a zero row on top, convolve same, drop the last row" needs a padded
copy of every conv input (measured ≈10% of the conv's own time on CPU). Instead each 3×3 conv
pads 2 rows top *and* bottom (native, copy-free conv padding) and keeps the 2 extra rows it
produces at the bottom. Every layer here looks only upward (conv: rows i-2..i; pool: rows 2j-1,
2j; nearest upsample: row i//2), so the extra bottom rows never reach a true row; the body drops
them at each concatenation and `features` at the end. The cost is a few percent more conv rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from .unet import DEC_CH, UNetBody, check_image_batch, init_network_, make_head

N_VIEWS = 4  # rotations by 0°, 90°, 180°, 270°


def upward_conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    """3×3 conv whose output row i sees input rows i-2..i (§4 step 2); 2 extra rows at the bottom.

    Rows 0..H-1 of its output equal the spec's pad-top/conv-same/drop-last; rows H, H+1 are
    junk that only later rows can see. Left uninitialised (`init_network_` fills it).
    """
    return skip_init(nn.Conv2d, in_ch, out_ch, 3, padding=(2, 1))


def upward_max_pool2x2(x: Tensor) -> Tensor:
    """2×2 max-pool after a one-row downward shift (§4 step 3): coarse row j sees rows 2j-1, 2j.

    max_pool2d's own row padding does the shift without a copy; it pads with -inf, so row 0 is
    clamped at 0 to match the zero row the spec shifts in. May return one extra row at the bottom.
    """
    pooled = F.max_pool2d(x, 2, padding=(1, 0))
    pooled[:, :, 0].clamp_(min=0.0)  # max(0, x[0]) per window; the pool's backward keeps indices
    return pooled


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
    """(4N, C, S, S) → (N, 4C, S, S): batch block k rotated back by -k·90° into channel block k."""
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
        """The head's input, (N, 384, S, S): channel block k comes from the view rotated by k·90°."""
        check_image_batch(x, "BlindSpotUNet")
        size = x.shape[-1]
        if x.shape[-2] != size:
            raise ValueError(
                f"BlindSpotUNet needs square inputs (it stacks 90° rotations along the batch), "
                f"got {x.shape[-2]}×{size}; crop to a square or denoise in square tiles"
            )
        views = self.body(stack_rotations(x))  # (4N, 96, S + extra, S), row i sees rows ≤ i
        # one row down, extra rows dropped, in one pad: row i now sees rows < i only (§4 step 4)
        views = F.pad(views, (0, 0, 1, size - 1 - views.shape[2]))  # (4N, 96, S, S)
        return unstack_rotations(views)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (N, n_out, S, S)

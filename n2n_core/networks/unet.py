"""The 5-pool U-Net of docs/methods.md §3 (N2C, N2N, N2V, noise-level net) and its He init.

`UNetBody` (encoder and decoder up to conv1b) takes its 3×3 convolution and its pooling as
arguments, so the blind-spot network of §4 (blindspot.py) reuses it with upward-looking versions of
both.

N2V2's changes (Höck et al. 2022) are two options of `UNet`, off by default so every other method's
network, weights and outputs are unchanged: `pool="blur"` replaces every 2×2 max-pool by
`max_blur_pool2x2` (juglab/n2v `n2v/nets/blurpool.py`, `MaxBlurPool2D`), and `top_skip=False` drops
the decoder's full-resolution skip, which in this network is the concatenation of the input image
before conv1a (juglab/n2v `unet_blocks.py`, `skip_skipone`: the skip taken before the first pool;
CAREamics `models/unet/unet.py`, "top level skip connection not added for n2v2"). Channel widths
stay those of docs/methods.md §3 (conv1a then reads 96 channels instead of 99).

Layout: both networks run in channels_last (NHWC) whatever layout the caller passes, and hand the
output back in the caller's layout. On CPU, oneDNN convolutions on NCHW tensors reorder every input,
output and gradient to a blocked layout and back, and 1×1 convs on NCHW take PyTorch's slow
im2col path; in NHWC neither happens (measured: benchmarks/perf/README.md, "What changed", item 1).
cuDNN's tensor-core kernels prefer NHWC as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.utils import skip_init

LRELU_SLOPE = 0.1
N_POOLS = 5
SIZE_MULTIPLE = 2**N_POOLS  # 32: both sides must survive five 2×2 poolings exactly
ENC_CH = 48
DEC_CH = 96

Conv3x3Factory = Callable[[int, int], nn.Conv2d]
Pool = Callable[[Tensor], Tensor]

CHANNELS_LAST = torch.channels_last


def is_channels_last(x: Tensor) -> bool:
    """True if x is stored NHWC and not also plain contiguous (e.g. C == 1 or H == W == 1)."""
    return x.is_contiguous(memory_format=CHANNELS_LAST) and not x.is_contiguous()


def caller_layout(x: Tensor) -> torch.memory_format:
    """The memory format to hand results back in: channels_last only if x came that way."""
    return CHANNELS_LAST if is_channels_last(x) else torch.contiguous_format


def conv3x3_same(in_ch: int, out_ch: int) -> nn.Conv2d:
    """A 3×3 'same' convolution with bias, left uninitialised (`init_network_` fills it)."""
    # skip_init: the default init would draw from the global RNG only to be overwritten
    return skip_init(nn.Conv2d, in_ch, out_ch, 3, padding=1)


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    """A 1×1 convolution with bias, left uninitialised (`init_network_` fills it)."""
    return skip_init(nn.Conv2d, in_ch, out_ch, 1)


class _UpsampleCat(torch.autograd.Function):
    """cat([nearest 2× upsample of h, skip], dim 1), the decoder's input, written in one pass.

    The upsampled h is copied straight into its channels of the output (viewed as (N, C, H, 2, W, 2)
    blocks), and the backward sums the four gradient entries of each 2×2 block from that same
    view. `F.interpolate` + `torch.cat` write the upsampled tensor twice, and the interpolate's
    backward first copies its channel slice of the gradient out (measured: benchmarks/perf/README.md,
    "What changed", item 5).
    """

    @staticmethod
    def forward(ctx, h: Tensor, skip: Tensor) -> Tensor:
        n, c, height, width = h.shape
        dtype = torch.promote_types(h.dtype, skip.dtype)  # as torch.cat (autocast mixes them)
        out = torch.empty((n, c + skip.shape[1], 2 * height, 2 * width), dtype=dtype,
                          device=h.device, memory_format=caller_layout(h))
        blocks = out[:, :c].unflatten(3, (width, 2)).unflatten(2, (height, 2))  # a view of out
        blocks.copy_(h[:, :, :, None, :, None].expand_as(blocks))
        out[:, c:].copy_(skip)
        ctx.channels = c
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        c, height, width = ctx.channels, grad.shape[2] // 2, grad.shape[3] // 2
        blocks = grad[:, :c].unflatten(3, (width, 2)).unflatten(2, (height, 2))
        grad_h = blocks[:, :, :, 0, :, 0] + blocks[:, :, :, 0, :, 1]  # keeps grad's layout
        grad_h += blocks[:, :, :, 1, :, 0]
        grad_h += blocks[:, :, :, 1, :, 1]
        return grad_h, grad[:, c:]


def upsample_cat(h: Tensor, skip: Tensor) -> Tensor:
    """torch.cat([F.interpolate(h, scale_factor=2, mode="nearest"), skip], dim=1)."""
    return _UpsampleCat.apply(h, skip)


def upsample_nearest2x(h: Tensor) -> Tensor:
    """Nearest-neighbour 2× upsampling alone (the decoder level without a skip), in h's layout."""
    return F.interpolate(h, scale_factor=2.0, mode="nearest").contiguous(memory_format=caller_layout(h))


def max_pool2x2(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 2)


BLUR_TAPS = (1.0, 2.0, 1.0)  # binomial [1, 2, 1]; the 2-D kernel is its outer product / 16


def max_blur_pool2x2(x: Tensor) -> Tensor:
    """N2V2's MaxBlurPool (Zhang 2019, as juglab/n2v `MaxBlurPool2D`): (N, C, H, W) → (N, C, H/2, W/2).

    1. m = 2×2 max-pool at stride 1; the last row/column, whose window leaves the image, is the
       max of what is inside (TensorFlow's "SAME" max-pool pads after, never before);
    2. out[i, j] = Σ_{a,b ∈ 0..2} k[a]·k[b]/16 · m[2i + a, 2j + b], k = [1, 2, 1], with m = 0
       past the last row/column (TensorFlow's "SAME" depthwise convolution at stride 2 pads one
       zero row and column after on even sides, none before).
    CAREamics' PyTorch port (`models/unet/layers.py`, `MaxBlurPool`) centres the blur one
    max-pooled pixel earlier (zero padding before, H − 1 max values); we follow the TensorFlow
    code the N2V2 paper was run with.
    """
    channels = x.shape[1]
    m = F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, stride=1)
    taps = x.new_tensor(BLUR_TAPS)
    kernel = (torch.outer(taps, taps) / taps.sum() ** 2).expand(channels, 1, 3, 3)
    return F.conv2d(F.pad(m, (0, 1, 0, 1)), kernel, stride=2, groups=channels)


POOLS: dict[str, Pool] = {"max": max_pool2x2, "blur": max_blur_pool2x2}


def lrelu(x: Tensor) -> Tensor:
    # in place is safe (conv backward needs its input, not its output, and a positive slope lets
    # leaky_relu's backward use its result) and saves an activation-sized write per layer
    return F.leaky_relu(x, LRELU_SLOPE, inplace=True)


def he_init_(conv: nn.Conv2d, gain: float, rng: torch.Generator | None) -> None:
    """Weights ~ N(0, (gain / √fan_in)²), bias 0 (docs/methods.md §3); rng None: torch's default."""
    fan_in = conv.weight[0].numel()  # in_channels · kh · kw
    with torch.no_grad():
        conv.weight.normal_(0.0, gain / math.sqrt(fan_in), generator=rng)
        if conv.bias is not None:
            conv.bias.zero_()


def init_network_(
    model: nn.Module, last: nn.Conv2d, zero_init_last: bool, rng: torch.Generator | None
) -> None:
    """He-init every conv of `model` with gain √2, then `last` with gain 1 or all zeros (§3)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module is not last:
            he_init_(module, math.sqrt(2.0), rng)
    if zero_init_last:  # the noise-level net's rule: without it its estimate does not converge
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
    else:
        he_init_(last, 1.0, rng)


def make_head(widths: Sequence[int], n_out: int) -> nn.Sequential:
    """1×1 convs widths[0] → … → widths[-1] → n_out; LeakyReLU after all but the (linear) last."""
    layers: list[nn.Module] = []
    for in_ch, out_ch in zip(widths[:-1], widths[1:]):
        layers += [conv1x1(in_ch, out_ch), nn.LeakyReLU(LRELU_SLOPE, inplace=True)]
    layers.append(conv1x1(widths[-1], n_out))
    return nn.Sequential(*layers)


def check_image_batch(x: Tensor, net: str, channels: int | None = None) -> None:
    """Raise ValueError unless x is (N, C, H, W) with H and W multiples of 32 (and C = channels)."""
    if x.dim() != 4:
        raise ValueError(f"{net} expects a (N, C, H, W) batch, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{net} was built for {channels}-channel images but got {x.shape[1]} channels; "
            "the data's channel count (data.channels) must be the one the network was trained on"
        )
    height, width = x.shape[-2:]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ValueError(
            f"{net} needs H and W to be multiples of {SIZE_MULTIPLE} (it pools {N_POOLS} times), "
            f"got {height}×{width}; pad or crop the input first"
        )


class UNetBody(nn.Module):
    """Encoder and decoder of docs/methods.md §3 up to conv1b: (N, C, H, W) → (N, 96, H, W).

    `top_skip=False` (N2V2): the last decoder level reads the upsampled features alone, without
    the input image concatenated to them.
    """

    def __init__(self, in_channels: int, conv3x3: Conv3x3Factory, pool: Pool, top_skip: bool = True):
        super().__init__()
        self.pool = pool
        self.top_skip = top_skip
        # conv0, conv1 at full scale, conv2..conv5 each followed by a pool, conv6 at 1/32
        self.encoder = nn.ModuleList(conv3x3(c, ENC_CH) for c in [in_channels] + [ENC_CH] * 6)
        # decoder levels 5, 4, 3, 2, 1 read upsampled previous + skip (the image at level 1)
        dec_in = [2 * ENC_CH] + [DEC_CH + ENC_CH] * 3 + [DEC_CH + (in_channels if top_skip else 0)]
        self.decoder = nn.ModuleList(
            nn.ModuleList([conv3x3(c, DEC_CH), conv3x3(DEC_CH, DEC_CH)]) for c in dec_in
        )

    def forward(self, x: Tensor) -> Tensor:
        conv0, conv1, *pooled_convs, conv6 = self.encoder
        skips: list[Tensor | None] = [x if self.top_skip else None]  # the last level's skip
        h = self.pool(lrelu(conv1(lrelu(conv0(x)))))
        for conv in pooled_convs:  # conv2..conv5
            skips.append(h)
            h = self.pool(lrelu(conv(h)))
        h = lrelu(conv6(h))  # (N, 48, H/32, W/32)
        for (conv_a, conv_b), skip in zip(self.decoder, reversed(skips)):
            up = upsample_nearest2x(h) if skip is None else upsample_cat(h, skip)
            h = lrelu(conv_b(lrelu(conv_a(up))))
        return h  # (N, 96, H, W)


class UNet(nn.Module):
    """The U-Net of docs/methods.md §3: (N, in_channels, H, W) → (N, n_out, H, W), 32 divides H and W.

    Args:
        n_out: output channels (C for N2C/N2N/N2V, 9 for SSDN full covariance, 1 for noise level).
        zero_init_last: zero the last layer's weights and bias (the noise-level network's rule).
        in_channels: image channels C (3 RGB, 1 greyscale); the last decoder stage concatenates the
            input image, so it reads 96 + C channels (96 with top_skip=False).
        rng: generator for the He-normal init; None uses torch's default generator.
        pool: "max" (docs/methods.md §3) or "blur" (N2V2's MaxBlurPool, `max_blur_pool2x2`).
        top_skip: concatenate the input image before conv1a (§3); False for N2V2.
    """

    def __init__(
        self,
        n_out: int = 3,
        zero_init_last: bool = False,
        in_channels: int = 3,
        *,
        rng: torch.Generator | None = None,
        pool: str = "max",
        top_skip: bool = True,
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"UNet pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self.in_channels = in_channels
        self.body = UNetBody(in_channels, conv3x3_same, POOLS[pool], top_skip=top_skip)
        self.head = make_head([DEC_CH, DEC_CH, DEC_CH], n_out)
        init_network_(self, self.head[-1], zero_init_last, rng)
        self.to(memory_format=CHANNELS_LAST)  # weights in the layout the convs run in (see top)

    def forward(self, x: Tensor) -> Tensor:
        check_image_batch(x, "UNet", self.in_channels)
        out = self.head(self.body(x.contiguous(memory_format=CHANNELS_LAST)))
        return out.contiguous(memory_format=caller_layout(x))  # (N, n_out, H, W)

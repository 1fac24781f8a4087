"""Pure forward and backward functions of the from-scratch framework (docs/methods.md section 10).

No autograd and no ``torch.nn``: every function here is built from tensor operations only. Each
``*_forward`` returns ``(output, cache)``; the matching ``*_backward`` takes the cache and the
gradient of the loss with respect to the output and returns the gradients with respect to the
inputs (and parameters, for the convolutions).

Convolution is one matrix product (section 10): the input is unfolded into columns (one per
output position), multiplied by the weight reshaped to a (C_out, C_in·kh·kw) matrix, the bias is
added and the result reshaped to (B, C_out, H_out, W_out). Its backward: the input gradient is the
weight-transposed product folded back (fold sums overlapping patches), the weight gradient is the
output gradient times the unfolded input summed over the batch, and the bias gradient is the
output gradient summed over batch and positions. The transposed convolution is the convolution's
input gradient run forwards, and its backward is a convolution. The columns are built channels-
last from strided windows (see "Columns" below): the numbers of torch's ``unfold``, transposed.

Why one long module: it holds every forward/backward pair of the framework; each pair is short,
and together they share the column helpers (im2col, col2im) they are built on.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

Pair = tuple[int, int]


def pair(value: int | tuple[int, int] | list[int], name: str = "value") -> Pair:
    """``3 -> (3, 3)``; a 2-sequence is returned as a tuple. Anything else is a ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    out = tuple(int(v) for v in value)
    if len(out) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return out  # type: ignore[return-value]


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Spatial output size of a convolution along one axis (same formula as torch)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_transpose_output_size(
    size: int, kernel: int, stride: int, padding: int, output_padding: int, dilation: int
) -> int:
    """Spatial output size of a transposed convolution along one axis (same formula as torch)."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


# ----------------------------------------------------------------------------------------------
# Columns: unfold (im2col) and fold (col2im)
# ----------------------------------------------------------------------------------------------
#
# The padded input is viewed channels-last, its kh×kw windows are taken with Tensor.unfold (a
# strided view, no copy) and copied once into columns (B·L, kh·kw·C): torch.nn.functional.unfold's
# numbers, transposed (one row per output position) and with the column index ordered (kh, kw, C).
# One plain matrix product with the weight reshaped to (C_out, kh·kw·C) then covers the whole
# batch, and its result already *is* the output in channels-last memory order (returned as a
# (B, C_out, H_out, W_out) view, no copy). The fold (col2im) adds each of the kh·kw column blocks
# into a strided slice of a zero image.
#
# Returned tensors are usually channels-last-strided views: index them normally, and use
# .reshape (not .view) or .contiguous() where a flat layout is needed.


def _padded_channels_last(x: torch.Tensor, padding: Pair) -> torch.Tensor:
    """(B, C, H, W) -> zero-padded (B, H + 2ph, W + 2pw, C) (a view when there is no padding)."""
    batch, channels, height, width = x.shape
    ph, pw = padding
    x_cl = x.permute(0, 2, 3, 1)
    if ph == 0 and pw == 0:
        return x_cl
    buffer = x.new_zeros(batch, height + 2 * ph, width + 2 * pw, channels)
    buffer[:, ph : ph + height, pw : pw + width, :] = x_cl
    return buffer


def im2col(
    x: torch.Tensor,
    kernel: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    blocks: Pair | None = None,
) -> tuple[torch.Tensor, Pair]:
    """Columns ``(B·L, kh·kw·C)`` of ``x`` and the block grid ``(H_out, W_out)``.

    Row ``b·L + l`` holds the padded input patch of output position ``l`` of image ``b``, ordered
    (kernel row, kernel column, channel): ``unfold(x)`` transposed, with its column index
    reordered from (C, kh, kw). ``blocks`` keeps only the first ``blocks`` window positions.
    """
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    batch, channels = x.shape[:2]
    padded = _padded_channels_last(x, padding)  # (B, Hp, Wp, C)
    windows = padded.unfold(1, dh * (kh - 1) + 1, sh).unfold(2, dw * (kw - 1) + 1, sw)
    # windows: (B, H_out, W_out, C, eff_kh, eff_kw)
    if blocks is not None:
        windows = windows[:, : blocks[0], : blocks[1]]
    if dh != 1 or dw != 1:
        windows = windows[..., ::dh, ::dw]
    h_out, w_out = windows.shape[1], windows.shape[2]
    cols = windows.permute(0, 1, 2, 4, 5, 3).reshape(batch * h_out * w_out, kh * kw * channels)
    return cols, (h_out, w_out)


def col2im(
    cols: torch.Tensor,
    batch: int,
    channels: int,
    size: Pair,
    kernel: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    blocks: Pair,
) -> torch.Tensor:
    """Fold: the adjoint of :func:`im2col` (overlapping patches sum).

    ``cols``: (B·L, kh·kw·C) with ``L = blocks[0]·blocks[1]``; returns a (B, C, H, W) view of a
    channels-last image of size ``size``.
    """
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    h_out, w_out = blocks
    height, width = size
    patches = cols.view(batch, h_out, w_out, kh, kw, channels)
    image = cols.new_zeros(batch, height + 2 * ph, width + 2 * pw, channels)
    for i in range(kh):
        rows = slice(i * dh, i * dh + sh * (h_out - 1) + 1, sh)
        for j in range(kw):
            columns = slice(j * dw, j * dw + sw * (w_out - 1) + 1, sw)
            image[:, rows, columns, :].add_(patches[:, :, :, i, j, :])
    return image[:, ph : ph + height, pw : pw + width, :].permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------------


class ConvCache(NamedTuple):
    cols: torch.Tensor  # (B·L, kh·kw·C_in)
    w2: torch.Tensor  # the weight as the (C_out, kh·kw·C_in) matrix the columns were multiplied with
    input_shape: tuple[int, int, int, int]
    weight_shape: tuple[int, int, int, int]
    blocks: Pair  # (H_out, W_out)
    stride: Pair
    padding: Pair
    dilation: Pair
    has_bias: bool


def conv2d_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
) -> tuple[torch.Tensor, ConvCache]:
    """2-D cross-correlation (what torch calls conv2d): unfold + one matrix product.

    ``x``: (B, C_in, H, W); ``weight``: (C_out, C_in, kh, kw); ``bias``: (C_out,) or None.
    """
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    if x.dim() != 4:
        raise ValueError(f"conv2d expects a 4-D input (B, C, H, W), got shape {tuple(x.shape)}")
    batch, c_in, height, width = x.shape
    c_out, w_in, kh, kw = weight.shape
    if w_in != c_in:
        raise ValueError(f"conv2d: input has {c_in} channels but the weight expects {w_in}")
    h_out = conv_output_size(height, kh, stride[0], padding[0], dilation[0])
    w_out = conv_output_size(width, kw, stride[1], padding[1], dilation[1])
    if h_out <= 0 or w_out <= 0:
        raise ValueError(f"conv2d: input {height}x{width} is too small for this kernel/padding")
    cols, _ = im2col(x, (kh, kw), stride, padding, dilation)
    w2 = weight.permute(0, 2, 3, 1).reshape(c_out, kh * kw * c_in)
    out2 = torch.addmm(bias, cols, w2.t()) if bias is not None else torch.mm(cols, w2.t())
    out = out2.view(batch, h_out, w_out, c_out).permute(0, 3, 1, 2)
    cache = ConvCache(cols, w2, tuple(x.shape), tuple(weight.shape), (h_out, w_out), stride, padding,
                      dilation, bias is not None)
    return out, cache


def conv2d_backward(
    grad_out: torch.Tensor, cache: ConvCache, need_input_grad: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Gradients of conv2d: ``(grad_input, grad_weight, grad_bias)``.

    The input gradient is the weight-transposed product folded back; the weight gradient is the
    output gradient times the columns, summed over the batch; the bias gradient is the output
    gradient summed over batch and positions. ``grad_input`` is None when ``need_input_grad`` is
    False; ``grad_bias`` is None without bias.
    """
    cols, w2, (batch, c_in, height, width), (c_out, _, kh, kw) = cache[:4]
    blocks, stride, padding, dilation, has_bias = cache[4:]
    grad2 = grad_out.permute(0, 2, 3, 1).reshape(-1, c_out)  # (B·L, C_out)
    grad_bias = grad2.sum(0) if has_bias else None
    grad_weight = torch.mm(grad2.t(), cols).view(c_out, kh, kw, c_in).permute(0, 3, 1, 2)
    grad_input = None
    if need_input_grad:
        grad_input = col2im(
            torch.mm(grad2, w2), batch, c_in, (height, width), (kh, kw), stride, padding, dilation, blocks
        )
    return grad_input, grad_weight, grad_bias


# ----------------------------------------------------------------------------------------------
# Transposed convolution (the convolution's input gradient run forwards)
# ----------------------------------------------------------------------------------------------


class ConvTransposeCache(NamedTuple):
    x2: torch.Tensor  # the input as (B·H·W, C_in)
    w2: torch.Tensor  # the weight as (C_in, kh·kw·C_out)
    input_shape: tuple[int, int, int, int]
    weight_shape: tuple[int, int, int, int]
    stride: Pair
    padding: Pair
    dilation: Pair
    has_bias: bool


def conv_transpose2d_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    output_padding: int | Pair = 0,
    dilation: int | Pair = 1,
) -> tuple[torch.Tensor, ConvTransposeCache]:
    """2-D transposed convolution with torch's semantics; ``weight``: (C_in, C_out, kh, kw).

    It is conv2d's input gradient run forwards: the columns ``x W`` folded into the output.
    """
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    output_padding = pair(output_padding, "output_padding")
    for axis in range(2):
        if output_padding[axis] >= max(stride[axis], dilation[axis]):
            raise ValueError("conv_transpose2d: output_padding must be smaller than stride or dilation")
    if x.dim() != 4:
        raise ValueError(f"conv_transpose2d expects a 4-D input, got shape {tuple(x.shape)}")
    batch, c_in, height, width = x.shape
    w_in, c_out, kh, kw = weight.shape
    if w_in != c_in:
        raise ValueError(f"conv_transpose2d: input has {c_in} channels but the weight expects {w_in}")
    out_size = (
        conv_transpose_output_size(height, kh, stride[0], padding[0], output_padding[0], dilation[0]),
        conv_transpose_output_size(width, kw, stride[1], padding[1], output_padding[1], dilation[1]),
    )
    if out_size[0] <= 0 or out_size[1] <= 0:
        raise ValueError("conv_transpose2d: the padding leaves an empty output")
    x2 = x.permute(0, 2, 3, 1).reshape(batch * height * width, c_in)
    w2 = weight.permute(0, 2, 3, 1).reshape(c_in, kh * kw * c_out)
    cols = torch.mm(x2, w2)  # (B·H·W, kh·kw·C_out): one column block per input position
    out = col2im(cols, batch, c_out, out_size, (kh, kw), stride, padding, dilation, (height, width))
    if bias is not None:
        out.add_(bias.view(1, c_out, 1, 1))
    cache = ConvTransposeCache(x2, w2, tuple(x.shape), tuple(weight.shape), stride, padding, dilation,
                               bias is not None)
    return out, cache


def conv_transpose2d_backward(
    grad_out: torch.Tensor, cache: ConvTransposeCache, need_input_grad: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Gradients of conv_transpose2d: ``(grad_input, grad_weight, grad_bias)``.

    The input gradient is a plain convolution (unfold + product) of the output gradient with the
    same weight; the weight gradient is the input times those columns, summed over the batch.
    """
    x2, w2, (batch, c_in, height, width), (_, c_out, kh, kw) = cache[:4]
    stride, padding, dilation, has_bias = cache[4:]
    grad_bias = grad_out.sum((0, 2, 3)) if has_bias else None
    # the first (H, W) windows: more exist only when output_padding >= stride (with dilation)
    cols, _ = im2col(grad_out, (kh, kw), stride, padding, dilation, blocks=(height, width))
    grad_weight = torch.mm(x2.t(), cols).view(c_in, kh, kw, c_out).permute(0, 3, 1, 2)
    grad_input = None
    if need_input_grad:
        grad_input = torch.mm(cols, w2.t()).view(batch, height, width, c_in).permute(0, 3, 1, 2)
    return grad_input, grad_weight, grad_bias


# ----------------------------------------------------------------------------------------------
# Nearest upsampling followed by a stride-1 "same" convolution, computed on the small image
# ----------------------------------------------------------------------------------------------
#
# Upsampling by s and then convolving with a k×k kernel and padding p (2p = k - 1, so the output
# is s·H × s·W) is, for each of the s² output phases (a, b), a convolution of the *small* image with
# a kernel whose taps are sums of the original taps: output row s·i + a with tap t reads small row
# i + floor((a + t - p) / s). Stacking the s² phase kernels as output channels gives one
# convolution of the small image (window 2R+1, padding R) followed by a pixel shuffle; it is the
# same linear map as upsample-then-convolve (only the order of floating-point additions differs),
# with s² fewer columns to unfold. The weight gradient maps back through the transposed sums.


def fused_upsample_conv_supported(scale: Pair, kernel: Pair, padding: Pair) -> bool:
    """True when nearest-upsample(scale) + conv(kernel, padding, stride 1) keeps size s·H × s·W."""
    return all(2 * padding[i] == kernel[i] - 1 for i in range(2))


@functools.lru_cache(maxsize=64)
def _phase_offsets(scale: int, kernel: int, padding: int) -> tuple[tuple[tuple[int, ...], ...], int]:
    """Per phase a and tap t, the small-image offset floor((a + t - p) / s); and the radius R."""
    offsets = tuple(tuple((a + t - padding) // scale for t in range(kernel)) for a in range(scale))
    radius = max(abs(o) for row in offsets for o in row)
    return offsets, radius


def _phase_matrix(scale: int, kernel: int, padding: int, dtype, device) -> tuple[torch.Tensor, int]:
    """(s, 2R+1, k) 0/1 matrix M[a, o, t] = 1 iff tap t of phase a reads small offset o - R."""
    offsets, radius = _phase_offsets(scale, kernel, padding)
    rows = [
        [[1.0 if row[t] == o - radius else 0.0 for t in range(kernel)] for o in range(2 * radius + 1)]
        for row in offsets
    ]
    return torch.tensor(rows, dtype=dtype, device=device), radius


class UpConvCache(NamedTuple):
    conv: ConvCache  # cache of the small-image convolution with the phase kernels
    weight_shape: tuple[int, int, int, int]  # the original (C_out, C_in, kh, kw)
    mh: torch.Tensor  # (sh, 2Rh+1, kh)
    mw: torch.Tensor  # (sw, 2Rw+1, kw)
    scale: Pair
    has_bias: bool


def upsample_conv2d_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: int | Pair,
    padding: int | Pair,
) -> tuple[torch.Tensor, UpConvCache]:
    """conv2d(nearest ×scale upsampling of x, weight, bias, stride=1, padding) for 2·padding = k - 1."""
    scale, padding = pair(scale, "scale"), pair(padding, "padding")
    c_out, c_in, kh, kw = weight.shape
    if not fused_upsample_conv_supported(scale, (kh, kw), padding):
        raise ValueError("upsample_conv2d_forward needs a 'same' convolution (2·padding = kernel - 1)")
    sh, sw = scale
    mh, rh = _phase_matrix(sh, kh, padding[0], weight.dtype, weight.device)
    mw, rw = _phase_matrix(sw, kw, padding[1], weight.dtype, weight.device)
    # Phase kernels, phase-major: E[(a, b, co), ci, o, q] = sum_{t,u} Mh[a,o,t] Mw[b,q,u] W[co,ci,t,u]
    phase_w = torch.einsum("aot,bqu,ctu->abcoq", mh, mw, weight.reshape(c_out * c_in, kh, kw))
    phase_w = phase_w.reshape(sh * sw * c_out, c_in, 2 * rh + 1, 2 * rw + 1)
    phase_b = None if bias is None else bias.repeat(sh * sw)
    small, conv_cache = conv2d_forward(x, phase_w, phase_b, 1, (rh, rw), 1)
    batch, _, height, width = small.shape
    # pixel shuffle: channel (a, b, co) at (h, w) -> channel co at (sh·h + a, sw·w + b)
    out = (
        small.permute(0, 2, 3, 1)
        .reshape(batch, height, width, sh, sw, c_out)
        .permute(0, 1, 3, 2, 4, 5)
        .reshape(batch, height * sh, width * sw, c_out)
        .permute(0, 3, 1, 2)
    )
    return out, UpConvCache(conv_cache, tuple(weight.shape), mh, mw, scale, bias is not None)


def upsample_conv2d_backward(
    grad_out: torch.Tensor, cache: UpConvCache, need_input_grad: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`upsample_conv2d_forward`: ``(grad_input, grad_weight, grad_bias)``."""
    conv_cache, (c_out, c_in, kh, kw), mh, mw, (sh, sw), has_bias = cache
    batch, _, big_h, big_w = grad_out.shape
    height, width = big_h // sh, big_w // sw
    grad_small = (
        grad_out.permute(0, 2, 3, 1)
        .reshape(batch, height, sh, width, sw, c_out)
        .permute(0, 1, 3, 2, 4, 5)
        .reshape(batch, height, width, sh * sw * c_out)
        .permute(0, 3, 1, 2)
    )
    grad_input, grad_phase_w, grad_phase_b = conv2d_backward(grad_small, conv_cache, need_input_grad)
    gp = grad_phase_w.reshape(sh, sw, c_out * c_in, mh.shape[1], mw.shape[1])
    grad_weight = torch.einsum("aot,bqu,abcoq->ctu", mh, mw, gp).reshape(c_out, c_in, kh, kw)
    grad_bias = grad_phase_b.view(sh * sw, c_out).sum(0) if has_bias else None
    return grad_input, grad_weight, grad_bias


# ----------------------------------------------------------------------------------------------
# Activations and loss
# ----------------------------------------------------------------------------------------------


def relu_forward(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(0)


def relu_backward(grad_out: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Gradient of relu given its *output* (zero where the output is 0, as torch does at x = 0).

    The output is >= 0, so its sign is exactly the 0/1 mask (a multiply by a float mask is several
    times faster on CPU than masked_fill or where with a bool mask).
    """
    return grad_out * out.sign()


def sigmoid_forward(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


def sigmoid_backward(grad_out: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Gradient of the sigmoid given its *output* s: grad · s · (1 - s)."""
    return grad_out * out * (1 - out)


def mse_forward(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element; a 0-d tensor."""
    if pred.shape != target.shape:
        raise ValueError(f"mse: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    diff = (pred - target).reshape(-1)
    return torch.dot(diff, diff) / diff.numel()


def mse_backward(pred: torch.Tensor, target: torch.Tensor, grad_out: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Gradient of :func:`mse_forward` with respect to ``pred``: 2(pred - target)/n, times ``grad_out``."""
    return (pred - target).mul_(2.0 / pred.numel() * grad_out)

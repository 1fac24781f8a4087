"""The four torch.nn course U-Nets of docs/methods.md §10, sized for 32×32 crops.

Widths are modest (base C = 32) so a CPU trains them in minutes; the reports' exact widths and
depths are not all stated, so shapes follow §10's description and the choices are named here:

- `StridedUNet` (report A): two levels of two 3×3 convolutions + LeakyReLU(0.1); downsampling by
  a 3×3 stride-2 convolution; upsampling by a 3×3 stride-2 transposed convolution, concatenated
  with the encoder features of that level, then two 3×3 convolutions; a final 3×3 convolution to 3
  channels. Xavier (uniform) init, zero bias. 32² → 16² → 8².
- `ResidualUNet` (report A): the same shape with every double convolution replaced by a residual
  block (conv, GroupNorm, LeakyReLU, conv, GroupNorm, plus the input, through a 1×1 convolution when
  the channel count changes, then LeakyReLU). Xavier init.
- `BNDropoutUNet` (report B): two encoder blocks (3×3 conv, ReLU, BatchNorm, 2×2 max-pool, dropout)
  to 2C×8×8 (the report's 64×4×4 bottleneck needs a third halving that two pooling blocks on 32²
  crops do not give), four decoder blocks (3×3 transposed conv, concatenation with the skip of that
  scale, 3×3 conv, ReLU, BatchNorm, dropout); the first two upsample ×2, the last two keep the
  size; the third takes the input image as its skip; a 3×3 convolution to 3 channels.
- `PReLUUNet` (report E): a 3→C convolution, four encoder blocks (3×3 conv, PReLU, 2×2 max-pool),
  decoder blocks of nearest ×2 upsampling, concatenation with the stored encoder output (the input
  image at the last one) and two 3×3 convolutions with PReLU; two output convolutions to 3 channels
  and a sigmoid. Needs sides that are multiples of 16.

Initialisation never touches torch's global RNG: modules are built under a forked RNG state and
every convolution is then re-drawn from the explicit generator (Xavier where §10 says, else torch's
default rule: kaiming-uniform(a=√5) weight, U(±1/√fan_in) bias). Dropout draws its masks from a
generator handed to `forward` (the method passes the step's), so training is reproducible and a
resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.1
DROPOUT = 0.1  # report B does not state its rate
GROUPS = 8  # GroupNorm groups (report A); fewer when the channel count is not a multiple


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)


def up3x3(in_ch: int, out_ch: int, stride: int = 2) -> nn.ConvTranspose2d:
    """3×3 transposed convolution: ×2 with stride 2 (output_padding 1), same size with stride 1."""
    return nn.ConvTranspose2d(in_ch, out_ch, 3, stride=stride, padding=1, output_padding=stride - 1)


def init_convolutions_(model: nn.Module, rng: torch.Generator, xavier: bool) -> nn.Module:
    """Re-draw every (transposed) convolution of `model` from `rng`; returns the model."""
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                continue
            if xavier:
                nn.init.xavier_uniform_(module.weight, generator=rng)
                if module.bias is not None:
                    module.bias.zero_()
                continue
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=rng)
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight[0].numel())  # torch's fan_in: size(1)·k²
                module.bias.uniform_(-bound, bound, generator=rng)
    return model


def build(cls, rng: torch.Generator, xavier: bool, **kwargs) -> nn.Module:
    """Construct `cls(**kwargs)` without moving the global RNG, then initialise it from `rng`."""
    with torch.random.fork_rng(devices=[]):
        model = cls(**kwargs)
    return init_convolutions_(model, rng, xavier)


def dropout(x: Tensor, p: float, rng: torch.Generator | None, training: bool) -> Tensor:
    """Inverted dropout with masks from `rng` (none needed outside training)."""
    if not training or p == 0:
        return x
    if rng is None:
        raise ValueError("dropout in training mode needs the step's generator: call model(x, rng=...)")
    keep = torch.rand(x.shape, generator=rng, device=x.device, dtype=x.dtype) >= p
    return x * keep / (1 - p)


class DoubleConv(nn.Sequential):
    """Two 3×3 convolutions, each followed by LeakyReLU(0.1)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(conv3x3(in_ch, out_ch), nn.LeakyReLU(LRELU_SLOPE),
                         conv3x3(out_ch, out_ch), nn.LeakyReLU(LRELU_SLOPE))


class ResidualBlock(nn.Module):
    """LReLU(GN(conv(LReLU(GN(conv x)))) + skip(x)); skip is a 1×1 convolution when widths differ."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        groups = math.gcd(GROUPS, out_ch)
        self.conv1, self.norm1 = conv3x3(in_ch, out_ch), nn.GroupNorm(groups, out_ch)
        self.conv2, self.norm2 = conv3x3(out_ch, out_ch), nn.GroupNorm(groups, out_ch)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.norm1(self.conv1(x)), LRELU_SLOPE)
        h = self.norm2(self.conv2(h))
        return F.leaky_relu(h + self.skip(x), LRELU_SLOPE)


class StridedUNet(nn.Module):
    """Two-level U-Net with strided-convolution downsampling (report A); `block` picks the unit."""

    def __init__(self, channels: int = 32, block: type[nn.Module] = DoubleConv):
        super().__init__()
        c, c2 = channels, 2 * channels
        self.enc0 = block(3, c)  # 32²
        self.down1 = nn.Sequential(conv3x3(c, c2, stride=2), nn.LeakyReLU(LRELU_SLOPE))  # 16²
        self.enc1 = block(c2, c2)
        self.down2 = nn.Sequential(conv3x3(c2, c2, stride=2), nn.LeakyReLU(LRELU_SLOPE))  # 8²
        self.mid = block(c2, c2)
        self.up2 = up3x3(c2, c2)
        self.dec1 = block(2 * c2, c2)
        self.up1 = up3x3(c2, c)
        self.dec0 = block(2 * c, c)
        self.out = conv3x3(c, 3)

    def forward(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:  # sides multiples of 4
        s0 = self.enc0(x)  # rng unused: no dropout here (course U-Nets share one signature)
        s1 = self.enc1(self.down1(s0))
        h = self.mid(self.down2(s1))
        h = self.dec1(torch.cat([self.up2(h), s1], dim=1))
        h = self.dec0(torch.cat([self.up1(h), s0], dim=1))
        return self.out(h)


class ResidualUNet(StridedUNet):
    """The strided U-Net with residual GroupNorm blocks (report A)."""

    def __init__(self, channels: int = 32):
        super().__init__(channels, block=ResidualBlock)


class BNDropoutUNet(nn.Module):
    """Two pooling encoder blocks, four transposed-convolution decoder blocks (report B)."""

    def __init__(self, channels: int = 32, p: float = DROPOUT):
        super().__init__()
        c, c2 = channels, 2 * channels
        self.p = p
        self.enc1 = self._unit(nn.Conv2d(3, c, 3, padding=1), c)  # then pool: 16²
        self.enc2 = self._unit(nn.Conv2d(c, c2, 3, padding=1), c2)  # then pool: 8²
        self.up1, self.dec1 = up3x3(c2, c2), self._unit(nn.Conv2d(c2 + c2, c2, 3, padding=1), c2)  # 16²
        self.up2, self.dec2 = up3x3(c2, c), self._unit(nn.Conv2d(c + c, c, 3, padding=1), c)  # 32²
        self.up3, self.dec3 = up3x3(c, c, 1), self._unit(nn.Conv2d(c + 3, c, 3, padding=1), c)
        self.up4, self.dec4 = up3x3(c, c, 1), self._unit(nn.Conv2d(c, c, 3, padding=1), c)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    @staticmethod
    def _unit(conv: nn.Conv2d, width: int) -> nn.Sequential:
        return nn.Sequential(conv, nn.ReLU(), nn.BatchNorm2d(width))

    def forward(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:  # sides multiples of 4
        def drop(h: Tensor) -> Tensor:
            return dropout(h, self.p, rng, self.training)

        e1 = self.enc1(x)  # (N, C, H, W)
        e2 = self.enc2(drop(F.max_pool2d(e1, 2)))  # (N, 2C, H/2, W/2)
        h = drop(F.max_pool2d(e2, 2))  # (N, 2C, H/4, W/4): the bottleneck
        h = drop(self.dec1(torch.cat([self.up1(h), e2], dim=1)))
        h = drop(self.dec2(torch.cat([self.up2(h), e1], dim=1)))
        h = drop(self.dec3(torch.cat([self.up3(h), x], dim=1)))
        h = drop(self.dec4(self.up4(h)))
        return self.out(h)


class PReLUUNet(nn.Module):
    """Max-pool encoder, nearest-upsampling decoder with PReLU and a sigmoid output (report E)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        c, c2 = channels, 2 * channels
        self.inc = nn.Sequential(conv3x3(3, c), nn.PReLU())
        self.enc = nn.ModuleList(nn.Sequential(conv3x3(c, c), nn.PReLU()) for _ in range(4))
        # decoder level k takes the upsampled state (c at the bottom, else 2c) and a skip
        widths_in = [c + c, c2 + c, c2 + c, c2 + 3]
        self.dec = nn.ModuleList(
            nn.Sequential(conv3x3(w, c2), nn.PReLU(), conv3x3(c2, c2), nn.PReLU()) for w in widths_in
        )
        self.out = nn.Sequential(conv3x3(c2, c), nn.PReLU(), conv3x3(c, 3), nn.Sigmoid())

    def forward(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:  # sides multiples of 16
        skips = [x]  # rng unused: no dropout here (course U-Nets share one signature)
        h = self.inc(x)
        for block in self.enc:
            h = F.max_pool2d(block(h), 2)
            skips.append(h)
        skips.pop()  # the deepest pooled output is the decoder's start, not a skip
        for block in self.dec:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1))
        return self.out(h)


# name → (class, Xavier init, default width); the scratch network lives in n2n_core.scratch
NETWORKS: dict[str, tuple[type[nn.Module], bool, int]] = {
    "strided": (StridedUNet, True, 32),
    "residual": (ResidualUNet, True, 32),
    "bn_dropout": (BNDropoutUNet, False, 32),
    "prelu": (PReLUUNet, False, 32),
}


def course_unet(name: str, rng: torch.Generator, channels: int | None = None) -> nn.Module:
    """Build course network `name` with base width `channels` (default: its own), init from `rng`."""
    cls, xavier, width = NETWORKS[name]
    return build(cls, rng, xavier, channels=channels or width)

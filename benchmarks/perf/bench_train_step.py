"""Training-step speed of each trainable method against this machine's float32 matmul rate.

    .venv/bin/python -m benchmarks.perf.bench_train_step [--patch 64 128] [--methods n2c ssdn ...]
        [--repeats 3] [--threads N] [--batch 4] [--no-plain]

A step is the trainer's step (n2n_core/train/trainer.py `Trainer._step`), written out: crops from
`CropStream` (bsd300-train under $N2N_DATA, or random images if the set is missing), the method's
training pair, zero_grad, loss, backward, `grads_are_finite`, Adam (`make_optimizer`), and the
loss read back to the host. Per (method, patch) it reports:

* seconds per step (median) and images per second;
* FLOPs per step (`torch.utils.flop_counter.FlopCounterMode`, forward + backward; it counts the
  convolutions and matmuls only, so elementwise work, copies and the optimizer are the overhead
  the ratio below shows);
* floor = FLOPs ÷ the machine's float32 matmul rate (a large `torch.mm`, measured between every
  two timed steps, so a change of load on this shared machine affects both);
* ratio = step time ÷ floor, the median over the repeats of each step against the matmul rate
  measured right around it;
* plain: the same step with a straightforward PyTorch network of the same weights (NCHW,
  nn.Conv2d padding=1, pad-then-crop shifts, torch.rot90 + cat), timed alternately with ours;
  the table gives ours ÷ plain;
* prep: crop-stream batch + noise + training pair, as a fraction of the step.

Steps of one repeat see the same data; step k of the run reads crops k·B … k·B + B − 1, as in
training. A default run takes ~5 minutes on two cores (SSDN at 128²: ~3.5 s a step, 6 s on one);
--methods, --patch and --no-plain make it shorter.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.flops import MatmulRate, count_flops
from n2n_core.config import TrainConfig
from n2n_core.data.images import default_data_dir
from n2n_core.data.train_stream import CropStream
from n2n_core.errors import N2NError
from n2n_core.methods import build_method, method_config
from n2n_core.methods.base import Method, Step
from n2n_core.networks import BlindSpotUNet, UNet
from n2n_core.noise import parse_style
from n2n_core.seeding import derive_seed, make_generator
from n2n_core.device import keep_freed_memory
from n2n_core.train.finite import grads_are_finite

# benchmark key → (method name, config fields)
METHODS: dict[str, tuple[str, dict]] = {
    "n2c": ("n2c", {}),
    "n2n": ("n2n", {}),
    "n2v": ("n2v", {}),
    "ssdn": ("ssdn", {"sigma": "known", "covariance": "full"}),
    "ssdn-mu": ("ssdn-mu", {}),
    "ssdn-per_image": ("ssdn", {"sigma": "per_image", "covariance": "full"}),
}
DEFAULT_METHODS = ["n2c", "n2n", "n2v", "ssdn", "ssdn-mu"]
SLOPE = 0.1


# --- the plain reference networks ----------------------------------------------------------------


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, SLOPE)


class PlainUNet(nn.Module):
    """docs/methods.md §3 written the obvious way: NCHW, nn.Conv2d(padding=1), pool, interpolate, cat."""

    def __init__(self, in_ch: int, n_out: int, head_in: int = 96, head_mid: int = 96):
        super().__init__()
        self.encoder = nn.ModuleList(nn.Conv2d(c, 48, 3, padding=1) for c in [in_ch] + [48] * 6)
        dec_in = [96] + [144] * 3 + [96 + in_ch]
        self.decoder = nn.ModuleList(
            nn.ModuleList([nn.Conv2d(c, 96, 3, padding=1), nn.Conv2d(96, 96, 3, padding=1)]) for c in dec_in
        )
        self.head = nn.Sequential(
            nn.Conv2d(head_in, head_mid, 1), nn.LeakyReLU(SLOPE), nn.Conv2d(head_mid, 96, 1),
            nn.LeakyReLU(SLOPE), nn.Conv2d(96, n_out, 1),
        )

    def conv(self, layer: nn.Conv2d, x: Tensor) -> Tensor:
        return layer(x)

    def pool(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, 2)

    def body(self, x: Tensor) -> Tensor:
        enc = self.encoder
        skips = [x]
        h = self.pool(_act(self.conv(enc[1], _act(self.conv(enc[0], x)))))
        for layer in enc[2:6]:
            skips.append(h)
            h = self.pool(_act(self.conv(layer, h)))
        h = _act(self.conv(enc[6], h))
        for (conv_a, conv_b), skip in zip(self.decoder, reversed(skips)):
            h = torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), skip], dim=1)
            h = _act(self.conv(conv_b, _act(self.conv(conv_a, h))))
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class PlainBlindSpot(PlainUNet):
    """docs/methods.md §4 done naively: pad a zero row on top, convolve 'same', crop; rot90 + cat."""

    def __init__(self, in_ch: int, n_out: int):
        super().__init__(in_ch, n_out, head_in=384, head_mid=384)

    @staticmethod
    def shift_down(x: Tensor) -> Tensor:
        return F.pad(x, (0, 0, 1, 0))[:, :, :-1]

    def conv(self, layer: nn.Conv2d, x: Tensor) -> Tensor:
        return layer(F.pad(x, (0, 0, 1, 0)))[:, :, :-1]

    def pool(self, x: Tensor) -> Tensor:
        return F.max_pool2d(self.shift_down(x), 2)

    def forward(self, x: Tensor) -> Tensor:
        views = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
        h = self.shift_down(self.body(views)).chunk(4)
        return self.head(torch.cat([torch.rot90(v, -k, dims=(2, 3)) for k, v in enumerate(h)], dim=1))


def _copy_weights(src: nn.Module, dst: nn.Module) -> nn.Module:
    src_params, dst_params = list(src.parameters()), list(dst.parameters())
    assert len(src_params) == len(dst_params), "plain twin has another parameter count"
    with torch.no_grad():
        for s, d in zip(src_params, dst_params):
            assert s.shape == d.shape, f"plain twin mismatch {tuple(s.shape)} vs {tuple(d.shape)}"
            d.copy_(s)  # keeps d's own (default, contiguous) layout
    return dst


def plain_twin(model: nn.Module) -> nn.Module:
    """`model` with every UNet / BlindSpotUNet replaced by its plain version (same weights)."""
    if isinstance(model, UNet):
        last = model.head[-1]
        return _copy_weights(model, PlainUNet(model.body.encoder[0].in_channels, last.out_channels))
    if isinstance(model, BlindSpotUNet):
        last = model.head[-1]
        return _copy_weights(model, PlainBlindSpot(model.body.encoder[0].in_channels, last.out_channels))
    twin = copy.deepcopy(model)
    for name, child in model.named_children():
        setattr(twin, name, plain_twin(child))
    for p in twin.parameters():  # parameters outside the networks (a learned level) stay as they are
        p.data = p.data.contiguous()
    return twin


# --- measurements ----------------------------------------------------------------------------------


def load_train_images(patch: int, seed: int) -> tuple[list[Tensor], str]:
    """bsd300-train as uint8 (3, H, W) tensors, or 32 random 321×481 images if it is missing."""
    from n2n_core.data.sets import resolve_set

    try:
        return resolve_set("bsd300-train", default_data_dir()).load(), "bsd300-train"
    except N2NError as err:
        print(f"note: bsd300-train unavailable ({err}); using random images")
        gen = torch.Generator().manual_seed(seed)
        return [torch.randint(0, 256, (3, 321, 481), generator=gen, dtype=torch.uint8) for _ in range(32)], "random"


@dataclass
class Row:
    method: str
    patch: int
    seconds: float
    images_per_s: float
    gflop: float
    floor_s: float
    ratio: float
    plain_seconds: float | None
    plain_gflop: float | None
    plain_ratio: float | None
    ours_over_plain: float | None
    prep_seconds: float
    prep_fraction: float
    matmul_gflops: float


class StepRunner:
    """The trainer's step for one method and model, on crops from one stream."""

    def __init__(self, method: Method, model: nn.Module, stream: CropStream, cfg: TrainConfig, seed: int):
        self.method, self.model, self.stream, self.seed = method, model.train(), stream, seed
        self.batch = cfg.batch_size
        self.optimizer = method.make_optimizer(model, cfg)

    def rngs(self, step: int) -> Step:  # = Trainer.step_context on the CPU
        return Step(noise=make_generator(derive_seed(self.seed, "noise", step)),
                    method=make_generator(derive_seed(self.seed, "method", step)))

    def prepare(self, step: int):
        clean = self.stream.batch(step * self.batch, self.batch)
        return self.method.training_pair(clean, self.rngs(step))

    def step(self, step: int) -> float:
        pair = self.prepare(step)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.method.loss(self.model, pair).loss
        loss.backward()
        if grads_are_finite(self.model):
            self.optimizer.step()
        return float(loss.detach())


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_one(key: str, patch: int, args, images: list[Tensor], rate: MatmulRate) -> Row:
    name, fields = METHODS[key]
    method = build_method(method_config(name, **fields), parse_style(args.noise))
    cfg = TrainConfig(budget_images=10**6, batch_size=args.batch, patch_size=patch)
    stream = CropStream(images, patch, args.seed)
    model = method.build_model(make_generator(args.seed))
    runners = {"ours": StepRunner(method, model, stream, cfg, args.seed)}
    if args.plain:
        runners["plain"] = StepRunner(method, plain_twin(model), stream, cfg, args.seed)

    step = 0
    for _ in range(args.warmup):
        for runner in runners.values():
            runner.step(step)
        step += 1
    flops = {k: count_flops(lambda r=r: r.step(step)) for k, r in runners.items()}
    step += 1

    times: dict[str, list[float]] = {k: [] for k in runners}
    ratios: dict[str, list[float]] = {k: [] for k in runners}
    rates, prep = [rate()], []
    for repeat in range(args.repeats):
        order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
        for k in order:
            seconds = timed(lambda r=runners[k]: r.step(step))
            rates.append(rate())
            times[k].append(seconds)
            # against the mean of the matmul rates measured just before and just after
            ratios[k].append(seconds / (flops[k] / 1e9 / ((rates[-2] + rates[-1]) / 2)))
        prep.append(timed(lambda: runners["ours"].prepare(step)))
        step += 1

    gflops = statistics.median(rates)
    sec = statistics.median(times["ours"])
    plain = "plain" in runners
    plain_sec = statistics.median(times["plain"]) if plain else None
    prep_sec = statistics.median(prep)
    return Row(
        method=key, patch=patch, seconds=sec, images_per_s=args.batch / sec,
        gflop=flops["ours"] / 1e9, floor_s=flops["ours"] / 1e9 / gflops,
        ratio=statistics.median(ratios["ours"]),
        plain_seconds=plain_sec, plain_gflop=flops["plain"] / 1e9 if plain else None,
        plain_ratio=statistics.median(ratios["plain"]) if plain else None,
        ours_over_plain=statistics.median(a / b for a, b in zip(times["ours"], times["plain"])) if plain else None,
        prep_seconds=prep_sec, prep_fraction=prep_sec / sec, matmul_gflops=gflops,
    )


def print_table(rows: list[Row]) -> None:
    head = (f"{'method':<15}{'patch':>6}{'s/step':>9}{'img/s':>8}{'GFLOP':>8}{'floor s':>9}"
            f"{'ratio':>7}{'plain s':>9}{'plain r':>8}{'ours/plain':>11}{'prep':>7}{'mm GF/s':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        plain = (f"{r.plain_seconds:>9.3f}{r.plain_ratio:>8.2f}{r.ours_over_plain:>11.2f}"
                 if r.plain_seconds is not None else f"{'-':>9}{'-':>8}{'-':>11}")
        print(f"{r.method:<15}{r.patch:>6}{r.seconds:>9.3f}{r.images_per_s:>8.2f}{r.gflop:>8.1f}"
              f"{r.floor_s:>9.3f}{r.ratio:>7.2f}{plain}{100 * r.prep_fraction:>6.1f}%{r.matmul_gflops:>9.1f}")


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument("--patch", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per method and patch")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps first (the FLOP-counting step after them is untimed too)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--noise", default="gaussian25")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mm-size", type=int, default=2048, help="side of the timed torch.mm")
    parser.add_argument("--no-plain", dest="plain", action="store_false", help="skip the plain reference")
    parser.add_argument("--default-malloc", dest="keep_memory", action="store_false",
                        help="leave glibc malloc as it is (the trainer applies keep_freed_memory on CPU)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    kept = keep_freed_memory() if args.keep_memory else False
    images, source = load_train_images(max(args.patch), args.seed)
    rate = MatmulRate(args.mm_size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.noise}, crops from {source}, keep_freed_memory {kept}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for patch in args.patch:
        for key in args.methods:
            rows.append(bench_one(key, patch, args, images, rate))
            r = rows[-1]
            print(f"  {key} {patch}: {r.seconds:.3f} s/step, ratio {r.ratio:.2f}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return rows


if __name__ == "__main__":
    main()

"""Zero-Shot Noise2Noise's per-image fit: seconds per Adam step in NCHW and channels_last (NHWC),
against the FLOP floor from the float32 matmul rate measured in the same run.

    .venv/bin/python benchmarks/perf/bench_zs_n2n.py [--side 256] [--steps 20] [--rounds 3] [--threads 1]

Each round times `--steps` iterations of ZSN2N.fit_and_apply on one random noisy image in each
layout, alternating, so both see the same load; the ratio NHWC ÷ NCHW is the median over rounds.
The floor counts the convolutions of one iteration (benchmarks/flops.count_flops) at the best
matmul rate of the round. Results: benchmarks/perf/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from benchmarks.flops import MatmulRate, count_flops
from n2n_core.methods.zs_n2n import ZSN2N, ZSN2NConfig, ZSN2NNet, zs_n2n_loss
from n2n_core.noise import parse_style

LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    method = ZSN2N(ZSN2NConfig(iterations=args.steps, lr_step=10**6), parse_style("gaussian25"))
    y = torch.rand(1, 3, args.side, args.side, generator=torch.Generator().manual_seed(0))
    net = ZSN2NNet(3, method.config.width)
    flops = count_flops(lambda: sum(zs_n2n_loss(net, y)).backward())  # one iteration's convolutions
    rate = MatmulRate()
    seconds: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    floors = []
    for _ in range(args.rounds):
        floors.append(flops / (rate.best_of() * 1e9))
        outputs = {}
        for name, layout in LAYOUTS.items():
            outputs[name], fit = method.fit_and_apply(y, memory_format=layout)
            seconds[name].append(fit.seconds / args.steps)
        gap = (outputs["NCHW"] - outputs["NHWC"]).abs().max().item()
    floor = statistics.median(floors)
    print(f"{args.side}² image, {args.steps} steps x {args.rounds} rounds, {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.2f}; floor {floor * 1e3:.1f} ms/step")
    for name in LAYOUTS:
        step = statistics.median(seconds[name])
        print(f"  {name}: {step * 1e3:.0f} ms/step, {step / floor:.2f}x the floor")
    ratios = [nhwc / nchw for nchw, nhwc in zip(seconds["NCHW"], seconds["NHWC"])]
    print(f"  NHWC / NCHW: {statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)}); "
          f"outputs differ by at most {gap:.1e}")


if __name__ == "__main__":
    main()

"""Forward+backward time of a from-scratch course network against its torch.nn twin.

    .venv/bin/python benchmarks/perf/bench_scratch.py [--network nearest|tconv] [--batch 64] [--channels 24]

Both models get the same weights and the same batch of 3×32×32 images and targets; one timed step
is zero_grad, forward, MSE, backward (no optimiser update). The two steps are timed alternately
(which one goes first alternates too), after a warm-up, so machine load drifts hit both alike.
Prints the median wall time of each, the ratio of the medians and the median of the per-pair
ratios, and the same ratio of process CPU time (steadier than wall time on a busy machine).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from n2n_core.scratch import MSE, copy_weights, course_network, course_network_torch, tconv_network, tconv_network_torch

NETWORKS = {"nearest": (course_network, course_network_torch), "tconv": (tconv_network, tconv_network_torch)}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=40, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per model first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--network", default="nearest", choices=tuple(NETWORKS),
                        help="course-scratch (nearest upsampling) or course-scratch-tconv")
    parser.add_argument(
        "--no-input-grad", action="store_true",
        help="skip the scratch net's input gradient (the torch twin never computes it: x needs no grad)",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    generator = torch.Generator()
    generator.manual_seed(0)
    build, build_twin = NETWORKS[args.network]
    scratch = build(args.channels, generator, input_grad=not args.no_input_grad)
    twin = build_twin(args.channels)
    copy_weights(scratch, twin)
    loss_fn = MSE()
    x = torch.rand(args.batch, 3, 32, 32, generator=generator)
    y = torch.rand(args.batch, 3, 32, 32, generator=generator)

    def scratch_step() -> torch.Tensor:
        with torch.no_grad():
            scratch.zero_grad()
            out = scratch(x)
            loss = loss_fn(out, y)
            scratch.backward(loss_fn.backward())
        return loss

    def torch_step() -> torch.Tensor:
        twin.zero_grad()
        loss = torch.nn.functional.mse_loss(twin(x), y)
        loss.backward()
        return loss

    # sanity: same loss and same gradients (float32 rounding aside)
    l_s, l_t = float(scratch_step()), float(torch_step().detach())
    grad_err = max(
        float((a.grad - b.grad).abs().max() / b.grad.abs().max().clamp_min(1e-30))
        for a, b in zip(scratch.parameters(), twin.parameters())
    )
    for _ in range(args.warmup):
        scratch_step()
        torch_step()
    times: dict[str, list[float]] = {"scratch": [], "torch": []}
    cpu: dict[str, list[float]] = {"scratch": [], "torch": []}
    steps = {"scratch": scratch_step, "torch": torch_step}
    for repeat in range(args.repeats):
        order = ("scratch", "torch") if repeat % 2 == 0 else ("torch", "scratch")
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[name]()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    med = {name: statistics.median(values) for name, values in times.items()}
    med_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    pair_ratio = statistics.median(s / t for s, t in zip(times["scratch"], times["torch"]))
    result = {
        "scratch_ms": med["scratch"] * 1e3,
        "torch_ms": med["torch"] * 1e3,
        "ratio": med["scratch"] / med["torch"],
        "pair_ratio": pair_ratio,
        "cpu_ratio": med_cpu["scratch"] / med_cpu["torch"],
    }
    print(
        f"batch {args.batch}x3x32x32, C={args.channels}, threads {torch.get_num_threads()}, "
        f"{args.repeats} timed steps each (fwd+bwd), network {args.network}, "
        f"input grad {not args.no_input_grad}"
    )
    print(f"loss scratch {l_s:.6f} torch {l_t:.6f}; max relative grad difference {grad_err:.2e}")
    print(f"scratch  median {result['scratch_ms']:8.2f} ms wall, {med_cpu['scratch'] * 1e3:8.2f} ms CPU")
    print(f"torch.nn median {result['torch_ms']:8.2f} ms wall, {med_cpu['torch'] * 1e3:8.2f} ms CPU")
    print(
        f"ratio scratch/torch: {result['ratio']:.3f} wall (median of per-pair ratios {pair_ratio:.3f}), "
        f"{result['cpu_ratio']:.3f} CPU"
    )
    return result


if __name__ == "__main__":
    main()

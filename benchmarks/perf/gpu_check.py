"""GPU readiness: the real trainer's speed on one GPU against its FLOP floor, its host syncs, and
the paper profile's ETA.

    python -m benchmarks.perf.gpu_check [--device cuda] [--steps 40] [--budget-s 420] [--json F]

For n2c (the U-Net) and ssdn-known (the blind-spot network), on 256² crops, at batch 4 (the
paper's) and at the batch that fills the GPU (doubling from 16 until memory runs out, the
throughput stops growing, or the time budget is spent), it trains with `Trainer.fit` itself and prints:

* images/s, from a timed fit of `--steps` steps after a short warm-up fit (cuDNN picks its
  algorithms in the warm-up);
* step ÷ floor: seconds per step over (counted FLOPs of one step ÷ the dense matmul rate measured
  in this run). The floor uses the TF32 matmul rate when cuDNN may use TF32 for convolutions
  (PyTorch's default, `torch.backends.cudnn.allow_tf32`), the float32 rate otherwise; both rates
  are printed;
* host syncs per step, counted by `torch.cuda.set_sync_debug_mode("warn")` during the timed fit
  (the trainer's design, n2n_core/train/finite.py: a read-back when it logs, every 10 steps, and
  two at the end: 10% + 2/steps);
* the paper-profile ETA: Σ over the released code's 46 runs (`grid --table paper --profile paper
  --dry-run --json`) of each run's budget ÷ the batch-4 images/s of its network (blind-spot for
  SSDN and μ-only, the U-Net otherwise). Training only: scoring and CBM3D are not in it.

`--device cpu` runs the same code on the CPU with a tiny budget (a smoke test of this script).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from benchmarks.flops import MatmulRate, training_step_flops
from n2n_core.config import TrainConfig
from n2n_core.data.train_stream import CropStream
from n2n_core.device import resolve_device
from n2n_core.methods import build_method, method_config
from n2n_core.noise import parse_style
from n2n_core.seeding import make_generator
from n2n_core.train.trainer import Trainer

CASES = {"n2c": ("n2c", {}), "ssdn-known": ("ssdn", {"sigma": "known"})}
BLIND_SPOT_PREFIXES = ("ssdn",)  # variants whose network is the blind-spot U-Net


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_images(n: int = 16, size: int = 320) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8) for _ in range(n)]


def fit_once(key: str, batch: int, steps: int, patch: int, device: torch.device, images):
    """(seconds, host syncs, trainer's method, its stream, cfg) of one fit of `steps` steps."""
    name, fields = CASES[key]
    method = build_method(method_config(name, **fields), parse_style("gaussian25"))
    cfg = TrainConfig(budget_images=batch * steps, batch_size=batch, patch_size=patch, validation_images=0)
    stream = CropStream(images, patch_size=patch, seed=0)
    model = method.build_model(make_generator(0))
    trainer = Trainer(method, stream, cfg, seed=0, device=device, progress=False)
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        start = time.perf_counter()
        try:
            trainer.fit(model)
            synchronize(device)
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        seconds = time.perf_counter() - start
    syncs = sum("synchroniz" in str(w.message).lower() for w in caught)
    return seconds, syncs, method, model, stream, cfg


def measure(key: str, batch: int, args, device: torch.device, images, rate_gflops: float) -> dict:
    fit_once(key, batch, 3, args.patch, device, images)  # warm-up: cuDNN autotuning, allocator
    seconds, syncs, method, model, stream, cfg = fit_once(key, batch, args.steps, args.patch, device, images)
    flops = training_step_flops(method, model, stream, batch, cfg.budget_images, device)
    step = seconds / args.steps
    floor = flops / (rate_gflops * 1e9)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"method": key, "batch": batch, "images_per_s": batch / step, "step_s": step,
            "step_gflop": flops / 1e9, "floor_s": floor, "step_over_floor": step / floor,
            "syncs": syncs, "steps": args.steps, "syncs_per_step": syncs / args.steps, "peak_gib": peak}


def fill_batch(key: str, args, device, images, rate, started: float) -> dict | None:
    """The batch with the best images/s, doubling from 16 while memory, throughput and time allow."""
    best, batch = None, 16
    while batch <= args.max_batch and time.perf_counter() - started < args.budget_s:
        try:
            row = measure(key, batch, args, device, images, rate)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        grew = best is None or row["images_per_s"] >= 1.05 * best["images_per_s"]
        best = row if best is None or row["images_per_s"] > best["images_per_s"] else best
        if not grew:
            break
        batch *= 2
    return best


def paper_eta_hours(batch4: dict[str, dict]) -> tuple[float, int]:
    """Training hours of the 46 released runs at the measured batch-4 throughput, and their count."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.cli", "grid", "--table", "paper", "--profile",
                          "paper", "--dry-run", "--json", "--tracking-uri", "sqlite:////tmp/gpu_check_mlflow.db"],
                         capture_output=True, text=True, check=True).stdout
    jobs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    seconds = 0.0
    for job in jobs:
        network = "ssdn-known" if job["variant"].startswith(BLIND_SPOT_PREFIXES) else "n2c"
        seconds += job["budget_images"] / batch4[network]["images_per_s"]
    return seconds / 3600, len(jobs)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per case")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop searching larger batches after this")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    started = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = False
    rate32 = MatmulRate(8192 if device.type == "cuda" else 512, device).best_of()
    torch.backends.cuda.matmul.allow_tf32 = True
    rate_tf32 = MatmulRate(8192 if device.type == "cuda" else 512, device).best_of()
    torch.backends.cuda.matmul.allow_tf32 = False
    tf32_convs = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    rate = rate_tf32 if tf32_convs else rate32
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          f"torch {torch.__version__}; matmul float32 {rate32:,.0f} GFLOP/s, TF32 {rate_tf32:,.0f} GFLOP/s; "
          f"floor at the {'TF32' if tf32_convs else 'float32'} rate (cuDNN TF32 convolutions: {tf32_convs})")
    images = random_images()
    rows, batch4 = [], {}
    for key in CASES:
        batch4[key] = measure(key, 4, args, device, images, rate)
        rows.append(batch4[key])
        if device.type == "cuda":
            filled = fill_batch(key, args, device, images, rate, started)
            if filled is not None:
                rows.append(filled)
    print(f"{'method':<11} {'batch':>5} {'img/s':>9} {'step s':>8} {'GFLOP':>8} {'÷floor':>7} "
          f"{'syncs/step':>10} {'GiB':>6}")
    for r in rows:
        print(f"{r['method']:<11} {r['batch']:>5} {r['images_per_s']:>9.1f} {r['step_s']:>8.4f} "
              f"{r['step_gflop']:>8.1f} {r['step_over_floor']:>7.2f} {r['syncs_per_step']:>10.3f} {r['peak_gib']:>6.1f}")
    hours, n_jobs = paper_eta_hours(batch4)
    print(f"paper profile ETA ({n_jobs} runs, training only, batch 4 as the paper): {hours:,.1f} h on this GPU")
    print(f"design: syncs per step = 0.1 (a read-back every 10 steps) + 2/{args.steps} at the end of a fit "
          f"= {0.1 + 2 / args.steps:.3f}; total time of this check {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "paper_eta_hours": hours, "matmul_gflops": {
            "float32": rate32, "tf32": rate_tf32}}, indent=1))
    return rows


if __name__ == "__main__":
    main()

"""N2N against N2C on small32, same course network, same budget (the 32×32 issue's acceptance check).

    .venv/bin/python benchmarks/perf/bench_n2n_vs_n2c_small32.py [--networks strided,prelu,...]
        [--noise gaussian25] [--profile quick] [--set train.budget_images=...] [--threads 1]

For each course network, trains `course-<net>` (N2N) and `course-<net>-n2c` (N2C) under the same
profile, seed and overrides (so the same crops and the same first noise draw at every step), scores
both on all 1,000 small32 crops (docs/methods.md §8 protocol, uint8 PSNR), and reports N2N − N2C with a
95% bootstrap interval over crops. A network passes when |N2N − N2C| ≤ 0.3 dB. It takes minutes
(twelve trainings at the quick budget), so it is a benchmark, not a test. Runs live under
runs/bench-n2n-vs-n2c/ and are resumed or reused when rerun; results go to
results/perf/n2n-vs-n2c-small32-<noise>-<profile>.md|.csv.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.compose import compose_config
from benchmarks.scoring import evaluate_model
from benchmarks.training import train
from benchmarks.spread import bootstrap_ci
from n2n_core.data.images import default_data_dir
from n2n_core.device import resolve_device

ROOT = Path(__file__).resolve().parents[2]
NETWORKS = "strided,residual,bn-dropout,prelu,scratch,scratch-torch"
TOLERANCE_DB = 0.3


def score(variant: str, args, data_dir: Path) -> tuple[np.ndarray, float, float]:
    """Per-crop PSNRs on small32, training seconds and wall seconds of one variant."""
    cfg = compose_config(args.profile, variant, args.noise, args.overrides)
    started = time.perf_counter()
    result = train(cfg, ROOT / "runs" / "bench-n2n-vs-n2c" / f"{variant}-{cfg.config_hash()}",
                   data_dir=data_dir, progress=sys.stderr.isatty())
    scored = evaluate_model(result.method, result.model, cfg, "small32", cfg.noise,
                            resolve_device(cfg.train.device), data_dir)
    psnrs = np.array([r.psnr for r in scored.records])
    return psnrs, result.seconds, time.perf_counter() - started


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default=NETWORKS)
    parser.add_argument("--noise", default="gaussian25")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    data_dir = default_data_dir()
    rows = []
    for net in args.networks.split(","):
        n2n, n2n_s, n2n_wall = score(f"course-{net}", args, data_dir)
        n2c, n2c_s, n2c_wall = score(f"course-{net}-n2c", args, data_dir)
        low, high = bootstrap_ci(n2n - n2c)
        delta = float(n2n.mean() - n2c.mean())
        rows.append({"network": net, "n2n": float(n2n.mean()), "n2c": float(n2c.mean()), "delta": delta,
                     "ci_low": low, "ci_high": high, "passes": abs(delta) <= TOLERANCE_DB,
                     "n2n_train_s": n2n_s, "n2c_train_s": n2c_s, "wall_s": n2n_wall + n2c_wall})
        print(f"{net:14s} N2N {rows[-1]['n2n']:6.2f}  N2C {rows[-1]['n2c']:6.2f}  Δ {delta:+.2f} dB "
              f"[{low:+.2f}, {high:+.2f}]  {'ok' if rows[-1]['passes'] else 'OUTSIDE ±0.3'}  "
              f"({n2n_s:.0f}+{n2c_s:.0f} s training)", flush=True)
    write(rows, args)
    return rows


def write(rows: list[dict], args) -> None:
    import pandas as pd

    cfg = compose_config(args.profile, "course-strided", args.noise, args.overrides)
    out = ROOT / "results" / "perf" / f"n2n-vs-n2c-small32-{cfg.noise}-{args.profile}"
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(out.with_suffix(".csv"), index=False, float_format="%.4f")
    lines = ["| network | N2N | N2C | N2N − N2C (95% CI) | within 0.3 dB |", "|---|---|---|---|---|"]
    lines += [f"| {r['network']} | {r['n2n']:.2f} | {r['n2c']:.2f} | {r['delta']:+.2f} "
              f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | {'yes' if r['passes'] else 'no'} |" for r in rows]
    lines.append(f"\nPSNR (dB, uint8) on small32 (1,000 crops, one noise draw each), {cfg.noise}, profile "
                 f"'{args.profile}' ({cfg.train.budget_images} images of 32² crops, batch "
                 f"{cfg.train.batch_size}); overrides {args.overrides or 'none'}; torch threads "
                 f"{torch.get_num_threads()}. Interval: percentile bootstrap over crops.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')} and .csv")


if __name__ == "__main__":
    main()

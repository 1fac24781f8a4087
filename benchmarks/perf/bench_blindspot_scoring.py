"""What scoring a blind-spot network whole or in tiles costs and gives (docs/methods.md §4).

Trains each variant under the quick profile (optionally on larger crops, `--patch 128`), resuming a
finished run from its folder, then scores the quick profile's evaluation inputs (central 256²
crops of the 24 Kodak images, ×1) once on whole images and once per tile stride, timing each.
Writes `results/perf/blindspot-scoring-<noise>-p<patch>.md|.csv` with PSNR, seconds per image and
ratios against tiles at stride tile/2; the rows come from the runs and timings of this one process.

    N2N_DATA=... .venv/bin/python benchmarks/perf/bench_blindspot_scoring.py --patch 128 --budget-images 500
    N2N_DATA=... .venv/bin/python benchmarks/perf/bench_blindspot_scoring.py --variants ssdn-known,ssdn-mu \\
        --strides 0.5,0.625,0.75,1.0
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from benchmarks.compose import compose_config, run_dir
from benchmarks.mlflow_tracker import PROJECT_ROOT
from benchmarks.perf.tables import markdown_table
from benchmarks.training import train
from n2n_core.data.images import default_data_dir
from n2n_core.data.sets import resolve_set
from n2n_core.evaluation.paired import make_evaluator
from n2n_core.evaluation.tiling import denoise_tiled, tile_starts
from n2n_core.noise import parse_style
from n2n_core.train.checkpoint import atomic_write


def score(method, model, cfg, data_dir: Path, stride: float | None) -> tuple[float, float, int]:
    """(mean PSNR, seconds per image, images) on the run's evaluation inputs; stride None: whole images."""
    evaluator = make_evaluator(resolve_set("kodak24", data_dir, cfg.data.channels), parse_style(cfg.noise),
                               seed=cfg.eval.seed, repeats=1, center_crop=cfg.eval.center_crop,
                               max_images=cfg.eval.max_images)
    tile = cfg.train.patch_size

    def denoise(items):
        outputs = []
        with torch.inference_mode():
            for item in items:
                batch = replace(item.noisy, estimate=method.image_estimate(model, item.noisy))
                if stride is None:
                    out = method.denoise(model, batch)
                else:
                    out = denoise_tiled(lambda b: method.denoise(model, b), batch, tile,
                                        stride=max(1, round(stride * tile)))
                outputs.append(out.float())
        return outputs

    started = time.perf_counter()
    result = evaluator.run(denoise)
    seconds = time.perf_counter() - started
    return result.psnr_mean, seconds / result.n_evaluations, result.n_evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="ssdn-known")
    parser.add_argument("--noise", default="gaussian25")
    parser.add_argument("--patch", type=int, default=64, help="training crop side (quick: 64)")
    parser.add_argument("--strides", default="0.5", help="tile strides as fractions of the tile")
    parser.add_argument("--budget-images", type=int, default=None,
                        help="training budget (default: the quick profile's); e.g. 500 at --patch 128 "
                             "is the quick profile's pixel budget (2000 crops of 64²)")
    parser.add_argument("--runs", type=Path, default=PROJECT_ROOT / "runs")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "perf")
    args = parser.parse_args()
    data_dir = default_data_dir()
    strides = [float(s) for s in args.strides.split(",")]
    rows = []
    for variant in args.variants.split(","):
        overrides = [f"train.patch_size={args.patch}"] if args.patch != 64 else []
        if args.budget_images is not None:
            overrides.append(f"train.budget_images={args.budget_images}")
        cfg = compose_config("quick", variant, args.noise, overrides)
        folder = run_dir(variant, cfg, args.runs)
        result = train(cfg, folder, data_dir=data_dir, progress=False)
        model = result.model.eval()
        for stride in [None, *strides]:
            psnr, per_image, n = score(result.method, model, cfg, data_dir, stride)
            side = cfg.eval.center_crop  # the quick profile's scored crops are square
            tiles = 1 if stride is None else len(tile_starts(side, args.patch, max(1, round(stride * args.patch)))) ** 2
            rows.append({"variant": variant, "patch": args.patch,
                         "scoring": "whole" if stride is None else f"tiles, stride {stride:g}·tile",
                         "tiles_per_image": tiles,
                         "psnr": psnr, "seconds_per_image": per_image, "images": n,
                         "train_seconds": result.seconds, "threads": torch.get_num_threads()})
    table = pd.DataFrame(rows)
    half = table[table.scoring == "tiles, stride 0.5·tile"].set_index("variant")
    if len(half):
        table["psnr_minus_stride_half"] = table.psnr - table.variant.map(half.psnr)
        table["cost_over_stride_half"] = table.seconds_per_image / table.variant.map(half.seconds_per_image)
    load = os.getloadavg()[0]
    stem = args.out / f"blindspot-scoring-{args.noise}-p{args.patch}"
    args.out.mkdir(parents=True, exist_ok=True)
    csv = table.to_csv(index=False, float_format="%.4f")
    atomic_write(stem.with_suffix(".csv"), lambda tmp: tmp.write_text(csv))
    text = (f"Blind-spot scoring on the quick profile's evaluation inputs (central 256² Kodak crops ×1), "
            f"{args.noise}, trained on {args.patch}² crops ({cfg.train.budget_images} images, batch "
            f"{cfg.train.batch_size}); one process, "
            f"{torch.get_num_threads()} threads, load average {load:.1f} at the end. Command: "
            f"`benchmarks/perf/bench_blindspot_scoring.py --variants {args.variants} --noise {args.noise} "
            f"--patch {args.patch} --strides {args.strides}"
            + (f" --budget-images {args.budget_images}" if args.budget_images is not None else "") + "`.\n\n")
    markdown = text + markdown_table(table) + "\n"
    atomic_write(stem.with_suffix(".md"), lambda tmp: tmp.write_text(markdown))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()

"""Where a grid's time went, against its FLOP floor: training, scoring and CBM3D, from MLflow alone.

Reads the newest grid run of a (noise, profile) in a tracking store and its job runs, and prints
one row per job and one per job class:

* training: `train_seconds` against `train_flops` ÷ the grid's measured matmul rate;
* scoring: `scoring_seconds_per_evaluation_<set>` × evaluations against `scoring_flops_<set>` ÷ rate;
* CBM3D (and any other work outside torch): seconds only, its floor counts 0.

The matmul rate is measured once per grid on all the cores it was given, while a job of
`--jobs N` runs on cores ÷ N threads beside the others. So each job's seconds are weighed by its
share of the cores (`torch_threads` ÷ cores) before they are compared with the floor: a ratio of
1.3 means the job used 1.3× the core time its counted FLOPs need at the measured rate.

    .venv/bin/python -m benchmarks.perf.grid_breakdown --tracking-uri sqlite:///path/mlflow.db \\
        --noise gaussian25 --profile quick [--cores 2]
"""

from __future__ import annotations

import argparse
import os

import pandas as pd

from benchmarks.mlflow_tracker import EXPERIMENT, open_store
from benchmarks.perf.tables import markdown_table


def newest_grid(client, experiment_id: str, noise: str, profile: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.grid = '1' and tags.noise = '{noise}' "
                              f"and tags.profile = '{profile}'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    if not runs:
        raise SystemExit(f"no grid run for {noise} {profile} in this store")
    return runs[0]


def job_rows(client, experiment_id: str, parent, cores: int) -> pd.DataFrame:
    rate = parent.data.metrics.get("matmul_gflops")
    children = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  max_results=10000)
    rows = []
    for run in children:
        m, tags = run.data.metrics, run.data.tags
        share = int(tags.get("torch_threads", cores)) / cores
        score_seconds = sum(m[k] * float(tags.get(f"n_evaluations_{k.removeprefix('scoring_seconds_per_evaluation_')}", 1))
                            for k in m if k.startswith("scoring_seconds_per_evaluation_"))
        score_flops = sum(v for k, v in m.items() if k.startswith("scoring_flops_"))
        trains = m.get("train_flops", 0.0) > 0
        # a job that trains nothing and counts no FLOPs works outside torch (CBM3D)
        job_class = "training + scoring" if trains else ("training-free, torch" if score_flops else "outside torch")
        rows.append({"variant": tags.get("variant"), "class": job_class, "threads": int(tags.get("torch_threads", cores)),
                     "job_s": m.get("job_seconds", 0.0), "train_s": m.get("train_seconds", 0.0) if trains else 0.0,
                     "score_s": score_seconds, "core_share": share,
                     "train_floor_s": m.get("train_flops", 0.0) / (rate * 1e9) if rate else float("nan"),
                     "score_floor_s": score_flops / (rate * 1e9) if rate else float("nan")})
    return pd.DataFrame(rows)


def summary(jobs: pd.DataFrame, parent) -> pd.DataFrame:
    def ratio(seconds, floor):
        return seconds / floor if floor else float("nan")

    training = jobs[jobs["class"] == "training + scoring"]
    outside = jobs[jobs["class"] == "outside torch"]
    rows = [
        {"part": "training", "core_s": (training.train_s * training.core_share).sum(),
         "floor_s": training.train_floor_s.sum()},
        {"part": "scoring (networks)", "core_s": (training.score_s * training.core_share).sum(),
         "floor_s": training.score_floor_s.sum()},
        {"part": "outside torch (CBM3D)", "core_s": (outside.job_s * outside.core_share).sum(), "floor_s": 0.0},
    ]
    other = jobs.job_s * jobs.core_share - jobs.train_s * jobs.core_share - jobs.score_s * jobs.core_share
    rows.append({"part": "rest of the jobs (start-up, validation, logging)",
                 "core_s": other[jobs["class"] == "training + scoring"].sum(), "floor_s": 0.0})
    table = pd.DataFrame(rows)
    table["ratio"] = [ratio(s, f) for s, f in zip(table.core_s, table.floor_s)]
    m = parent.data.metrics
    grid = {"part": "grid (wall)", "core_s": m.get("grid_wall_seconds", float("nan")),
            "floor_s": m.get("grid_floor_seconds", float("nan"))}
    grid["ratio"] = ratio(grid["core_s"], grid["floor_s"])
    return pd.concat([table, pd.DataFrame([grid])], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--noise", default="gaussian25")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    client, experiment_id = open_store(args.tracking_uri, create=False)
    parent = newest_grid(client, experiment_id, args.noise, args.profile)
    jobs = job_rows(client, experiment_id, parent, args.cores)
    print(f"grid {parent.info.run_id} ({EXPERIMENT}): {len(jobs)} jobs, matmul rate "
          f"{parent.data.metrics.get('matmul_gflops', float('nan')):.1f} GFLOP/s on {args.cores} cores, "
          f"wall {parent.data.metrics.get('grid_wall_seconds', float('nan')) / 60:.1f} min, "
          f"jobs' seconds summed {parent.data.metrics.get('grid_job_seconds', float('nan')) / 60:.1f} min\n")
    print(markdown_table(jobs.sort_values("job_s", ascending=False), digits=1))
    print()
    print(markdown_table(summary(jobs, parent), digits=2))


if __name__ == "__main__":
    main()

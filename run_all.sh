#!/usr/bin/env bash
# Train and score every method for one noise style, log every run to MLflow, rebuild results/.
#   ./run_all.sh --noise gaussian25 [--profile P] [--methods a,b] [--tracking-uri URI]
#                [--seeds 0,1,2] [--noise-draw fresh,fixed]
#                [--executor ray [--ray-address HEAD:6379] [--ray-cpus N]]
# Sets up .venv on first use; every option is passed to `n2n-bench grid`.
set -euo pipefail
root="$(cd "$(dirname "$0")" && pwd)"
bash "$root/scripts/ensure_venv.sh"
source "$root/scripts/data_dir.sh"
cd "$root"
exec "$root/.venv/bin/n2n-bench" grid "$@"

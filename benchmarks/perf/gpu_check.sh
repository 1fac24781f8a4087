#!/usr/bin/env bash
# GPU readiness check (benchmarks/perf/README.md, "On a GPU"): under 8 minutes on one GPU.
# Uses the project venv when it has CUDA, else the python on PATH (e.g. a machine's CUDA torch).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x .venv/bin/python ]] && .venv/bin/python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    py=.venv/bin/python
  else
    py=python3
  fi
fi
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
exec env PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$py" -m benchmarks.perf.gpu_check "$@"

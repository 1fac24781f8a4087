#!/usr/bin/env bash
# Create or reuse .venv at the project root and install the pinned environment into it.
# Idempotent and quiet: it reinstalls only when requirements.lock or pyproject.toml changed
# (a stamp file holds their hash). Sourced by run_all.sh and run_tests.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.n2n-installed"
want="$(cat "$root/requirements.lock" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
  exit 0
fi
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "n2n-bench needs Python >= 3.11; set PYTHON=/path/to/python3.11 and rerun" >&2
  exit 1
fi
echo "Setting up $venv (first run or changed pins; this takes a few minutes)..." >&2
[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/requirements.lock" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$root[test,cluster]" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
"$venv/bin/python" -c 'import torch, bm3d, mlflow, n2n_core, benchmarks' \
  || { echo "environment check failed: delete .venv and rerun" >&2; exit 1; }
echo "$want" > "$stamp"

#!/usr/bin/env bash
# Run the test suite in the project's own virtual environment (created on first use).
set -euo pipefail
root="$(cd "$(dirname "$0")" && pwd)"
bash "$root/scripts/ensure_venv.sh"
source "$root/scripts/data_dir.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"

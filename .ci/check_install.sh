#!/usr/bin/env bash
# A non-editable install works (issue 15 §5): build the wheel, install it into a fresh virtual
# environment that reuses the project venv's packages through a .pth file (nothing is downloaded),
# then, from a folder outside the clone, make a tiny store with a smoke grid, run `report` on it and
# a smoke `train`. The defaults must land in the per-user data folder (XDG_DATA_HOME here), never
# in site-packages nor in the current folder.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/data_dir.sh"
py="$root/.venv/bin/python"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$py" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
  --wheel-dir "$work/wheel" "$root" >/dev/null
python_bin="$("$py" -c 'import sys; print(sys._base_executable)')"
"$python_bin" -m venv "$work/venv"
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# the project venv's package folders (not the clone itself: the editable install stays out of it)
"$py" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith("site-packages")))' > "$site/zz_project_packages.pth"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-index "$work/wheel"/*.whl

export XDG_DATA_HOME="$work/xdg"
unset N2N_HOME MLFLOW_TRACKING_URI
mkdir "$work/cwd" && cd "$work/cwd"
bin="$work/venv/bin/n2n-bench"
"$work/venv/bin/python" - "$site" "$XDG_DATA_HOME" <<'PY'
import sys
from pathlib import Path
import benchmarks, benchmarks.paths as paths
site, data = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
assert Path(benchmarks.__file__).resolve().is_relative_to(site), f"benchmarks imported from {benchmarks.__file__}"
assert paths.clone_root() is None and paths.home().resolve() == data / "n2n-bench", paths.home()
assert (Path(benchmarks.__file__).parent / "baselines" / "published.csv").is_file(), "published.csv not packaged"
PY
smoke=(--profile smoke --set eval.max_images=1 --set eval.center_crop=64)
"$bin" grid --noise gaussian25 --methods noisy "${smoke[@]}" --no-report 2>/dev/null
"$bin" report 2>&1 | tail -1
grep -q "| noisy |" "$XDG_DATA_HOME/n2n-bench/results/psnr-gaussian25-smoke.md"
"$bin" train --method n2c --noise gaussian25 "${smoke[@]}" --set train.budget_images=8 \
  --set train.patch_size=32 --set train.validation_images=0 --json 2>/dev/null | tail -1
ls "$XDG_DATA_HOME"/n2n-bench/runs/n2c-gaussian25-smoke-*/checkpoint.pt >/dev/null
leaked="$(find "$site" "$work/cwd" \( -name mlflow.db -o -name runs -o -name results -o -name mlartifacts \) -print)"
[[ -z "$leaked" ]] || { echo "written outside the user data folder: $leaked" >&2; exit 1; }
echo "install check: wheel installed, report and train ran from $site"

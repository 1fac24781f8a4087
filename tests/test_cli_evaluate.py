"""`n2n-bench evaluate` end to end in subprocesses: JSON output, determinism, one-line errors.

Every command runs in its own process (as a user would run it), all started at once by one
module fixture, so the interpreter and torch start-ups run in parallel. The
reproducibility check re-derives the folder run's number in this process instead of paying for a
second CLI process.
Expected numbers come from closed forms: for the `noisy` method on σ = 25/255 Gaussian noise the
uint8 MSE is about 25² + 1/12 (noise plus rounding, no clipping on mid-grey images), i.e.
20.17 dB; on Kodak, clipping at 0 and 255 lowers the MSE a little, to about 20.4 dB.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, save_png


def cli_prefix() -> tuple[list[str], Path | None]:
    """The installed entry point next to this interpreter, else `python -m benchmarks.cli` in the repo."""
    entry = Path(sys.executable).parent / "n2n-bench"
    if entry.is_file():
        return [str(entry)], None
    return [sys.executable, "-m", "benchmarks.cli"], REPO


def mid_grey_folder(root: Path, n: int = 2, size: int = 48) -> Path:
    """Images in [100, 155]: 4σ away from 0 and 255, so σ = 25 noise is never clipped."""
    generator = np.random.default_rng(0)
    for i in range(n):
        save_png(root / f"grey{i}.png", generator.integers(100, 156, (size, size, 3), dtype=np.uint8))
    return root


def unreadable_folder(root: Path) -> Path:
    save_png(root / "fine.png", np.full((32, 32, 3), 128, np.uint8))
    data = (root / "fine.png").read_bytes()
    (root / "zz-broken.png").write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name → CompletedProcess for every command, all run at once, plus "grey-folder".

    Only the Kodak run needs the data directory; the others use generated folders.
    """
    tmp = tmp_path_factory.mktemp("cli")
    grey = mid_grey_folder(tmp / "grey")
    broken = unreadable_folder(tmp / "broken")
    base = ["evaluate", "--method", "noisy"]
    env = dict(os.environ)
    has_kodak = bool(env.get("N2N_DATA")) and (Path(env["N2N_DATA"]) / "kodak24").is_dir()
    commands = {
        "kodak": (base + ["--noise", "gaussian25", "--dataset", "kodak24", "--json"], env),
        "folder": (base + ["--noise", "gaussian25", "--dataset", f"folder:{grey}", "--json", "--repeats", "4"],
                   env),
        "bad-style": (base + ["--noise", "gaus25", "--dataset", f"folder:{grey}", "--json"], env),
        "bad-set": (base + ["--noise", "gaussian25", "--dataset", "kodak23", "--json"], env),
        "no-data-dir": (base + ["--noise", "gaussian25", "--dataset", "kodak24", "--json"],
                        {**env, "N2N_DATA": "/nonexistent"}),
        # without --json the progress bar is on: the error must still be the only stderr line
        "unreadable": (base + ["--noise", "gaussian25", "--dataset", f"folder:{broken}"], env),
    }
    if not has_kodak:
        del commands["kodak"]
    prefix, cwd = cli_prefix()
    procs = {
        name: subprocess.Popen(prefix + args, cwd=cwd or tmp, env=e, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, (args, e) in commands.items()
    }
    results: dict = {"grey-folder": grey}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def last_json(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_kodak_noisy_psnr_is_about_20_4(runs):
    if "kodak" not in runs:
        pytest.skip("no data directory with kodak24: set N2N_DATA")
    first = last_json(runs["kodak"])
    assert 20.2 < first["psnr_mean"] < 20.6
    assert first["dataset"] == "kodak24" and first["noise"] == "gaussian25" and first["method"] == "noisy"
    assert first["n_evaluations"] == 24 and first["n_images"] == 24 and first["repeats"] == 1
    assert first["pad_to"] == 768 and first["convention"] == "uint8" and first["seed"] == 0


def test_folder_dataset_matches_the_closed_form(runs):
    summary = last_json(runs["folder"])
    assert summary["dataset"].startswith("folder:") and summary["dataset"].endswith("grey")
    assert summary["n_images"] == 2 and summary["repeats"] == 4 and summary["n_evaluations"] == 8
    assert summary["pad_to"] == 64
    expected = 10 * math.log10(255**2 / (25**2 + 1 / 12))  # 20.171 dB
    # 8 × 48² × 3 squared errors: relative SE of the MSE ≈ sqrt(2 / 55296) ≈ 0.6% ≈ 0.03 dB
    assert summary["psnr_mean"] == pytest.approx(expected, abs=0.15)


def test_cli_number_is_reproduced_exactly_by_the_library_in_another_process(runs):
    # same protocol, same seed (default 0), same identity "denoiser": bit-identical mean,
    # although drawn in this process instead of the CLI's
    from n2n_core.data.sets import resolve_set
    from n2n_core.evaluation.protocol import Evaluator
    from n2n_core.noise import parse_style

    grey = runs["grey-folder"]
    evaluator = Evaluator(resolve_set(f"folder:{grey}", grey), parse_style("gaussian25"), seed=0, repeats=4)
    again = evaluator.run(lambda items: [item.noisy.noisy for item in items])
    assert last_json(runs["folder"])["psnr_mean"] == again.psnr_mean


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("bad-style", "gaussian5_50"),  # the message lists the valid styles
        ("bad-set", "kodak24"),  # and the valid sets
        ("no-data-dir", "/nonexistent"),
        ("unreadable", "zz-broken.png"),
    ],
)
def test_bad_input_gives_one_error_line_and_nonzero_exit(runs, name, needle):
    result = runs[name]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert len(lines) == 1, f"stderr should be one line, got: {result.stderr!r}"
    assert lines[0].startswith("error:")
    assert needle in lines[0]
    assert not result.stdout.strip().startswith("{")  # no JSON result for a failed run


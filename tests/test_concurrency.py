"""Two commands at once, and stops other systems send (issue 15 §2, §5; issue 16 §2): real processes.

Every test starts the real command line in subprocesses (test_hardening.SLOW_CLI: the CLI with a
sleep per training step and per scored image, so that the processes overlap and a signal lands
mid-run on any machine) against real SQLite stores, and checks what the store and the run folders
hold afterwards. N2N_HOME points every process at a folder of the test, so none of them touches the
project's README, runs/ or mlflow.db.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.mlflow_tracker import open_store
from conftest import REPO
from test_hardening import SLOW_CLI

TINY = ["--set", "train.budget_images=32", "--set", "train.patch_size=32", "--set", "train.validation_images=0",
        "--set", "train.checkpoint_every_images=4", "--set", "eval.max_images=1", "--set", "eval.center_crop=64"]
N2C = ["--method", "n2c", "--noise", "gaussian25", "--profile", "smoke"]
TIMEOUT = 300
pytestmark = pytest.mark.timeout(2 * TIMEOUT)  # a few seconds each on an idle machine; a loaded one is slower


def _default_sigint() -> None:
    # a job a non-interactive shell started in the background inherits SIGINT ignored, and Python
    # then keeps it ignored; the command under test gets Ctrl-C as a terminal would deliver it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Cli:
    """The slowed CLI in a subprocess, its stderr in a file (for the lines the test looks for)."""

    def __init__(self, tmp_path: Path, name: str, args: list, delay: float, data_dir: Path):
        self.log = tmp_path / f"{name}.stderr"
        env = {**os.environ, "N2N_TEST_DELAY": str(delay), "N2N_HOME": str(tmp_path / "home"),
               "N2N_DATA": str(data_dir)}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *[str(a) for a in args]], cwd=REPO,
                                         env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                         preexec_fn=_default_sigint)

    def wait(self) -> int:
        self.stdout, _ = self.proc.communicate(timeout=TIMEOUT)
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        return self.log.read_text().replace("\r", "\n")

    def lines(self) -> list[str]:
        return [line.strip() for line in self.stderr.splitlines() if line.strip()]


def wait_for_checkpoint(folder_glob, root: Path, proc: Cli, at_least: int = 1) -> int:
    """Images seen by the first checkpoint (matching root.glob(folder_glob)) holding at_least images."""
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and proc.proc.poll() is None:
        for path in root.glob(folder_glob):
            try:
                seen = torch.load(path, weights_only=True)["images_seen"]
            except Exception:  # not there yet
                continue
            if seen >= at_least:
                return seen
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint with {at_least}+ images appeared: {proc.stderr[-2000:]}")


def child_runs(uri: str) -> list:
    client, experiment_id = open_store(uri)
    return [r for r in client.search_runs([experiment_id], max_results=1000) if "variant" in r.data.tags]


def grid_args(tmp_path: Path, methods: str, store: str = "mlflow.db") -> list:
    return ["grid", "--noise", "gaussian25", "--profile", "smoke", "--methods", methods, *TINY, "--no-report",
            "--tracking-uri", f"sqlite:///{tmp_path / store}", "--runs-dir", tmp_path / "runs"]


# ----------------------------------------------------------------------------- two at once


@pytest.fixture(scope="module")
def two_grids(tmp_path_factory, data_dir):
    """Two identical grids (noisy, n2c) started together on a store that does not exist yet."""
    tmp_path = tmp_path_factory.mktemp("two-grids")
    grids = [Cli(tmp_path, f"grid{i}", grid_args(tmp_path, "noisy,n2c"), 0.3, data_dir) for i in (1, 2)]
    codes = [g.wait() for g in grids]
    return tmp_path, grids, codes


def test_two_grids_at_once_on_a_fresh_store_train_every_job_once(two_grids):
    tmp_path, grids, codes = two_grids
    assert codes == [0, 0], [g.stderr[-3000:] for g in grids]
    runs = child_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    by_variant = {v: [r.info.status for r in runs if r.data.tags["variant"] == v] for v in ("noisy", "n2c")}
    assert by_variant == {"noisy": ["FINISHED"], "n2c": ["FINISHED"]}, "a job was trained twice or failed"
    summaries = [re.search(r"^grid gaussian25 smoke: (\d+) ran, .* failed$", g.stderr, re.M) for g in grids]
    assert all(summaries), [g.stderr[-2000:] for g in grids]
    assert sum(int(m.group(1)) for m in summaries) == 2, [m.group(0) for m in summaries]  # each job ran once
    for g in grids:  # the other one's jobs were skipped as running elsewhere or already finished
        for line in g.lines():
            if line.startswith("running elsewhere, not run here:"):
                assert "is in use by pid" in line or "RUNNING in pid" in line, line


def test_two_reports_at_once_write_what_one_report_writes(two_grids, data_dir):
    tmp_path, _, codes = two_grids
    assert codes == [0, 0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    both = [Cli(tmp_path, f"report{i}", ["report", "--tracking-uri", uri, "--out", tmp_path / "results"], 0, data_dir)
            for i in (1, 2)]
    assert [r.wait() for r in both] == [0, 0], [r.stderr[-2000:] for r in both]
    alone = Cli(tmp_path, "report-alone", ["report", "--tracking-uri", uri, "--out", tmp_path / "alone"], 0, data_dir)
    assert alone.wait() == 0, alone.stderr

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    together, expected = files(tmp_path / "results"), files(tmp_path / "alone")
    assert together == expected and "psnr-gaussian25-smoke.md" in together  # no temporary file left either


def test_two_trains_on_one_out_second_is_refused_naming_the_first(tmp_path, data_dir):
    out = tmp_path / "run"
    first = Cli(tmp_path, "first", ["train", *N2C, *TINY, "--out", out, "--json"], 0.3, data_dir)
    deadline = time.time() + TIMEOUT
    while not (out / "config.json").exists() and first.proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    second = Cli(tmp_path, "second", ["train", *N2C, *TINY, "--seed", "1", "--out", out, "--json"], 0.3, data_dir)
    assert second.wait() == 2, second.stderr[-2000:]
    assert first.wait() == 0, first.stderr[-2000:]
    assert second.lines()[-1].startswith(f"error: run folder {out} is in use by pid {first.proc.pid} on ")
    import json

    trained = json.loads(first.stdout.strip().splitlines()[-1])
    described = json.loads((out / "config.json").read_text())
    assert described["seed"] == 0 and torch.load(out / "checkpoint.pt", weights_only=True)["identity"] == \
        trained["config_hash"], "config.json or the checkpoint belongs to the refused run"


# ----------------------------------------------------------------------------- stops


def test_grid_stopped_by_sigkill_then_sigterm_marks_runs_killed_and_resumes(tmp_path, data_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = grid_args(tmp_path, "n2c")
    # 1. SIGKILL mid-training: nothing can close the runs, they stay RUNNING
    killed = Cli(tmp_path, "killed", args, 0.3, data_dir)
    wait_for_checkpoint("runs/*/checkpoint.pt", tmp_path, killed)
    killed.proc.kill()
    killed.wait()
    assert [r.info.status for r in child_runs(uri)] == ["RUNNING"]

    # 2. the next grid marks them KILLED (their process is gone), resumes, and is stopped by SIGTERM
    stopped = Cli(tmp_path, "stopped", args, 0.3, data_dir)
    seen = wait_for_checkpoint("runs/*/checkpoint.pt", tmp_path, stopped, at_least=8)
    stopped.proc.send_signal(signal.SIGTERM)
    assert stopped.wait() == 143, stopped.stderr[-3000:]
    lines = stopped.lines()
    assert re.search(rf"^marked KILLED: n2c run \w+ \(left RUNNING by pid {killed.proc.pid}\)$", stopped.stderr, re.M)
    assert re.search(rf"^marked KILLED: grid run \w+ \(left RUNNING by pid {killed.proc.pid}\)$", stopped.stderr, re.M)
    assert re.search(r"^resuming n2c from \d+ of 32 images$", stopped.stderr, re.M), lines
    kept = torch.load(next((tmp_path / "runs").glob("n2c-*/checkpoint.pt")), weights_only=True)
    assert not kept["finished"] and kept["images_seen"] >= seen
    assert lines[-1] == f"n2c: interrupted at {kept['images_seen']} of 32 images; rerun the same command to resume"
    client, experiment_id = open_store(uri)
    statuses = sorted(r.info.status for r in client.search_runs([experiment_id], max_results=100))
    assert statuses == ["KILLED"] * 4, statuses  # both children and both grid parents

    # 3. the same command again finishes from the kept checkpoint
    resumed = Cli(tmp_path, "resumed", args, 0, data_dir)
    assert resumed.wait() == 0, resumed.stderr[-3000:]
    assert re.search(rf"^resuming n2c from {kept['images_seen']} of 32 images$", resumed.stderr, re.M)
    finished = [r for r in child_runs(uri) if r.info.status == "FINISHED"]
    assert len(finished) == 1 and finished[0].data.metrics["images_seen"] == 32


def test_parallel_grid_stopped_by_sigterm_stops_its_running_jobs(tmp_path, data_dir):
    # --jobs 2: the jobs train in pool workers; SIGTERM reaches the grid only, which must stop them
    # (before: it waited for both to train to the end of their budgets). Budgets far longer than
    # the test, so only a stop can end the command in time.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [*grid_args(tmp_path, "n2c,n2n"), "--jobs", "2", "--set", "train.budget_images=100000"]
    grid = Cli(tmp_path, "parallel", args, 0, data_dir)
    for variant in ("n2c", "n2n"):
        wait_for_checkpoint(f"runs/{variant}-*/checkpoint.pt", tmp_path, grid)
    grid.proc.send_signal(signal.SIGTERM)
    started = time.time()
    assert grid.wait() == 143, grid.stderr[-3000:]
    assert time.time() - started < 60, "the running jobs must stop, not train to their budgets"
    statuses = {r.data.tags["variant"]: r.info.status for r in child_runs(uri)}
    assert statuses == {"n2c": "KILLED", "n2n": "KILLED"}, statuses
    checkpoints = sorted((tmp_path / "runs").glob("*/checkpoint.pt"))
    written = [p.stat().st_mtime_ns for p in checkpoints]
    time.sleep(2)
    assert [p.stat().st_mtime_ns for p in checkpoints] == written, "no worker may train on after the grid"
    assert all(0 < torch.load(p, weights_only=True)["images_seen"] < 100000 for p in checkpoints)


def test_train_interrupted_by_ctrl_c_keeps_its_checkpoint_and_resumes(tmp_path, data_dir):
    out = tmp_path / "run"
    args = ["train", *N2C, *TINY, "--out", out, "--json"]
    stopped = Cli(tmp_path, "stopped", args, 0.3, data_dir)
    wait_for_checkpoint("run/checkpoint.pt", tmp_path, stopped)
    stopped.proc.send_signal(signal.SIGINT)
    assert stopped.wait() == 130, stopped.stderr[-3000:]
    kept = torch.load(out / "checkpoint.pt", weights_only=True)
    assert not kept["finished"]
    assert stopped.lines()[-1] == \
        f"n2c: interrupted at {kept['images_seen']} of 32 images; rerun the same command to resume"
    resumed = Cli(tmp_path, "resumed", args, 0, data_dir)
    assert resumed.wait() == 0, resumed.stderr[-3000:]
    assert f"resuming n2c from {kept['images_seen']} of 32 images" in resumed.lines()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["finished"]

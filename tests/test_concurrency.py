"""Two commands at once, and stops other systems send (issue 15 §2, §5; issue 16 §2): real processes.

Every test starts the real command line in subprocesses (test_hardening.SLOW_CLI: the CLI with a
sleep per training step and per scored image, so that the processes overlap and a signal lands
mid-run on any machine) against real SQLite stores, and checks what the store and the run folders
hold afterwards. N2N_HOME points every process at a folder of the test, so none of them touches the
project's README, runs/ or mlflow.db. The processes are forked from conftest's zygote, which has
done their imports once (conftest.start_command); a run that no signal reaches (a rerun that
resumes) runs in the test's own process.
"""

from __future__ import annotations

import json
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
from conftest import REPO, empty_store, start_command
from test_hardening import SLOW_CLI

TINY = ["--set", "train.budget_images=32", "--set", "train.patch_size=32", "--set", "train.validation_images=0",
        "--set", "train.checkpoint_every_images=4", "--set", "eval.max_images=1", "--set", "eval.center_crop=64"]
N2C = ["--method", "n2c", "--noise", "gaussian25", "--profile", "smoke"]
TIMEOUT = 300
pytestmark = pytest.mark.timeout(2 * TIMEOUT)  # a few seconds each on an idle machine; a loaded one is slower


class Cli:
    """The slowed CLI in a process of its own (conftest.start_command: forked with its imports done,
    SIGINT at its default as in a terminal), its stdout and stderr in files (for the lines the test
    looks for)."""

    def __init__(self, tmp_path: Path, name: str, args: list, delay: float, data_dir: Path, **env_extra: str):
        self.log = tmp_path / f"{name}.stderr"
        env = {**os.environ, "N2N_TEST_DELAY": str(delay), "N2N_HOME": str(tmp_path / "home"),
               "N2N_DATA": str(data_dir), **env_extra}
        self.log.write_text("")
        (tmp_path / f"{name}.stdout").write_text("")
        self.proc = start_command(SLOW_CLI, args, env=env, cwd=REPO, stdout=tmp_path / f"{name}.stdout", stderr=self.log)

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


# Reports released at the same instant, round after round. Each process runs the report command
# (in-process, so a round costs no start-up) once to warm up, its first report importing for
# seconds, then ROUNDS times into the same --out, each round released by a barrier of files once
# every process is ready, so that their writes overlap in every round, not by luck: two reports
# merely started together failed the old code (a fixed `<file>.tmp` name) about 1 time in 4, a
# round released together more than 1 time in 2. Once all are done, process 0 reports alone.
SAME_TIME_REPORTS = """
import json, sys, time
from pathlib import Path
from typer.testing import CliRunner
from benchmarks.cli import app
uri, out, alone, barrier, me, processes, rounds = sys.argv[1:]
barrier, processes, rounds = Path(barrier), int(processes), int(rounds)
deadline = time.time() + 240

def report(folder):
    result = CliRunner().invoke(app, ["report", "--tracking-uri", uri, "--out", folder])
    if result.exit_code:
        print(f"report --out {folder}: {result.output.strip()[-500:]}", file=sys.stderr)
    return result.exit_code

def all_reach(step):
    (barrier / f"{step}.{me}").touch()
    while len(list(barrier.glob(f"{step}.*"))) < processes:
        if time.time() > deadline:
            sys.exit(f"{step}: the other processes never came")
        time.sleep(0.001)

report(f"{out}-warm-up-{me}")
codes = []
for n in range(rounds):
    all_reach(f"round{n}")
    codes.append(report(out))
all_reach("done")
print(json.dumps({"rounds": codes, "alone": report(alone) if me == "0" else 0}))
"""
PROCESSES, ROUNDS = 2, 4


def test_two_reports_at_once_write_what_one_report_writes(two_grids, data_dir):
    tmp_path, _, codes = two_grids
    assert codes == [0, 0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "N2N_HOME": str(tmp_path / "home"), "N2N_DATA": str(data_dir)}
    logs = [tmp_path / f"reports{k}.stderr" for k in range(PROCESSES)]
    reporters = []
    for k, log in enumerate(logs):
        with open(log, "w") as err:
            reporters.append(subprocess.Popen(
                [sys.executable, "-c", SAME_TIME_REPORTS, uri, str(tmp_path / "results"), str(tmp_path / "alone"),
                 str(barrier), str(k), str(PROCESSES), str(ROUNDS)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                stderr=err, text=True))
    outputs = [p.communicate(timeout=TIMEOUT)[0] for p in reporters]
    why = [log.read_text()[-2000:] for log in logs]
    assert [p.returncode for p in reporters] == [0] * PROCESSES, why
    assert [json.loads(out.strip().splitlines()[-1]) for out in outputs] == \
        [{"rounds": [0] * ROUNDS, "alone": 0}] * PROCESSES, why

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


def test_grid_stopped_by_sigkill_then_sigterm_marks_runs_killed_and_resumes(tmp_path, data_dir, monkeypatch):
    uri = empty_store(tmp_path / "mlflow.db")  # the store grid_args names
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

    # 3. the same command again finishes from the kept checkpoint; no signal is sent to it, so it
    # runs in this process (CliRunner), sparing a start-up of torch and MLflow
    from typer.testing import CliRunner

    from benchmarks.cli import app

    monkeypatch.setenv("N2N_HOME", str(tmp_path / "home"))
    resumed = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    shown = resumed.stderr.replace("\r", "\n")
    assert resumed.exit_code == 0, shown[-3000:]
    assert re.search(rf"^resuming n2c from {kept['images_seen']} of 32 images$", shown, re.M), shown[-3000:]
    finished = [r for r in child_runs(uri) if r.info.status == "FINISHED"]
    assert len(finished) == 1 and finished[0].data.metrics["images_seen"] == 32


def test_parallel_grid_stopped_by_sigterm_stops_its_running_jobs(tmp_path, data_dir):
    # --jobs 2: the jobs train in pool workers; SIGTERM reaches the grid only, which must stop them
    # (before: it waited for both to train to the end of their budgets). Budgets far longer than
    # the test, so only a stop can end the command in time.
    uri = empty_store(tmp_path / "mlflow.db")  # the store grid_args names
    args = [*grid_args(tmp_path, "n2c,n2n"), "--jobs", "2", "--set", "train.budget_images=100000"]
    grid = Cli(tmp_path, "parallel", args, 0, data_dir, N2N_CORES="2")  # this test's share: both cores
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


def test_parallel_grid_killed_with_sigkill_takes_its_workers_with_it(tmp_path, data_dir):
    # SIGKILL gives the grid no chance to stop its pool: the workers must die with it (the kernel
    # sends them SIGTERM), else they train on, holding their run folders, and the rerun of the
    # same command finds its own jobs "running elsewhere"
    import psutil

    empty_store(tmp_path / "mlflow.db")
    args = [*grid_args(tmp_path, "n2c,n2n"), "--jobs", "2", "--set", "train.budget_images=100000"]
    grid = Cli(tmp_path, "killed", args, 0, data_dir, N2N_CORES="2")
    for variant in ("n2c", "n2n"):
        wait_for_checkpoint(f"runs/{variant}-*/checkpoint.pt", tmp_path, grid)
    workers = psutil.Process(grid.proc.pid).children(recursive=True)
    assert len([w for w in workers if "spawn" in " ".join(w.cmdline())]) >= 2, [w.cmdline() for w in workers]
    grid.proc.send_signal(signal.SIGKILL)
    assert grid.wait() == -signal.SIGKILL
    gone, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, f"workers still running after the grid was killed: {[w.pid for w in alive]}"
    checkpoints = sorted((tmp_path / "runs").glob("*/checkpoint.pt"))
    assert len(checkpoints) == 2 and all(0 < torch.load(p, weights_only=True)["images_seen"] < 100000 for p in checkpoints)


def test_train_interrupted_by_ctrl_c_keeps_its_checkpoint_and_resumes(tmp_path, data_dir, monkeypatch):
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
    # the same command again; no signal is sent to it, so it runs in this process (CliRunner),
    # sparing a start-up of torch and MLflow
    from typer.testing import CliRunner

    from benchmarks.cli import app

    monkeypatch.setenv("N2N_HOME", str(tmp_path / "home"))
    resumed = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    shown = [line.strip() for line in resumed.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert resumed.exit_code == 0, shown[-30:]
    assert f"resuming n2c from {kept['images_seen']} of 32 images" in shown, shown[-30:]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["finished"]

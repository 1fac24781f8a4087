"""`n2n-bench grid --executor ray` for real: a Ray head and an `mlflow server`, both on 127.0.0.1.

The head is `ray start --head --block` in a session of its own; the test stops it and checks that
no process of that session is left. The jobs must run in Ray's workers, not in the test process:
there `run_job` is replaced by one that fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from benchmarks import jobs, ray_executor
from benchmarks.grid import make_executor, run_grid
from conftest import free_port, start_mlflow_server
from n2n_core.errors import N2NError

BIN = Path(sys.executable).parent
TINY = [
    "train.budget_images=8", "train.patch_size=32", "train.batch_size=4",
    "train.validation_images=1", "train.validate_every_images=4", "train.checkpoint_every_images=4",
    "eval.max_images=1", "eval.center_crop=64",
]
VARIANTS = ["noisy", "n2c", "n2n"]


def session_processes(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


class RayHead:
    """`ray start --head --block` on 127.0.0.1 with 2 CPUs; stop() ends it and its whole session."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = tempfile.mkdtemp(prefix="n2nray", dir="/tmp")  # short: Ray's socket paths
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
             "--port", str(self.port), "--num-cpus", "2", "--include-dashboard=false",
             "--temp-dir", self.temp_dir, "--disable-usage-stats"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.ready = threading.Event()
        self.log = log

        def drain():  # keep the pipe empty; note when the runtime is up
            with open(log, "w") as out:
                for line in self.proc.stdout:
                    out.write(line)
                    out.flush()
                    if "Ray runtime started" in line:
                        self.ready.set()

        threading.Thread(target=drain, daemon=True).start()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while not self.ready.wait(1):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                pytest.fail(f"ray head did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> list[int]:
        """SIGTERM the head (it stops what it started); return what was still alive 15 s later."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.time() + 15
        while session_processes(self.proc.pid) and time.time() < deadline:
            time.sleep(0.5)
        left = session_processes(self.proc.pid)
        for pid in left:  # never leave strays behind, even when the check below fails
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left


@pytest.fixture
def cluster(tmp_path):
    """(Ray head, mlflow server URI), started side by side; both stopped afterwards."""
    head = RayHead(tmp_path / "ray-head.log")
    server, uri = start_mlflow_server(tmp_path)
    head.wait_ready()
    yield head, uri
    head.stop()
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def test_grid_on_a_ray_cluster_logs_every_run_and_skips_them_on_rerun(tmp_path, data_dir, cluster, monkeypatch):
    head, uri = cluster

    def not_here(*args, **kwargs):
        raise AssertionError("a job ran in the driver instead of a Ray worker")

    monkeypatch.setattr(jobs, "run_job", not_here)
    options = dict(runs_root=tmp_path / "runs", data_dir=data_dir, progress=False,
                   executor=make_executor("ray", uri, ray_address=head.address, ray_cpus=1))
    outcome = run_grid("gaussian25", "smoke", VARIANTS, TINY, uri, **options)
    assert outcome.failed == {} and outcome.ran == VARIANTS and outcome.skipped == []

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)  # read back through a fresh HTTP client
    experiment = client.get_experiment_by_name("n2n-bench")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("grid") == "1"]
    children = {r.data.tags["variant"]: r for r in runs if "variant" in r.data.tags}
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(children) == sorted(VARIANTS)
    for name, run in children.items():
        assert run.info.status == "FINISHED", name
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert 5 < run.data.metrics["psnr_kodak24"] < 60, name
    assert children["n2n"].data.metrics["images_seen"] == 8
    assert (tmp_path / "runs").is_dir() and len(list((tmp_path / "runs").glob("n2n-*/checkpoint.pt"))) == 1

    again = run_grid("gaussian25", "smoke", VARIANTS, TINY, uri, **options)
    assert again.ran == [] and again.failed == {} and again.skipped == VARIANTS
    assert len([r for r in client.search_runs([experiment.experiment_id], max_results=100)
                if "variant" in r.data.tags]) == 3  # nothing new was started

    assert head.stop() == []  # the head and everything it started are gone


def test_a_machine_local_store_with_a_remote_cluster_is_refused_before_anything_is_written(tmp_path):
    db = tmp_path / "mlflow.db"
    for uri in (f"sqlite:///{db}", "http://127.0.0.1:5000"):
        with pytest.raises(N2NError, match="only works on this machine"):
            run_grid("gaussian25", "smoke", ["noisy"], TINY, uri, runs_root=tmp_path / "runs",
                     executor=make_executor("ray", uri, ray_address="10.0.0.7:6379"))
    assert not db.exists() and not (tmp_path / "runs").exists()
    assert ray_executor.address_is_local(None) and ray_executor.address_is_local("127.0.0.1:6379")
    assert not ray_executor.address_is_local("ray://head.cluster:10001")
    assert not ray_executor.store_is_local("http://mlflow.cluster:5000")


def test_without_ray_installed_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(N2NError, match=r"pip install \.\[cluster\]"):
        run_grid("gaussian25", "smoke", ["noisy"], TINY, "http://mlflow.cluster:5000",
                 runs_root=tmp_path / "runs", executor=make_executor("ray", "http://mlflow.cluster:5000"))

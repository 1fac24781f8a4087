"""The grid runner against real MLflow stores: embedded SQLite and an `mlflow server` over HTTP."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from benchmarks.grid import run_grid
from benchmarks.mlflow_tracker import TrackingError, open_store
from n2n_core.errors import N2NError
from benchmarks.report import build_report
from conftest import CLI, empty_store, free_port, start_command, start_mlflow_server

TINY = [
    "train.budget_images=8", "train.patch_size=32", "train.batch_size=4",
    "train.validation_images=1", "train.validate_every_images=4", "train.checkpoint_every_images=4",
    "eval.max_images=1", "eval.center_crop=64",
]


def _child_runs(client, experiment_id):
    runs = client.search_runs([experiment_id], max_results=1000)
    return [r for r in runs if "variant" in r.data.tags]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sqlite_grid_logs_runs_skips_finished_and_report_is_reproducible(tmp_path, data_dir):
    uri = empty_store(tmp_path / "mlflow.db")
    outcome = run_grid("gaussian25", "smoke", ["noisy", "n2c"], TINY, uri, runs_root=tmp_path / "runs",
                       data_dir=data_dir, progress=False)
    assert outcome.ran == ["noisy", "n2c"] and not outcome.failed
    client, experiment_id = open_store(uri)
    runs = {r.data.tags["variant"]: r for r in _child_runs(client, experiment_id)}
    n2c = runs["n2c"]
    assert n2c.info.status == "FINISHED"
    assert n2c.data.params["train.budget_images"] == "8" and n2c.data.params["method.name"] == "n2c"
    for tag in ("method", "noise", "profile", "git_commit", "torch_version", "numpy_version",
                "bm3d_version", "device", "data_sha256", "config_hash", "mlflow.parentRunId"):
        assert tag in n2c.data.tags, tag
    assert 0 < n2c.data.metrics["psnr_kodak24"] < 60
    losses = client.get_metric_history(n2c.info.run_id, "train_loss")
    assert [m.step for m in losses] == sorted(m.step for m in losses) and losses[-1].step == 8
    assert client.get_metric_history(n2c.info.run_id, "val_psnr")
    artifacts = {a.path for a in client.list_artifacts(n2c.info.run_id)}
    assert {"config.json", "checkpoint.pt", "psnr-kodak24.csv", "crop-kodak24-denoised.png"} <= artifacts

    again = run_grid("gaussian25", "smoke", ["noisy", "n2c"], TINY, uri, runs_root=tmp_path / "runs",
                     data_dir=data_dir, progress=False)
    assert again.ran == [] and again.skipped == ["noisy", "n2c"]

    first = build_report(uri, tmp_path / "results", readme=None)
    table = (tmp_path / "results" / "psnr-gaussian25-smoke.md").read_text()
    assert "| n2c |" in table and "| noisy |" in table and "profile 'smoke'" in table
    assert f"{n2c.data.metrics['psnr_kodak24']:.2f}" in table
    # the grid run's account: its jobs' seconds and counted FLOPs, the floor at its measured matmul rate
    (parent,) = [r for r in client.search_runs([experiment_id]) if r.data.tags.get("grid") == "1"][-1:]
    account = parent.data.metrics
    children = [runs["noisy"], n2c]
    assert account["grid_job_seconds"] == pytest.approx(sum(r.data.metrics["job_seconds"] for r in children))
    n2c_flops = n2c.data.metrics["train_flops"] + n2c.data.metrics["scoring_flops_kodak24"]
    assert n2c.data.metrics["train_flops"] > 0 and account["grid_flops"] == pytest.approx(
        n2c_flops + runs["noisy"].data.metrics.get("scoring_flops_kodak24", 0.0))
    assert account["grid_floor_seconds"] == pytest.approx(account["grid_flops"] / (account["matmul_gflops"] * 1e9))
    assert f"wall time {account['grid_wall_seconds'] / 60:.1f} min, floor {account['grid_floor_seconds'] / 60:.1f} min" in table
    # a training-free method's whole cost is its scoring: the caption gives it per evaluation
    cost = runs["noisy"].data.metrics["scoring_seconds_per_evaluation_kodak24"]
    assert 0 < cost <= runs["noisy"].data.metrics["job_seconds"]
    assert f"scoring seconds per evaluation (kodak24) of the methods that train nothing: noisy {cost:.3g}" in table
    snapshot = _digest(tmp_path / "results")
    build_report(uri, tmp_path / "results", readme=None)
    assert _digest(tmp_path / "results") == snapshot and len(first) >= 4


@pytest.fixture
def mlflow_server(tmp_path):
    proc, uri = start_mlflow_server(tmp_path)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_grid_logs_to_a_real_mlflow_server_over_http(tmp_path, data_dir, mlflow_server):
    outcome = run_grid("gaussian25", "smoke", ["noisy", "n2n"], TINY, mlflow_server,
                       runs_root=tmp_path / "runs", data_dir=data_dir, progress=False)
    assert not outcome.failed
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)  # read back through a fresh HTTP client
    experiment = client.get_experiment_by_name("n2n-bench")
    runs = {r.data.tags["variant"]: r for r in _child_runs(client, experiment.experiment_id)}
    assert set(runs) == {"noisy", "n2n"}
    assert runs["n2n"].data.metrics["psnr_kodak24"] > 0
    assert "checkpoint.pt" in {a.path for a in client.list_artifacts(runs["n2n"].info.run_id)}


def test_unreachable_or_malformed_tracking_uri_fails_before_compute():
    started = time.time()
    with pytest.raises(TrackingError, match="unreachable"):
        open_store(f"http://127.0.0.1:{free_port()}")
    assert time.time() - started < 60
    with pytest.raises(TrackingError, match="malformed"):
        open_store("htp:/nowhere")


def test_grid_killed_mid_job_resumes_and_matches_an_uninterrupted_run(tmp_path, data_dir):
    # the killed grid is the real command in a process of its own (forked with its imports done:
    # conftest.start_command); the rerun that resumes it and the uninterrupted one are the same
    # command line run in this process (CliRunner), which spares two start-ups of torch and MLflow.
    # The killed process trains with this process's torch threads, so that all three runs reduce
    # floats in the same order.
    from typer.testing import CliRunner

    from benchmarks.cli import app

    cli = ["grid", "--noise", "gaussian25", "--profile", "smoke", "--methods", "n2c", "--no-report"]
    slow = [*TINY, "train.budget_images=24"]
    args = [a for s in slow for a in ("--set", s)]
    env = {**os.environ, "N2N_DATA": str(data_dir), "OMP_NUM_THREADS": str(torch.get_num_threads())}

    def run(name, kill_after_checkpoint=False):
        if not (tmp_path / f"{name}.db").exists():
            empty_store(tmp_path / f"{name}.db")
        command = cli + args + ["--tracking-uri", f"sqlite:///{tmp_path / name}.db",
                                "--runs-dir", str(tmp_path / name)]
        if not kill_after_checkpoint:
            return CliRunner().invoke(app, command, catch_exceptions=False)
        proc = start_command(CLI, command, env=env)
        deadline = time.time() + 300
        while time.time() < deadline and not list((tmp_path / name).glob("*/checkpoint.pt")):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None

    run("killed", kill_after_checkpoint=True)
    checkpoint = next((tmp_path / "killed").glob("*/checkpoint.pt"))
    assert torch.load(checkpoint, weights_only=True)["images_seen"] < 24
    resumed = run("killed")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming n2c from " in resumed.stderr, resumed.stderr  # it did resume, not start over
    clean = run("clean")
    assert clean.exit_code == 0, clean.output

    def final(name):
        client, experiment_id = open_store(f"sqlite:///{tmp_path / name}.db")
        done = [r for r in _child_runs(client, experiment_id) if r.info.status == "FINISHED"]
        assert len(done) == 1
        return done[0].data.metrics["psnr_kodak24"], torch.load(
            next((tmp_path / name).glob("*/checkpoint.pt")), weights_only=True)["model"]

    psnr_resumed, weights_resumed = final("killed")
    psnr_clean, weights_clean = final("clean")
    assert psnr_resumed == psnr_clean
    assert all(torch.equal(weights_resumed[k], weights_clean[k]) for k in weights_clean)


def test_report_shows_the_newest_finished_run_of_each_variant(tmp_path):
    # a variant whose configuration changed (a fix, a --set) has several FINISHED runs with different
    # hashes; its table row is the newest one, and unfinished runs never count
    from benchmarks.report_runs import finished_job_runs

    client, experiment_id = open_store(empty_store(tmp_path / "mlflow.db"))

    def run(variant, config_hash, psnr, status="FINISHED"):
        tags = {"variant": variant, "noise": "gaussian25", "profile": "quick", "config_hash": config_hash}
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        client.log_metric(run_id, "psnr_kodak24", psnr)
        client.set_terminated(run_id, status)
        time.sleep(0.01)  # distinct end times
        return run_id

    run("n2v", "aaa", 15.0)
    newest = run("n2v", "bbb", 26.0)
    run("n2v", "ccc", 99.0, status="FAILED")
    only_n2c = run("n2c", "ddd", 27.0)
    rows = {r.variant: r for r in finished_job_runs(client, experiment_id)}
    assert set(rows) == {"n2v", "n2c"}
    assert rows["n2v"].run_id == newest and rows["n2v"].metrics["psnr_kodak24"] == 26.0
    assert rows["n2c"].run_id == only_n2c


def test_caption_names_rows_scored_otherwise_and_the_cost_of_training_free_methods():
    from benchmarks.captions import caption
    from benchmarks.report_runs import JobRun

    def run(variant, params, metrics):
        base = {"train.budget_images": "2000", "train.patch_size": "64", "eval.sets": "['kodak24']",
                "eval.center_crop": "256", "eval.max_images": "None"}
        return JobRun(variant, variant, "gaussian25", "quick", {**base, **params}, metrics, {}, 0)

    runs = [run("n2c", {}, {"psnr_kodak24": 30.0}),
            run("zs-n2n", {"eval.max_images": "2"}, {"images_seen": 0, "scoring_seconds_per_evaluation_kodak24": 312.4}),
            run("cbm3d", {}, {"images_seen": 0, "scoring_seconds_per_evaluation_kodak24": 3.14159}),
            run("course-strided", {"eval.sets": "['small32']", "eval.max_images": "7"}, {"psnr_small32": 25.0})]
    text = caption(runs, "gaussian25", "quick", ["kodak24", "small32"])
    assert "central 256² crops of all images; scored otherwise: zs-n2n (first images 2);" in text
    assert "course-strided (" not in text  # its own column
    assert "of the methods that train nothing: zs-n2n 312, cbm3d 3.14." in text
    assert "train nothing" not in caption(runs[:1], "gaussian25", "quick", ["kodak24"])


def test_parallel_jobs_show_their_progress_and_score_as_a_job_run_alone(tmp_path, data_dir, grid_postfixes):
    # two 1-thread jobs side by side (--jobs 2 on 2 cores) against the same job alone at 2 threads:
    # only float reduction order differs, so the PSNRs agree to far better than 0.02 dB
    from benchmarks.grid import make_executor

    postfixes = grid_postfixes
    both = empty_store(tmp_path / "both.db")
    outcome = run_grid("gaussian25", "smoke", ["n2c", "n2n"], TINY, both, runs_root=tmp_path / "both",
                       data_dir=data_dir, progress=False, executor=make_executor("local", jobs=2, cores=2))
    assert sorted(outcome.ran) == ["n2c", "n2n"] and not outcome.failed
    assert any("training n2c" in text for text in postfixes) and any("training n2n" in text for text in postfixes)
    client, experiment_id = open_store(both)
    parallel = {r.data.tags["variant"]: r for r in _child_runs(client, experiment_id)}
    assert {r.data.tags["torch_threads"] for r in parallel.values()} == {"1"}

    # the same executor with one job left to run gives that job both cores
    alone = empty_store(tmp_path / "alone.db")
    run_grid("gaussian25", "smoke", ["n2c"], TINY, alone, runs_root=tmp_path / "alone", data_dir=data_dir,
             progress=False, executor=make_executor("local", jobs=2, cores=2))
    client, experiment_id = open_store(alone)
    (single,) = _child_runs(client, experiment_id)
    assert single.data.tags["torch_threads"] == "2"
    assert abs(single.data.metrics["psnr_kodak24"] - parallel["n2c"].data.metrics["psnr_kodak24"]) <= 0.02


def test_jobs_auto_is_one_single_thread_job_per_core_on_a_cpu_and_one_on_cuda(monkeypatch):
    from benchmarks.grid import JOB_MEMORY_BYTES, auto_jobs, parse_jobs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_jobs(cores=2, available_bytes=20 << 30) == 2
    assert auto_jobs(cores=16, available_bytes=4 * JOB_MEMORY_BYTES + 1) == 4  # memory caps it
    assert auto_jobs(cores=4, available_bytes=0) == 1
    assert parse_jobs("3") == 3
    with pytest.raises(N2NError, match="--jobs takes a whole number or auto"):
        parse_jobs("two")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert auto_jobs(cores=16, available_bytes=1 << 40) == 1 and parse_jobs("auto") == 1


def test_a_table_filled_by_two_grids_states_each_grids_wall_time_and_floor():
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException

    from benchmarks.captions import floor_note
    from benchmarks.report_runs import JobRun, grid_accounts

    def parent(start, wall, floor, rate, grid="1"):
        metrics = {"grid_wall_seconds": wall, "grid_floor_seconds": floor, "matmul_gflops": rate}
        return SimpleNamespace(info=SimpleNamespace(start_time=start), data=SimpleNamespace(tags={"grid": grid}, metrics=metrics))

    parents = {"late": parent(20, 270.0, 66.0, 310.0), "early": parent(10, 1224.0, 828.0, 323.5)}

    class Client:
        def get_run(self, run_id):
            if run_id not in parents:
                raise MlflowException("gone")
            return parents[run_id]

    rows = [JobRun(str(i), f"v{i}", "gaussian25", "quick", {}, {}, {"mlflow.parentRunId": p}, 0)
            for i, p in enumerate(["early"] * 20 + ["late"] * 4 + ["deleted"])]
    rows.append(JobRun("t", "trained-alone", "gaussian25", "quick", {}, {}, {}, 0))  # `train`: no grid
    accounts = grid_accounts(Client(), rows)
    assert [n for n, _ in accounts] == [20, 4]  # oldest grid first, each with the rows it ran
    note = floor_note(accounts)
    assert "wall time 20.4 min, floor 13.8 min (20 rows, at 324 GFLOP/s); wall time 4.5 min, floor 1.1 min (4 rows" in note
    assert floor_note([]) == ""

"""Data-parallel training (torchrun + DDP, gloo on CPU) against the single-process trainer.

A 2-rank run must take the single-process steps on the same global batches (to float tolerance:
the gradient is summed in another order), its ranks must train on disjoint rows that together are
the global batch, and its checkpoint must resume in one process as if the run had never been split.
The reference runs single-threaded like torchrun's ranks (OMP_NUM_THREADS=1): Adam divides by
|gradient|, so on its second step a few near-zero gradients amplify a thread count's rounding
differences to ~1e-5, which would hide nothing but blur the tolerance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from benchmarks.cli import app
from benchmarks.compose import compose_config
from benchmarks.training import train
from n2n_core.data.train_stream import CropStream
from n2n_core.errors import ConfigError
from n2n_core.methods import METHODS, build_method
from n2n_core.noise import parse_style
from n2n_core.train import distributed
from n2n_core.train.distributed import DistContext, shard_pair
from n2n_core.train.trainer import Trainer

ENTRY_POINT = Path(sys.executable).with_name("n2n-bench")
# two steps of batch 4; a checkpoint after each (the first survives as checkpoint.pt.prev); no
# ramp-up, so the first step already moves the weights
OVERRIDES = ["train.budget_images=8", "train.batch_size=4", "train.patch_size=32",
             "train.checkpoint_every_images=4", "train.validation_images=0", "train.ramp_up=0",
             'train.device="cpu"']


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    """Equal to float tolerance (one Adam step here moves weights by up to lr = 3e-4)."""
    assert a.keys() == b.keys()
    for key in a:
        worst = float((a[key] - b[key]).abs().max())
        assert torch.allclose(a[key], b[key], rtol=1e-5, atol=atol), f"{key}: max difference {worst:.3g}"


def biggest_change(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_rank_run_equals_single_process_and_resumes_in_one_process(tmp_path, data_dir):
    args = [a for o in OVERRIDES for a in ("--set", o)]
    ddp = tmp_path / "ddp"
    env = {**os.environ, "N2N_DATA": str(data_dir)}
    env.pop("WORLD_SIZE", None)
    launched = subprocess.run(
        [str(ENTRY_POINT), "train", "--method", "n2n", "--noise", "gaussian25", "--profile", "smoke",
         *args, "--out", str(ddp), "--json", "--nproc", "2"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    reports = [line for line in launched.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1, launched.stdout  # only rank 0 reports
    assert json.loads(reports[0])["images_seen"] == 8
    # beside the run folder's .lock
    assert sorted(p.name for p in ddp.iterdir() if p.name != ".lock") == ["checkpoint.pt", "checkpoint.pt.prev", "config.json"]

    # the reference: the same configuration in this (single) process
    cfg = compose_config("smoke", "n2n", "gaussian25", OVERRIDES)
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, single, data_dir=data_dir, progress=False)
    finally:
        torch.set_num_threads(threads)
    one_step_ddp, one_step_single = weights(ddp / "checkpoint.pt.prev"), weights(single / "checkpoint.pt.prev")
    assert torch.load(ddp / "checkpoint.pt.prev", weights_only=True)["images_seen"] == 4
    assert_same_weights(one_step_ddp, one_step_single)  # one step on the same global batch
    assert_same_weights(weights(ddp / "checkpoint.pt"), weights(single / "checkpoint.pt"), atol=1e-5)
    assert biggest_change(one_step_single, weights(single / "checkpoint.pt")) > 1e-4  # steps move weights

    # the 2-rank checkpoint after one step, resumed in one process, ends where the others did
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(ddp / "checkpoint.pt.prev", resumed / "checkpoint.pt")
    torch.set_num_threads(1)
    try:
        result = train(cfg, resumed, data_dir=data_dir, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result.images_seen == 8
    assert_same_weights(weights(resumed / "checkpoint.pt"), weights(single / "checkpoint.pt"), atol=1e-5)
    state = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert state["finished"] and state["images_seen"] == 8


def _global_pair(method_name: str, noise: str, batch: int = 4, step: int = 3, **method_cfg):
    config_cls = METHODS[method_name].Config
    method = build_method(config_cls(name=method_name, **method_cfg), parse_style(noise))
    images = [torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(6)]
    stream = CropStream(images, 32, seed=5)
    from n2n_core.config import TrainConfig

    trainer = Trainer(method, stream, TrainConfig(budget_images=64, batch_size=batch, patch_size=32),
                      seed=5, device=torch.device("cpu"))
    clean = stream.batch(step * batch, batch)
    return clean, method.training_pair(clean, trainer.step_context(step, step * batch))


@pytest.mark.parametrize("method_name,noise,extra", [
    ("n2n", "gaussian25", {}), ("n2v", "gaussian25", {}), ("ssdn", "gaussian5_50", {"sigma": "per_image"}),
])
def test_rank_slices_are_disjoint_and_together_the_global_batch(method_name, noise, extra):
    clean, pair = _global_pair(method_name, noise, **extra)
    shards = [shard_pair(pair, DistContext(rank, 2, rank), 4, seed=5, step=3) for rank in range(2)]
    assert [s.inputs.shape[0] for s in shards] == [2, 2]
    for name in ("inputs", "targets", "mask", "level"):
        whole = getattr(pair, name)
        if whole is None:
            continue
        torch.testing.assert_close(torch.cat([getattr(s, name) for s in shards]), whole, rtol=0, atol=0)
    # rank 0 holds global rows 0-1 (crops 12, 13 of the stream), rank 1 rows 2-3: no row is shared
    for a in shards[0].inputs:
        assert all(not torch.equal(a, b) for b in shards[1].inputs)
    assert not torch.equal(shards[0].inputs - clean[:2], shards[1].inputs - clean[2:])  # own noise


def test_generators_in_a_pair_are_drawn_per_rank():
    clean, pair = _global_pair("course", "gaussian25", network="bn_dropout")
    shards = [shard_pair(pair, DistContext(rank, 2, rank), 4, seed=5, step=3) for rank in range(2)]
    draws = [torch.rand(8, generator=s.rng) for s in shards]
    assert not torch.equal(draws[0], draws[1])  # dropout masks differ between ranks


def test_batch_or_budget_not_divisible_by_ranks_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        distributed.check_divisible(4, 8, 3)
    with pytest.raises(ConfigError, match="train.budget_images=10"):
        distributed.check_divisible(4, 10, 4)
    distributed.check_divisible(4, 8, 4)
    result = CliRunner().invoke(app, ["train", "--method", "n2n", "--noise", "gaussian25", "--profile",
                                      "smoke", "--nproc", "3", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "train.batch_size=4" in result.output
    assert not (tmp_path / "x").exists()  # refused before any process was started


def test_trainer_on_rank_one_trains_on_its_rows_and_neither_logs_nor_saves(tmp_path, monkeypatch):
    """The trainer's wiring, without a process group: DDP, the loss all-reduce and the barrier are
    stood in for, everything else is the real rank-1 path of a 2-rank run."""
    from n2n_core.config import TrainConfig

    monkeypatch.setattr(distributed, "wrap", lambda model, device: model)
    monkeypatch.setattr(distributed, "mean_over_ranks", lambda loss: float(loss.detach()))
    monkeypatch.setattr(distributed, "barrier", lambda: None)
    images = [torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(6)]
    stream = CropStream(images, 32, seed=5)
    method = build_method(METHODS["n2n"].Config(),
                          parse_style("gaussian25"))
    seen, logged = [], []
    loss = method.loss
    monkeypatch.setattr(method, "loss", lambda model, pair: (seen.append(pair), loss(model, pair))[1])

    class Recorder:
        def log_params(self, params): logged.append(params)
        def log_metrics(self, metrics, step): logged.append(metrics)
        def log_artifact(self, path): logged.append(path)

    cfg = TrainConfig(budget_images=8, batch_size=4, patch_size=32, ramp_up=0, checkpoint_every_images=4,
                      validation_images=0)
    trainer = Trainer(method, stream, cfg, seed=5, device=torch.device("cpu"), tracker=Recorder(),
                      validate=lambda model: logged.append("validated") or 0.0, progress=False,
                      dist=DistContext(1, 2, 1))
    trainer.fit(method.build_model(torch.Generator().manual_seed(0)), tmp_path / "checkpoint.pt")
    assert len(seen) == 2 and logged == [] and not list(tmp_path.iterdir())
    for step, pair in enumerate(seen):
        whole = method.training_pair(stream.batch(4 * step, 4), trainer.step_context(step, 4 * step))
        assert torch.equal(pair.inputs, whole.inputs[2:]) and torch.equal(pair.targets, whole.targets[2:])

"""The method-agnostic trainer (docs/methods.md §2): exact resume, skipped non-finite steps, image budgets.

Most tests train a single 3×3 convolution (a Method defined here) so that a run of a few steps
costs milliseconds; one resume test uses the registered N2C with the real U-Net. References are
independent: a second uninterrupted run, weight snapshots taken from outside the trainer, the
schedule formula written out again here, and the EMA recomputed from those snapshots.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from n2n_core.config import TrainConfig
from n2n_core.data.train_stream import CropStream
from n2n_core.errors import CheckpointError
from n2n_core.methods import build_method, method_config
from n2n_core.methods.base import LossOutput, Method, MethodConfigBase, TrainingPair
from n2n_core.noise import parse_style
from n2n_core.seeding import make_generator
from n2n_core.train.finite import grads_are_finite
from n2n_core.train.trainer import Trainer, TrainingDiverged

CPU = torch.device("cpu")
GAUSS25 = parse_style("gaussian25")


# ----------------------------------------------------------------------------- helpers


class TinyConfig(MethodConfigBase):
    name: Literal["tiny"] = "tiny"


class TinyMethod(Method):
    """One 3→3 3×3 convolution trained noisy → clean: Adam, EMA and checkpoints in milliseconds."""

    def build_model(self, rng):
        conv = nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(0.1 * torch.randn(conv.weight.shape, generator=rng))
            conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=rng))
        return conv

    def training_pair(self, clean, rngs):
        return TrainingPair(inputs=self.noise.sample(clean, rngs.noise).noisy, targets=clean)

    def loss(self, model, pair):
        return LossOutput(F.mse_loss(model(pair.inputs), pair.targets))

    def denoise(self, model, batch):
        return model(batch.noisy)


class Interrupted(Exception):
    """Raised by the stream to stop a run from outside, like a killed process."""


class ScriptedStream:
    """Wraps a CropStream: records every request, poisons chosen batches with NaN, can interrupt.

    `on_batch(images_seen)` runs before the batch is handed out, i.e. before that step's update.
    """

    def __init__(self, stream: CropStream, nan_at=(), stop_at: int | None = None, on_batch=None):
        self.stream, self.nan_at, self.stop_at, self.on_batch = stream, set(nan_at), stop_at, on_batch
        self.calls: list[tuple[int, int]] = []

    def training_pair(self, method, images_seen: int, n: int, step, device):
        return method.training_pair(self.batch(images_seen, n).to(device), step)

    def batch(self, images_seen: int, n: int) -> torch.Tensor:
        if self.stop_at is not None and images_seen >= self.stop_at:
            raise Interrupted(images_seen)
        self.calls.append((images_seen, n))
        if self.on_batch is not None:
            self.on_batch(images_seen)
        out = self.stream.batch(images_seen, n)
        if images_seen in self.nan_at:
            out[0, 0, 0, 0] = float("nan")
        return out


class MetricsTracker:
    def __init__(self):
        self.metrics: list[tuple[int, dict]] = []

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path):
        pass


@pytest.fixture
def crops(tiny_images) -> CropStream:
    return CropStream(tiny_images(6, 40, 44, seed=1), patch_size=32, seed=5)


def tiny_method() -> TinyMethod:
    return TinyMethod(TinyConfig(), GAUSS25)


def cfg(**fields) -> TrainConfig:
    base = dict(budget_images=16, batch_size=4, patch_size=32, checkpoint_every_images=8,
                validation_images=0)
    return TrainConfig(**{**base, **fields})


def trainer(method, stream, train_cfg, seed=0, **kwargs) -> Trainer:
    return Trainer(method, stream, train_cfg, seed=seed, device=CPU, progress=False, **kwargs)


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_same_state(a, b, where="checkpoint"):
    """Recursive bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def paper_lr(n: int, total: int, lr: float, up: float = 0.1, down: float = 0.3) -> float:
    """docs/methods.md §2 written out again: sin²(πt/2) ramp-up, (1 + cos πt)²/4 ramp-down, 0 at N."""
    if n >= total:
        return 0.0
    factor = 1.0
    if n < up * total:
        factor = math.sin(math.pi * (n / (up * total)) / 2) ** 2
    if n > (1 - down) * total:
        t = (n - (1 - down) * total) / (down * total)
        factor *= ((1 + math.cos(math.pi * t)) / 2) ** 2
    return lr * factor


# ----------------------------------------------------------------------------- resume


def _n2c():
    return build_method(method_config("n2c"), GAUSS25)


@pytest.mark.parametrize(
    ("make_method", "batch"),
    [(tiny_method, 4), (_n2c, 1)],  # the real U-Net with batches of one, to keep it quick
    ids=["tiny-conv", "n2c-unet"],
)
def test_interrupted_and_resumed_run_equals_uninterrupted_bit_for_bit(make_method, batch, crops, tmp_path):
    method = make_method()
    budget = 4 * batch  # 4 steps; checkpoints after steps 2 and 4
    train_cfg = cfg(budget_images=budget, batch_size=batch, checkpoint_every_images=budget // 2,
                    ema_decay=0.9)

    # uninterrupted reference
    reference = method.build_model(make_generator(0))
    initial = params(reference)
    trainer(method, ScriptedStream(crops), train_cfg).fit(reference, tmp_path / "a.pt")

    # the same run, killed when it asks for the batch after the half-way checkpoint
    first = method.build_model(make_generator(0))
    with pytest.raises(Interrupted):
        trainer(method, ScriptedStream(crops, stop_at=budget // 2), train_cfg).fit(first, tmp_path / "b.pt")
    mid = load(tmp_path / "b.pt")
    assert mid["images_seen"] == budget // 2 and mid["finished"] is False

    # resumed in a fresh trainer, into a model initialised differently (weights must come from disk)
    resumed_stream = ScriptedStream(crops)
    second = trainer(method, resumed_stream, train_cfg)
    resumed = method.build_model(make_generator(123))
    _, state = second.fit(resumed, tmp_path / "b.pt")
    assert resumed_stream.calls == [(2 * batch, batch), (3 * batch, batch)], "resume must continue, not restart"
    assert state.images_seen == budget

    a, b = load(tmp_path / "a.pt"), load(tmp_path / "b.pt")
    assert a["finished"] and b["finished"]
    for key in ("model", "ema", "optimizer", "images_seen", "skipped_steps"):
        assert_same_state(a[key], b[key], key)
    assert a["optimizer"]["state"], "Adam state must be present"
    # the comparison is not vacuous: training moved the weights and the EMA lags behind them
    assert not all(torch.equal(p, q) for p, q in zip(initial, params(reference)))
    assert not all(torch.equal(a["model"][k], a["ema"][k]) for k in a["model"])


# ----------------------------------------------------------------------------- non-finite steps


def test_grads_are_finite_checks_every_gradient():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    assert grads_are_finite(model)  # no gradients at all
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    assert grads_are_finite(model)
    model[1].bias.grad[1] = float("inf")
    assert not grads_are_finite(model)
    model[1].bias.grad[1] = float("nan")
    assert not grads_are_finite(model)
    model[1].bias.grad = None  # parameters without a gradient are ignored
    assert grads_are_finite(model)


def test_nan_step_leaves_weights_untouched_and_is_counted(crops, tmp_path):
    method = tiny_method()
    decay = 0.5
    train_cfg = cfg(ramp_up=0.0, ramp_down=0.0, ema_decay=decay)  # constant lr: every step moves
    model = method.build_model(make_generator(0))
    snapshots = []  # weights before each step, seen from outside the trainer
    stream = ScriptedStream(crops, nan_at={8}, on_batch=lambda n: snapshots.append(params(model)))
    tracker = MetricsTracker()
    run = trainer(method, stream, train_cfg, tracker=tracker)
    ema_model, state = run.fit(model, tmp_path / "c.pt")
    snapshots.append(params(model))  # after the last step

    assert len(snapshots) == 5
    moved = [not all(torch.equal(p, q) for p, q in zip(snapshots[k], snapshots[k + 1])) for k in range(4)]
    assert moved == [True, True, False, True], "only the step on images 8–11 (NaN) may leave weights as they were"
    assert state.skipped_steps == 1
    assert state.images_seen == 16  # a skipped step still spends its images
    assert all(torch.isfinite(p).all() for p in model.parameters())
    saved = load(tmp_path / "c.pt")
    assert saved["skipped_steps"] == 1
    adam_steps = {int(s["step"]) for s in saved["optimizer"]["state"].values()}
    assert adam_steps == {3}, "Adam must not count the skipped step"
    assert tracker.metrics[-1][1]["skipped_steps"] == 1

    # EMA recomputed from the snapshots: ema ← ema + (1 − d)(w − ema) after every step taken
    ema = snapshots[0]
    for k in range(4):
        if moved[k]:
            ema = [e + (1 - decay) * (w - e) for e, w in zip(ema, snapshots[k + 1])]
    for got, want in zip(ema_model.parameters(), ema):
        torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=1e-7)


def test_ema_follows_the_method_decay_schedule(crops, tmp_path):
    # a method's ema_decay hook sets each update's decay; here the warm-up rule by hand:
    # d_t = min(0.999, (1 + t) / (10 + t)) = 0.1, 2/11, 3/12, 4/13 for the four steps
    class WarmedUp(TinyMethod):
        def ema_decay(self, decay, step):
            return min(decay, (1 + step) / (10 + step))

    method = WarmedUp(TinyConfig(), GAUSS25)
    model = method.build_model(make_generator(0))
    snapshots = []
    stream = ScriptedStream(crops, on_batch=lambda n: snapshots.append(params(model)))
    ema_model, _ = trainer(method, stream, cfg(ema_decay=0.999)).fit(model, tmp_path / "c.pt")
    snapshots.append(params(model))
    ema = snapshots[0]
    for k, decay in enumerate([1 / 10, 2 / 11, 3 / 12, 4 / 13]):
        ema = [e + (1 - decay) * (w - e) for e, w in zip(ema, snapshots[k + 1])]
    for got, want in zip(ema_model.parameters(), ema):
        torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=1e-7)


def test_too_many_consecutive_nonfinite_steps_raise(crops):
    method = tiny_method()
    stream = ScriptedStream(crops, nan_at={4, 8, 12, 16})
    run = trainer(method, stream, cfg(budget_images=32, max_consecutive_skips=3))
    with pytest.raises(TrainingDiverged, match="3 consecutive.*lr"):
        run.fit(method.build_model(make_generator(0)))
    assert stream.calls == [(0, 4), (4, 4), (8, 4), (12, 4)], "must stop at the third skip in a row"


def test_isolated_nonfinite_steps_do_not_add_up_to_divergence(crops):
    method = tiny_method()
    stream = ScriptedStream(crops, nan_at={4, 12, 20})  # never two in a row
    run = trainer(method, stream, cfg(budget_images=32, max_consecutive_skips=2))
    _, state = run.fit(method.build_model(make_generator(0)))
    assert state.skipped_steps == 3
    assert state.images_seen == 32


# ----------------------------------------------------------------------------- budget and lr


class RecordingAdam(torch.optim.Adam):
    """Adam that records the learning rate it actually applies at every step."""

    applied: list[float] = []

    def step(self, closure=None):
        RecordingAdam.applied.append(self.param_groups[0]["lr"])
        return super().step(closure)


@pytest.fixture
def recording_adam(monkeypatch):
    RecordingAdam.applied = []
    monkeypatch.setattr(Method, "make_optimizer",
                        lambda self, model, c: RecordingAdam(model.parameters(), lr=c.lr, betas=(0.9, 0.99), eps=1e-8))
    return RecordingAdam


def test_budget_counted_in_images_not_steps(crops, recording_adam, tmp_path):
    method = tiny_method()
    stream = ScriptedStream(crops)
    run = trainer(method, stream, cfg(budget_images=10, batch_size=4))
    _, state = run.fit(method.build_model(make_generator(0)), tmp_path / "d.pt")
    assert state.images_seen == 10
    assert stream.calls == [(0, 4), (4, 4), (8, 2)], "the last step takes only the images left"
    assert len(recording_adam.applied) == math.ceil(10 / 4)
    assert {int(s["step"]) for s in load(tmp_path / "d.pt")["optimizer"]["state"].values()} == {3}


def test_lr_applied_at_every_step_follows_the_schedule(crops, recording_adam):
    method = tiny_method()
    budget, batch, base = 40, 1, 1e-3
    tracker = MetricsTracker()
    run = trainer(method, ScriptedStream(crops), cfg(budget_images=budget, batch_size=batch, lr=base),
                  tracker=tracker)
    run.fit(method.build_model(make_generator(0)))
    expected = [paper_lr(n, budget, base) for n in range(0, budget, batch)]
    assert recording_adam.applied == pytest.approx(expected, rel=1e-12, abs=0)
    assert recording_adam.applied[0] == 0.0
    # the tracker's "lr" is the rate of the step that ended at the logged image count
    logged = {step: m["lr"] for step, m in tracker.metrics if "lr" in m}
    assert sorted(logged) == [10, 20, 30, 40]
    for step, lr in logged.items():
        assert lr == pytest.approx(paper_lr(step - batch, budget, base), rel=1e-12)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_of_another_configuration_is_refused(crops, tmp_path):
    method = tiny_method()
    path = tmp_path / "e.pt"
    trainer(method, ScriptedStream(crops), cfg(budget_images=8), identity="aaaa").fit(
        method.build_model(make_generator(0)), path)
    with pytest.raises(CheckpointError, match="another run"):
        trainer(method, ScriptedStream(crops), cfg(budget_images=8), identity="bbbb").fit(
            method.build_model(make_generator(0)), path)


def test_finished_checkpoint_is_returned_without_training(crops, tmp_path):
    method = tiny_method()
    path = tmp_path / "f.pt"
    trainer(method, ScriptedStream(crops), cfg(budget_images=8), identity="aaaa").fit(
        method.build_model(make_generator(0)), path)
    before = path.read_bytes()
    stream = ScriptedStream(crops)
    again = trainer(method, stream, cfg(budget_images=8), identity="aaaa")
    model, state = again.fit(method.build_model(make_generator(99)), path)
    assert stream.calls == []
    assert state.images_seen == 8
    assert path.read_bytes() == before
    assert_same_state(load(path)["model"], model.state_dict(), "model")


def test_damaged_checkpoint_falls_back_to_previous_and_still_matches(crops, tmp_path):
    method = tiny_method()
    train_cfg = cfg(checkpoint_every_images=4, ema_decay=0.9)

    reference = method.build_model(make_generator(0))
    trainer(method, ScriptedStream(crops), train_cfg).fit(reference, tmp_path / "a.pt")

    path = tmp_path / "g.pt"
    with pytest.raises(Interrupted):  # checkpoints at 4 (→ .prev) and 8, killed asking for 8 on
        trainer(method, ScriptedStream(crops, stop_at=8), train_cfg).fit(
            method.build_model(make_generator(0)), path)
    assert load(Path(str(path) + ".prev"))["images_seen"] == 4
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a torn write

    stream = ScriptedStream(crops)
    with pytest.warns(UserWarning, match="previous checkpoint"):
        trainer(method, stream, train_cfg).fit(method.build_model(make_generator(7)), path)
    assert stream.calls[0] == (4, 4), "must resume from the previous checkpoint's 4 images"
    a, g = load(tmp_path / "a.pt"), load(path)
    for key in ("model", "ema", "optimizer", "images_seen"):
        assert_same_state(a[key], g[key], key)


def test_damaged_checkpoint_without_previous_is_an_error(crops, tmp_path):
    method = tiny_method()
    path = tmp_path / "h.pt"
    trainer(method, ScriptedStream(crops), cfg(budget_images=8, checkpoint_every_images=8)).fit(
        method.build_model(make_generator(0)), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="damaged"):
        trainer(method, ScriptedStream(crops), cfg(budget_images=16)).fit(
            method.build_model(make_generator(0)), path)


# ----------------------------------------------------------------------------- randomness


def test_training_noise_derives_from_seed_and_step(tiny_images):
    method = build_method(method_config("n2n"), GAUSS25)  # two draws per pair: inputs and targets
    clean = torch.rand(2, 3, 32, 32, generator=make_generator(1))
    stream = CropStream(tiny_images(2, 32, 32), 32, seed=0)
    a, b = trainer(method, stream, cfg(), seed=3), trainer(method, stream, cfg(), seed=3)
    other_seed = trainer(method, stream, cfg(), seed=4)

    pa, pb = method.training_pair(clean, a.step_context(5, 0)), method.training_pair(clean, b.step_context(5, 0))
    assert torch.equal(pa.inputs, pb.inputs) and torch.equal(pa.targets, pb.targets)
    for different in (method.training_pair(clean, a.step_context(6, 0)), method.training_pair(clean, other_seed.step_context(5, 0))):
        assert not torch.equal(pa.inputs, different.inputs)
        assert not torch.equal(pa.targets, different.targets)
    # method-side randomness (N2V masks) has its own stream, also fixed by (seed, step)
    ma, mb = a.step_context(5, 0).method, b.step_context(5, 0).method
    assert torch.equal(torch.rand(8, generator=ma), torch.rand(8, generator=mb))
    assert not torch.equal(torch.rand(8, generator=a.step_context(5, 0).method), torch.rand(8, generator=a.step_context(5, 0).noise))


def test_runs_with_same_seed_see_same_pairs_and_other_seeds_do_not(crops):
    class Recording(TinyMethod):
        def __init__(self, *args):
            super().__init__(*args)
            self.pairs = []

        def training_pair(self, clean, rngs):
            pair = super().training_pair(clean, rngs)
            self.pairs.append(pair.inputs.clone())
            return pair

    runs = {}
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        method = Recording(TinyConfig(), GAUSS25)
        trainer(method, ScriptedStream(crops), cfg(budget_images=12), seed=seed).fit(
            method.build_model(make_generator(0)))
        runs[name] = method.pairs
    assert len(runs["a"]) == 3
    assert all(torch.equal(x, y) for x, y in zip(runs["a"], runs["b"]))
    assert not any(torch.equal(x, y) for x, y in zip(runs["a"], runs["c"]))  # same crops, other noise


# ----------------------------------------------------------------------------- host syncs (CUDA design)
# On CUDA the trainer keeps the skip decision on the device (finite.DeviceSkip) and reads back only
# when it logs or saves. The CPU cannot show a CUDA sync, so the design is checked two ways: every
# deliberate read-back goes through finite.host_read (counted here), and a dispatch mode counts
# every other scalar read (`.item()`, `bool(t)`, `float(t)`: aten._local_scalar_dense) and every
# op whose output size depends on values (nonzero, masked_select), which sync on CUDA.

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import n2n_core.train.finite as finite  # noqa: E402

_SYNCING_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique")


class HiddenSyncs(TorchDispatchMode):
    """Counts the ops that make a CUDA host wait, wherever they are called from."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(_SYNCING_OPS):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def fused_adam(monkeypatch):
    """The default optimizer as it is on CUDA (fused: it obeys a device-side found_inf flag)."""
    monkeypatch.setattr(Method, "make_optimizer", lambda self, model, c: torch.optim.Adam(
        model.parameters(), lr=c.lr, betas=(0.9, 0.99), eps=1e-8, fused=True))


@pytest.fixture
def read_backs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = finite.host_read

    def counted(tensors):
        calls.append(len(tensors))
        return real(tensors)

    monkeypatch.setattr(finite, "host_read", counted)
    return calls


def _ssdn():  # a learned σ: its estimate is one of the method's logs read back when logging
    return build_method(method_config("ssdn", sigma="constant"), GAUSS25)


class CutBeforehand(ScriptedStream):
    """Crops cut before training: the crop stream's host-side reads (CPU generators, CPU tensors,
    no device involved even on CUDA) stay out of the count."""

    def __init__(self, stream: CropStream, budget: int, batch: int):
        super().__init__(stream)
        self.cut = {k: stream.batch(k, min(batch, budget - k)) for k in range(0, budget, batch)}

    def batch(self, images_seen: int, n: int) -> torch.Tensor:
        self.calls.append((images_seen, n))
        return self.cut[images_seen].clone()


@pytest.mark.parametrize("make_method", [tiny_method, _n2c, _ssdn], ids=["tiny-conv", "n2c-unet", "ssdn"])
def test_deferred_steps_read_back_only_when_logging(make_method, crops, fused_adam, read_backs):
    method = make_method()
    batch, steps = 1, 25  # logged after 10, 20 and 25 steps (LOG_EVERY_STEPS = 10)
    train_cfg = cfg(budget_images=batch * steps, batch_size=batch, ema_decay=0.9)
    run = trainer(method, CutBeforehand(crops, batch * steps, batch), train_cfg, defer_host_reads=True)
    with HiddenSyncs() as hidden:
        _, state = run.fit(method.build_model(make_generator(0)))
    assert isinstance(run.guard, finite.DeviceSkip)
    assert hidden.seen == [], "a step must not read a value back outside host_read"
    # 3 logs, then the final settle and the finite-weights check: 5 reads for 25 steps
    assert len(read_backs) == 3 + 2
    assert state.images_seen == batch * steps and state.skipped_steps == 0


def test_host_decision_reads_back_every_step(crops, read_backs):
    method = tiny_method()
    run = trainer(method, ScriptedStream(crops), cfg(budget_images=25, batch_size=1))
    run.fit(method.build_model(make_generator(0)))
    assert isinstance(run.guard, finite.HostSkip)  # the CPU default
    assert len(read_backs) == 25 + 3 + 1  # one decision per step, 3 logs, the finite-weights check


def test_deferred_skip_equals_the_host_decision(crops, fused_adam, tmp_path):
    """Same NaN batch, same fused Adam: the device flag skips exactly what the host would skip."""
    results = {}
    for deferred in (False, True):
        method = tiny_method()
        model = method.build_model(make_generator(0))
        stream = ScriptedStream(crops, nan_at={8})
        run = trainer(method, stream, cfg(ramp_up=0.0, ramp_down=0.0, ema_decay=0.5),
                      defer_host_reads=deferred)
        ema_model, state = run.fit(model, tmp_path / f"{deferred}.pt")
        saved = load(tmp_path / f"{deferred}.pt")
        results[deferred] = (params(model), params(ema_model), state, saved)
    (w0, e0, s0, c0), (w1, e1, s1, c1) = results[False], results[True]
    assert all(torch.equal(a, b) for a, b in zip(w0, w1)), "the weights must be bit-identical"
    for a, b in zip(e0, e1):  # the EMA weight is a float on the host and a tensor on the device
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert s0.skipped_steps == s1.skipped_steps == 1 and c0["skipped_steps"] == c1["skipped_steps"] == 1
    assert {int(s["step"]) for s in c1["optimizer"]["state"].values()} == {3}, "Adam must not count the skip"


def test_deferred_divergence_is_caught_at_the_next_read_back(crops, fused_adam):
    method = tiny_method()
    stream = ScriptedStream(crops, nan_at={4 * k for k in range(1, 20)})  # every step after the first
    run = trainer(method, stream, cfg(budget_images=80, max_consecutive_skips=3), defer_host_reads=True)
    with pytest.raises(TrainingDiverged, match=r"\d+ consecutive.*lr"):
        run.fit(method.build_model(make_generator(0)))
    assert len(stream.calls) == 10, "caught at the first log (10 steps), not at the end of the budget"

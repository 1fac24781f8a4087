"""The step a method reads from its StepClock (n2n_core/methods/step_clock.py), in the real Trainer.

Noise2Self's mask phase and Neighbor2Neighbor's γ depend on the step; the clock reads it from the
trainer's Adam. Run through the Trainer, killed after its half-way checkpoint and resumed in a fresh
process-like set-up (new method, new trainer), the phases and γ must continue where they stopped
and equal those of an uninterrupted run.
"""

from __future__ import annotations

import pytest
import torch

from n2n_core.config import TrainConfig
from n2n_core.data.train_stream import CropStream
from n2n_core.methods import build_method, method_config
from n2n_core.noise import parse_style
from n2n_core.train.trainer import Trainer

BATCH, BUDGET = 1, 4  # four steps of one 32² crop; a checkpoint after step 2


class Killed(Exception):
    pass


class StoppingStream:
    """A CropStream that raises Killed when asked for the batch at `stop_at` images."""

    def __init__(self, stream: CropStream, stop_at: int | None = None):
        self.stream, self.stop_at = stream, stop_at

    def batch(self, images_seen: int, n: int) -> torch.Tensor:
        if self.stop_at is not None and images_seen >= self.stop_at:
            raise Killed(images_seen)
        return self.stream.batch(images_seen, n)


def recording(name: str, **fields):
    """A registered method whose step-dependent quantity is appended to `.seen` at every step."""
    method = build_method(method_config(name, **fields), parse_style("gaussian25"))
    method.seen = []
    if name == "n2self":
        pair_of = method.training_pair

        def training_pair(clean, rngs):
            pair = pair_of(clean, rngs)
            rows, cols = torch.nonzero(pair.mask[0, 0], as_tuple=True)
            method.seen.append((int(rows[0]), int(cols[0])))  # the grid's phase
            return pair

        method.training_pair = training_pair
    else:
        loss_of = method.loss

        def loss(model, pair):
            out = loss_of(model, pair)
            method.seen.append(float(out.logs["gamma"]))
            return out

        method.loss = loss
    return method


def run(name, fields, images, path, stop_at=None):
    method = recording(name, **fields)
    cfg = TrainConfig(budget_images=BUDGET, batch_size=BATCH, patch_size=32,
                      checkpoint_every_images=2, validation_images=0)
    trainer = Trainer(method, StoppingStream(CropStream(images, 32, seed=1), stop_at), cfg, seed=0,
                      device=torch.device("cpu"), progress=False)
    model = method.build_model(torch.Generator().manual_seed(0))
    try:
        trainer.fit(model, path)
    except Killed:
        pass
    return method.seen


@pytest.mark.parametrize(("name", "fields", "expected"), [
    ("n2self", {"grid_width": 2}, [(0, 0), (1, 0), (0, 1), (1, 1)]),  # (step mod 2, step div 2 mod 2)
    ("ne2ne", {"gamma": 2.0}, [pytest.approx(2.0 * step / BUDGET) for step in range(BUDGET)]),
])
def test_the_step_survives_a_kill_and_resume_in_the_trainer(name, fields, expected, tiny_images, tmp_path):
    images = tiny_images(3, 40, 40, seed=2)
    assert run(name, fields, images, tmp_path / "whole.pt") == expected
    assert run(name, fields, images, tmp_path / "cut.pt", stop_at=2) == expected[:2]
    assert run(name, fields, images, tmp_path / "cut.pt") == expected[2:], "resume must continue the sequence"

"""The grid's FLOP floor: counted FLOPs against the closed form of a convolution, the matmul rate
against its definition, and the first-call counter of scoring."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.flops import CountFirstCall, MatmulRate, training_step_flops
from n2n_core.data.train_stream import CropStream
from n2n_core.methods import build_method, method_config
from n2n_core.noise import parse_style


def conv_flops(batch: int, c_in: int, c_out: int, k: int, side: int) -> int:
    """A 'same' k×k convolution: one multiply and one add per weight per output pixel."""
    return 2 * batch * c_out * side * side * c_in * k * k


def test_a_training_step_counts_the_forward_and_the_weight_gradient_of_a_convolution():
    # the input needs no gradient, so backward computes only the weight's: twice the forward's FLOPs
    images = [torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8) for _ in range(3)]
    stream = CropStream(images, patch_size=16, seed=0)
    method = build_method(method_config("n2c"), parse_style("gaussian25"))
    model = nn.Conv2d(3, 3, 5, padding=2)
    before = [p.detach().clone() for p in model.parameters()]
    flops = training_step_flops(method, model, stream, batch_size=4, budget_images=8, device=torch.device("cpu"))
    assert flops == 2 * conv_flops(4, 3, 3, 5, 16)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters())) and model.weight.grad is None


def test_matmul_rate_is_two_n_cubed_over_the_time():
    rate = MatmulRate(n=64)
    assert rate.flops == 2 * 64**3
    assert 0 < rate() and 0 < rate.best_of(rounds=2, repeats=2)


def test_scoring_counts_the_first_chunk_per_evaluation_and_then_gets_out_of_the_way():
    conv = nn.Conv2d(3, 3, 3, padding=1)
    calls = []

    def denoise(items):
        calls.append(len(items))
        with torch.no_grad():
            return [conv(x) for x in items]

    counted = CountFirstCall(denoise)
    counted([torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)])
    assert counted.flops_per_evaluation == pytest.approx(conv_flops(1, 3, 3, 3, 8))
    counted([torch.zeros(1, 3, 32, 32)])  # not counted again
    assert counted.flops_per_evaluation == pytest.approx(conv_flops(1, 3, 3, 3, 8)) and calls == [2, 1]

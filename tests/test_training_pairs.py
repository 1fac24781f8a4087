"""Each learned method builds the training pair its paper says (N2C, N2N, N2V).

Pairs are checked against an independent draw of the same noise, and N2V's loss against a masked
MSE computed by hand.
"""

from __future__ import annotations

import pytest
import torch

from n2n_core.methods import build_method, method_config
from n2n_core.noise import parse_style
from n2n_core.seeding import make_generator
from test_ssdn import clean_batch, make, rngs  # the same small helpers as SSDN's own checks


def test_every_method_sees_the_same_noisy_input_at_a_step():
    clean = clean_batch()
    noise = parse_style("gaussian25")
    independent = noise.sample(clean, make_generator(10)).noisy  # the first draw from the step's generator
    seen = {}
    for name in ("n2c", "n2n", "ssdn", "ssdn-mu"):
        method = build_method(method_config(name), noise)
        seen[name] = method.training_pair(clean, rngs()).inputs
    seen["n2v-target"] = build_method(method_config("n2v"), noise).training_pair(clean, rngs()).targets
    for name, noisy in seen.items():
        assert torch.equal(noisy, independent), name


def test_n2c_target_is_the_clean_crop():
    method, model = make(method_config("n2c"))
    clean = clean_batch()
    pair = method.training_pair(clean, rngs())
    assert torch.equal(pair.targets, clean)
    assert not torch.equal(pair.inputs, clean)
    with torch.no_grad():
        by_hand = ((model(pair.inputs) - clean) ** 2).mean()
        assert method.loss(model, pair).loss == pytest.approx(float(by_hand), rel=1e-6)


def test_n2n_target_is_a_second_independent_draw_of_the_same_clean():
    sigma = 25 / 255
    method, _ = make(method_config("n2n"))
    clean = clean_batch(n=4)
    pair = method.training_pair(clean, rngs())
    a, b = (pair.inputs - clean).flatten(), (pair.targets - clean).flatten()
    assert not torch.equal(pair.inputs, pair.targets)
    # same clean underneath: each residual is pure σ-noise (a different clean would blow this up)
    assert float(a.std()) == pytest.approx(sigma, rel=0.05)
    assert float(b.std()) == pytest.approx(sigma, rel=0.05)
    # independent: correlation ~ N(0, 1/√n), n = 12288 → |r| < 0.04 is > 4 standard deviations
    r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert abs(r) < 0.04


def test_n2n_target_draws_its_own_level_for_variable_styles():
    method, _ = make(method_config("n2n"), "gaussian5_50")
    clean = clean_batch(n=4)
    pair = method.training_pair(clean, rngs())
    std_in = (pair.inputs - clean).flatten(1).std(dim=1)
    std_tg = (pair.targets - clean).flatten(1).std(dim=1)
    # within one draw σ is per image (5..50)/255; the two draws must not share it
    assert ((std_in / std_tg - 1).abs() > 0.1).any(), (std_in, std_tg)
    assert ((std_in * 255 > 4) & (std_in * 255 < 52)).all()


def test_n2v_target_is_the_noisy_input_and_only_masked_entries_change():
    config = method_config("n2v", mask_percent=1.5, radius=5, allow_center=True)
    method, model = make(config)
    clean = clean_batch()
    pair = method.training_pair(clean, rngs())
    noisy = parse_style("gaussian25").sample(clean, make_generator(10)).noisy
    assert torch.equal(pair.targets, noisy), "N2V's target is the same noisy input, not a second draw"
    mask = pair.mask
    assert mask.shape == clean.shape and set(mask.unique().tolist()) <= {0.0, 1.0}
    changed = pair.inputs != pair.targets
    assert not (changed & (mask == 0)).any(), "an unmasked entry was modified"
    # box side round(√(100/1.5)) = 8 → 4×4 boxes per 32² channel, one masked entry each
    assert int(mask.sum()) == 2 * 3 * 16
    assert changed.sum() > 0.5 * mask.sum()  # replacements mostly differ (the centre may be picked)
    with torch.no_grad():
        pred = model(pair.inputs)
        by_hand = ((pred - noisy) ** 2)[mask.bool()].mean()
        assert float(method.loss(model, pair).loss) == pytest.approx(float(by_hand), rel=1e-6)



"""Run configuration: profile → method → noise → overrides, validated once; the run's identity hash.

Expected values are read straight from the TOML files with tomllib, independently of the merge.
"""

from __future__ import annotations

import json
import tomllib

import pytest
import torch
from pydantic import ValidationError

from benchmarks.compose import CONFIG_DIR, compose_config
from n2n_core.config import EvalConfig, ExperimentConfig, TrainConfig, merge_layers, parse_override
from n2n_core.errors import ConfigError

BAD_CONFIG = (ConfigError, ValidationError)


def toml(kind: str, name: str) -> dict:
    return tomllib.loads((CONFIG_DIR / kind / f"{name}.toml").read_text())


def test_profile_method_and_overrides_merge_in_order():
    profile, method = toml("profiles", "smoke"), toml("methods", "n2v")
    cfg = compose_config("smoke", "n2v", "gaussian25", ["train.lr=1e-4", "train.batch_size=2"])
    # from the profile
    assert cfg.train.budget_images == profile["train"]["budget_images"]
    assert cfg.train.patch_size == profile["train"]["patch_size"]
    assert cfg.eval.center_crop == profile["eval"]["center_crop"]
    assert cfg.eval.sets == profile["eval"]["sets"]
    # from the method file, including its train default
    assert cfg.method.name == "n2v"
    assert cfg.method.mask_percent == method["method"]["mask_percent"]
    assert cfg.method.allow_center == method["method"]["allow_center"]
    assert cfg.train.ema_decay == method["train"]["ema_decay"]
    # overrides win over the profile; untouched fields keep the model defaults
    assert cfg.train.lr == 1e-4
    assert cfg.train.batch_size == 2 != profile["train"]["batch_size"]
    assert cfg.train.ramp_up == TrainConfig.model_fields["ramp_up"].default
    assert cfg.profile == "smoke" and cfg.noise == "gaussian25"


def test_override_may_replace_a_method_file_value():
    cfg = compose_config("smoke", "n2v", "gaussian25", ["method.mask_percent=0.2", "train.ema_decay=0.99"])
    assert cfg.method.mask_percent == 0.2 and cfg.train.ema_decay == 0.99


@pytest.mark.parametrize(("text", "path", "value"), [
    ("train.lr=1e-4", ["train", "lr"], 1e-4),
    ("train.budget_images=2_000", ["train", "budget_images"], 2000),
    ("eval.sets=['kodak24', 'bsd300']", ["eval", "sets"], ["kodak24", "bsd300"]),
    ("train.device=cpu", ["train", "device"], "cpu"),  # a bare word is a string
    ("train.amp=true", ["train", "amp"], True),
    (" eval.repeats = {kodak24 = 3} ", ["eval", "repeats"], {"kodak24": 3}),
])
def test_override_values_are_toml_literals(text, path, value):
    assert parse_override(text) == (path, value)


def test_override_without_equals_sign_is_rejected_with_an_example():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.lr")


def test_misspelt_key_is_rejected_and_named():
    with pytest.raises(BAD_CONFIG, match="budgt"):
        compose_config("smoke", "n2c", "gaussian25", ["train.budgt=5"])
    with pytest.raises(BAD_CONFIG, match="sigmaa"):
        compose_config("smoke", "ssdn-known", "gaussian25", ["method.sigmaa='constant'"])


def test_key_set_by_both_profile_and_method_layers_is_rejected():
    profile = {"train": {"budget_images": 8, "ema_decay": 0.9}}
    method = {"method": {"name": "n2v"}, "train": {"ema_decay": 0.999}}
    with pytest.raises(ConfigError, match="train.ema_decay.*both"):
        merge_layers(profile, method, [])
    # an override of the same key is how a user changes it: not an error, and it wins
    merged = merge_layers({"train": {"budget_images": 8}}, method, ["train.ema_decay=0.5"])
    assert merged["train"] == {"budget_images": 8, "ema_decay": 0.5}


def test_merge_does_not_modify_its_inputs():
    profile = {"train": {"budget_images": 8}}
    method = {"method": {"name": "n2c"}}
    merge_layers(profile, method, ["train.budget_images=16"])
    assert profile == {"train": {"budget_images": 8}} and method == {"method": {"name": "n2c"}}


@pytest.mark.parametrize(("override", "words"), [
    ("train.budget_images=-5", ["budget_images", "greater than 0"]),
    ("train.budget_images=0", ["budget_images", "greater than 0"]),
    ("train.patch_size=50", ["patch_size", "multiple of 32"]),
    ("train.ramp_up=1.5", ["ramp_up", "less than or equal to 1"]),
    ("train.ema_decay=1.0", ["ema_decay", "less than 1"]),
    ("eval.center_crop=100", ["center_crop", "multiple of 32"]),
])
def test_out_of_range_values_are_rejected_with_messages(override, words):
    with pytest.raises(BAD_CONFIG) as err:
        compose_config("smoke", "n2c", "gaussian25", [override])
    for word in words:
        assert word in str(err.value)


def test_ramps_longer_than_the_budget_are_rejected():
    with pytest.raises(BAD_CONFIG, match="ramp_up \\+ ramp_down"):
        compose_config("smoke", "n2c", "gaussian25", ["train.ramp_up=0.8", "train.ramp_down=0.3"])


def test_unknown_profile_method_and_noise_are_rejected_with_the_choices():
    with pytest.raises(ConfigError, match="smoke"):
        compose_config("smok", "n2c", "gaussian25")
    with pytest.raises(ConfigError, match="n2c"):
        compose_config("smoke", "n3c", "gaussian25")
    with pytest.raises(BAD_CONFIG, match="gaussian25"):
        compose_config("smoke", "n2c", "gausian25")


def test_noise_alias_is_canonicalised():
    alias = compose_config("smoke", "n2c", "gauss25")
    canonical = compose_config("smoke", "n2c", "gaussian25")
    assert alias.noise == "gaussian25"
    assert compose_config("smoke", "n2c", "gauss5_50").noise == "gaussian5_50"
    assert alias.config_hash() == canonical.config_hash()


def test_config_hash_changes_with_any_field_and_only_then():
    base = compose_config("smoke", "n2c", "gaussian25")
    assert compose_config("smoke", "n2c", "gaussian25").config_hash() == base.config_hash()
    # spelling a default out, or giving overrides in another order, is the same run
    assert compose_config("smoke", "n2c", "gaussian25", ["train.lr=3e-4"]).config_hash() == base.config_hash()
    a = compose_config("smoke", "n2c", "gaussian25", ["train.lr=1e-4", "train.batch_size=2"])
    b = compose_config("smoke", "n2c", "gaussian25", ["train.batch_size=2", "train.lr=1e-4"])
    assert a.config_hash() == b.config_hash()
    changed = [
        compose_config("smoke", "n2c", "gaussian25", seed=1),
        compose_config("smoke", "n2n", "gaussian25"),
        compose_config("smoke", "n2c", "poisson30"),
        compose_config("smoke", "n2c", "gaussian25", ["train.lr=1e-4"]),
        compose_config("smoke", "n2c", "gaussian25", ["train.budget_images=33"]),
        compose_config("smoke", "n2c", "gaussian25", ["eval.repeats={kodak24 = 2}"]),
        compose_config("smoke", "ssdn-known", "gaussian25"),
        compose_config("smoke", "ssdn-known", "gaussian25", ["method.covariance='diagonal'"]),
    ]
    hashes = [c.config_hash() for c in changed]
    assert base.config_hash() not in hashes
    assert len(set(hashes)) == len(hashes)


def test_canonical_json_round_trips_to_an_equal_config():
    cfg = compose_config("smoke", "n2v", "gaussian5_50", ["train.lr=1e-4"])
    again = ExperimentConfig.model_validate_json(cfg.canonical_json())
    assert again == cfg and again.config_hash() == cfg.config_hash()
    assert json.loads(cfg.canonical_json())["train"]["lr"] == 1e-4


def test_configs_are_frozen():
    cfg = compose_config("smoke", "n2c", "gaussian25")
    with pytest.raises(ValidationError):
        cfg.train.budget_images = 5


def test_method_noise_refusal_happens_at_config_time():
    with pytest.raises(BAD_CONFIG, match="for impulse noise use n2c, n2n"):
        compose_config("smoke", "n2v", "impulse50")
    with pytest.raises(BAD_CONFIG, match="NotImplementedError"):
        compose_config("smoke", "ssdn-known", "impulse50", ["data.channels=1"])
    with pytest.raises(BAD_CONFIG, match="per_image"):
        compose_config("smoke", "ssdn-constant", "gaussian5_50")


def test_profiles_say_how_blind_spot_networks_are_scored():
    # the paper's protocol (released code): whole padded images; the CPU profiles tile (§4)
    for profile, expected in (("paper", "off"), ("reproduction", "off"), ("quick", "auto"), ("smoke", "auto")):
        assert compose_config(profile, "ssdn-mu", "gaussian25").eval.blindspot_tiles == expected, profile
    # whole-image scoring is allowed at any size (a warning at scoring time, not an error)
    assert compose_config("smoke", "ssdn-mu", "gaussian25", ["eval.blindspot_tiles=off"]).eval.blindspot_tiles == "off"


def test_whole_image_scoring_of_a_much_larger_image_warns_once(capsys):
    from benchmarks.scoring import make_denoiser
    from n2n_core.evaluation.protocol import EvalInput
    from n2n_core.methods import build_method
    from n2n_core.noise import NoisyBatch, parse_style

    def score(side: int, tiles: str):
        cfg = compose_config("smoke", "ssdn-mu", "gaussian25", [f"eval.blindspot_tiles={tiles}", "train.patch_size=32"])
        method = build_method(cfg.method, parse_style(cfg.noise))
        seen = []
        method.denoise = lambda model, batch: seen.append(tuple(batch.noisy.shape)) or batch.noisy
        noisy = NoisyBatch(torch.zeros(1, 3, side, side), torch.zeros(1))
        make_denoiser(method, None, torch.device("cpu"), cfg)([EvalInput("a", 0, noisy, side, side)] * 2)
        return seen, capsys.readouterr().err

    seen, err = score(128, "off")  # 128 > 2 × 32: whole image, one warning line for both inputs
    assert seen == [(1, 3, 128, 128)] * 2 and err.count("warning:") == 1 and "32² crops" in err
    seen, err = score(64, "off")  # 64 = 2 × 32: no warning
    assert seen == [(1, 3, 64, 64)] * 2 and err == ""
    seen, err = score(128, "auto")  # tiles of the training crop, all 7 × 7 of an image in one call, no warning
    assert seen == [(49, 3, 32, 32)] * 2 and err == ""


def test_eval_defaults():
    assert EvalConfig().blindspot_tiles == "auto"
    assert EvalConfig(repeats={"kodak24": 3}).repeats_for("kodak24") == 3
    assert EvalConfig().repeats_for("bsd300") == 1

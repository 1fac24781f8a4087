"""A method written only from the README ("Adding a method"), in a file outside the repository,
trains, scores and joins a grid and its table through the command line; no repository file changes.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from benchmarks.cli import app
from benchmarks.compose import compose_config
from test_methods_contract import readme_example

TINY = ["--set", "train.budget_images=4", "--set", "train.patch_size=32", "--set", "train.validation_images=0",
        "--set", "eval.max_images=1", "--set", "eval.center_crop=64"]


def invoke(args):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_the_readme_method_trains_scores_and_joins_a_grid_from_its_own_file(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    spec = f"{readme_example(tmp_path / 'elsewhere')}:TinyN2N"
    out = tmp_path / "run"
    trained = json.loads(invoke(["train", "--method", spec, "--noise", "gaussian25", "--profile", "smoke", *TINY,
                                 "--out", out, "--data-dir", data_dir, "--json"]).stdout.strip().splitlines()[-1])
    assert trained["method"] == "tiny-n2n" and trained["images_seen"] == 4
    recorded = json.loads((out / "config.json").read_text())["method_source"]
    assert recorded["spec"] == spec and len(recorded["sha256"]) == 64

    scored = json.loads(invoke(["evaluate", "--checkpoint", trained["checkpoint"], "--data-dir", data_dir,
                                "--max-images", "1", "--center-crop", "64", "--json"]).stdout.strip().splitlines()[-1])
    assert scored["method"] == "tiny-n2n" and 5 < scored["psnr_mean"] < 60

    uri = f"sqlite:///{tmp_path / 'grid.db'}"
    invoke(["grid", "--noise", "gaussian25", "--profile", "smoke", "--methods", f"noisy,{spec}", *TINY,
            "--tracking-uri", uri, "--runs-dir", tmp_path / "runs", "--out", tmp_path / "results",
            "--data-dir", data_dir])
    table = (tmp_path / "results" / "psnr-gaussian25-smoke.md").read_text()
    assert "| tiny-n2n |" in table and "| noisy |" in table
    assert (tmp_path / "runs").glob("tiny-n2n-gaussian25-smoke-*")


def test_editing_the_method_file_makes_a_new_run(tmp_path):
    path = readme_example(tmp_path)
    spec = f"{path}:TinyN2N"
    before = compose_config("smoke", spec, "gaussian25").config_hash()
    path.write_text(path.read_text() + "\n# an edit\n")
    from n2n_core.methods import external

    external.load_class.cache_clear()
    after = compose_config("smoke", spec, "gaussian25").config_hash()
    assert before != after

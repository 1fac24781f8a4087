"""A method written only from the README ("Adding a method"), in a file outside the repository,
trains, scores and joins a grid and its table through the command line; no repository file changes.
So does the rest of the surface: `evaluate --method` of a training-free file, `sweep`, a name an
installed package registers (entry points, faked), and the one-line refusals around them.
"""

from __future__ import annotations

import json
from importlib import metadata

import pytest
from typer.testing import CliRunner

from benchmarks.cli import app
from benchmarks.compose import compose_config
from n2n_core.errors import ConfigError
from n2n_core.methods import external
from test_methods_contract import readme_example

TINY = ["--set", "train.budget_images=4", "--set", "train.patch_size=32", "--set", "train.validation_images=0",
        "--set", "eval.max_images=1", "--set", "eval.center_crop=64"]


def invoke(args, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def refused(args) -> str:
    """The one line a refused command prints (exit code 2)."""
    lines = invoke(args, code=2).output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


MEDIAN = '''"""A 3×3 median filter: a training-free method from a file."""
from typing import Literal

import torch.nn.functional as F

from n2n_core.methods import Method, MethodConfigBase


class Median(Method):
    trainable = False

    class Config(MethodConfigBase):
        name: Literal["median3"] = "median3"

    def build_model(self, rng):
        return None

    def denoise(self, model, batch):
        x = batch.noisy
        windows = F.pad(x, (1, 1, 1, 1), mode="reflect").unfold(2, 3, 1).unfold(3, 3, 1)
        return windows.reshape(*x.shape, 9).median(-1).values
'''


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


def test_a_training_free_method_from_a_file_is_scored_by_evaluate_method(tmp_path, data_dir):
    path = tmp_path / "median.py"
    path.write_text(MEDIAN)
    scored = json.loads(invoke(["evaluate", "--method", f"{path}:Median", "--noise", "gaussian25", "--dataset",
                                "kodak24", "--max-images", "1", "--center-crop", "64", "--data-dir", data_dir,
                                "--json"]).stdout.strip().splitlines()[-1])
    noisy = json.loads(invoke(["evaluate", "--method", "noisy", "--noise", "gaussian25", "--dataset", "kodak24",
                               "--max-images", "1", "--center-crop", "64", "--data-dir", data_dir,
                               "--json"]).stdout.strip().splitlines()[-1])
    assert scored["method"] == "median3" and scored["psnr_mean"] > noisy["psnr_mean"]


def test_a_sweep_of_an_external_method_names_its_runs_by_the_method(tmp_path, data_dir):
    from benchmarks.sweep import parse_axis, run_sweep

    spec = f"{readme_example(tmp_path)}:TinyN2N"
    overrides = [o for o in TINY if o != "--set"]
    outcome = run_sweep(spec, "gaussian25", "smoke", [parse_axis("method.width=4,8")], overrides,
                        tracking_uri=f"sqlite:///{tmp_path / 'sweep.db'}", runs_root=tmp_path / "runs",
                        data_dir=data_dir, out=tmp_path / "results", progress=False)
    assert outcome.failed == {} and outcome.table["method.width"].tolist() == [4, 8]
    assert len(list((tmp_path / "runs").glob("tiny-n2n-gaussian25-smoke-*"))) == 2
    assert [p.name for p in outcome.written][:2] == ["sweep-tiny-n2n-gaussian25-smoke-method.width.md",
                                                     "sweep-tiny-n2n-gaussian25-smoke-method.width.csv"]


def test_an_unknown_method_key_names_the_methods_own_keys(tmp_path):
    spec = f"{readme_example(tmp_path)}:TinyN2N"
    line = refused(["train", "--method", spec, "--noise", "gaussian25", "--profile", "smoke",
                    "--set", "method.widht=8", "--print-config"])
    assert "method.widht: unknown key of method tiny-n2n" in line and "'method.width'" in line
    assert "(its keys: name, width)" in line
    line = refused(["train", "--method", spec, "--noise", "gaussian25", "--profile", "smoke",
                    "--set", "method.width=wide", "--print-config"])
    assert "method.width: Input should be a valid integer" in line


def test_evaluate_checkpoint_says_when_the_method_file_changed_or_is_gone(tmp_path, data_dir):
    path = readme_example(tmp_path)
    trained = json.loads(invoke(["train", "--method", f"{path}:TinyN2N", "--noise", "gaussian25", "--profile",
                                 "smoke", *TINY, "--out", tmp_path / "run", "--data-dir", data_dir, "--no-track",
                                 "--json"]).stdout.strip().splitlines()[-1])
    score = ["evaluate", "--checkpoint", trained["checkpoint"], "--data-dir", data_dir]

    path.write_text(path.read_text() + "\n# an edit\n")
    line = refused(score)
    assert f"method source {path} changed since this run was configured" in line and "train anew" in line

    path.unlink()
    line = refused(score)
    assert f"method file {path}, which no longer exists" in line and "restore it unchanged" in line


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """register(name): an installed package's entry point `name` -> the README method, as a module."""
    readme_example(tmp_path).rename(tmp_path / "tiny_plugin_method.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    real, registered = metadata.entry_points, []

    def entry_points(**params):
        if params.get("group") == external.ENTRY_POINT_GROUP:
            return metadata.EntryPoints(registered)
        return real(**params)

    monkeypatch.setattr(metadata, "entry_points", entry_points)

    def register(name: str) -> None:
        registered.append(metadata.EntryPoint(name, "tiny_plugin_method:TinyN2N", external.ENTRY_POINT_GROUP))

    return register


def test_a_grid_takes_an_entry_point_name_and_list_methods_shows_it(plugin):
    from benchmarks.grid import expand
    from benchmarks.listing import listing

    plugin("tiny-n2n")
    jobs, _ = expand("gaussian25", "smoke", ["noisy", "tiny-n2n"])
    assert [job.variant for job in jobs] == ["noisy", "tiny-n2n"]
    assert jobs[1].config.method_source.spec == "tiny_plugin_method:TinyN2N"
    lines = listing("methods")
    assert any(line.split() == ["tiny-n2n", "tiny_plugin_method:TinyN2N"] for line in lines), lines


def test_an_entry_point_named_unlike_its_config_is_refused_naming_both(plugin):
    from benchmarks.grid import expand

    plugin("tiny")
    with pytest.raises(ConfigError, match="entry point 'tiny' .*Config name is 'tiny-n2n'"):
        expand("gaussian25", "smoke", ["tiny"])
    line = refused(["train", "--method", "tiny", "--noise", "gaussian25", "--profile", "smoke", "--print-config"])
    assert "'tiny'" in line and "'tiny-n2n'" in line

"""Training-seed spread (grid --seeds), the noise-draw axis (grid --noise-draw) and their report:
mean ± standard deviation over seeds, the two-level bootstrap against N2C, fixed beside fresh noise,
runs trained on noisy evaluation images beside their fresh-noise rows.

The report tests build their runs directly in a SQLite MLflow store (tags, params, metrics and the
per-image PSNR file a grid job logs), so the numbers they check are known before the report runs;
expectations are computed here with numpy, independently of benchmarks/spread.py."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from benchmarks.mlflow_tracker import open_store
from benchmarks.report import build_report
from conftest import empty_store
from n2n_core.errors import N2NError
from test_runner import TINY

IMAGES = [f"kodim{i:02d}" for i in range(1, 9)]


# ----------------------------------------------------------------------------- a store of constructed runs


class Store:
    """A SQLite store holding finished grid-job runs made here: per run its per-image PSNRs (as the
    psnr-kodak24.csv artefact) and their mean as the psnr_kodak24 metric."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.uri = empty_store(tmp_path / "mlflow.db")
        self.client, self.experiment_id = open_store(self.uri)
        self.made = 0

    def run(self, variant: str, seed: int, psnr: np.ndarray, draw: str = "fresh",
            train_set: str = "bsd300-train", tags: dict | None = None) -> dict:
        params = {"seed": str(seed), "method.name": variant, "train.train_set": train_set,
                  "train.budget_images": "64", "train.patch_size": "64", "train.batch_size": "4",
                  "eval.sets": "['kodak24']", **({"train.noise_draw": draw} if draw != "fresh" else {})}
        run_tags = {"variant": variant, "noise": "gaussian25", "profile": "quick", "seed": str(seed),
                    "noise_draw": draw, "train_set": train_set, "device": "cpu",
                    "config_hash": f"hash{self.made}", **(tags or {})}
        self.made += 1
        run_id = self.client.create_run(self.experiment_id, tags=run_tags).info.run_id
        for key, value in params.items():
            self.client.log_param(run_id, key, value)
        folder = self.tmp / "files" / run_id
        folder.mkdir(parents=True)
        # two repeats per image around the image's PSNR: the report averages them per image
        lines = ["image_id,repeat,psnr,level"] + [f"{image},{r},{value + (0.25 if r else -0.25):.6f},25"
                                                 for image, value in zip(IMAGES, psnr) for r in (0, 1)]
        (folder / "psnr-kodak24.csv").write_text("\n".join(lines) + "\n")
        self.client.log_artifact(run_id, str(folder / "psnr-kodak24.csv"))
        self.client.log_metric(run_id, "psnr_kodak24", float(np.mean(psnr)))
        self.client.log_metric(run_id, "images_seen", 0 if variant in ("noisy", "cbm3d", "zs-n2n") else 64)
        self.client.log_metric(run_id, "job_seconds", 1.0)
        self.client.set_terminated(run_id, "FINISHED")
        return {"seed": seed, "psnr": np.asarray(psnr, dtype=float), "mean": float(np.mean(psnr))}

    def report(self):
        out = self.tmp / "results"
        build_report(self.uri, out, readme=None)
        return out


def hand_two_level(diffs: np.ndarray, samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The two-level bootstrap as docs/methods.md describes it, one resample at a time: draw k seeds
    with replacement, then n images with replacement within each drawn seed, average everything.
    Same generator and draw order as documented (all seed draws, then all image draws)."""
    k, n = diffs.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, k, size=(samples, k))
    image_draws = rng.integers(0, n, size=(samples, k, n))
    means = []
    for b in range(samples):
        per_seed = [np.mean([diffs[seed_draws[b, j], image_draws[b, j, i]] for i in range(n)]) for j in range(k)]
        means.append(np.mean(per_seed))
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def hand_one_level(diffs: np.ndarray, samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The image bootstrap of one seed's differences (all draws at once, then a mean per resample)."""
    rng = np.random.default_rng(seed)
    draws = rng.choice(diffs, size=(samples, len(diffs)), replace=True)
    means = [row.mean() for row in draws]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


# ----------------------------------------------------------------------------- the bootstrap itself


def test_two_level_bootstrap_matches_a_hand_written_one_and_a_closed_form():
    from benchmarks.spread import bootstrap_ci, two_level_ci

    diffs = np.random.default_rng(3).normal(0.4, 1.0, size=(3, 10))
    assert two_level_ci(diffs) == pytest.approx(hand_two_level(diffs), abs=1e-12)
    assert two_level_ci(diffs, samples=500, seed=9) == pytest.approx(hand_two_level(diffs, 500, 9), abs=1e-12)
    # one seed: the image bootstrap the report always used, draw for draw
    assert two_level_ci(diffs[:1]) == pytest.approx(hand_one_level(diffs[0]), abs=1e-12)
    assert two_level_ci(diffs[:1]) == bootstrap_ci(diffs[0])
    # closed form: seeds 0 and 1 dB with no spread over images; a resample's mean is 0, 0.5 or 1
    # with probabilities 1/4, 1/2, 1/4, so the 2.5th and 97.5th percentiles are 0 and 1
    low, high = two_level_ci(np.array([[0.0] * 6, [1.0] * 6]))
    assert (low, high) == (0.0, 1.0)
    # the seed level widens the interval: the same images, the seeds' offsets ±1 dB apart
    spread = diffs[0] + np.array([[-1.0], [0.0], [1.0]])
    assert np.subtract(*two_level_ci(spread)[::-1]) > np.subtract(*bootstrap_ci(spread.ravel())[::-1])


def test_paired_differences_pair_the_same_seed_else_the_references_mean():
    from benchmarks.spread import paired_differences

    ref = {0: pd.Series([10.0, 20.0, 30.0], index=["a", "b", "c"]),
           1: pd.Series([12.0, 22.0, 32.0], index=["a", "b", "c"])}
    runs = {2: pd.Series([11.0, 21.0, 35.0], index=["a", "b", "c"]),
            0: pd.Series([10.5, 20.5, np.nan], index=["a", "b", "c"])}  # image c not scored: left out
    diffs = paired_differences(runs, ref)
    assert diffs.tolist() == [[0.5, 0.5], [0.0, 0.0]]  # seed 0 against seed 0; seed 2 against the mean


# ----------------------------------------------------------------------------- report tables


def test_table_shows_mean_and_std_over_seeds_as_numpy_computes_them(tmp_path):
    store = Store(tmp_path)
    rng = np.random.default_rng(0)
    n2c = [store.run("n2c", s, 30 + rng.normal(0, 0.3, len(IMAGES))) for s in (0, 1, 2)]
    n2n = [store.run("n2n", s, 29.5 + rng.normal(0, 0.3, len(IMAGES))) for s in (0, 1)]
    store.run("noisy", 0, 20 + rng.normal(0, 0.1, len(IMAGES)))
    out = store.report()
    table = pd.read_csv(out / "psnr-gaussian25-quick.csv").set_index("variant")
    for name, runs in (("n2c", n2c), ("n2n", n2n)):
        means = [r["mean"] for r in runs]
        assert table.loc[name, "kodak24"] == pytest.approx(np.mean(means), abs=1e-4)
        assert table.loc[name, "kodak24_std"] == pytest.approx(np.std(means, ddof=1), abs=1e-4)
        assert table.loc[name, "seeds"] == len(runs)
    assert table.loc["noisy", "seeds"] == 1 and np.isnan(table.loc["noisy", "kodak24_std"])
    markdown = (out / "psnr-gaussian25-quick.md").read_text()
    mean, std = np.mean([r["mean"] for r in n2c]), np.std([r["mean"] for r in n2c], ddof=1)
    assert f"| n2c | 3 | {mean:.2f} ± {std:.2f}" in markdown
    assert "| method | seeds | kodak24 ours" in markdown
    assert "training seeds 0, 1, 2 (seed 0: noisy; seeds 0, 1: n2n)" in markdown
    assert "mean ± sample standard deviation (n − 1)" in markdown
    assert "noise drawn afresh for every training crop" in markdown
    assert "curves and crops show each row's lowest seed" in markdown
    latex = (out / "psnr-gaussian25-quick.tex").read_text()
    assert f"{mean:.2f} $\\pm$ {std:.2f}" in latex and "±" not in latex and "−" not in latex
    assert "a cell of a variant trained with several seeds is their mean" in (out / "table1-quick.md").read_text()


def test_a_store_of_single_seed_fresh_runs_reports_as_before(tmp_path):
    # runs logged before the seed, noise_draw and train_set tags existed: no seeds column, no
    # settings in the caption, and the Δ vs N2C interval is the one-level image bootstrap
    store = Store(tmp_path)
    rng = np.random.default_rng(1)
    plain = {"seed": None, "noise_draw": None, "train_set": None}
    n2c = store.run("n2c", 0, 30 + rng.normal(0, 0.3, len(IMAGES)))
    n2n = store.run("n2n", 0, 29 + rng.normal(0, 0.3, len(IMAGES)))
    for run in store.client.search_runs([store.experiment_id]):
        for tag in plain:
            store.client.delete_tag(run.info.run_id, tag)
    out = store.report()
    markdown = (out / "psnr-gaussian25-quick.md").read_text()
    assert markdown.startswith("| method | kodak24 ours (published, Δ) |\n|---|---|\n")
    assert "seed" not in markdown and "±" not in markdown and "noise draw" not in markdown
    assert list(pd.read_csv(out / "psnr-gaussian25-quick.csv").columns[:2]) == ["variant", "kodak24"]
    assert not list(out.glob("psnr-gaussian25-quick-*"))  # no fixed-noise or noisy-set table
    vs = pd.read_csv(out / "vs-n2c-kodak24-gaussian25-quick.csv").set_index("method")
    diffs = n2n["psnr"] - n2c["psnr"]
    assert vs.loc["n2n", "mean"] == pytest.approx(diffs.mean(), abs=1e-4)
    assert (vs.loc["n2n", "low"], vs.loc["n2n", "high"]) == pytest.approx(hand_one_level(diffs), abs=1e-4)
    assert (out / "figures" / "vs-n2c-kodak24-gaussian25-quick.png").exists()


def test_vs_n2c_intervals_come_from_the_two_level_bootstrap_and_say_what_is_resolved(tmp_path):
    store = Store(tmp_path)
    rng = np.random.default_rng(2)
    base = 30 + rng.normal(0, 1.0, len(IMAGES))  # the images' own difficulty, shared by every method
    n2c = {s: store.run("n2c", s, base + rng.normal(0, 0.05, len(IMAGES)))["psnr"] for s in (0, 1)}
    n2n = {s: store.run("n2n", s, base + 1.0 + rng.normal(0, 0.05, len(IMAGES)))["psnr"] for s in (0, 1, 2)}
    n2v = {s: store.run("n2v", s, base + rng.normal(0, 0.8, len(IMAGES)))["psnr"] for s in (0, 1, 2)}
    out = store.report()
    vs = pd.read_csv(out / "vs-n2c-kodak24-gaussian25-quick.csv").set_index("method")
    n2c_mean = (n2c[0] + n2c[1]) / 2  # seed 2 has no N2C run: paired with N2C's mean over its seeds
    for name, runs in (("n2n", n2n), ("n2v", n2v)):
        diffs = np.array([runs[0] - n2c[0], runs[1] - n2c[1], runs[2] - n2c_mean])
        assert vs.loc[name, "seeds"] == 3
        assert vs.loc[name, "mean"] == pytest.approx(diffs.mean(), abs=1e-4)
        assert (vs.loc[name, "low"], vs.loc[name, "high"]) == pytest.approx(hand_two_level(diffs), abs=1e-4)
    assert vs.loc["n2n", "resolved"] and not vs.loc["n2v", "resolved"]
    text = (out / "vs-n2c-kodak24-gaussian25-quick.md").read_text()
    assert "Resolved: n2n; not resolved: n2v." in text and "two-level bootstrap" in text
    assert "| n2n | 3 | +1.00 |" in text
    page = (out / "index.html").read_text()
    assert "Δ vs N2C on kodak24" in page and "Resolved: n2n" in page


def test_a_method_that_trains_nothing_is_set_against_every_seed_of_n2c(tmp_path):
    # noisy has one run and no training seed: its difference to N2C must carry N2C's seed spread
    # (rows: noisy − N2C seed s for every s), not N2C's seed 0 alone as a trained seed-0 run would
    store = Store(tmp_path)
    rng = np.random.default_rng(6)
    n2c = {s: store.run("n2c", s, 30 + s + rng.normal(0, 0.3, len(IMAGES)))["psnr"] for s in (0, 1, 2)}
    noisy = store.run("noisy", 0, 20 + rng.normal(0, 0.1, len(IMAGES)))["psnr"]
    out = store.report()
    vs = pd.read_csv(out / "vs-n2c-kodak24-gaussian25-quick.csv").set_index("method")
    diffs = np.array([noisy - n2c[s] for s in (0, 1, 2)])
    assert vs.loc["noisy", "seed_rows"] == 3
    assert vs.loc["noisy", "mean"] == pytest.approx(np.mean(noisy) - np.mean([n2c[s].mean() for s in n2c]), abs=1e-4)
    assert (vs.loc["noisy", "low"], vs.loc["noisy", "high"]) == pytest.approx(hand_two_level(diffs), abs=1e-4)
    # the seeds 0, 1 and 2 dB apart widen it past the one-level interval against seed 0 alone
    assert vs.loc["noisy", "high"] - vs.loc["noisy", "low"] > 1.0
    assert np.subtract(*hand_one_level(diffs[0])[::-1]) < 1.0


def test_one_seed_among_rows_of_several_is_not_called_resolved(tmp_path):
    # a one-seed row's interval resamples images alone: among rows of several seeds it cannot judge
    store = Store(tmp_path)
    rng = np.random.default_rng(7)
    base = 30 + rng.normal(0, 1.0, len(IMAGES))
    for s in (0, 1, 2):
        store.run("n2c", s, base + rng.normal(0, 0.05, len(IMAGES)))
        store.run("n2n", s, base + 1.0 + rng.normal(0, 0.05, len(IMAGES)))
    store.run("n2v", 0, base + 1.0 + rng.normal(0, 0.05, len(IMAGES)))  # far from 0 over images
    store.run("n2v", 0, base + 1.2 + rng.normal(0, 0.05, len(IMAGES)), draw="fixed")
    out = store.report()
    text = (out / "vs-n2c-kodak24-gaussian25-quick.md").read_text()
    assert "| n2n | 3 | +1.00 |" in text and "Resolved: n2n; not resolved: none; not judged (one seed): n2v." in text
    assert re.search(r"\| n2v \| 1 \| \+1\.0\d \| \[[^]]+\] \| not judged \(one seed\) \|", text)
    side = (out / "psnr-gaussian25-quick-fixed-noise.md").read_text()
    assert "not judged (one seed)" in side.split("\n")[2] and " resolved" not in side.split("\n")[2]


def test_a_row_scored_on_one_image_is_not_judged(tmp_path):
    # zs-n2n scored on the first image alone: a one-image "interval" resamples nothing of the images
    store = Store(tmp_path)
    rng = np.random.default_rng(8)
    n2c = store.run("n2c", 0, 30 + rng.normal(0, 0.3, len(IMAGES)))["psnr"]
    store.run("n2n", 0, 29 + rng.normal(0, 0.3, len(IMAGES)))
    one = store.run("zs-n2n", 0, np.array([33.0]))  # its per-image file holds kodim01 alone
    out = store.report()
    vs = pd.read_csv(out / "vs-n2c-kodak24-gaussian25-quick.csv").set_index("method")
    assert vs.loc["zs-n2n", "images"] == 1 and vs.loc["n2n", "images"] == len(IMAGES)
    assert vs.loc["zs-n2n", "verdict"] == "not judged (one image)" and vs.loc["n2n", "verdict"] in ("yes", "no")
    assert vs.loc["zs-n2n", "mean"] == pytest.approx(one["psnr"][0] - n2c[0], abs=1e-4)
    text = (out / "vs-n2c-kodak24-gaussian25-quick.md").read_text()
    assert "| not judged (one image) |" in text and "not judged (one image): zs-n2n." in text
    assert "Resolved: n2n;" in text


def test_fixed_noise_beside_fresh_noise_and_noisy_set_rows_beside_their_fresh_rows(tmp_path):
    store = Store(tmp_path)
    rng = np.random.default_rng(4)
    store.run("n2c", 0, 30 + rng.normal(0, 0.3, len(IMAGES)))
    fresh = store.run("n2v", 0, 28 + rng.normal(0, 0.3, len(IMAGES)))
    fixed = store.run("n2v", 0, 27.4 + rng.normal(0, 0.3, len(IMAGES)), draw="fixed")
    # trained on the noisy test images: seeds 0 and 5 against fresh-noise seeds 0 and 1
    ssdn = {s: store.run("ssdn-known", s, 29 + rng.normal(0, 0.3, len(IMAGES))) for s in (0, 1)}
    on_test = {s: store.run("ssdn-known", s, 29.3 + rng.normal(0, 0.3, len(IMAGES)), train_set="noisy:kodak24")
               for s in (0, 5)}
    out = store.report()
    main = pd.read_csv(out / "psnr-gaussian25-quick.csv")
    assert sorted(main.variant) == ["n2c", "n2v", "ssdn-known"]  # fixed and noisy-set runs are elsewhere
    assert main.set_index("variant").loc["n2v", "kodak24"] == pytest.approx(fresh["mean"], abs=1e-4)

    side = pd.read_csv(out / "psnr-gaussian25-quick-fixed-noise.csv").set_index("variant")
    assert list(side.index) == ["n2v"]
    assert side.loc["n2v", "kodak24_reference"] == pytest.approx(fresh["mean"], abs=1e-4)
    assert side.loc["n2v", "kodak24"] == pytest.approx(fixed["mean"], abs=1e-4)
    assert side.loc["n2v", "kodak24_delta"] == pytest.approx(fixed["mean"] - fresh["mean"], abs=1e-4)
    low, high = hand_one_level(fixed["psnr"] - fresh["psnr"])
    assert (side.loc["n2v", "kodak24_low"], side.loc["n2v", "kodak24_high"]) == pytest.approx((low, high), abs=1e-4)
    text = (out / "psnr-gaussian25-quick-fixed-noise.md").read_text()
    delta = fixed["mean"] - fresh["mean"]
    assert f"| n2v | 1 / 1 | {fresh['mean']:.2f} | {fixed['mean']:.2f} | {delta:+.2f} [{low:+.2f}, {high:+.2f}]" in text
    assert "| kodak24 fresh noise | kodak24 fixed noise | kodak24 Δ [95% interval] |" in text
    assert "noise drawn once per training image (train.noise_draw fixed)" in text and "training seed 0" in text
    assert "crops from bsd300-train" in text
    latex = (out / "psnr-gaussian25-quick-fixed-noise.tex").read_text()
    assert r"kodak24 $\Delta$ [95\% interval]" in latex

    noisy = pd.read_csv(out / "psnr-gaussian25-quick-trained-on-noisy-kodak24.csv").set_index("variant")
    assert list(noisy.index) == ["ssdn-known"] and noisy.loc["ssdn-known", "seeds"] == 2
    # seed 0 against fresh seed 0; seed 5 (no fresh run) against the fresh mean over seeds 0 and 1
    fresh_mean = (ssdn[0]["psnr"] + ssdn[1]["psnr"]) / 2
    diffs = np.array([on_test[0]["psnr"] - ssdn[0]["psnr"], on_test[5]["psnr"] - fresh_mean])
    assert noisy.loc["ssdn-known", "kodak24_delta"] == pytest.approx(diffs.mean(), abs=1e-4)
    assert noisy.loc["ssdn-known", "kodak24_reference"] == pytest.approx(np.mean([r["mean"] for r in ssdn.values()]),
                                                                         abs=1e-4)
    low, high = hand_two_level(diffs)
    assert (noisy.loc["ssdn-known", "kodak24_low"], noisy.loc["ssdn-known", "kodak24_high"]) == \
        pytest.approx((low, high), abs=1e-4)
    text = (out / "psnr-gaussian25-quick-trained-on-noisy-kodak24.md").read_text()
    assert "kodak24 trained on noisy:kodak24" in text and "crops from noisy:kodak24" in text
    assert "trained on the noisy images of kodak24" in text
    # the main table's caption names the settings, since this store holds more than one
    assert "noise drawn afresh for every training crop" in (out / "psnr-gaussian25-quick.md").read_text()


def test_a_hostile_noise_draw_or_noisy_set_name_never_becomes_a_file_name(tmp_path, capsys):
    store = Store(tmp_path)
    rng = np.random.default_rng(5)
    store.run("n2c", 0, 30 + rng.normal(0, 0.3, len(IMAGES)))
    store.run("n2v", 0, 28 + rng.normal(0, 0.3, len(IMAGES)), draw="../../escape")
    store.run("n2v", 1, 28 + rng.normal(0, 0.3, len(IMAGES)), train_set="noisy:../../escape")
    store.run("n2v", 2, 28 + rng.normal(0, 0.3, len(IMAGES)), tags={"seed": "two"})
    out = store.report()
    warnings = capsys.readouterr().err
    assert "noise draw '../../escape'" in warnings and "training set 'noisy:../../escape'" in warnings
    assert "seed 'two'" in warnings
    assert {p.name for p in out.glob("psnr-*")} == {"psnr-gaussian25-quick.md", "psnr-gaussian25-quick.tex",
                                                    "psnr-gaussian25-quick.csv"}
    assert not (tmp_path / "escape").exists()


# ----------------------------------------------------------------------------- the grid's axes


def test_seed_and_noise_draw_axes_make_one_job_per_value_with_its_own_identity():
    from benchmarks.grid import parse_noise_draws, parse_seeds, select_jobs

    base, _ = select_jobs("gaussian25", "smoke", ["noisy", "n2c"], TINY)
    jobs, left_out = select_jobs("gaussian25", "smoke", ["noisy", "n2c"], TINY, seeds=[0, 1, 2],
                                 noise_draws=["fresh", "fixed"])
    assert not left_out
    assert [job.label for job in jobs] == [
        "noisy", "n2c seed=0 noise_draw=fresh", "n2c seed=0 noise_draw=fixed", "n2c seed=1 noise_draw=fresh",
        "n2c seed=1 noise_draw=fixed", "n2c seed=2 noise_draw=fresh", "n2c seed=2 noise_draw=fixed"]
    assert len({job.config.config_hash() for job in jobs}) == len(jobs)
    assert [(j.config.seed, j.config.train.noise_draw) for j in jobs[1:3]] == [(0, "fresh"), (0, "fixed")]
    # seed 0 with fresh noise is the default job itself (its finished run is reused), noisy unchanged
    assert {j.config.config_hash() for j in base} <= {j.config.config_hash() for j in jobs}
    assert [j.label for j in base] == ["noisy", "n2c"] and all(j.axes == () for j in base)

    assert parse_seeds(None) is None and parse_seeds(" 2, 0 ") == [2, 0]
    for bad, why in (("0,x", "whole numbers"), ("-1", "whole numbers"), ("1,1", "named twice"), ("", "whole numbers")):
        with pytest.raises(N2NError, match=why):
            parse_seeds(bad)
    assert parse_noise_draws("fixed") == ["fixed"]
    with pytest.raises(N2NError, match="fresh, fixed"):
        parse_noise_draws("fresh,stale")


def test_a_job_sent_to_a_worker_keeps_its_axes_and_label():
    # a parallel pool's worker or a Ray task rebuilds the job from JSON: its progress and outcome
    # must still name the seed, or two seeds of one variant would share one entry of the display
    from benchmarks.grid import select_jobs
    from benchmarks.jobs import attempt_from_json

    jobs, _ = select_jobs("gaussian25", "smoke", ["n2c"], TINY, seeds=[3])
    (job,) = jobs
    rebuilt = attempt_from_json(lambda j: (j.label, j.config.config_hash()), job.variant,
                                job.config.model_dump_json(), job.eval_id, job.axes)
    assert rebuilt == ("n2c seed=3", job.config.config_hash())


def test_dry_run_names_each_seed_and_bad_seeds_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from benchmarks.cli import app

    args = ["grid", "--noise", "gaussian25", "--profile", "smoke", "--methods", "noisy,n2c", "--dry-run",
            "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--out", str(tmp_path / "out"),
            "--runs-dir", str(tmp_path / "runs")]
    result = CliRunner().invoke(app, [*args, "--seeds", "0,1"])
    assert result.exit_code == 0, result.output
    labels = [line.split("  ")[0].strip() for line in result.stdout.splitlines()]
    assert labels == ["noisy", "n2c seed=0", "n2c seed=1"]
    bad = CliRunner().invoke(app, [*args, "--seeds", "0,one"])
    assert bad.exit_code == 2 and bad.stderr.strip().splitlines() == [
        "error: --seeds takes comma-separated whole numbers of at least 0, got '0,one'; e.g. --seeds 0,1,2"]


def test_grid_with_two_seeds_trains_each_variant_once_per_seed_and_reports_the_spread(tmp_path, data_dir):
    from benchmarks.grid import run_grid, select_jobs

    uri = empty_store(tmp_path / "mlflow.db")
    outcome = run_grid("gaussian25", "smoke", ["noisy", "n2c"], TINY, uri, runs_root=tmp_path / "runs",
                       data_dir=data_dir, progress=False, seeds=[0, 1])
    assert outcome.ran == ["noisy", "n2c seed=0", "n2c seed=1"] and not outcome.failed
    client, experiment_id = open_store(uri)
    runs = [r for r in client.search_runs([experiment_id]) if "variant" in r.data.tags]
    n2c = sorted((r for r in runs if r.data.tags["variant"] == "n2c"), key=lambda r: r.data.tags["seed"])
    assert [r.data.tags["seed"] for r in n2c] == ["0", "1"]
    assert [r.data.params["seed"] for r in n2c] == ["0", "1"]
    assert {r.data.tags["noise_draw"] for r in runs} == {"fresh"}
    assert {r.data.tags["train_set"] for r in runs} == {r.data.params["train.train_set"] for r in runs}
    assert n2c[0].data.tags["config_hash"] != n2c[1].data.tags["config_hash"]
    assert [r.info.run_name for r in n2c] == ["n2c seed=0 · gaussian25 · smoke", "n2c seed=1 · gaussian25 · smoke"]
    default = {j.variant: j.config.config_hash() for j in select_jobs("gaussian25", "smoke", ["n2c"], TINY)[0]}
    assert n2c[0].data.tags["config_hash"] == default["n2c"]  # seed 0 is the grid's default run
    psnrs = [r.data.metrics["psnr_kodak24"] for r in n2c]
    assert psnrs[0] != psnrs[1]  # the seed reached training

    again = run_grid("gaussian25", "smoke", ["noisy", "n2c"], TINY, uri, runs_root=tmp_path / "runs",
                     data_dir=data_dir, progress=False, seeds=[0, 1])
    assert again.ran == [] and again.skipped == ["noisy", "n2c seed=0", "n2c seed=1"]
    out = tmp_path / "results"
    build_report(uri, out, readme=None)
    table = pd.read_csv(out / "psnr-gaussian25-smoke.csv").set_index("variant")
    assert table.loc["n2c", "seeds"] == 2 and table.loc["noisy", "seeds"] == 1
    assert table.loc["n2c", "kodak24"] == pytest.approx(np.mean(psnrs), abs=1e-4)
    assert table.loc["n2c", "kodak24_std"] == pytest.approx(np.std(psnrs, ddof=1), abs=1e-4)
    markdown = (out / "psnr-gaussian25-smoke.md").read_text()
    assert re.search(r"\| n2c \| 2 \| \d+\.\d\d ± \d+\.\d\d", markdown)
    assert "training seeds 0, 1 (seed 0: noisy)" in markdown


def test_two_seeds_of_one_variant_train_side_by_side_as_two_jobs(tmp_path, data_dir, grid_postfixes):
    # a parallel grid: the two jobs of n2c run at once in two worker processes, and the display and
    # the outcome keep them apart (both were keyed by variant before seeds were an axis)
    from benchmarks.grid import make_executor, run_grid

    postfixes = grid_postfixes
    uri = empty_store(tmp_path / "mlflow.db")
    outcome = run_grid("gaussian25", "smoke", ["n2c"], TINY, uri, runs_root=tmp_path / "runs", data_dir=data_dir,
                       progress=False, executor=make_executor("local", jobs=2, cores=2), seeds=[0, 1])
    assert sorted(outcome.ran) == ["n2c seed=0", "n2c seed=1"] and not outcome.failed
    # "1/2 jobs; training n2c seed=0 4, n2c seed=1 8": each job's images under its own label
    assert any(re.search(r"training .*n2c seed=0 \d", text) for text in postfixes), postfixes
    assert any(re.search(r"training .*n2c seed=1 \d", text) for text in postfixes), postfixes
    assert postfixes[-1] == "2/2 jobs"

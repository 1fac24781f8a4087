"""The paper's Table 1 layout (benchmarks/table1.py): rows = noise styles, cells 'ours (published)',
the estimated-level column taking the variant the released list pairs with each style, and rows an
earlier report wrote into the folder kept for styles this store has no run of."""

from __future__ import annotations

import pandas as pd

from benchmarks import table1
from benchmarks.report_runs import JobRun


def run(variant: str, noise: str, psnr: float) -> JobRun:
    return JobRun("id", variant, noise, "quick", {}, {"psnr_kodak24": psnr}, {}, 0)


PUBLISHED = pd.DataFrame([
    {"variant": "n2c", "noise": "gaussian25", "dataset": "kodak24", "psnr": 32.46, "convention": "uint8"},
    {"variant": "ssdn-per-image", "noise": "gaussian5_50", "dataset": "kodak24", "psnr": 31.5, "convention": "float"},
])


def test_cells_pair_ours_with_the_published_number_and_pick_the_variant_per_style():
    runs = [run("n2c", "gaussian25", 26.714), run("ssdn-constant", "gaussian25", 20.6),
            run("ssdn-per-image", "gaussian5_50", 25.49), run("ssdn-constant", "gaussian5_50", 1.0)]
    table, names = table1.build(runs, PUBLISHED, ["kodak24"])
    assert names == ["N2C kodak24", "SSDN σ estimated kodak24"]
    rows = table.set_index("noise")
    assert rows.loc["gaussian25", "N2C kodak24"] == "26.71 (32.46)"
    assert rows.loc["gaussian25", "SSDN σ estimated kodak24"] == "20.60"  # fixed level: the constant variant
    assert rows.loc["gaussian5_50", "SSDN σ estimated kodak24"] == "25.49 (31.50 float)"  # variable: per image
    assert rows.loc["gaussian5_50", "N2C kodak24"] == ""


def test_rows_of_an_earlier_table_are_kept_for_styles_this_store_lacks():
    table, names = table1.build([run("n2c", "gaussian25", 26.71)], PUBLISHED, ["kodak24"])
    earlier = pd.DataFrame([{"noise": "impulse50", "N2C kodak24": "20.78", "μ-only kodak24": "20.49"},
                            {"noise": "gaussian25", "N2C kodak24": "1.00", "μ-only kodak24": "1.00"},
                            {"noise": "poisson30", "N2C kodak24": "26.10 (31.66)", "μ-only kodak24": "24.27"}])
    merged, names, carried = table1.keep_earlier_rows(table, names, earlier)
    assert carried == ["impulse50", "poisson30"] and names == ["N2C kodak24", "μ-only kodak24"]
    assert merged["noise"].tolist() == ["gaussian25", "poisson30", "impulse50"]  # NOISE_ORDER
    assert merged.set_index("noise").loc["gaussian25"].tolist() == ["26.71 (32.46)", ""]  # this store wins
    assert merged.set_index("noise").loc["poisson30", "N2C kodak24"] == "26.10 (31.66)"
    same, _, none = table1.keep_earlier_rows(table, ["N2C kodak24"], earlier[earlier.noise == "gaussian25"])
    assert none == [] and same.equals(table)

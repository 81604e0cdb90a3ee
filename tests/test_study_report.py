"""The study report: points, trend statistics, best checkpoints and the quality-matched control, on hand-made
study folders whose every value is known (tests/study_folders.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from compfair_tasks import stats
from compfair_tasks.stereoset import DOMAINS
from leaderboard.studies import control as control_module
from leaderboard.studies.points import Study
from leaderboard.studies.report import build_report
from study_folders import STEREOSET, cell, write_cell, write_study

STEPS = (0, 1000, 2000, 4000, 8000)


def _outcomes(seed: int, per_domain: int = 12) -> list[tuple[str, int, int]]:
    rng = np.random.default_rng(seed)
    p_pro, p_related = rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.9)
    return [(domain, int(rng.random() < p_pro), int(rng.binomial(2, p_related)))
            for domain in DOMAINS for _ in range(per_domain)]


@pytest.fixture(scope="module")
def trend_study(tmp_path_factory):
    """Two series x 5 steps x {none, int8}; a failed cell left out."""
    folder = tmp_path_factory.mktemp("study")
    cells = []
    for s, series in enumerate(("tiny", "small")):
        for i, step in enumerate(STEPS):
            for compression in ("none", "dynamic-int8"):
                c = cell(series, step, compression, label="int8" if compression != "none" else "none")
                c["series_order"] = s
                cells.append(c)
                write_cell(folder, c, _outcomes(100 * s + 10 * i + (compression != "none")))
    failed = cell("small", 16000)
    cells.append(failed)
    write_cell(folder, failed, status="failed")
    write_study(folder, cells)
    index = build_report(folder, n_resamples=200)
    return folder, index


def test_points_csv_holds_every_finished_point_and_the_report_names_the_failed_cell(trend_study):
    folder, index = trend_study
    points = pd.read_csv(folder / "report" / "points.csv")
    assert points["cell"].nunique() == 20
    assert {"cell", "series", "axis", "compression", "metric", "value", "ci_low", "ci_high",
            "quality_lms"} <= set(points.columns)
    study = Study(folder)
    record = study.runs["tiny@step1000+dynamic-int8"].results[STEREOSET]
    row = points[(points["cell"] == "tiny@step1000+dynamic-int8") & (points["metric"] == "ss_race")]
    assert row["value"].item() == pytest.approx(record["ss_race,none"])
    lms = points[(points["cell"] == "tiny@step1000+dynamic-int8") & (points["metric"] == "lms")]["value"].item()
    assert (points.loc[points["cell"] == "tiny@step1000+dynamic-int8", "quality_lms"] == lms).all()
    html = index.read_text()
    assert "small@step16000+none: failed" in html and "Kendall" in html


def test_kendall_tau_c_equals_scipy_on_the_reports_points(trend_study):
    folder, _ = trend_study
    points = pd.read_csv(folder / "report" / "points.csv")
    trends_csv = pd.read_csv(folder / "report" / "trends.csv")
    wide = points.pivot_table(index=["cell", "compression"], columns="metric", values="value").reset_index()
    for domain in ("gender", "religion"):
        for models, chosen in (("uncompressed", wide["compression"] == "none"),
                               ("int8", wide["compression"] == "int8"), ("all", wide["compression"].notna())):
            expected = kendalltau(wide.loc[chosen, f"lms_{domain}"], wide.loc[chosen, f"ss_{domain}"], variant="c")
            got = trends_csv[(trends_csv["domain"] == domain) & (trends_csv["models"] == models)].iloc[0]
            assert got["tau_c"] == pytest.approx(expected.statistic) and got["n"] == chosen.sum()
            assert got["p_two_sided"] == pytest.approx(expected.pvalue)
            greater = kendalltau(wide.loc[chosen, f"lms_{domain}"], wide.loc[chosen, f"ss_{domain}"], variant="c",
                                 alternative="greater").pvalue
            assert got["p_one_sided"] == pytest.approx(greater)  # halving by the sign = scipy's one-sided test


def test_the_best_checkpoint_table_is_the_maximum_over_the_csv(trend_study):
    folder, _ = trend_study
    points = pd.read_csv(folder / "report" / "points.csv")
    best = pd.read_csv(folder / "report" / "best.csv")
    lms = points[points["metric"] == "lms"]
    for (series, compression), group in lms.groupby(["series", "compression"]):
        top = group.loc[group["value"].idxmax()]
        row = best[(best["series"] == series) & (best["compression"] == compression)].iloc[0]
        assert row["axis"] == top["axis"] and row["lms"] == pytest.approx(top["value"])
        ss_gender = points[(points["cell"] == top["cell"]) & (points["metric"] == "ss_gender")]["value"].item()
        assert row["ss_gender"] == pytest.approx(ss_gender)
    assert len(best) == 4


def _one_domain(pro: int, related: int, n: int = 20) -> list[tuple[str, int, int]]:
    """n gender docs, `pro` of them stereotype-first, `related` meaningful-over-unrelated wins (of 2n)."""
    return [("gender", int(i < pro), 2 if i < related - n else (1 if i < related else 0)) for i in range(n)]


def test_interpolation_and_outside_range_by_hand():
    assert stats.interpolate_along([60, 80, 70], [50, 55, 60], 75) == pytest.approx(57.5)
    assert stats.interpolate_along([60, 70, 70, 80], [50, 58, 62, 55], 65) == pytest.approx(55)  # ties averaged
    assert math.isnan(stats.interpolate_along([60, 70, 80], [50, 60, 55], 80.01))
    assert math.isnan(stats.interpolate_along([60, 70, 80], [50, 60, 55], 59.9))


def test_the_control_predicts_by_hand_interpolation_and_reports_a_quality_outside_the_range(tmp_path):
    # reference: LM score 60, 70, 80 (24, 28, 32 of 40 wins) with SS 50, 60, 55 (10, 12, 11 of 20)
    reference = [(1000, 10, 24), (2000, 12, 28), (4000, 11, 32)]
    cells = []
    for step, pro, related in reference:
        cells.append(cell("m", step))
        write_cell(tmp_path, cells[-1], _one_domain(pro, related))
    inside, outside = cell("m", 2000, "dynamic-int8", label="int8"), cell("m", 4000, "dynamic-int8", label="int8")
    write_cell(tmp_path, inside, _one_domain(13, 30))     # LM score 75, SS 65
    write_cell(tmp_path, outside, _one_domain(13, 34))    # LM score 85: above the reference's 80
    cells += [inside, outside]
    write_study(tmp_path, cells, control={"reference": "none", "quality": "lms", "compare": ["ss"]})
    build_report(tmp_path, n_resamples=300)
    rows = pd.read_csv(tmp_path / "report" / "control.csv").set_index("cell")
    assert rows.at[inside["id"], "quality"] == 75 and rows.at[inside["id"], "value"] == 65
    assert rows.at[inside["id"], "predicted"] == pytest.approx(60 + (55 - 60) * (75 - 70) / (80 - 70))
    assert rows.at[inside["id"], "difference"] == pytest.approx(7.5)
    assert rows.at[inside["id"], "ci_low"] <= 7.5 <= rows.at[inside["id"], "ci_high"]
    assert math.isnan(rows.at[outside["id"], "predicted"]) and math.isnan(rows.at[outside["id"], "ci_low"])
    assert "outside the reference's range [60, 80]" in rows.at[outside["id"], "verdict"]
    html = (tmp_path / "report" / "index.html").read_text()
    assert "no prediction (no extrapolation)" in html and "difference +7.50" in html


def test_a_model_moving_exactly_along_the_reference_curve_gets_cis_that_include_zero(tmp_path):
    """Every checkpoint's documents come in identical pairs (2k, 2k+1), so the model that takes document 2k from
    checkpoint A and 2k+1 from B lies exactly halfway between A and B in both LM score and SS."""
    rng = np.random.default_rng(0)
    curve = {}
    for step, (p_pro, p_related) in zip((1, 2, 3), ((0.4, 0.3), (0.6, 0.6), (0.5, 0.9))):
        half = [("gender", int(rng.random() < p_pro), int(rng.binomial(2, p_related))) for _ in range(40)]
        curve[step] = [doc for doc in half for _ in range(2)]
    cells = [cell("m", step) for step in curve]
    for c, step in zip(cells, curve):
        write_cell(tmp_path, c, curve[step])
    mixes = []
    for a, b in ((1, 2), (2, 3)):
        mix = cell("m", b, "noise", level=0.01 * a)
        write_cell(tmp_path, mix, [curve[a][i] if i % 2 == 0 else curve[b][i] for i in range(80)])
        mixes.append(mix)
    write_study(tmp_path, cells + mixes, control={"quality": "lms", "compare": ["ss"]})
    build_report(tmp_path, n_resamples=400)
    rows = pd.read_csv(tmp_path / "report" / "control.csv")
    assert len(rows) == 2
    for _, row in rows.iterrows():
        assert row["difference"] == pytest.approx(0, abs=1e-9)
        assert row["ci_low"] < 0 < row["ci_high"], row.to_dict()
        assert "no more than its loss of quality predicts" in row["verdict"]


def test_a_noise_reference_compares_the_members_other_compressions(tmp_path):
    cells = [cell("teacher", 0)] + [cell("teacher", 0, "noise", level=s) for s in (0.01, 0.05)]
    cells += [cell("teacher", 0, "wanda", level=0.5)]
    for i, c in enumerate(cells):
        write_cell(tmp_path, c, _one_domain(10 + i, 32 - 3 * i if i < 3 else 27))
    write_study(tmp_path, cells, control={"reference": "noise", "compare": ["ss"]})
    frame = control_module.control_rows(Study(tmp_path), {"reference": "noise", "compare": ["ss"]}, n_resamples=50)
    assert frame["cell"].tolist() == ["teacher@step0+wanda-0.5"]
    assert frame["reference_cells"].item().split() == [c["id"] for c in cells[:3]]


def test_the_bootstrap_of_the_difference_counts_resamples_outside_the_range_apart():
    reference_quality = np.array([[1.0, 2.0]] * 4)
    reference_value = np.array([[0.0, 10.0]] * 4)
    quality, value = np.array([1.5, 1.5, 3.0, np.nan]), np.array([5.0, 6.0, 5.0, 5.0])
    result = stats.quality_matched_bootstrap(reference_quality, reference_value, quality, value)
    assert result["outside"] == pytest.approx(1 / 3)  # the NaN resample (no document of the subgroup) is no vote
    assert 0 <= result["ci_low"] <= result["ci_high"] <= 1
    counts = stats.shared_resample_counts(7, 50, seed=1)
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all()
    assert (counts == stats.shared_resample_counts(7, 50, seed=1)).all()


def test_a_folder_without_a_plan_is_refused_in_one_line(tmp_path, capsys):
    from compfair_tasks import cli

    assert cli.main(["study", "report", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "no readable plan.json" in error and "compfair study run" in error and "\n" not in error


def test_a_compression_has_the_same_colour_in_every_figure(tmp_path):
    """The figures colour compressions from the points (long) and the cells (wide): both must agree (an unstable
    sort once swapped them between figures)."""
    from leaderboard.studies.figures import compression_styles

    cells = [cell("m", step, compression, level) for step in (1, 2)
             for compression, level in (("none", None), ("noise", 0.05), ("noise", 0.5), ("magnitude", 0.5))]
    for i, c in enumerate(cells):
        write_cell(tmp_path, c, _one_domain(10 + i % 3, 24 + i))
    write_study(tmp_path, cells)
    study = Study(tmp_path)
    expected = {"none": 0, "noise-0.05": 1, "noise-0.5": 2, "magnitude-0.5": 3}
    assert compression_styles(study.points) == compression_styles(study.wide) == expected


def test_a_named_noise_series_includes_its_uncompressed_model_as_scale_zero(tmp_path):
    cells = [cell("teacher", 0)] + [cell("teacher", 0, "noise", level=s) for s in (0.02, 0.1)]
    cells += [cell("teacher", 0, "dynamic-int8")]
    for i, c in enumerate(cells):
        write_cell(tmp_path, c, _one_domain(10 + i, 32 - 3 * i if i < 3 else 27))
    write_study(tmp_path, cells)
    for reference in ({"noise": {"series": "teacher"}}, "teacher / noise"):
        frame = control_module.control_rows(Study(tmp_path), {"reference": reference, "compare": ["ss"]},
                                            n_resamples=50)
        assert frame["cell"].tolist() == ["teacher@step0+dynamic-int8"]
        assert frame["reference"].item() == "teacher noise series"
        assert frame["reference_cells"].item().split() == [c["id"] for c in cells[:3]]


@pytest.mark.parametrize("reference", [{"noise": {"series": "teacher"}}, "teacher / noise"])
def test_the_page_names_the_reference_in_either_spec_form(tmp_path, reference):
    cells = [cell("teacher", 0)] + [cell("teacher", 0, "noise", level=s) for s in (0.02, 0.1)]
    cells += [cell("teacher", 0, "dynamic-int8")]
    for i, c in enumerate(cells):
        write_cell(tmp_path, c, _one_domain(10 + i, 32 - 3 * i if i < 3 else 27))
    write_study(tmp_path, cells, control={"reference": reference, "compare": ["ss"]})
    page = build_report(tmp_path, n_resamples=50).read_text()
    assert "the teacher / noise models" in page

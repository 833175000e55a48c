"""Smoke test of experiment 6 (components/experiments/ipw.py) at its small size."""

from __future__ import annotations

from pathlib import Path

from tests.experiments.conftest import run_small


def test_ipw_small_run_lowers_first_exposure_predictions(settings, tmp_path: Path, shared_data: Path) -> None:
    result, lines = run_small("ipw", settings, tmp_path / "plots")
    assert [r["variant"] for r in result.rows] == ["STEM no IPW", "STEM + IPW", "MMoE no IPW", "MMoE + IPW"]
    assert result.verdict in ("reproduced", "partly", "not reproduced")
    assert result.plots and all(p.is_file() for p in result.plots)
    per_seed = result.data["per_seed"]
    for model in ("STEM", "MMoE"):
        plain, ipw = per_seed[f"{model} no IPW"][0], per_seed[f"{model} + IPW"][0]
        # the mechanism: down-weighted retargeted positives lower the predicted first-exposure click rate
        assert ipw["first_click_calibration"] < plain["first_click_calibration"], (model, plain, ipw)
        assert 0.5 < plain["first_click_auc"] < 1.0 and 0.5 < ipw["first_click_auc"] < 1.0
    assert result.data["propensity"]  # the fitted strata are kept for the record
    for model in ("STEM", "MMoE"):  # the verdict reads paired changes with intervals over first-exposure users
        plain, ipw = per_seed[f"{model} no IPW"][0], per_seed[f"{model} + IPW"][0]
        gap = result.data["effects"][model]["gap"]
        want = ipw["first_click_calibration_gap"] - plain["first_click_calibration_gap"]
        assert abs(gap["mean"] - want) < 1e-9 and gap["interval"]["low"] < gap["interval"]["high"]
        auc = result.data["effects"][model]["auc"]
        assert abs(auc["mean"] - (ipw["first_click_auc"] - plain["first_click_auc"])) < 1e-9

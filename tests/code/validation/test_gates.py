"""The quality gates as functions of their inputs (validation/gates.py); the end-to-end check that a
collapsed model gets no ``challenger`` alias is in tests/e2e/test_flows.py."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from validation.gates import GateResult, all_passed, data_gate, gate_table, model_gate


def _data_gate(settings, days):
    """The data gate over the ingest manifests of ``days``, as components/registry/gate_and_register.py calls it."""
    from components.runs import StageManifest

    manifest = StageManifest(settings, "ingest")
    return data_gate({day: manifest.read(day) for day in days}, settings.gates.max_quarantine_rate)


def test_model_gate_compares_with_the_champion_and_checks_calibration() -> None:
    ok = model_gate({"click": {"auc": 0.700, "calibration": 1.1}, "conversion": {"auc": 0.65, "calibration": 0.8}},
                    {"click": {"auc": 0.705}, "conversion": {"auc": 0.64}}, 0.01, (0.5, 2.0))
    assert ok.passed and ok.value == pytest.approx(-0.005) and ok.threshold == -0.01
    worse = model_gate({"click": {"auc": 0.68, "calibration": 1.0}}, {"click": {"auc": 0.70}}, 0.01, (0.5, 2.0))
    assert not worse.passed and worse.value == pytest.approx(-0.02)
    assert worse.details["tasks"]["click"]["auc_ok"] is False
    miscalibrated = model_gate({"click": {"auc": 0.7, "calibration": 2.5}}, None, 0.01, (0.5, 2.0))
    assert not miscalibrated.passed and miscalibrated.value is None  # no champion: no delta
    assert model_gate({"click": {"auc": float("nan"), "calibration": 1.0}}, None, 0.01, (0.5, 2.0)).passed is False
    assert model_gate({}, None, 0.01, (0.5, 2.0)).passed is False


def test_data_gate_reads_the_ingest_manifests(settings) -> None:
    from components.runs import StageManifest

    m = StageManifest(settings, "ingest")
    d1, d2, d3 = (dt.date(2026, 11, d) for d in (1, 2, 3))
    m.record(d1, "x", {"rows_in": 1000, "rows_quarantined": 10, "quarantine_rate": 0.01, "expectations_passed": True})
    m.record(d2, "y", {"rows_in": 1000, "rows_quarantined": 30, "quarantine_rate": 0.03, "expectations_passed": True})
    g = _data_gate(settings, [d1, d2])
    assert g.passed and g.value == pytest.approx(0.02) and g.threshold == settings.gates.max_quarantine_rate
    assert not _data_gate(settings, [d1, d2, d3]).passed  # a day never ingested
    m.record(d3, "z", {"rows_in": 100, "rows_quarantined": 60, "quarantine_rate": 0.6, "expectations_passed": False,
                       "tables": {"impressions": {"expectations": [
                           {"table": "impressions", "column": "click", "name": "expect_x", "success": False}]}}})
    bad = _data_gate(settings, [d1, d2, d3])
    assert not bad.passed and bad.value == pytest.approx(100 / 2100)
    assert bad.details["failed_expectations"] == {"2026-11-03": ["impressions.click: expect_x"]}


def test_collapse_gate_fails_a_collapsed_table_and_passes_a_healthy_one(settings, torch_one_thread) -> None:
    import torch

    from models.config import RankerConfig
    from models.ranker import Ranker
    from models.spec import CategoricalField, FeatureSpec
    from validation.gates import collapse_gate

    spec = FeatureSpec((CategoricalField("user_id", 400, "user"), CategoricalField("ad_id", 300, "ad")))
    model = Ranker(spec, RankerConfig(arch="mmoe", embedding_dim=8, expert_hidden=(8,), gate_hidden=(4,),
                                      tower_hidden=(4,)))
    healthy = collapse_gate(settings.gates, model, None)
    assert healthy.passed and healthy.value > 0.5
    assert not collapse_gate(settings.gates, model, None, champion_value=healthy.value + 0.2).passed  # vs a better champion
    with torch.no_grad():
        for w in model.embedding.weights:
            rank1 = torch.randn(w.shape[0], 1) @ torch.randn(1, w.shape[1])
            w.copy_(rank1.view_as(w))
    collapsed = collapse_gate(settings.gates, model, None)
    assert not collapsed.passed and collapsed.value == pytest.approx(1 / 8, abs=1e-3)
    # Every resample of rank-1 rows is rank 1: the interval is the point, and it is under the floor.
    assert collapsed.status == "fail" and collapsed.interval == pytest.approx((0.125, 0.125), abs=1e-6)
    assert collapsed.reason == ("mean IA/d 0.125 (95% interval 0.125 to 0.125) < 0.200, floor 0.200 (gates.ia_floor): "
                                "embeddings collapsed towards few directions")


def test_gate_table_and_all_passed() -> None:
    gates = [GateResult("data", 0.0, 0.05, True), GateResult("model", None, -0.01, False, {})]
    text = gate_table(gates)
    assert "FAIL" in text and "pass" in text
    assert text.splitlines()[0].split()[:5] == ["gate", "value", "interval", "threshold", "result"]
    assert not all_passed(gates) and all_passed(gates[:1]) and not all_passed([])
    assert np.isclose(gates[0].to_dict()["threshold"], 0.05)


def test_gates_say_what_failed_in_words(settings) -> None:
    """The verdict's reason is one readable line (validation/gates.py ``reason``), shown by gate_table and
    the run summary, not a bare value / threshold pair."""
    from components.runs import StageManifest
    from validation.gate_words import failure_text

    m = StageManifest(settings, "ingest")
    d1, d2 = dt.date(2026, 11, 3), dt.date(2026, 11, 4)
    m.record(d1, "a", {"rows_in": 17_000, "rows_quarantined": 1_204, "quarantine_rate": 0.071,
                       "expectations_passed": True,
                       "tables": {"impressions": {"reasons": {"null_key: request_id": 1_204}, "expectations": []}}})
    m.record(d2, "b", {"rows_in": 1_000, "rows_quarantined": 0, "quarantine_rate": 0.0, "expectations_passed": False,
                       "tables": {"impressions": {"reasons": {}, "expectations": [
                           {"table": "impressions", "column": "click", "name": "expect_column_mean_to_be_between",
                            "success": False, "observed": 0.61, "bounds": {"min_value": 0.001, "max_value": 0.5}},
                           {"table": "impressions", "column": "request_id", "success": False, "unexpected_count": 3,
                            "name": "expect_column_values_to_be_unique"}]}}})
    g = _data_gate(settings, [d1, d2])
    assert not g.passed
    assert g.line() == (
        "data: FAIL, quarantine rate 6.7% > 5.0% bound (2026-11-03: 1,204 rows impressions: null_key: request_id); "
        "expectations failed on 2026-11-04: click rate 0.61 above 0.50 (ingest.label_rate_bounds.click); "
        "impressions.request_id has 3 repeated values")
    assert g.reason in gate_table([g]).splitlines()[1]
    assert failure_text(g.to_dict()).startswith(f"data gate failed: {g.reason}\n")
    ok = _data_gate(settings, [])
    assert ok.passed and ok.reason == "quarantine rate 0.0% <= 5.0% bound over 0 rows; expectations passed on 0 day(s)"

    worse = model_gate({"click": {"auc": 0.68, "calibration": 2.5}, "watch": {"auc": None, "calibration": 1.0}},
                       {"click": {"auc": 0.70}}, 0.01, (0.5, 2.0))
    assert worse.reason == ("click AUC 0.680 is 0.020 below the champion's 0.700 (tolerance 0.010); click "
                            "calibration 2.50 outside [0.50, 2.00] (mean prediction / observed rate); watch AUC "
                            "undefined on the newest day (no positive or no negative there)")
    fine = model_gate({"click": {"auc": 0.71, "calibration": 1.02}}, None, 0.01, (0.5, 2.0))
    assert fine.line() == ("model: pass, click AUC 0.710, calibration 1.02 (no earlier version serving to compare AUC "
                           "with: calibration checked only)")


class _Report:
    def __init__(self, pairs: list[dict], has_task_tables: bool = True) -> None:
        self.summary = {"pairs": pairs, "has_task_tables": has_task_tables}

    def to_dict(self) -> dict:
        return self.summary


class _Model:
    def __init__(self, tasks: tuple[str, ...], arch: str = "stem") -> None:
        from types import SimpleNamespace

        self.tasks, self.config = tasks, SimpleNamespace(arch=arch)


def test_entanglement_gate_reasons_and_a_single_task(settings) -> None:
    from validation.gates import entanglement_gate

    pair = {"task_a": "click", "task_b": "conversion", "n_pairs_a": 40, "n_pairs_b": 12}
    ok = entanglement_gate(settings.gates, _Model(("click", "conversion")), None,
                           report=_Report([{**pair, "separation": 0.041, "separation_se": 0.005}]), expert_corr=0.47)
    assert ok.passed and ok.status == "pass" and ok.reason == (
        "smallest separation of conflicting pairs 0.0410 (95% interval 0.0312 to 0.0508) > 0.0000 "
        "(gates.min_separation); mean |r| between experts 0.470 <= 0.900 (gates.max_expert_correlation)")
    sparse = entanglement_gate(settings.gates, _Model(("click", "conversion")), None,
                               report=_Report([{**pair, "n_pairs_b": 0, "separation": None}]), expert_corr=0.95)
    # Too few pairs leaves the separation inconclusive; the correlated experts fail the gate regardless.
    assert not sparse.passed and sparse.status == "fail" and sparse.details["separation_verdict"] == "inconclusive"
    assert sparse.reason == (
        "separation undefined: too few conflicting (user, ad) pairs with enough impressions (click/conversion "
        "40+0 pairs); cannot tell whether > 0.0000 (gates.min_separation); inconclusive, which gates.inconclusive "
        "= pass lets pass (a warning, not a verdict); mean |r| between experts 0.950 > 0.900 "
        "(gates.max_expert_correlation)")
    # A log with one label has no task pair: only the expert bound applies.
    single = entanglement_gate(settings.gates, _Model(("rating_high",)), None, report=None, expert_corr=0.3)
    assert single.passed and single.value is None
    assert entanglement_gate(settings.gates, _Model(("rating_high",)), None, report=_Report([]), expert_corr=0.3).passed
    assert single.line().startswith("entanglement: pass, one task (rating_high): no task pair, separation not gated")


def test_data_gate_rate_is_the_worst_tables_so_a_lost_users_table_cannot_hide(settings) -> None:
    """610 users rejected beside 100,000 clean impressions is 0.6% pooled; per table it is 100%."""
    from components.runs import StageManifest

    day = dt.date(2026, 11, 1)
    StageManifest(settings, "ingest").record(day, "x", {
        "rows_in": 100_610, "rows_quarantined": 610, "expectations_passed": True,
        "tables": {"impressions": {"rows_in": 100_000, "rows_quarantined": 0, "reasons": {}},
                   "users": {"rows_in": 610, "rows_quarantined": 610, "reasons": {"created_after_day: created_at": 610}}}})
    g = _data_gate(settings, [day])
    assert not g.passed and g.value == pytest.approx(1.0)
    assert g.reason.startswith("quarantine rate of users 100.0% > 5.0% bound")
    assert g.details["quarantine_rate_per_table"] == {"impressions": 0.0, "users": 1.0}


def test_a_failed_gate_says_what_failed_why_and_what_to_do_with_and_without_a_champion() -> None:
    """The user-facing text of a failed gate (validation/gate_words.py): what failed, why it matters, the
    config key of the threshold or the forced promotion; no champion wording when there is no champion."""
    alone = model_gate({"click": {"auc": 0.7, "calibration": 2.5}}, None, 0.01, (0.5, 2.0))
    assert alone.explain(3) == (
        "model gate failed: click calibration 2.50 outside [0.50, 2.00] (mean prediction / observed rate)\n"
        "  why it matters: the predicted click rate is off from the observed rate by more than the band allows, "
        "so what the ranking expects of every ad is over- or under-stated\n"
        "  what to do: check the label rates of the window against the newest day; to accept it, widen "
        "gates.calibration_band\n"
        '  or, having checked the version, promote it anyway: adsrec promote --version 3 --force --reason "..."')
    assert "champion" not in alone.explain(3) and "champion" not in alone.reason
    beaten = model_gate({"click": {"auc": 0.68, "calibration": 1.0}}, {"click": {"auc": 0.70}}, 0.01, (0.5, 2.0))
    assert beaten.explain() == (
        "model gate failed: click AUC 0.680 is 0.020 below the champion's 0.700 (tolerance 0.010)\n"
        "  why it matters: this version ranks the newest day's impressions worse than the champion serving now "
        "(click AUC)\n"
        "  what to do: compare the two versions' metrics (adsrec models, the MLflow UI); if the drop is the noise "
        "of a small day, raise gates.auc_tolerance\n"
        '  or, having checked the version, promote it anyway: adsrec promote --version V --force --reason "..."')
    assert model_gate({"click": {"auc": 0.71, "calibration": 1.0}}, None, 0.01, (0.5, 2.0)).explain() == ""


def test_every_gate_names_the_threshold_key_of_what_failed(settings) -> None:
    from types import SimpleNamespace

    from validation.gate_words import failure_text
    from validation.gates import entanglement_gate

    collapsed = GateResult("collapse", 0.1, 0.2, False, {"floor": 0.2, "champion": None, "tolerance": 0.1}, "r")
    assert "gates.ia_floor" in collapsed.explain() and "champion" not in collapsed.explain()
    below_champion = GateResult("collapse", 0.3, 0.35, False, {"floor": 0.2, "champion": 0.45, "tolerance": 0.1}, "r")
    words = below_champion.explain()
    assert "gates.ia_champion_tolerance" in words and "gates.ia_floor" not in words
    data = GateResult("data", 0.07, 0.05, False, {"days_missing": ["2026-11-05"], "failed_expectations": {}}, "r")
    assert "gates.max_quarantine_rate" in data.explain() and "adsrec ingest --date" in data.explain()
    tangled = entanglement_gate(settings.gates, SimpleNamespace(tasks=("click", "conversion"),
                                                                config=SimpleNamespace(arch="stem")), None,
                                report=_Report([{"task_a": "click", "task_b": "conversion", "separation": -0.01,
                                                 "separation_se": 0.002}]),
                                expert_corr=0.95)
    assert "gates.min_separation" in tangled.explain() and "gates.max_expert_correlation" in tangled.explain()
    # A stored gate of an older run, without a reason, is still worded.
    assert failure_text({"name": "model", "passed": False, "value": None, "threshold": -0.01}).startswith(
        "model gate failed: value undefined, threshold -0.0100\n  why it matters: nothing was evaluated")


def test_the_run_summary_drops_champion_columns_and_words_failures_without_a_champion() -> None:
    from flows.report import render_gates

    failed = model_gate({"click": {"auc": 0.7, "calibration": 2.5}}, None, 0.01, (0.5, 2.0))
    st = {"metrics": {"click": {"auc": 0.7, "calibration": 2.5}}, "champion": None, "gates": [failed.to_dict()],
          "gate_table": gate_table([failed]), "registered": {"name": "adsrec-ranker", "version": 1, "aliases": []}}
    text = render_gates(st)
    assert "champion" not in text and "compare with the champion" not in text
    assert text.startswith("metrics on the newest day (no earlier version to compare with)\ntask   AUC")
    assert failed.explain(1) in text
    with_champion = render_gates({**st, "champion": {"version": 1, "metrics": {"click": {"auc": 0.69}}}})
    assert with_champion.startswith("comparison on the newest day (champion: version 1)")
    assert with_champion.splitlines()[1].split()[:4] == ["task", "AUC", "champion", "delta"]


def test_validation_imports_nothing_from_components_or_flows() -> None:
    """validation/ depends on models/ only (DESIGN.md): importing every module of it loads no components/."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    modules = sorted(p.stem for p in (root / "validation").glob("*.py")
                     if p.stem not in ("__init__", "gx_expectations"))  # gx_expectations imports GX at import
    code = ("import sys\n" + "".join(f"import validation.{m}\n" for m in modules)
            + "print(sorted({n.split('.')[0] for n in sys.modules} & {'components', 'flows'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_model_gate_fails_only_beyond_the_noise_of_the_paired_difference_interval() -> None:
    """With the paired bootstrap interval of AUC(new) - AUC(champion): a point below -auc_tolerance whose
    interval reaches it passes "within the noise"; an interval wholly below it fails, and says so."""
    metrics = {"click": {"auc": 0.680, "calibration": 1.0}, "conversion": {"auc": 0.650, "calibration": 1.0}}
    champion = {"click": {"auc": 0.700}, "conversion": {"auc": 0.640}}
    noisy = {"click": {"point": -0.02, "low": -0.045, "high": 0.004}, "conversion": {"point": 0.01, "low": -0.02,
                                                                                     "high": 0.04}}
    g = model_gate(metrics, champion, 0.01, (0.5, 2.0), differences=noisy)
    assert g.passed and g.value == pytest.approx(-0.02)
    assert g.details["tasks"]["click"]["within_noise"] and not g.details["tasks"]["conversion"]["within_noise"]
    assert g.details["tasks"]["click"]["delta_interval"] == [-0.045, 0.004]
    assert g.reason == ("click AUC 0.680 (-0.020 [-0.0450, +0.0040] vs champion, within the noise), calibration 1.00, "
                        "conversion AUC 0.650 (+0.010 [-0.0200, +0.0400] vs champion), calibration 1.00")
    # the same point difference without an interval fails, as before
    assert not model_gate(metrics, champion, 0.01, (0.5, 2.0)).passed
    clear = {**noisy, "click": {"point": -0.02, "low": -0.031, "high": -0.0105}}
    worse = model_gate(metrics, champion, 0.01, (0.5, 2.0), differences=clear)
    assert not worse.passed and worse.details["tasks"]["click"]["auc_ok"] is False
    assert worse.reason == ("click AUC 0.680 is 0.020 below the champion's 0.700 (tolerance 0.010, beyond the noise: "
                            "the whole difference interval [-0.0310, -0.0105] lies below -0.010)")
    assert "the drop is beyond the noise" in worse.explain()
    # an interval that reaches -auc_tolerance exactly is still within the noise
    edge = {**noisy, "click": {"point": -0.02, "low": -0.03, "high": -0.01}}
    assert model_gate(metrics, champion, 0.01, (0.5, 2.0), differences=edge).passed
    # an undefined interval (too few resamples with both labels) leaves the point to decide
    undefined = {**noisy, "click": {"point": -0.02, "low": None, "high": None}}
    assert not model_gate(metrics, champion, 0.01, (0.5, 2.0), differences=undefined).passed


def test_the_run_summary_prints_the_auc_interval_and_the_paired_difference_interval() -> None:
    from flows.report import render_gates

    st = {"metrics": {"click": {"auc": 0.6507, "calibration": 1.0,
                                "auc_interval": {"point": 0.6507, "low": 0.6401, "high": 0.6623}}},
          "champion": {"version": 1, "metrics": {"click": {"auc": 0.6537}},
                       "auc_difference": {"click": {"point": -0.003, "low": -0.0121, "high": 0.0062}}},
          "gates": [], "gate_table": "-", "registered": None}
    row = render_gates(st).splitlines()[3].split("  ")
    assert [c.strip() for c in row if c.strip()][:4] == ["click", "0.6507 [0.640, 0.662]", "0.6537",
                                                         "-0.0030 [-0.012, +0.006]"]
    without = render_gates({**st, "metrics": {"click": {"auc": 0.6507, "calibration": 1.0}}, "champion": None})
    assert without.splitlines()[3].split()[:2] == ["click", "0.6507"]  # an older summary: the point alone


def test_an_inconclusive_gate_says_what_it_could_not_tell_and_what_to_do(settings) -> None:
    """An inconclusive gate's words name what was compared and why it could not be told (the task whose
    interval straddles, the positives of the test day, the pairs or rows measured), and what to do: more
    test days (training.test_days), more data, or the policy gates.inconclusive. "Nothing was compared" is
    kept for a baseline gate that really compared nothing."""
    from validation.baseline_gate import baseline_gate
    from validation.gate_words import failure_text, gate_notice
    from validation.gates import entanglement_gate

    def row(point, low, high, positives=None):
        counts = {} if positives is None else {"positives": positives, "rows": 4120}
        return {"model_auc": 0.6 + point, "best": "per_ad", "best_auc": 0.6, **counts,
                "baselines": {"per_ad": 0.6}, "difference": {"point": point, "low": low, "high": high}}

    straddles = baseline_gate({"click": row(0.05, 0.03, 0.07, 210), "conversion": row(0.01, -0.02, 0.04, 37)}, 0.0)
    warning = gate_notice(straddles.to_dict())
    assert warning.startswith("warning: baseline gate inconclusive, passed by gates.baseline_inconclusive = pass: ")
    assert ("why it matters: the model was compared with the baselines, but the newest day has too few positives "
            "to tell whether it beats them by gates.baseline_margin (conversion: the lead over per_ad, +0.010 "
            "[-0.020, +0.040], straddles the margin with 37 conversion positives in 4,120 rows)") in warning
    assert "click:" not in warning.split("why it matters")[1]  # only the task that straddles
    assert "raise training.test_days" in warning and "gates.baseline_inconclusive decides" in warning
    assert "nothing was compared" not in warning
    held = baseline_gate({"conversion": row(0.01, -0.02, 0.04, 37)}, 0.0, "fail")  # gates.inconclusive = fail
    assert "37 conversion positives" in failure_text(held.to_dict()) and "training.test_days" in failure_text(
        held.to_dict())
    no_interval = baseline_gate({"conversion": row(-0.02, None, None, 3)}, 0.0)
    assert ("conversion: the lead -0.020 over per_ad has no interval, 3 conversion positives in 4,120 rows are too "
            "few to resample") in gate_notice(no_interval.to_dict())
    stored = baseline_gate({"conversion": row(0.01, -0.02, 0.04)}, 0.0)  # a gate stored before the counts
    assert "(conversion: the lead over per_ad, +0.010 [-0.020, +0.040], straddles the margin)" in gate_notice(
        stored.to_dict())
    assert "nothing was compared with the baselines" in failure_text(baseline_gate({}, 0.0).to_dict())

    report = {"fields": [{"used_rows": 12_000}, {"used_rows": 8_000}]}
    near = GateResult("collapse", 0.198, 0.2, True, {"floor": 0.2, "report": report}, "r", "inconclusive",
                      (0.193, 0.203))
    assert ("the interval of mean IA/d, 0.193 to 0.203, contains the threshold 0.200: the rows measured (20,000 rows "
            "over 2 fields) are too few to tell collapsed embeddings from healthy ones") in near.explain()
    assert "gates.ia_max_rows" in near.explain() and "gates.inconclusive decides" in near.explain()
    unmeasured = GateResult("collapse", None, 0.2, True, {"floor": 0.2, "report": {"fields": []}}, "r", "inconclusive")
    assert "collapse could not be measured at all" in unmeasured.explain()

    pair = {"task_a": "click", "task_b": "conversion", "n_pairs_a": 40, "n_pairs_b": 12}
    noisy = entanglement_gate(settings.gates, _Model(("click", "conversion")), None,
                              report=_Report([{**pair, "separation": -0.0005, "separation_se": 0.006}]), expert_corr=0.2)
    assert noisy.status == "inconclusive" and (
        "the interval of the smallest separation, -0.0123 to 0.0113, contains the bound 0.0000 (gates.min_separation): "
        "its pairs (click/conversion 40+12 pairs) are too few to decide") in noisy.explain()
    sparse = entanglement_gate(settings.gates, _Model(("click", "conversion")), None,
                               report=_Report([{**pair, "n_pairs_b": 0, "separation": None}]), expert_corr=0.2)
    assert ("too few conflicting (user, ad) pairs with enough impressions were found to measure a separation "
            "(click/conversion 40+0 pairs)") in sparse.explain()
    assert "gates.entanglement_max_pairs" in sparse.explain() and "gates.inconclusive decides" in sparse.explain()

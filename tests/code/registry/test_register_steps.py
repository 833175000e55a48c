"""The steps of a registration that need no MLflow store (components/registry/register.py and
components/registry/run_logging.py): gate verdict, tags, description, window and plot checks, metrics."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

WINDOW = (dt.date(2026, 1, 1), dt.date(2026, 1, 4))
PASS = [{"name": "data", "value": 0.0, "threshold": 0.05, "passed": True, "details": {}},
        {"name": "model", "value": None, "threshold": -0.01, "passed": True, "details": {}}]
FAIL = [{"name": "data", "value": 0.2, "threshold": 0.05, "passed": False, "details": {}},
        {"name": "col lapse", "value": 0.5, "threshold": 0.1, "passed": False, "details": {}}]
SUMMARY = {"arch": "stem",
           "evaluation": {"overall": {"click": {"auc": 0.71234, "gauc": 0.6, "logloss": float("nan")},
                                      "conversion": {"auc": None}},
                          "slices": {"new_users": {"click": {"auc": 0.65, "rows": 12}}}},
           "training": {"samples_per_s": 1000.0, "epochs": 2},
           "rows": {"train": 10, "valid": 4}}


def test_gate_verdict_needs_at_least_one_gate_and_all_passed() -> None:
    from components.registry.register import gate_verdict

    assert gate_verdict(PASS) == (True, [])
    assert gate_verdict(FAIL) == (False, ["data", "col lapse"])
    assert gate_verdict([]) == (False, [])


def test_version_tags_carry_the_verdict_window_and_one_tag_per_gate() -> None:
    from components.registry.register import run_tags, version_tags

    tags = version_tags(FAIL, ("click", "conversion"), "stem", *WINDOW)
    assert list(tags)[:8] == ["gates_passed", "failed_gates", "tasks", "arch", "code_revision", "code_dirty",
                              "data_window_start", "data_window_end"]
    assert tags["gates_passed"] == "false" and tags["failed_gates"] == "data,col lapse"
    assert tags["tasks"] == "click,conversion" and tags["data_window_end"] == "2026-01-04"
    assert tags["gate.data.passed"] == "false" and tags["gate.col lapse.passed"] == "false"
    assert version_tags(PASS, ("click",), "stem", *WINDOW)["gates_passed"] == "true"

    long_views = {f"view_{i}": "x" * 50 for i in range(200)}
    run = run_tags(tags, *WINDOW, long_views, Path("/models/2026-01-04"))
    assert run["data_window"] == "2026-01-01..2026-01-04" and run["model_dir"] == "/models/2026-01-04"
    assert run["feature_views"].endswith("...(see feature_views.json)") and len(run["feature_views"]) < 5000
    assert json.loads(run_tags(tags, *WINDOW, {"b": 1, "a": 2}, Path("m"))["feature_views"]) == {"a": 2, "b": 1}


def test_version_description_names_the_aucs_and_the_failed_gates() -> None:
    from components.registry.register import version_description

    text = version_description(SUMMARY, "stem", *WINDOW, FAIL)
    assert text == "stem trained on 2026-01-01..2026-01-04; click AUC 0.7123; gates FAILED (data, col lapse)"
    assert version_description({}, "mmoe", *WINDOW, []).endswith("no AUC; gates FAILED (none evaluated)")
    assert version_description(SUMMARY, "stem", *WINDOW, PASS).endswith("gates passed")


def test_window_and_plots_are_checked(tmp_path: Path) -> None:
    from components.registry.register import check_window, existing_plots

    assert check_window((dt.datetime(2026, 1, 1, 5), WINDOW[1])) == WINDOW
    with pytest.raises(ValueError, match="first <= last"):
        check_window((WINDOW[1], WINDOW[0]))
    with pytest.raises(ValueError, match="pair"):
        check_window(WINDOW[0])  # type: ignore[arg-type]
    plot = tmp_path / "a.png"
    plot.write_bytes(b"png")
    assert existing_plots([plot, None]) == [plot]
    with pytest.raises(FileNotFoundError, match="b.png"):
        existing_plots([plot, tmp_path / "b.png"])


def test_run_metrics_are_flat_finite_and_named_for_mlflow() -> None:
    from components.registry.register import normalise_gates
    from components.registry.run_logging import finite_or_none, metric_key, run_metrics

    metrics = run_metrics(SUMMARY, normalise_gates(FAIL))
    assert metrics["click/auc"] == 0.71234 and "click/logloss" not in metrics and "conversion/auc" not in metrics
    assert metrics["slice/new_users/click/rows"] == 12.0 and metrics["training/epochs"] == 2.0
    assert metrics["gate/data"] == 0.2 and metrics["gate/data/passed"] == 0.0
    assert metrics["gate/col lapse/passed"] == 0.0
    assert metric_key("gate/a*b/") == "gate/a_b" and metric_key("") == "_"
    with_interval = {**SUMMARY, "evaluation": {**SUMMARY["evaluation"],
                                               "auc_interval": {"click": {"point": 0.71, "low": 0.69, "high": 0.73},
                                                                "conversion": {"point": None, "low": None}}}}
    logged = run_metrics(with_interval, [])
    assert logged["click/auc_low"] == 0.69 and logged["click/auc_high"] == 0.73
    assert "conversion/auc_low" not in logged  # an undefined interval is not logged
    assert finite_or_none(True) is None and finite_or_none(float("inf")) is None and finite_or_none(3) == 3.0


def test_read_model_folder_reads_what_is_there(tmp_path: Path) -> None:
    from components.registry.run_logging import read_model_folder

    (tmp_path / "ranker_config.json").write_text('{"arch": "stem"}')
    (tmp_path / "history.json").write_text('{"history": [{"epoch": 1, "train_loss": 0.5}]}')
    folder = read_model_folder(tmp_path, {"from": "summary"})
    assert folder.ranker_config == {"arch": "stem"} and folder.train_config == {}
    assert folder.history == [{"epoch": 1, "train_loss": 0.5}] and folder.evaluation == {"from": "summary"}
    (tmp_path / "evaluation.json").write_text('{"from": "file"}')
    assert read_model_folder(tmp_path, {}).evaluation == {"from": "file"}

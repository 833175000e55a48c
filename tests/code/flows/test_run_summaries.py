"""What a pipeline run shows besides its work: the progress bar over a backfill's days
(flows/stages.py) and the Prefect artifacts of its summary (flows/artifacts.py): tables, links and the
markdown summary of the gates."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

DAYS = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(3)]


class _Done:
    def __init__(self, value: dict[str, Any]) -> None:
        self.value = value

    def result(self) -> dict[str, Any]:
        return self.value


class _FakeTask:
    """Stands in for a Prefect task: called or submitted, it records the day and returns a result."""

    def __init__(self, stage: str, calls: list[tuple[str, dt.date]]) -> None:
        self.stage, self.calls = stage, calls

    def __call__(self, settings: Any, day: dt.date, force: bool) -> dict[str, Any]:
        self.calls.append((self.stage, day))
        return {"skipped": False, "seconds": 0.01, "rows": {"impressions": 10}}

    def submit(self, settings: Any, day: dt.date, force: bool) -> _Done:
        return _Done(self(settings, day, force))


@pytest.fixture()
def fake_tasks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dt.date]]:
    from flows import stages

    calls: list[tuple[str, dt.date]] = []
    for stage in ("deliver", "ingest", "features", "representations"):
        monkeypatch.setattr(stages, f"{stage}_task", _FakeTask(stage, calls))
    monkeypatch.setattr(stages, "representations_summary", lambda result: {"text_encoded": 1})
    return calls


def test_backfill_days_run_under_a_progress_bar_with_an_eta(fake_tasks: list[Any], settings: Any,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from components.runs import RunSummary
    from flows.stages import run_days

    monkeypatch.setenv("ADSREC_PROGRESS", "1")
    summary = RunSummary("backfill", {})
    run_days(settings, DAYS, 2, False, summary, representations=True)
    err = capsys.readouterr().err
    assert "3 day(s) 2026-11-01..2026-11-03" in err and "12/12" in err, err
    assert "<00:00" in err  # tqdm's [elapsed<ETA, rate]
    assert "representations 2026-11-03" in err  # the step that finished last
    assert [s["stage"] for s in summary.stages].count("features") == 3
    # Order unchanged: every delivery first, then ingest/features by waves of two, then representations.
    assert [c[0] for c in fake_tasks[:3]] == ["deliver"] * 3 and fake_tasks[-1] == ("representations", DAYS[-1])


def test_no_bar_outside_a_terminal(fake_tasks: list[Any], settings: Any, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from components.runs import RunSummary
    from flows.stages import run_days

    monkeypatch.setenv("ADSREC_PROGRESS", "0")
    run_days(settings, DAYS, 2, False, RunSummary("backfill", {}), representations=False)
    assert capsys.readouterr().err == ""
    assert len(fake_tasks) == 9


def _daily_summary() -> dict[str, Any]:
    ingest = {"stage": "ingest", "day": "2026-11-02", "seconds": 1.0, "skipped": False, "expectations_passed": True,
              "tables": {"impressions": {"rows_in": 100, "rows_landed": 90, "rows_quarantined": 10}},
              "data_docs": {"index": "/h/gx/index.html", "exists": True, "url": "http://127.0.0.1:5100/index.html"}}
    gates = {"stage": "gates", "day": "2026-11-02",
             "metrics": {"click": {"auc": 0.71, "gauc": 0.6, "calibration": 1.02,
                                   "auc_interval": {"point": 0.71, "low": 0.69, "high": 0.73}}},
             "champion": {"version": 1, "metrics": {"click": {"auc": 0.7}}}, "oracle": {"click": 0.8},
             "gates": [{"name": "data", "passed": True, "value": 0.1, "threshold": 0.2, "reason": "ok"},
                       {"name": "model", "passed": False, "value": None, "threshold": None, "reason": "AUC fell"}],
             "registered": {"name": "adsrec-ranker", "version": 2, "run_id": "abc123", "experiment_id": "7",
                            "aliases": []},
             "ui": {"mlflow": "http://127.0.0.1:5000"}}
    return {"flow": "daily", "status": "completed", "seconds": 12.0, "parameters": {"run_date": "2026-11-02",
            "force": False}, "stages": [ingest, gates]}


def _fake_prefect(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """Stand-ins for Prefect's artifact functions that record what each would create, by kind and key."""
    import prefect.artifacts

    made: dict[str, dict[str, Any]] = {"table": {}, "link": {}, "markdown": {}}
    monkeypatch.setattr(prefect.artifacts, "create_table_artifact",
                        lambda table, key, description: made["table"].__setitem__(key, table))
    monkeypatch.setattr(prefect.artifacts, "create_link_artifact",
                        lambda link, link_text, key, description: made["link"].__setitem__(key, (link, link_text)))
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact",
                        lambda markdown, key, description: made["markdown"].__setitem__(key, markdown))
    return made


def test_a_run_publishes_tables_and_links_not_a_text_dump(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.artifacts import publish_gate_artifacts, publish_run_artifacts

    made = _fake_prefect(monkeypatch)
    summary = _daily_summary()
    keys = publish_run_artifacts(summary, settings) + publish_gate_artifacts(summary["stages"][-1], settings)
    tables, links = made["table"], made["link"]
    assert set(tables) == {"daily-run", "daily-days", "daily-metrics", "daily-gates"}
    assert set(made["markdown"]) == {"daily-summary"}
    assert sorted(keys) == sorted([*tables, *links, "daily-summary"])
    assert tables["daily-run"] == [{"flow": "daily", "status": "completed", "seconds": 12.0,
                                    "run_date": "2026-11-02", "force": "False"}]
    assert tables["daily-days"][0]["impressions"] == "90" and tables["daily-days"][0]["expect."] == "pass"
    assert tables["daily-metrics"] == [{"task": "click", "auc": 0.71, "auc_low": 0.69, "auc_high": 0.73,
                                        "champion_auc": 0.7, "oracle_auc": 0.8, "gauc": 0.6, "champion_gauc": None,
                                        "calibration": 1.02, "champion_calibration": None}]
    # the cells of the printed gate table, with the status and the boolean the registry read
    assert tables["daily-gates"] == [
        {"gate": "data", "status": "pass", "passed": True, "value": "0.1000", "interval": "-", "threshold": "0.2000",
         "result": "pass", "reason": "ok"},
        {"gate": "model", "status": "fail", "passed": False, "value": "-", "interval": "-", "threshold": "-",
         "result": "FAIL", "reason": "AUC fell"}]
    assert links == {
        "daily-mlflow-run": ("http://127.0.0.1:5000/#/experiments/7/runs/abc123", "MLflow run abc123"),
        "daily-model-version": ("http://127.0.0.1:5000/#/models/adsrec-ranker/versions/2", "adsrec-ranker version 2"),
        "daily-data-docs": ("http://127.0.0.1:5100/index.html", "Great Expectations Data Docs"),
    }
    assert not any("{'" in str(v) for table in tables.values() for row in table for v in row.values())


def _gates_record() -> dict[str, Any]:
    """A daily gates record (``assess_and_register``'s result) whose baseline gate is inconclusive on
    conversion and whose entanglement gate fails, next to the oracle and a partial oracle."""
    from validation.baseline_gate import baseline_gate
    from validation.gates import GateResult, gate_table

    def row(point: float, low: float, high: float, positives: int) -> dict[str, Any]:
        return {"model_auc": 0.6 + point, "best": "per_user", "best_auc": 0.6, "rows": 4120, "positives": positives,
                "baselines": {"per_ad": 0.58, "per_user": 0.6, "popularity": 0.52},
                "difference": {"point": point, "low": low, "high": high}}

    comparison = {"click": row(0.05, 0.03, 0.07, 210), "conversion": row(0.01, -0.02, 0.04, 37)}
    gates = [GateResult("entanglement", -0.05, 0.0, False, {"separation_verdict": "fail"},
                        "separation -0.0500 not > 0.0000; mean |r| 0.47", "fail", (-0.0614, -0.0386)),
             baseline_gate(comparison, 0.0)]
    return {"end_day": "2026-11-07", "baselines": comparison, "oracle": {"click": 0.8, "conversion": 0.87},
            "ceilings": {"no_taste": {"click": 0.66, "conversion": 0.62}},
            "metrics": {"click": {"auc": 0.65, "gauc": 0.6, "calibration": 1.0,
                                  "auc_interval": {"point": 0.65, "low": 0.6401, "high": 0.6623}},
                        "conversion": {"auc": 0.61, "gauc": 0.58, "calibration": 1.1}},
            "champion": None, "gates": [g.to_dict() for g in gates], "gate_table": gate_table(gates),
            "registered": {"name": "adsrec-ranker", "version": 3, "aliases": [], "run_id": "r1"}}


def test_the_summary_markdown_shows_the_terminal_summarys_cells() -> None:
    """The Prefect UI's markdown summary: the metrics with their intervals, the baselines and ceilings with
    the ratio to the oracle, the gate table with statuses and reasons, the gates in words, the version;
    every number as the terminal summary prints it (flows/report.py)."""
    from flows.artifacts import summary_markdown
    from flows.report import render_gates

    st = _gates_record()
    md = summary_markdown(st, "adsrec daily: the model for 2026-11-07")
    text = render_gates(st)
    lines = md.splitlines()
    assert lines[0] == "# adsrec daily: the model for 2026-11-07"
    assert "## Metrics on the newest day (no earlier version to compare with)" in lines
    assert "| task | AUC | oracle | GAUC | calibration |" in lines  # no champion: no empty champion columns
    assert "| click | 0.6500 [0.640, 0.662] | 0.8000 | 0.6000 | 1.0000 |" in lines
    assert "| conversion | 0.6100 | 0.8700 | 0.5800 | 1.1000 |" in lines  # no interval: the point alone
    assert "| model | 0.6500 (0.812) | 0.6100 (0.701) |" in lines  # the ratio to the oracle
    assert "| ceiling no_taste | 0.6600 (0.825) | 0.6200 (0.713) |" in lines
    assert "| model - best baseline | +0.0500 [+0.0300, +0.0700] | +0.0100 [-0.0200, +0.0400] |" in lines
    assert "| gate | value | interval | threshold | result | reason |" in lines
    gate_rows = {line.split(" | ")[0]: line for line in lines if line.startswith("| entanglement")
                 or line.startswith("| baseline ")}
    assert gate_rows["| entanglement"].startswith("| entanglement | -0.0500 | [-0.0614, -0.0386] | 0.0000 | FAIL | ")
    assert "mean \\|r\\| 0.47" in gate_rows["| entanglement"]  # a | in a reason does not split the row
    assert gate_rows["| baseline"].startswith("| baseline | 0.0100 | [-0.0200, 0.0400] | 0.0000 | inconclusive (pass) |")
    # the same cells as the terminal's gate table, and the same words under it
    for cell in ("-0.0500", "[-0.0614, -0.0386]", "inconclusive (pass)", "0.6500 [0.640, 0.662]", "0.6100 (0.701)"):
        assert cell in text and cell in md
    assert "**entanglement gate failed: separation -0.0500 not > 0.0000; mean |r| 0.47**" in lines
    assert "**warning: baseline gate inconclusive, passed by gates.baseline_inconclusive = pass: " in md
    assert any(line.startswith("- why it matters: ") and "37 conversion positives in 4,120 rows" in line
               for line in lines)
    assert "- to hold such versions back instead: gates.baseline_inconclusive = fail" in lines
    assert "&lt;home>/models/&lt;day>/analysis/entanglement_distances.png" in md  # not read as an HTML tag
    assert lines[-1] == "registered: adsrec-ranker version 3 -> no alias (a gate failed); run r1"


def test_artifacts_that_cannot_be_published_never_fail_the_run(settings: Any, caplog: pytest.LogCaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No Prefect API reachable: the gates' artifacts are a warning, the run goes on."""
    import prefect.artifacts

    from flows.artifacts import publish_gate_artifacts, publish_quietly

    def unreachable(**kwargs: Any) -> None:
        raise ConnectionError("All connection attempts failed")

    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", unreachable)
    with caplog.at_level("WARNING"):
        assert publish_quietly(publish_gate_artifacts, _gates_record(), settings) == []
    assert "Prefect artifacts not published (publish_gate_artifacts): ConnectionError" in caplog.text
    with pytest.raises(ConnectionError):  # without publish_quietly the error is not hidden
        publish_gate_artifacts(_gates_record(), settings)


def test_a_run_without_gates_or_ingest_links_nothing(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.artifacts

    from flows.artifacts import publish_run_artifacts

    monkeypatch.setattr(prefect.artifacts, "create_table_artifact", lambda **k: None)
    monkeypatch.setattr(prefect.artifacts, "create_link_artifact", lambda **k: pytest.fail("nothing to link"))
    summary = {"flow": "build_features", "status": "completed", "seconds": 1.0, "parameters": {},
               "stages": [{"stage": "features", "day": "2026-11-01", "seconds": 1.0, "rows": {"a": 1}}]}
    assert publish_run_artifacts(summary, settings) == ["build-features-run", "build-features-days"]

"""What a pipeline run shows besides its work: the progress bar over a backfill's days
(flows/stages.py) and the Prefect table and link artifacts of its summary (flows/artifacts.py)."""

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
             "metrics": {"click": {"auc": 0.71, "gauc": 0.6, "calibration": 1.02}},
             "champion": {"version": 1, "metrics": {"click": {"auc": 0.7}}}, "oracle": {"click": 0.8},
             "gates": [{"name": "data", "passed": True, "value": 0.1, "threshold": 0.2, "reason": "ok"},
                       {"name": "model", "passed": False, "value": None, "threshold": None, "reason": "AUC fell"}],
             "registered": {"name": "adsrec-ranker", "version": 2, "run_id": "abc123", "experiment_id": "7",
                            "aliases": []},
             "ui": {"mlflow": "http://127.0.0.1:5000"}}
    return {"flow": "daily", "status": "completed", "seconds": 12.0, "parameters": {"run_date": "2026-11-02",
            "force": False}, "stages": [ingest, gates]}


def test_a_run_publishes_tables_and_links_not_a_text_dump(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.artifacts

    from flows.artifacts import publish_run_artifacts

    tables: dict[str, Any] = {}
    links: dict[str, tuple[str, str]] = {}
    monkeypatch.setattr(prefect.artifacts, "create_table_artifact",
                        lambda table, key, description: tables.__setitem__(key, table))
    monkeypatch.setattr(prefect.artifacts, "create_link_artifact",
                        lambda link, link_text, key, description: links.__setitem__(key, (link, link_text)))
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact",
                        lambda *a, **k: pytest.fail("no markdown text dump any more"))

    keys = publish_run_artifacts(_daily_summary(), settings)
    assert set(tables) == {"daily-run", "daily-days", "daily-metrics", "daily-gates"}
    assert set(keys) == set(tables) | set(links)
    assert tables["daily-run"] == [{"flow": "daily", "status": "completed", "seconds": 12.0,
                                    "run_date": "2026-11-02", "force": "False"}]
    assert tables["daily-days"][0]["impressions"] == "90" and tables["daily-days"][0]["expect."] == "pass"
    assert tables["daily-metrics"] == [{"task": "click", "auc": 0.71, "champion_auc": 0.7, "oracle_auc": 0.8,
                                        "gauc": 0.6, "champion_gauc": None, "calibration": 1.02,
                                        "champion_calibration": None}]
    assert [(g["gate"], g["passed"], g["reason"]) for g in tables["daily-gates"]] == [
        ("data", True, "ok"), ("model", False, "AUC fell")]
    assert links == {
        "daily-mlflow-run": ("http://127.0.0.1:5000/#/experiments/7/runs/abc123", "MLflow run abc123"),
        "daily-model-version": ("http://127.0.0.1:5000/#/models/adsrec-ranker/versions/2", "adsrec-ranker version 2"),
        "daily-data-docs": ("http://127.0.0.1:5100/index.html", "Great Expectations Data Docs"),
    }
    assert not any("{'" in str(v) for table in tables.values() for row in table for v in row.values())


def test_a_run_without_gates_or_ingest_links_nothing(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.artifacts

    from flows.artifacts import publish_run_artifacts

    monkeypatch.setattr(prefect.artifacts, "create_table_artifact", lambda **k: None)
    monkeypatch.setattr(prefect.artifacts, "create_link_artifact", lambda **k: pytest.fail("nothing to link"))
    summary = {"flow": "build_features", "status": "completed", "seconds": 1.0, "parameters": {},
               "stages": [{"stage": "features", "day": "2026-11-01", "seconds": 1.0, "rows": {"a": 1}}]}
    assert publish_run_artifacts(summary, settings) == ["build-features-run", "build-features-days"]

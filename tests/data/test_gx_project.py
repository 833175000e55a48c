"""The file-backed Great Expectations project (validation/gx_project.py): suites, checkpoints and Data Docs
written by ingestion, linked from the run summary, served by ``adsrec up``; the fast expectations."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from tests.conftest import REPO, SHARED_DATA

DAY = dt.date(2026, 11, 1)
TABLES = ("impressions", "ads", "users")


@pytest.fixture()
def sim_settings(tmp_path: Path) -> Any:
    """A tiny simulated marketplace in its own ADSREC_HOME."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    from components.config import load_settings

    return load_settings(environ={}, overrides={
        "home": str(tmp_path / "home"),
        "pipeline": {"shared_data": str(SHARED_DATA), "start_date": DAY.isoformat()},
        "simulator": {"n_users": 150, "sessions_per_user_day": 2.0, "n_initial_ads": 300, "new_ads_per_day": 20},
    }).resolved()


def _impressions(n: int, day: dt.date = DAY) -> pa.Table:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
    return pa.table({
        "event_time": pa.array([start + dt.timedelta(seconds=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
        "request_id": pa.array([f"r{i}" for i in range(n)]),
        "user_id": pa.array(range(n), pa.int64()),
        "click": pa.array([int(i % 4 == 0) for i in range(n)], pa.int8()),
    })


def _spec(table: pa.Table, labels: tuple[str, ...] = ("click",), bounds: tuple[float, float] = (0.01, 0.5),
          day: dt.date = DAY) -> Any:
    from validation.expectations import BatchSpec, gx_type_name

    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
    return BatchSpec(table="impressions", column_types={f.name: n for f in table.schema if (n := gx_type_name(f.type))},
                     not_null=("event_time", "request_id", "user_id"), unique=("request_id",), labels=labels,
                     label_rate_bounds={t: bounds for t in labels}, time_column="event_time",
                     time_min=start, time_max=start + dt.timedelta(days=1), min_rows=1)


# --- ingestion writes the project and the Data Docs; the summary links them ------------------------------

def test_ingested_day_is_in_the_gx_project_data_docs_and_run_summary(sim_settings: Any) -> None:
    from components import steps
    from components.runs import RunSummary
    from flows.report import render_summary
    from flows.services import data_docs_url
    from flows.stages import record_stage
    from flows.summaries import link_data_docs

    steps.deliver_day(sim_settings, DAY)
    result = steps.ingest(sim_settings, DAY)
    assert result["expectations_passed"], result

    gx_dir = sim_settings.home / "gx"
    assert gx_dir == sim_settings.gx_dir
    assert (gx_dir / "great_expectations.yml").is_file()
    for table in TABLES:
        suite = json.loads((gx_dir / "expectations" / f"{table}_ingest.json").read_text())
        assert suite["name"] == f"{table}_ingest" and suite["expectations"]
        checkpoint = json.loads((gx_dir / "checkpoints" / f"{table}_ingest.json").read_text())
        assert [a["type"] for a in checkpoint["actions"]] == ["update_data_docs"]
        results = list((gx_dir / "uncommitted" / "validations" / f"{table}_ingest" / DAY.isoformat()).rglob("*.json"))
        assert len(results) == 1, results
        stored = json.loads(results[0].read_text())
        assert stored["success"] is True and stored["meta"]["run_id"]["run_name"] == DAY.isoformat()
    # The window is a suite parameter: the stored suite names no date.
    imp = (gx_dir / "expectations" / "impressions_ingest.json").read_text()
    assert "$PARAMETER" in imp and DAY.isoformat() not in imp

    index = gx_dir / "uncommitted" / "data_docs" / "local_site" / "index.html"
    page = index.read_text()
    for table in TABLES:
        assert f"validations/{table}_ingest/{DAY.isoformat()}/" in page  # the day's result, linked
    pages = list((index.parent / "validations" / "impressions_ingest" / DAY.isoformat()).rglob("*.html"))
    assert len(pages) == 1 and "request_id" in pages[0].read_text()

    summary = RunSummary("ingest_day", {"run_date": DAY})
    record_stage(summary, "ingest", DAY, result)
    link_data_docs(summary, sim_settings)
    text = render_summary(json.loads(json.dumps(summary.to_dict(), default=str)))
    assert str(index) in text and data_docs_url(sim_settings) in text, text


def test_a_rerun_adds_a_result_and_keeps_the_suite_file(sim_settings: Any, capfd: pytest.CaptureFixture) -> None:
    """Re-validating the same spec leaves the stored suite untouched; a changed spec (a new task, other
    bounds) updates it, and the checkpoint runs the updated suite. GX prints no progress bars."""
    from validation.expectations import validate_batch

    gx_dir = sim_settings.gx_dir
    table = _impressions(40)
    validate_batch(table, _spec(table), gx_dir=gx_dir, run_name="a")
    suite_file = gx_dir / "expectations" / "impressions_ingest.json"
    before = (suite_file.read_text(), suite_file.stat().st_mtime_ns)
    validate_batch(table, _spec(table), gx_dir=gx_dir, run_name="b")
    assert (suite_file.read_text(), suite_file.stat().st_mtime_ns) == before

    wider = table.append_column("conversion", pa.array([0] * 40, pa.int8()))
    results = validate_batch(wider, _spec(wider, labels=("click", "conversion"), bounds=(0.0, 0.3)),
                             gx_dir=gx_dir, run_name="c")
    stored = json.loads(suite_file.read_text())
    assert json.loads(before[0])["id"] == stored["id"]  # the same suite, updated
    assert any(e["kwargs"].get("column") == "conversion" for e in stored["expectations"])
    rate = next(r for r in results if r.name == "expect_column_mean_to_be_between" and r.column == "conversion")
    assert rate.success and rate.bounds == {"min_value": 0.0, "max_value": 0.3}
    runs = sorted(p.name for p in (gx_dir / "uncommitted" / "validations" / "impressions_ingest").iterdir())
    assert runs == ["a", "b", "c"]
    assert "Calculating Metrics" not in capfd.readouterr().err  # GX's tqdm bars stay off


# --- the expectations still catch what they must -------------------------------------------------------

def test_each_broken_rule_fails_its_expectation_with_what_was_observed(tmp_path: Path) -> None:
    from validation.expectations import validate_batch

    table = _impressions(30)
    rid = table["request_id"].to_pylist()
    rid[3] = rid[4] = rid[5] = "dup"  # three rows share an id
    rid[6] = None
    click = table["click"].to_pylist()
    click[7] = 2
    times = table["event_time"].to_pylist()
    times[8] = times[8] + dt.timedelta(days=1)  # the next day: outside [start, end)
    bad = (table.set_column(1, "request_id", pa.array(rid))
                .set_column(3, "click", pa.array(click, pa.int8()))
                .set_column(0, "event_time", pa.array(times, pa.timestamp("us", tz="UTC"))))
    for gx_dir in (None, tmp_path / "home" / "gx"):  # in memory, and through the stored checkpoint
        failed = {(r.name, r.column): r for r in validate_batch(bad, _spec(bad), gx_dir=gx_dir) if not r.success}
        assert set(failed) == {
            ("expect_column_values_to_be_unique", "request_id"),
            ("expect_column_values_to_not_be_null", "request_id"),
            ("expect_column_max_to_be_between", "click"),
            ("expect_column_max_to_be_between", "event_time"),
        }, failed
        assert failed[("expect_column_values_to_be_unique", "request_id")].unexpected_count == 3
        assert failed[("expect_column_values_to_not_be_null", "request_id")].unexpected_count == 1
        assert failed[("expect_column_max_to_be_between", "click")].observed == 2
        assert failed[("expect_column_max_to_be_between", "event_time")].observed.startswith("2026-11-02")
        assert "FAILED" in failed[("expect_column_values_to_be_unique", "request_id")].sentence()


def test_repeated_rows_counts_exactly_and_ignores_nulls() -> None:
    import pandas as pd

    from validation.gx_expectations import repeated_rows

    strings = pd.Series(pa.array(["a", "b", None, "a", "c", None, "a"]), dtype=pd.ArrowDtype(pa.string()))
    assert repeated_rows(strings) == 3
    assert repeated_rows(pd.Series(["x", "y", None], dtype=object)) == 0
    assert repeated_rows(pd.Series([5, 1, 5, 2, 1], dtype="int64")) == 4
    assert repeated_rows(pd.Series([1.0, None, 2.0])) == 0
    assert repeated_rows(pd.Series([], dtype="int64")) == 0


# --- concurrency ------------------------------------------------------------------------------------------

_CHILD = """
import datetime as dt, sys
sys.path.insert(0, {repo!r})
from tests.data.test_gx_project import _impressions, _spec
from validation.expectations import validate_batch
t = _impressions(50)
for i in range(2):
    assert all(r.success for r in validate_batch(t, _spec(t), gx_dir={gx!r}, run_name="proc-{n}-%d" % i))
"""


def test_threads_and_processes_validate_into_one_project_without_corrupting_it(tmp_path: Path) -> None:
    from validation import gx_project
    from validation.expectations import validate_batch

    gx_dir = tmp_path / "home" / "gx"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Another process (it imports GX first, so its writes overlap the threads' ones) and four threads.
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD.format(repo=str(REPO), gx=str(gx_dir), n=n)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for n in range(1)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            t = _impressions(50)
            assert all(r.success for r in validate_batch(t, _spec(t), gx_dir=gx_dir, run_name=f"thread-{n}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out.decode(errors="replace")[-3000:]
    assert not errors, errors

    runs = gx_dir / "uncommitted" / "validations" / "impressions_ingest"
    assert sorted(p.name for p in runs.iterdir()) == sorted(
        [f"thread-{n}" for n in range(4)] + [f"proc-0-{i}" for i in range(2)])
    for result in runs.rglob("*.json"):
        assert json.loads(result.read_text())["success"] is True
    # The stored objects still point at each other: checkpoint -> validation definition -> the yml's
    # batch definition and the stored suite.
    yml = yaml.safe_load((gx_dir / "great_expectations.yml").read_text())
    asset = yml["fluent_datasources"]["adsrec_ingest"]["assets"]["impressions"]
    definition = json.loads((gx_dir / "validation_definitions" / "impressions_ingest.json").read_text())
    checkpoint = json.loads((gx_dir / "checkpoints" / "impressions_ingest.json").read_text())
    suite = json.loads((gx_dir / "expectations" / "impressions_ingest.json").read_text())
    assert checkpoint["validation_definitions"] == [{"id": definition["id"], "name": "impressions_ingest"}]
    assert definition["data"]["batch_definition"]["id"] == asset["batch_definitions"]["whole_batch"]["id"]
    assert definition["suite"]["id"] == suite["id"]
    index = gx_project.build_data_docs(gx_dir).read_text()
    assert all(f"impressions_ingest/thread-{n}/" in index for n in range(4))
    assert "impressions_ingest/proc-0-1/" in index


# --- adsrec up serves the Data Docs ------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_up_serves_the_data_docs_on_loopback_and_down_stops_the_server(settings: Any) -> None:
    from flows import services
    from validation.expectations import validate_batch

    table = _impressions(20)
    validate_batch(table, _spec(table), gx_dir=settings.gx_dir, run_name=DAY.isoformat())
    settings.deploy.data_docs_port = _free_port()
    statuses = services.up(settings, only=("data_docs",), timeout=30, echo=lambda _: None)
    try:
        assert [s.name for s in statuses if s.running and s.healthy] == ["data_docs"], services.describe(statuses)
        url = services.data_docs_url(settings)
        assert url == f"http://127.0.0.1:{settings.deploy.data_docs_port}/index.html"
        assert services.urls(settings)["Data Docs"] == url
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
            page = resp.read().decode()
            assert resp.status == 200
        assert f"validations/impressions_ingest/{DAY.isoformat()}/" in page
        assert "data_docs" in services.describe(services.status(settings))
    finally:
        outcome = services.down(settings, grace=5, echo=lambda _: None)
    assert outcome == {"data_docs": "stopped"}
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", settings.deploy.data_docs_port))  # nothing listens any more


def test_up_refuses_an_unknown_service(settings: Any) -> None:
    from flows import services

    with pytest.raises(services.ServiceError, match="unknown or disabled service.*nope"):
        services.up(settings, only=("nope",), echo=lambda _: None)


def test_an_allowed_empty_batch_measures_nothing_and_a_null_int_column_keeps_its_type() -> None:
    """An empty day the policy allows passes (no min/max/mean of nothing); with min_rows it fails. An
    int64 column of nulls (a log without advertisers) is int64, not pandas' float64."""
    import datetime as dt

    import pyarrow as pa

    from validation.expectations import BatchSpec, validate_batch

    day = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    empty = pa.table({"like": pa.array([], pa.int8()), "event_time": pa.array([], pa.timestamp("us", tz="UTC"))})
    spec = BatchSpec(table="impressions", column_types={"like": "int8"}, labels=("like",), time_column="event_time",
                     time_min=day, time_max=day + dt.timedelta(days=1))
    assert all(r.success for r in validate_batch(empty, spec))
    strict = BatchSpec(**{**spec.__dict__, "min_rows": 1})
    assert not all(r.success for r in validate_batch(empty, strict))
    ads = pa.table({"ad_id": pa.array([1, 2], pa.int64()), "advertiser_id": pa.array([None, None], pa.int64())})
    results = validate_batch(ads, BatchSpec(table="ads", column_types={"ad_id": "int64", "advertiser_id": "int64"},
                                            not_null=("ad_id",)))
    assert all(r.success for r in results), [r.sentence() for r in results]

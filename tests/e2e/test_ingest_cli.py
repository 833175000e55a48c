"""The fuzz cases through the ``adsrec`` command line: a bad re-delivery exits non-zero with ONE line that
names the file, the reason and the path of the JSON report; the landed day survives; a data error is
not retried; an upper-case extension is picked up without ``--force``.

The raw landing zone is written by the test (that is what the fuzz corrupted), so the configured source
is replaced by one whose ``deliver`` leaves the landing zone as it is.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.data.test_ingest import DAY, SOURCE, TASKS, imp_table, impressions, land
from tests.data.test_ingest_failures import BAD_DELIVERIES, land_good_day, snapshot

pytestmark = [pytest.mark.flows]


class LandedSource:
    """A source whose days are already in the landing zone: ``deliver`` writes nothing."""

    name = SOURCE
    tasks = tuple(TASKS)

    def available_days(self) -> tuple[dt.date, dt.date]:
        return DAY, DAY + dt.timedelta(days=30)

    def deliver(self, day: dt.date) -> dict[str, int]:
        return {}


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture()
def cli(settings, prefect_api: None, monkeypatch: pytest.MonkeyPatch):
    """Invoke ``adsrec`` on ``settings.home`` with the landed-zone source; returns (invoke, calls) where
    ``calls`` counts ingest_day runs."""
    import components.ingest.day as ingest_mod
    from components import steps
    from flows.cli.main import app

    monkeypatch.setattr(steps, "_source", lambda s: LandedSource())
    calls: list[dt.date] = []
    real = ingest_mod.ingest_day

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_mod, "ingest_day", counted)
    saved = dict(os.environ)
    os.environ["ADSREC_HOME"] = str(settings.home)
    os.environ["ADSREC_INGEST__MAX_QUARANTINE_RATE"] = str(settings.ingest.max_quarantine_rate)

    def invoke(*args: str):  # noqa: ANN202
        return CliRunner().invoke(app, list(args))

    try:
        yield invoke, calls
    finally:
        os.environ.clear()
        os.environ.update(saved)


def error_line(result) -> str:  # noqa: ANN001
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("spoil", BAD_DELIVERIES, ids=lambda f: f.__name__)
def test_bad_redelivery_exits_non_zero_naming_file_and_report(settings, cli, spoil) -> None:
    invoke, calls = cli
    land_good_day(settings)
    first = invoke("ingest", "--date", DAY.isoformat())
    assert first.exit_code == 0, first.output
    before = snapshot(settings)

    named = spoil(settings)
    calls.clear()
    res = invoke("ingest", "--date", DAY.isoformat())
    assert res.exit_code == 1, res.output
    line = error_line(res)
    assert "FAILED" in line and named in line and "kept" in line
    report = Path(line.split("report: ")[1].strip())
    assert report.is_file() and report.name == "ingest_report.json"
    assert snapshot(settings) == before
    assert calls == [DAY], "a data error must not be retried"


def test_backfill_and_a_failing_first_day(settings, cli) -> None:
    invoke, _ = cli
    land(settings, "impressions", "a.parquet", imp_table(impressions(200)).drop_columns(["position"]))
    res = invoke("backfill", "--start-date", DAY.isoformat(), "--end-date", DAY.isoformat(),
                 "--no-representations")
    assert res.exit_code == 1, res.output
    line = error_line(res)
    assert "a.parquet" in line and "position" in line and "report: " in line


def test_upper_case_extension_is_not_skipped_as_unchanged(settings, cli) -> None:
    import pyarrow.parquet as pq

    from components.schemas import day_dir

    invoke, _ = cli
    land_good_day(settings)
    assert invoke("ingest", "--date", DAY.isoformat()).exit_code == 0
    land(settings, "impressions", "part-1.PARQUET", imp_table(impressions(10, first_id=1000)))
    res = invoke("ingest", "--date", DAY.isoformat())
    assert res.exit_code == 0, res.output
    assert "unchanged inputs" not in res.output
    part = day_dir(settings.offline_dir, "impressions", DAY) / "part-0.parquet"
    assert pq.read_metadata(part).num_rows == 210

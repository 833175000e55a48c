"""Validated ingestion: every class of bad input is quarantined with a reason naming the file and the
column, counts reconcile (rows in = landed + quarantined), valid rows of the same batch still land,
partition writes are atomic, and re-running a day changes nothing."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from components import storage
from components.ingest.day import ingest_day
from components.store.offline import quarantine_summary, read_offline
from components.schemas import ADS, TIMESTAMP, USERS, day_dir, impressions_schema

SOURCE = "test"
DAY = dt.date(2026, 11, 1)
TASKS = ["click", "conversion"]


# ------------------------------------------------------------------------------------------------
# fixtures: small contract tables written into the raw landing zone
# ------------------------------------------------------------------------------------------------


def _at(day: dt.date, hours: float) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc) + dt.timedelta(hours=hours)


def impressions(n: int, day: dt.date = DAY, first_id: int = 0, prefix: str = "r") -> dict[str, list]:
    """``n`` valid impressions of ``day`` as columns (a dict, so tests can spoil single values)."""
    return {
        "event_time": [_at(day, 23 * i / max(n, 1)) for i in range(n)],
        "request_id": [f"{prefix}{first_id + i}" for i in range(n)],
        "user_id": [100 + i % 7 for i in range(n)],
        "ad_id": [500 + i % 5 for i in range(n)],
        "slot": ["feed", "search"] * (n // 2) + ["feed"] * (n % 2),
        "position": [1 + i % 5 for i in range(n)],
        "exposure_index": [1] * n,
        "click": [1 if i % 4 == 0 else 0 for i in range(n)],  # rate 0.25: inside the default bounds
        "conversion": [1 if i % 8 == 0 else 0 for i in range(n)],
    }


def imp_table(cols: dict[str, list]) -> pa.Table:
    """Typed like the contract unless a column was replaced by something else on purpose."""
    schema = impressions_schema(TASKS)
    arrays = {}
    for name, values in cols.items():
        try:
            arrays[name] = pa.array(values, schema.field(name).type if name in schema.names else None)
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError):
            arrays[name] = pa.array(values)
    return pa.table(arrays)


def ads(ids: list[int], day: dt.date = DAY, title: str = "ad", **extra: list) -> pa.Table:
    n = len(ids)
    cols = {
        "ad_id": pa.array(ids, pa.int64()),
        "advertiser_id": pa.array([7] * n, pa.int64()),
        "campaign_id": pa.array([70] * n, pa.int64()),
        "title": [f"{title} {i}" for i in ids],
        "image": pa.array([b"\xff\xd8\xff\xe0jpeg"] * n, pa.binary()),
        "bid": pa.array([0.5] * n, pa.float64()),
        "created_at": pa.array([_at(day, 1)] * n, TIMESTAMP),
    }
    return pa.table({**cols, **{k: pa.array(v) for k, v in extra.items()}})


def users(ids: list[int], day: dt.date = DAY, **extra: list) -> pa.Table:
    n = len(ids)
    cols = {"user_id": pa.array(ids, pa.int64()), "created_at": pa.array([_at(day, 2)] * n, TIMESTAMP)}
    return pa.table({**cols, **{k: pa.array(v) for k, v in extra.items()}})


def land(settings, table: str, name: str, data: pa.Table, day: dt.date = DAY) -> Path:
    folder = day_dir(settings.raw_dir / SOURCE, table, day)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if name.endswith(".csv"):
        pacsv.write_csv(data, path)
    else:
        pq.write_table(data, path)
    return path


def land_dims(settings, day: dt.date = DAY) -> None:
    land(settings, "ads", "ads.parquet", ads([500, 501, 502, 503, 504], day))
    land(settings, "users", "users.parquet", users(list(range(100, 107)), day))


@pytest.fixture()
def settings(settings):
    """These tests look at row-level rejects in tiny batches: a high quarantine share must not fail the
    day here (the day-level policy has its own tests, tests/data/test_ingest_failures.py)."""
    settings.ingest.max_quarantine_rate = 1.0
    return settings


def run(settings, day: dt.date = DAY):
    return ingest_day(settings, SOURCE, day, TASKS)


def quarantined(settings, table: str = "impressions", day: dt.date = DAY) -> pa.Table:
    return pq.read_table(day_dir(settings.quarantine_dir, table, day) / "part-0.parquet")


def landed(settings, table: str = "impressions", day: dt.date = DAY) -> pa.Table:
    return pq.read_table(day_dir(settings.offline_dir, table, day) / "part-0.parquet")


def assert_reconciles(report) -> None:
    for t in report.tables.values():
        assert t.rows_in == t.rows_landed + t.rows_quarantined, t.table
        assert sum(t.reasons.values()) == t.rows_quarantined, t.table


def messages(report, table: str = "impressions") -> str:
    t = report.tables[table]
    return "\n".join(t.warnings + t.errors)


# ------------------------------------------------------------------------------------------------
# the happy path
# ------------------------------------------------------------------------------------------------


def test_clean_day_lands_every_row_with_contract_types(settings) -> None:
    land(settings, "impressions", "part-0.parquet", imp_table(impressions(40)))
    land_dims(settings)
    report = run(settings)

    assert_reconciles(report)
    imp = report.tables["impressions"]
    assert (imp.rows_in, imp.rows_landed, imp.rows_quarantined) == (40, 40, 0)
    assert landed(settings).schema == impressions_schema(TASKS)
    assert landed(settings, "ads").schema == ADS.required
    assert landed(settings, "users").schema == USERS.required
    assert report.expectations_passed and imp.expectations
    names = {(e.name, e.column) for e in imp.expectations}
    assert ("expect_column_mean_to_be_between", "click") in names
    assert ("expect_column_values_to_be_unique", "request_id") in names
    rate = next(e for e in imp.expectations if e.name == "expect_column_mean_to_be_between" and e.column == "click")
    assert rate.observed == pytest.approx(10 / 40)
    # JSON all the way down, and the copy written beside the quarantine says the same
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["tables"]["impressions"]["rows_landed"] == 40
    on_disk = json.loads((day_dir(settings.quarantine_dir, "_reports", DAY) / "ingest_report.json").read_text())
    assert on_disk["rows_landed"] == report.rows_landed == 40 + 5 + 7
    assert quarantined(settings).num_rows == 0


# ------------------------------------------------------------------------------------------------
# every class of bad input
# ------------------------------------------------------------------------------------------------


def test_missing_required_column_rejects_that_file_only(settings) -> None:
    land(settings, "impressions", "a.parquet", imp_table(impressions(10)))
    no_slot = impressions(6, first_id=100)
    del no_slot["slot"]
    land(settings, "impressions", "b.parquet", imp_table(no_slot))
    report = run(settings)

    assert_reconciles(report)
    imp = report.tables["impressions"]
    assert (imp.rows_in, imp.rows_landed, imp.rows_quarantined) == (16, 10, 6)
    assert imp.reasons == {"missing_column: slot": 6}
    assert any("b.parquet" in e and "slot" in e and "6 rows" in e for e in imp.errors)
    q = quarantined(settings)
    assert set(q.column("source_file").to_pylist()) == {"b.parquet"}
    assert sorted(q.column("request_id").to_pylist()) == sorted(f"r{i}" for i in range(100, 106))
    assert landed(settings).column("request_id").to_pylist() == [f"r{i}" for i in range(10)]


def test_values_of_the_wrong_type_are_rejected_naming_column_and_type(settings) -> None:
    cols = impressions(8)
    cols["position"] = ["1", "2", "abc", "4", "1.5", "6", "7", "8"]  # text column: two values are not int32
    land(settings, "impressions", "mixed.parquet", imp_table(cols))
    report = run(settings)

    assert_reconciles(report)
    imp = report.tables["impressions"]
    assert (imp.rows_landed, imp.rows_quarantined) == (6, 2)
    assert imp.reasons == {"wrong_type: position (expected int32)": 2}
    assert any("mixed.parquet" in w and "position" in w and "int32" in w and "'abc'" in w for w in imp.warnings)
    q = quarantined(settings)
    assert q.column("position").to_pylist() == ["abc", "1.5"]  # as delivered
    assert q.column("row_index").to_pylist() == [2, 4]
    out = landed(settings)
    assert out.schema.field("position").type == pa.int32()
    assert out.column("position").to_pylist() == [1, 2, 4, 6, 7, 8]


def test_a_column_whose_type_cannot_be_cast_fails_its_file(settings) -> None:
    land(settings, "impressions", "good.parquet", imp_table(impressions(5)))
    epoch = impressions(4, first_id=50)
    seconds = pa.array([1_793_000_000 + i for i in range(4)], pa.int64())  # epoch: unit ambiguous, never guessed
    land(settings, "impressions", "epoch.parquet", imp_table(epoch).set_column(0, "event_time", seconds))
    report = run(settings)

    assert_reconciles(report)
    imp = report.tables["impressions"]
    assert (imp.rows_landed, imp.rows_quarantined) == (5, 4)
    assert imp.reasons == {"uncastable_column: event_time (int64 -> timestamp[us, tz=UTC])": 4}
    assert any("epoch.parquet" in e and "event_time" in e and "int64" in e for e in imp.errors)
    assert landed(settings).num_rows == 5


def test_null_and_empty_keys_are_rejected(settings) -> None:
    cols = impressions(6)
    cols["user_id"][1] = None
    cols["request_id"][3] = ""
    cols["event_time"][4] = None
    land(settings, "impressions", "keys.parquet", imp_table(cols))
    report = run(settings)

    assert_reconciles(report)
    imp = report.tables["impressions"]
    assert imp.reasons == {"null_key: user_id": 1, "null_key: request_id": 1, "null_key: event_time": 1}
    assert any("keys.parquet" in w and "user_id" in w and "null" in w for w in imp.warnings)
    assert landed(settings).column("request_id").to_pylist() == ["r0", "r2", "r5"]


def test_labels_outside_0_1_are_rejected(settings) -> None:
    cols = impressions(6)
    cols["click"][0] = 2
    cols["conversion"][2] = None
    land(settings, "impressions", "labels.parquet", imp_table(cols))
    report = run(settings)

    assert_reconciles(report)
    imp = report.tables["impressions"]
    assert imp.reasons == {"label_not_0_1: click": 1, "label_not_0_1: conversion": 1}
    assert any("labels.parquet" in w and "click" in w and "0/1" in w for w in imp.warnings)
    q = quarantined(settings)
    assert dict(zip(q.column("request_id").to_pylist(), q.column("reason").to_pylist())) == {
        "r0": "label_not_0_1: click", "r2": "label_not_0_1: conversion"}
    assert landed(settings).num_rows == 4


def test_timestamps_outside_the_run_window_and_late_tolerance(settings) -> None:
    cols = impressions(6)
    cols["event_time"][0] = _at(DAY, -0.5)  # the evening before
    cols["event_time"][1] = _at(DAY, 24.0)  # exactly the next midnight: outside [day, next day)
    cols["event_time"][2] = _at(DAY, 24.5)  # 30 min late
    land(settings, "impressions", "window.parquet", imp_table(cols))
    report = run(settings)

    assert_reconciles(report)
    imp = report.tables["impressions"]
    assert imp.reasons == {"outside_window: event_time": 3}
    assert any("window.parquet" in w and "event_time" in w and "2026-11-02T00:00:00+00:00" in w for w in imp.warnings)
    assert landed(settings).column("request_id").to_pylist() == ["r3", "r4", "r5"]

    settings.ingest.late_tolerance_hours = 1.0  # late events up to 01:00 next day are accepted
    report = run(settings)
    assert_reconciles(report)
    assert report.tables["impressions"].reasons == {"outside_window: event_time": 1}
    assert landed(settings).column("request_id").to_pylist() == ["r1", "r2", "r3", "r4", "r5"]


def test_duplicate_request_id_within_the_day_keeps_the_first(settings) -> None:
    land(settings, "impressions", "a.parquet", imp_table(impressions(5)))
    again = impressions(4, first_id=3)  # r3, r4 repeat a.parquet; r5, r6 are new
    again["request_id"][3] = "r5"  # ...and r5 repeats inside the file too
    land(settings, "impressions", "b.parquet", imp_table(again))
    report = run(settings)

    assert_reconciles(report)
    imp = report.tables["impressions"]
    assert imp.reasons == {"duplicate_in_batch: request_id": 3}
    q = quarantined(settings)
    assert q.column("request_id").to_pylist() == ["r3", "r4", "r5"]
    assert q.column("detail").to_pylist() == ["kept the first: a.parquet row 3", "kept the first: a.parquet row 4",
                                              "kept the first: b.parquet row 2"]
    assert any("b.parquet" in w and "request_id" in w for w in imp.warnings)
    assert landed(settings).column("request_id").to_pylist() == ["r0", "r1", "r2", "r3", "r4", "r5"]


def test_request_id_already_landed_on_another_day_is_rejected(settings) -> None:
    day2 = DAY + dt.timedelta(days=1)
    land(settings, "impressions", "d1.parquet", imp_table(impressions(5)))
    land(settings, "impressions", "d2.parquet", imp_table(impressions(5, day=day2, first_id=3)), day=day2)
    run(settings)
    report = run(settings, day2)

    assert_reconciles(report)
    imp = report.tables["impressions"]
    assert imp.reasons == {"duplicate_landed: request_id": 2}
    q = quarantined(settings, day=day2)
    assert q.column("request_id").to_pylist() == ["r3", "r4"]
    assert q.column("detail").to_pylist() == ["already landed on 2026-11-01"] * 2
    assert landed(settings, day=day2).column("request_id").to_pylist() == ["r5", "r6", "r7"]
    # re-running the first day does not see its own partition as "another day"
    again = run(settings)
    assert again.tables["impressions"].rows_landed == 5 and again.tables["impressions"].reasons == {}
    window = read_offline(settings, "impressions", DAY, day2)
    assert window.num_rows == 8 and len(set(window.column("request_id").to_pylist())) == 8


def test_empty_files_warn_and_land_nothing(settings) -> None:
    land(settings, "impressions", "a.parquet", imp_table(impressions(5)))
    land(settings, "impressions", "b.parquet", impressions_schema(TASKS).empty_table())
    folder = day_dir(settings.raw_dir / SOURCE, "impressions", DAY)
    (folder / "c.csv").write_bytes(b"")
    report = run(settings)

    assert_reconciles(report)
    imp = report.tables["impressions"]
    assert imp.files_empty == ["b.parquet", "c.csv"] and imp.files_failed == {} and imp.errors == []
    assert any("b.parquet" in w and "no rows" in w for w in imp.warnings)
    assert any("c.csv" in w and "empty" in w for w in imp.warnings)
    assert (imp.rows_in, imp.rows_landed) == (5, 5)


def test_unreadable_file_is_kept_verbatim_in_quarantine(settings) -> None:
    land(settings, "impressions", "a.parquet", imp_table(impressions(5)))
    good = land(settings, "impressions", "broken.parquet", imp_table(impressions(3, first_id=10)))
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])  # truncated upload
    report = run(settings)

    assert_reconciles(report)
    imp = report.tables["impressions"]
    assert list(imp.files_failed) == ["broken.parquet"]
    assert any("broken.parquet" in e and "cannot be read" in e for e in imp.errors)
    assert (imp.rows_in, imp.rows_landed, imp.rows_quarantined) == (5, 5, 0)  # its rows are unknown
    kept = day_dir(settings.quarantine_dir, "impressions", DAY) / "files"
    assert (kept / "broken.parquet").read_bytes() == data[: len(data) // 2]
    assert "broken.parquet" in (kept / "broken.parquet.reason.txt").read_text()
    assert quarantine_summary(settings, DAY, DAY)["tables"]["impressions"]["files_quarantined"] == 1


def test_extra_columns_ignored_for_impressions_kept_for_dimensions(settings) -> None:
    cols = impressions(4)
    cols["p_true_click"] = [0.1, 0.2, 0.3, 0.4]  # ground truth must never leak into the store
    land(settings, "impressions", "a.parquet", imp_table(cols))
    land(settings, "ads", "ads.parquet", ads([1, 2], colour=["red", "blue"], tags=[[1], [2]]))
    land(settings, "users", "users.parquet", users([9, 10], age=[31, 45], city=["Oslo", "Lima"]))
    report = run(settings)

    assert_reconciles(report)
    assert report.tables["impressions"].ignored_columns == {"p_true_click": ["a.parquet"]}
    assert any("p_true_click" in w and "ignored" in w and "a.parquet" in w for w in messages(report).split("\n"))
    assert "p_true_click" not in landed(settings).column_names
    assert report.tables["ads"].kept_extra_columns == ["colour"]
    assert report.tables["ads"].ignored_columns == {"tags": ["ads.parquet"]}
    a = landed(settings, "ads")
    assert a.column("colour").to_pylist() == ["red", "blue"] and "tags" not in a.column_names
    u = landed(settings, "users")
    assert u.schema.field("age").type == pa.int64() and u.column("city").to_pylist() == ["Oslo", "Lima"]


def test_dimension_ids_unique_per_day_and_a_later_day_updates_them(settings) -> None:
    day2 = DAY + dt.timedelta(days=1)
    land(settings, "ads", "a.parquet", ads([1, 2, 2], title="v1"))
    land(settings, "ads", "b.parquet", ads([2, 3], title="v1", day=day2), day=day2)
    first = run(settings)
    assert first.tables["ads"].reasons == {"duplicate_in_batch: ad_id": 1}
    assert_reconciles(first)

    late = ads([4], day=day2)  # created after the first day ended
    land(settings, "ads", "c.parquet", late)
    report = run(settings)
    assert report.tables["ads"].reasons == {"duplicate_in_batch: ad_id": 1, "created_after_day: created_at": 1}
    assert any("c.parquet" in w and "created_at" in w for w in report.tables["ads"].warnings)

    pq.write_table(ads([2, 3], title="v2", day=day2), day_dir(settings.raw_dir / SOURCE, "ads", day2) / "b.parquet")
    run(settings, day2)  # an updated row for ad 2: allowed across days
    latest = read_offline(settings, "ads", None, day2, latest=True).sort_by("ad_id")
    assert latest.column("ad_id").to_pylist() == [1, 2, 3]
    assert latest.column("title").to_pylist() == ["v1 1", "v2 2", "v2 3"]
    as_of_day1 = read_offline(settings, "ads", None, DAY, latest=True).sort_by("ad_id")
    assert as_of_day1.column("title").to_pylist() == ["v1 1", "v1 2"]


def test_csv_input_keeps_text_ids_and_rejects_only_bad_values(settings) -> None:
    cols = impressions(4)
    cols["request_id"] = ["007", "008", "009", "010"]
    t = imp_table(cols).set_column(5, "position", pa.array(["1", "2", "x", "4"]))
    land(settings, "impressions", "log.csv", t)
    report = run(settings)

    assert_reconciles(report)
    assert report.tables["impressions"].reasons == {"wrong_type: position (expected int32)": 1}
    out = landed(settings)
    assert out.schema == impressions_schema(TASKS)
    assert out.column("request_id").to_pylist() == ["007", "008", "010"]
    assert out.column("event_time").to_pylist()[0] == _at(DAY, 0)


# ------------------------------------------------------------------------------------------------
# expectations, re-runs, atomic writes, readers
# ------------------------------------------------------------------------------------------------


def test_implausible_label_rate_fails_its_expectation_but_rows_land(settings) -> None:
    cols = impressions(20)
    cols["click"] = [1] * 20  # every impression clicked: rate 1.0 > 0.5
    land(settings, "impressions", "a.parquet", imp_table(cols))
    settings.ingest.label_rate_bounds = {"click": (0.001, 0.5)}  # conversion: the default bounds
    settings.ingest.label_rate_min_rows = 10
    report = run(settings)

    assert not report.expectations_passed and not report.to_dict()["expectations_passed"]
    failed = [e for e in report.tables["impressions"].expectations if not e.success]
    assert [(e.name, e.column, e.observed) for e in failed] == [("expect_column_mean_to_be_between", "click", 1.0)]
    conv = next(e for e in report.tables["impressions"].expectations
                if e.name == "expect_column_mean_to_be_between" and e.column == "conversion")
    assert conv.success and conv.bounds == {"min_value": 0.0, "max_value": 0.99}
    assert any("click" in w and "FAILED" in w and "1.0" in w for w in report.tables["impressions"].warnings)
    assert report.tables["impressions"].rows_landed == 20  # batch expectations report, they do not reject
    summary = quarantine_summary(settings, DAY, DAY)
    assert summary["expectations_passed"] is False and summary["days_failing_expectations"] == [DAY.isoformat()]


def test_rerun_replaces_the_day_identically(settings) -> None:
    cols = impressions(30)
    cols["click"][0] = 5
    land(settings, "impressions", "a.parquet", imp_table(cols))
    land_dims(settings)
    first = run(settings)
    off_bytes = {t: (day_dir(settings.offline_dir, t, DAY) / "part-0.parquet").read_bytes()
                 for t in ("impressions", "ads", "users")}
    q1 = quarantined(settings).drop(["ingested_at"])
    second = run(settings)

    for t, data in off_bytes.items():
        assert (day_dir(settings.offline_dir, t, DAY) / "part-0.parquet").read_bytes() == data, t
    assert quarantined(settings).drop(["ingested_at"]).equals(q1)
    d1, d2 = first.to_dict(), second.to_dict()
    for k in ("rows_in", "rows_landed", "rows_quarantined"):
        assert d1[k] == d2[k]
    assert read_offline(settings, "impressions", DAY, DAY).num_rows == 29  # not 58
    assert quarantine_summary(settings, DAY, DAY)["tables"]["impressions"]["rows_quarantined"] == 1
    leftovers = [p.name for p in (settings.offline_dir / "impressions").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_failed_write_leaves_the_previous_partition_intact(settings, monkeypatch) -> None:
    land(settings, "impressions", "a.parquet", imp_table(impressions(10)))
    run(settings)
    part = day_dir(settings.offline_dir, "impressions", DAY) / "part-0.parquet"
    before = part.read_bytes()

    land(settings, "impressions", "b.parquet", imp_table(impressions(10, first_id=10)))
    real_write = storage.write_parquet_durable

    def write_then_die(table: pa.Table, path: Path) -> None:
        if settings.offline_dir in path.parents:
            path.write_bytes(b"PAR1 half a file")  # the disk filled up mid-write
            raise OSError(28, "No space left on device")
        real_write(table, path)

    monkeypatch.setattr(storage, "write_parquet_durable", write_then_die)
    with pytest.raises(OSError, match="No space left"):
        run(settings)
    assert part.read_bytes() == before
    assert pq.read_table(part).num_rows == 10
    assert [p.name for p in part.parent.parent.iterdir()] == [part.parent.name]  # no temp folder left behind

    monkeypatch.setattr(storage, "write_parquet_durable", real_write)
    assert run(settings).tables["impressions"].rows_landed == 20


def test_read_offline_window_and_quarantine_summary(settings) -> None:
    days = [DAY + dt.timedelta(days=i) for i in range(3)]
    for i, d in enumerate(days):
        cols = impressions(6, day=d, first_id=10 * i)
        cols["user_id"][0] = None
        land(settings, "impressions", "a.parquet", imp_table(cols), day=d)
        run(settings, d)

    assert read_offline(settings, "impressions", days[1], days[2]).num_rows == 10
    sub = read_offline(settings, "impressions", None, days[0], columns=["request_id", "click"],
                       with_partition_date=False)
    assert sub.column_names == ["request_id", "click"] and sub.schema.field("click").type == pa.int8()
    dated = read_offline(settings, "impressions", days[2], days[2], with_partition_date=True)
    assert set(dated.column("partition_date").to_pylist()) == {days[2]}
    assert read_offline(settings, "impressions", DAY - dt.timedelta(days=9), DAY - dt.timedelta(days=8)).schema == \
        impressions_schema(settings.tasks)

    s = quarantine_summary(settings, days[0], days[1])
    imp = s["tables"]["impressions"]
    assert (imp["rows_landed"], imp["rows_quarantined"]) == (10, 2)
    assert imp["reasons"] == {"null_key: user_id": 2}
    assert imp["quarantine_rate"] == pytest.approx(2 / 12)
    assert sorted(s["days"]) == [d.isoformat() for d in days[:2]]
    assert s["expectations_passed"] is True and s["days_not_ingested"] == []

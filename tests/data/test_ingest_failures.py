"""A bad delivery never loses a good day, fails the day with a reason, and null keys never land.

One test per case of the fuzz that found 11 good days replaced by empty ones: a good day lands first,
then a bad re-delivery of it is ingested. The landed partition must survive byte for byte, the delivery
must go to quarantine with its reason, the report must fail the day and counts must reconcile. The same
cases through the ``adsrec`` CLI (tests/e2e/test_ingest_cli.py) check the exit code and the one-line
message. Plus the day-level policies: quarantine-rate bound, empty days, label-rate bounds, and the
cross-day checks (referential, created_at, exposure_index) with their index.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from components.ingest.day import ingest_day
from components.ingest.index import index_path, open_index
from components.store.offline import REJECTED_DIR, quarantine_summary
from components.schemas import day_dir
from tests.data.test_ingest import DAY, SOURCE, TASKS, ads, imp_table, impressions, land, landed, users

N = 200  # rows of the good day: enough for the label-rate bounds to apply
DAY2 = DAY + dt.timedelta(days=1)


def run(settings, day: dt.date = DAY):
    return ingest_day(settings, SOURCE, day, TASKS)


def raw_dir(settings, table: str, day: dt.date = DAY) -> Path:
    return day_dir(settings.raw_dir / SOURCE, table, day)


def land_good_day(settings, day: dt.date = DAY, first_id: int = 0) -> None:
    land(settings, "impressions", "part-0.parquet", imp_table(impressions(N, day=day, first_id=first_id)), day)
    land(settings, "ads", "part-0.parquet", ads([500, 501, 502, 503, 504], day), day)
    land(settings, "users", "part-0.parquet", users(list(range(100, 107)), day), day)


def reconciles(report) -> None:
    for t in report.tables.values():
        assert t.rows_in == t.rows_landed + t.rows_quarantined, t.table
        assert sum(t.reasons.values()) == t.rows_quarantined, t.table


def snapshot(settings, day: dt.date = DAY) -> dict[str, bytes]:
    return {t: (day_dir(settings.offline_dir, t, day) / "part-0.parquet").read_bytes()
            for t in ("impressions", "ads", "users")}


# --- the bad re-deliveries of the fuzz: each takes the settings and returns the file it names ---------------


def truncated_parquet(settings) -> str:
    path = raw_dir(settings, "impressions") / "part-0.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "part-0.parquet"


def csv_renamed_parquet(settings) -> str:
    path = raw_dir(settings, "impressions") / "part-0.parquet"
    pacsv.write_csv(pq.read_table(path), path)
    return "part-0.parquet"


def zero_byte_file(settings) -> str:
    (raw_dir(settings, "impressions") / "part-0.parquet").write_bytes(b"")
    return "part-0.parquet"


def required_column_missing(settings) -> str:
    path = raw_dir(settings, "impressions") / "part-0.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["slot"]), path)
    return "part-0.parquet"


def all_rows_uncastable(settings) -> str:
    path = raw_dir(settings, "impressions") / "part-0.parquet"
    t = pq.read_table(path)
    t = t.set_column(t.column_names.index("position"), "position", pa.array(["first"] * t.num_rows))
    pq.write_table(t, path)
    return "part-0.parquet"


def repeated_column_name(settings) -> str:
    path = raw_dir(settings, "impressions") / "part-0.parquet"
    t = pq.read_table(path)
    pq.write_table(t.append_column("click", t.column("click")), path)
    return "part-0.parquet"


def empty_ads_folder(settings) -> str:
    (raw_dir(settings, "ads") / "part-0.parquet").unlink()
    return "ads"


BAD_DELIVERIES = [truncated_parquet, csv_renamed_parquet, zero_byte_file, required_column_missing,
                  all_rows_uncastable, repeated_column_name, empty_ads_folder]


@pytest.mark.parametrize("spoil", BAD_DELIVERIES, ids=lambda f: f.__name__)
def test_a_bad_redelivery_never_replaces_the_good_day(settings, spoil) -> None:
    land_good_day(settings)
    good = run(settings)
    assert not good.failed and good.tables["impressions"].rows_landed == N
    before = snapshot(settings)
    quarantine_before = (day_dir(settings.quarantine_dir, "impressions", DAY) / "part-0.parquet").read_bytes()
    report_before = (day_dir(settings.quarantine_dir, "_reports", DAY) / "ingest_report.json").read_text()

    named = spoil(settings)
    report = run(settings)

    assert report.failed and report.kept_previous and report.status == "kept_previous"
    assert snapshot(settings) == before  # every partition of the day, byte for byte
    assert (day_dir(settings.quarantine_dir, "impressions", DAY) / "part-0.parquet").read_bytes() == quarantine_before
    assert (day_dir(settings.quarantine_dir, "_reports", DAY) / "ingest_report.json").read_text() == report_before
    reconciles(report)
    assert report.rows_landed == 0
    line = report.one_line()
    assert "\n" not in line and "FAILED" in line and named in line and report.report_path in line
    # The delivery is in quarantine: its files unchanged, its rows with their reasons, the report.
    stash = Path(report.report_path).parent
    assert stash.parent == settings.quarantine_dir / REJECTED_DIR / f"date={DAY.isoformat()}"
    assert json.loads(Path(report.report_path).read_text())["status"] == "kept_previous"
    for table in ("impressions", "ads", "users"):
        for f in (raw_dir(settings, table)).iterdir():
            assert (stash / table / "files" / f.name).read_bytes() == f.read_bytes()
        rows = pq.read_table(stash / table / "part-0.parquet")
        assert rows.num_rows == report.tables[table].rows_quarantined
    assert "kept" in (stash / "REASON.txt").read_text()
    assert quarantine_summary(settings, DAY, DAY)["rejected_deliveries"] == {DAY.isoformat(): [str(stash)]}


def test_a_bad_first_delivery_lands_nothing_bad_and_fails(settings) -> None:
    """Nothing landed before: nothing to protect; valid rows of the other files land, the day fails."""
    land(settings, "impressions", "a.parquet", imp_table(impressions(N)))
    land(settings, "impressions", "b.parquet", imp_table(impressions(N, first_id=N)).drop_columns(["slot"]))
    report = run(settings)
    assert report.failed and not report.kept_previous and report.status == "failed"
    assert report.tables["impressions"].rows_landed == N
    assert "b.parquet" in report.one_line() and "missing_column" in json.dumps(report.to_dict()["tables"])
    reconciles(report)


@pytest.mark.parametrize("table,column", [("impressions", c) for c in ("event_time", "request_id", "user_id", "ad_id")]
                         + [("ads", "ad_id"), ("ads", "created_at"), ("users", "user_id"), ("users", "created_at")])
def test_a_null_key_never_lands(settings, table: str, column: str) -> None:
    land_good_day(settings)
    path = raw_dir(settings, table) / "part-0.parquet"
    t = pq.read_table(path)
    values = t.column(column).to_pylist()
    values[1] = None
    t = t.set_column(t.column_names.index(column), column, pa.array(values, t.schema.field(column).type))
    pq.write_table(t, path)
    report = run(settings)

    reconciles(report)
    rep = report.tables[table]
    assert rep.reasons == {f"null_key: {column}": 1}
    assert rep.rows_landed == t.num_rows - 1
    assert landed(settings, table).column(column).null_count == 0


def test_all_null_request_ids_fail_the_day(settings) -> None:
    cols = impressions(N)
    cols["request_id"] = [None] * N
    land(settings, "impressions", "a.parquet", imp_table(cols))
    report = run(settings)
    assert report.failed and report.tables["impressions"].rows_landed == 0
    assert report.tables["impressions"].reasons == {"null_key: request_id": N}
    assert "all 200 rows rejected" in report.one_line() and "a.parquet" in report.one_line()


def test_quarantine_rate_above_the_bound_fails_the_day(settings) -> None:
    cols = impressions(N)
    cols["click"] = [2] * 60 + cols["click"][60:]  # 30% of the rows rejected
    land(settings, "impressions", "a.parquet", imp_table(cols))
    report = run(settings)
    assert report.failed and "above ingest.max_quarantine_rate 25.0%" in report.one_line()
    settings.ingest.max_quarantine_rate = 0.5
    assert not run(settings).failed


def test_empty_day_policy(settings) -> None:
    land(settings, "ads", "a.parquet", ads([500], DAY))
    report = run(settings)  # default "warn": lands empty, passes expectations, says so
    imp = report.tables["impressions"]
    assert not report.failed and report.expectations_passed and imp.rows_landed == 0
    assert any("no rows" in w and "empty_day = warn" in w for w in imp.warnings)
    assert landed(settings).num_rows == 0
    settings.ingest.empty_day = "allow"
    assert not any("ingest.empty_day" in w for w in run(settings).tables["impressions"].warnings)
    settings.ingest.empty_day = "fail"
    land(settings, "ads", "a.parquet", ads([501], DAY2), DAY2)
    report = run(settings, DAY2)  # a new day: nothing landed to keep
    assert report.failed and not report.expectations_passed and "empty_day = fail" in report.one_line()
    assert run(settings).kept_previous  # the day that landed empty under "allow" is kept


def test_label_rate_defaults_pass_real_rates_and_catch_an_all_positive_label(settings) -> None:
    cols = impressions(N)
    cols["click"] = [1 if i % 10 < 6 else 0 for i in range(N)]  # a like-rate of 0.6
    land(settings, "impressions", "a.parquet", imp_table(cols))
    assert run(settings).expectations_passed
    cols["click"] = [1] * N  # a broken label: every row positive
    land(settings, "impressions", "a.parquet", imp_table(cols))
    report = run(settings)
    failed = [e for e in report.tables["impressions"].expectations if not e.success]
    assert [(e.column, e.observed) for e in failed] == [("click", 1.0)]
    small = imp_table({k: v[:20] for k, v in cols.items()})  # 20 rows: too few to judge a rate
    land(settings, "impressions", "a.parquet", small)
    assert run(settings).expectations_passed


def test_upper_case_extension_is_read_and_changes_the_fingerprint(settings) -> None:
    from components.runs import fingerprint_files, files_under

    land(settings, "impressions", "part-0.parquet", imp_table(impressions(10)))
    before = files_under(raw_dir(settings, "impressions"))
    land(settings, "impressions", "part-1.PARQUET", imp_table(impressions(10, first_id=10)))
    after = files_under(raw_dir(settings, "impressions"))
    assert [p.name for p in after] == ["part-0.parquet", "part-1.PARQUET"]
    assert fingerprint_files(before) != fingerprint_files(after)
    assert run(settings).tables["impressions"].rows_landed == 20


# --- created_at after the day, referential and exposure checks ---------------------------------------------


def test_users_created_after_the_day_are_quarantined_and_counted(settings) -> None:
    land(settings, "impressions", "a.parquet", imp_table(impressions(N)))
    land(settings, "users", "u.parquet", users(list(range(100, 107)), DAY2))  # stamped with the export time
    report = run(settings)
    u = report.tables["users"]
    assert u.reasons == {"created_after_day: created_at": 7} and u.rows_landed == 0
    assert report.quarantine_rate == 1.0 and report.quarantine_rates["impressions"] == 0.0
    assert report.failed and "users: all 7 rows rejected" in report.one_line()
    assert any("export time" in w for w in u.warnings)
    detail = pq.read_table(day_dir(settings.quarantine_dir, "users", DAY) / "part-0.parquet").column("detail")
    assert "after the day's end" in detail[0].as_py()


def test_unknown_users_and_ads_are_counted_or_quarantined(settings) -> None:
    land(settings, "ads", "a.parquet", ads([500, 501, 502], DAY))
    land(settings, "users", "u.parquet", users([100, 101, 102, 103], DAY))
    land(settings, "impressions", "i.parquet", imp_table(impressions(N)))  # users 100..106, ads 500..504
    report = run(settings)
    imp = report.tables["impressions"]
    # user_id = 100 + i % 7 -> 104..106 unknown; ad_id = 500 + i % 5 -> 503, 504 unknown
    unknown_users = sum(1 for i in range(N) if i % 7 >= 4)
    unknown_ads = sum(1 for i in range(N) if i % 5 >= 3)
    assert imp.unknown_entities == {"user_id": unknown_users, "ad_id": unknown_ads}
    assert imp.rows_landed == N and any("user_id" in w and "kept" in w for w in imp.warnings)

    # A later day knows the entities landed on earlier days; the day's own new ones count too.
    land(settings, "ads", "a.parquet", ads([503], DAY2), DAY2)
    land(settings, "users", "u.parquet", users([104, 105, 106], DAY2), DAY2)
    land(settings, "impressions", "i.parquet", imp_table(impressions(N, day=DAY2, prefix="s")), DAY2)
    settings.ingest.unknown_entities = "quarantine"
    settings.ingest.max_quarantine_rate = 1.0
    report = run(settings, DAY2)
    imp = report.tables["impressions"]
    only_504 = sum(1 for i in range(N) if i % 5 == 4)
    assert imp.unknown_entities == {"user_id": 0, "ad_id": only_504}
    assert imp.reasons == {"unknown_entity: ad_id": only_504}
    reconciles(report)


def test_exposure_index_not_growing_across_days_is_counted(settings) -> None:
    cols = impressions(N)
    cols["exposure_index"] = [3] * N
    land(settings, "impressions", "i.parquet", imp_table(cols))
    run(settings)
    later = impressions(N, day=DAY2, prefix="s")
    later["exposure_index"] = [3 if i < 50 else 9 for i in range(N)]  # 50 rows repeat index 3
    land(settings, "impressions", "i.parquet", imp_table(later), DAY2)
    report = run(settings, DAY2)
    imp = report.tables["impressions"]
    assert imp.exposure_not_growing == 50 and imp.rows_landed == N
    assert any("exposure_index not greater" in w for w in imp.warnings)


# --- the index stays correct -------------------------------------------------------------------------------


def test_index_follows_a_reingested_day_and_is_rebuilt_when_deleted(settings) -> None:
    land(settings, "impressions", "i.parquet", imp_table(impressions(N)))  # r0..r199 on DAY
    run(settings)
    land(settings, "impressions", "i.parquet", imp_table(impressions(N, day=DAY2, first_id=150)), DAY2)
    assert run(settings, DAY2).tables["impressions"].reasons == {"duplicate_landed: request_id": 50}

    # DAY re-delivered with other ids: r150..r199 are no longer landed anywhere else.
    land(settings, "impressions", "i.parquet", imp_table(impressions(N, prefix="x")))
    assert not run(settings).failed
    assert run(settings, DAY2).tables["impressions"].reasons == {}
    with open_index(settings) as index:
        days = index.con.execute("SELECT day, count(*) FROM requests GROUP BY day ORDER BY day").fetchall()
    assert days == [(DAY, N), (DAY2, N)]

    # Deleted: rebuilt from the offline store on the next ingest, and still catches duplicates.
    index_path(settings).unlink()
    land(settings, "impressions", "i.parquet", imp_table(impressions(10, day=DAY2 + dt.timedelta(days=1),
                                                                     prefix="x")), DAY2 + dt.timedelta(days=1))
    report = run(settings, DAY2 + dt.timedelta(days=1))
    assert report.index["reindexed"] >= 2
    assert report.tables["impressions"].reasons == {"duplicate_landed: request_id": 10}

    # Stale: a partition replaced behind the index's back (another writer, an older version) is re-indexed.
    from components import storage

    part = day_dir(settings.offline_dir, "impressions", DAY) / "part-0.parquet"
    rows = pq.read_table(part).slice(0, 5)
    storage.replace_partition(part.parent, lambda tmp: pq.write_table(rows, tmp / "part-0.parquet"))
    with open_index(settings) as index:
        assert index.synced["reindexed"] == 1
        assert index.con.execute("SELECT count(*) FROM requests WHERE day = ?", [DAY]).fetchone() == (5,)

    # A day deleted by hand is dropped from the index: its ids are free again.
    import shutil

    shutil.rmtree(day_dir(settings.offline_dir, "impressions", DAY2))
    with open_index(settings) as index:
        assert index.synced["dropped"] == 1
        assert index.con.execute("SELECT count(*) FROM requests WHERE day = ?", [DAY2]).fetchone() == (0,)


def test_prefect_retries_io_errors_only() -> None:
    from components.ingest.report import IngestDayFailed
    from flows.stages import retry_on_io_error

    class State:
        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        def result(self):  # noqa: ANN202 - Prefect's State.result() raises the task's exception
            raise self.exc

    assert retry_on_io_error(None, None, State(OSError(5, "Input/output error")))
    assert not retry_on_io_error(None, None, State(IngestDayFailed("ingest x FAILED: ...")))
    assert not retry_on_io_error(None, None, State(FileNotFoundError("no raw files")))
    assert not retry_on_io_error(None, None, State(ValueError("bad config")))


def test_a_hash_hit_is_confirmed_on_the_landed_string(settings) -> None:
    """The index compares 64-bit hashes; a hash that matches (a collision, forged here) but whose
    request_id is not in that day's landed partition must not reject the row."""
    land(settings, "impressions", "i.parquet", imp_table(impressions(N, day=DAY2, prefix="s")), DAY2)
    run(settings, DAY2)
    with open_index(settings) as index:  # pretend r5's hash is a landed id of DAY2
        index.con.execute("INSERT INTO requests SELECT hash('r5'), ?::DATE", [DAY2])
    land(settings, "impressions", "i.parquet", imp_table(impressions(N)))
    report = run(settings)
    assert report.tables["impressions"].reasons == {} and report.tables["impressions"].rows_landed == N

"""The files source (components/sources/files.py): a user's own log, in its own column names, mapped by
YAML alone; read where it lies and never written to.

Code layer: mapping, defaults, snapshot dimensions, negatives, errors. The end-to-end test (a user's
log through ``adsrec backfill`` then ``adsrec daily`` to a registered model) is in
tests/e2e/test_files_source_e2e.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from components.config import load_settings

REPO_ROOT = Path(__file__).resolve().parents[3]
START = dt.date(2025, 3, 1)
DAYS = 8
EMPTY_DAYS = (3, 6)  # day offsets with no impressions at all


def make_user_log(root: Path, seed: int = 0, users: int = 60, items: int = 40, rows_per_day: int = 500) -> dict:
    """A log as a user might export it, in its own column names:

    - ``events/dt=.../`` no: ``events/date=YYYY-MM-DD/part.parquet`` (hive folders, parquet): ``ts`` (unix
      seconds), ``uid``, ``item``, ``liked`` (bool), ``shared`` (0/1); days 3 and 6 have no events (no
      folder at all for day 3, an empty file for day 6);
    - ``catalogue.csv`` (flat CSV): ``item_no``, ``name``, ``added`` ("YYYY/MM/DD HH:MM", most before
      the log starts, a few added during it), no image, no taxonomy;
    - ``accounts.parquet`` (flat parquet): ``account``, ``exported_at`` (the export time, after every
      event: the snapshot case), no profile columns.

    Labels have a learnable signal: users and items fall into 4 groups; a like is likelier in-group.
    Returns the config mapping for the files source.
    """
    rng = np.random.default_rng(seed)
    user_group = rng.integers(0, 4, users)
    item_group = rng.integers(0, 4, items)
    events = root / "events"
    for d in range(DAYS):
        day = START + dt.timedelta(days=d)
        if d == 3:
            continue  # no folder at all
        folder = events / f"date={day.isoformat()}"
        folder.mkdir(parents=True)
        n = 0 if d == 6 else rows_per_day
        u = rng.integers(0, users, n)
        i = rng.integers(0, items - 3 if d < 2 else items, n)  # the last 3 items exist from day 2
        base = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())
        ts = base + rng.integers(0, 86_400, n)
        p_like = np.where(user_group[u] == item_group[i], 0.45, 0.08)
        liked = rng.random(n) < p_like
        shared = (liked & (rng.random(n) < 0.3)).astype(np.int64)
        pq.write_table(pa.table({"ts": pa.array(ts, pa.int64()), "uid": pa.array(u + 1000, pa.int64()),
                                 "item": pa.array(i + 1, pa.int64()), "liked": pa.array(liked),
                                 "shared": pa.array(shared)}), folder / "part.parquet")
    added = [dt.datetime(2024, 1, 1) + dt.timedelta(days=int(x)) for x in rng.integers(0, 300, items)]
    for k in range(items - 3, items):  # a few items added during the log
        added[k] = dt.datetime.combine(START + dt.timedelta(days=2), dt.time(6, 0))
    pacsv.write_csv(pa.table({"item_no": pa.array(np.arange(1, items + 1)),
                              "name": pa.array([f"item {k} of kind {item_group[k - 1]}" for k in range(1, items + 1)]),
                              "added": pa.array([a.strftime("%Y/%m/%d %H:%M") for a in added])}),
                    root / "catalogue.csv")
    export = dt.datetime.combine(START + dt.timedelta(days=DAYS + 30), dt.time(0), tzinfo=dt.timezone.utc)
    pq.write_table(pa.table({"account": pa.array(np.arange(users) + 1000, pa.int64()),
                             "exported_at": pa.array([export] * users, pa.timestamp("us", tz="UTC"))}),
                   root / "accounts.parquet")
    return {
        "name": "userlog",
        "tasks": ["like", "share"],
        "impressions": {"path": str(events), "columns": {
            "event_time": "to_timestamp(ts)", "user_id": "uid", "ad_id": "item",
            "like": "liked", "share": "shared"}},
        "ads": {"path": str(root / "catalogue.csv"), "csv_options": {"types": {"added": "VARCHAR"}}, "columns": {
            "ad_id": "item_no", "title": "name", "created_at": "strptime(added, '%Y/%m/%d %H:%M')"}},
        "users": {"path": str(root / "accounts.parquet"), "columns": {"user_id": "account",
                                                                     "created_at": "exported_at"}},
    }


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (and the set of paths): proof a folder was not touched."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def user_log(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "userdata"
    return root, make_user_log(root)


def _settings(tmp_path: Path, files: dict, **pipeline):
    return load_settings(overrides={"home": str(tmp_path / "home"), "files": files,
                                    "pipeline": {"source": "files", **pipeline}}, environ={}).resolved()


def test_maps_the_users_columns_and_snapshots_the_dimensions(tmp_path: Path, user_log) -> None:
    from components.sources import get_source

    root, files = user_log
    s = _settings(tmp_path, files)
    assert s.tasks == ("like", "share")
    src = get_source(s)
    assert src.available_days() == (START, START + dt.timedelta(days=DAYS - 1))
    first = src.for_day(START)
    imp = first["impressions"]
    assert imp.num_rows == 500
    assert imp.column_names[:9] == ["event_time", "request_id", "user_id", "ad_id", "slot", "position",
                                    "exposure_index", "like", "share"]
    assert pc.all(pc.equal(imp.column("slot"), "default")).as_py()
    assert pc.min(imp.column("exposure_index")).as_py() == 1
    # every catalogue item added before the log is delivered with the first day; the 3 added during it later
    assert first["ads"].num_rows == 37
    assert src.for_day(START + dt.timedelta(days=2))["ads"].num_rows == 3
    assert first["ads"].column("image").null_count == 37  # no images: a typed null column
    # accounts exported after every event: each lands on its first impression's day, at that time
    users = first["users"]
    assert users.num_rows == len(set(imp.column("user_id").to_pylist()))
    assert src.stats["users_created_after_first_impression"] == 60
    days_total = sum(src.for_day(START + dt.timedelta(days=d))["users"].num_rows for d in range(DAYS))
    assert days_total == 60
    # empty days deliver empty tables of the same schema
    assert src.for_day(START + dt.timedelta(days=3))["impressions"].num_rows == 0
    assert src.for_day(START + dt.timedelta(days=6))["impressions"].schema == imp.schema


def test_exposure_index_counts_across_days_and_request_ids_are_unique(tmp_path: Path, user_log) -> None:
    from components.sources import get_source

    _, files = user_log
    src = get_source(_settings(tmp_path, files))
    days = [src.for_day(START + dt.timedelta(days=d))["impressions"] for d in range(DAYS)]
    allrows = pa.concat_tables(days)
    assert allrows.num_rows == 6 * 500
    assert pc.count_distinct(allrows.column("request_id")).as_py() == allrows.num_rows
    pairs = allrows.group_by(["user_id", "ad_id"]).aggregate([("exposure_index", "max"), ("exposure_index", "count")])
    # the counter runs 1..n over each pair's impressions, whatever day they fall on
    assert pairs.column("exposure_index_max").to_pylist() == pairs.column("exposure_index_count").to_pylist()


def test_deliver_writes_only_the_landing_zone(tmp_path: Path, user_log) -> None:
    from components.sources import get_source

    root, files = user_log
    before = tree_digest(root)
    s = _settings(tmp_path, files)
    rows = get_source(s).deliver(START)
    assert rows["impressions"] == 500
    assert (s.raw_dir / "userlog" / "impressions" / f"date={START}" / "part-0.parquet").is_file()
    assert tree_digest(root) == before


def test_negative_sampling_for_a_positives_only_log(tmp_path: Path, user_log) -> None:
    from components.sources import get_source

    _, files = user_log
    files = {**files, "negatives": {"per_positive": 2, "seed": 3}}
    src = get_source(_settings(tmp_path, files))
    imp = pa.concat_tables([src.for_day(START + dt.timedelta(days=d))["impressions"] for d in range(DAYS)])
    logged_rows = pa.concat_tables([get_source(_settings(tmp_path / "a", user_log[1] | {"negatives": {"per_positive": 0}}))
                                    .for_day(START + dt.timedelta(days=d))["impressions"] for d in range(DAYS)])
    logged_ids = set(logged_rows.column("request_id").to_pylist())
    neg = imp.filter(pc.invert(pc.is_in(imp.column("request_id"), pa.array(list(logged_ids)))))
    assert neg.num_rows == src.stats["negative_impressions"] > 0
    assert pc.count_distinct(imp.column("request_id")).as_py() == imp.num_rows
    assert neg.num_rows + src.stats["unfilled_negatives"] == 2 * 3000
    assert pc.sum(neg.column("like")).as_py() == 0 and pc.sum(neg.column("share")).as_py() == 0
    logged = set(zip(logged_rows.column("user_id").to_pylist(), logged_rows.column("ad_id").to_pylist()))
    neg_pairs = set(zip(neg.column("user_id").to_pylist(), neg.column("ad_id").to_pylist()))
    assert neg_pairs and not neg_pairs & logged  # never an item the user has a logged row with
    # deterministic for a seed
    again = get_source(_settings(tmp_path / "b", files))
    assert again.for_day(START)["impressions"].equals(src.for_day(START)["impressions"])


def test_a_required_column_neither_mapped_nor_present_is_named(tmp_path: Path, user_log) -> None:
    from components.sources import get_source
    from components.sources.file_tables import SourceConfigError

    _, files = user_log
    files["impressions"]["columns"].pop("user_id")
    with pytest.raises(SourceConfigError, match=r"'user_id' is neither mapped .*its columns: .*uid"):
        get_source(_settings(tmp_path, files)).available_days()


def test_event_time_must_be_a_timestamp(tmp_path: Path, user_log) -> None:
    from components.sources import get_source
    from components.sources.file_tables import SourceConfigError

    _, files = user_log
    files["impressions"]["columns"]["event_time"] = "ts"
    with pytest.raises(SourceConfigError, match="event_time is int64, not a timestamp.*to_timestamp"):
        get_source(_settings(tmp_path, files)).available_days()


def test_a_missing_path_and_a_missing_section_are_clear(tmp_path: Path, user_log) -> None:
    from components.sources import get_source

    _, files = user_log
    files["ads"]["path"] = str(tmp_path / "nowhere.csv")
    with pytest.raises(ValueError, match=r"files.ads.path: .*nowhere.csv does not exist"):
        get_source(_settings(tmp_path, files))
    with pytest.raises(ValueError, match="files.impressions is not set"):
        load_settings(overrides={"pipeline": {"source": "files"}}, environ={})
    with pytest.raises(ValueError, match="task name 'user_id'"):
        load_settings(overrides={"files": {"tasks": ["user_id"]}}, environ={})


def test_rows_without_an_event_time_are_delivered_for_quarantine_not_dropped(tmp_path: Path, user_log) -> None:
    from components.sources import get_source

    root, files = user_log
    folder = root / "events" / f"date={START}"
    t = pq.read_table(folder / "part.parquet")
    ts = t.column("ts").to_pylist()
    ts[0] = None
    pq.write_table(t.set_column(0, "ts", pa.array(ts, pa.int64())), folder / "part.parquet")
    src = get_source(_settings(tmp_path, files))
    assert src.stats["rows_without_event_time"] == 1
    first = src.for_day(START)["impressions"]
    assert first.num_rows == 500 and first.column("event_time").null_count == 1


def test_relative_paths_in_a_yaml_file_are_relative_to_it(tmp_path: Path, user_log) -> None:
    import yaml

    root, files = user_log
    files["impressions"]["path"] = "events"
    files["ads"]["path"] = "catalogue.csv"
    files["users"]["path"] = "accounts.parquet"
    cfg = root / "adsrec.yaml"
    cfg.write_text(yaml.safe_dump({"pipeline": {"source": "files"}, "files": files}))
    s = load_settings(cfg, environ={})
    assert s.files.impressions.path == str(root / "events")
    assert s.files.ads.path == str(root / "catalogue.csv")


def test_query_aggregates_events_before_mapping(tmp_path: Path, user_log) -> None:
    from components.sources import get_source

    _, files = user_log
    files["impressions"]["query"] = ("SELECT uid, item, min(ts) AS ts, bool_or(liked) AS liked, max(shared) AS shared "
                                     "FROM src GROUP BY uid, item, ts // 86400")
    src = get_source(_settings(tmp_path, files))
    imp = src.for_day(START)["impressions"]
    assert 0 < imp.num_rows < 500  # repeated (user, item) pairs of a day became one impression
    assert imp.group_by(["user_id", "ad_id"]).aggregate([("request_id", "count")]).column(2).to_pylist() == [1] * imp.num_rows


def test_a_changed_log_is_delivered_again_and_an_unchanged_one_skipped(tmp_path: Path, user_log) -> None:
    from components import steps

    root, files = user_log
    s = _settings(tmp_path, files)
    assert steps.deliver_day(s, START)["skipped"] is False
    assert steps.deliver_day(s, START)["skipped"] is True
    t = pq.read_table(root / "events" / f"date={START}" / "part.parquet")
    pq.write_table(t.slice(0, 100), root / "events" / f"date={START}" / "part.parquet")  # the user fixes a file
    again = steps.deliver_day(s, START)
    assert again["skipped"] is False and again["rows"]["impressions"] == 100


def test_the_simulator_never_overwrites_a_users_file_in_its_landing_zone(tmp_path: Path, shared_data: Path) -> None:
    """The first user moved the simulator's start date onto their own dates: their file was overwritten."""
    from components.sources import get_source
    from components.sources.landing import ForeignFilesError

    s = load_settings(environ={}, overrides={
        "home": str(tmp_path / "home"), "pipeline": {"shared_data": str(shared_data)},
        "simulator": {"n_users": 200, "sessions_per_user_day": 2.0, "n_initial_ads": 300, "new_ads_per_day": 10, "new_users_per_day": 5}}).resolved()
    day = s.pipeline.start_date
    mine = s.raw_dir / "simulator" / "impressions" / f"date={day}" / "part-0.parquet"
    mine.parent.mkdir(parents=True)
    pq.write_table(pa.table({"x": [1, 2]}), mine)
    other = s.raw_dir / "simulator" / "impressions" / f"date={day}" / "export.csv"
    other.write_text("x\n1\n")
    with pytest.raises(ForeignFilesError, match="export.csv"):
        get_source(s).deliver(day)
    assert pq.read_table(mine).column("x").to_pylist() == [1, 2] and other.read_text() == "x\n1\n"


@pytest.mark.parametrize("name, day, rows", [("movielens-100k", dt.date(1997, 9, 20), 3139),
                                             ("taobao", dt.date(2017, 11, 26), 33540)])
def test_the_shipped_configurations_ingest_the_real_raw_files_cleanly(tmp_path: Path, shared_data: Path, name: str,
                                                                      day: dt.date, rows: int) -> None:
    """docs/examples/*.yaml run ../shared/data's raw files through the files source from YAML alone."""
    from components import steps

    s = load_settings(REPO_ROOT / "docs" / "examples" / f"{name}.yaml", environ={},
                      overrides={"home": str(tmp_path / "home")}).resolved()
    delivered = steps.deliver_day(s, day)
    assert delivered["rows"]["impressions"] == rows
    report = steps.ingest(s, day)
    for table in ("impressions", "ads", "users"):
        t = report["tables"][table]
        assert t["rows_quarantined"] == 0, (table, t["reasons"])
        assert t["rows_landed"] == delivered["rows"][table]


def test_a_task_setting_naming_no_task_of_the_source_fails_at_load(tmp_path: Path, user_log) -> None:
    _, files = user_log
    with pytest.raises(ValueError, match=r"training.ipw_task is 'click', which is not one of .*'like', 'share'"):
        load_settings(overrides={"pipeline": {"source": "files"}, "files": files, "training": {"ipw_task": "click"}},
                      environ={})


def test_a_failing_expression_is_named_with_its_key(tmp_path: Path, user_log) -> None:
    from components.sources import get_source
    from components.sources.file_tables import SourceConfigError

    _, files = user_log
    files["ads"]["columns"]["title"] = "upper(nme)"  # a typo in the user's column name
    with pytest.raises(SourceConfigError, match=r"files.ads.columns.title = 'upper\(nme\)' fails in DuckDB: .*nme"):
        get_source(_settings(tmp_path, files)).available_days()

"""The offline store's SQL toolkit (components/store/sql.py): quoting, the UTC connection and the
day-partition listers every reader of the stores uses."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components.store.sql import (
    connect,
    day_partitions,
    partition_files,
    partition_globs,
    sql_ident,
    sql_list,
    sql_str,
    sql_ts,
)

D1, D2, D3 = dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)


def _day(root: Path, day: dt.date, files: tuple[str, ...] = ("part-0.parquet",)) -> Path:
    folder = root / f"date={day.isoformat()}"
    folder.mkdir(parents=True)
    for name in files:
        pq.write_table(pa.table({"x": [1]}), folder / name)
    return folder


def test_quoting_round_trips_through_duckdb(tmp_path: Path) -> None:
    con = connect()
    try:
        path = tmp_path / "it" / "o"
        assert con.execute(f"SELECT {sql_str(path)} = ?", [str(path)]).fetchone()[0]
        assert con.execute(f"SELECT {sql_str(chr(39) + 'x')}").fetchone()[0] == "'x"
        assert con.execute(f'SELECT 1 AS {sql_ident(chr(34) + "odd col")}').description[0][0] == '"odd col'
        assert con.execute(f"SELECT {sql_list(['a', chr(39)])}").fetchone()[0] == ["a", "'"]
        when = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
        got = con.execute(f"SELECT {sql_ts(when)}").arrow().read_all().column(0)
        assert got.type.tz == "UTC" and got[0].as_py() == when  # the connection is in UTC
    finally:
        con.close()


def test_day_partitions_lists_day_folders_in_order_within_bounds(tmp_path: Path) -> None:
    root = tmp_path / "t"
    for d in (D3, D1, D2):
        _day(root, d)
    (root / ".date=2026-01-04.tmp").mkdir()  # a write in progress
    (root / "date=2026-13-40").mkdir()  # not a day
    (root / "date=2026-01-05").write_text("a file, not a folder")
    assert [d for d, _ in day_partitions(root)] == [D1, D2, D3]
    assert day_partitions(root, D2, D2) == [(D2, root / "date=2026-01-02")]
    assert [d for d, _ in day_partitions(root, start=D2)] == [D2, D3]
    assert [d for d, _ in day_partitions(root, end=D2)] == [D1, D2]
    assert day_partitions(tmp_path / "absent") == []


def test_partition_files_and_globs_leave_out_days_without_data(tmp_path: Path) -> None:
    _day(tmp_path / "t", D1)
    _day(tmp_path / "t", D2, files=("other.parquet",))
    _day(tmp_path / "t", D3, files=())  # an empty day: landed, no file
    first = tmp_path / "t" / "date=2026-01-01" / "part-0.parquet"
    assert partition_files(tmp_path / "t", "part-0.parquet") == [(D1, first)]
    globs = partition_globs(tmp_path, "t", None, D3)
    assert globs == [str(tmp_path / "t" / f"date={d}" / "*.parquet") for d in (D1, D2)]
    assert partition_globs(tmp_path, "t", D2, None) == globs[1:]
    con = connect()
    try:
        assert con.execute(f"SELECT count(*) FROM read_parquet({sql_list(globs)})").fetchone()[0] == 2
    finally:
        con.close()


def test_a_part_added_to_a_committed_day_is_listed_only_once_the_rewritten_marker_names_it(tmp_path: Path) -> None:
    """components/store/days.py ``extending_day``: the representations' views join a committed feature day.
    A crash between them hides the whole day; a legacy (non-strict) marker commits every part of its day."""
    import json

    import pytest

    from components.doctor import marker_checks
    from components.store.days import HalfWrittenDay, commit_day, extending_day, marker_path

    root = tmp_path / "features"
    for view in ("user_stats", "ad_stats"):
        _day(root / view, D1)
    commit_day(root, D1, ["user_stats", "ad_stats"])
    _day(root / "ad_text_embedding", D1)  # written after the marker, not named by it
    assert [d for d, _ in day_partitions(root / "user_stats")] == [D1]
    assert day_partitions(root / "ad_text_embedding") == []
    assert [c.subject for c in marker_checks("features", root, "{day}")] == [f"ad_text_embedding {D1}"]

    with pytest.raises(RuntimeError, match="killed"), extending_day(root, D1, "x") as added:
        assert day_partitions(root / "user_stats") == []  # the whole day is invisible while views are added
        raise RuntimeError("killed between two views")
    assert not marker_path(root, D1).exists() and day_partitions(root / "ad_stats") == []
    with pytest.raises(HalfWrittenDay, match="x first"), extending_day(root, D1, "x"):
        pass
    commit_day(root, D1, ["user_stats", "ad_stats"])  # the feature step re-does the day
    with extending_day(root, D1, "x") as added:
        added.append("ad_text_embedding")
    assert [d for d, _ in day_partitions(root / "ad_text_embedding")] == [D1]
    assert set(json.loads(marker_path(root, D1).read_text())["parts"]) == {"user_stats", "ad_stats", "ad_text_embedding"}
    assert marker_checks("features", root, "{day}") == []

    legacy = json.loads(marker_path(root, D1).read_text())
    marker_path(root, D1).write_text(json.dumps({"day": legacy["day"], "parts": {"user_stats": {}}}))
    assert [d for d, _ in day_partitions(root / "ad_text_embedding")] == [D1]  # a marker before "strict"

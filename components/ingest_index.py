"""The ingest index: the keys of every landed day, so a day's cross-day checks cost the day, not the history.

Ingestion checks each new day against what already landed: a ``request_id`` that landed on another day
(duplicate), a ``user_id`` / ``ad_id`` that no users/ads partition up to the day knows (referential), and
a (user, ad) pair whose ``exposure_index`` does not grow past the one landed on an earlier day. Reading
every landed partition for that made one day's ingest grow with the history (0.7 s with no landed days,
3.2 s with 4,109). This index keeps just those keys in one DuckDB database file,
``<home>/offline/_index/ingest_index.duckdb``:

- ``requests(request_id, day)``: one row per landed impression;
- ``entities(kind, id, day)``: one row per landed ads (``kind='ads'``) / users row;
- ``pairs(user_id, ad_id, day, max_exposure)``: per day, the largest ``exposure_index`` of each pair;
- ``partitions(tbl, day, size, mtime_ns)``: which offline partition file each day's keys came from.

Why our own: neither Feast nor Great Expectations keeps a key index across batches; DuckDB (already the
offline store's engine) gives a persistent, vectorised join. The offline store stays the truth: on every
open, :meth:`IngestIndex.sync` compares ``partitions`` with the partition files on disk (one ``stat`` per
landed day) and re-indexes the days that changed or appeared and drops the days that vanished, so a
deleted or stale index (a partition written by an older version, a day deleted by hand) is rebuilt
from the offline store. Ingestion updates a day's keys right after it replaces the day's partition.

One writer at a time: :func:`open_index` holds an exclusive ``flock`` on ``_index/.lock`` (threads of a
backfill and separate processes alike) until the index is closed.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pyarrow as pa

if TYPE_CHECKING:
    import duckdb

    from components.config import Settings

INDEX_DIR = "_index"
INDEX_FILE = "ingest_index.duckdb"
_THREAD_LOCK = threading.Lock()  # flock also separates threads (one open file each); this keeps it cheap

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (request_id VARCHAR, day DATE);
CREATE TABLE IF NOT EXISTS entities (kind VARCHAR, id BIGINT, day DATE);
CREATE TABLE IF NOT EXISTS pairs (user_id BIGINT, ad_id BIGINT, day DATE, max_exposure INTEGER);
CREATE TABLE IF NOT EXISTS partitions (tbl VARCHAR, day DATE, size BIGINT, mtime_ns BIGINT);
"""
_INDEXED = ("impressions", "ads", "users")


def index_path(settings: "Settings") -> Path:
    return settings.offline_dir / INDEX_DIR / INDEX_FILE


def _signature(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


class IngestIndex:
    """An open index (see the module docstring). Use :func:`open_index`."""

    def __init__(self, settings: "Settings", con: "duckdb.DuckDBPyConnection") -> None:
        self.settings = settings
        self.con = con
        self.synced: dict[str, int] = {}  # days re-indexed / dropped by the last sync, for the report

    # --- keeping it in step with the offline store -------------------------------------------------
    def sync(self) -> dict[str, int]:
        """Re-index every offline partition whose file differs from what the index recorded, drop days
        whose partition is gone. Returns {"reindexed": n, "dropped": n}."""
        from components.offline_store import offline_partitions

        reindexed = dropped = 0
        for table in _INDEXED:
            on_disk = {day: path for day, path in offline_partitions(self.settings, table)}
            known = {d: (s, m) for d, s, m in
                     self.con.execute("SELECT day, size, mtime_ns FROM partitions WHERE tbl = ?", [table]).fetchall()}
            for day in set(known) - set(on_disk):
                self._delete(table, day)
                dropped += 1
            for day, path in on_disk.items():
                if known.get(day) != _signature(path):
                    self.index_partition(table, day, path)
                    reindexed += 1
        self.synced = {"reindexed": reindexed, "dropped": dropped}
        return self.synced

    def _delete(self, table: str, day: dt.date) -> None:
        if table == "impressions":
            self.con.execute("DELETE FROM requests WHERE day = ?", [day])
            self.con.execute("DELETE FROM pairs WHERE day = ?", [day])
        else:
            self.con.execute("DELETE FROM entities WHERE kind = ? AND day = ?", [table, day])
        self.con.execute("DELETE FROM partitions WHERE tbl = ? AND day = ?", [table, day])

    def index_partition(self, table: str, day: dt.date, path: Path, rows: pa.Table | None = None) -> None:
        """Replace ``day``'s keys of ``table`` with those of the partition file ``path`` (``rows``: the
        same rows already in memory, to skip reading the file back)."""
        import pyarrow.parquet as pq

        cols = ["request_id", "user_id", "ad_id", "exposure_index"] if table == "impressions" else \
            ["ad_id" if table == "ads" else "user_id"]
        data = rows.select(cols) if rows is not None else pq.read_table(path, columns=cols)
        self.con.execute("BEGIN TRANSACTION")
        try:
            self._delete(table, day)
            self.con.register("_rows", data)
            if table == "impressions":
                self.con.execute("INSERT INTO requests SELECT request_id, ?::DATE FROM _rows", [day])
                self.con.execute("INSERT INTO pairs SELECT user_id, ad_id, ?::DATE, max(exposure_index) FROM _rows "
                                 "GROUP BY user_id, ad_id", [day])
            else:
                self.con.execute(f"INSERT INTO entities SELECT ?, {cols[0]}, ?::DATE FROM _rows", [table, day])
            self.con.unregister("_rows")
            size, mtime = _signature(path)
            self.con.execute("INSERT INTO partitions VALUES (?, ?, ?, ?)", [table, day, size, mtime])
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    # --- the checks ---------------------------------------------------------------------------------
    def landed_elsewhere(self, probe: pa.Table, day: dt.date, lookback_days: int) -> pa.Table:
        """``probe`` (idx, k): the rows whose request_id ``k`` landed on a day other than ``day``
        (within ``lookback_days`` of it; 0 = any day), as (idx, landed_on DATE, first such day)."""
        where = "r.day <> ?::DATE"
        params: list = [day]
        if lookback_days:
            where += " AND r.day BETWEEN ?::DATE AND ?::DATE"
            params += [day - dt.timedelta(days=lookback_days), day + dt.timedelta(days=lookback_days)]
        self.con.register("_probe", probe)
        try:
            return self.con.execute(
                f"SELECT p.idx, min(r.day) AS landed_on FROM _probe p JOIN requests r ON r.request_id = p.k "
                f"WHERE {where} GROUP BY p.idx ORDER BY p.idx", params).to_arrow_table()
        finally:
            self.con.unregister("_probe")

    def unknown(self, probe: pa.Table, kind: str, day: dt.date, known_today: pa.Array) -> pa.Table:
        """``probe`` (idx, k): rows whose id ``k`` is neither in ``known_today`` (the day's own landed
        ads/users) nor landed in ``kind`` on any earlier day; returns (idx)."""
        self.con.register("_probe", probe)
        self.con.register("_today", pa.table({"id": known_today}))
        try:
            return self.con.execute(
                "SELECT idx FROM _probe p WHERE NOT EXISTS (SELECT 1 FROM _today t WHERE t.id = p.k) "
                "AND NOT EXISTS (SELECT 1 FROM entities e WHERE e.kind = ? AND e.day < ?::DATE AND e.id = p.k) "
                "ORDER BY idx", [kind, day]).to_arrow_table()
        finally:
            self.con.unregister("_probe")
            self.con.unregister("_today")

    def exposure_not_growing(self, probe: pa.Table, day: dt.date) -> pa.Table:
        """``probe`` (idx, user_id, ad_id, exposure_index): rows whose exposure_index is not greater than
        the largest one their (user, ad) pair landed with on an earlier day; returns (idx, landed_max)."""
        self.con.register("_probe", probe)
        try:
            return self.con.execute(
                "SELECT p.idx, max(q.max_exposure) AS landed_max FROM _probe p JOIN pairs q "
                "ON q.user_id = p.user_id AND q.ad_id = p.ad_id WHERE q.day < ?::DATE "
                "GROUP BY p.idx, p.exposure_index HAVING p.exposure_index <= max(q.max_exposure) ORDER BY p.idx",
                [day]).to_arrow_table()
        finally:
            self.con.unregister("_probe")


@contextmanager
def open_index(settings: "Settings", sync: bool = True) -> Iterator[IngestIndex]:
    """The index, locked for this caller and (``sync``) brought in step with the offline store."""
    import duckdb

    folder = settings.offline_dir / INDEX_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with _THREAD_LOCK, open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            try:
                con = duckdb.connect(str(folder / INDEX_FILE))
            except duckdb.Error as exc:  # a corrupt index file: it is only a cache of the offline store
                if "lock" in str(exc).lower():
                    raise
                os.replace(folder / INDEX_FILE, folder / f"{INDEX_FILE}.corrupt")
                con = duckdb.connect(str(folder / INDEX_FILE))
            try:
                con.execute(_SCHEMA)
                index = IngestIndex(settings, con)
                if sync:
                    index.sync()
                yield index
            finally:
                con.close()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

"""The ingest index: the keys of every landed day, so a day's cross-day checks cost the day, not the history.

Ingestion checks each new day against what already landed: a ``request_id`` that landed on another day
(duplicate), a ``user_id`` / ``ad_id`` that no users/ads partition up to the day knows (referential), and
a (user, ad) pair whose ``exposure_index`` does not grow past the one landed on an earlier day. Reading
every landed partition for that made one day's ingest grow with the history (0.7 s with no landed days,
3.2 s with 4,109). This index keeps just those keys in one DuckDB database file,
``<home>/offline/_index/ingest_index.duckdb``:

- ``requests(h, day)``: one row per landed impression, ``h`` = DuckDB ``hash(request_id)`` (a 64-bit
  integer: inserting and joining it is several times faster than the string; a hash hit is confirmed
  against the landed partition of that day, so a collision never rejects a row);
- ``entities(kind, id, day)``: one row per landed ads (``kind='ads'``) / users row;
- ``pairs(h, day, max_exposure)``: per day, the largest ``exposure_index`` of each (user, ad) pair, ``h`` =
  ``hash(user_id, ad_id)`` (twice as fast to group as the two columns; this check only counts and
  warns, so a 64-bit collision could at worst add a spurious count, never reject a row);
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
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pyarrow as pa

from components.storage import file_lock

if TYPE_CHECKING:
    import duckdb

    from components.config import Settings

INDEX_DIR = "_index"
INDEX_FILE = "ingest_index.duckdb"
_THREAD_LOCK = threading.Lock()  # flock also separates threads (one open file each); this keeps it cheap

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (h UBIGINT, day DATE);
CREATE TABLE IF NOT EXISTS entities (kind VARCHAR, id BIGINT, day DATE);
CREATE TABLE IF NOT EXISTS pairs (h UBIGINT, day DATE, max_exposure INTEGER);
CREATE TABLE IF NOT EXISTS partitions (tbl VARCHAR, day DATE, size BIGINT, mtime_ns BIGINT);
CREATE TABLE IF NOT EXISTS dirs (tbl VARCHAR, mtime_ns BIGINT);
"""
_INDEXED = ("impressions", "ads", "users")
SCHEMA_VERSION = 4  # another version on disk: the tables are dropped and rebuilt from the offline store


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
        reindexed = dropped = 0
        for table in _INDEXED:
            mtime = self._dir_mtime(table)  # before the scan: a change during it shows at the next sync
            if mtime == self._recorded_dir_mtime(table):
                continue  # no partition of this table was added, replaced or removed since
            on_disk = self._on_disk(table)
            known = {d: (s, m) for d, s, m in self.con.execute(
                "SELECT CAST(day AS VARCHAR), size, mtime_ns FROM partitions WHERE tbl = ?", [table]).fetchall()}
            gone = [dt.date.fromisoformat(d) for d in sorted(set(known) - set(on_disk))]
            stale = {dt.date.fromisoformat(d): Path(path) for d, (path, sig) in on_disk.items() if known.get(d) != sig}
            if gone or stale:
                self._reindex(table, gone, stale)
            dropped += len(gone)
            reindexed += len(stale)
            self._record_dir_mtime(table, mtime)
        self.synced = {"reindexed": reindexed, "dropped": dropped}
        return self.synced

    # A partition is only ever replaced by a rename inside <offline>/<table>/ (storage.replace_partition),
    # which changes that folder's mtime: an unchanged mtime means no day to look at, so a day's ingest
    # does not stat every landed day. (A file edited in place, bypassing replace_partition, is not seen;
    # deleting the index rebuilds it.)
    def _dir_mtime(self, table: str) -> int:
        try:
            return os.stat(self.settings.offline_dir / table).st_mtime_ns
        except FileNotFoundError:
            return -1

    def _recorded_dir_mtime(self, table: str) -> int | None:
        row = self.con.execute("SELECT max(mtime_ns) FROM dirs WHERE tbl = ?", [table]).fetchone()
        return None if row is None else row[0]

    def _record_dir_mtime(self, table: str, mtime: int) -> None:
        self.con.execute("DELETE FROM dirs WHERE tbl = ?", [table])
        self.con.execute("INSERT INTO dirs VALUES (?, ?)", [table, mtime])

    def _on_disk(self, table: str) -> dict[str, tuple[str, tuple[int, int]]]:
        """{"YYYY-MM-DD": (partition file, (size, mtime_ns))} of the table's landed days: one ``stat``
        per day (``sql.day_partitions`` lists them with ``os.scandir``: thousands of days in milliseconds;
        the same partitions as ``offline.offline_partitions``)."""
        from components.store.offline import PART_FILE
        from components.store.sql import day_partitions

        out: dict[str, tuple[str, tuple[int, int]]] = {}
        for day, folder in day_partitions(self.settings.offline_dir / table, all_days=True):
            path = os.path.join(folder, PART_FILE)
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            out[day.isoformat()] = (path, (st.st_size, st.st_mtime_ns))
        return out

    def _reindex(self, table: str, gone: list[dt.date], stale: dict[dt.date, Path]) -> None:
        """Drop ``gone`` days and re-read ``stale`` ones, in one transaction and one bulk read (a rebuild
        of thousands of days is one DuckDB scan, not thousands of inserts)."""
        from components.store.sql import sql_str

        days = pa.table({"day": pa.array(gone + sorted(stale), pa.date32())})
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.register("_days", days)
            if table == "impressions":
                self.con.execute("DELETE FROM requests WHERE day IN (SELECT day FROM _days)")
                self.con.execute("DELETE FROM pairs WHERE day IN (SELECT day FROM _days)")
            else:
                self.con.execute("DELETE FROM entities WHERE kind = ? AND day IN (SELECT day FROM _days)", [table])
            self.con.execute("DELETE FROM partitions WHERE tbl = ? AND day IN (SELECT day FROM _days)", [table])
            self.con.unregister("_days")
            if stale:
                files = ", ".join(sql_str(p) for p in stale.values())
                src = (f"(SELECT *, CAST(regexp_extract(filename, 'date=([0-9-]+)', 1) AS DATE) AS day "
                       f"FROM read_parquet([{files}], filename=true, hive_partitioning=false, union_by_name=true))")
                if table == "impressions":
                    self.con.execute(f"INSERT INTO requests SELECT hash(request_id), day FROM {src}")
                    self.con.execute(f"INSERT INTO pairs SELECT hash(user_id, ad_id) AS h, day, max(exposure_index) "
                                     f"FROM {src} GROUP BY h, day")
                else:
                    key = "ad_id" if table == "ads" else "user_id"
                    self.con.execute(f"INSERT INTO entities SELECT ?, {key}, day FROM {src}", [table])
                sigs = pa.table({"tbl": [table] * len(stale), "day": pa.array(list(stale), pa.date32()),
                                 "size": [_signature(p)[0] for p in stale.values()],
                                 "mtime_ns": [_signature(p)[1] for p in stale.values()]})
                self.con.register("_sigs", sigs)
                self.con.execute("INSERT INTO partitions SELECT tbl, day, size, mtime_ns FROM _sigs")
                self.con.unregister("_sigs")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

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
                self.con.execute("INSERT INTO requests SELECT hash(request_id), ?::DATE FROM _rows", [day])
                self.con.execute("INSERT INTO pairs SELECT hash(user_id, ad_id) AS h, ?::DATE, max(exposure_index) "
                                 "FROM _rows GROUP BY h", [day])
            else:
                self.con.execute(f"INSERT INTO entities SELECT ?, {cols[0]}, ?::DATE FROM _rows", [table, day])
            self.con.unregister("_rows")
            size, mtime = _signature(path)
            self.con.execute("INSERT INTO partitions VALUES (?, ?, ?, ?)", [table, day, size, mtime])
            if self._recorded_dir_mtime(table) is not None:
                # The index was in step before this day's replace (synced under the lock): it still is.
                self._record_dir_mtime(table, self._dir_mtime(table))
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    # --- the checks ---------------------------------------------------------------------------------
    def landed_elsewhere(self, probe: pa.Table, day: dt.date, lookback_days: int) -> pa.Table:
        """``probe`` (idx, k): the rows whose request_id ``k`` landed on a day other than ``day``
        (within ``lookback_days`` of it; 0 = any day), as (idx, landed_on DATE: the first such day).
        Candidates come from the hashes; each is confirmed on the string in that day's partition."""
        from components.store.offline import PART_FILE
        from components.store.sql import sql_str
        from components.schemas import day_dir

        where = "r.day <> ?::DATE"
        params: list = [day]
        if lookback_days:
            where += " AND r.day BETWEEN ?::DATE AND ?::DATE"
            params += [day - dt.timedelta(days=lookback_days), day + dt.timedelta(days=lookback_days)]
        self.con.register("_probe", probe)
        try:
            cand = self.con.execute(
                f"SELECT p.idx, p.k, r.day FROM _probe p JOIN requests r ON r.h = hash(p.k) WHERE {where}",
                params).to_arrow_table()
            if not cand.num_rows:
                return pa.table({"idx": pa.array([], pa.int64()), "landed_on": pa.array([], pa.date32())})
            days = sorted(set(cand.column("day").to_pylist()))
            files = ", ".join(sql_str(day_dir(self.settings.offline_dir, "impressions", d) / PART_FILE) for d in days)
            self.con.register("_cand", cand)
            return self.con.execute(
                f"SELECT c.idx, min(c.day) AS landed_on FROM _cand c JOIN (SELECT request_id, "
                f"CAST(regexp_extract(filename, 'date=([0-9-]+)', 1) AS DATE) AS day FROM read_parquet([{files}], "
                f"filename=true, hive_partitioning=false)) o ON o.request_id = c.k AND o.day = c.day "
                f"GROUP BY c.idx ORDER BY c.idx").to_arrow_table()
        finally:
            self.con.unregister("_probe")
            self.con.unregister("_cand")  # a no-op when never registered

    def unknown_ids(self, ids: pa.Array, kind: str, day: dt.date, known_today: pa.Array) -> pa.Array:
        """Of the distinct ``ids``, those neither in ``known_today`` (the day's own landed ads/users) nor
        landed in ``kind`` on any earlier day. The day's ids are the hash-join build side; the entities
        table is scanned once."""
        self.con.register("_ids", pa.table({"k": ids}))
        self.con.register("_today", pa.table({"id": known_today}))
        try:
            out = self.con.execute(
                "SELECT k FROM _ids ANTI JOIN (SELECT id FROM entities WHERE kind = ? AND day < ?::DATE "
                "AND id IN (SELECT k FROM _ids) UNION ALL SELECT id FROM _today) s ON _ids.k = s.id ORDER BY k",
                [kind, day]).to_arrow_table()
        finally:
            self.con.unregister("_ids")
            self.con.unregister("_today")
        return out.column("k").combine_chunks().cast(ids.type)

    def exposure_not_growing(self, probe: pa.Table, day: dt.date, lookback_days: int) -> pa.Table:
        """``probe`` (idx, user_id, ad_id, exposure_index): rows whose exposure_index is not greater than
        the largest one their (user, ad) pair landed with on an earlier day (within ``lookback_days``
        before ``day``; 0 = any earlier day); returns (idx, landed_max). The day bound lets DuckDB skip
        the older row groups of ``pairs`` (zone maps), so the check costs the window, not the history."""
        where, params = "q.day < ?::DATE", [day]
        if lookback_days:
            where += " AND q.day >= ?::DATE"
            params.append(day - dt.timedelta(days=lookback_days))
        self.con.register("_probe", probe)
        try:
            return self.con.execute(
                "SELECT p.idx, max(q.max_exposure) AS landed_max FROM _probe p JOIN pairs q "
                f"ON q.h = hash(p.user_id, p.ad_id) WHERE {where} "
                "GROUP BY p.idx, p.exposure_index HAVING p.exposure_index <= max(q.max_exposure) ORDER BY p.idx",
                params).to_arrow_table()
        finally:
            self.con.unregister("_probe")


def _ensure_schema(con: "duckdb.DuckDBPyConnection") -> None:
    con.execute("CREATE TABLE IF NOT EXISTS meta (version INTEGER)")
    row = con.execute("SELECT max(version) FROM meta").fetchone()
    if row is None or row[0] != SCHEMA_VERSION:
        for table in ("requests", "entities", "pairs", "partitions", "dirs", "meta"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
        con.execute("CREATE TABLE meta (version INTEGER)")
        con.execute("INSERT INTO meta VALUES (?)", [SCHEMA_VERSION])
    con.execute(_SCHEMA)


@contextmanager
def open_index(settings: "Settings", sync: bool = True) -> Iterator[IngestIndex]:
    """The index, locked for this caller and (``sync``) brought in step with the offline store."""
    import duckdb

    folder = settings.offline_dir / INDEX_DIR
    with _THREAD_LOCK, file_lock(folder / ".lock"):
        try:
            con = duckdb.connect(str(folder / INDEX_FILE))
        except duckdb.Error as exc:  # a corrupt index file: it is only a cache of the offline store
            if "lock" in str(exc).lower():
                raise
            os.replace(folder / INDEX_FILE, folder / f"{INDEX_FILE}.corrupt")
            con = duckdb.connect(str(folder / INDEX_FILE))
        try:
            _ensure_schema(con)
            index = IngestIndex(settings, con)
            if sync:
                index.sync()
            yield index
        finally:
            con.close()

"""The ``files`` source: a user's own impression log, read where it lies and mapped onto the contract
with DuckDB SQL expressions from the YAML configuration (docs/your-own-logs.md).

Configured under ``files`` (components/config/sources.py ``FilesSourceConfig``)::

    pipeline: {source: files}
    files:
      name: mylog                       # landing folder <home>/raw/mylog/
      tasks: [click, like]              # the one list of task labels
      impressions:
        path: /data/ratings.csv         # file, folder, glob or URI (s3://, gs://, file://)
        columns:                        # contract column -> DuckDB SQL over the file's columns
          event_time: "to_timestamp(ts)"
          user_id: userId
          ad_id: movieId
          click: "true"
          like: "rating >= 4"
      ads: {path: /data/movies.parquet, columns: {ad_id: movieId, title: title, genre: "split_part(genres, '|', 1)"}}
      negatives: {per_positive: 4}      # a positives-only log: sampled impressions without any label

Reading. Parquet or CSV (``format: auto`` looks at the extensions); either ``date=YYYY-MM-DD/`` folders
(hive style) or flat files cut into UTC days by ``event_time`` (``layout: auto`` looks for such folders).
A contract column missing from ``columns`` is taken from the file's column of the same name, else
defaulted: ``slot`` 'default', ``position`` 1, ``exposure_index`` counted over the log (1 + the pair's
earlier impressions, in time order), ``request_id`` ``user-ad-<event time in us>``. ``event_time``,
``user_id``, ``ad_id`` and every task must come from the file. Types are not forced here: ingestion
casts, and quarantines with a reason what does not convert. Rows without an ``event_time`` are
delivered on the first day, so that ingestion quarantines them instead of losing them silently.

Dimension tables are snapshots (the file holds every entity, as exported): an entity is delivered
on the day it is first needed, the earlier of its ``created_at`` day and its first impression's day,
and every entity needed before the first delivered day comes with that first day. ``created_at`` is
optional; when it is missing or after the entity's first impression (an export time, say), the first
impression's time is used (counted in ``stats``). A dimension table not configured is derived from
the impressions' ids (ids only). Columns mapped beyond the contract's are attributes (categorical
when text, numeric when numbers), as with the other sources.

Negatives (``negatives.per_positive`` > 0) follow the real-log adapters (components/sources/
real_log.py ``sample_negatives``): per day, items drawn by popularity so far from the items seen so
far, never an item the user has any logged row with, never twice to one user a day; every task 0.

The log is parsed once per process and configuration (``get_source`` caches the instance while the
input files are unchanged), then cut into days: delivering a day costs a slice, not a re-read. The
source writes only under ``<home>/raw/<name>/`` and never into the user's folder.

Why our own code: Feast's ``FileSource`` reads an already-shaped table; it has no column mapping by
SQL, no negative sampling and no day landing with validation. DuckDB does the reading and mapping.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.schemas import ADS, IMPRESSIONS, TIMESTAMP, USERS
from components.sources.file_tables import (
    SourceConfigError,
    is_uri,
    mapped_select,
    read_columns,
    run_mapped,
    run_sql,
    source_sql,
    table_files,
)
from components.store.sql import sql_ident
from components.sources.landing import write_raw_day
from components.sources.real_log import (
    US_PER_DAY,
    date_to_ordinal,
    ordinal_to_date,
    pair_keys,
    sample_negatives,
)

if TYPE_CHECKING:
    import duckdb

    from components.config import Settings

DEFAULTS = {"slot": "'default'", "position": "1"}
_DAY = "__day"  # internal: the UTC day ordinal a row is delivered on


# --------------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------------


class FilesSource:
    """``pipeline.source: files`` as a ``Source`` (components/sources/__init__.py)."""

    def __init__(self, settings: "Settings") -> None:
        self.settings = settings
        self.cfg = settings.files
        self.name = self.cfg.name
        self.tasks: tuple[str, ...] = tuple(self.cfg.tasks)
        self._stats: dict[str, int] = {}
        self._computed: set[str] = set()  # contract columns the log lacks and the source computes
        self._tables: dict[str, pa.Table] | None = None
        self._days: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    # --- Source protocol ---------------------------------------------------------------------------

    def available_days(self) -> tuple[dt.date, dt.date]:
        first, last = self._log_range()
        return ordinal_to_date(first), ordinal_to_date(last)

    def deliver(self, day: dt.date) -> dict[str, int]:
        """Write the day's rows of every table to ``<home>/raw/<name>/<table>/date=D/``."""
        return write_raw_day(self.settings, self.name, day, self.for_day(day))

    def input_fingerprint(self) -> str:
        """The configuration and the input files' identity (a re-delivery is needed when it changes)."""
        return input_fingerprint(self.settings)

    # --- the parsed log ----------------------------------------------------------------------------

    def for_day(self, day: dt.date) -> dict[str, pa.Table]:
        tables = self._build()
        d = date_to_ordinal(day)
        out = {}
        for name, table in tables.items():
            lo, hi = np.searchsorted(self._days[name], [d, d + 1])
            out[name] = table.slice(int(lo), int(hi - lo))
        return out

    @property
    def stats(self) -> dict[str, int]:
        """How the log's rows were accounted for (rows read, negatives, dimension fixes, ...)."""
        self._build()
        return dict(self._stats)

    def _log_range(self) -> tuple[int, int]:
        self._build()
        return self._stats["first_day"], self._stats["last_day"]

    def _build(self) -> dict[str, pa.Table]:
        with self._lock:
            if self._tables is None:
                self._tables = self._parse()
            return self._tables

    def _parse(self) -> dict[str, pa.Table]:
        from components.store.sql import connect  # an in-memory DuckDB in UTC

        con = connect()
        try:
            impressions = self._impressions(con)
            first, last = self._clip_days(impressions)
            impressions = self._negatives(con, impressions, first, last)
            impressions = self._exposure_and_ids(con, impressions, first)
            first_time = {k: self._first_impression(con, impressions, k) for k in ("user_id", "ad_id")}
            ads = self._dimension(con, "ads", ADS.required, "ad_id", first_time["ad_id"], first)
            users = self._dimension(con, "users", USERS.required, "user_id", first_time["user_id"], first)
        finally:
            con.close()
        tables = {"impressions": impressions, "ads": ads, "users": users}
        for name, t in tables.items():
            days = t.column(_DAY).to_numpy()
            keep = (days >= first) & (days <= last)
            self._stats[f"{name}_outside_range"] = int((~keep).sum())
            t = t.filter(pa.array(keep)).drop_columns([_DAY])
            self._days[name] = days[keep]
            tables[name] = t
        self._stats.update(first_day=first, last_day=last)
        return tables

    def _impressions(self, con: "duckdb.DuckDBPyConnection") -> pa.Table:
        cfg = self.cfg.impressions
        assert cfg is not None  # Settings validates this
        sql = source_sql(cfg, "impressions")
        columns = read_columns(con, sql, "impressions")
        contract = IMPRESSIONS.required.names + list(self.tasks)
        required = {"event_time", "user_id", "ad_id", *self.tasks}
        # request_id and exposure_index are computed after negative sampling when not given
        select = mapped_select(columns, cfg, "impressions", contract, required,
                               {**DEFAULTS, "request_id": "CAST(NULL AS VARCHAR)", "exposure_index": "CAST(NULL AS BIGINT)"})
        self._computed = {c for c in ("request_id", "exposure_index") if c not in cfg.columns and c not in columns}
        t = run_mapped(con, select, sql, cfg, "impressions")
        et = t.column("event_time")
        if not pa.types.is_timestamp(et.type):
            raise SourceConfigError(
                f"files.impressions: event_time is {et.type}, not a timestamp; map it with an expression, e.g. "
                f"event_time: 'to_timestamp(ts)' for unix seconds or 'strptime(ts, ''%Y-%m-%d %H:%M:%S'')'")
        if et.type.tz is None:  # a naive timestamp is UTC
            t = t.set_column(t.column_names.index("event_time"), "event_time", pc.assume_timezone(et, "UTC"))
        t = t.set_column(t.column_names.index("event_time"), "event_time", pc.cast(t.column("event_time"), TIMESTAMP))
        self._stats["log_rows"] = t.num_rows
        self._stats["rows_without_event_time"] = int(t.column("event_time").null_count)
        return t

    def _clip_days(self, impressions: pa.Table) -> tuple[int, int]:
        """First and last day delivered: the log's, clipped by files.start_date / end_date."""
        us = pc.drop_null(impressions.column("event_time")).cast(pa.int64()).to_numpy()
        if us.size == 0:
            raise SourceConfigError("files.impressions: the log has no rows with an event_time")
        first, last = int(us.min() // US_PER_DAY), int(us.max() // US_PER_DAY)
        if self.cfg.start_date:
            first = max(first, date_to_ordinal(self.cfg.start_date))
        if self.cfg.end_date:
            last = min(last, date_to_ordinal(self.cfg.end_date))
        if last < first:
            raise SourceConfigError(f"files: the log has no day between start_date {self.cfg.start_date} and "
                                    f"end_date {self.cfg.end_date}")
        return first, last

    def _negatives(self, con: "duckdb.DuckDBPyConnection", imp: pa.Table, first: int, last: int) -> pa.Table:
        """Logged rows plus sampled negatives (every task 0), day by day over [first, last]."""
        neg = self.cfg.negatives
        if neg.per_positive == 0:
            return imp
        keys = con.from_arrow(imp).query(
            "imp", "SELECT u, a, t FROM (SELECT TRY_CAST(user_id AS BIGINT) AS u, TRY_CAST(ad_id AS BIGINT) AS a, "
                   "epoch_us(event_time) AS t FROM imp) WHERE u IS NOT NULL AND a IS NOT NULL AND t IS NOT NULL "
                   "ORDER BY t, u, a").to_arrow_table()
        u, a, t = (keys.column(c).to_numpy() for c in ("u", "a", "t"))
        if u.size and (u.min() < 0 or a.min() < 0):
            raise SourceConfigError("files.negatives: negative sampling needs non-negative integer user_id and ad_id")
        day = np.floor_divide(t, US_PER_DAY)
        span = int(a.max(initial=0)) + 1
        forbidden = np.unique(pair_keys(u, a, span))  # never a pair the user has any logged row with
        items, item_idx = np.unique(a, return_inverse=True)
        first_day_of_item = np.full(items.size, np.iinfo(np.int64).max)
        np.minimum.at(first_day_of_item, item_idx, day)
        seen = np.zeros(items.size, dtype=np.int64)  # popularity known so far (rows up to the day)
        np.add.at(seen, item_idx[day < first], 1)
        starts = np.searchsorted(day, np.arange(first, last + 2))
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        unfilled = 0
        for i, d in enumerate(range(first, last + 1)):
            lo, hi = starts[i], starts[i + 1]
            np.add.at(seen, item_idx[lo:hi], 1)
            if lo == hi:
                continue
            pool = np.flatnonzero(first_day_of_item <= d)
            draw = sample_negatives(np.random.default_rng([neg.seed, d]), u[lo:hi], items[pool],
                                    seen[pool].astype(np.float64), forbidden, span, neg.per_positive, neg.jitter_s)
            unfilled += draw.unfilled
            parent = lo + draw.parent
            parts.append((u[parent], draw.item,
                          np.clip(t[parent] + draw.offset_s * 1_000_000, d * US_PER_DAY, (d + 1) * US_PER_DAY - 1)))
        nu, na, nt = (np.concatenate([p[k] for p in parts]) if parts else np.empty(0, np.int64) for k in range(3))
        n = int(nu.size)
        self._stats.update(negative_impressions=n, unfilled_negatives=int(unfilled))
        values: dict[str, pa.Array] = {
            "event_time": pa.array(nt, pa.int64()).cast(TIMESTAMP),
            "user_id": pa.array(nu, pa.int64()),
            "ad_id": pa.array(na, pa.int64()),
            # the default request_id's form (user-ad-time in us), so an id tells nothing about the label;
            # unique: a sampled pair is never a logged pair and at most once a day
            "request_id": pc.binary_join_element_wise(*(pc.cast(pa.array(x), pa.string()) for x in (nu, na, nt)), "-"),
        }
        values.update({task: pa.array(np.zeros(n, np.int8)) for task in self.tasks})
        for col, default in (("slot", "default"), ("position", 1)):
            logged = pc.unique(imp.column(col)).to_pylist()  # a constant of the log carries over
            values[col] = pa.repeat(pa.scalar(logged[0] if len(logged) == 1 else default), n)
        cols = {c: (pc.cast(values[c], f.type) if c in values else pa.nulls(n, f.type)) for c, f in zip(imp.column_names, imp.schema)}
        return pa.concat_tables([imp, pa.table(cols, schema=imp.schema)])

    def _exposure_and_ids(self, con: "duckdb.DuckDBPyConnection", imp: pa.Table, first_day: int) -> pa.Table:
        """Fill request_id and exposure_index where the log does not give them; sort by time; add the
        delivery day (rows without a time go to the first day, where ingestion quarantines them)."""
        request = ("coalesce(request_id, concat_ws('-', user_id, ad_id, epoch_us(event_time)))"
                   if "request_id" in self._computed else "request_id")
        exposure = (f"row_number() OVER (PARTITION BY user_id, ad_id ORDER BY event_time, {request})"
                    if "exposure_index" in self._computed else "exposure_index")
        cols = [sql_ident(c) for c in imp.column_names if c not in ("request_id", "exposure_index")]
        sql = (f"SELECT {', '.join(cols)}, {request} AS request_id, {exposure} AS exposure_index, "
               f"CAST(floor(epoch_us(event_time) / {US_PER_DAY}) AS BIGINT) AS {_DAY} FROM imp "
               f"ORDER BY {_DAY} NULLS FIRST, event_time, request_id")
        out = con.from_arrow(imp).query("imp", sql).to_arrow_table()
        days = out.column(_DAY)
        if days.null_count:  # no event time: deliver on the first day so ingestion quarantines the rows
            out = out.set_column(out.column_names.index(_DAY), _DAY, pc.fill_null(days, first_day))
        names = IMPRESSIONS.required.names + list(self.tasks)
        return out.select(names + [c for c in out.column_names if c not in names and c != _DAY] + [_DAY])

    @staticmethod
    def _first_impression(con: "duckdb.DuckDBPyConnection", imp: pa.Table, key: str) -> pa.Table:
        """Per id: the time of its first impression."""
        return con.from_arrow(imp).query(
            "imp", f"SELECT {sql_ident(key)}, min(event_time) AS first_seen FROM imp WHERE event_time IS NOT NULL "
                   f"GROUP BY 1").to_arrow_table()

    def _dimension(self, con: "duckdb.DuckDBPyConnection", table: str, schema: pa.Schema, key: str,
                   first_seen: pa.Table, first_day: int) -> pa.Table:
        """The snapshot of ``ads`` or ``users``, each entity on the day it is first needed (module
        docstring); without a configured table, the impressions' ids."""
        cfg = getattr(self.cfg, table)
        if cfg is None:
            dim = first_seen.select([key])
            self._stats[f"{table}_derived_from_impressions"] = dim.num_rows
        else:
            sql = source_sql(cfg, table)
            select = mapped_select(read_columns(con, sql, table), cfg, table, schema.names, {key}, {})
            dim = run_mapped(con, select, sql, cfg, table)
        created = "CAST(NULL AS TIMESTAMPTZ)"
        if "created_at" in dim.column_names:
            ca = dim.column("created_at")
            if pa.types.is_timestamp(ca.type) and ca.type.tz is None:
                dim = dim.set_column(dim.column_names.index("created_at"), "created_at", pc.assume_timezone(ca, "UTC"))
            elif not (pa.types.is_timestamp(ca.type) or pa.types.is_null(ca.type)):
                raise SourceConfigError(f"files.{table}: created_at is {ca.type}, not a timestamp; map it with an "
                                        f"expression such as to_timestamp(col), or leave it out")
            created = "CAST(d.created_at AS TIMESTAMPTZ)"
        others = ", ".join("d." + sql_ident(c) for c in dim.column_names if c != "created_at")
        k = sql_ident(key)
        sql = (
            f"SELECT {others}, coalesce(least({created}, f.first_seen), to_timestamp({first_day * 86_400})) AS created_at, "
            f"coalesce({created} > f.first_seen, false) AS __late, {created} IS NULL AS __no_created "
            f"FROM dim d LEFT JOIN fs f ON TRY_CAST(d.{k} AS BIGINT) = TRY_CAST(f.{k} AS BIGINT)"
        )
        con.register("dim", dim)
        con.register("fs", first_seen)
        try:
            t = run_sql(con, f"SELECT *, greatest(CAST(floor(epoch_us(created_at) / {US_PER_DAY}) AS BIGINT), "
                          f"{first_day}) AS {_DAY} FROM ({sql}) ORDER BY {_DAY}, {k}", table)
        finally:
            con.unregister("dim")
            con.unregister("fs")
        self._stats[f"{table}_created_after_first_impression"] = int(pc.sum(t.column("__late")).as_py() or 0)
        self._stats[f"{table}_without_created_at"] = int(pc.sum(t.column("__no_created")).as_py() or 0)
        self._stats[f"{table}_rows"] = t.num_rows
        t = t.drop_columns(["__late", "__no_created"])
        for f in schema:  # optional contract columns the user does not have (no image, no title): null
            if f.name not in t.column_names:
                t = t.append_column(f, pa.nulls(t.num_rows, f.type))
        return t.select(schema.names + [c for c in t.column_names if c not in schema.names])


def input_fingerprint(settings: "Settings") -> str:
    """Identity of the configured input files (path, size, modification time) and the files config:
    what must match for a cached parse, or an earlier delivery, to still be right."""
    h = hashlib.sha256(json.dumps(settings.files.model_dump(mode="json"), sort_keys=True).encode())
    for table in ("impressions", "ads", "users"):
        cfg = getattr(settings.files, table)
        if cfg is None:
            continue
        for f in table_files(cfg, table):
            if is_uri(f):
                h.update(f.encode())
                continue
            st = Path(f).stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()

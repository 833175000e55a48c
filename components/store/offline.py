"""The offline store's read side: the one path for reading landed rows, and the quarantine summary.

Layout (written by components/ingest/day.py, one folder per UTC day, replaced atomically):
``<offline>/<table>/date=D/part-0.parquet`` (landed rows), ``<quarantine>/<table>/date=D/part-0.parquet``
(rejects) and ``<quarantine>/_reports/date=D/ingest_report.json``. Readers go through
:func:`read_offline` / :func:`offline_relation`; :func:`quarantine_summary` aggregates rejects over a
date window. See docs/ingestion.md.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from components.schemas import CONTRACTS, TABLES, day_dir, impressions_schema
from components.store.sql import connect, partition_files, sql_ident, sql_str

if TYPE_CHECKING:
    import duckdb

    from components.config import Settings

PART_FILE = "part-0.parquet"
REPORTS_TABLE = "_reports"  # <quarantine>/_reports/date=D/ingest_report.json
REJECTED_DIR = "_rejected"  # <quarantine>/_rejected/date=D/<time>/: failed deliveries that kept a landed day


def offline_partitions(settings: "Settings", table: str, start: dt.date | None = None,
                       end: dt.date | None = None, root: Path | None = None) -> list[tuple[dt.date, Path]]:
    """(day, parquet file) of every landed partition of ``table`` with ``start <= day <= end``
    (either bound None: open), oldest first."""
    return partition_files((root or settings.offline_dir) / table, PART_FILE, start, end)


def _contract_schema(settings: "Settings", table: str) -> pa.Schema:
    if table not in CONTRACTS:
        raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
    return impressions_schema(settings.tasks) if table == "impressions" else CONTRACTS[table].required


def offline_relation(con: "duckdb.DuckDBPyConnection", settings: "Settings", table: str, start: dt.date | None,
                     end: dt.date | None, latest: bool = False,
                     with_partition_date: bool = False) -> "duckdb.DuckDBPyRelation":
    """A DuckDB relation over the landed rows of ``table`` for days ``start..end`` (inclusive).

    ``latest=True`` (ads, users): one row per id, the one from the newest partition in the window, which
    is how a later day's updated row wins. ``with_partition_date`` adds ``partition_date`` (DATE).
    Ads/users partitions may differ in their extra columns; they are unioned by name (missing: NULL).
    Set the connection's ``TimeZone`` to UTC (``SET TimeZone='UTC'``) to get UTC timestamps back.
    """
    files = offline_partitions(settings, table, start, end)
    if not files:
        empty = _contract_schema(settings, table).empty_table()
        if with_partition_date:
            empty = empty.append_column("partition_date", pa.array([], pa.date32()))
        return con.from_arrow(empty)
    listing = ", ".join(sql_str(f) for _, f in files)
    date_expr = "CAST(regexp_extract(filename, 'date=([0-9-]+)', 1) AS DATE)"
    sql = (f"SELECT * EXCLUDE (filename), {date_expr} AS partition_date FROM read_parquet([{listing}], "
           f"filename=true, hive_partitioning=false, union_by_name=true)")
    if latest:
        key = CONTRACTS[table].unique[0] if CONTRACTS[table].unique else None
        if key is None or table == "impressions":
            raise ValueError(f"latest=True is for ads and users (one row per id), not {table}")
        sql = f"SELECT * FROM ({sql}) QUALIFY row_number() OVER (PARTITION BY {sql_ident(key)} ORDER BY partition_date DESC) = 1"
    if not with_partition_date:
        sql = f"SELECT * EXCLUDE (partition_date) FROM ({sql})"
    return con.sql(sql)


def read_offline(settings: "Settings", table: str, start: dt.date | None, end: dt.date | None,
                 columns: Sequence[str] | None = None, latest: bool = False,
                 with_partition_date: bool = False) -> pa.Table:
    """The landed rows of ``table`` for days ``start..end`` (inclusive; None: open) as an Arrow table
    with the contract types (timestamps UTC). See :func:`offline_relation` for ``latest``.

    Example: the ads as known at the end of ``day``: ``read_offline(s, "ads", None, day, latest=True)``.
    """
    con = connect()
    try:
        rel = offline_relation(con, settings, table, start, end, latest, with_partition_date)
        if columns:
            rel = rel.select(*[sql_ident(c) for c in columns])
        out = rel.to_arrow_table()
    finally:
        con.close()
    schema = _contract_schema(settings, table)
    for i, name in enumerate(out.column_names):  # DuckDB round-trips types; make sure of the contract's
        if name in schema.names and out.schema.field(i).type != schema.field(name).type:
            out = out.set_column(i, name, pc.cast(out.column(i), schema.field(name).type))
    return out


def quarantine_summary(settings: "Settings", start: dt.date, end: dt.date) -> dict[str, Any]:
    """Rejects over days ``start..end`` (inclusive): per table and per day, rows landed, rows and
    unreadable files quarantined, the quarantine rate and the reasons; plus whether every ingested day
    passed its expectations (from the ingest reports), and the failed deliveries that were kept out
    of a landed day (``rejected_deliveries``: day -> folders under ``<quarantine>/_rejected/``). Plain JSON."""
    import pyarrow.parquet as pq

    con = connect()
    per_day: dict[str, dict[str, Any]] = {}
    totals: dict[str, dict[str, Any]] = {}
    try:
        for table in TABLES:
            tot = totals.setdefault(table, {"rows_landed": 0, "rows_quarantined": 0, "files_quarantined": 0,
                                            "reasons": {}})
            for day, f in offline_partitions(settings, table, start, end):
                n = pq.ParquetFile(f).metadata.num_rows
                per_day.setdefault(day.isoformat(), {}).setdefault(table, {})["rows_landed"] = n
                tot["rows_landed"] += n
            for day, f in offline_partitions(settings, table, start, end, root=settings.quarantine_dir):
                entry = per_day.setdefault(day.isoformat(), {}).setdefault(table, {})
                rows = con.sql(f"SELECT reason, count(*) AS n FROM read_parquet({sql_str(f)}) GROUP BY reason "
                               f"ORDER BY n DESC, reason").fetchall()
                reasons = {r: int(n) for r, n in rows}
                n_files = len(list((f.parent / "files").glob("*.reason.txt")))
                entry.update(rows_quarantined=sum(reasons.values()), files_quarantined=n_files, reasons=reasons)
                tot["rows_quarantined"] += entry["rows_quarantined"]
                tot["files_quarantined"] += n_files
                for r, n in reasons.items():
                    tot["reasons"][r] = tot["reasons"].get(r, 0) + n
    finally:
        con.close()
    for entries in [*per_day.values(), totals]:
        for t in entries.values():
            seen = t.get("rows_landed", 0) + t.get("rows_quarantined", 0)
            t["quarantine_rate"] = t.get("rows_quarantined", 0) / seen if seen else 0.0
    failing, missing = [], []
    rejected: dict[str, list[str]] = {}
    d = start
    while d <= end:
        folder = day_dir(settings.quarantine_dir, REJECTED_DIR, d)
        if folder.is_dir():  # failed deliveries that did not replace the landed day
            rejected[d.isoformat()] = sorted(str(p) for p in folder.iterdir() if not p.name.startswith("."))
        path = day_dir(settings.quarantine_dir, REPORTS_TABLE, d) / "ingest_report.json"
        if not path.is_file():
            missing.append(d.isoformat())
        elif not json.loads(path.read_text()).get("expectations_passed", False):
            failing.append(d.isoformat())
        d += dt.timedelta(days=1)
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "tables": totals,
        "days": dict(sorted(per_day.items())),
        "expectations_passed": not failing and not missing,
        "days_failing_expectations": failing,
        "days_not_ingested": missing,
        "rejected_deliveries": rejected,
    }

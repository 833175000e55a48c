"""Rejected rows: the quarantine table of a checked batch (the rows as delivered, rendered as text, with
the reason, file, row index, day and ingest time), the split of a batch into rows to land and rows to
quarantine, the writers of both partitions, and a failing delivery put aside under
``<quarantine>/_rejected/date=D/<time>/`` when the day had already landed.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from components import storage
from components.ingest.reasons import (
    DELIVERY_REJECTED,
    DETAIL_COL,
    FILE_COL,
    QUARANTINE_META,
    REASON_COL,
    ROW_COL,
    constant,
    fill_reason,
    reason_text,
)
from components.ingest.report import IngestError, IngestReport, single_line
from components.ingest.table_run import TableRun
from components.schemas import TABLES, TIMESTAMP
from components.store.offline import PART_FILE, REJECTED_DIR

if TYPE_CHECKING:
    import duckdb

    from components.config import Settings


def _as_text(table: pa.Table, con: "duckdb.DuckDBPyConnection", warnings: list[str], where: str) -> pa.Table:
    """Every column rendered as text (DuckDB's CAST AS VARCHAR: lossless for numbers and timestamps,
    \\x-escaped for bytes), so rejects of any type fit one quarantine table."""
    out: dict[str, pa.Array] = {}
    for name in table.column_names:
        arr = table.column(name)
        if pa.types.is_string(arr.type):
            out[name] = arr.combine_chunks()
            continue
        try:
            rel = con.from_arrow(pa.table({"v": arr}))
            out[name] = rel.project("CAST(v AS VARCHAR) AS v").to_arrow_table().column("v").combine_chunks()
        except Exception:  # a type DuckDB cannot take: fall back to Arrow's cast, else leave it out
            try:
                out[name] = pc.cast(arr, pa.string()).combine_chunks()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                warnings.append(f"{where}: column {name} of type {arr.type} cannot be rendered as text; "
                                f"it is left out of the quarantine rows")
    return pa.table(out) if out else pa.table({})


def quarantine_rows(run: TableRun, batch: pa.Table | None, day: dt.date, ingested_at: dt.datetime,
                     con: "duckdb.DuckDBPyConnection") -> pa.Table:
    """Rejected rows as delivered (text) with the reason, file, row index, day and ingest time."""
    parts = list(run.whole_file_rejects)
    if batch is not None and batch.num_rows:
        bad = pc.is_valid(batch.column(REASON_COL))
        parts.append(batch.filter(bad).select([FILE_COL, ROW_COL, REASON_COL, DETAIL_COL]))
    rejects = pa.concat_tables(parts) if parts else None
    if rejects is None or rejects.num_rows == 0:
        return QUARANTINE_META.empty_table()
    rejects = rejects.sort_by([(FILE_COL, "ascending"), (ROW_COL, "ascending")])
    tables = []
    file_col = rejects.column(FILE_COL).combine_chunks()
    for idx in pc.unique(file_col).to_pylist():  # one take per file, not per row
        sel = rejects.filter(pc.equal(file_col, idx))
        name = run.files[idx].name
        values = _as_text(run.originals[idx].take(sel.column(ROW_COL)), con, run.report.warnings,
                          f"{run.contract.name} file {name}")
        n = sel.num_rows
        meta = {
            "reason": sel.column(REASON_COL),
            "detail": sel.column(DETAIL_COL),
            "source_file": constant(name, n, pa.string()),
            "row_index": sel.column(ROW_COL),
            "day": constant(day, n, pa.date32()),
            "ingested_at": constant(ingested_at, n, TIMESTAMP),
        }
        cols = dict(meta)
        for c in values.column_names:
            cols[f"raw_{c}" if c in meta else c] = values.column(c)
        tables.append(pa.table(cols))
    return pa.concat_tables(tables, promote_options="default")


def split_rows(settings: "Settings", run: TableRun, day: dt.date, ingested_at: dt.datetime,
           con: "duckdb.DuckDBPyConnection") -> tuple[pa.Table, pa.Table]:
    """(rows to land, quarantine rows) of a checked table; fills the counts and reasons of its report."""
    rep, batch = run.report, run.batch
    if batch is not None:
        reasons = batch.column(REASON_COL)
        # a clean batch (the usual day) lands whole: no filter pass copying every column
        landed = batch if reasons.null_count == batch.num_rows else batch.filter(pc.is_null(reasons))
        landed = landed.select([f.name for f in run.schema] + rep.kept_extra_columns)
        target = pa.schema(list(run.schema) + [landed.schema.field(c) for c in rep.kept_extra_columns])
        landed = landed.cast(target)
    else:
        landed = run.schema.empty_table()
    quarantine = quarantine_rows(run, batch, day, ingested_at, con)
    rep.rows_landed = landed.num_rows
    rep.rows_quarantined = quarantine.num_rows
    if rep.rows_in != rep.rows_landed + rep.rows_quarantined:  # a bug, never a data problem
        raise IngestError(f"{run.contract.name} {day}: {rep.rows_in} rows in but {rep.rows_landed} landed + "
                          f"{rep.rows_quarantined} quarantined")
    rep.reasons = {}
    if quarantine.num_rows:
        counts = pc.value_counts(quarantine.column("reason")).to_pylist()
        rep.reasons = dict(sorted(((c["values"], c["counts"]) for c in counts), key=lambda kv: (-kv[1], kv[0])))
    return landed, quarantine


def reject_delivery(settings: "Settings", runs: dict[str, TableRun], day: dt.date, ingested_at: dt.datetime,
                     now: dt.datetime, con: "duckdb.DuckDBPyConnection", report: IngestReport, t0: float) -> None:
    """A failing delivery for a day that already landed: keep every partition of the day, and put the
    whole delivery under ``<quarantine>/_rejected/date=D/<time>/``: each table's raw files unchanged in
    ``<table>/files/`` (unreadable ones with ``<name>.reason.txt``), its rows in ``<table>/part-0.parquet``
    (rejects with their reason; valid rows as ``delivery_rejected``), ``REASON.txt`` and the report."""
    why = single_line(next(f for r in runs.values() for f in r.report.failures), 200)
    parts: dict[str, pa.Table] = {}
    for table in TABLES:
        run = runs[table]
        if run.batch is not None:
            reason = run.batch.column(REASON_COL).combine_chunks()
            valid = pc.is_null(reason)
            reason = fill_reason(reason, valid, reason_text(DELIVERY_REJECTED, "day kept"))
            detail = pc.if_else(valid, pa.scalar(why, pa.string()), run.batch.column(DETAIL_COL).combine_chunks())
            run.batch = run.batch.set_column(run.batch.column_names.index(REASON_COL), REASON_COL, reason)
            run.batch = run.batch.set_column(run.batch.column_names.index(DETAIL_COL), DETAIL_COL, detail)
        _, parts[table] = split_rows(settings, run, day, ingested_at, con)
        run.report.kept_previous = bool(run.report.previous_rows is not None)
        run.report.warnings.append(f"{table}: the delivery failed; the partition of {day} landed before "
                                   f"({run.report.previous_rows or 0:,} rows) was kept")
        report.tables[table] = run.report
    folder = settings.quarantine_dir / REJECTED_DIR / f"date={day.isoformat()}" / now.strftime("%Y%m%dT%H%M%S%fZ")
    report.report_path = str(folder / "ingest_report.json")

    def write(tmp: Path) -> None:
        (tmp / "REASON.txt").write_text(f"delivery of {day} rejected at {now.isoformat()}: the day already "
                                        f"landed was kept.\n" + "\n".join(report.failures) + "\n")
        for table in TABLES:
            run = runs[table]
            (tmp / table).mkdir()
            storage.write_parquet_durable(parts[table], tmp / table / PART_FILE)
            files = tmp / table / "files"
            files.mkdir()
            problems = dict((p.name, why) for p, why in run.failed)
            for path in run.files:
                shutil.copy2(path, files / path.name)
                if path.name in problems:
                    (files / f"{path.name}.reason.txt").write_text(f"unreadable raw file {path}\n{problems[path.name]}\n")
            run.report.quarantine_path = str(folder / table / PART_FILE)
        report.seconds = time.perf_counter() - t0
        storage.write_json_atomic(tmp / "ingest_report.json", report.to_dict())

    storage.replace_partition(folder, write)


def write_landed(rows: pa.Table, tmp: Path) -> None:
    storage.write_parquet_durable(rows, tmp / PART_FILE)  # looked up at call time, so tests can make it fail


def write_quarantine(tmp: Path, rows: pa.Table, failed: list[tuple[Path, str]]) -> None:
    storage.write_parquet_durable(rows, tmp / PART_FILE)
    if failed:
        files = tmp / "files"
        files.mkdir()
        for path, problem in failed:
            shutil.copy2(path, files / path.name)
            (files / f"{path.name}.reason.txt").write_text(f"unreadable raw file {path}\n{problem}\n")

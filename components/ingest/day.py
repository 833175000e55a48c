"""Validated ingestion: a day's raw landing files -> the offline store, with every reject quarantined.

``ingest_day`` reads ``<home>/raw/<source>/<table>/date=D/*.parquet|*.csv`` for impressions, ads and
users, conforms each file to the data contract (components/schemas.py), rejects bad rows with
vectorised checks (Arrow compute and DuckDB; no per-row Python), runs the Great Expectations suites on
the rows about to land (validation/expectations.py), and then replaces, atomically, the day's
partitions:

- ``<home>/offline/<table>/date=D/part-0.parquet``: the valid rows, cast to the contract types;
- ``<home>/quarantine/<table>/date=D/part-0.parquet``: the rejected rows as delivered (every column
  rendered as text) with ``reason``, ``detail``, ``source_file``, ``row_index``, ``day`` and
  ``ingested_at``; files that could not be read at all are copied unchanged into
  ``<home>/quarantine/<table>/date=D/files/`` beside a ``<name>.reason.txt``.

Re-running a day replaces both partitions and gives the same rows (nothing lost, nothing counted
twice). Partitions are swapped in with components/storage.py.

This module holds ``ingest_day`` and its steps; the pieces live beside it: ``conform.py`` (reading and
casting raw files), ``checks.py`` (the row checks), ``reasons.py`` (reason codes and the reason column),
``quarantine.py`` (rejected rows, the writers, a rejected delivery), ``report.py`` (the reports and
errors), ``table_run.py`` (one table's working state) and ``index.py`` (the cross-day ingest index). Readers go through
components/store/offline.py (``read_offline`` / ``offline_relation``, the one path for reading the
offline store; ``quarantine_summary``). See docs/ingestion.md for the checks, the reasons and the
re-run semantics.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from components import storage
from components.faults import declare, fault_point
from components.ingest.checks import check_rows, ingest_window
from components.ingest.conform import conform_file, raw_files, read_raw, unify_extras
from components.ingest.quarantine import reject_delivery, split_rows, write_landed, write_quarantine
from components.ingest.reasons import (
    INTERNAL_PREFIX,
    MISSING_COLUMN,
    REASON_COL,
    UNCASTABLE_COLUMN,
    WRONG_TYPE,
    describe_reason,
)
from components.ingest.report import IngestReport, TableReport, single_line
from components.ingest.table_run import TableRun, fail_day
from components.schemas import CONTRACTS, TABLES, TableContract, day_dir, impressions_schema
from components.store.offline import PART_FILE, REPORTS_TABLE
from components.store.days import begin_day, commit_day
from components.store.sql import connect

if TYPE_CHECKING:
    import duckdb

    from components.config import Settings
    from components.ingest.index import IngestIndex

log = logging.getLogger(__name__)
declare("ingest.after_impressions", "ingest.before_marker")


def _label_bounds(settings: "Settings", tasks: Sequence[str], n_rows: int) -> dict[str, tuple[float, float]]:
    """Per-task plausible label rates: ``ingest.label_rate_bounds[task]``, else
    ``ingest.default_label_rate_bounds``; on days with fewer than ``ingest.label_rate_min_rows`` rows the
    rate is too noisy to judge and any rate passes."""
    cfg = settings.ingest
    if n_rows < cfg.label_rate_min_rows:
        return {t: (0.0, 1.0) for t in tasks}
    return {t: tuple(cfg.label_rate_bounds.get(t, cfg.default_label_rate_bounds)) for t in tasks}  # type: ignore[misc]


def _expectation_spec(settings: "Settings", contract: TableContract, schema: pa.Schema, day: dt.date,
                      tasks: Sequence[str], n_rows: int) -> Any:
    from validation.expectations import BatchSpec, gx_type_name

    start, end = ingest_window(settings, day)
    impressions = contract.name == "impressions"
    return BatchSpec(
        table=contract.name,
        column_types={f.name: n for f in schema if (n := gx_type_name(f.type))},
        not_null=contract.keys,
        unique=contract.unique,
        labels=tuple(tasks) if impressions else (),
        label_rate_bounds=_label_bounds(settings, tasks, n_rows) if impressions else {},
        time_column=contract.time_column,
        time_min=start if impressions else None,
        time_max=end,
        # An empty day is a policy question (ingest.empty_day), not a data error, unless the policy says so.
        min_rows=1 if impressions and settings.ingest.empty_day == "fail" else 0,
    )


def _ingest_table(settings: "Settings", run: TableRun, raw_dir: Path, day: dt.date, tasks: Sequence[str],
                  con: "duckdb.DuckDBPyConnection") -> None:
    """Read, conform and check one table of the day; leaves the checked rows in ``run.batch``."""
    rep, contract = run.report, run.contract
    run.files = raw_files(raw_dir)
    if not run.files:
        rep.warnings.append(f"no raw {contract.name} files for {day} in {raw_dir}: the day's partition will be empty")
    for idx, path in enumerate(run.files):
        try:
            raw = read_raw(path, run.schema)
        except Exception as exc:  # corrupt, truncated, not parquet/CSV at all: keep the file as-is
            if path.stat().st_size == 0:
                rep.files_read.append(path.name)
                rep.files_empty.append(path.name)
                rep.warnings.append(f"{contract.name} file {path.name} is empty (0 bytes): nothing to land")
                continue
            # The folder is in the report already: name the file only, so the message stays one short line.
            problem = single_line(f"{type(exc).__name__}: {exc}".replace(str(path), path.name).strip(), 200)
            rep.files_failed[path.name] = problem
            fail_day(rep, f"{contract.name} file {path.name} cannot be read ({problem})")
            rep.errors[-1] += f"; copied unchanged to quarantine with {path.name}.reason.txt"
            run.failed.append((path, problem))
            continue
        rep.files_read.append(path.name)
        if raw.num_rows == 0:
            rep.files_empty.append(path.name)
            rep.warnings.append(f"{contract.name} file {path.name} has no rows: nothing to land")
            continue
        rep.rows_in += raw.num_rows
        run.originals[idx] = raw
        conform_file(run, idx, raw, con)

    contract_cols = {f.name for f in run.schema}
    for col, files in rep.ignored_columns.items():
        rep.warnings.append(f"{contract.name}: column {col} is not in the contract and was ignored "
                            f"(file(s) {', '.join(files)})")
    if run.conformed:
        batch = pa.concat_tables(unify_extras(run.conformed, contract_cols), promote_options="default")
        run.batch = check_rows(settings, run, batch, day, tasks, con)
        rep.kept_extra_columns = [c for c in run.batch.column_names
                                  if c not in contract_cols and not c.startswith(INTERNAL_PREFIX)]


def _day_failures(settings: "Settings", run: TableRun, day: dt.date) -> None:
    """Add the table's reasons to fail the day to ``report.failures`` (whole-file problems are already
    there). See docs/ingestion.md, 'When a day fails'."""
    rep, name = run.report, run.contract.name
    top = ", ".join(f"{r} {n:,}" for r, n in list(rep.reasons.items())[:2])
    where = f" (files {', '.join(p.name for p in run.files)})" if run.files else ""
    if rep.rows_in and not rep.rows_landed:
        rep.failures.append(f"{name}: all {rep.rows_in:,} rows rejected{where} ({top})")
    elif rep.rows_in and rep.quarantine_rate > settings.ingest.max_quarantine_rate:
        rep.failures.append(f"{name}: {rep.rows_quarantined:,} of {rep.rows_in:,} rows quarantined "
                            f"({rep.quarantine_rate:.1%}){where}, above ingest.max_quarantine_rate "
                            f"{settings.ingest.max_quarantine_rate:.1%} ({top})")
    if not rep.rows_in and not rep.files_failed and rep.previous_rows:
        rep.failures.append(f"{name}: the delivery has no rows{where or ' (no files)'} but {rep.previous_rows:,} "
                            f"rows of {day} landed before")
    if name == "impressions" and not rep.rows_in and not rep.files_failed:
        policy = settings.ingest.empty_day
        msg = f"impressions: no rows for {day}{where} (an empty day; ingest.empty_day = {policy})"
        if policy == "fail":
            rep.failures.append(msg)
        elif policy == "warn":
            rep.warnings.append(msg)


def _row_messages(run: TableRun, quarantine: pa.Table, window: tuple[dt.datetime, dt.datetime]) -> None:
    """One sentence per (file, reason) for row-level rejects (whole-file ones are already errors)."""
    win = f"[{window[0].isoformat()}, {window[1].isoformat()})"
    grouped = quarantine.group_by(["source_file", "reason"], use_threads=False).aggregate([("row_index", "count")])
    for g in sorted(grouped.to_pylist(), key=lambda r: (r["source_file"], r["reason"])):
        code = g["reason"].split(":")[0]
        if code in (MISSING_COLUMN, UNCASTABLE_COLUMN, WRONG_TYPE):
            continue  # already reported when the file was conformed
        run.report.warnings.append(f"{run.contract.name} file {g['source_file']}: {g['row_index_count']:,} row(s) "
                                   f"quarantined, {describe_reason(g['reason'], win)} ({g['reason']})")


@contextlib.contextmanager
def _timed(report: IngestReport, name: str) -> Iterator[None]:
    """Add the block's wall time to ``report.timings[name]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        report.timings[name] = report.timings.get(name, 0.0) + time.perf_counter() - t0


def _previous_rows(settings: "Settings", table: str, day: dt.date) -> int | None:
    """Rows of the day's landed partition of ``table`` (from the parquet footer), None when none."""
    import pyarrow.parquet as pq

    path = day_dir(settings.offline_dir, table, day) / PART_FILE
    return pq.ParquetFile(path).metadata.num_rows if path.is_file() else None


# Dimensions first: the impressions' referential check needs the day's own ads and users.
_ORDER = ("ads", "users", "impressions")


def ingest_day(settings: "Settings", source_name: str, day: dt.date, tasks: Sequence[str]) -> IngestReport:
    """Validate ``day``'s raw files of ``source_name`` and replace the day's offline and quarantine
    partitions of every table atomically. Returns the report (also written as JSON: see
    ``report.report_path``).

    A delivery that fails (``report.failed``; docs/ingestion.md, 'When a day fails') never replaces a
    day that already landed: when any table of the day holds landed rows, every partition of the day is
    kept, the whole delivery (files, rejects, report) goes to
    ``<quarantine>/_rejected/date=D/<time>/`` and its would-be-landed rows count as quarantined
    (``delivery_rejected``). The caller decides what a failed report means (``steps.ingest`` raises
    :class:`IngestDayFailed`).

    Raises ``IngestError`` (or the write's own ``OSError``) when a partition cannot be written; each
    partition is then either wholly old or wholly new, and re-running the day repairs it.
    """
    from components.ingest.index import open_index

    t0 = time.perf_counter()
    tasks = list(tasks)
    if not tasks:
        raise ValueError("ingest_day needs at least one task label column (e.g. ['click'])")
    now = dt.datetime.now(dt.timezone.utc)
    ingested_at = now.replace(microsecond=0)
    report = IngestReport(source=source_name, day=day, tasks=tasks, ingested_at=ingested_at)
    con = connect()
    try:
        sync_start = time.perf_counter()
        with open_index(settings) as index:
            report.timings["index_open_sync"] = time.perf_counter() - sync_start
            report.index = dict(index.synced)
            runs = _read_and_check(settings, index, settings.raw_dir / source_name, day, tasks, con, report)
            with _timed(report, "split_quarantine_rows"):
                outputs = {t: split_rows(settings, runs[t], day, ingested_at, con) for t in TABLES}
            for t in TABLES:
                _day_failures(settings, runs[t], day)
            protect = any(r.report.failures for r in runs.values()) and any(
                r.report.previous_rows for r in runs.values())
            if protect:
                reject_delivery(settings, runs, day, ingested_at, now, con, report, t0)
                log.warning(report.summary())
                return report
            _validate_expectations(settings, runs, outputs, day, tasks, report)
            _write_day(settings, runs, outputs, index, day, report)
    finally:
        con.close()
    report.seconds = time.perf_counter() - t0
    report.report_path = str(day_dir(settings.quarantine_dir, REPORTS_TABLE, day) / "ingest_report.json")
    _write_report(report)
    (log.warning if report.failed else log.info)(report.summary())
    return report


def _read_and_check(settings: "Settings", index: "IngestIndex", raw_root: Path, day: dt.date, tasks: list[str],
                    con: "duckdb.DuckDBPyConnection", report: IngestReport) -> dict[str, TableRun]:
    """Read, conform and check every table of the day (dimensions first: the impressions' referential
    check needs the day's own ads and users); the checked rows are in each run's ``batch``."""
    runs: dict[str, TableRun] = {}
    for table in _ORDER:
        contract = CONTRACTS[table]
        schema = impressions_schema(tasks) if table == "impressions" else contract.required
        run = TableRun(contract=contract, schema=schema, report=TableReport(table=table), index=index)
        run.report.previous_rows = _previous_rows(settings, table, day)
        run.known = {k: runs[k].batch.filter(pc.is_null(runs[k].batch.column(REASON_COL))).column(
            CONTRACTS[k].unique[0]).combine_chunks() for k in ("ads", "users")
            if k in runs and runs[k].batch is not None}
        with _timed(report, f"read_check_{table}"):
            _ingest_table(settings, run, day_dir(raw_root, table, day), day, tasks, con)
        runs[table] = run
    unknown = sorted(set(settings.ingest.label_rate_bounds) - set(tasks))
    if unknown:
        runs["impressions"].report.warnings.append(
            f"ingest.label_rate_bounds names task(s) {unknown} that the source does not have "
            f"(its tasks: {tasks}); those bounds are not used")
    return runs


def _validate_expectations(settings: "Settings", runs: dict[str, TableRun],
                           outputs: dict[str, tuple[pa.Table, pa.Table]], day: dt.date, tasks: list[str],
                           report: IngestReport) -> None:
    """Run the Great Expectations suites on the rows about to land and add each table's report (with one
    sentence per file and reason of its quarantined rows)."""
    for table in TABLES:
        run, (landed, _) = runs[table], outputs[table]
        if landed.num_rows or table == "impressions":
            from validation.expectations import validate_batch

            spec = _expectation_spec(settings, run.contract, run.schema, day, tasks, landed.num_rows)
            with _timed(report, "expectations_gx"):
                run.report.expectations = validate_batch(landed, spec, gx_dir=settings.gx_dir,
                                                         run_name=day.isoformat())
            run.report.warnings += [e.sentence() for e in run.report.expectations if not e.success]
        if run.report.quarantine_rate:
            _row_messages(run, outputs[table][1], ingest_window(settings, day))
        report.tables[table] = run.report


def _write_day(settings: "Settings", runs: dict[str, TableRun], outputs: dict[str, tuple[pa.Table, pa.Table]],
               index: "IngestIndex", day: dt.date, report: IngestReport) -> None:
    """Replace the day's partitions of every table, quarantine first so rejects are never lost, then the
    offline one, and re-index its keys (called only after every table validated). The day's commit
    marker is removed first and written last (components/store/days.py): a crash in between leaves the
    day invisible to readers until the next run re-does it."""
    begin_day(settings.offline_dir, day, TABLES)
    for table, (landed, quarantine) in outputs.items():
        q_dir = day_dir(settings.quarantine_dir, table, day)
        o_dir = day_dir(settings.offline_dir, table, day)
        with _timed(report, "write"):
            storage.replace_partition(q_dir, functools.partial(write_quarantine, rows=quarantine,
                                                               failed=runs[table].failed))
            storage.replace_partition(o_dir, functools.partial(write_landed, landed))
        with _timed(report, "index_update"):
            index.index_partition(table, day, o_dir / PART_FILE, rows=landed)
        report.tables[table].landed_path = str(o_dir / PART_FILE)
        report.tables[table].quarantine_path = str(q_dir / PART_FILE)
        if table == "impressions":
            fault_point("ingest.after_impressions")
    fault_point("ingest.before_marker")
    commit_day(settings.offline_dir, day, TABLES)


def _write_report(report: IngestReport) -> None:
    storage.write_json_atomic(Path(report.report_path or ""), report.to_dict())

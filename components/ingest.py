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
twice). Partitions are swapped in with components/storage.py. Readers go through
components/offline_store.py (``read_offline`` / ``offline_relation``, the one path for reading the
offline store; ``quarantine_summary``). See docs/ingestion.md for the checks, the reasons and the
re-run semantics.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components import storage
from components.offline_store import PART_FILE, REPORTS_TABLE, _connect, _sql_ident, _sql_str, offline_partitions
from components.schemas import CONTRACTS, TABLES, TIMESTAMP, TableContract, day_dir, day_window, impressions_schema

if TYPE_CHECKING:
    import duckdb

    from components.config import Settings
    from validation.expectations import ExpectationResult

log = logging.getLogger(__name__)

RAW_SUFFIXES = (".parquet", ".csv")

# Reason codes, in the order they are checked: a row carries the first reason it fails.
MISSING_COLUMN = "missing_column"  # whole file
UNCASTABLE_COLUMN = "uncastable_column"  # whole file: the column's type cannot become the contract type
WRONG_TYPE = "wrong_type"
NULL_KEY = "null_key"
LABEL_NOT_0_1 = "label_not_0_1"
OUTSIDE_WINDOW = "outside_window"
DUPLICATE_IN_BATCH = "duplicate_in_batch"
DUPLICATE_LANDED = "duplicate_landed"

# Columns every quarantine row carries; a delivered column with one of these names is stored as raw_<name>.
QUARANTINE_META = pa.schema(
    [
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("source_file", pa.string()),
        ("row_index", pa.int64()),  # 0-based data row in the source file
        ("day", pa.date32()),
        ("ingested_at", TIMESTAMP),
    ]
)
# Internal bookkeeping columns carried through the checks; delivered columns may not use the prefix.
_INTERNAL = "__"
_FILE, _ROW, _REASON, _DETAIL = "__file", "__row", "__reason", "__detail"

_DUCK_TYPES = {
    pa.int8(): "TINYINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.binary(): "BLOB",
    TIMESTAMP: "TIMESTAMPTZ",
}


class IngestError(RuntimeError):
    """Ingestion could not complete (nothing was half-written: partitions are replaced atomically)."""


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


@dataclass
class TableReport:
    """What happened to one table of one day. Invariant: ``rows_in == rows_landed + rows_quarantined``
    (rows of unreadable files are unknown: those files are listed in ``files_failed`` instead)."""

    table: str
    files_read: list[str] = field(default_factory=list)
    files_empty: list[str] = field(default_factory=list)
    files_failed: dict[str, str] = field(default_factory=dict)  # file -> why it could not be read
    rows_in: int = 0
    rows_landed: int = 0
    rows_quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)  # column -> files it was dropped from
    kept_extra_columns: list[str] = field(default_factory=list)  # ads/users attributes kept
    expectations: list["ExpectationResult"] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    landed_path: str | None = None
    quarantine_path: str | None = None

    @property
    def expectations_passed(self) -> bool:
        return all(e.success for e in self.expectations)

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "files_read": list(self.files_read),
            "files_empty": list(self.files_empty),
            "files_failed": dict(self.files_failed),
            "rows_in": self.rows_in,
            "rows_landed": self.rows_landed,
            "rows_quarantined": self.rows_quarantined,
            "reasons": dict(self.reasons),
            "ignored_columns": {k: list(v) for k, v in self.ignored_columns.items()},
            "kept_extra_columns": list(self.kept_extra_columns),
            "expectations": [e.to_dict() for e in self.expectations],
            "expectations_passed": self.expectations_passed,
            "warnings": list(self.warnings),
            "errors": list(self.errors),
            "landed_path": self.landed_path,
            "quarantine_path": self.quarantine_path,
        }


@dataclass
class IngestReport:
    """The outcome of :func:`ingest_day`; ``to_dict()`` is plain JSON."""

    source: str
    day: dt.date
    tasks: list[str]
    ingested_at: dt.datetime
    seconds: float = 0.0
    tables: dict[str, TableReport] = field(default_factory=dict)

    @property
    def rows_in(self) -> int:
        return sum(t.rows_in for t in self.tables.values())

    @property
    def rows_landed(self) -> int:
        return sum(t.rows_landed for t in self.tables.values())

    @property
    def rows_quarantined(self) -> int:
        return sum(t.rows_quarantined for t in self.tables.values())

    @property
    def files_failed(self) -> int:
        return sum(len(t.files_failed) for t in self.tables.values())

    @property
    def quarantine_rate(self) -> float:
        """Quarantined share of the impressions that arrived (what the data gate bounds)."""
        imp = self.tables.get("impressions")
        return imp.rows_quarantined / imp.rows_in if imp and imp.rows_in else 0.0

    @property
    def expectations_passed(self) -> bool:
        return all(t.expectations_passed for t in self.tables.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "day": self.day.isoformat(),
            "tasks": list(self.tasks),
            "ingested_at": self.ingested_at.isoformat(),
            "seconds": round(self.seconds, 3),
            "rows_in": self.rows_in,
            "rows_landed": self.rows_landed,
            "rows_quarantined": self.rows_quarantined,
            "files_failed": self.files_failed,
            "quarantine_rate": self.quarantine_rate,
            "expectations_passed": self.expectations_passed,
            "tables": {name: t.to_dict() for name, t in self.tables.items()},
        }

    def summary(self) -> str:
        """A few readable lines: per table rows in / landed / quarantined, reasons, failed expectations."""
        lines = [f"ingest {self.source} {self.day}: {self.rows_landed:,} rows landed, "
                 f"{self.rows_quarantined:,} quarantined, {self.files_failed} unreadable files "
                 f"({self.seconds:.1f} s); expectations {'passed' if self.expectations_passed else 'FAILED'}"]
        for t in self.tables.values():
            reasons = ", ".join(f"{r} {n:,}" for r, n in t.reasons.items()) or "none"
            lines.append(f"  {t.table}: in {t.rows_in:,}, landed {t.rows_landed:,}, "
                         f"quarantined {t.rows_quarantined:,} (reasons: {reasons})")
            lines += [f"    FAILED {e.sentence()}" for e in t.expectations if not e.success]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Reading and conforming raw files
# --------------------------------------------------------------------------------------------------


class _Uncastable(Exception):
    """A column whose Arrow type has no sensible cast to the contract type (the whole file fails)."""


def _reason(code: str, column: str, note: str = "") -> str:
    return f"{code}: {column}" + (f" ({note})" if note else "")


def _describe(reason: str, window: str) -> str:
    """A human description of a reason string for report sentences."""
    code, _, rest = reason.partition(": ")
    column = rest.split(" (")[0]
    return {
        WRONG_TYPE: f"values in column {column} cannot be read as the contract type ({rest})",
        NULL_KEY: f"key column {column} is null or empty",
        LABEL_NOT_0_1: f"label column {column} is null or not 0/1",
        OUTSIDE_WINDOW: f"column {column} is outside the run window {window}",
        DUPLICATE_IN_BATCH: f"{column} repeats an earlier row of this day (the first is kept)",
        DUPLICATE_LANDED: f"{column} was already landed on another day",
        MISSING_COLUMN: f"required column(s) {rest} missing",
        UNCASTABLE_COLUMN: f"column {rest}",
    }.get(code, reason)


def _raw_files(folder: Path) -> list[Path]:
    """The day's raw files in a fixed order (by name), so 'first wins' is reproducible."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in RAW_SUFFIXES
                  and not p.name.startswith("."))


def _read_raw(path: Path, schema: pa.Schema) -> pa.Table:
    """Read one raw file as delivered. CSV contract string columns are read as text so ids keep their
    leading zeros; every other CSV column is type-inferred (a bad value makes it text, and the cast
    step then rejects just the bad values)."""
    if path.suffix.lower() == ".csv":
        import pyarrow.csv as pacsv

        text_cols = {f.name: pa.string() for f in schema if pa.types.is_string(f.type)}
        return pacsv.read_csv(
            path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True, column_types=text_cols)
        )
    import pyarrow.parquet as pq

    return pq.read_table(path)


def _castable(src: pa.DataType, dst: pa.DataType) -> bool:
    """Which delivered types may become which contract types (value by value). Numbers never become
    timestamps: an epoch's unit is ambiguous, so such a column fails its file with a clear message."""
    t = pa.types
    text = t.is_string(src) or t.is_large_string(src)
    number = t.is_integer(src) or t.is_floating(src) or t.is_decimal(src)
    if t.is_null(src):
        return True
    if t.is_integer(dst):
        return number or text or (t.is_boolean(src) and dst == pa.int8())  # bool labels are fine
    if t.is_floating(dst):
        return number or text
    if t.is_string(dst):
        return text or t.is_integer(src)
    if t.is_binary(dst):
        return text or t.is_binary(src) or t.is_large_binary(src)
    if t.is_timestamp(dst):
        return t.is_timestamp(src) or t.is_date(src) or text
    return False


def _try_cast_duckdb(arr: pa.Array, target: pa.DataType, con: "duckdb.DuckDBPyConnection") -> pa.Array:
    """Value-by-value cast: values that do not convert become null (DuckDB TRY_CAST, vectorised).
    Integer targets also require the value to survive the trip exactly ('1.5' is not an int)."""
    duck = _DUCK_TYPES[target]
    expr = f"TRY_CAST(v AS {duck})"
    if pa.types.is_integer(target):
        expr = f"CASE WHEN {expr} = TRY_CAST(v AS DOUBLE) THEN {expr} END"
    out = con.from_arrow(pa.table({"v": arr})).project(f"{expr} AS v").to_arrow_table()
    return pc.cast(out.column("v").combine_chunks(), target)


def _cast_values(arr: pa.Array, target: pa.DataType, con: "duckdb.DuckDBPyConnection") -> tuple[pa.Array, pa.Array | None]:
    """(values cast to ``target``, mask of delivered non-null values that did not convert or None)."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.type == target:
        return arr, None
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), target), None
    if not _castable(arr.type, target):
        raise _Uncastable(f"{arr.type} cannot be cast to {target}")
    if pa.types.is_timestamp(arr.type) and pa.types.is_timestamp(target):
        # Naive timestamps are taken as UTC; digits below a microsecond are dropped.
        if arr.type.tz is None:
            arr = pc.cast(arr, pa.timestamp(arr.type.unit, tz="UTC"))
        return pc.cast(arr, target, safe=False), None
    try:
        return pc.cast(arr, target, safe=True), None  # fast path: the whole column converts
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values = _try_cast_duckdb(arr, target, con)
    return values, pc.and_(pc.is_valid(arr), pc.is_null(values))


def _attribute_type(t: pa.DataType) -> pa.DataType | None:
    """Type an extra ads/users column is kept as (strings: categorical, numbers: numeric), or None."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return pa.int64()
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pa.float64()
    return None


def _fill_reason(reason: pa.Array, cond: pa.Array, text: str) -> pa.Array:
    """Give ``text`` to rows that meet ``cond`` and have no reason yet (the first failed check wins)."""
    cond = pc.fill_null(_as_array(cond), False)
    return _as_array(pc.if_else(pc.and_(pc.is_null(reason), cond), pa.scalar(text, pa.string()), _as_array(reason)))


@dataclass
class _TableRun:
    """Working state of one table of one day."""

    contract: TableContract
    schema: pa.Schema  # the contract columns (impressions: plus the task labels)
    report: TableReport
    files: list[Path] = field(default_factory=list)
    originals: dict[int, pa.Table] = field(default_factory=dict)  # file index -> table as delivered
    conformed: list[pa.Table] = field(default_factory=list)
    whole_file_rejects: list[pa.Table] = field(default_factory=list)  # __file, __row, __reason, __detail
    failed: list[tuple[Path, str]] = field(default_factory=list)


def _constant(value: Any, n: int, type_: pa.DataType) -> pa.Array:
    """``n`` copies of one value, built by Arrow (no Python list of n items)."""
    return pa.repeat(pa.scalar(value, type_), n)


def _reject_table(file_idx: int, n: int, reason: str) -> pa.Table:
    """Every row of a file rejected for one reason."""
    return pa.table({
        _FILE: _constant(file_idx, n, pa.int32()),
        _ROW: pa.array(np.arange(n, dtype=np.int64)),
        _REASON: _constant(reason, n, pa.string()),
        _DETAIL: pa.nulls(n, pa.string()),
    })


def _conform_file(run: _TableRun, idx: int, raw: pa.Table, con: "duckdb.DuckDBPyConnection") -> None:
    """Cast one readable, non-empty file to the contract; whole-file problems reject every row."""
    name = run.files[idx].name
    table, rep = run.contract.name, run.report
    n = raw.num_rows
    missing = [f.name for f in run.schema if f.name not in raw.column_names]
    if missing:
        rep.errors.append(f"{table} file {name} lacks required column(s) {', '.join(missing)}: "
                          f"all {n:,} rows quarantined")
        run.whole_file_rejects.append(_reject_table(idx, n, _reason(MISSING_COLUMN, ", ".join(missing))))
        return
    dupes = sorted({c for c in raw.column_names if raw.column_names.count(c) > 1})
    if dupes:
        rep.errors.append(f"{table} file {name} has repeated column name(s) {', '.join(dupes)}: "
                          f"all {n:,} rows quarantined")
        run.whole_file_rejects.append(_reject_table(idx, n, _reason(UNCASTABLE_COLUMN, ", ".join(dupes), "repeated column")))
        return

    columns: dict[str, pa.Array] = {}
    reason = pa.nulls(n, pa.string())
    for f in run.schema:
        arr = raw.column(f.name).combine_chunks()
        try:
            values, bad = _cast_values(arr, f.type, con)
        except _Uncastable:
            rep.errors.append(f"{table} file {name}: column {f.name} has type {arr.type}, which cannot be cast "
                              f"to the contract type {f.type}: all {n:,} rows quarantined")
            run.whole_file_rejects.append(
                _reject_table(idx, n, _reason(UNCASTABLE_COLUMN, f.name, f"{arr.type} -> {f.type}")))
            return
        if bad is not None:
            n_bad = pc.sum(bad).as_py() or 0
            if n_bad:
                examples = pc.filter(arr, bad).slice(0, 3).to_pylist()
                rep.warnings.append(f"{table} file {name}: {n_bad:,} value(s) in column {f.name} cannot be read as "
                                    f"{f.type} (e.g. {examples!r}); those rows are quarantined")
                reason = _fill_reason(reason, bad, _reason(WRONG_TYPE, f.name, f"expected {f.type}"))
        columns[f.name] = values

    for col in raw.column_names:
        if col in columns:
            continue
        arr = raw.column(col).combine_chunks()
        kept = _attribute_type(arr.type) if run.contract.keep_extra and not col.startswith(_INTERNAL) else None
        if kept is None:
            rep.ignored_columns.setdefault(col, []).append(name)
            continue
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        columns[col] = pc.cast(arr, kept)
    columns[_FILE] = _constant(idx, n, pa.int32())
    columns[_ROW] = pa.array(np.arange(n, dtype=np.int64))
    columns[_REASON] = reason
    columns[_DETAIL] = pa.nulls(n, pa.string())
    run.conformed.append(pa.table(columns))


def _unify_extras(tables: list[pa.Table], contract_cols: set[str]) -> list[pa.Table]:
    """Give an extra column the same type in every file (mixed numbers: float64; any text: string), so
    the day's files concatenate; a file without the column gets nulls."""
    types: dict[str, set[pa.DataType]] = {}
    for t in tables:
        for f in t.schema:
            if f.name not in contract_cols and not f.name.startswith(_INTERNAL):
                types.setdefault(f.name, set()).add(f.type)
    target = {c: (next(iter(ts)) if len(ts) == 1 else pa.string() if pa.string() in ts else pa.float64())
              for c, ts in types.items()}
    out = []
    for t in tables:
        for c, ty in target.items():
            if c in t.column_names and t.schema.field(c).type != ty:
                t = t.set_column(t.column_names.index(c), c, pc.cast(t.column(c), ty))
        out.append(t)
    return out


# --------------------------------------------------------------------------------------------------
# Row checks on the day's batch
# --------------------------------------------------------------------------------------------------


def _duplicates_in_batch(batch: pa.Table, reason: pa.Array, key: str, con: "duckdb.DuckDBPyConnection",
                         file_names: list[str]) -> tuple[pa.Array, pa.Array]:
    """Mask of rows whose ``key`` repeats an earlier still-valid row of the day, and the detail naming
    the row that was kept. Earlier = file order (by name), then row order."""
    probe = pa.table({"idx": pa.array(np.arange(batch.num_rows)), "k": batch.column(key), "ok": pc.is_null(reason)})
    dup = con.from_arrow(probe).query(
        "probe",
        "SELECT idx, first_idx FROM (SELECT idx, first_value(idx) OVER w AS first_idx, row_number() OVER w AS rn "
        "FROM probe WHERE ok WINDOW w AS (PARTITION BY k ORDER BY idx)) WHERE rn > 1 ORDER BY idx",
    ).to_arrow_table()
    mask = np.zeros(batch.num_rows, dtype=bool)
    mask[dup.column("idx").to_numpy()] = True
    first = dup.column("first_idx").combine_chunks()
    names = pa.array(file_names, pa.string()).take(batch.column(_FILE).combine_chunks().take(first))
    rows = pc.cast(batch.column(_ROW).combine_chunks().take(first), pa.string())
    detail = pc.binary_join_element_wise("kept the first: ", names, " row ", rows, "")
    return pa.array(mask), detail


def _landed_elsewhere(settings: "Settings", batch: pa.Table, reason: pa.Array, key: str, day: dt.date,
                      con: "duckdb.DuckDBPyConnection") -> tuple[pa.Array, pa.Array]:
    """Mask of still-valid rows whose ``key`` already landed in another day's impressions partition
    (queried with DuckDB; only the key column is read), and the detail naming that day."""
    lookback = settings.ingest.duplicate_lookback_days
    start = day - dt.timedelta(days=lookback) if lookback else None
    end = day + dt.timedelta(days=lookback) if lookback else None
    others = [p for d, p in offline_partitions(settings, "impressions", start, end) if d != day]
    mask = np.zeros(batch.num_rows, dtype=bool)
    if not others:
        return pa.array(mask), pa.array([], pa.string())
    probe = pa.table({"idx": pa.array(np.arange(batch.num_rows)), "k": batch.column(key), "ok": pc.is_null(reason)})
    files = ", ".join(_sql_str(p) for p in others)
    hits = con.from_arrow(probe).query(
        "probe",
        f"SELECT probe.idx, min(regexp_extract(o.filename, 'date=([0-9-]+)', 1)) AS landed_on FROM probe "
        f"JOIN read_parquet([{files}], filename=true, hive_partitioning=false) o ON o.{_sql_ident(key)} = probe.k "
        f"WHERE probe.ok GROUP BY probe.idx ORDER BY probe.idx",
    ).to_arrow_table()
    mask[hits.column("idx").to_numpy()] = True
    detail = pc.binary_join_element_wise("already landed on ", hits.column("landed_on").combine_chunks(), "")
    return pa.array(mask), detail


def _check_rows(settings: "Settings", run: _TableRun, batch: pa.Table, day: dt.date, tasks: Sequence[str],
                con: "duckdb.DuckDBPyConnection") -> pa.Table:
    """Fill ``__reason`` / ``__detail`` for rows failing a row check (first failure wins)."""
    contract = run.contract
    reason = batch.column(_REASON).combine_chunks()
    detail = batch.column(_DETAIL).combine_chunks()
    start, end = _window(settings, day)

    for key in contract.keys:
        col = batch.column(key)
        cond = pc.is_null(col)
        if pa.types.is_string(col.type):  # an empty id is no id
            cond = pc.or_(cond, pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0))
        reason = _fill_reason(reason, cond, _reason(NULL_KEY, key))
    if contract.name == "impressions":
        for task in tasks:
            col = batch.column(task)
            ok = pc.is_in(col, value_set=pa.array([0, 1], pa.int8()))
            reason = _fill_reason(reason, pc.invert(pc.fill_null(ok, False)), _reason(LABEL_NOT_0_1, task))
        ts = batch.column(contract.time_column)
        outside = pc.or_(pc.less(ts, pa.scalar(start, TIMESTAMP)), pc.greater_equal(ts, pa.scalar(end, TIMESTAMP)))
    else:
        # Dimension rows describe entities as of the day: created earlier is fine, created after the
        # day (plus tolerance) is not.
        ts = batch.column(contract.time_column)
        outside = pc.greater_equal(ts, pa.scalar(end, TIMESTAMP))
    reason = _fill_reason(reason, _as_array(outside), _reason(OUTSIDE_WINDOW, contract.time_column))

    names = [p.name for p in run.files]
    for key in contract.unique:
        mask, why = _duplicates_in_batch(batch, reason, key, con, names)
        reason, detail = _fill_with_detail(reason, detail, mask, _reason(DUPLICATE_IN_BATCH, key), why)
        if contract.name == "impressions":  # ads/users: a later day may update an existing id
            mask, why = _landed_elsewhere(settings, batch, reason, key, day, con)
            reason, detail = _fill_with_detail(reason, detail, mask, _reason(DUPLICATE_LANDED, key), why)
    batch = batch.set_column(batch.column_names.index(_REASON), _REASON, reason)
    return batch.set_column(batch.column_names.index(_DETAIL), _DETAIL, detail)


def _fill_with_detail(reason: pa.Array, detail: pa.Array, mask: pa.Array, text: str,
                      details: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``mask`` rows (all still valid, in index order) get ``text``; their details, in the same order."""
    if not pc.any(mask).as_py():
        return reason, detail
    reason = _fill_reason(reason, mask, text)
    return reason, pc.replace_with_mask(detail, mask, details.cast(pa.string()))


def _as_array(x: pa.Array | pa.ChunkedArray) -> pa.Array:
    return x.combine_chunks() if isinstance(x, pa.ChunkedArray) else x


def _window(settings: "Settings", day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[day 00:00, next day 00:00 + late tolerance) in UTC."""
    start, end = day_window(day)
    return start, end + dt.timedelta(hours=settings.ingest.late_tolerance_hours)


# --------------------------------------------------------------------------------------------------
# Quarantine rows
# --------------------------------------------------------------------------------------------------


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


def _quarantine_rows(run: _TableRun, batch: pa.Table | None, day: dt.date, ingested_at: dt.datetime,
                     con: "duckdb.DuckDBPyConnection") -> pa.Table:
    """Rejected rows as delivered (text) with the reason, file, row index, day and ingest time."""
    parts = list(run.whole_file_rejects)
    if batch is not None and batch.num_rows:
        bad = pc.is_valid(batch.column(_REASON))
        parts.append(batch.filter(bad).select([_FILE, _ROW, _REASON, _DETAIL]))
    rejects = pa.concat_tables(parts) if parts else None
    if rejects is None or rejects.num_rows == 0:
        return QUARANTINE_META.empty_table()
    rejects = rejects.sort_by([(_FILE, "ascending"), (_ROW, "ascending")])
    tables = []
    file_col = rejects.column(_FILE).combine_chunks()
    for idx in pc.unique(file_col).to_pylist():  # one take per file, not per row
        sel = rejects.filter(pc.equal(file_col, idx))
        name = run.files[idx].name
        values = _as_text(run.originals[idx].take(sel.column(_ROW)), con, run.report.warnings,
                          f"{run.contract.name} file {name}")
        n = sel.num_rows
        meta = {
            "reason": sel.column(_REASON),
            "detail": sel.column(_DETAIL),
            "source_file": _constant(name, n, pa.string()),
            "row_index": sel.column(_ROW),
            "day": _constant(day, n, pa.date32()),
            "ingested_at": _constant(ingested_at, n, TIMESTAMP),
        }
        cols = dict(meta)
        for c in values.column_names:
            cols[f"raw_{c}" if c in meta else c] = values.column(c)
        tables.append(pa.table(cols))
    return pa.concat_tables(tables, promote_options="default")


# --------------------------------------------------------------------------------------------------
# ingest_day
# --------------------------------------------------------------------------------------------------


def _expectation_spec(settings: "Settings", contract: TableContract, schema: pa.Schema, day: dt.date,
                      tasks: Sequence[str]) -> Any:
    from validation.expectations import BatchSpec, gx_type_name

    start, end = _window(settings, day)
    impressions = contract.name == "impressions"
    bounds = {t: tuple(settings.ingest.label_rate_bounds.get(t, (0.0, 1.0))) for t in tasks} if impressions else {}
    return BatchSpec(
        table=contract.name,
        column_types={f.name: n for f in schema if (n := gx_type_name(f.type))},
        not_null=contract.keys,
        unique=contract.unique,
        labels=tuple(tasks) if impressions else (),
        label_rate_bounds=bounds,  # type: ignore[arg-type]
        time_column=contract.time_column,
        time_min=start if impressions else None,
        time_max=end,
        min_rows=1 if impressions else 0,
    )


def _ingest_table(settings: "Settings", run: _TableRun, raw_dir: Path, day: dt.date, tasks: Sequence[str],
                  ingested_at: dt.datetime, con: "duckdb.DuckDBPyConnection") -> tuple[pa.Table, pa.Table]:
    """Validate one table of the day; returns (rows to land, quarantine rows)."""
    rep, contract = run.report, run.contract
    run.files = _raw_files(raw_dir)
    if not run.files:
        rep.warnings.append(f"no raw {contract.name} files for {day} in {raw_dir}: the day's partition will be empty")
    for idx, path in enumerate(run.files):
        try:
            raw = _read_raw(path, run.schema)
        except Exception as exc:  # corrupt, truncated, not parquet/CSV at all: keep the file as-is
            if path.stat().st_size == 0:
                rep.files_read.append(path.name)
                rep.files_empty.append(path.name)
                rep.warnings.append(f"{contract.name} file {path.name} is empty (0 bytes): nothing to land")
                continue
            problem = f"{type(exc).__name__}: {exc}".strip()
            rep.files_failed[path.name] = problem
            rep.errors.append(f"{contract.name} file {path.name} cannot be read ({problem}); copied unchanged to "
                              f"quarantine with {path.name}.reason.txt")
            run.failed.append((path, problem))
            continue
        rep.files_read.append(path.name)
        if raw.num_rows == 0:
            rep.files_empty.append(path.name)
            rep.warnings.append(f"{contract.name} file {path.name} has no rows: nothing to land")
            continue
        rep.rows_in += raw.num_rows
        run.originals[idx] = raw
        _conform_file(run, idx, raw, con)

    contract_cols = {f.name for f in run.schema}
    for col, files in rep.ignored_columns.items():
        rep.warnings.append(f"{contract.name}: column {col} is not in the contract and was ignored "
                            f"(file(s) {', '.join(files)})")
    batch: pa.Table | None = None
    if run.conformed:
        batch = pa.concat_tables(_unify_extras(run.conformed, contract_cols), promote_options="default")
        batch = _check_rows(settings, run, batch, day, tasks, con)
        rep.kept_extra_columns = [c for c in batch.column_names
                                  if c not in contract_cols and not c.startswith(_INTERNAL)]
        landed = batch.filter(pc.is_null(batch.column(_REASON)))
        landed = landed.select([f.name for f in run.schema] + rep.kept_extra_columns)
        target = pa.schema(list(run.schema) + [landed.schema.field(c) for c in rep.kept_extra_columns])
        landed = landed.cast(target)
    else:
        landed = run.schema.empty_table()
    quarantine = _quarantine_rows(run, batch, day, ingested_at, con)

    rep.rows_landed = landed.num_rows
    rep.rows_quarantined = quarantine.num_rows
    if rep.rows_in != rep.rows_landed + rep.rows_quarantined:  # a bug, never a data problem
        raise IngestError(f"{contract.name} {day}: {rep.rows_in} rows in but {rep.rows_landed} landed + "
                          f"{rep.rows_quarantined} quarantined")
    if quarantine.num_rows:
        counts = pc.value_counts(quarantine.column("reason")).to_pylist()
        rep.reasons = dict(sorted(((c["values"], c["counts"]) for c in counts), key=lambda kv: (-kv[1], kv[0])))
        _row_messages(run, quarantine, _window(settings, day))
    return landed, quarantine


def _row_messages(run: _TableRun, quarantine: pa.Table, window: tuple[dt.datetime, dt.datetime]) -> None:
    """One sentence per (file, reason) for row-level rejects (whole-file ones are already errors)."""
    win = f"[{window[0].isoformat()}, {window[1].isoformat()})"
    grouped = quarantine.group_by(["source_file", "reason"], use_threads=False).aggregate([("row_index", "count")])
    for g in sorted(grouped.to_pylist(), key=lambda r: (r["source_file"], r["reason"])):
        code = g["reason"].split(":")[0]
        if code in (MISSING_COLUMN, UNCASTABLE_COLUMN, WRONG_TYPE):
            continue  # already reported when the file was conformed
        run.report.warnings.append(f"{run.contract.name} file {g['source_file']}: {g['row_index_count']:,} row(s) "
                                   f"quarantined, {_describe(g['reason'], win)} ({g['reason']})")


def ingest_day(settings: "Settings", source_name: str, day: dt.date, tasks: Sequence[str]) -> IngestReport:
    """Validate ``day``'s raw files of ``source_name`` and replace the day's offline and quarantine
    partitions of every table atomically. Returns the report (also written as JSON beside the
    quarantine: ``<quarantine>/_reports/date=D/ingest_report.json``).

    Raises ``IngestError`` (or the write's own ``OSError``) when a partition cannot be written; each
    partition is then either wholly old or wholly new, and re-running the day repairs it.
    """
    t0 = time.perf_counter()
    tasks = list(tasks)
    if not tasks:
        raise ValueError("ingest_day needs at least one task label column (e.g. ['click'])")
    ingested_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    report = IngestReport(source=source_name, day=day, tasks=tasks, ingested_at=ingested_at)
    raw_root = settings.raw_dir / source_name
    con = _connect()
    outputs: dict[str, tuple[pa.Table, pa.Table, list[tuple[Path, str]]]] = {}
    try:
        for table in TABLES:
            contract = CONTRACTS[table]
            schema = impressions_schema(tasks) if table == "impressions" else contract.required
            run = _TableRun(contract=contract, schema=schema, report=TableReport(table=table))
            landed, quarantine = _ingest_table(settings, run, day_dir(raw_root, table, day), day, tasks,
                                               ingested_at, con)
            if landed.num_rows or table == "impressions":
                from validation.expectations import validate_batch

                run.report.expectations = validate_batch(landed, _expectation_spec(settings, contract, schema, day, tasks),
                                                         gx_dir=settings.gx_dir, run_name=day.isoformat())
                for e in run.report.expectations:
                    if not e.success:
                        run.report.warnings.append(e.sentence())
            report.tables[table] = run.report
            outputs[table] = (landed, quarantine, run.failed)
    finally:
        con.close()

    # Write only after every table validated: quarantine first, so rejects are never lost.
    for table, (landed, quarantine, failed) in outputs.items():
        q_dir = day_dir(settings.quarantine_dir, table, day)
        storage.replace_partition(q_dir, functools.partial(_write_quarantine, rows=quarantine, failed=failed))
        o_dir = day_dir(settings.offline_dir, table, day)
        storage.replace_partition(o_dir, functools.partial(_write_landed, landed))
        report.tables[table].landed_path = str(o_dir / PART_FILE)
        report.tables[table].quarantine_path = str(q_dir / PART_FILE)
    report.seconds = time.perf_counter() - t0
    _write_report(settings, report)
    log.info(report.summary())
    return report


def _write_landed(rows: pa.Table, tmp: Path) -> None:
    storage.write_parquet_durable(rows, tmp / PART_FILE)  # looked up at call time, so tests can make it fail


def _write_quarantine(tmp: Path, rows: pa.Table, failed: list[tuple[Path, str]]) -> None:
    storage.write_parquet_durable(rows, tmp / PART_FILE)
    if failed:
        files = tmp / "files"
        files.mkdir()
        for path, problem in failed:
            shutil.copy2(path, files / path.name)
            (files / f"{path.name}.reason.txt").write_text(f"unreadable raw file {path}\n{problem}\n")


def _write_report(settings: "Settings", report: IngestReport) -> None:
    path = day_dir(settings.quarantine_dir, REPORTS_TABLE, report.day) / "ingest_report.json"
    storage.write_json_atomic(path, report.to_dict())

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
components/store/offline.py (``read_offline`` / ``offline_relation``, the one path for reading the
offline store; ``quarantine_summary``). See docs/ingestion.md for the checks, the reasons and the
re-run semantics.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components import storage
from components.store.offline import PART_FILE, REJECTED_DIR, REPORTS_TABLE
from components.store.sql import connect
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
OUTSIDE_WINDOW = "outside_window"  # impressions: event_time outside the day (+ late tolerance)
CREATED_AFTER_DAY = "created_after_day"  # ads/users: created_at after the day they are delivered for
DUPLICATE_IN_BATCH = "duplicate_in_batch"
DUPLICATE_LANDED = "duplicate_landed"
UNKNOWN_ENTITY = "unknown_entity"  # impressions, with ingest.unknown_entities = "quarantine"
DELIVERY_REJECTED = "delivery_rejected"  # a valid row of a failing delivery that did not replace a landed day

# Whole-file reasons: every row of the file is rejected (the delivery then fails).
WHOLE_FILE = (MISSING_COLUMN, UNCASTABLE_COLUMN)

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


class IngestDayFailed(ValueError):
    """The day's delivery failed ingestion (a data error: retrying cannot help). The message is one line
    naming the file, the reason, the counts and the path of the full JSON report."""

    def __init__(self, report: "IngestReport | str") -> None:
        # A message alone when rebuilt from its args (pickled by Prefect between task and flow).
        super().__init__(report if isinstance(report, str) else report.one_line())
        self.report = None if isinstance(report, str) else report


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
    failures: list[str] = field(default_factory=list)  # why this table fails the day (one line each)
    previous_rows: int | None = None  # rows of the day's partition landed before this run (None: none)
    kept_previous: bool = False  # the delivery failed and the previously landed partition was kept
    unknown_entities: dict[str, int] = field(default_factory=dict)  # impressions: user_id/ad_id -> rows
    exposure_not_growing: int = 0  # impressions: rows whose exposure_index <= the pair's landed maximum
    landed_path: str | None = None
    quarantine_path: str | None = None

    @property
    def expectations_passed(self) -> bool:
        return all(e.success for e in self.expectations)

    @property
    def quarantine_rate(self) -> float:
        """Quarantined share of this table's rows that arrived."""
        return self.rows_quarantined / self.rows_in if self.rows_in else 0.0

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
            "quarantine_rate": self.quarantine_rate,
            "warnings": list(self.warnings),
            "errors": list(self.errors),
            "failures": list(self.failures),
            "previous_rows": self.previous_rows,
            "kept_previous": self.kept_previous,
            "unknown_entities": dict(self.unknown_entities),
            "exposure_not_growing": self.exposure_not_growing,
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
    report_path: str | None = None  # where the JSON report was written
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (bench/ingest_throughput.py)
    index: dict[str, int] = field(default_factory=dict)  # what syncing the ingest index re-indexed

    @property
    def failures(self) -> list[str]:
        """Why the day fails (empty: it passed); see docs/ingestion.md, 'When a day fails'."""
        return [f for t in self.tables.values() for f in t.failures]

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    @property
    def kept_previous(self) -> bool:
        """The delivery failed and did not replace the day already landed."""
        return any(t.kept_previous for t in self.tables.values())

    @property
    def status(self) -> str:
        return "ok" if not self.failed else "kept_previous" if self.kept_previous else "failed"

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
    def quarantine_rates(self) -> dict[str, float]:
        return {name: t.quarantine_rate for name, t in self.tables.items()}

    @property
    def quarantine_rate(self) -> float:
        """The largest per-table quarantined share: a users table lost wholesale shows as 1.0 here, it
        cannot hide behind a clean impressions table (per-table rates: ``quarantine_rates``)."""
        return max(self.quarantine_rates.values(), default=0.0)

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
            "quarantine_rates": self.quarantine_rates,
            "expectations_passed": self.expectations_passed,
            "status": self.status,
            "failed": self.failed,
            "failures": self.failures,
            "kept_previous": self.kept_previous,
            "report_path": self.report_path,
            "index": dict(self.index),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "tables": {name: t.to_dict() for name, t in self.tables.items()},
        }

    def one_line(self) -> str:
        """The outcome in one line: the first failure (file, reason), the counts, what happened to the
        landed day, and where the full JSON report is."""
        counts = ", ".join(f"{t.table} {t.rows_in:,} in/{t.rows_landed:,} landed/{t.rows_quarantined:,} quarantined"
                           + (f"/{len(t.files_failed)} unreadable file(s)" if t.files_failed else "")
                           for t in self.tables.values())
        where = f"; report: {self.report_path}" if self.report_path else ""
        if not self.failed:
            return f"ingest {self.source} {self.day} ok: {counts}{where}"
        first = _one_line(self.failures[0])
        more = f" (+{len(self.failures) - 1} more problem(s))" if len(self.failures) > 1 else ""
        kept = ("; the day already landed was kept, the delivery is in quarantine" if self.kept_previous
                else "; nothing had landed for the day before")
        return f"ingest {self.source} {self.day} FAILED: {first}{more}; {counts}{kept}{where}"

    def summary(self) -> str:
        """A few readable lines: per table rows in / landed / quarantined, reasons, failed expectations."""
        lines = [f"ingest {self.source} {self.day}: {self.rows_landed:,} rows landed, "
                 f"{self.rows_quarantined:,} quarantined, {self.files_failed} unreadable files "
                 f"({self.seconds:.1f} s); expectations {'passed' if self.expectations_passed else 'FAILED'}"]
        for t in self.tables.values():
            reasons = ", ".join(f"{r} {n:,}" for r, n in t.reasons.items()) or "none"
            lines.append(f"  {t.table}: in {t.rows_in:,}, landed {t.rows_landed:,}, "
                         f"quarantined {t.rows_quarantined:,} ({t.quarantine_rate:.1%}; reasons: {reasons})")
            lines += [f"    FAILED {e.sentence()}" for e in t.expectations if not e.success]
            lines += [f"    DAY FAILS: {f}" for f in t.failures]
        return "\n".join(lines)


def _one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace (library errors span lines) and cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    """The day's raw files in a fixed order (by name), so 'first wins' is reproducible; any case of
    the extension (``part-1.PARQUET``)."""
    from components.runs import files_under

    return files_under(folder, RAW_SUFFIXES)


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
    batch: pa.Table | None = None  # the day's conformed rows with __reason / __detail after the checks
    index: Any = None  # components.ingest.index.IngestIndex (the cross-day checks)
    known: dict[str, pa.Array] = field(default_factory=dict)  # "ads"/"users": ids landing this day


def _fail(rep: TableReport, message: str) -> None:
    """A problem that fails the day: an error of the table, and one of the day's failures."""
    rep.errors.append(message)
    rep.failures.append(message)


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
        _fail(rep, f"{table} file {name} lacks required column(s) {', '.join(missing)}: "
                          f"all {n:,} rows quarantined")
        run.whole_file_rejects.append(_reject_table(idx, n, _reason(MISSING_COLUMN, ", ".join(missing))))
        return
    dupes = sorted({c for c in raw.column_names if raw.column_names.count(c) > 1})
    if dupes:
        _fail(rep, f"{table} file {name} has repeated column name(s) {', '.join(dupes)}: "
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
            _fail(rep, f"{table} file {name}: column {f.name} has type {arr.type}, which cannot be cast "
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
    the row that was kept. Earlier = file order (by name), then row order. The keys' 64-bit hashes
    (DuckDB ``hash``), sorted with numpy, find the candidates: on 10M ids that is about 1.2 s against
    1.8 s for a DuckDB GROUP BY of the hashes on these 2 cores. The window (a sort, exact on the key
    itself) then runs over the rows whose hash repeats only, usually none."""
    probe = pa.table({"idx": pa.array(np.arange(batch.num_rows)), "k": batch.column(key), "ok": pc.is_null(reason)})
    hashed = con.from_arrow(probe).query("probe", "SELECT idx, hash(k) AS h FROM probe WHERE ok").fetchnumpy()
    h = hashed["h"]
    ordered = np.sort(h)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    mask = np.zeros(batch.num_rows, dtype=bool)
    if repeated.size == 0:
        return pa.array(mask), pa.array([], pa.string())
    candidates = probe.take(pa.array(hashed["idx"][np.isin(h, repeated)]))
    dup = con.from_arrow(candidates).query(
        "cand",
        "SELECT idx, first_idx FROM (SELECT idx, first_value(idx) OVER w AS first_idx, row_number() OVER w AS rn "
        "FROM cand WINDOW w AS (PARTITION BY k ORDER BY idx)) WHERE rn > 1 ORDER BY idx",
    ).to_arrow_table()
    mask[dup.column("idx").to_numpy()] = True
    first = dup.column("first_idx").combine_chunks()
    names = pa.array(file_names, pa.string()).take(batch.column(_FILE).combine_chunks().take(first))
    rows = pc.cast(batch.column(_ROW).combine_chunks().take(first), pa.string())
    detail = pc.binary_join_element_wise("kept the first: ", names, " row ", rows, "")
    return pa.array(mask), detail


def _valid_probe(batch: pa.Table, reason: pa.Array, columns: dict[str, str]) -> pa.Table:
    """(idx, <columns renamed>) of the rows that are still valid: what the index joins against."""
    cols = {"idx": pa.array(np.arange(batch.num_rows))} | {new: batch.column(old) for old, new in columns.items()}
    probe = pa.table(cols)
    # every row still valid (a clean day): no filter pass copying the columns
    return probe if reason.null_count == len(reason) else probe.filter(pc.is_null(reason))


def _landed_elsewhere(settings: "Settings", run: _TableRun, batch: pa.Table, reason: pa.Array, key: str,
                      day: dt.date) -> tuple[pa.Array, pa.Array]:
    """Mask of still-valid rows whose ``key`` already landed in another day's impressions partition
    (looked up in the ingest index, components/ingest/index.py), and the detail naming that day."""
    hits = run.index.landed_elsewhere(_valid_probe(batch, reason, {key: "k"}), day,
                                      settings.ingest.duplicate_lookback_days)
    mask = np.zeros(batch.num_rows, dtype=bool)
    mask[hits.column("idx").to_numpy()] = True
    landed_on = pc.cast(hits.column("landed_on").combine_chunks(), pa.string())
    return pa.array(mask), pc.binary_join_element_wise("already landed on ", landed_on, "")


def _unknown_entities(settings: "Settings", run: _TableRun, batch: pa.Table, reason: pa.Array, detail: pa.Array,
                      day: dt.date) -> tuple[pa.Array, pa.Array]:
    """Impressions whose ``user_id`` / ``ad_id`` no users / ads partition up to ``day`` knows: counted
    (``report.unknown_entities``) and, with ``ingest.unknown_entities = "quarantine"``, rejected."""
    rep = run.report
    valid = pc.is_null(reason)
    for col, kind in (("user_id", "users"), ("ad_id", "ads")):
        values = batch.column(col).combine_chunks()
        # The index sees the day's distinct ids only; Arrow maps the few unknown ones back to rows.
        unknown = run.index.unknown_ids(pc.unique(values.filter(valid)), kind, day,
                                        run.known.get(kind, pa.array([], pa.int64())))
        mask = pc.and_(valid, pc.is_in(values, value_set=unknown)) if len(unknown) else None
        n = pc.sum(mask).as_py() if mask is not None else 0
        rep.unknown_entities[col] = n
        if not n:
            continue
        action = ("quarantined" if settings.ingest.unknown_entities == "quarantine"
                  else "kept (ingest.unknown_entities = keep)")
        rep.warnings.append(f"impressions: {n:,} row(s) ({len(unknown):,} distinct) have a {col} that no {kind} "
                            f"partition up to {day} has landed (e.g. {unknown.slice(0, 3).to_pylist()}); {action}")
        if settings.ingest.unknown_entities == "quarantine":
            why = pa.repeat(pa.scalar(f"no {kind} row landed on or before {day}"), n)
            reason, detail = _fill_with_detail(reason, detail, mask, _reason(UNKNOWN_ENTITY, col), why)
    return reason, detail


def _exposure_check(settings: "Settings", run: _TableRun, batch: pa.Table, reason: pa.Array, day: dt.date) -> None:
    """Count (warn, reject nothing) still-valid impressions whose ``exposure_index`` is not greater than
    the largest one their (user, ad) pair landed with on an earlier day (``ingest.exposure_lookback_days``)."""
    probe = _valid_probe(batch, reason, {"user_id": "user_id", "ad_id": "ad_id", "exposure_index": "exposure_index"})
    hits = run.index.exposure_not_growing(probe, day, settings.ingest.exposure_lookback_days)
    run.report.exposure_not_growing = hits.num_rows
    if hits.num_rows:
        first = hits.slice(0, 1).to_pylist()[0]
        row = batch.slice(first["idx"], 1).to_pylist()[0]
        run.report.warnings.append(
            f"impressions: {hits.num_rows:,} row(s) repeat a (user_id, ad_id) pair of an earlier day with an "
            f"exposure_index not greater than the one landed (e.g. user {row['user_id']}, ad {row['ad_id']}: "
            f"{row['exposure_index']} <= {first['landed_max']}); kept")


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
        if pa.types.is_string(col.type):  # an empty or blank id is no id; Kleene or: null OR x is true
            blank = pc.or_kleene(pc.equal(pc.binary_length(col), 0), pc.utf8_is_space(col))  # no copy, unlike trim
            cond = pc.or_kleene(cond, blank)
        reason = _fill_reason(reason, cond, _reason(NULL_KEY, key))
    ts = batch.column(contract.time_column)
    if contract.name == "impressions":
        for task in tasks:
            col = batch.column(task)
            ok = pc.is_in(col, value_set=pa.array([0, 1], pa.int8()))
            reason = _fill_reason(reason, pc.invert(pc.fill_null(ok, False)), _reason(LABEL_NOT_0_1, task))
        outside = pc.or_kleene(pc.less(ts, pa.scalar(start, TIMESTAMP)), pc.greater_equal(ts, pa.scalar(end, TIMESTAMP)))
        reason = _fill_reason(reason, _as_array(outside), _reason(OUTSIDE_WINDOW, contract.time_column))
    else:
        # Dimension rows describe entities as of the day: created earlier is fine, created after the
        # day (plus tolerance) is not, and says so (a users export stamped with the export time).
        after = pc.and_(pc.is_null(reason), pc.fill_null(_as_array(pc.greater_equal(ts, pa.scalar(end, TIMESTAMP))), False))
        if pc.any(after).as_py():
            reason = _fill_reason(reason, after, _reason(CREATED_AFTER_DAY, contract.time_column))
            detail = _as_array(pc.if_else(after, pc.binary_join_element_wise(
                "created ", pc.cast(ts, pa.string()), f" is after the day's end {end.isoformat()}", ""), detail))
            n = pc.sum(after).as_py()
            run.report.warnings.append(
                f"{contract.name}: {n:,} row(s) have {contract.time_column} after {day} (latest "
                f"{pc.max(ts).as_py()}): quarantined as {CREATED_AFTER_DAY}; is {contract.time_column} the export time?")

    names = [p.name for p in run.files]
    for key in contract.unique:
        mask, why = _duplicates_in_batch(batch, reason, key, con, names)
        reason, detail = _fill_with_detail(reason, detail, mask, _reason(DUPLICATE_IN_BATCH, key), why)
        if contract.name == "impressions":  # ads/users: a later day may update an existing id
            mask, why = _landed_elsewhere(settings, run, batch, reason, key, day)
            reason, detail = _fill_with_detail(reason, detail, mask, _reason(DUPLICATE_LANDED, key), why)
    if contract.name == "impressions":
        reason, detail = _unknown_entities(settings, run, batch, reason, detail, day)
        _exposure_check(settings, run, batch, reason, day)
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

    start, end = _window(settings, day)
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


def _ingest_table(settings: "Settings", run: _TableRun, raw_dir: Path, day: dt.date, tasks: Sequence[str],
                  con: "duckdb.DuckDBPyConnection") -> None:
    """Read, conform and check one table of the day; leaves the checked rows in ``run.batch``."""
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
            # The folder is in the report already: name the file only, so the message stays one short line.
            problem = _one_line(f"{type(exc).__name__}: {exc}".replace(str(path), path.name).strip(), 200)
            rep.files_failed[path.name] = problem
            _fail(rep, f"{contract.name} file {path.name} cannot be read ({problem})")
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
        _conform_file(run, idx, raw, con)

    contract_cols = {f.name for f in run.schema}
    for col, files in rep.ignored_columns.items():
        rep.warnings.append(f"{contract.name}: column {col} is not in the contract and was ignored "
                            f"(file(s) {', '.join(files)})")
    if run.conformed:
        batch = pa.concat_tables(_unify_extras(run.conformed, contract_cols), promote_options="default")
        run.batch = _check_rows(settings, run, batch, day, tasks, con)
        rep.kept_extra_columns = [c for c in run.batch.column_names
                                  if c not in contract_cols and not c.startswith(_INTERNAL)]


def _split(settings: "Settings", run: _TableRun, day: dt.date, ingested_at: dt.datetime,
           con: "duckdb.DuckDBPyConnection") -> tuple[pa.Table, pa.Table]:
    """(rows to land, quarantine rows) of a checked table; fills the counts and reasons of its report."""
    rep, batch = run.report, run.batch
    if batch is not None:
        reasons = batch.column(_REASON)
        # a clean batch (the usual day) lands whole: no filter pass copying every column
        landed = batch if reasons.null_count == batch.num_rows else batch.filter(pc.is_null(reasons))
        landed = landed.select([f.name for f in run.schema] + rep.kept_extra_columns)
        target = pa.schema(list(run.schema) + [landed.schema.field(c) for c in rep.kept_extra_columns])
        landed = landed.cast(target)
    else:
        landed = run.schema.empty_table()
    quarantine = _quarantine_rows(run, batch, day, ingested_at, con)
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


def _day_failures(settings: "Settings", run: _TableRun, day: dt.date) -> None:
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
    unknown = sorted(set(settings.ingest.label_rate_bounds) - set(tasks))
    raw_root = settings.raw_dir / source_name
    con = connect()
    runs: dict[str, _TableRun] = {}
    try:
        sync_start = time.perf_counter()
        with open_index(settings) as index:
            report.timings["index_open_sync"] = time.perf_counter() - sync_start
            report.index = dict(index.synced)
            for table in _ORDER:
                contract = CONTRACTS[table]
                schema = impressions_schema(tasks) if table == "impressions" else contract.required
                run = _TableRun(contract=contract, schema=schema, report=TableReport(table=table), index=index)
                run.report.previous_rows = _previous_rows(settings, table, day)
                run.known = {k: runs[k].batch.filter(pc.is_null(runs[k].batch.column(_REASON))).column(
                    CONTRACTS[k].unique[0]).combine_chunks() for k in ("ads", "users")
                    if k in runs and runs[k].batch is not None}
                with _timed(report, f"read_check_{table}"):
                    _ingest_table(settings, run, day_dir(raw_root, table, day), day, tasks, con)
                runs[table] = run
            if unknown:
                runs["impressions"].report.warnings.append(
                    f"ingest.label_rate_bounds names task(s) {unknown} that the source does not have "
                    f"(its tasks: {tasks}); those bounds are not used")
            with _timed(report, "split_quarantine_rows"):
                outputs = {t: _split(settings, runs[t], day, ingested_at, con) for t in TABLES}
            for t in TABLES:
                _day_failures(settings, runs[t], day)
            protect = any(r.report.failures for r in runs.values()) and any(
                r.report.previous_rows for r in runs.values())
            if protect:
                _reject_delivery(settings, runs, day, ingested_at, now, con, report, t0)
                return report
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
                    _row_messages(run, outputs[table][1], _window(settings, day))
                report.tables[table] = run.report

            # Write only after every table validated: quarantine first, so rejects are never lost.
            for table, (landed, quarantine) in outputs.items():
                q_dir = day_dir(settings.quarantine_dir, table, day)
                o_dir = day_dir(settings.offline_dir, table, day)
                with _timed(report, "write"):
                    storage.replace_partition(q_dir, functools.partial(_write_quarantine, rows=quarantine,
                                                                       failed=runs[table].failed))
                    storage.replace_partition(o_dir, functools.partial(_write_landed, landed))
                with _timed(report, "index_update"):
                    index.index_partition(table, day, o_dir / PART_FILE, rows=landed)
                report.tables[table].landed_path = str(o_dir / PART_FILE)
                report.tables[table].quarantine_path = str(q_dir / PART_FILE)
    finally:
        con.close()
    report.seconds = time.perf_counter() - t0
    report.report_path = str(day_dir(settings.quarantine_dir, REPORTS_TABLE, day) / "ingest_report.json")
    _write_report(report)
    (log.warning if report.failed else log.info)(report.summary())
    return report


def _reject_delivery(settings: "Settings", runs: dict[str, _TableRun], day: dt.date, ingested_at: dt.datetime,
                     now: dt.datetime, con: "duckdb.DuckDBPyConnection", report: IngestReport, t0: float) -> None:
    """A failing delivery for a day that already landed: keep every partition of the day, and put the
    whole delivery under ``<quarantine>/_rejected/date=D/<time>/``: each table's raw files unchanged in
    ``<table>/files/`` (unreadable ones with ``<name>.reason.txt``), its rows in ``<table>/part-0.parquet``
    (rejects with their reason; valid rows as ``delivery_rejected``), ``REASON.txt`` and the report."""
    why = _one_line(next(f for r in runs.values() for f in r.report.failures), 200)
    parts: dict[str, pa.Table] = {}
    for table in TABLES:
        run = runs[table]
        if run.batch is not None:
            reason = run.batch.column(_REASON).combine_chunks()
            valid = pc.is_null(reason)
            reason = _fill_reason(reason, valid, _reason(DELIVERY_REJECTED, "day kept"))
            detail = pc.if_else(valid, pa.scalar(why, pa.string()), run.batch.column(_DETAIL).combine_chunks())
            run.batch = run.batch.set_column(run.batch.column_names.index(_REASON), _REASON, reason)
            run.batch = run.batch.set_column(run.batch.column_names.index(_DETAIL), _DETAIL, detail)
        _, parts[table] = _split(settings, run, day, ingested_at, con)
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
    log.warning(report.summary())


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


def _write_report(report: IngestReport) -> None:
    storage.write_json_atomic(Path(report.report_path or ""), report.to_dict())

"""Reading a day's raw files and conforming them to the data contract: each file read as delivered
(parquet, or CSV with text ids), each contract column cast value by value (values that do not convert
are rejected as ``wrong_type``; a column that cannot convert at all rejects its file), extra ads/users
columns kept as attributes with one type across the day's files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.ingest.reasons import (
    DETAIL_COL,
    FILE_COL,
    INTERNAL_PREFIX,
    MISSING_COLUMN,
    REASON_COL,
    ROW_COL,
    UNCASTABLE_COLUMN,
    WRONG_TYPE,
    constant,
    fill_reason,
    reason_text,
    reject_whole_file,
)
from components.ingest.table_run import TableRun, fail_day
from components.schemas import TIMESTAMP

if TYPE_CHECKING:
    import duckdb

RAW_SUFFIXES = (".parquet", ".csv")


_DUCK_TYPES = {
    pa.int8(): "TINYINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.binary(): "BLOB",
    TIMESTAMP: "TIMESTAMPTZ",
}


class _Uncastable(Exception):
    """A column whose Arrow type has no sensible cast to the contract type (the whole file fails)."""


def raw_files(folder: Path) -> list[Path]:
    """The day's raw files in a fixed order (by name), so 'first wins' is reproducible; any case of
    the extension (``part-1.PARQUET``)."""
    from components.runs import files_under

    return files_under(folder, RAW_SUFFIXES)


def read_raw(path: Path, schema: pa.Schema) -> pa.Table:
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


def conform_file(run: TableRun, idx: int, raw: pa.Table, con: "duckdb.DuckDBPyConnection") -> None:
    """Cast one readable, non-empty file to the contract; whole-file problems reject every row."""
    name = run.files[idx].name
    table, rep = run.contract.name, run.report
    n = raw.num_rows
    missing = [f.name for f in run.schema if f.name not in raw.column_names]
    if missing:
        fail_day(rep, f"{table} file {name} lacks required column(s) {', '.join(missing)}: "
                          f"all {n:,} rows quarantined")
        run.whole_file_rejects.append(reject_whole_file(idx, n, reason_text(MISSING_COLUMN, ", ".join(missing))))
        return
    dupes = sorted({c for c in raw.column_names if raw.column_names.count(c) > 1})
    if dupes:
        fail_day(rep, f"{table} file {name} has repeated column name(s) {', '.join(dupes)}: "
                          f"all {n:,} rows quarantined")
        run.whole_file_rejects.append(reject_whole_file(idx, n, reason_text(UNCASTABLE_COLUMN, ", ".join(dupes), "repeated column")))
        return

    columns: dict[str, pa.Array] = {}
    reason = pa.nulls(n, pa.string())
    for f in run.schema:
        arr = raw.column(f.name).combine_chunks()
        try:
            values, bad = _cast_values(arr, f.type, con)
        except _Uncastable:
            fail_day(rep, f"{table} file {name}: column {f.name} has type {arr.type}, which cannot be cast "
                              f"to the contract type {f.type}: all {n:,} rows quarantined")
            run.whole_file_rejects.append(
                reject_whole_file(idx, n, reason_text(UNCASTABLE_COLUMN, f.name, f"{arr.type} -> {f.type}")))
            return
        if bad is not None:
            n_bad = pc.sum(bad).as_py() or 0
            if n_bad:
                examples = pc.filter(arr, bad).slice(0, 3).to_pylist()
                rep.warnings.append(f"{table} file {name}: {n_bad:,} value(s) in column {f.name} cannot be read as "
                                    f"{f.type} (e.g. {examples!r}); those rows are quarantined")
                reason = fill_reason(reason, bad, reason_text(WRONG_TYPE, f.name, f"expected {f.type}"))
        columns[f.name] = values

    for col in raw.column_names:
        if col in columns:
            continue
        arr = raw.column(col).combine_chunks()
        kept = _attribute_type(arr.type) if run.contract.keep_extra and not col.startswith(INTERNAL_PREFIX) else None
        if kept is None:
            rep.ignored_columns.setdefault(col, []).append(name)
            continue
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        columns[col] = pc.cast(arr, kept)
    columns[FILE_COL] = constant(idx, n, pa.int32())
    columns[ROW_COL] = pa.array(np.arange(n, dtype=np.int64))
    columns[REASON_COL] = reason
    columns[DETAIL_COL] = pa.nulls(n, pa.string())
    run.conformed.append(pa.table(columns))


def unify_extras(tables: list[pa.Table], contract_cols: set[str]) -> list[pa.Table]:
    """Give an extra column the same type in every file (mixed numbers: float64; any text: string), so
    the day's files concatenate; a file without the column gets nulls."""
    types: dict[str, set[pa.DataType]] = {}
    for t in tables:
        for f in t.schema:
            if f.name not in contract_cols and not f.name.startswith(INTERNAL_PREFIX):
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

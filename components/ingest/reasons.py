"""Why a row is rejected: the reason codes (in the order they are checked), the columns every quarantine
row carries, the bookkeeping columns carried through the checks, and the Arrow helpers that fill the
per-row reason column (the first failed check wins). See docs/ingestion.md for the reasons.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.schemas import TIMESTAMP

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
INTERNAL_PREFIX = "__"
FILE_COL, ROW_COL, REASON_COL, DETAIL_COL = "__file", "__row", "__reason", "__detail"


def reason_text(code: str, column: str, note: str = "") -> str:
    return f"{code}: {column}" + (f" ({note})" if note else "")


def describe_reason(reason: str, window: str) -> str:
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


def fill_reason(reason: pa.Array, cond: pa.Array, text: str) -> pa.Array:
    """Give ``text`` to rows that meet ``cond`` and have no reason yet (the first failed check wins)."""
    cond = pc.fill_null(as_array(cond), False)
    return as_array(pc.if_else(pc.and_(pc.is_null(reason), cond), pa.scalar(text, pa.string()), as_array(reason)))


def fill_with_detail(reason: pa.Array, detail: pa.Array, mask: pa.Array, text: str,
                      details: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``mask`` rows (all still valid, in index order) get ``text``; their details, in the same order."""
    if not pc.any(mask).as_py():
        return reason, detail
    reason = fill_reason(reason, mask, text)
    return reason, pc.replace_with_mask(detail, mask, details.cast(pa.string()))


def as_array(x: pa.Array | pa.ChunkedArray) -> pa.Array:
    return x.combine_chunks() if isinstance(x, pa.ChunkedArray) else x


def constant(value: Any, n: int, type_: pa.DataType) -> pa.Array:
    """``n`` copies of one value, built by Arrow (no Python list of n items)."""
    return pa.repeat(pa.scalar(value, type_), n)


def reject_whole_file(file_idx: int, n: int, reason: str) -> pa.Table:
    """Every row of a file rejected for one reason."""
    return pa.table({
        FILE_COL: constant(file_idx, n, pa.int32()),
        ROW_COL: pa.array(np.arange(n, dtype=np.int64)),
        REASON_COL: constant(reason, n, pa.string()),
        DETAIL_COL: pa.nulls(n, pa.string()),
    })

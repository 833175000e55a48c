"""The (user, ad) requests serving takes: reading a pairs file and normalising requests to the
impression columns of a training-set row (docs/serving.md, "Requests").

``user_id`` and ``ad_id`` are required; ``event_time``, ``slot``, ``position``, ``exposure_index`` and
``request_id`` get defaults when a request leaves them out (:func:`normalize_requests`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.schemas import IMPRESSIONS, TIMESTAMP

if TYPE_CHECKING:
    import pyarrow as pa

REQUIRED_REQUEST_COLUMNS = ("user_id", "ad_id")
# Context a request may leave out, and what it gets then (docs/serving.md, "Requests").
DEFAULT_POSITION = 1
DEFAULT_EXPOSURE_INDEX = 1  # not a model input (components/training/field_encoders.py NOT_FEATURES); kept for the row shape


def as_chunked(values: Any) -> "pa.ChunkedArray":
    """``values`` (an Arrow array or chunked array) as a chunked array."""
    import pyarrow as pa

    return values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])


def _event_times(column: "pa.ChunkedArray | None", n: int, now: dt.datetime) -> "pa.Array":
    """Request times as timestamp[us, UTC]: naive values are UTC, strings are ISO 8601, nulls are ``now``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column is None:
        return pa.array(np.full(n, int(now.timestamp() * 1_000_000), dtype=np.int64), pa.int64()).cast(TIMESTAMP)
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        import pandas as pd

        try:
            parsed = pd.to_datetime(pd.Series(column.to_pylist(), dtype=object), utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"event_time: cannot read the values as ISO 8601 times ({exc})") from None
        column = pa.Array.from_pandas(parsed)
    if not pa.types.is_timestamp(column.type):
        raise TypeError(f"event_time must be a timestamp or an ISO 8601 string column, got {column.type}")
    column = column.cast(TIMESTAMP)  # a naive timestamp is read as UTC
    return pc.fill_null(column, pa.scalar(now, TIMESTAMP))


def normalize_requests(requests: "pa.Table", now: dt.datetime | None = None) -> "pa.Table":
    """The impression columns of a training-set row (``IMPRESSIONS`` contract types) for each request.

    ``user_id`` and ``ad_id`` are required and non-null. Optional, with defaults for missing columns or
    null values: ``event_time`` (``now``, UTC), ``slot`` (null: the model's unknown slot),
    ``position`` (1), ``exposure_index`` (1; not a model input), ``request_id`` (``serve-<row>``).
    Other columns are dropped."""
    import pyarrow as pa
    import pyarrow.compute as pc

    missing = [c for c in REQUIRED_REQUEST_COLUMNS if c not in requests.column_names]
    if missing:
        raise ValueError(f"requests lack the column(s) {missing}; they have {requests.column_names}")
    n = requests.num_rows
    now = now or dt.datetime.now(dt.timezone.utc)
    out: dict[str, Any] = {}
    for key in REQUIRED_REQUEST_COLUMNS:
        col = requests.column(key)
        if col.null_count:
            raise ValueError(f"{key} has {col.null_count} null value(s): every request needs a user and an ad")
        try:
            out[key] = col.cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"{key} must hold integer ids ({exc})") from None
    out["event_time"] = _event_times(requests.column("event_time") if "event_time" in requests.column_names
                                     else None, n, now)
    if "request_id" in requests.column_names:
        rid = requests.column("request_id").cast(pa.string())
        generated = pa.array([f"serve-{i}" for i in range(n)], pa.string()) if rid.null_count else None
        out["request_id"] = pc.coalesce(rid, generated) if generated is not None else rid
    else:
        out["request_id"] = pa.array([f"serve-{i}" for i in range(n)], pa.string())
    out["slot"] = (requests.column("slot").cast(pa.string()) if "slot" in requests.column_names
                   else pa.nulls(n, pa.string()))
    for name, default in (("position", DEFAULT_POSITION), ("exposure_index", DEFAULT_EXPOSURE_INDEX)):
        if name in requests.column_names:
            out[name] = pc.fill_null(requests.column(name).cast(pa.int32()), pa.scalar(default, pa.int32()))
        else:
            out[name] = pa.array(np.full(n, default, dtype=np.int32), pa.int32())
    schema = IMPRESSIONS.required
    return pa.Table.from_arrays([as_chunked(out[f.name]).cast(f.type) for f in schema], schema=schema)


def read_requests(path: str | Path) -> "pa.Table":
    """A pairs file (``.csv`` or ``.parquet``) as an Arrow table; raises naming a missing file or
    an unsupported suffix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pairs file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if suffix == ".csv":
        import pyarrow.csv as pcsv

        return pcsv.read_csv(path)
    raise ValueError(f"pairs file {path}: expected a .csv or .parquet file")

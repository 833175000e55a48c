"""The data contract (DESIGN.md section 4): what every source adapter delivers and ingestion accepts.

Three tables. Required columns have fixed Arrow types; task label columns (``click``, ``conversion`` and
optionally more, listed in config) are int8 0/1.

Extra columns:
- ``impressions``: columns that are neither required nor a configured task are ignored (dropped and
  reported in the ingest report), so an upstream schema change cannot leak a label or a ground-truth
  probability into the features.
- ``ads`` and ``users``: extra string columns are kept as categorical attributes and extra numeric
  columns as numeric attributes (that is how taxonomy and profile columns travel); other types
  (lists, structs) are ignored and reported.

Raw landing layout, written by sources and read by ingestion:
``<home>/raw/<source>/<table>/date=YYYY-MM-DD/*.parquet`` (or ``*.csv``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")
TABLES = ("impressions", "ads", "users")


@dataclass(frozen=True)
class TableContract:
    name: str
    required: pa.Schema
    keys: tuple[str, ...]  # must be non-null
    time_column: str  # partitions by this column's UTC date
    unique: tuple[str, ...] = ()  # unique within the table (across days for impressions)
    keep_extra: bool = False


IMPRESSIONS = TableContract(
    name="impressions",
    required=pa.schema(
        [
            ("event_time", TIMESTAMP),
            ("request_id", pa.string()),
            ("user_id", pa.int64()),
            ("ad_id", pa.int64()),
            ("slot", pa.string()),
            ("position", pa.int32()),
            ("exposure_index", pa.int32()),
        ]
    ),
    keys=("event_time", "request_id", "user_id", "ad_id"),
    time_column="event_time",
    unique=("request_id",),
)

ADS = TableContract(
    name="ads",
    required=pa.schema(
        [
            ("ad_id", pa.int64()),
            ("advertiser_id", pa.int64()),
            ("campaign_id", pa.int64()),
            ("title", pa.string()),
            ("image", pa.binary()),  # JPEG bytes, or null when the creative has no photo
            ("bid", pa.float64()),
            ("created_at", TIMESTAMP),
        ]
    ),
    keys=("ad_id", "created_at"),
    time_column="created_at",
    unique=("ad_id",),
    keep_extra=True,
)

USERS = TableContract(
    name="users",
    required=pa.schema([("user_id", pa.int64()), ("created_at", TIMESTAMP)]),
    keys=("user_id", "created_at"),
    time_column="created_at",
    unique=("user_id",),
    keep_extra=True,
)

CONTRACTS: dict[str, TableContract] = {c.name: c for c in (IMPRESSIONS, ADS, USERS)}
LABEL_TYPE = pa.int8()


def impressions_schema(tasks: list[str] | tuple[str, ...]) -> pa.Schema:
    """The full impressions schema for a list of task columns."""
    schema = IMPRESSIONS.required
    for t in tasks:
        schema = schema.append(pa.field(t, LABEL_TYPE))
    return schema


def day_dir(root: Path, table: str, day: dt.date) -> Path:
    """``<root>/<table>/date=YYYY-MM-DD``: the one partition layout used by raw, offline, quarantine
    and feature folders."""
    return root / table / f"date={day.isoformat()}"


def day_window(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a UTC day."""
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
    return start, start + dt.timedelta(days=1)

"""Serving requests (components/serving/requests.py): validation, defaults and reading a pairs file. No store
or model is needed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from components.schemas import IMPRESSIONS

UTC = dt.timezone.utc


def test_requests_are_validated() -> None:
    from components.serving.requests import normalize_requests

    with pytest.raises(ValueError, match="ad_id"):
        normalize_requests(pa.table({"user_id": [1]}))
    with pytest.raises(ValueError, match="null"):
        normalize_requests(pa.table({"user_id": pa.array([1, None], pa.int64()), "ad_id": [1, 2]}))
    with pytest.raises(ValueError, match="ISO 8601"):
        normalize_requests(pa.table({"user_id": [1], "ad_id": [2], "event_time": ["yesterday"]}))
    with pytest.raises(ValueError, match="integer ids"):
        normalize_requests(pa.table({"user_id": ["u1"], "ad_id": [2]}))
    out = normalize_requests(pa.table({"user_id": [1, 2], "ad_id": [3, 4], "position": pa.array([None, 3], pa.int64()),
                                       "event_time": ["2026-11-03T10:00:00Z", "2026-11-03 11:30:00"]}))
    assert out["position"].to_pylist() == [1, 3]
    assert out["event_time"].to_pylist() == [dt.datetime(2026, 11, 3, 10, tzinfo=UTC),
                                             dt.datetime(2026, 11, 3, 11, 30, tzinfo=UTC)]


def test_missing_context_gets_the_documented_defaults() -> None:
    from components.serving.requests import DEFAULT_EXPOSURE_INDEX, DEFAULT_POSITION, normalize_requests

    now = dt.datetime(2026, 11, 3, 9, 15, tzinfo=UTC)
    out = normalize_requests(pa.table({"user_id": [7, 8], "ad_id": [9, 10], "extra": ["x", "y"],
                                       "request_id": pa.array(["r0", None], pa.string())}), now=now)
    assert out.schema == IMPRESSIONS.required  # the impression contract, extra columns dropped
    assert out["event_time"].to_pylist() == [now, now]
    assert out["request_id"].to_pylist() == ["r0", "serve-1"]  # a null id gets the generated one
    assert out["slot"].null_count == 2
    assert out["position"].to_pylist() == [DEFAULT_POSITION] * 2
    assert out["exposure_index"].to_pylist() == [DEFAULT_EXPOSURE_INDEX] * 2


def test_read_requests_reads_csv_and_parquet_and_names_what_is_wrong(tmp_path: Path) -> None:
    from components.serving.requests import read_requests

    table = pa.table({"user_id": [1, 2], "ad_id": [3, 4]})
    pcsv.write_csv(table, tmp_path / "pairs.csv")
    pq.write_table(table, tmp_path / "pairs.parquet")
    assert read_requests(tmp_path / "pairs.csv").to_pylist() == table.to_pylist()
    assert read_requests(tmp_path / "pairs.parquet").equals(table)
    with pytest.raises(FileNotFoundError, match="no pairs file"):
        read_requests(tmp_path / "absent.csv")
    (tmp_path / "pairs.json").write_text("[]")
    with pytest.raises(ValueError, match="expected a .csv or .parquet"):
        read_requests(tmp_path / "pairs.json")

"""The pieces of ingestion on their own: the reason column (components/ingest/reasons.py; the first failed
check wins) and conforming one delivered file to the contract (components/ingest/conform.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from components.ingest.conform import conform_file, unify_extras
from components.ingest.reasons import (
    FILE_COL,
    MISSING_COLUMN,
    REASON_COL,
    ROW_COL,
    WRONG_TYPE,
    describe_reason,
    fill_reason,
    fill_with_detail,
    reason_text,
    reject_whole_file,
)
from components.ingest.report import TableReport
from components.ingest.table_run import TableRun
from components.schemas import CONTRACTS
from components.store.sql import connect


def test_the_first_reason_wins_and_details_follow_the_mask() -> None:
    reason = pa.array([None, "null_key: ad_id", None], pa.string())
    reason = fill_reason(reason, pa.array([True, True, False]), "label_not_0_1: click")
    assert reason.to_pylist() == ["label_not_0_1: click", "null_key: ad_id", None]
    detail = pa.nulls(3, pa.string())
    reason, detail = fill_with_detail(reason, detail, pa.array([False, False, True]), "duplicate_in_batch: request_id",
                                      pa.array(["kept the first: a.parquet row 0"]))
    assert reason.to_pylist()[2] == "duplicate_in_batch: request_id"
    assert detail.to_pylist() == [None, None, "kept the first: a.parquet row 0"]
    assert describe_reason(reason_text(WRONG_TYPE, "bid", "expected double"), "[a, b)").startswith(
        "values in column bid cannot be read")
    whole = reject_whole_file(2, 3, reason_text(MISSING_COLUMN, "bid"))
    assert whole.column(FILE_COL).to_pylist() == [2, 2, 2] and whole.column(ROW_COL).to_pylist() == [0, 1, 2]


def _ads_run(*names: str) -> TableRun:
    contract = CONTRACTS["ads"]
    return TableRun(contract=contract, schema=contract.required, report=TableReport(table="ads"),
                    files=[Path(n) for n in names])


def _ads(bids: list[str]) -> pa.Table:
    n = len(bids)
    return pa.table({
        "ad_id": pa.array(range(1, n + 1), pa.int64()), "advertiser_id": [1] * n, "campaign_id": [7] * n,
        "title": ["t"] * n, "image": pa.nulls(n, pa.binary()), "bid": bids,
        "created_at": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)] * n, pa.timestamp("us", "UTC")),
        "genre": ["shoes"] * n,
    })


def test_conform_rejects_bad_values_only_and_keeps_attributes() -> None:
    run = _ads_run("a.csv")
    con = connect()
    try:
        conform_file(run, 0, _ads(["0.5", "lots", "2"]), con)
    finally:
        con.close()
    (batch,) = run.conformed
    assert batch.column("bid").to_pylist() == [0.5, None, 2.0]
    assert batch.column(REASON_COL).to_pylist() == [None, "wrong_type: bid (expected double)", None]
    assert batch.column("genre").type == pa.string()  # an extra ads column is an attribute
    assert "cannot be read as double" in run.report.warnings[0] and not run.report.failures


def test_conform_rejects_a_file_without_a_contract_column_whole() -> None:
    run = _ads_run("a.parquet")
    con = connect()
    try:
        conform_file(run, 0, _ads(["1"]).drop_columns(["bid"]), con)
    finally:
        con.close()
    assert not run.conformed and run.whole_file_rejects[0].column(REASON_COL).to_pylist() == ["missing_column: bid"]
    assert "lacks required column(s) bid" in run.report.failures[0]


def test_unify_extras_gives_an_extra_column_one_type_across_files() -> None:
    a = pa.table({"ad_id": [1], "size": pa.array([3], pa.int64())})
    b = pa.table({"ad_id": [2], "size": pa.array([2.5], pa.float64())})
    c = pa.table({"ad_id": [3], "size": ["XL"]})
    assert {t.schema.field("size").type for t in unify_extras([a, b], {"ad_id"})} == {pa.float64()}
    out = unify_extras([a, c], {"ad_id"})
    assert pc.equal(out[0].column("size"), pa.array(["3"])).to_pylist() == [True]

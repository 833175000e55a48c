"""Great Expectations suites for the three ingested tables (impressions, ads, users).

Ingestion (``components/ingest/day.py``) first rejects bad rows with vectorised checks, then hands the batch
that is about to land to :func:`validate_batch`. The suite re-checks the row-level rules independently
(types, non-null keys, labels in {0, 1}, timestamps inside the run window, unique keys), so a bug in the
row filters shows up as a failed expectation instead of silently landing, and adds batch-level
expectations that reject nothing but are reported: plausible label rates per task and, for
impressions, a non-empty day.

With ``gx_dir`` (ingestion passes ``settings.gx_dir``, ``<home>/gx``) the suite is stored in the
file-backed GX project and run through the table's checkpoint, whose results go into the Data Docs
(validation/gx_project.py). Without it an in-memory context validates and stores nothing.

This module knows nothing about files or the project's config: the caller describes the batch with a
:class:`BatchSpec`. Great Expectations is imported lazily (about 3 s); progress bars are off.

Speed (docs/benchmarks.md, "Great Expectations"): a 10M-row impressions day must validate in about a
second or two, where GX's pandas engine out of the box took a minute. What makes the difference, with
every rule still checked by GX:

- only the suite's columns go to pandas, strings as Arrow-backed ``ArrowDtype(string)`` (zero-copy).
  GX then checks a string column's type from its dtype instead of calling ``isinstance`` per value;
- whole-column rules are column aggregate expectations (see :func:`build_suite`): GX's map
  expectations copy the whole batch once per column before looking at it. Labels in {0, 1} and the
  run window are ``expect_column_min/max_to_be_between`` (an int8 label between 0 and 1 is 0 or 1),
  and uniqueness is the custom ``expect_column_values_to_be_unique_by_sorting``
  (validation/gx_expectations.py, reported as ``expect_column_values_to_be_unique``). The price: a
  failure reports the extreme value (a label of 2, the earliest timestamp) instead of a row count;
  ingestion's quarantine counts the rows;
- ``tune_gx`` (validation/gx_tuning.py) turns off two whole-column Python loops in GX 1.24's pandas
  engine: the md5 fingerprint of the whole dataframe it keeps as a batch marker (``HASH_THRESHOLD``), and the scan for
  ``decimal.Decimal`` objects that ``column.mean`` runs over every value even of an int8 column.

Example::

    spec = BatchSpec(table="impressions", column_types={"click": "int8"}, labels=("click",),
                     label_rate_bounds={"click": (0.001, 0.5)})
    results = validate_batch(arrow_table, spec)        # list[ExpectationResult]
    all(r.success for r in results)
    validate_batch(arrow_table, spec, gx_dir=settings.gx_dir, run_name="2026-11-01")  # + Data Docs
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

_CONTEXT_LOCK = threading.Lock()
_CONTEXT: Any = None
_BATCH_DEFINITIONS: dict[str, Any] = {}

WINDOW_START, WINDOW_END = "window_start", "window_end"  # suite parameters: the run window of the day


@dataclass(frozen=True)
class BatchSpec:
    """What a batch must look like. ``column_types`` maps a column to the pandas-side type name Great
    Expectations observes (see :func:`gx_type_name`); ``time_min`` / ``time_max`` bound ``time_column``
    as ``[time_min, time_max)`` (``time_min`` None: no lower bound)."""

    table: str
    column_types: dict[str, str] = field(default_factory=dict)
    not_null: tuple[str, ...] = ()
    unique: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    label_rate_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    time_column: str | None = None
    time_min: dt.datetime | None = None
    time_max: dt.datetime | None = None
    min_rows: int = 0


@dataclass
class ExpectationResult:
    """One expectation's outcome, JSON-serialisable. ``observed`` is the observed value where the
    expectation has one (a mean, a type name, a row count), else the number of unexpected rows."""

    name: str
    table: str
    column: str | None
    success: bool
    observed: Any = None
    unexpected_count: int | None = None
    bounds: dict[str, Any] | None = None
    exception: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sentence(self) -> str:
        """A human sentence naming the table, column and what was observed."""
        where = f"{self.table}.{self.column}" if self.column else self.table
        verdict = "passed" if self.success else "FAILED"
        parts = [f"expectation {self.name} on {where} {verdict}"]
        if self.observed is not None:
            parts.append(f"observed {self.observed}")
        if self.unexpected_count:
            parts.append(f"{self.unexpected_count} unexpected rows")
        if self.bounds:
            parts.append("bounds " + ", ".join(f"{k}={v}" for k, v in self.bounds.items()))
        if self.exception:
            parts.append(f"error: {self.exception}")
        return "; ".join(parts)


def gx_type_name(arrow_type: "pa.DataType") -> str | None:
    """The type name GX's pandas backend observes for a column of this Arrow type, or None when the
    column is not type-checked (binary columns are left out of the GX batch: JPEG bytes are big and
    no expectation reads them)."""
    import pyarrow as pa

    if pa.types.is_timestamp(arrow_type):
        return "Timestamp"  # a tz-aware column's dtype holds pd.Timestamp (GX checks the dtype)
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "str"  # ArrowDtype(string) holds str (see _frame)
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return None
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type):
        return str(arrow_type.to_pandas_dtype().__name__)
    return None


def _context() -> Any:
    """The process-wide ephemeral GX context, for validation without a project folder."""
    global _CONTEXT
    if _CONTEXT is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        from validation.gx_tuning import tune_gx

        tune_gx()
        config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False))
        ctx = gx.get_context(mode="ephemeral", project_config=config)
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        ctx.data_sources.add_pandas("adsrec_ingest")
        _CONTEXT = ctx
    return _CONTEXT


def _batch_definition(table: str) -> Any:
    if table not in _BATCH_DEFINITIONS:
        source = _context().data_sources.get("adsrec_ingest")
        asset = source.add_dataframe_asset(name=table)
        _BATCH_DEFINITIONS[table] = asset.add_batch_definition_whole_dataframe("whole_batch")
    return _BATCH_DEFINITIONS[table]


# The GX expectation a suite entry stands for in the ingest report, where it is checked another way.
REPORTED_AS = {"expect_column_values_to_be_unique_by_sorting": "expect_column_values_to_be_unique"}


def build_suite(spec: BatchSpec, n_rows: int | None = None) -> Any:
    """The expectation suite for ``spec``, as stored in the GX project. The run window enters as the
    suite parameters ``window_start`` / ``window_end`` (:func:`suite_parameters`), so the suite is the
    same every day. ``n_rows`` is ignored (kept for callers of the old signature): label rates are
    always expected. On an empty batch the min/max and mean expectations fail next to the row count
    (nothing to measure); ingestion validates an empty batch only for impressions, where an empty day
    is a failure anyway.

    Every rule that reads whole columns is a column aggregate expectation, which GX's pandas engine
    computes on the column itself; its map expectations first copy the whole batch once per column.
    Each one checks the same rule as the row-level form: an integer label whose smallest value is at
    least 0 and largest at most 1 is in {0, 1}; the smallest and largest timestamp inside the window is
    every timestamp inside it.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    from validation.gx_expectations import ExpectColumnValuesToBeUniqueBySorting

    expectations: list[Any] = []
    if spec.min_rows:
        expectations.append(gxe.ExpectTableRowCountToBeBetween(min_value=spec.min_rows))
    for column, type_name in spec.column_types.items():
        expectations.append(gxe.ExpectColumnValuesToBeOfType(column=column, type_=type_name))
    for column in spec.not_null:
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
    for column in spec.unique:
        expectations.append(ExpectColumnValuesToBeUniqueBySorting(column=column))
    for column in spec.labels:  # integer labels (their type is checked) between 0 and 1: in {0, 1}
        expectations.append(gxe.ExpectColumnMinToBeBetween(column=column, min_value=0))
        expectations.append(gxe.ExpectColumnMaxToBeBetween(column=column, max_value=1))
    if spec.time_column and spec.time_min is not None:
        expectations.append(gxe.ExpectColumnMinToBeBetween(
            column=spec.time_column, min_value={"$PARAMETER": WINDOW_START}))
    if spec.time_column and spec.time_max is not None:
        expectations.append(gxe.ExpectColumnMaxToBeBetween(
            column=spec.time_column, max_value={"$PARAMETER": WINDOW_END}, strict_max=True))
    for column in spec.labels:
        lo, hi = spec.label_rate_bounds.get(column, (0.0, 1.0))  # a task without bounds: [0, 1]
        expectations.append(gxe.ExpectColumnMeanToBeBetween(column=column, min_value=lo, max_value=hi))
    # Passed to the constructor, not added one by one: add_expectation writes through to the stored
    # suite of the same name at once (gx_project.checkpoint_for decides whether it needs updating).
    return gx.ExpectationSuite(name=f"{spec.table}_ingest", expectations=expectations)


def suite_parameters(spec: BatchSpec) -> dict[str, Any]:
    """The values of the suite parameters for this batch (the run window)."""
    out: dict[str, Any] = {}
    if spec.time_min is not None:
        out[WINDOW_START] = spec.time_min
    if spec.time_max is not None:
        out[WINDOW_END] = spec.time_max
    return out


def _frame(table: "pa.Table", spec: BatchSpec) -> Any:
    """The pandas frame GX validates: the suite's columns only (binary images, extra attributes stay
    behind), numbers zero-copy, strings Arrow-backed (``ArrowDtype(string)``: no copy, and GX checks
    their type from the dtype instead of value by value)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = set(spec.column_types) | set(spec.not_null) | set(spec.unique) | set(spec.labels) | {spec.time_column}
    needed = [c for c in table.column_names if c in wanted]

    def arrow_strings(t: pa.DataType) -> Any:
        return pd.ArrowDtype(t) if pa.types.is_string(t) or pa.types.is_large_string(t) else None

    # pandas turns an integer column holding nulls into float64, and the type check would then fail a
    # column that is int64 in the landed Arrow table (a log without advertisers). The type check is the
    # only expectation on such a non-key, non-label column, so for the frame its nulls are filled.
    checked_values = set(spec.not_null) | set(spec.unique) | set(spec.labels) | {spec.time_column}
    frame = table.select(needed)
    for i, name in enumerate(frame.column_names):
        col = frame.column(i)
        if col.null_count and pa.types.is_integer(col.type) and name not in checked_values:
            frame = frame.set_column(i, name, pc.fill_null(col, 0))
    return frame.to_pandas(types_mapper=arrow_strings)


def _jsonable(value: Any) -> Any:
    """GX hands back numpy scalars and pandas timestamps; the report must be plain JSON."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        return _jsonable(value.item())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def validate_batch(table: "pa.Table", spec: BatchSpec, *, gx_dir: "Path | str | None" = None,
                   run_name: str | None = None) -> list[ExpectationResult]:
    """Run the suite for ``spec`` on ``table`` (an Arrow table of the rows about to land).

    With ``gx_dir`` (``<home>/gx``) the suite is stored (updated when the spec changed) and run by the
    table's checkpoint under ``run_name`` (ingestion: the day), which writes the validation result and
    updates the Data Docs. Without it an in-memory context validates and stores nothing.
    Returns one :class:`ExpectationResult` per expectation, in suite order.
    """
    frame = _frame(table, spec)
    params = suite_parameters(spec)
    if gx_dir is None:
        with _CONTEXT_LOCK:  # the GX context is not thread-safe; backfills ingest days in threads
            batch_definition = _batch_definition(spec.table)  # builds the context first: suites need one
            batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
            outcome = batch.validate(build_suite(spec), expectation_parameters=params)
    else:
        from great_expectations.core.run_identifier import RunIdentifier

        from validation import gx_project

        with gx_project.locked(Path(gx_dir)) as ctx:
            # Taken under the lock, so two runs of one day never share a run time (the result's key).
            run_id = RunIdentifier(run_name=run_name or spec.table, run_time=dt.datetime.now(dt.timezone.utc))
            checkpoint = gx_project.checkpoint_for(ctx, spec.table, build_suite(spec))
            result = checkpoint.run(batch_parameters={"dataframe": frame}, expectation_parameters=params,
                                    run_id=run_id)
        outcome = next(iter(result.run_results.values()))
    results = _results(outcome, spec)
    if table.num_rows == 0 and not spec.min_rows:
        # An empty batch the spec allows (ingest.empty_day allow/warn): a column's min, max or mean of
        # no rows is not a violation, there is nothing to measure (GX fails them with no observed value).
        for r in results:
            if not r.success and str(r.observed) in ("None", "NaT", "nan") and r.name in _AGGREGATES:
                r.success, r.observed = True, "no rows"
    return results


_AGGREGATES = ("expect_column_min_to_be_between", "expect_column_max_to_be_between",
               "expect_column_mean_to_be_between")


def _results(outcome: Any, spec: BatchSpec) -> list[ExpectationResult]:
    results: list[ExpectationResult] = []
    for r in outcome.results:
        cfg = r.expectation_config
        kwargs = dict(cfg.kwargs)
        column = kwargs.pop("column", None)
        bounds = {k: _jsonable(v) for k, v in kwargs.items()
                  if k in ("min_value", "max_value", "value_set", "type_", "strict_max") and v is not None}
        res = r.result or {}
        exc = None
        if r.exception_info and r.exception_info.get("raised_exception"):
            exc = str(r.exception_info.get("exception_message"))
        results.append(
            ExpectationResult(
                name=REPORTED_AS.get(cfg.type, cfg.type),
                table=spec.table,
                column=column,
                success=bool(r.success),
                observed=_jsonable(res.get("observed_value")),
                unexpected_count=_jsonable(res.get("unexpected_count")),
                bounds=bounds or None,
                exception=exc,
            )
        )
    return results

"""Great Expectations suites for the three ingested tables (impressions, ads, users).

Ingestion (``components/ingest.py``) first rejects bad rows with vectorised checks, then hands the batch
that is about to land to :func:`validate_batch`. The suite re-checks the row-level rules independently
(types, non-null keys, labels in {0, 1}, timestamps inside the run window, unique keys), so a bug in the
row filters shows up as a failed expectation instead of silently landing, and adds batch-level
expectations that reject nothing but are reported: plausible label rates per task and, for
impressions, a non-empty day.

This module knows nothing about files or the project's config: the caller describes the batch with a
:class:`BatchSpec`. Great Expectations is imported lazily (about 3 s) and its ephemeral context is
built once per process; progress bars are off.

Example::

    spec = BatchSpec(table="impressions", column_types={"click": "int8"}, labels=("click",),
                     label_rate_bounds={"click": (0.001, 0.5)})
    results = validate_batch(arrow_table, spec)        # list[ExpectationResult]
    all(r.success for r in results)
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

_CONTEXT_LOCK = threading.Lock()
_CONTEXT: Any = None
_BATCH_DEFINITIONS: dict[str, Any] = {}


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
        return "Timestamp"  # tz-aware pandas columns are checked value by value: pd.Timestamp
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "str"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return None
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type):
        return str(arrow_type.to_pandas_dtype().__name__)
    return None


def _context() -> Any:
    """The process-wide ephemeral GX context (built once; GX import is slow)."""
    global _CONTEXT
    if _CONTEXT is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        # In-memory stores and no data-docs site: validation results go into our ingest report, and
        # nothing is written outside ADSREC_HOME.
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


def build_suite(spec: BatchSpec, n_rows: int) -> Any:
    """The expectation suite for ``spec``. Label-rate expectations are only added to a non-empty batch
    (the mean of nothing is undefined; an empty day is caught by the row-count expectation)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=f"{spec.table}_ingest")
    if spec.min_rows:
        suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=spec.min_rows))
    for column, type_name in spec.column_types.items():
        suite.add_expectation(gxe.ExpectColumnValuesToBeOfType(column=column, type_=type_name))
    for column in spec.not_null:
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column))
    for column in spec.unique:
        suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column=column))
    for column in spec.labels:
        suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[0, 1]))
    if spec.time_column and (spec.time_min is not None or spec.time_max is not None):
        suite.add_expectation(
            gxe.ExpectColumnValuesToBeBetween(
                column=spec.time_column, min_value=spec.time_min, max_value=spec.time_max, strict_max=True
            )
        )
    if n_rows:
        for column in spec.labels:
            lo, hi = spec.label_rate_bounds.get(column, (0.0, 1.0))  # a task without bounds: [0, 1]
            suite.add_expectation(gxe.ExpectColumnMeanToBeBetween(column=column, min_value=lo, max_value=hi))
    return suite


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


def validate_batch(table: "pa.Table", spec: BatchSpec) -> list[ExpectationResult]:
    """Run the suite for ``spec`` on ``table`` (an Arrow table of the rows about to land).

    Columns the suite does not read (binary images, extra attributes) are not converted to pandas.
    Returns one :class:`ExpectationResult` per expectation, in suite order.
    """
    needed = [c for c in table.column_names
              if c in spec.column_types or c in spec.not_null or c in spec.unique or c in spec.labels
              or c == spec.time_column]
    frame = table.select(needed).to_pandas()
    with _CONTEXT_LOCK:  # the GX context is not thread-safe; backfills ingest days in threads
        batch_definition = _batch_definition(spec.table)  # builds the context first: suites need one
        suite = build_suite(spec, table.num_rows)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        outcome = batch.validate(suite)
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
                name=cfg.type,
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

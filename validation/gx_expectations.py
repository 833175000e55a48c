"""One custom Great Expectations expectation: a column's values are unique, checked by sorting.

GX's own ``ExpectColumnValuesToBeUnique`` is a map expectation: on pandas it copies the whole batch to
drop null rows, then runs ``Series.duplicated`` through a hash table. On a 10M-row impressions day that
took 3.6 s for ``request_id`` alone (docs/benchmarks.md). This expectation checks the same rule with a
column aggregate metric, written the way GX documents custom expectations (a ``ColumnAggregateMetricProvider``
and a ``ColumnAggregateExpectation``): the non-null values, or for strings their 64-bit DuckDB
``hash``, are sorted with numpy and compared with their neighbours (about 1 s for 10M keys on two
shared cores). No two equal neighbours proves the values distinct. When a neighbour repeats (a real
duplicate, or for strings a hash collision, probability about n²/2⁶⁵), the exact count is taken with
``Series.duplicated``, so ``unexpected_count`` means what it means for GX's expectation: the number of
rows whose value occurs more than once.

Importing this module registers the metric and the expectation with GX (that is how GX finds custom
expectations), so it imports Great Expectations; only ``validation.expectations`` imports it, when a
suite is built. A suite stored with it can be loaded by any process that imported this module first.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnAggregateExpectation
from great_expectations.expectations.metrics.column_aggregate_metric_provider import (
    ColumnAggregateMetricProvider,
    column_aggregate_value,
)
from great_expectations.render import LegacyRendererType, RenderedStringTemplateContent
from great_expectations.render.renderer.renderer import renderer
from great_expectations.render.renderer_configuration import RendererConfiguration, RendererValueType

REPEATED_ROWS_METRIC = "column.adsrec_repeated_row_count"
RULE = "values must be unique (checked by sorting the values, or their 64-bit hashes)."


def repeated_rows(column: pd.Series) -> int:
    """Rows of ``column`` whose non-null value occurs more than once (0 when all are distinct)."""
    values = column.dropna() if column.hasnans else column
    if len(values) < 2:
        return 0
    dtype = values.dtype
    if isinstance(dtype, pd.ArrowDtype) or dtype == object or isinstance(dtype, pd.StringDtype):
        keys = _hash64(values)
    else:
        keys = values.to_numpy()
    keys = np.sort(keys, kind="quicksort")
    if not bool((keys[1:] == keys[:-1]).any()):
        return 0
    return int(values.duplicated(keep=False).sum())  # a repeat (or hash collision): count exactly


def _hash64(values: pd.Series) -> np.ndarray:
    """DuckDB's 64-bit hash of each value (vectorised, multi-threaded), as a uint64 numpy array."""
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    try:
        con.register("batch", pa.table({"v": pa.array(values)}))
        return con.execute("SELECT hash(v) AS h FROM batch").fetchnumpy()["h"]
    finally:
        con.close()


class ColumnRepeatedRowCount(ColumnAggregateMetricProvider):
    """``{"repeated": rows whose non-null value occurs more than once, "rows": rows in the column}``."""

    metric_name = REPEATED_ROWS_METRIC
    value_keys = ()

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs: Any) -> dict[str, int]:
        return {"repeated": repeated_rows(column), "rows": len(column)}


class ExpectColumnValuesToBeUniqueBySorting(ColumnAggregateExpectation):
    """Expect each non-null value of the column to occur once (the rule of ``ExpectColumnValuesToBeUnique``,
    checked by sorting the values or their 64-bit hashes instead of a copy of the batch per column)."""

    metric_dependencies: ClassVar[tuple[str, ...]] = (REPEATED_ROWS_METRIC,)
    success_keys: ClassVar[tuple[str, ...]] = ()
    args_keys: ClassVar[tuple[str, ...]] = ("column",)

    @classmethod
    def _prescriptive_template(cls, renderer_configuration: RendererConfiguration) -> RendererConfiguration:
        renderer_configuration.add_param(name="column", param_type=RendererValueType.STRING)
        template_str = RULE
        if renderer_configuration.include_column_name:
            template_str = f"$column {template_str}"
        renderer_configuration.template_str = template_str
        return renderer_configuration

    @classmethod
    @renderer(renderer_type=LegacyRendererType.PRESCRIPTIVE)
    def _prescriptive_renderer(cls, configuration: Any = None, result: Any = None,
                               runtime_configuration: dict | None = None, **kwargs: Any) -> list[Any]:
        """The sentence the Data Docs show for this expectation (their pages use the legacy renderers)."""
        runtime_configuration = runtime_configuration or {}
        column = (configuration.kwargs if configuration is not None else {}).get("column")
        template = RULE if runtime_configuration.get("include_column_name") is False else f"$column {RULE}"
        return [RenderedStringTemplateContent(
            content_block_type="string_template",
            string_template={"template": template, "params": {"column": column},
                             "styling": runtime_configuration.get("styling")},
        )]

    def _validate(self, metrics: dict, runtime_configuration: dict | None = None,
                  execution_engine: Any = None) -> dict[str, Any]:
        counted = metrics[REPEATED_ROWS_METRIC]
        repeated, rows = int(counted["repeated"]), int(counted["rows"])
        # The keys GX's Data Docs read for a failed expectation's "N unexpected values" line.
        return {"success": repeated == 0, "result": {
            "observed_value": repeated, "element_count": rows, "unexpected_count": repeated,
            "unexpected_percent": 100.0 * repeated / rows if rows else 0.0}}

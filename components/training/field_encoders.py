"""The encoders of single fields, and how they are fitted: a vocabulary per categorical column
(:class:`CategoricalEncoder`, :func:`fit_vocabulary`), equal-frequency buckets per numeric column
(:class:`NumericEncoder`, :func:`fit_buckets`), the click sequence (:class:`SequenceEncoder`,
:func:`sequence_category_field`); the column names and prefixes that decide a column's role, and the
steps of :meth:`FeatureEncoders.fit <components.training.encoders.FeatureEncoders.fit>` that apply them
(:func:`label_columns`, :func:`fit_fields`, :func:`fit_sequence`); and the vectorised Arrow helpers they
share (:func:`lookup`, :func:`float_values`, :func:`list_matrix`).

:class:`components.training.encoders.FeatureEncoders` puts them together; the rules are in its module
docstring and docs/training.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

SEQUENCE_PREFIX = "user_sequence__"
SEQUENCE_ITEMS = f"{SEQUENCE_PREFIX}ad_ids"
SEQUENCE_CATEGORIES = f"{SEQUENCE_PREFIX}categories"
SEQUENCE_TIMES = f"{SEQUENCE_PREFIX}click_times"
SEQUENCE_LENGTH = f"{SEQUENCE_PREFIX}length"
RECENT_PREFIX = "user_recent__"  # the fresh behaviour counters (components/store/fresh.py)
ITEM_FIELD = "ad_id"
# Columns of the training set that identify the impression or would hand the model its label.
IDENTIFIERS = ("event_time", "request_id")
NOT_FEATURES = ("exposure_index",)  # see the module docstring: IPW handles repeated exposures
# Identifier-like integer columns: categorical even though they are numbers.
ID_COLUMNS = ("user_id", "ad_id", "slot", "position", "ad_profile__advertiser_id", "ad_profile__campaign_id")
SEMANTIC_ID_PREFIX = "ad_semantic_id__"
SIMHASH_COLUMN = f"{SEMANTIC_ID_PREFIX}simhash"

GroupName = Literal["user", "ad", "context"]


def field_group(column: str) -> GroupName:
    """The GwPFM field group of a column: the entity it describes, else the impression's context."""
    if column == "user_id" or column.startswith(("user_profile__", "user_stats__", SEQUENCE_PREFIX, RECENT_PREFIX)):
        return "user"
    if column == "ad_id" or column.startswith(("ad_profile__", "ad_stats__", SEMANTIC_ID_PREFIX)):
        return "ad"
    return "context"  # slot, position, per-pair similarities


@dataclass
class CategoricalEncoder:
    """Vocabulary of one categorical column: ``values[i]`` has index ``i + 1``; 0 is unknown."""

    name: str
    group: GroupName
    kind: Literal["int", "string"]
    values: list[Any]
    counts: list[int] = field(default_factory=list)  # training frequency of each value (diagnostics)

    @property
    def vocab_size(self) -> int:
        return len(self.values) + 1

    def value_set(self) -> "pa.Array":
        """The vocabulary as an Arrow array, built once (a scorer encodes many small batches); kept
        outside the dataclass fields, so ``asdict`` and equality ignore it."""
        cached = self.__dict__.get("_value_set")
        if cached is None or len(cached) != len(self.values):
            import pyarrow as pa

            cached = pa.array(self.values, type=pa.int64() if self.kind == "int" else pa.string())
            self.__dict__["_value_set"] = cached
        return cached

    def encode(self, column: "pa.Array | pa.ChunkedArray") -> np.ndarray:
        """int64 ids: 1 + position in the vocabulary, 0 for values outside it and for nulls."""
        return lookup(column, self.value_set(), self.kind)


@dataclass
class NumericEncoder:
    """Equal-frequency buckets of one numeric column (``mode="quantile"``): bucket 0 is null, bucket
    ``1 + #(boundaries <= v)`` otherwise. ``mode="identity"`` (a SimHash code): ``v + 1`` for v in
    ``[0, n_buckets - 1)``, 0 for null or out of range."""

    name: str
    group: GroupName
    boundaries: list[float]
    mode: Literal["quantile", "identity"] = "quantile"
    identity_size: int = 0

    @property
    def n_buckets(self) -> int:
        if self.mode == "identity":
            return self.identity_size + 1
        return len(self.boundaries) + 2  # null + (len + 1) intervals

    def encode(self, column: "pa.Array | pa.ChunkedArray") -> np.ndarray:
        values, valid = float_values(column)
        out = np.zeros(len(values), dtype=np.int64)
        if self.mode == "identity":
            ok = valid & (values >= 0) & (values < self.identity_size)
            out[ok] = values[ok].astype(np.int64) + 1
            return out
        bounds = self.__dict__.get("_bounds")
        if bounds is None or len(bounds) != len(self.boundaries):  # built once, outside the dataclass fields
            bounds = self.__dict__["_bounds"] = np.asarray(self.boundaries, dtype=np.float64)
        out[valid] = np.searchsorted(bounds, values[valid], side="right") + 1
        return out


@dataclass
class SequenceEncoder:
    """The click sequence: ``length`` positions, gaps in ``n_gap_buckets`` log2-minute buckets
    (0 = padding, 1 + min(floor(log2(1 + minutes)), n_gap_buckets - 2) for a real click)."""

    length: int
    category_field: str | None
    n_gap_buckets: int = 18

    def gap_buckets(self, gap_minutes: np.ndarray) -> np.ndarray:
        """Bucket of each non-negative gap in minutes (>= 1; padding is handled by the caller)."""
        raw = np.floor(np.log2(1.0 + np.maximum(gap_minutes, 0.0))).astype(np.int64)
        return 1 + np.minimum(raw, self.n_gap_buckets - 2)


def lookup(column: "pa.Array | pa.ChunkedArray", value_set: "pa.Array", kind: str) -> np.ndarray:
    """Vectorised vocabulary lookup (Arrow hash ``index_in``): 1 + index, 0 when absent or null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    target = pa.int64() if kind == "int" else pa.string()
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.type != target:
        # An all-null column (pandas None -> Arrow null type, e.g. a request without a slot) is unknown.
        ok = pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_null(column.type)
        if kind == "string" and not ok:
            raise TypeError(f"expected a string column, got {column.type}")
        column = column.cast(target)
    index = pc.index_in(column, value_set=value_set)
    return (index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)) + 1


def float_values(column: "pa.Array | pa.ChunkedArray") -> tuple[np.ndarray, np.ndarray]:
    """float64 values (nulls and NaN marked invalid) of a numeric or boolean column."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls come out as NaN
    valid = ~np.isnan(values)
    if not valid.all():
        values = np.where(valid, values, 0.0)
    return values, valid


def list_matrix(column: "pa.ChunkedArray | pa.Array", length: int) -> tuple["pa.Array", np.ndarray, np.ndarray]:
    """The flat values of a list column and, for each value, its (row, position); positions >= length
    are dropped. Null lists contribute nothing."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_null(column.type):  # every list missing (e.g. pandas None for unknown users)
        return pa.array([], pa.null()), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    flat = pc.list_flatten(column)
    rows = pc.list_parent_indices(column).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    position = np.arange(len(rows), dtype=np.int64) - (offsets[rows] - offsets[0])
    keep = position < length
    if not keep.all():
        idx = np.flatnonzero(keep)
        flat, rows, position = flat.take(pa.array(idx)), rows[idx], position[idx]
    return flat, rows, position


def fit_vocabulary(
    column: "pa.ChunkedArray", name: str, group: GroupName, kind: Literal["int", "string"], min_count: int
) -> CategoricalEncoder:
    """Values seen at least ``min_count`` times, most frequent first (ties by value, so fits are
    deterministic)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    target = pa.int64() if kind == "int" else pa.string()
    counts = pc.value_counts(column.cast(target).drop_null().combine_chunks())
    values = counts.field("values")
    freq = counts.field("counts").to_numpy(zero_copy_only=False).astype(np.int64)
    keep = np.flatnonzero(freq >= min_count)
    values, freq = values.take(pa.array(keep)), freq[keep]
    order = pc.sort_indices(
        pa.table({"c": pa.array(freq), "v": values}), sort_keys=[("c", "descending"), ("v", "ascending")]
    )
    values = values.take(order).to_pylist()
    return CategoricalEncoder(name, group, kind, values, freq[order.to_numpy()].tolist())


def fit_buckets(column: "pa.ChunkedArray", name: str, group: GroupName, n_buckets: int) -> NumericEncoder:
    """Equal-frequency boundaries fitted on the non-null training values.

    Few distinct values (counts, flags: at most ``n_buckets``): one bucket per value. Otherwise boundary
    k is the smallest value with at least ``k·N/n_buckets`` values below it, so buckets hold N/n_buckets
    values each, except that a value with that much mass on its own (e.g. the zeros of a click count)
    gets a bucket of its own instead of swallowing its neighbours."""
    values, valid = float_values(column)
    values = values[valid]
    if len(values) == 0:
        return NumericEncoder(name, group, [])
    uniq, counts = np.unique(values, return_counts=True)
    if len(uniq) <= n_buckets:
        return NumericEncoder(name, group, [float(b) for b in uniq[1:]])
    target = len(values) / n_buckets
    below = np.cumsum(counts) - counts  # values strictly below each distinct value
    idx = np.searchsorted(below, target * np.arange(1, n_buckets), side="left")
    heavy = np.flatnonzero(counts >= target)
    idx = np.concatenate([idx, heavy, heavy + 1])
    idx = np.unique(idx[(idx > 0) & (idx < len(uniq))])
    return NumericEncoder(name, group, [float(b) for b in uniq[idx]])


def sequence_category_field(
    table: "pa.Table", categorical: list[CategoricalEncoder], configured: str | None
) -> str | None:
    """The categorical field whose vocabulary the sequence categories share."""
    import pyarrow.compute as pc

    if SEQUENCE_CATEGORIES not in table.column_names:
        return None
    flat = pc.list_flatten(table.column(SEQUENCE_CATEGORIES).combine_chunks())
    flat = flat.filter(pc.and_(pc.is_valid(flat), pc.not_equal(flat, "")))
    if len(flat) == 0:
        return None  # the ads have no taxonomy column: every category is ""
    candidates = [c for c in categorical if c.kind == "string" and c.name.startswith("ad_profile__")]
    if configured is not None:
        name = configured if configured.startswith("ad_profile__") else f"ad_profile__{configured}"
        if not any(c.name == name for c in candidates):
            raise ValueError(f"sequence category column {configured!r}: no categorical field {name!r}")
        return name
    if not candidates:
        return None
    distinct = pc.unique(flat)
    coverage = [int(pc.sum(pc.is_in(distinct, value_set=c.value_set())).as_py() or 0) for c in candidates]
    best = int(np.argmax(coverage))  # first on ties: the features' default is the first taxonomy column
    if coverage[best] == 0:
        return None
    return candidates[best].name


def label_columns(table: "pa.Table", tasks: Sequence[str] | None) -> list[str]:
    """The label columns: ``tasks``, or the int8 columns without ``__`` (the contract's label type);
    raises when one is missing or there is none."""
    import pyarrow as pa

    if tasks is None:
        tasks = [f.name for f in table.schema if f.type == pa.int8() and "__" not in f.name]
    tasks = list(tasks)
    missing = [t for t in tasks if t not in table.column_names]
    if missing or not tasks:
        raise ValueError(f"label columns {missing or tasks} not in the table; columns: {table.column_names}")
    return tasks


def _not_a_feature(table: "pa.Table", name: str, excluded: set[str]) -> str | None:
    """Why column ``name`` is not a feature, or None when it may be one."""
    if name in IDENTIFIERS:
        return "identifies the impression"
    if name in NOT_FEATURES:
        return "handled by inverse propensity weights, not a feature"
    if name in excluded:
        return "excluded by the caller"
    if table.column(name).null_count == table.num_rows:
        # e.g. profile columns of an empty users table, a similarity no training row has: a field
        # that only ever holds the unknown id would be a dead input (docs/training.md).
        return "no value in the training rows (all null)"
    return None


def fit_fields(
    table: "pa.Table", tasks: list[str], excluded: set[str], min_count: int, numeric_buckets: int
) -> tuple[list[CategoricalEncoder], list[NumericEncoder], dict[str, str]]:
    """The categorical and numeric encoders of every feature column, in column order, and why the other
    columns are not features (labels and the sequence's own columns are neither)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ignored: dict[str, str] = {}
    categorical: list[CategoricalEncoder] = []
    numeric: list[NumericEncoder] = []
    for f in table.schema:
        name, typ = f.name, f.type
        if name in tasks:
            continue
        if name.startswith(SEQUENCE_PREFIX) and name != SEQUENCE_LENGTH and name not in excluded:
            continue  # the sequence columns are encoded together (fit_sequence)
        reason = _not_a_feature(table, name, excluded)
        if reason is not None:
            ignored[name] = reason
            continue
        group = field_group(name)
        if name == SIMHASH_COLUMN and pa.types.is_integer(typ):
            top = pc.max(table.column(name)).as_py()
            bits = max(1, int(top).bit_length()) if top is not None and top > 0 else 1
            numeric.append(NumericEncoder(name, group, [], mode="identity", identity_size=1 << bits))
        elif pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_dictionary(typ):
            categorical.append(fit_vocabulary(table.column(name), name, group, "string", min_count))
        elif pa.types.is_integer(typ) and (name in ID_COLUMNS or name.startswith(SEMANTIC_ID_PREFIX)):
            categorical.append(fit_vocabulary(table.column(name), name, group, "int", min_count))
        elif pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ):
            numeric.append(fit_buckets(table.column(name), name, group, numeric_buckets))
        else:
            ignored[name] = f"type {typ} is not encodable"
    return categorical, numeric, ignored


def fit_sequence(
    table: "pa.Table", categorical: list[CategoricalEncoder], excluded: set[str], category_column: str | None,
    n_gap_buckets: int,
) -> SequenceEncoder | None:
    """The click sequence's encoder, or None without a (non-empty, not excluded) sequence column."""
    import pyarrow.compute as pc

    if SEQUENCE_ITEMS not in table.column_names or SEQUENCE_ITEMS in excluded:
        return None
    if not any(c.name == ITEM_FIELD for c in categorical):
        raise ValueError(f"the sequence needs the {ITEM_FIELD!r} column: its ids share that vocabulary")
    length = int(pc.max(pc.list_value_length(table.column(SEQUENCE_ITEMS))).as_py() or 0)
    if length == 0:
        return None
    cat_field = sequence_category_field(table, categorical, category_column)
    return SequenceEncoder(length=length, category_field=cat_field, n_gap_buckets=n_gap_buckets)


__all__ = [
    "ID_COLUMNS", "IDENTIFIERS", "ITEM_FIELD", "NOT_FEATURES", "SEMANTIC_ID_PREFIX", "SEQUENCE_CATEGORIES",
    "SEQUENCE_ITEMS", "SEQUENCE_LENGTH", "SEQUENCE_PREFIX", "SEQUENCE_TIMES", "SIMHASH_COLUMN", "CategoricalEncoder",
    "GroupName", "NumericEncoder", "SequenceEncoder", "field_group", "fit_buckets", "fit_fields", "fit_sequence",
    "fit_vocabulary", "float_values", "label_columns", "list_matrix", "lookup", "sequence_category_field",
]

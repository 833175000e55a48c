"""From a point-in-time training set (components/training/training_set.py) to the ranker's integer tensors.

``FeatureEncoders.fit(table)`` decides, from the training table's columns, what each column becomes
(docs/training.md has the full rules) and fits what the encoding needs on the training rows only:

- **categorical fields** (ids, slot, position, taxonomy and profile strings, semantic-ID codes): a
  vocabulary of the values seen at least ``min_count`` times, most frequent first; value -> 1 + its rank,
  anything else (unseen, rare, null) -> 0, the reserved unknown row;
- **numeric fields** (rolling stats, rates, bid, profile numbers, SEE similarities ``see_*``, the
  sequence length): equal-frequency bucket boundaries (training quantiles); value -> 1 + number of
  boundaries <= value, null -> 0, a bucket of its own. A SimHash semantic ID is a numeric field on a
  fixed scale instead (value + 1), since quantiles of a hash carry no order;
- **the behaviour sequence** (``user_sequence__ad_ids`` / ``__categories`` / ``__click_times``): item ids
  through the ``ad_id`` vocabulary, categories through the vocabulary of the ad column the sequence was
  built from, and the time from each click to the impression in log2-minute buckets (0 = padding).

Never features: columns null on every training row (nothing to learn; a source without that input),
labels, ``request_id`` and ``event_time`` (identify the impression), ``exposure_index``
(the retargeting policy chooses repeated exposures *because* of past clicks; the model must not learn
that shortcut, inverse propensity weights correct the bias instead).

``encode(table)`` turns any table with the same columns (training, validation, serving) into the batch
dict of the ranker (int64 ``cat`` / ``num`` / ``seq_*``, float32 ``labels`` / ``weights``), fully
vectorised with Arrow ``index_in`` and numpy ``searchsorted``. Encoders round-trip through JSON so they
can be logged with the model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

    from models.spec import FeatureSpec

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SEQUENCE_PREFIX = "user_sequence__"
SEQUENCE_ITEMS = f"{SEQUENCE_PREFIX}ad_ids"
SEQUENCE_CATEGORIES = f"{SEQUENCE_PREFIX}categories"
SEQUENCE_TIMES = f"{SEQUENCE_PREFIX}click_times"
SEQUENCE_LENGTH = f"{SEQUENCE_PREFIX}length"
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
    if column == "user_id" or column.startswith(("user_profile__", "user_stats__", SEQUENCE_PREFIX)):
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
        import pyarrow as pa

        return pa.array(self.values, type=pa.int64() if self.kind == "int" else pa.string())

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
        values, valid = _float_values(column)
        out = np.zeros(len(values), dtype=np.int64)
        if self.mode == "identity":
            ok = valid & (values >= 0) & (values < self.identity_size)
            out[ok] = values[ok].astype(np.int64) + 1
            return out
        out[valid] = np.searchsorted(np.asarray(self.boundaries, dtype=np.float64), values[valid], side="right") + 1
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


def _float_values(column: "pa.Array | pa.ChunkedArray") -> tuple[np.ndarray, np.ndarray]:
    """float64 values (nulls and NaN marked invalid) of a numeric or boolean column."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    values = column.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
    valid &= ~np.isnan(values)
    return values, valid


def _list_matrix(column: "pa.ChunkedArray | pa.Array", length: int) -> tuple["pa.Array", np.ndarray, np.ndarray]:
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


@dataclass
class FeatureEncoders:
    """What turns training-set columns into the ranker's integer inputs. Fit with :meth:`fit`."""

    tasks: list[str]
    categorical: list[CategoricalEncoder]
    numeric: list[NumericEncoder]
    sequence: SequenceEncoder | None = None
    ignored: dict[str, str] = field(default_factory=dict)  # column -> why it is not a feature
    fitted_rows: int = 0

    # ----- fitting ---------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        table: "pa.Table",
        tasks: Sequence[str] | None = None,
        *,
        min_count: int = 2,
        numeric_buckets: int = 32,
        sequence_category_column: str | None = None,
        n_gap_buckets: int = 18,
        exclude: Iterable[str] = (),
    ) -> "FeatureEncoders":
        """Decide each column's role and fit vocabularies / buckets on ``table`` (the training rows).

        Args:
            table: a training set (``train.parquet``) or any table with its columns.
            tasks: label columns; default: the int8 columns without ``__`` (the contract's label type).
            min_count: values seen fewer times get the unknown id 0 (so row 0 is trained, which new ids
                meet at serving time).
            numeric_buckets: target number of equal-frequency buckets (fewer when values tie).
            sequence_category_column: the ads column the sequence categories come from
                (``features.sequence_category_column``); default: the ``ad_profile__`` string column
                that covers most of the sequence's categories.
            n_gap_buckets: gap buckets of the sequence, padding included.
            exclude: further columns that must not become features.

        Example::

            enc = FeatureEncoders.fit(pq.read_table(".../train.parquet"))
            batch = enc.encode(table)   # batch["cat"]: int64 [N, len(enc.categorical)]
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        if min_count < 1 or numeric_buckets < 2 or n_gap_buckets < 2:
            raise ValueError("min_count >= 1, numeric_buckets >= 2 and n_gap_buckets >= 2 are required")
        if table.num_rows == 0:
            raise ValueError("cannot fit feature encoders on an empty table")
        if tasks is None:
            tasks = [f.name for f in table.schema if f.type == pa.int8() and "__" not in f.name]
        tasks = list(tasks)
        missing = [t for t in tasks if t not in table.column_names]
        if missing or not tasks:
            raise ValueError(f"label columns {missing or tasks} not in the table; columns: {table.column_names}")
        excluded = set(exclude)
        ignored: dict[str, str] = {}
        categorical: list[CategoricalEncoder] = []
        numeric: list[NumericEncoder] = []
        for f in table.schema:
            name, typ = f.name, f.type
            if name in tasks:
                continue
            if name in IDENTIFIERS:
                ignored[name] = "identifies the impression"
                continue
            if name in NOT_FEATURES:
                ignored[name] = "handled by inverse propensity weights, not a feature"
                continue
            if name in excluded:
                ignored[name] = "excluded by the caller"
                continue
            if name.startswith(SEQUENCE_PREFIX) and name != SEQUENCE_LENGTH:
                continue  # the sequence columns are encoded together below
            if table.column(name).null_count == table.num_rows:
                # e.g. profile columns of an empty users table, a similarity no training row has: a field
                # that only ever holds the unknown id would be a dead input (docs/training.md).
                ignored[name] = "no value in the training rows (all null)"
                continue
            group = field_group(name)
            if name == SIMHASH_COLUMN and pa.types.is_integer(typ):
                top = pc.max(table.column(name)).as_py()
                bits = max(1, int(top).bit_length()) if top is not None and top > 0 else 1
                numeric.append(NumericEncoder(name, group, [], mode="identity", identity_size=1 << bits))
            elif pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_dictionary(typ):
                categorical.append(_fit_vocabulary(table.column(name), name, group, "string", min_count))
            elif pa.types.is_integer(typ) and (name in ID_COLUMNS or name.startswith(SEMANTIC_ID_PREFIX)):
                categorical.append(_fit_vocabulary(table.column(name), name, group, "int", min_count))
            elif pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ):
                numeric.append(_fit_buckets(table.column(name), name, group, numeric_buckets))
            else:
                ignored[name] = f"type {typ} is not encodable"
        sequence = None
        if SEQUENCE_ITEMS in table.column_names and SEQUENCE_ITEMS not in excluded:
            if not any(c.name == ITEM_FIELD for c in categorical):
                raise ValueError(f"the sequence needs the {ITEM_FIELD!r} column: its ids share that vocabulary")
            length = int(pc.max(pc.list_value_length(table.column(SEQUENCE_ITEMS))).as_py() or 0)
            if length > 0:
                cat_field = _sequence_category_field(table, categorical, sequence_category_column)
                sequence = SequenceEncoder(length=length, category_field=cat_field, n_gap_buckets=n_gap_buckets)
        for name in table.column_names:
            if name.startswith(SEQUENCE_PREFIX) and name != SEQUENCE_LENGTH and sequence is None:
                ignored.setdefault(name, "no usable behaviour sequence")
        out = cls(list(tasks), categorical, numeric, sequence, ignored, table.num_rows)
        log.info(
            "feature encoders: %d categorical, %d numeric, sequence %s; not features: %s",
            len(categorical), len(numeric), f"L={sequence.length}" if sequence else "none", sorted(ignored),
        )
        return out

    # ----- the feature specification -----------------------------------------------------------------
    def spec(self) -> "FeatureSpec":
        """The ranker's feature specification, fields in the column order of :meth:`encode`."""
        from models.spec import CategoricalField, FeatureSpec, NumericField, SequenceField

        seq = None
        if self.sequence is not None:
            seq = SequenceField(
                item_field=ITEM_FIELD,
                category_field=self.sequence.category_field,
                length=self.sequence.length,
                n_gap_buckets=self.sequence.n_gap_buckets,
            )
        return FeatureSpec(
            categorical=tuple(CategoricalField(c.name, c.vocab_size, c.group) for c in self.categorical),
            numeric=tuple(NumericField(n.name, n.n_buckets, n.group) for n in self.numeric),
            sequence=seq,
            tasks=tuple(self.tasks),
        )

    @property
    def feature_columns(self) -> list[str]:
        """Every training-set column the encoding reads (labels excluded)."""
        cols = [c.name for c in self.categorical] + [n.name for n in self.numeric]
        if self.sequence is not None:
            cols += [SEQUENCE_ITEMS, SEQUENCE_TIMES]
            if self.sequence.category_field is not None:
                cols.append(SEQUENCE_CATEGORIES)
        return cols

    # ----- encoding ----------------------------------------------------------------------------------
    def encode_numpy(
        self,
        table: "pa.Table",
        weights: Mapping[str, np.ndarray] | None = None,
        with_labels: bool | None = None,
    ) -> dict[str, np.ndarray]:
        """The batch as numpy arrays (see :meth:`encode`). Raises ``KeyError`` naming missing columns."""
        n = table.num_rows
        needed = [c.name for c in self.categorical] + [e.name for e in self.numeric]
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise KeyError(f"table lacks feature columns {missing}")
        out: dict[str, np.ndarray] = {}
        cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, enc in enumerate(self.categorical):
            cat[:, j] = enc.encode(table.column(enc.name))
        out["cat"] = cat
        num = np.zeros((n, len(self.numeric)), dtype=np.int64)
        for j, nenc in enumerate(self.numeric):
            num[:, j] = nenc.encode(table.column(nenc.name))
        out["num"] = num
        if self.sequence is not None:
            out.update(self._encode_sequence(table))
        if with_labels is None:
            with_labels = all(t in table.column_names for t in self.tasks)
        if with_labels:
            labels = np.zeros((n, len(self.tasks)), dtype=np.float32)
            for j, task in enumerate(self.tasks):
                values, valid = _float_values(table.column(task))
                if not valid.all():
                    raise ValueError(f"label column {task!r} has {int((~valid).sum())} nulls")
                labels[:, j] = values
            out["labels"] = labels
            w = np.ones((n, len(self.tasks)), dtype=np.float32)
            for task, task_weights in (weights or {}).items():
                if task not in self.tasks:
                    raise KeyError(f"weights for unknown task {task!r}; tasks are {self.tasks}")
                arr = np.asarray(task_weights, dtype=np.float32)
                if arr.shape != (n,):
                    raise ValueError(f"weights for {task!r} have shape {arr.shape}, expected ({n},)")
                w[:, self.tasks.index(task)] = arr
            out["weights"] = w
        return out

    def encode(
        self,
        table: "pa.Table",
        weights: Mapping[str, np.ndarray] | None = None,
        with_labels: bool | None = None,
    ) -> dict[str, "torch.Tensor"]:
        """The ranker's batch dict for every row of ``table`` (CPU tensors, zero-copy from numpy).

        Keys: ``cat`` int64 [N, n_cat], ``num`` int64 [N, n_num], ``seq_items`` / ``seq_cats`` /
        ``seq_gaps`` int64 [N, L] when there is a sequence, and, when the table has the label columns
        (or ``with_labels``), ``labels`` float32 [N, T] and ``weights`` float32 [N, T] (1, or the given
        per-task inverse propensity weights).
        """
        import torch

        return {k: torch.from_numpy(v) for k, v in self.encode_numpy(table, weights, with_labels).items()}

    def _encode_sequence(self, table: "pa.Table") -> dict[str, np.ndarray]:
        import pyarrow as pa

        seq = self.sequence
        assert seq is not None
        n, length = table.num_rows, seq.length
        items = np.zeros((n, length), dtype=np.int64)
        cats = np.zeros((n, length), dtype=np.int64)
        gaps = np.zeros((n, length), dtype=np.int64)
        out = {"seq_items": items, "seq_gaps": gaps}
        if seq.category_field is not None:
            out["seq_cats"] = cats
        if SEQUENCE_ITEMS not in table.column_names:
            raise KeyError(f"table lacks the sequence column {SEQUENCE_ITEMS}")
        flat, rows, pos = _list_matrix(table.column(SEQUENCE_ITEMS), length)
        raw = flat.cast(pa.int64())
        real = raw.is_valid().to_numpy(zero_copy_only=False) & (raw.fill_null(-1).to_numpy() >= 0)
        ad_vocab = self.categorical_encoder(ITEM_FIELD)
        items[rows, pos] = np.where(real, lookup(raw, ad_vocab.value_set(), "int"), 0)
        # Gaps: minutes from each click to the impression. Without click times every real click is bucket 1.
        gap = np.ones(len(rows), dtype=np.int64)
        if SEQUENCE_TIMES in table.column_names and "event_time" in table.column_names:
            tflat, trows, tpos = _list_matrix(table.column(SEQUENCE_TIMES), length)
            click_us = np.full((n, length), np.iinfo(np.int64).min, dtype=np.int64)
            click_us[trows, tpos] = tflat.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).fill_null(
                np.iinfo(np.int64).min).to_numpy()
            event_us = table.column("event_time").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
            known = click_us[rows, pos] != np.iinfo(np.int64).min
            minutes = (event_us[rows] - click_us[rows, pos]) / 60e6
            gap = np.where(known, seq.gap_buckets(minutes), 1)
        gaps[rows, pos] = np.where(real, gap, 0)
        if seq.category_field is not None and SEQUENCE_CATEGORIES in table.column_names:
            cflat, crows, cpos = _list_matrix(table.column(SEQUENCE_CATEGORIES), length)
            cat_vocab = self.categorical_encoder(seq.category_field)
            cat_ids = lookup(cflat, cat_vocab.value_set(), "string")
            cats[crows, cpos] = cat_ids
            cats[gaps == 0] = 0  # padding positions carry no category
        return out

    def categorical_encoder(self, name: str) -> CategoricalEncoder:
        for enc in self.categorical:
            if enc.name == name:
                return enc
        raise KeyError(f"no categorical field {name!r}; fields: {[c.name for c in self.categorical]}")

    # ----- persistence -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "tasks": self.tasks,
            "categorical": [asdict(c) for c in self.categorical],
            "numeric": [asdict(n) for n in self.numeric],
            "sequence": asdict(self.sequence) if self.sequence else None,
            "ignored": self.ignored,
            "fitted_rows": self.fitted_rows,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureEncoders":
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"feature encoders format {version!r} is not supported (expected {FORMAT_VERSION})")
        return cls(
            tasks=list(data["tasks"]),
            categorical=[CategoricalEncoder(**c) for c in data["categorical"]],
            numeric=[NumericEncoder(**n) for n in data["numeric"]],
            sequence=SequenceEncoder(**data["sequence"]) if data.get("sequence") else None,
            ignored=dict(data.get("ignored", {})),
            fitted_rows=int(data.get("fitted_rows", 0)),
        )

    def save(self, path: str | Path) -> Path:
        """Write the encoders as JSON (atomically: temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FeatureEncoders":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no feature encoders at {path}")
        return cls.from_dict(json.loads(path.read_text()))


def _fit_vocabulary(
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


def _fit_buckets(column: "pa.ChunkedArray", name: str, group: GroupName, n_buckets: int) -> NumericEncoder:
    """Equal-frequency boundaries fitted on the non-null training values.

    Few distinct values (counts, flags: at most ``n_buckets``): one bucket per value. Otherwise boundary
    k is the smallest value with at least ``k·N/n_buckets`` values below it, so buckets hold N/n_buckets
    values each, except that a value with that much mass on its own (e.g. the zeros of a click count)
    gets a bucket of its own instead of swallowing its neighbours."""
    values, valid = _float_values(column)
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


def _sequence_category_field(
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


def time_split(table: "pa.Table", valid_days: int = 1) -> tuple["pa.Table", "pa.Table"]:
    """Train on all but the last ``valid_days`` UTC days of ``table``, validate on those (the daily
    retrain's evaluation is the newest day, which the model has not seen)."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.compute as pc

    if valid_days < 1:
        raise ValueError("valid_days must be >= 1")
    times = table.column("event_time")
    last = pc.max(times).as_py()
    if last is None:
        raise ValueError("cannot split an empty table by time")
    cut = dt.datetime(last.year, last.month, last.day, tzinfo=dt.timezone.utc) - dt.timedelta(days=valid_days - 1)
    is_valid = pc.greater_equal(times, pa.scalar(cut, type=times.type))
    train, valid = table.filter(pc.invert(is_valid)), table.filter(is_valid)
    if train.num_rows == 0:
        raise ValueError(f"time split at {cut.isoformat()} leaves no training rows")
    return train, valid


def read_training_set(path: str | Path) -> "pa.Table":
    """A training set's parquet (``<home>/training/<end>/train.parquet``) as one Arrow table."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training set at {path}; build one with `adsrec training-set`")
    return pq.read_table(path)


__all__ = [
    "CategoricalEncoder",
    "FeatureEncoders",
    "NumericEncoder",
    "SequenceEncoder",
    "field_group",
    "lookup",
    "read_training_set",
    "time_split",
]

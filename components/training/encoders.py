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
can be logged with the model. The single fields' encoders, their fitting and the column rules are
components/training/field_encoders.py; :func:`read_training_set` reads a training set for them,
:func:`window_split` splits it by day into train, validation and test (the daily run and the
experiments), :func:`time_split` into train and held-out days (runs that choose nothing on the held-out days).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from components.training.field_encoders import (
    ITEM_FIELD,
    SEQUENCE_CATEGORIES,
    SEQUENCE_ITEMS,
    SEQUENCE_LENGTH,
    SEQUENCE_PREFIX,
    SEQUENCE_TIMES,
    CategoricalEncoder,
    NumericEncoder,
    SequenceEncoder,
    fit_fields,
    fit_sequence,
    float_values,
    label_columns,
    list_matrix,
    lookup,
)

if TYPE_CHECKING:
    import datetime as dt

    import pyarrow as pa
    import torch

    from models.spec import FeatureSpec

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


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
        if min_count < 1 or numeric_buckets < 2 or n_gap_buckets < 2:
            raise ValueError("min_count >= 1, numeric_buckets >= 2 and n_gap_buckets >= 2 are required")
        if table.num_rows == 0:
            raise ValueError("cannot fit feature encoders on an empty table")
        tasks = label_columns(table, tasks)
        excluded = set(exclude)
        categorical, numeric, ignored = fit_fields(table, tasks, excluded, min_count, numeric_buckets)
        sequence = fit_sequence(table, categorical, excluded, sequence_category_column, n_gap_buckets)
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
        have = set(table.column_names)  # a set: column_names builds a new list on every access
        missing = [c for c in needed if c not in have]
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
            out.update(self.encode_sequence(table))
        if with_labels is None:
            with_labels = all(t in table.column_names for t in self.tasks)
        if with_labels:
            labels = np.zeros((n, len(self.tasks)), dtype=np.float32)
            for j, task in enumerate(self.tasks):
                values, valid = float_values(table.column(task))
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

    def encode_sequence(self, table: "pa.Table") -> dict[str, np.ndarray]:
        """``seq_items`` / ``seq_gaps`` [/ ``seq_cats``] of every row of ``table`` (the sequence part of
        :meth:`encode_numpy`; the scoring service calls it on its one user's row)."""
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
        flat, rows, pos = list_matrix(table.column(SEQUENCE_ITEMS), length)
        raw = flat.cast(pa.int64())
        real = raw.is_valid().to_numpy(zero_copy_only=False) & (raw.fill_null(-1).to_numpy() >= 0)
        ad_vocab = self.categorical_encoder(ITEM_FIELD)
        items[rows, pos] = np.where(real, lookup(raw, ad_vocab.value_set(), "int"), 0)
        # Gaps: minutes from each click to the impression. Without click times every real click is bucket 1.
        gap = np.ones(len(rows), dtype=np.int64)
        if SEQUENCE_TIMES in table.column_names and "event_time" in table.column_names:
            tflat, trows, tpos = list_matrix(table.column(SEQUENCE_TIMES), length)
            click_us = np.full((n, length), np.iinfo(np.int64).min, dtype=np.int64)
            click_us[trows, tpos] = tflat.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).fill_null(
                np.iinfo(np.int64).min).to_numpy()
            event_us = table.column("event_time").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
            known = click_us[rows, pos] != np.iinfo(np.int64).min
            minutes = (event_us[rows] - click_us[rows, pos]) / 60e6
            gap = np.where(known, seq.gap_buckets(minutes), 1)
        gaps[rows, pos] = np.where(real, gap, 0)
        if seq.category_field is not None and SEQUENCE_CATEGORIES in table.column_names:
            cflat, crows, cpos = list_matrix(table.column(SEQUENCE_CATEGORIES), length)
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


def _day_start(value: "dt.datetime") -> "dt.datetime":
    """Midnight UTC of ``value``'s day."""
    import datetime as dt

    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)


def time_split(table: "pa.Table", valid_days: int = 1) -> tuple["pa.Table", "pa.Table"]:
    """Train on all but the last ``valid_days`` UTC days of ``table``, hold those out (a two-way split, for
    runs that choose nothing on the held-out days; the daily run and the experiments split three ways with
    :func:`window_split`)."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.compute as pc

    if valid_days < 1:
        raise ValueError("valid_days must be >= 1")
    times = table.column("event_time")
    last = pc.max(times).as_py()
    if last is None:
        raise ValueError("cannot split an empty table by time")
    cut = _day_start(last) - dt.timedelta(days=valid_days - 1)
    is_valid = pc.greater_equal(times, pa.scalar(cut, type=times.type))
    train, valid = table.filter(pc.invert(is_valid)), table.filter(is_valid)
    if train.num_rows == 0:
        raise ValueError(f"time split at {cut.isoformat()} leaves no training rows")
    return train, valid


class WindowSplit(NamedTuple):
    """A training window split by UTC day: ``train`` (the oldest days), ``valid`` (the validation days:
    early stopping and every model choice) and ``test`` (the newest days: the reported evaluation, never
    seen by training or early stopping)."""

    train: "pa.Table"
    valid: "pa.Table"
    test: "pa.Table"


def window_split(table: "pa.Table", valid_days: int = 1, test_days: int = 1) -> WindowSplit:
    """The daily run's clean split: the newest ``test_days`` UTC days test, the ``valid_days`` days before
    them validate, every earlier day trains. A window too short to leave a training day is a ValueError
    naming ``pipeline.training_days``, ``training.valid_days`` and ``training.test_days``."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.compute as pc

    if valid_days < 1 or test_days < 1:
        raise ValueError(f"training.valid_days ({valid_days}) and training.test_days ({test_days}) must be >= 1")
    times = table.column("event_time")
    first, last = pc.min(times).as_py(), pc.max(times).as_py()
    if last is None:
        raise ValueError("cannot split an empty table by time")
    test_cut = _day_start(last) - dt.timedelta(days=test_days - 1)
    valid_cut = test_cut - dt.timedelta(days=valid_days)
    span = (last.date() - first.date()).days + 1
    if first >= valid_cut:
        raise ValueError(
            f"the training window spans {span} day(s) ({first.date()}..{last.date()}; pipeline.training_days) "
            f"and training.valid_days={valid_days} + training.test_days={test_days} leave no training day: "
            f"make pipeline.training_days at least {valid_days + test_days + 1} or hold out fewer days")
    is_test = pc.greater_equal(times, pa.scalar(test_cut, type=times.type))
    is_valid = pc.and_(pc.greater_equal(times, pa.scalar(valid_cut, type=times.type)), pc.invert(is_test))
    is_train = pc.invert(pc.or_(is_test, is_valid))
    return WindowSplit(table.filter(is_train), table.filter(is_valid), table.filter(is_test))


def read_training_set(path: str | Path) -> "pa.Table":
    """A training set's parquet (``<home>/training/<end>/train.parquet``) as one Arrow table."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training set at {path}; build one with `adsrec training-set`")
    return pq.read_table(path)


__all__ = ["FORMAT_VERSION", "FeatureEncoders", "WindowSplit", "read_training_set", "time_split", "window_split"]

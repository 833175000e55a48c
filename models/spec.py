"""The feature specification: what the ranker's input tensors mean.

The data encoder (``components/training/encoders.py``) produces a :class:`FeatureSpec` from the training set and the
ranker (``models/ranker.py``) sizes its embedding tables from it, so this module is the contract between the
two. It imports only the standard library.

Conventions every encoder and model relies on:

- index 0 of every categorical vocabulary is reserved for unknown / out-of-vocabulary ids;
- a numeric field arrives already discretised to a bucket id in ``[0, n_buckets)``;
- in the behaviour sequence, padding positions have gap bucket 0 (real behaviours have a gap bucket >= 1)
  and item id 0.

Example::

    spec = FeatureSpec(
        categorical=(CategoricalField("user_id", 1000, "user"), CategoricalField("ad_id", 500, "ad")),
        numeric=(NumericField("ad_ctr_7d", 20, "ad"),),
        sequence=SequenceField("ad_id", None, length=10, n_gap_buckets=8),
    )
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GROUPS: tuple[str, ...] = ("user", "ad", "context")


def _check_group(kind: str, name: str, group: str) -> None:
    if group not in GROUPS:
        raise ValueError(f"{kind} field {name!r}: group {group!r} is not one of {GROUPS}")


@dataclass(frozen=True)
class CategoricalField:
    """An id-like column: ``vocab_size`` rows, row 0 = unknown.

    Args:
        name: column name (e.g. ``"ad_id"``).
        vocab_size: number of ids including the reserved unknown id 0.
        group: ``"user"``, ``"ad"`` or ``"context"`` (GwPFM interacts fields by group).
    """

    name: str
    vocab_size: int
    group: str = "context"

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ValueError(f"categorical field {self.name!r}: vocab_size must be >= 1, got {self.vocab_size}")
        _check_group("categorical", self.name, self.group)


@dataclass(frozen=True)
class NumericField:
    """A numeric column discretised into ``n_buckets`` ordinal buckets (encoded with MNSE).

    Args:
        name: column name.
        n_buckets: bucket ids lie in ``[0, n_buckets)``.
        group: ``"user"``, ``"ad"`` or ``"context"``.
    """

    name: str
    n_buckets: int
    group: str = "context"

    def __post_init__(self) -> None:
        if self.n_buckets < 1:
            raise ValueError(f"numeric field {self.name!r}: n_buckets must be >= 1, got {self.n_buckets}")
        _check_group("numeric", self.name, self.group)


@dataclass(frozen=True)
class SequenceField:
    """The user's behaviour sequence (newest first).

    Args:
        item_field: categorical field whose embedding table the sequence item ids share (e.g. ``"ad_id"``);
            it is also the target of the attention.
        category_field: categorical field whose table the sequence category ids share, or None.
        length: L, positions per sequence.
        n_gap_buckets: gap bucket ids lie in ``[0, n_gap_buckets)``; 0 marks padding.
    """

    item_field: str
    category_field: str | None
    length: int
    n_gap_buckets: int

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"sequence length must be >= 1, got {self.length}")
        if self.n_gap_buckets < 2:
            raise ValueError(f"sequence n_gap_buckets must be >= 2 (0 is padding), got {self.n_gap_buckets}")


@dataclass(frozen=True)
class FeatureSpec:
    """Every input field of the ranker, in the column order of the batch tensors.

    Args:
        categorical: fields of ``batch["cat"]`` ([B, n_cat] int64), in this order.
        numeric: fields of ``batch["num"]`` ([B, n_num] int64 bucket ids), in this order.
        sequence: the behaviour sequence (``batch["seq_items"]``, ``"seq_cats"``, ``"seq_gaps"``), or None.
        tasks: label columns of ``batch["labels"]`` ([B, T] float32), in this order.
    """

    categorical: tuple[CategoricalField, ...]
    numeric: tuple[NumericField, ...] = ()
    sequence: SequenceField | None = None
    tasks: tuple[str, ...] = field(default=("click", "conversion"))

    def __post_init__(self) -> None:
        # Accept lists from callers; the dataclass is frozen, so go through object.__setattr__.
        object.__setattr__(self, "categorical", tuple(self.categorical))
        object.__setattr__(self, "numeric", tuple(self.numeric))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.categorical and not self.numeric:
            raise ValueError("a FeatureSpec needs at least one categorical or numeric field")
        if not self.tasks:
            raise ValueError("a FeatureSpec needs at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"duplicate task names in {self.tasks}")
        names = [f.name for f in self.categorical] + [f.name for f in self.numeric]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate field names: {duplicates}")
        if self.sequence is not None:
            cat_names = {f.name for f in self.categorical}
            roles = (("item_field", self.sequence.item_field), ("category_field", self.sequence.category_field))
            for role, name in roles:
                if name is not None and name not in cat_names:
                    raise ValueError(
                        f"sequence {role} {name!r} is not a categorical field (have {sorted(cat_names)})"
                    )

    def categorical_index(self, name: str) -> int:
        """Column of ``batch["cat"]`` holding field ``name``."""
        for i, f in enumerate(self.categorical):
            if f.name == name:
                return i
        raise KeyError(f"no categorical field {name!r} in the spec")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` inverts it."""
        return {
            "categorical": [{"name": f.name, "vocab_size": f.vocab_size, "group": f.group} for f in self.categorical],
            "numeric": [{"name": f.name, "n_buckets": f.n_buckets, "group": f.group} for f in self.numeric],
            "sequence": None
            if self.sequence is None
            else {
                "item_field": self.sequence.item_field,
                "category_field": self.sequence.category_field,
                "length": self.sequence.length,
                "n_gap_buckets": self.sequence.n_gap_buckets,
            },
            "tasks": list(self.tasks),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Rebuild a spec from :meth:`to_dict` output (e.g. read back from JSON)."""
        seq = data.get("sequence")
        return cls(
            categorical=tuple(CategoricalField(**f) for f in data["categorical"]),
            numeric=tuple(NumericField(**f) for f in data.get("numeric", ())),
            sequence=None if seq is None else SequenceField(**seq),
            tasks=tuple(data.get("tasks", ("click", "conversion"))),
        )

"""Conflicting (user, ad) pairs of two tasks, the input of the contradictory preference analysis
(validation/entanglement.py, whose docstring gives the rules): impressions mapped to embedding rows
(:func:`interaction_rows`), pairs chosen from labels (:func:`contradictory_pairs`) or from single-task
reference models (:func:`reference_pairs`), and the user-ad distance of a pair. Plain numpy.

Raw ids are mapped through the model's encoders, passed in as anything with the methods of
:class:`RowEncoders` (components/training/encoders.py ``FeatureEncoders`` has them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from validation.model_arrays import as_numpy, unwrap_ranker

USER_FIELD = "user_id"
ITEM_FIELD = "ad_id"
TASK_TABLE_PREFIX = "task:"
REFERENCE_FAR, REFERENCE_CLOSE = 60.0, 40.0  # percentiles of the reference-model rule (METHODS.md)


class RowEncoders(Protocol):
    """What the analyses use of a model's feature encoders: the categorical vocabularies (raw id ->
    embedding row), the feature columns and the encoding of a table into a batch."""

    @property
    def feature_columns(self) -> Sequence[str]: ...

    def categorical_encoder(self, name: str) -> Any: ...

    def encode(self, table: Any, *, with_labels: bool | None = None) -> Mapping[str, Any]: ...


# ----- the rows -------------------------------------------------------------------------------------------
@dataclass
class InteractionRows:
    """Impressions as embedding rows: ``users`` / ``ads`` [N] int64 (row ids inside the user-id and ad-id
    fields, never 0), ``labels`` {task: [N] bool}."""

    users: np.ndarray
    ads: np.ndarray
    labels: dict[str, np.ndarray]
    n_users: int  # vocabulary sizes (rows of the fields)
    n_ads: int
    dropped_unknown: int = 0


def interaction_rows(
    ranker: Any, rows: Any, encoders: "RowEncoders | None", tasks: Sequence[str]
) -> InteractionRows:
    """Map ``rows`` to embedding rows. ``rows``: a pyarrow Table with ``user_id``, ``ad_id`` and the task
    label columns (ids mapped through ``encoders``' vocabularies) or an encoded batch (``"cat"`` [N, n_cat]
    already holding row ids, ``"labels"`` [N, T] in the spec's task order). Rows whose user or ad id is
    outside the vocabulary (row 0) are dropped."""
    spec = ranker.spec
    for name in (USER_FIELD, ITEM_FIELD):
        spec.categorical_index(name)  # KeyError naming the field when the model has no such field
    n_users = spec.categorical[spec.categorical_index(USER_FIELD)].vocab_size
    n_ads = spec.categorical[spec.categorical_index(ITEM_FIELD)].vocab_size
    if isinstance(rows, Mapping):
        if "cat" not in rows or "labels" not in rows:
            raise KeyError("an encoded batch needs 'cat' and 'labels' (encode with with_labels=True)")
        cat = as_numpy(rows["cat"]).astype(np.int64)
        labels_all = as_numpy(rows["labels"])
        missing = [t for t in tasks if t not in spec.tasks]
        if missing:
            raise KeyError(f"tasks {missing} are not the model's tasks {spec.tasks}")
        users = cat[:, spec.categorical_index(USER_FIELD)]
        ads = cat[:, spec.categorical_index(ITEM_FIELD)]
        labels = {t: labels_all[:, spec.tasks.index(t)] > 0.5 for t in tasks}
    else:
        if encoders is None:
            raise ValueError("mapping raw user/ad ids to embedding rows needs the model's FeatureEncoders: "
                             "pass encoders=..., a TrainedModel (components.training.artefact.load_trained), or an "
                             "encoded batch")
        names = set(rows.column_names)
        missing = [c for c in (USER_FIELD, ITEM_FIELD, *tasks) if c not in names]
        if missing:
            raise KeyError(f"rows lack columns {missing} (have {sorted(names)[:12]}...)")
        users = encoders.categorical_encoder(USER_FIELD).encode(rows.column(USER_FIELD))
        ads = encoders.categorical_encoder(ITEM_FIELD).encode(rows.column(ITEM_FIELD))
        labels = {}
        for t in tasks:
            col = rows.column(t)
            if col.null_count:
                raise ValueError(f"label column {t!r} has {col.null_count} nulls")
            labels[t] = col.to_numpy(zero_copy_only=False).astype(np.float64) > 0.5
    if users.max(initial=0) >= n_users or ads.max(initial=0) >= n_ads:
        raise ValueError("user/ad row ids exceed the model's vocabularies: the encoders do not belong to "
                         "this model")
    known = (users > 0) & (ads > 0)
    return InteractionRows(users[known], ads[known], {t: v[known] for t, v in labels.items()},
                           n_users, n_ads, dropped_unknown=int((~known).sum()))


def frequent_mask(data: InteractionRows, min_count: int) -> np.ndarray:
    """[N] bool: impressions whose user and ad both have at least ``min_count`` impressions in ``data``."""
    user_n = np.bincount(data.users, minlength=data.n_users)
    ad_n = np.bincount(data.ads, minlength=data.n_ads)
    return (user_n[data.users] >= min_count) & (ad_n[data.ads] >= min_count)


# ----- selecting conflicting pairs -------------------------------------------------------------------------
@dataclass
class ConflictingPairs:
    """(user row, ad row) pairs of ``C_A`` and ``C_B`` ([n, 2] int64 each) and how they were chosen."""

    task_a: str
    task_b: str
    pairs_a: np.ndarray
    pairs_b: np.ndarray
    selection: str  # "labels", "labels-nested" or "references"
    ambiguous: int = 0  # pairs found in both sets and dropped


def split_keys(keys: np.ndarray, n_ads: int) -> np.ndarray:
    return np.stack([keys // n_ads, keys % n_ads], axis=1).astype(np.int64)


def _cap(keys: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    if len(keys) <= cap:
        return keys
    return np.sort(rng.choice(keys, size=cap, replace=False))


def contradictory_pairs(
    data: InteractionRows,
    task_a: str,
    task_b: str,
    min_count: int = 5,
    max_pairs: int = 50_000,
    seed: int = 0,
) -> ConflictingPairs:
    """Label-based conflicting pairs of tasks A and B (see the module docstring): deduplicated, frequent
    users and ads only, ambiguous pairs dropped, at most ``max_pairs // 2`` per set."""
    freq = frequent_mask(data, min_count)
    keys = data.users[freq] * data.n_ads + data.ads[freq]
    a, b = data.labels[task_a][freq], data.labels[task_b][freq]
    set_a, set_b = np.unique(keys[a & ~b]), np.unique(keys[b & ~a])
    selection = "labels"
    # A funnel (B only ever positive together with A, or the reverse) leaves one mirror set empty by
    # construction; contrast "positive for A only" with "positive for B" instead.
    if len(set_b) == 0 and b.any() and not (b & ~a).any():
        set_b, selection = np.unique(keys[b]), "labels-nested"
    elif len(set_a) == 0 and a.any() and not (a & ~b).any():
        set_a, selection = np.unique(keys[a]), "labels-nested"
    both = np.intersect1d(set_a, set_b, assume_unique=True)
    if len(both):
        set_a, set_b = np.setdiff1d(set_a, both, assume_unique=True), np.setdiff1d(set_b, both, assume_unique=True)
    rng = np.random.default_rng(seed)
    cap = max(1, max_pairs // 2)
    return ConflictingPairs(task_a, task_b, split_keys(_cap(set_a, cap, rng), data.n_ads),
                            split_keys(_cap(set_b, cap, rng), data.n_ads), selection, ambiguous=len(both))


def pair_distances(user_rows: np.ndarray, ad_rows: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """L2 distance between user row and ad row of every pair: [n] float64."""
    return np.linalg.norm(user_rows[pairs[:, 0]] - ad_rows[pairs[:, 1]], axis=1)


def _reference_table(ref: Any, task: str) -> str:
    names = list(ref.embedding_tables())
    for candidate in (f"{TASK_TABLE_PREFIX}{task}", "shared"):
        if candidate in names:
            return candidate
    return names[0]


def reference_pairs(
    data: InteractionRows,
    task_a: str,
    task_b: str,
    references: Mapping[str, Any],
    min_count: int = 5,
    max_pairs: int = 50_000,
    seed: int = 0,
) -> ConflictingPairs:
    """Conflicting pairs from single-task reference models (METHODS.md): over every frequent pair, ``C_B``
    = distance > 60th percentile under A's reference and <= 40th under B's, ``C_A`` the mirror. The
    references must share the analysed model's user/ad vocabularies (same encoders)."""
    for t in (task_a, task_b):
        if t not in references:
            raise KeyError(f"no reference model for task {t!r}; have {sorted(references)}")
    freq = frequent_mask(data, min_count)
    keys = np.unique(data.users[freq] * data.n_ads + data.ads[freq])
    pairs = split_keys(keys, data.n_ads)
    dist = {}
    for t in (task_a, task_b):
        ref = unwrap_ranker(references[t])
        spec = ref.spec
        sizes = (spec.categorical[spec.categorical_index(USER_FIELD)].vocab_size,
                 spec.categorical[spec.categorical_index(ITEM_FIELD)].vocab_size)
        if sizes != (data.n_users, data.n_ads):
            raise ValueError(f"reference model for {t!r} has user/ad vocabularies {sizes}, the analysed model "
                             f"{(data.n_users, data.n_ads)}: references must be trained with the same encoders")
        users, ads = ref.user_item_embeddings(_reference_table(ref, t), USER_FIELD, ITEM_FIELD)
        dist[t] = pair_distances(as_numpy(users).astype(np.float64), as_numpy(ads).astype(np.float64), pairs)
    if len(keys) == 0:
        empty = np.zeros((0, 2), dtype=np.int64)
        return ConflictingPairs(task_a, task_b, empty, empty, "references")
    far_a, close_a = np.percentile(dist[task_a], [REFERENCE_FAR, REFERENCE_CLOSE])
    far_b, close_b = np.percentile(dist[task_b], [REFERENCE_FAR, REFERENCE_CLOSE])
    in_b = (dist[task_a] > far_a) & (dist[task_b] <= close_b)  # A: far, B: close -> B's pair
    in_a = (dist[task_b] > far_b) & (dist[task_a] <= close_a)
    rng = np.random.default_rng(seed)
    cap = max(1, max_pairs // 2)
    return ConflictingPairs(task_a, task_b, split_keys(_cap(keys[in_a], cap, rng), data.n_ads),
                            split_keys(_cap(keys[in_b], cap, rng), data.n_ads), "references")


__all__ = [
    "ConflictingPairs",
    "InteractionRows",
    "RowEncoders",
    "contradictory_pairs",
    "frequent_mask",
    "interaction_rows",
    "pair_distances",
    "reference_pairs",
]

"""Interest entanglement of a multi-task ranker: contradictory preference analysis between every pair of
tasks, and inter-expert correlation (METHODS.md "Interest entanglement"; DESIGN.md section 8).

**Conflicting pairs.** For tasks A and B take (user, ad) pairs whose user and ad both have at least
``min_count`` impressions in the rows analysed (ids outside the model's vocabularies are dropped, never
mapped to the unknown row), deduplicated:

- without reference models (the default), from labels: ``C_A`` = pairs with an impression positive for A
  and negative for B, ``C_B`` = the mirror. When B implies A on every row (a funnel: conversion only
  after a click), the mirror is empty by construction, so ``C_B`` = pairs positive for B (and so for A
  too): "clicked, not bought" against "bought". A pair in both sets is ambiguous and dropped. At most
  ``max_pairs // 2`` pairs are sampled per set;
- with single-task reference models ``{task: Ranker}``: over all frequent pairs, a pair is in ``C_B``
  when its distance is above the 60th percentile under A's reference and at or below the 40th under B's
  (A's view: far, B's view: close), and in ``C_A`` for the mirror.

**Separation.** In a table T the *normalised distance* of a pair is the L2 distance between its user-id
row and its ad-id row divided by the mean distance over all selected pairs (``C_A ∪ C_B``) in T. The
gap of T is ``mean(C_B) - mean(C_A)`` (> 0: A's pairs are closer). Task A's representation should put
A's pairs closer (gap > 0 under A's table), task B's should put B's pairs closer (gap < 0 under B's):
``separation = (gap(T_A) - gap(T_B)) / 2``. With task tables (STEM, STEM-AL: ``task:<name>``) T_A and T_B
are the tasks' own tables; a model with shared tables only (MMoE, PLE, shared-bottom, DCNv2, AME,
multi-embedding) uses each shared table for both tasks, which gives exactly 0: one table cannot be close
for B and far for A at once. Both kinds are reported; the headline is the task-table separation when the
model has task tables, else the shared one.

**Inter-expert correlation.** :func:`expert_correlation`: mean absolute Pearson correlation between the
outputs of each pair of experts over a batch.

Example::

    from components.training.artefact import load_trained
    trained = load_trained(".adsrec/models/2026-11-07")
    report = entanglement_report(trained, train_table)       # a TrainedModel carries its encoders
    print(report.to_text()); report.plot("entanglement.png")
    report.pairs[0].separation                                # click vs conversion
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from validation.collapse import _pyplot, _save, _unwrap

if TYPE_CHECKING:
    from components.training.encoders import FeatureEncoders

USER_FIELD = "user_id"
ITEM_FIELD = "ad_id"
TASK_TABLE_PREFIX = "task:"
REFERENCE_FAR, REFERENCE_CLOSE = 60.0, 40.0  # percentiles of the reference-model rule (METHODS.md)
MAX_TABLE_PANELS = 6


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
    ranker: Any, rows: Any, encoders: "FeatureEncoders | None", tasks: Sequence[str]
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
        cat = _np(rows["cat"]).astype(np.int64)
        labels_all = _np(rows["labels"])
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


def _np(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


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


def _split_keys(keys: np.ndarray, n_ads: int) -> np.ndarray:
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
    return ConflictingPairs(task_a, task_b, _split_keys(_cap(set_a, cap, rng), data.n_ads),
                            _split_keys(_cap(set_b, cap, rng), data.n_ads), selection, ambiguous=len(both))


def _pair_distances(user_rows: np.ndarray, ad_rows: np.ndarray, pairs: np.ndarray) -> np.ndarray:
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
    pairs = _split_keys(keys, data.n_ads)
    dist = {}
    for t in (task_a, task_b):
        ref = _unwrap(references[t])
        spec = ref.spec
        sizes = (spec.categorical[spec.categorical_index(USER_FIELD)].vocab_size,
                 spec.categorical[spec.categorical_index(ITEM_FIELD)].vocab_size)
        if sizes != (data.n_users, data.n_ads):
            raise ValueError(f"reference model for {t!r} has user/ad vocabularies {sizes}, the analysed model "
                             f"{(data.n_users, data.n_ads)}: references must be trained with the same encoders")
        users, ads = ref.user_item_embeddings(_reference_table(ref, t), USER_FIELD, ITEM_FIELD)
        dist[t] = _pair_distances(_np(users).astype(np.float64), _np(ads).astype(np.float64), pairs)
    if len(keys) == 0:
        empty = np.zeros((0, 2), dtype=np.int64)
        return ConflictingPairs(task_a, task_b, empty, empty, "references")
    far_a, close_a = np.percentile(dist[task_a], [REFERENCE_FAR, REFERENCE_CLOSE])
    far_b, close_b = np.percentile(dist[task_b], [REFERENCE_FAR, REFERENCE_CLOSE])
    in_b = (dist[task_a] > far_a) & (dist[task_b] <= close_b)  # A: far, B: close -> B's pair
    in_a = (dist[task_b] > far_b) & (dist[task_a] <= close_a)
    rng = np.random.default_rng(seed)
    cap = max(1, max_pairs // 2)
    return ConflictingPairs(task_a, task_b, _split_keys(_cap(keys[in_a], cap, rng), data.n_ads),
                            _split_keys(_cap(keys[in_b], cap, rng), data.n_ads), "references")


# ----- the report ----------------------------------------------------------------------------------------
@dataclass
class TableDistances:
    """Normalised distances of ``C_A`` and ``C_B`` pairs in one table; ``kind``: ``"task"`` or ``"shared"``."""

    table: str
    kind: str
    dist_a: np.ndarray
    dist_b: np.ndarray

    @property
    def gap(self) -> float:
        """mean(C_B) - mean(C_A): > 0 when the table puts A's pairs closer."""
        if len(self.dist_a) == 0 or len(self.dist_b) == 0:
            return math.nan
        return float(self.dist_b.mean() - self.dist_a.mean())


@dataclass
class PairSeparation:
    """Contradictory preference analysis of one task pair."""

    task_a: str
    task_b: str
    selection: str
    n_a: int
    n_b: int
    tables: dict[str, TableDistances]
    separation_task: float | None  # None: the model has no task tables for this pair
    separation_shared: float | None  # None: the model has no shared table
    ambiguous: int = 0

    @property
    def separation(self) -> float:
        """The headline: the task-table separation when there is one, else the shared one."""
        value = self.separation_task if self.separation_task is not None else self.separation_shared
        return math.nan if value is None else value

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_a": self.task_a, "task_b": self.task_b, "selection": self.selection,
            "n_pairs_a": self.n_a, "n_pairs_b": self.n_b, "ambiguous_dropped": self.ambiguous,
            "separation": _json_float(self.separation),
            "separation_task": _json_float(self.separation_task),
            "separation_shared": _json_float(self.separation_shared),
            "tables": {name: {"kind": t.kind, "gap": _json_float(t.gap),
                              "mean_a": _json_float(float(t.dist_a.mean()) if len(t.dist_a) else None),
                              "mean_b": _json_float(float(t.dist_b.mean()) if len(t.dist_b) else None)}
                       for name, t in self.tables.items()},
        }


def _json_float(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass
class EntanglementReport:
    """Per task pair :class:`PairSeparation`, plus the inter-expert correlation when a batch was given."""

    pairs: list[PairSeparation]
    has_task_tables: bool
    arch: str | None = None
    expert_mean_abs_r: float | None = None
    expert_matrix: np.ndarray | None = None
    expert_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    min_count: int = 5
    max_pairs: int = 50_000

    def pair(self, task_a: str, task_b: str) -> PairSeparation:
        for p in self.pairs:
            if {p.task_a, p.task_b} == {task_a, task_b}:
                return p
        raise KeyError(f"no task pair ({task_a}, {task_b})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "has_task_tables": self.has_task_tables,
            "min_count": self.min_count,
            "max_pairs": self.max_pairs,
            "pairs": [p.to_dict() for p in self.pairs],
            "expert_correlation": _json_float(self.expert_mean_abs_r),
            "expert_names": self.expert_names,
            "expert_matrix": None if self.expert_matrix is None else np.where(
                np.isfinite(self.expert_matrix), self.expert_matrix, np.nan).tolist(),
            "notes": self.notes,
        }

    def to_text(self) -> str:
        lines = [f"interest entanglement ({self.arch or 'model'}; users and ads with >= {self.min_count} "
                 f"impressions, at most {self.max_pairs} pairs)"]
        for p in self.pairs:
            lines.append(f"\n{p.task_a} vs {p.task_b}: C_{p.task_a} {p.n_a} pairs, C_{p.task_b} {p.n_b} pairs "
                         f"(selection: {p.selection}" + (f", {p.ambiguous} ambiguous dropped" if p.ambiguous else "")
                         + ")")
            width = max(len("table"), *(len(n) for n in p.tables))
            lines.append(f"  {'table':<{width}}  {'kind':<6}  {'mean C_' + p.task_a:>16}  "
                         f"{'mean C_' + p.task_b:>16}  {'gap':>8}")
            for name, t in p.tables.items():
                ma = f"{t.dist_a.mean():.4f}" if len(t.dist_a) else "-"
                mb = f"{t.dist_b.mean():.4f}" if len(t.dist_b) else "-"
                lines.append(f"  {name:<{width}}  {t.kind:<6}  {ma:>16}  {mb:>16}  {t.gap:>8.4f}")
            fmt = (lambda v: "n/a" if v is None else f"{v:.4f}")  # noqa: E731
            lines.append(f"  separation: task tables {fmt(p.separation_task)}, shared {fmt(p.separation_shared)}"
                         f"  -> {p.separation:.4f}")
        if self.expert_mean_abs_r is not None:
            lines.append(f"\ninter-expert correlation: mean |r| {self.expert_mean_abs_r:.3f} over "
                         f"{len(self.expert_names)} experts ({', '.join(self.expert_names)})")
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)

    def plot(self, path: str | Path, bins: int = 40) -> Path:
        """PNG: for every task pair (a row) and table (a column, at most 6), histograms of the normalised
        distances of the two conflicting sets, with their means marked."""
        plt = _pyplot()
        if not self.pairs:
            raise ValueError("nothing to plot: no task pair")
        ncols = max(1, min(MAX_TABLE_PANELS, max(len(p.tables) for p in self.pairs)))
        fig, axes = plt.subplots(len(self.pairs), ncols, figsize=(4.2 * ncols, 3.3 * len(self.pairs)),
                                 squeeze=False)
        for r, p in enumerate(self.pairs):
            for c, (name, t) in enumerate(list(p.tables.items())[:ncols]):
                ax = axes[r, c]
                both = np.concatenate([t.dist_a, t.dist_b])
                edges = np.linspace(0, float(both.max()) if len(both) else 1.0, bins + 1)
                for dist, task, colour in ((t.dist_a, p.task_a, "tab:blue"), (t.dist_b, p.task_b, "tab:orange")):
                    if len(dist):
                        ax.hist(dist, bins=edges, density=True, alpha=0.5, color=colour,
                                label=f"C_{task} (n={len(dist)})")
                        ax.axvline(float(dist.mean()), color=colour, lw=1.5)
                ax.set_title(f"{p.task_a} vs {p.task_b}: {name} ({t.kind}), gap {t.gap:.3f}", fontsize=9)
                ax.set_xlabel("normalised user-ad distance")
                ax.legend(fontsize=7)
            for c in range(len(p.tables), ncols):
                axes[r, c].set_visible(False)
        fig.suptitle("contradictory preference analysis: distances of conflicting pairs per table", fontsize=10)
        fig.tight_layout()
        return _save(fig, path)


def _table_kind(name: str) -> str:
    return "task" if name.startswith(TASK_TABLE_PREFIX) else "shared"


def _separation(table_a: TableDistances, table_b: TableDistances) -> float:
    """``(s_A + s_B) / 2``: s_A = mean(C_B) - mean(C_A) under A's table (A's pairs should be closer),
    s_B = mean(C_A) - mean(C_B) under B's table. NaN when a set is empty."""
    if not (len(table_a.dist_a) and len(table_a.dist_b) and len(table_b.dist_a) and len(table_b.dist_b)):
        return math.nan
    s_a = table_a.dist_b.mean() - table_a.dist_a.mean()
    s_b = table_b.dist_a.mean() - table_b.dist_b.mean()
    return float((s_a + s_b) / 2)


def pair_separation(ranker: Any, conflict: ConflictingPairs) -> PairSeparation:
    """Normalised distances of ``conflict``'s pairs in every table of ``ranker`` and the separations."""
    tables: dict[str, TableDistances] = {}
    for name in ranker.embedding_tables():
        users, ads = ranker.user_item_embeddings(name, USER_FIELD, ITEM_FIELD)
        users, ads = _np(users).astype(np.float64), _np(ads).astype(np.float64)
        da = _pair_distances(users, ads, conflict.pairs_a)
        db = _pair_distances(users, ads, conflict.pairs_b)
        scale = np.concatenate([da, db]).mean() if len(da) + len(db) else 1.0
        scale = scale if scale > 0 else 1.0
        tables[name] = TableDistances(name, _table_kind(name), da / scale, db / scale)
    a, b = conflict.task_a, conflict.task_b
    ta, tb = f"{TASK_TABLE_PREFIX}{a}", f"{TASK_TABLE_PREFIX}{b}"
    sep_task = None
    if ta in tables and tb in tables:
        sep_task = _separation(tables[ta], tables[tb])
    shared = [t for t in tables.values() if t.kind == "shared"]
    sep_shared = None
    if shared:
        # One table for both tasks: the two terms are exact negatives in floating point, so this is 0.
        sep_shared = float(np.mean([_separation(t, t) for t in shared]))
    return PairSeparation(a, b, conflict.selection, len(conflict.pairs_a), len(conflict.pairs_b), tables,
                          sep_task, sep_shared, conflict.ambiguous)


def entanglement_report(
    model: Any,
    rows: Any,
    encoders: "FeatureEncoders | None" = None,
    *,
    tasks: Sequence[str] | None = None,
    min_count: int = 5,
    max_pairs: int = 50_000,
    references: Mapping[str, Any] | None = None,
    batch: Mapping[str, Any] | None = None,
    expert_rows: int = 4096,
    seed: int = 0,
) -> EntanglementReport:
    """Contradictory preference analysis of every pair of ``tasks`` (default: the model's) and the
    inter-expert correlation on ``batch``, else on ``rows`` when it is an encoded batch, else on a sample
    of ``rows`` when it is a table with every feature column and the encoders are known (else skipped).

    Args:
        model: a Ranker, or a TrainedModel (its encoders are used when ``encoders`` is None).
        rows: a pyarrow Table with ``user_id``, ``ad_id`` and the task label columns (the training set, an
            impressions table), or an encoded batch with ``cat`` and ``labels``.
        encoders: the model's FeatureEncoders (maps raw ids to rows; unknown ids are dropped).
        tasks: tasks to pair up (at least 2).
        min_count: minimum impressions of a user and of an ad.
        max_pairs: pairs sampled at most (half per conflicting set).
        references: ``{task: single-task Ranker}``: select pairs by the reference rule instead of labels.
        batch: an encoded batch for :func:`expert_correlation`.
        expert_rows: rows of that batch used at most.
        seed: sampling seed.
    """
    if encoders is None:
        encoders = getattr(model, "encoders", None)
    ranker = _unwrap(model)
    tasks = tuple(tasks or ranker.tasks)
    if len(tasks) < 2:
        raise ValueError(f"entanglement needs at least 2 tasks, got {tasks}")
    if min_count < 1 or max_pairs < 2:
        raise ValueError("min_count must be >= 1 and max_pairs >= 2")
    data = interaction_rows(ranker, rows, encoders, tasks)
    notes = []
    if data.dropped_unknown:
        notes.append(f"{data.dropped_unknown} impressions with a user or ad outside the vocabulary dropped")
    table_names = list(ranker.embedding_tables())
    has_task = any(_table_kind(n) == "task" for n in table_names)
    arch = getattr(getattr(ranker, "config", None), "arch", None)
    if not has_task:
        notes.append(f"{arch or 'this model'} has only shared tables ({', '.join(table_names)}): its separation "
                     "is 0 by construction")
    pairs = []
    for a, b in itertools.combinations(tasks, 2):
        if references is not None:
            conflict = reference_pairs(data, a, b, references, min_count, max_pairs, seed)
        else:
            conflict = contradictory_pairs(data, a, b, min_count, max_pairs, seed)
        if len(conflict.pairs_a) == 0 or len(conflict.pairs_b) == 0:
            notes.append(f"{a} vs {b}: a conflicting set is empty (C_{a} {len(conflict.pairs_a)}, "
                         f"C_{b} {len(conflict.pairs_b)}); lower min_count or use more rows")
        if conflict.selection == "labels-nested":
            notes.append(f"{a} vs {b}: one task is only positive together with the other (a funnel), so the "
                         "mirror set is 'positive for that task' (module docstring)")
        pairs.append(pair_separation(ranker, conflict))
    report = EntanglementReport(pairs, has_task, arch, notes=notes, min_count=min_count, max_pairs=max_pairs)
    if batch is None and isinstance(rows, Mapping):
        batch = rows  # an encoded batch: correlate the experts on it
    if batch is None and encoders is not None and not isinstance(rows, Mapping):
        if all(c in rows.column_names for c in encoders.feature_columns):
            rng = np.random.default_rng(seed)
            take = np.sort(rng.choice(rows.num_rows, size=min(expert_rows, rows.num_rows), replace=False))
            batch = encoders.encode(rows.take(take), with_labels=False)
    if batch is not None:
        report.expert_mean_abs_r, report.expert_matrix, report.expert_names = _expert_correlation(
            ranker, batch, expert_rows, seed)
    return report


# ----- inter-expert correlation ------------------------------------------------------------------------
def _expert_correlation(
    ranker: Any, batch: Mapping[str, Any], max_rows: int, seed: int
) -> tuple[float, np.ndarray, list[str]]:
    import torch

    tensors = {k: torch.as_tensor(_np(v)) for k, v in batch.items()}
    n = len(next(iter(tensors.values())))
    if n < 2:
        raise ValueError("expert correlation needs a batch of at least 2 rows")
    if n > max_rows:
        take = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False)))
        tensors = {k: v.index_select(0, take) for k, v in tensors.items()}
    device = next(ranker.parameters()).device
    tensors = {k: v.to(device) for k, v in tensors.items()}
    was_training = ranker.training
    ranker.eval()
    try:
        with torch.no_grad():
            outputs = ranker.forward_with_aux(tensors)[1]["expert_outputs"]
    finally:
        ranker.train(was_training)
    names = list(outputs)
    widths = {tuple(v.shape[1:]) for v in outputs.values()}
    if len(widths) != 1:
        raise ValueError(f"experts have different output shapes {sorted(widths)}: cannot correlate them")
    x = torch.stack([outputs[k].float() for k in names]).cpu().numpy().astype(np.float64)  # [E, B, h]
    x = x.reshape(x.shape[0], x.shape[1], -1)
    mean, std = x.mean(axis=1, keepdims=True), x.std(axis=1, keepdims=True)
    z = np.divide(x - mean, std, out=np.zeros_like(x), where=std > 0)  # constant dims -> 0
    flat = z.reshape(z.shape[0], -1)  # [E, B*h]
    norms = np.linalg.norm(flat, axis=1)
    denom = np.outer(norms, norms)
    matrix = np.divide(flat @ flat.T, denom, out=np.full(denom.shape, np.nan), where=denom > 0)
    upper = matrix[np.triu_indices(len(names), k=1)]
    upper = upper[np.isfinite(upper)]
    return (float(np.abs(upper).mean()) if len(upper) else math.nan), matrix, names


def expert_correlation(model: Any, batch: Mapping[str, Any], max_rows: int = 4096, seed: int = 0
                       ) -> tuple[float, np.ndarray]:
    """Mean absolute Pearson correlation between every pair of experts' outputs over ``batch``.

    The outputs ``model.forward_with_aux(batch)[1]["expert_outputs"]`` ({name: [B, h]}, in that order:
    the plan's experts, then PLE's upper-level ones) are standardised per output dimension over the batch
    (constant dimensions, e.g. dead ReLUs, become 0), flattened to [B*h] and correlated: r_ab is the Pearson
    correlation of the flattened standardised outputs, which equals the mean over matching dimensions of the
    per-dimension correlations when no dimension is constant. Note that this compares dimension k of one
    expert with dimension k of another; independently initialised experts can be redundant up to a
    permutation of their units, which this measure does not see.

    Args:
        model: a Ranker or TrainedModel.
        batch: an encoded batch (tensors or numpy arrays); at most ``max_rows`` rows (sampled) are used.

    Returns:
        (mean |r| over expert pairs in [0, 1], NaN with a single expert; matrix [E, E], NaN where an expert's
        output is constant over the batch).
    """
    mean_abs, matrix, _ = _expert_correlation(_unwrap(model), batch, max_rows, seed)
    return mean_abs, matrix


__all__ = [
    "ConflictingPairs",
    "EntanglementReport",
    "InteractionRows",
    "PairSeparation",
    "TableDistances",
    "contradictory_pairs",
    "entanglement_report",
    "expert_correlation",
    "frequent_mask",
    "interaction_rows",
    "pair_separation",
    "reference_pairs",
]

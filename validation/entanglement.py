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

**Inter-expert correlation** (validation/expert_correlation.py): mean absolute Pearson correlation between
the outputs of each pair of experts over a batch.

The pairs themselves are chosen in validation/conflicting_pairs.py.

Example::

    trained = load_trained(".adsrec/models/2026-11-07")      # components/training/artefact.py
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
from typing import Any

import numpy as np

from validation.conflicting_pairs import (
    ITEM_FIELD,
    TASK_TABLE_PREFIX,
    USER_FIELD,
    ConflictingPairs,
    RowEncoders,
    contradictory_pairs,
    interaction_rows,
    pair_distances,
    reference_pairs,
)
from validation.expert_correlation import expert_correlation_matrix
from validation.gate_intervals import clustered_separation_se
from validation.model_arrays import as_numpy, unwrap_ranker
from validation.plots import pyplot, save_figure

MAX_TABLE_PANELS = 6


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
    separation_se: float | None = None  # of the task-table separation, clustered by user and ad; None: too few

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
            "separation_se": _json_float(self.separation_se),
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
                         f"  -> {p.separation:.4f}" + (f" (s.e. {p.separation_se:.4f}, clustered by user and ad)"
                                                       if p.separation_se is not None else ""))
        if self.expert_mean_abs_r is not None:
            lines.append(f"\ninter-expert correlation: mean |r| {self.expert_mean_abs_r:.3f} over "
                         f"{len(self.expert_names)} experts ({', '.join(self.expert_names)})")
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)

    def plot(self, path: str | Path, bins: int = 40) -> Path:
        """PNG: for every task pair (a row) and table (a column, at most 6), histograms of the normalised
        distances of the two conflicting sets, with their means marked."""
        plt = pyplot()
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
        return save_figure(fig, path)


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
        users, ads = as_numpy(users).astype(np.float64), as_numpy(ads).astype(np.float64)
        da = pair_distances(users, ads, conflict.pairs_a)
        db = pair_distances(users, ads, conflict.pairs_b)
        scale = np.concatenate([da, db]).mean() if len(da) + len(db) else 1.0
        scale = scale if scale > 0 else 1.0
        tables[name] = TableDistances(name, _table_kind(name), da / scale, db / scale)
    a, b = conflict.task_a, conflict.task_b
    ta, tb = f"{TASK_TABLE_PREFIX}{a}", f"{TASK_TABLE_PREFIX}{b}"
    sep_task = sep_se = None
    if ta in tables and tb in tables:
        sep_task = _separation(tables[ta], tables[tb])
        # separation = (mean over C_B - mean over C_A) of each pair's distance under T_A minus under T_B, / 2
        sep_se = clustered_separation_se(tables[ta].dist_a - tables[tb].dist_a, tables[ta].dist_b - tables[tb].dist_b,
                                         conflict.pairs_a, conflict.pairs_b)
    shared = [t for t in tables.values() if t.kind == "shared"]
    sep_shared = None
    if shared:
        # One table for both tasks: the two terms are exact negatives in floating point, so this is 0.
        sep_shared = float(np.mean([_separation(t, t) for t in shared]))
    return PairSeparation(a, b, conflict.selection, len(conflict.pairs_a), len(conflict.pairs_b), tables,
                          sep_task, sep_shared, conflict.ambiguous, sep_se)


def entanglement_report(
    model: Any,
    rows: Any,
    encoders: "RowEncoders | None" = None,
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
        encoders: the model's encoders, a :class:`RowEncoders` (maps raw ids to rows; unknown ids dropped).
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
    ranker = unwrap_ranker(model)
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
        report.expert_mean_abs_r, report.expert_matrix, report.expert_names = expert_correlation_matrix(
            ranker, batch, expert_rows, seed)
    return report


__all__ = ["EntanglementReport", "PairSeparation", "TableDistances", "entanglement_report", "pair_separation"]

"""Offline evaluation of a multi-task ranker: every metric for each task, on the whole table and per
slice, as an :class:`EvalReport` (text table and JSON).

METHODS.md "Metrics", DESIGN.md section 7; definitions and slices in docs/evaluation.md. The metrics are
in components/training/metrics.py (AUC, GAUC, logloss, calibration), the slices in
components/training/slices.py, the simulator's oracle AUC in components/training/oracle.py.

- :func:`evaluate`: every metric for each task on the whole table and on slices (first vs repeated
  exposure, new vs established ads, the top categories) -> :class:`EvalReport`; with ``n_boot`` > 0,
  each task's AUC also gets its bootstrap interval over users (components/training/intervals.py).

Scores passed to :func:`evaluate` are predicted probabilities in [0, 1] (``sigmoid`` of the ranker's
logits), aligned with the table's rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from components.training.intervals import Interval, auc_interval
from components.training.metrics import as_labels, as_probabilities, auc, calibration, gauc_codes, logloss
from components.training.slices import EvalSlices, slice_masks

if TYPE_CHECKING:
    from components.training.oracle import OracleReport


@dataclass
class TaskMetrics:
    """One task's metrics on one set of rows."""

    rows: int
    positives: int
    positive_rate: float
    mean_prediction: float
    auc: float
    gauc: float
    gauc_users: int
    logloss: float
    calibration: float

    @classmethod
    def compute(cls, probs: np.ndarray, labels: np.ndarray, user_codes: np.ndarray | None) -> "TaskMetrics":
        """Metrics of validated arrays; ``user_codes`` are dense user codes (``np.unique`` inverse)."""
        n = int(probs.size)
        g, g_users = gauc_codes(probs, labels, user_codes) if user_codes is not None else (float("nan"), 0)
        return cls(
            rows=n,
            positives=int(labels.sum()),
            positive_rate=float(labels.mean()) if n else float("nan"),
            mean_prediction=float(probs.mean()) if n else float("nan"),
            auc=auc(probs, labels),
            gauc=g,
            gauc_users=g_users,
            logloss=logloss(probs, labels),
            calibration=calibration(probs, labels),
        )


def json_safe(x: Any) -> Any:
    """``x`` with every non-finite float (nested in dicts, lists, tuples) replaced by None: plain JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def format_number(x: float, spec: str) -> str:
    """``x`` formatted with ``spec``; ``-`` when it is not finite."""
    return "-" if not math.isfinite(x) else format(x, spec)


@dataclass
class EvalReport:
    """Per-task metrics on the whole table (``overall``) and on each slice (``slices[name][task]``).

    ``oracle`` (task -> oracle AUC), when attached with :meth:`with_oracle`, adds the oracle AUC and the
    model's ratio to it to the text table. ``auc_intervals`` (task -> :class:`Interval`, when
    :func:`evaluate` was given ``n_boot``) is each task's whole-table AUC with its bootstrap interval over
    users."""

    tasks: tuple[str, ...]
    rows: int
    overall: dict[str, TaskMetrics]
    slices: dict[str, dict[str, TaskMetrics]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    oracle: dict[str, float] = field(default_factory=dict)
    auc_intervals: dict[str, Interval] = field(default_factory=dict)

    def with_oracle(self, oracle: "OracleReport") -> "EvalReport":
        self.oracle = dict(oracle.oracle)
        return self

    def metric(self, task: str, name: str, slice_name: str | None = None) -> float:
        """One number, e.g. ``report.metric("click", "calibration", "exposure=first")``."""
        block = self.overall if slice_name is None else self.slices[slice_name]
        return float(getattr(block[task], name))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (NaN -> null)."""
        out = {
            "tasks": list(self.tasks),
            "rows": self.rows,
            "overall": {t: asdict(m) for t, m in self.overall.items()},
            "slices": {s: {t: asdict(m) for t, m in per.items()} for s, per in self.slices.items()},
            "notes": list(self.notes),
        }
        if self.auc_intervals:
            out["auc_interval"] = {t: i.to_dict() for t, i in self.auc_intervals.items()}
        if self.oracle:
            out["oracle_auc"] = dict(self.oracle)
            out["auc_ratio_to_oracle"] = {
                t: self.overall[t].auc / a for t, a in self.oracle.items() if t in self.overall and a > 0
            }
        return json_safe(out)

    def to_text(self) -> str:
        """A readable fixed-width table: one line per (slice, task)."""
        head = f"{'slice':<28} {'task':<12} {'rows':>9} {'pos%':>7} {'AUC':>7} {'GAUC':>7} {'logloss':>8} {'calib':>6}"
        if self.oracle:
            head += f" {'oracle':>7} {'ratio':>6}"
        lines = [head, "-" * len(head)]
        blocks = [("all", self.overall), *self.slices.items()]
        for name, per in blocks:
            for task in self.tasks:
                m = per[task]
                line = (
                    f"{name[:28]:<28} {task[:12]:<12} {m.rows:>9d} {format_number(100 * m.positive_rate, '.2f'):>7} "
                    f"{format_number(m.auc, '.4f'):>7} {format_number(m.gauc, '.4f'):>7} "
                    f"{format_number(m.logloss, '.4f'):>8} {format_number(m.calibration, '.3f'):>6}"
                )
                if self.oracle:
                    o = self.oracle.get(task, float("nan")) if name == "all" else float("nan")
                    ratio = m.auc / o if math.isfinite(o) and o > 0 else float("nan")
                    line += f" {format_number(o, '.4f'):>7} {format_number(ratio, '.3f'):>6}"
                lines.append(line)
        if self.auc_intervals:
            first = next(iter(self.auc_intervals.values()))
            lines.append(f"AUC with its {first.level:.0%} interval over users ({first.n_boot} resamples): "
                         + ", ".join(f"{t} {i}" for t, i in self.auc_intervals.items()))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def evaluate(
    scores: Mapping[str, Any],
    table: pa.Table,
    tasks: Sequence[str],
    slices: EvalSlices = EvalSlices(),
    ads: pa.Table | None = None,
    n_boot: int = 0,
) -> EvalReport:
    """Every metric for each task, on the whole ``table`` and on each slice.

    Args:
        scores: task -> predicted probabilities, aligned with ``table``'s rows.
        table: the evaluated rows: labels, ``user_id`` (for GAUC), ``exposure_index``, ``event_time``,
            ``ad_id`` and the training set's feature columns (a training-set parquet as read back).
        tasks: the tasks to report.
        slices: which slices (see :class:`EvalSlices`).
        ads: ``ad_id`` and ``created_at`` of the ads, for the new-ad slice.
        n_boot: resamples of the AUC's bootstrap interval over users (0: no interval; needs ``user_id``).

    Example::

        >>> report = evaluate({"click": p_click}, valid_table, ["click"])     # doctest: +SKIP
        >>> report.metric("click", "calibration", "exposure=first")          # doctest: +SKIP
    """
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("evaluate needs at least one task")
    n = table.num_rows
    probs: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for task in tasks:
        if task not in scores:
            raise ValueError(f"no scores for task {task!r} (got {sorted(scores)})")
        if task not in table.column_names:
            raise ValueError(f"the table has no label column {task!r}")
        probs[task] = as_probabilities(scores[task])
        if probs[task].size != n:
            raise ValueError(f"scores for {task!r} have {probs[task].size} rows, the table has {n}")
        labels[task] = as_labels(table.column(task).to_numpy(zero_copy_only=False), n)
    users = None  # dense user codes, computed once for every task and slice
    if "user_id" in table.column_names:
        users = np.unique(table.column("user_id").to_numpy(zero_copy_only=False), return_inverse=True)[1].ravel()
    notes = [] if users is not None else ["no user_id column: GAUC not computed"]
    overall = {t: TaskMetrics.compute(probs[t], labels[t], users) for t in tasks}
    masks, slice_notes = slice_masks(table, slices, ads)
    per_slice = {
        name: {
            t: TaskMetrics.compute(probs[t][m], labels[t][m], users[m] if users is not None else None)
            for t in tasks
        }
        for name, m in masks.items()
    }
    intervals = {t: auc_interval(labels[t], probs[t], users, n_boot=n_boot) for t in tasks} \
        if n_boot > 0 and users is not None else {}
    return EvalReport(tasks=tasks, rows=n, overall=overall, slices=per_slice, notes=notes + slice_notes,
                      auc_intervals=intervals)


__all__ = ["EvalReport", "TaskMetrics", "evaluate", "format_number", "json_safe"]

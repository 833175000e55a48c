"""The baseline gate (issue 12): a model that learned nothing is never made challenger. The candidate must
beat the best trivial baseline (per-ad rate, per-user rate, popularity; fitted on the training window by
components/training/baselines.py) on every task by ``gates.baseline_margin``, judged with the paired
bootstrap interval over users of AUC(model) - AUC(best baseline) on the newest day (docs/gates.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from validation.gate_intervals import FAIL, INCONCLUSIVE, PASS
from validation.gate_words import finite_or_none, fixed
from validation.gates import GateResult


def _baseline_verdict(task: str, row: Mapping[str, Any], margin: float) -> tuple[str, str]:
    """(``pass`` / ``inconclusive`` / ``FAIL``, its words) of one task's model-minus-best-baseline AUC."""
    diff = row.get("difference") or {}
    point, low, high = (finite_or_none(diff.get(k)) for k in ("point", "low", "high"))
    best = row.get("best")
    if best is None or point is None:
        return "inconclusive", f"{task} AUC undefined on the newest day (one class only): baseline not compared"
    head = (f"{task} AUC {fixed(row.get('model_auc'))} vs best baseline {best} {fixed(row.get('best_auc'))}: "
            f"difference {point:+.3f}")
    key = f"margin {margin:.3f} (gates.baseline_margin)"
    if low is None or high is None:
        return "inconclusive", f"{head}, interval undefined (too few positives to resample); not judged against the {key}"
    head += f" [{low:+.3f}, {high:+.3f}]"
    if high < margin:
        return "FAIL", f"{head}, clearly not above the {key}: the model is no better than the baseline"
    if low < margin:
        users = row.get("users")
        return "inconclusive", (f"{head} straddles the {key}"
                                + (f" ({users:,} users on the newest day)" if users is not None else ""))
    return "pass", f"{head} above the {key}"


def baseline_gate(comparison: Mapping[str, Mapping[str, Any]], margin: float,
                  inconclusive: str = "pass") -> GateResult:
    """The model must beat the best trivial baseline (per-ad, per-user rate, popularity; fitted on the
    training window, components/training/baselines.py) on every task by ``margin``
    (``gates.baseline_margin``), judged with the paired bootstrap interval of AUC(model) - AUC(best
    baseline) on the newest day: a task fails when the interval's upper bound is below the margin (the
    model is clearly not better), is inconclusive when the interval straddles the margin (or is undefined),
    and passes when it lies above it. ``value``: the smallest difference over the tasks.

    ``comparison``: ``{task: {"model_auc", "best", "best_auc", "baselines": {name: auc}, "difference":
    {"point", "low", "high", ...}}}`` (``baseline_comparison``'s output). ``inconclusive``
    (``gates.baseline_inconclusive``, default fail) decides whether an inconclusive gate passes: by default a
    version not shown to beat counting past positives never becomes challenger.
    """
    verdicts = {task: _baseline_verdict(task, row, margin) for task, row in comparison.items()}
    points = {t: finite_or_none((row.get("difference") or {}).get("point")) for t, row in comparison.items()}
    defined = {t: p for t, p in points.items() if p is not None}
    failed = [t for t, (v, _) in verdicts.items() if v == "FAIL"]
    inconclusive_tasks = [t for t, (v, _) in verdicts.items() if v == "inconclusive"]
    status = FAIL if failed or not comparison else INCONCLUSIVE if inconclusive_tasks else PASS
    passed = status == PASS or (status == INCONCLUSIVE and inconclusive == "pass")
    reason = "; ".join(words for _, words in verdicts.values()) or "no task compared with the baselines"
    if inconclusive_tasks and not failed:
        named = ", ".join(inconclusive_tasks)
        reason += (f" (inconclusive on {named}: passes, the data are too few to tell; gates.baseline_inconclusive"
                   " = pass)" if passed else f" (inconclusive on {named}: not shown to beat the baseline, held back"
                   " by gates.baseline_inconclusive = fail)")
    closest = min(defined, key=defined.get, default=None)  # the task nearest to failing: its interval is shown
    diff = (comparison[closest].get("difference") or {}) if closest is not None else {}
    low, high = finite_or_none(diff.get("low")), finite_or_none(diff.get("high"))
    return GateResult("baseline", defined[closest] if closest is not None else None, margin, passed, {
        "tasks": {t: {**dict(comparison[t]), "verdict": v} for t, (v, _) in verdicts.items()},
        "failed": failed, "inconclusive": inconclusive_tasks,
    }, reason, status=status, interval=None if low is None or high is None else (low, high))

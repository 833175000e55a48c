"""Quality gates (DESIGN.md section 8): data, dimensional collapse, interest entanglement, model.

Each gate returns a :class:`GateResult` ``(name, value, threshold, passed, details)``. A trained version is
aliased ``challenger`` in the registry only when every gate passes. Thresholds come from
``settings.gates`` (components/config.py, GatesConfig); docs/gates.md explains each one.

The gates are plain functions of their inputs (manifests, a model, metrics), so they run the same from the
daily flow, a notebook or a test::

    g = model_gate({"click": {"auc": 0.70, "calibration": 1.02}}, {"click": {"auc": 0.705}}, 0.01, (0.5, 2.0))
    assert g.passed and g.value == -0.005
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.config import Settings


@dataclass
class GateResult:
    """One gate's verdict. ``value`` and ``threshold`` are the headline numbers (``value`` compared with
    ``threshold`` decides ``passed`` together with any extra condition in ``details``)."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


# ----- data -------------------------------------------------------------------------------------------------
def data_gate(settings: "Settings", days: Iterable[dt.date]) -> GateResult:
    """The window's ingestion: every day ingested, its expectations passed, and the quarantine rate
    (quarantined / arrived rows over the whole window) at most ``gates.max_quarantine_rate``."""
    from components.runs import StageManifest

    bound = settings.gates.max_quarantine_rate
    manifest = StageManifest(settings, "ingest")
    rows_in = quarantined = 0
    missing: list[str] = []
    failed: dict[str, list[str]] = {}
    per_day: dict[str, float] = {}
    for day in days:
        rec = manifest.read(day)
        if rec is None:
            missing.append(day.isoformat())
            continue
        res = rec["result"]
        rows_in += int(res.get("rows_in", 0))
        quarantined += int(res.get("rows_quarantined", 0))
        per_day[day.isoformat()] = float(res.get("quarantine_rate", 0.0))
        if not res.get("expectations_passed", False):
            failed[day.isoformat()] = sorted({
                f"{e.get('table')}.{e.get('column')}: {e.get('name')}"
                for t in res.get("tables", {}).values() for e in t.get("expectations", [])
                if not e.get("success", True)
            })
    rate = quarantined / rows_in if rows_in else 0.0
    passed = not missing and not failed and rate <= bound
    return GateResult("data", rate, bound, passed, {
        "rows_in": rows_in, "rows_quarantined": quarantined, "quarantine_rate_per_day": per_day,
        "days_missing": missing, "failed_expectations": failed,
    })


# ----- dimensional collapse -----------------------------------------------------------------------------------
def collapse_gate(settings: "Settings", model: Any, id_counts: Mapping[str, Any] | None,
                  champion_value: float | None = None, report: Any = None) -> GateResult:
    """Mean IA/d over the model's fields (each field's rows sampled by impressions, validation/collapse.py)
    must stay at least ``gates.ia_floor`` and at most ``gates.ia_champion_tolerance`` under the champion's."""
    from validation.collapse import collapse_report

    cfg = settings.gates
    if report is None:
        report = collapse_report(model, id_counts=dict(id_counts) if id_counts is not None else None,
                                 max_rows=cfg.ia_max_rows)
    value = _num(report.mean_ia_ratio)
    threshold = cfg.ia_floor
    if champion_value is not None:
        threshold = max(threshold, champion_value - cfg.ia_champion_tolerance)
    passed = value is not None and value >= threshold
    return GateResult("collapse", value, threshold, passed, {
        "floor": cfg.ia_floor, "champion": champion_value, "tolerance": cfg.ia_champion_tolerance,
        "report": report.to_dict(),
    })


# ----- interest entanglement ----------------------------------------------------------------------------------
def entanglement_gate(settings: "Settings", model: Any, rows: Any, batch: Mapping[str, Any] | None = None,
                      report: Any = None, expert_corr: float | None = None) -> GateResult:
    """Task-specific representations must separate the conflicting (user, ad) pairs of every task pair
    by more than ``gates.min_separation`` (value: the smallest separation), and the mean absolute
    correlation between experts must stay at most ``gates.max_expert_correlation``.

    A model without task-specific tables (MMoE, shared-bottom, DCNv2, AME) cannot separate by
    construction; its separation is reported, the separation condition is skipped and said so in
    ``details``, and only the expert-correlation bound applies.
    """
    from validation.entanglement import entanglement_report, expert_correlation

    cfg = settings.gates
    if report is None:
        report = entanglement_report(model, rows, max_pairs=cfg.entanglement_max_pairs)
    summary = report.to_dict()
    seps = [p["separation"] for p in summary.get("pairs", []) if _num(p.get("separation")) is not None]
    value = min(seps) if seps else None
    has_task_tables = bool(summary.get("has_task_tables", False))
    if expert_corr is None and batch is not None:
        expert_corr, _ = expert_correlation(model, batch)
    corr_ok = expert_corr is None or expert_corr <= cfg.max_expert_correlation
    if has_task_tables:
        sep_ok = value is not None and value > cfg.min_separation
        note = None
    else:
        sep_ok = True
        note = f"arch {getattr(model.config, 'arch', '?')} has no task-specific tables: separation not gated"
    passed = bool(sep_ok and corr_ok)
    return GateResult("entanglement", value, cfg.min_separation, passed, {
        "expert_correlation": expert_corr, "max_expert_correlation": cfg.max_expert_correlation,
        "separation_gated": has_task_tables, "note": note, "report": summary,
    })


# ----- model --------------------------------------------------------------------------------------------------
def model_gate(metrics: Mapping[str, Mapping[str, Any]], champion: Mapping[str, Mapping[str, Any]] | None,
               auc_tolerance: float, calibration_band: tuple[float, float]) -> GateResult:
    """Every task's AUC on the newest day is at most ``auc_tolerance`` under the champion's AUC on the same
    rows, and every task's calibration (mean prediction / observed rate) is inside ``calibration_band``.

    ``metrics`` and ``champion``: ``{task: {"auc": ..., "calibration": ...}}``; without a champion only
    calibration (and a defined AUC) is checked. ``value``: the smallest AUC difference to the champion
    (None without a champion).
    """
    lo, hi = calibration_band
    per_task: dict[str, dict[str, Any]] = {}
    deltas: list[float] = []
    ok = True
    for task, m in metrics.items():
        auc_v, cal = _num(m.get("auc")), _num(m.get("calibration"))
        champ = _num((champion or {}).get(task, {}).get("auc")) if champion else None
        delta = None if auc_v is None or champ is None else auc_v - champ
        cal_ok = cal is not None and lo <= cal <= hi
        auc_ok = auc_v is not None and (delta is None or delta >= -auc_tolerance)
        per_task[task] = {"auc": auc_v, "champion_auc": champ, "delta": delta, "calibration": cal,
                          "calibration_ok": cal_ok, "auc_ok": auc_ok}
        ok = ok and cal_ok and auc_ok
        if delta is not None:
            deltas.append(delta)
    value = min(deltas) if deltas else None
    return GateResult("model", value, -auc_tolerance, bool(ok and metrics), {
        "tasks": per_task, "calibration_band": list(calibration_band), "champion": champion is not None,
    })


def all_passed(gates: Iterable[GateResult]) -> bool:
    gates = list(gates)
    return bool(gates) and all(g.passed for g in gates)


def gate_table(gates: Iterable[GateResult]) -> str:
    """A fixed-width table: gate, value, threshold, verdict."""
    rows = [("gate", "value", "threshold", "result")]
    for g in gates:
        v = "-" if g.value is None else f"{g.value:.4f}"
        t = "-" if g.threshold is None else f"{g.threshold:.4f}"
        rows.append((g.name, v, t, "pass" if g.passed else "FAIL"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

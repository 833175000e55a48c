"""Quality gates (DESIGN.md section 8): data, dimensional collapse, interest entanglement, model.

Each gate returns a :class:`GateResult` ``(name, value, threshold, passed, details)``. A trained version is
aliased ``challenger`` in the registry only when every gate passes. Thresholds come from
``settings.gates`` (components/config/release.py, GatesConfig); docs/gates.md explains each one.

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
    reason: str = ""  # one readable line: what was measured against what, and on failure what failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """``"data: FAIL, quarantine rate 7.1% > 5.0% bound (...)"``: the verdict and its reason."""
        verdict = "pass" if self.passed else "FAIL"
        return f"{self.name}: {verdict}" + (f", {self.reason}" if self.reason else "")


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _fmt(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return "undefined" if v is None else f"{v:.{digits}f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def expectation_words(e: Mapping[str, Any], bounds_key: str = "ingest.label_rate_bounds") -> str:
    """A failed expectation of an ingest report (validation/expectations.py ``ExpectationResult`` as a
    dict) in words: what was observed against which bound, e.g. ``click rate 0.61 above 0.50
    (ingest.label_rate_bounds.click)``."""
    name, table, column = str(e.get("name")), e.get("table"), e.get("column")
    where = f"{table}.{column}" if column else str(table)
    b = e.get("bounds") or {}
    observed, bad = e.get("observed"), e.get("unexpected_count")
    if e.get("exception"):
        return f"{name} on {where} could not run: {e['exception']}"
    if name == "expect_column_mean_to_be_between":
        lo, hi, v = _num(b.get("min_value")), _num(b.get("max_value")), _num(observed)
        if v is None:
            return f"{column} rate undefined ({where})"
        side = (f"above {hi:.2f}" if hi is not None and v > hi else f"below {lo:.2f}" if lo is not None and v < lo
                else f"outside [{_fmt(lo, 2)}, {_fmt(hi, 2)}]")
        return f"{column} rate {v:.2f} {side} ({bounds_key}.{column})"
    if name == "expect_table_row_count_to_be_between":
        return f"{table} has {observed} rows, fewer than {b.get('min_value')}"
    count = f"{bad:,}" if isinstance(bad, int) else "some"
    if name == "expect_column_values_to_not_be_null":
        return f"{where} has {count} null values"
    if name == "expect_column_values_to_be_unique":
        return f"{where} has {count} repeated values"
    if name == "expect_column_values_to_be_in_set":
        return f"{where} has {count} values outside {b.get('value_set')}"
    if name == "expect_column_values_to_be_of_type":
        return f"{where} is of type {observed}, expected {b.get('type_')}"
    if name == "expect_column_values_to_be_between":
        return f"{where} has {count} values outside [{b.get('min_value')}, {b.get('max_value')})"
    return f"{name} failed on {where}" + (f" (observed {observed})" if observed is not None else "")


# ----- data -------------------------------------------------------------------------------------------------
def data_gate(settings: "Settings", days: Iterable[dt.date]) -> GateResult:
    """The window's ingestion: every day ingested, its expectations passed, and the quarantine rate at
    most ``gates.max_quarantine_rate``. The rate is the worst table's (quarantined / arrived rows of that
    table over the window), so a users table lost wholesale cannot hide among many clean impressions."""
    from components.runs import StageManifest

    bound = settings.gates.max_quarantine_rate
    manifest = StageManifest(settings, "ingest")
    rows_in = quarantined = 0
    per_table: dict[str, list[int]] = {}  # table -> [rows in, rows quarantined] over the window
    missing: list[str] = []
    failed: dict[str, list[str]] = {}
    failed_words: dict[str, list[str]] = {}
    per_day: dict[str, float] = {}
    worst: tuple[int, str, str] = (0, "", "")  # (rows quarantined, day, its main reasons)
    for day in days:
        rec = manifest.read(day)
        if rec is None:
            missing.append(day.isoformat())
            continue
        res = rec["result"]
        rows_in += int(res.get("rows_in", 0))
        day_quarantined = int(res.get("rows_quarantined", 0))
        quarantined += day_quarantined
        per_day[day.isoformat()] = float(res.get("quarantine_rate", 0.0))
        tables = res.get("tables", {}) or {}
        for name, tr in tables.items():
            acc = per_table.setdefault(name, [0, 0])
            acc[0] += int(tr.get("rows_in", 0))
            acc[1] += int(tr.get("rows_quarantined", 0))
        if day_quarantined > worst[0]:
            reasons = sorted(((n, f"{t}: {r}") for t, tr in tables.items()
                              for r, n in (tr.get("reasons") or {}).items()), reverse=True)
            worst = (day_quarantined, day.isoformat(), ", ".join(f"{n:,} rows {r}" for n, r in reasons[:2]))
        if not res.get("expectations_passed", False):
            bad = [e for t in tables.values() for e in t.get("expectations", []) if not e.get("success", True)]
            failed[day.isoformat()] = sorted({f"{e.get('table')}.{e.get('column')}: {e.get('name')}" for e in bad})
            failed_words[day.isoformat()] = [expectation_words(e) for e in bad] or [
                "the ingest report says its expectations failed"]
    table_rates = {t: q / n for t, (n, q) in per_table.items() if n}
    worst_table = max(table_rates, key=table_rates.__getitem__, default=None)
    rate = table_rates[worst_table] if worst_table else (quarantined / rows_in if rows_in else 0.0)
    passed = not missing and not failed and rate <= bound
    problems = []
    if rate > bound:
        where = f" ({worst[1]}: {worst[2] or f'{worst[0]:,} rows'})" if worst[1] else ""
        table = f" of {worst_table}" if worst_table else ""
        problems.append(f"quarantine rate{table} {_pct(rate)} > {_pct(bound)} bound{where}")
    for day_s, words in failed_words.items():
        problems.append(f"expectations failed on {day_s}: " + "; ".join(words))
    if missing:
        problems.append(f"{len(missing)} day(s) never ingested: {', '.join(missing)} (run adsrec ingest)")
    if problems:
        reason = "; ".join(problems)
    else:
        table = f" (worst table: {worst_table})" if worst_table else ""
        reason = (f"quarantine rate {_pct(rate)}{table} <= {_pct(bound)} bound over {rows_in:,} rows; expectations "
                  f"passed on {len(per_day)} day(s)")
    return GateResult("data", rate, bound, passed, {
        "rows_in": rows_in, "rows_quarantined": quarantined, "quarantine_rate_per_day": per_day,
        "quarantine_rate_per_table": table_rates,
        "days_missing": missing, "failed_expectations": failed,
    }, reason)


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
    if champion_value is not None and threshold > cfg.ia_floor:
        bound = f"the champion's {champion_value:.3f} - {cfg.ia_champion_tolerance:.3f} tolerance"
    else:
        bound = f"floor {cfg.ia_floor:.3f} (gates.ia_floor)"
    if value is None:
        reason = "mean IA/d undefined (no embedding field to measure)"
    else:
        reason = f"mean IA/d {value:.3f} {'>=' if passed else '<'} {threshold:.3f}, {bound}"
        if not passed:
            reason += ": embeddings collapsed towards few directions"
    return GateResult("collapse", value, threshold, passed, {
        "floor": cfg.ia_floor, "champion": champion_value, "tolerance": cfg.ia_champion_tolerance,
        "report": report.to_dict(),
    }, reason)


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
    if report is None and len(tuple(getattr(model, "tasks", ()) or ())) == 1:
        summary: dict[str, Any] = {"pairs": [], "has_task_tables": None}  # one task: no pair to analyse
    else:
        if report is None:
            report = entanglement_report(model, rows, max_pairs=cfg.entanglement_max_pairs)
        summary = report.to_dict()
    pairs = summary.get("pairs", [])
    seps = [p["separation"] for p in pairs if _num(p.get("separation")) is not None]
    value = min(seps) if seps else None
    has_task_tables = bool(summary.get("has_task_tables", False))
    tasks = tuple(getattr(model, "tasks", ()) or ())
    if expert_corr is None and batch is not None:
        expert_corr, _ = expert_correlation(model, batch)
    corr_ok = expert_corr is None or expert_corr <= cfg.max_expert_correlation
    if len(tasks) == 1 and not pairs:
        # One task (a log with one label): there is no task pair whose interests could be entangled.
        sep_ok, note = True, f"one task ({tasks[0]}): no task pair, separation not gated"
    elif has_task_tables:
        sep_ok = value is not None and value > cfg.min_separation
        note = None
    else:
        sep_ok = True
        note = f"arch {getattr(model.config, 'arch', '?')} has no task-specific tables: separation not gated"
    passed = bool(sep_ok and corr_ok)
    parts = []
    if note is not None:
        parts.append(note)
    elif value is None:
        counts = ", ".join(f"{p.get('task_a')}/{p.get('task_b')} {p.get('n_pairs_a', 0)}+{p.get('n_pairs_b', 0)} "
                           "pairs" for p in pairs) or "no task pair analysed"
        parts.append(f"separation undefined: too few conflicting (user, ad) pairs with enough impressions "
                     f"({counts}); not > {cfg.min_separation:.3f} (gates.min_separation)")
    else:
        parts.append(f"smallest separation of conflicting pairs {value:.3f} "
                     f"{'>' if sep_ok else 'not >'} {cfg.min_separation:.3f} (gates.min_separation)")
    if expert_corr is not None:
        parts.append(f"mean |r| between experts {expert_corr:.3f} {'<=' if corr_ok else '>'} "
                     f"{cfg.max_expert_correlation:.3f} (gates.max_expert_correlation)")
    return GateResult("entanglement", value, cfg.min_separation, passed, {
        "expert_correlation": expert_corr, "max_expert_correlation": cfg.max_expert_correlation,
        "separation_gated": has_task_tables, "note": note, "report": summary,
    }, "; ".join(parts))


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
    problems = []
    for task, t in per_task.items():
        if t["auc"] is None:
            problems.append(f"{task} AUC undefined on the newest day (no positive or no negative there)")
        elif not t["auc_ok"]:
            problems.append(f"{task} AUC {t['auc']:.3f} is {-t['delta']:.3f} below the champion's "
                            f"{t['champion_auc']:.3f} (tolerance {auc_tolerance:.3f})")
        if not t["calibration_ok"]:
            problems.append(f"{task} calibration {_fmt(t['calibration'], 2)} outside [{lo:.2f}, {hi:.2f}] "
                            "(mean prediction / observed rate)")
    if not metrics:
        reason = "no task metrics to judge"
    elif problems:
        reason = "; ".join(problems)
    else:
        reason = ", ".join(f"{task} AUC {t['auc']:.3f}" + (f" ({t['delta']:+.3f} vs champion)" if t["delta"] is not None
                                                           else "") + f", calibration {t['calibration']:.2f}"
                           for task, t in per_task.items())
        if champion is None:
            reason += " (no champion yet: calibration checked only)"
    return GateResult("model", value, -auc_tolerance, bool(ok and metrics), {
        "tasks": per_task, "calibration_band": list(calibration_band), "champion": champion is not None,
    }, reason)


def all_passed(gates: Iterable[GateResult]) -> bool:
    gates = list(gates)
    return bool(gates) and all(g.passed for g in gates)


def gate_table(gates: Iterable[GateResult]) -> str:
    """A fixed-width table: gate, value, threshold, verdict, and the verdict's reason in words."""
    rows = [("gate", "value", "threshold", "result", "reason")]
    for g in gates:
        v = "-" if g.value is None else f"{g.value:.4f}"
        t = "-" if g.threshold is None else f"{g.threshold:.4f}"
        rows.append((g.name, v, t, "pass" if g.passed else "FAIL", g.reason or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[4]]).rstrip() for r in rows)

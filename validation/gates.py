"""Quality gates (DESIGN.md section 8): data, dimensional collapse, interest entanglement, model.

Each gate returns a :class:`GateResult` ``(name, value, threshold, passed, details)``. A trained version is
aliased ``challenger`` in the registry only when every gate passes. The collapse and entanglement gates
know the noise of their values (validation/gate_intervals.py): they fail only when the whole interval is
on the wrong side of the threshold, and a gate whose interval contains the threshold (or whose data are
too few for one) is ``inconclusive``; ``gates.inconclusive`` decides whether it passes. Thresholds are
passed in as a :class:`GateThresholds` (``settings.gates``, components/config/release.py GatesConfig, is
one); docs/gates.md explains each one. What a failure means for the user, why it matters and what to do (the config key of
the threshold that failed, or ``adsrec promote --force --reason``), is worded beside the gates in
validation/gate_words.py; :meth:`GateResult.explain` gives it.

The gates are plain functions of their inputs (ingest records, a model, metrics), so they run the same
from the daily flow, a notebook or a test; this module imports nothing from components/::

    g = model_gate({"click": {"auc": 0.70, "calibration": 1.02}}, {"click": {"auc": 0.705}}, 0.01, (0.5, 2.0))
    assert g.passed and g.value == -0.005
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from validation.gate_intervals import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    STATUSES,
    interval_verdict,
    normal_interval,
    smallest_separation,
)
from validation.gate_words import (
    GATE_COLUMNS,
    expectation_words,
    finite_or_none,
    fixed,
    gate_cells,
    gate_notice,
    interval_words,
    percent,
    policy_words,
    separation_words,
    verdict_word,
)


class GateThresholds(Protocol):
    """The gate thresholds, by their config keys ``gates.<name>`` (components/config/release.py GatesConfig)."""

    max_quarantine_rate: float
    ia_max_rows: int
    ia_floor: float
    ia_champion_tolerance: float
    min_separation: float
    max_expert_correlation: float
    entanglement_max_pairs: int
    auc_tolerance: float
    calibration_band: tuple[float, float]
    inconclusive: str
    interval_level: float
    ia_resamples: int


@dataclass
class GateResult:
    """One gate's verdict. ``value`` and ``threshold`` are the headline numbers (``value`` compared with
    ``threshold`` decides ``passed`` together with any extra condition in ``details``). ``status`` is
    ``pass``, ``fail`` or ``inconclusive`` (default: from ``passed``); ``passed`` is the boolean the registry
    reads, an inconclusive gate's by ``gates.inconclusive``. ``interval``: the value's interval, when the
    gate has one."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # one readable line: what was measured against what, and on failure what failed
    status: str = ""
    interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.status = self.status or (PASS if self.passed else FAIL)
        if self.status not in STATUSES:
            raise ValueError(f"gate {self.name!r}: status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval"] = None if self.interval is None else [float(v) for v in self.interval]
        return out

    def line(self) -> str:
        """``"data: FAIL, quarantine rate 7.1% > 5.0% bound (...)"``: the verdict and its reason."""
        return f"{self.name}: {verdict_word(self.to_dict())}" + (f", {self.reason}" if self.reason else "")

    def explain(self, version: int | None = None) -> str:
        """A failed gate in words for the user, or the warning of an inconclusive one that passed
        (:func:`gate_notice`); empty when it passed outright."""
        return gate_notice(self.to_dict(), version)


def settled(status: str, thresholds: GateThresholds) -> bool:
    """``passed`` for a gate's ``status``: an inconclusive gate passes when ``gates.inconclusive`` is pass."""
    return status == PASS or (status == INCONCLUSIVE and thresholds.inconclusive == "pass")


# ----- data -------------------------------------------------------------------------------------------------
@dataclass
class _IngestWindow:
    """The ingest records of a window added up: rows per table, missing days, failed expectations."""

    rows_in: int = 0
    quarantined: int = 0
    per_table: dict[str, list[int]] = field(default_factory=dict)  # table -> [rows in, rows quarantined]
    missing: list[str] = field(default_factory=list)
    failed: dict[str, list[str]] = field(default_factory=dict)
    failed_words: dict[str, list[str]] = field(default_factory=dict)
    per_day: dict[str, float] = field(default_factory=dict)
    worst: tuple[int, str, str] = (0, "", "")  # (rows quarantined, day, its main reasons)

    def add(self, day: dt.date, rec: Mapping[str, Any] | None) -> None:
        if rec is None:
            self.missing.append(day.isoformat())
            return
        res = rec["result"]
        self.rows_in += int(res.get("rows_in", 0))
        day_quarantined = int(res.get("rows_quarantined", 0))
        self.quarantined += day_quarantined
        self.per_day[day.isoformat()] = float(res.get("quarantine_rate", 0.0))
        tables = res.get("tables", {}) or {}
        for name, tr in tables.items():
            acc = self.per_table.setdefault(name, [0, 0])
            acc[0] += int(tr.get("rows_in", 0))
            acc[1] += int(tr.get("rows_quarantined", 0))
        if day_quarantined > self.worst[0]:
            reasons = sorted(((n, f"{t}: {r}") for t, tr in tables.items()
                              for r, n in (tr.get("reasons") or {}).items()), reverse=True)
            self.worst = (day_quarantined, day.isoformat(), ", ".join(f"{n:,} rows {r}" for n, r in reasons[:2]))
        if not res.get("expectations_passed", False):
            bad = [e for t in tables.values() for e in t.get("expectations", []) if not e.get("success", True)]
            self.failed[day.isoformat()] = sorted({f"{e.get('table')}.{e.get('column')}: {e.get('name')}"
                                                   for e in bad})
            self.failed_words[day.isoformat()] = [expectation_words(e) for e in bad] or [
                "the ingest report says its expectations failed"]


def data_gate(ingest_records: Mapping[dt.date, Mapping[str, Any] | None], max_quarantine_rate: float
              ) -> GateResult:
    """The window's ingestion: every day ingested, its expectations passed, and the quarantine rate at
    most ``max_quarantine_rate`` (``gates.max_quarantine_rate``). The rate is the worst table's
    (quarantined / arrived rows of that table over the window), so a users table lost wholesale cannot
    hide among many clean impressions.

    ``ingest_records``: ``{day: the ingest manifest's record of that day}`` (components/runs.py
    ``StageManifest(settings, "ingest").read(day)``, ``{"result": ingest report}``), None for a day
    never ingested.
    """
    bound = max_quarantine_rate
    w = _IngestWindow()
    for day, rec in ingest_records.items():
        w.add(day, rec)
    table_rates = {t: q / n for t, (n, q) in w.per_table.items() if n}
    worst_table = max(table_rates, key=table_rates.__getitem__, default=None)
    rate = table_rates[worst_table] if worst_table else (w.quarantined / w.rows_in if w.rows_in else 0.0)
    passed = not w.missing and not w.failed and rate <= bound
    problems = []
    if rate > bound:
        where = f" ({w.worst[1]}: {w.worst[2] or f'{w.worst[0]:,} rows'})" if w.worst[1] else ""
        table = f" of {worst_table}" if worst_table else ""
        problems.append(f"quarantine rate{table} {percent(rate)} > {percent(bound)} bound{where}")
    for day_s, words in w.failed_words.items():
        problems.append(f"expectations failed on {day_s}: " + "; ".join(words))
    if w.missing:
        problems.append(f"{len(w.missing)} day(s) never ingested: {', '.join(w.missing)} (run adsrec ingest)")
    if problems:
        reason = "; ".join(problems)
    else:
        table = f" (worst table: {worst_table})" if worst_table else ""
        reason = (f"quarantine rate {percent(rate)}{table} <= {percent(bound)} bound over {w.rows_in:,} rows; "
                  f"expectations passed on {len(w.per_day)} day(s)")
    return GateResult("data", rate, bound, passed, {
        "rows_in": w.rows_in, "rows_quarantined": w.quarantined, "quarantine_rate_per_day": w.per_day,
        "quarantine_rate_per_table": table_rates,
        "days_missing": w.missing, "failed_expectations": w.failed,
    }, reason)


# ----- dimensional collapse -----------------------------------------------------------------------------------
def collapse_gate(thresholds: GateThresholds, model: Any, id_counts: Mapping[str, Any] | None,
                  champion_value: float | None = None, report: Any = None) -> GateResult:
    """Mean IA/d over the model's fields (each field's rows sampled by impressions, validation/collapse.py)
    must stay at least ``gates.ia_floor`` and at most ``gates.ia_champion_tolerance`` under the champion's.

    The value's interval comes from ``gates.ia_resamples`` bootstrap resamples of the sampled rows
    (``gates.interval_level``): the gate fails when the whole interval is under the threshold, passes when
    it is all at or above, and is inconclusive otherwise, or when nothing could be measured or the report
    has no resamples (``gates.inconclusive`` decides)."""
    from validation.collapse import collapse_report

    cfg = thresholds
    if report is None:
        report = collapse_report(model, id_counts=dict(id_counts) if id_counts is not None else None,
                                 max_rows=cfg.ia_max_rows, resamples=cfg.ia_resamples)
    value = finite_or_none(report.mean_ia_ratio)
    se = getattr(report, "mean_ia_ratio_se", None)
    threshold = cfg.ia_floor
    if champion_value is not None:
        threshold = max(threshold, champion_value - cfg.ia_champion_tolerance)
    interval = None if value is None or se is None else normal_interval(value, se, cfg.interval_level)
    status = INCONCLUSIVE if interval is None else interval_verdict(*interval, threshold, strict=False)
    passed = settled(status, cfg)
    if champion_value is not None and threshold > cfg.ia_floor:
        bound = f"the champion's {champion_value:.3f} - {cfg.ia_champion_tolerance:.3f} tolerance"
    else:
        bound = f"floor {cfg.ia_floor:.3f} (gates.ia_floor)"
    if value is None:
        reason = "mean IA/d undefined (no embedding field had 2 rows read): too few data to judge"
    elif interval is None:
        reason = f"mean IA/d {value:.3f} against {threshold:.3f}, {bound}, without an interval (no resamples)"
    else:
        compare = {PASS: ">=", FAIL: "<", INCONCLUSIVE: "within its noise of"}[status]
        reason = (f"mean IA/d {value:.3f} ({interval_words(interval, cfg.interval_level, 3)}) {compare} "
                  f"{threshold:.3f}, {bound}")
        if status == FAIL:
            reason += ": embeddings collapsed towards few directions"
    if status == INCONCLUSIVE:
        reason += f"; {policy_words(cfg.inconclusive)}"
    return GateResult("collapse", value, threshold, passed, {
        "floor": cfg.ia_floor, "champion": champion_value, "tolerance": cfg.ia_champion_tolerance,
        "standard_error": se, "interval_level": cfg.interval_level, "inconclusive_policy": cfg.inconclusive,
        "report": report.to_dict(),
    }, reason, status, interval)


# ----- interest entanglement ----------------------------------------------------------------------------------
def entanglement_gate(thresholds: GateThresholds, model: Any, rows: Any, batch: Mapping[str, Any] | None = None,
                      report: Any = None, expert_corr: float | None = None) -> GateResult:
    """Task-specific representations must separate the conflicting (user, ad) pairs of every task pair
    by more than ``gates.min_separation`` (value: the smallest separation), and the mean absolute
    correlation between experts must stay at most ``gates.max_expert_correlation``.

    Each pair's separation has a standard error clustered by user and ad (validation/entanglement.py);
    the interval of the smallest runs from the smallest lower bound to the smallest upper bound
    (``gates.interval_level``). The separation fails when that interval is all at or under the bound,
    passes when it is all above, and is inconclusive otherwise, or when too few pairs were found for a
    separation or its interval (``gates.inconclusive`` decides; too correlated experts fail regardless).

    A model without task-specific tables (MMoE, shared-bottom, DCNv2, AME) cannot separate by
    construction; its separation is reported, the separation condition is skipped and said so in
    ``details``, and only the expert-correlation bound applies.
    """
    from validation.entanglement import entanglement_report
    from validation.expert_correlation import expert_correlation

    cfg = thresholds
    tasks = tuple(getattr(model, "tasks", ()) or ())
    if report is None and len(tasks) == 1:
        summary: dict[str, Any] = {"pairs": [], "has_task_tables": None}  # one task: no pair to analyse
    else:
        if report is None:
            report = entanglement_report(model, rows, max_pairs=cfg.entanglement_max_pairs)
        summary = report.to_dict()
    pairs = summary.get("pairs", [])
    has_task_tables = bool(summary.get("has_task_tables", False))
    if expert_corr is None and batch is not None:
        expert_corr, _ = expert_correlation(model, batch)
    corr_ok = expert_corr is None or expert_corr <= cfg.max_expert_correlation
    value, interval = smallest_separation(pairs, cfg.interval_level)
    if len(tasks) == 1 and not pairs:
        # One task (a log with one label): there is no task pair whose interests could be entangled.
        sep_status, note = "not gated", f"one task ({tasks[0]}): no task pair, separation not gated"
    elif has_task_tables:
        note = None
        sep_status = INCONCLUSIVE if interval is None else interval_verdict(*interval, cfg.min_separation, strict=True)
    else:
        sep_status = "not gated"
        note = f"arch {getattr(model.config, 'arch', '?')} has no task-specific tables: separation not gated"
    status = FAIL if not corr_ok or sep_status == FAIL else INCONCLUSIVE if sep_status == INCONCLUSIVE else PASS
    passed = settled(status, cfg)
    parts = [note if note is not None else separation_words(pairs, value, interval, sep_status, cfg.min_separation,
                                                             cfg.interval_level)]
    if sep_status == INCONCLUSIVE:
        parts.append(policy_words(cfg.inconclusive))
    if expert_corr is not None:
        parts.append(f"mean |r| between experts {expert_corr:.3f} {'<=' if corr_ok else '>'} "
                     f"{cfg.max_expert_correlation:.3f} (gates.max_expert_correlation)")
    return GateResult("entanglement", value, cfg.min_separation, passed, {
        "expert_correlation": expert_corr, "max_expert_correlation": cfg.max_expert_correlation,
        "separation_gated": has_task_tables, "separation_verdict": sep_status, "note": note,
        "interval_level": cfg.interval_level, "inconclusive_policy": cfg.inconclusive, "report": summary,
    }, "; ".join(parts), status, interval if has_task_tables else None)


# ----- model --------------------------------------------------------------------------------------------------
def _auc_verdict(auc_v: float | None, champ: float | None, diff: Mapping[str, Any] | None,
                 auc_tolerance: float) -> dict[str, Any]:
    """One task's AUC against the champion's: the difference, its paired interval (when given) and whether
    it passes. With an interval the task fails only when the whole interval lies below ``-auc_tolerance``;
    a point below it whose interval reaches it is ``within_noise``. Without one, the point decides."""
    delta = None if auc_v is None or champ is None else auc_v - champ
    low, high = (finite_or_none((diff or {}).get(k)) for k in ("low", "high"))
    interval = [low, high] if delta is not None and low is not None and high is not None else None
    if delta is None:
        ok = auc_v is not None
    elif interval is not None:
        ok = interval[1] >= -auc_tolerance
    else:
        ok = delta >= -auc_tolerance
    return {"delta": delta, "delta_interval": interval, "auc_ok": ok,
            "within_noise": bool(ok and delta is not None and delta < -auc_tolerance)}


def _model_reason(per_task: Mapping[str, Mapping[str, Any]], auc_tolerance: float,
                  calibration_band: tuple[float, float]) -> list[str]:
    """The model gate's problems, one phrase each (empty when every task passes)."""
    lo, hi = calibration_band
    problems = []
    for task, t in per_task.items():
        if t["auc"] is None:
            problems.append(f"{task} AUC undefined on the newest day (no positive or no negative there)")
        elif not t["auc_ok"]:
            beyond = (f", beyond the noise: the whole difference interval [{t['delta_interval'][0]:+.4f}, "
                      f"{t['delta_interval'][1]:+.4f}] lies below -{auc_tolerance:.3f}"
                      if t["delta_interval"] else "")
            problems.append(f"{task} AUC {t['auc']:.3f} is {-t['delta']:.3f} below the champion's "
                            f"{t['champion_auc']:.3f} (tolerance {auc_tolerance:.3f}{beyond})")
        if not t["calibration_ok"]:
            problems.append(f"{task} calibration {fixed(t['calibration'], 2)} outside [{lo:.2f}, {hi:.2f}] "
                            "(mean prediction / observed rate)")
    return problems


def _versus_champion(t: Mapping[str, Any]) -> str:
    if t["delta"] is None:
        return ""
    iv = t["delta_interval"]
    text = f"{t['delta']:+.3f}" + (f" [{iv[0]:+.4f}, {iv[1]:+.4f}]" if iv else "") + " vs champion"
    return f" ({text}, within the noise)" if t["within_noise"] else f" ({text})"


def model_gate(metrics: Mapping[str, Mapping[str, Any]], champion: Mapping[str, Mapping[str, Any]] | None,
               auc_tolerance: float, calibration_band: tuple[float, float],
               differences: Mapping[str, Mapping[str, Any]] | None = None) -> GateResult:
    """Every task's AUC on the test day is not worse than the champion's on the same rows by more than
    ``auc_tolerance`` beyond the noise, and every task's calibration (mean prediction / observed rate) is
    inside ``calibration_band``.

    ``metrics`` and ``champion``: ``{task: {"auc": ..., "calibration": ...}}``; without a champion only
    calibration (and a defined AUC) is checked. ``differences``: ``{task: {"point", "low", "high"}}``, the
    paired bootstrap interval of the new model's AUC minus the champion's (components/training/
    intervals.py ``auc_difference_interval``). With it a task fails only when the whole interval lies below
    ``-auc_tolerance``; when the interval reaches it the task passes "within the noise", said in the
    reason. Without it the point difference decides. ``value``: the smallest AUC difference to the
    champion (None without a champion).
    """
    lo, hi = calibration_band
    per_task: dict[str, dict[str, Any]] = {}
    for task, m in metrics.items():
        auc_v, cal = finite_or_none(m.get("auc")), finite_or_none(m.get("calibration"))
        champ = finite_or_none((champion or {}).get(task, {}).get("auc")) if champion else None
        verdict = _auc_verdict(auc_v, champ, (differences or {}).get(task), auc_tolerance)
        per_task[task] = {"auc": auc_v, "champion_auc": champ, **verdict, "calibration": cal,
                          "calibration_ok": cal is not None and lo <= cal <= hi}
    ok = all(t["auc_ok"] and t["calibration_ok"] for t in per_task.values())
    deltas = [t["delta"] for t in per_task.values() if t["delta"] is not None]
    value = min(deltas) if deltas else None
    problems = _model_reason(per_task, auc_tolerance, calibration_band)
    if not metrics:
        reason = "no task metrics to judge"
    elif problems:
        reason = "; ".join(problems)
    else:
        reason = ", ".join(f"{task} AUC {t['auc']:.3f}{_versus_champion(t)}, calibration {t['calibration']:.2f}"
                           for task, t in per_task.items())
        if champion is None:
            reason += " (no earlier version serving to compare AUC with: calibration checked only)"
    return GateResult("model", value, -auc_tolerance, bool(ok and metrics), {
        "tasks": per_task, "calibration_band": list(calibration_band), "champion": champion is not None,
    }, reason)


def all_passed(gates: Iterable[GateResult]) -> bool:
    gates = list(gates)
    return bool(gates) and all(g.passed for g in gates)


def gate_table(gates: Iterable[GateResult]) -> str:
    """A fixed-width table: gate, value, its interval, threshold, verdict (``inconclusive (pass)`` when
    ``gates.inconclusive`` passed an inconclusive gate), and the verdict's reason in words (the cells of
    :func:`gate_cells`)."""
    rows = [GATE_COLUMNS, *(gate_cells(g.to_dict()) for g in gates)]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[5]]).rstrip() for r in rows)

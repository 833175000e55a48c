"""What a failed quality gate means for the user, in words (the gates themselves are in
validation/gates.py): for each way a gate can fail, why it matters and what to do, naming the config key
of the threshold that failed (``gates.<key>``, components/config/release.py GatesConfig) or the forced promotion
``adsrec promote --version V --force --reason "..."``; and a failed ingest expectation in words.

Everything works on a gate as a dict (``GateResult.to_dict()`` or a stored ``gates.json`` entry), so the
run summary can word the gates of an older run too (a stored gate without ``status`` is ``pass`` or
``fail`` by its ``passed``). A gate whose interval contains its threshold is ``inconclusive``; it passes
or fails by ``gates.inconclusive``, and when it passes :func:`gate_notice` words it as a warning. No
champion wording appears when there is no champion: the champion-relative conditions are only reported
when the gate compared with one.

Example::

    print(failure_text(model_gate({"click": {"auc": 0.7, "calibration": 2.5}}, None, 0.01, (0.5, 2.0)).to_dict()))
    # model gate failed: click calibration 2.50 outside [0.50, 2.00] (mean prediction / observed rate)
    #   why it matters: the predicted click rate is off from the observed rate by more than the band allows, ...
    #   what to do: check the label rates of the window against the newest day; to accept it, widen
    #   gates.calibration_band
    #   or, having checked the version, promote it anyway: adsrec promote --version V --force --reason "..."
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from validation.gate_intervals import FAIL, INCONCLUSIVE, PASS, policy_key

FORCE_PROMOTE = 'adsrec promote --version {version} --force --reason "..."'


@dataclass(frozen=True)
class Remedy:
    """One way a gate failed: why it matters to the user and what to do about it."""

    why: str
    what_to_do: str


def finite_or_none(x: Any) -> float | None:
    """``x`` as a float, None for None or NaN."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def fixed(x: Any, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals, or ``"undefined"``."""
    v = finite_or_none(x)
    return "undefined" if v is None else f"{v:.{digits}f}"


def percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def gate_status(gate: Mapping[str, Any]) -> str:
    """``pass``, ``fail`` or ``inconclusive``; a stored gate from before statuses reads as its ``passed``."""
    status = gate.get("status")
    return str(status) if status in (PASS, FAIL, INCONCLUSIVE) else PASS if gate.get("passed") else FAIL


def verdict_word(gate: Mapping[str, Any]) -> str:
    """The result column of the gate table: ``pass``, ``FAIL``, ``inconclusive (pass)`` or ``inconclusive (FAIL)``
    (what ``gates.inconclusive`` made of it)."""
    word = "pass" if gate.get("passed") else "FAIL"
    return f"{INCONCLUSIVE} ({word})" if gate_status(gate) == INCONCLUSIVE else word


GATE_COLUMNS = ("gate", "value", "interval", "threshold", "result", "reason")


def gate_cells(gate: Mapping[str, Any]) -> tuple[str, ...]:
    """One gate's row of the gate table (:data:`GATE_COLUMNS`), as text: value, interval and threshold to 4
    decimals (``-`` when undefined), the :func:`verdict_word` and the reason. The terminal's table
    (validation/gates.py ``gate_table``) and the Prefect artifacts (flows/artifacts.py) print these cells."""
    def num(x: Any) -> str:
        v = finite_or_none(x)
        return "-" if v is None else f"{v:.4f}"

    iv = gate.get("interval")
    interval = f"[{num(iv[0])}, {num(iv[1])}]" if iv else "-"
    return (str(gate.get("name")), num(gate.get("value")), interval, num(gate.get("threshold")),
            verdict_word(gate), str(gate.get("reason") or "-"))


def interval_words(interval: Any, level: float, digits: int) -> str:
    """``"95% interval -0.0031 to 0.0021"``; empty without an interval."""
    if interval is None:
        return ""
    lo, hi = interval
    return f"{100 * level:.0f}% interval {lo:.{digits}f} to {hi:.{digits}f}"


def separation_words(pairs: list[Mapping[str, Any]], value: float | None, interval: Any, status: str,
                     min_separation: float, level: float) -> str:
    """The entanglement gate's separation condition in words: the smallest separation, its interval and
    how it compares with ``gates.min_separation``; or why it could not be judged."""
    bound = f"{min_separation:.4f} (gates.min_separation)"
    if value is None or any(finite_or_none(p.get("separation")) is None for p in pairs):
        counts = ", ".join(f"{p.get('task_a')}/{p.get('task_b')} {p.get('n_pairs_a', 0)}+{p.get('n_pairs_b', 0)} "
                           "pairs" for p in pairs) or "no task pair analysed"
        return (f"separation undefined: too few conflicting (user, ad) pairs with enough impressions ({counts}); "
                f"cannot tell whether > {bound}")
    head = f"smallest separation of conflicting pairs {value:.4f}"
    if interval is None:
        return f"{head} without an interval (too few pairs, users or ads for its spread); cannot tell whether > {bound}"
    compare = {PASS: ">", FAIL: "not >", INCONCLUSIVE: "within its noise of"}[status]
    return f"{head} ({interval_words(interval, level, 4)}) {compare} {bound}"


def policy_words(policy: str) -> str:
    """What ``gates.inconclusive`` (``policy``) makes of an inconclusive condition, for its reason."""
    if policy == PASS:
        return "inconclusive, which gates.inconclusive = pass lets pass (a warning, not a verdict)"
    return "inconclusive, which gates.inconclusive = fail counts as a failure"


# ----- data -------------------------------------------------------------------------------------------------
def _data_remedies(gate: Mapping[str, Any]) -> list[Remedy]:
    d = gate.get("details") or {}
    out = []
    value, threshold = finite_or_none(gate.get("value")), finite_or_none(gate.get("threshold"))
    if value is not None and threshold is not None and value > threshold:
        out.append(Remedy(
            "rejected rows never reach training, so the model learns from a part of the window that the "
            "rejections chose, not from the market as it was",
            "read the quarantine reasons in the day's ingest report and fix the source; if this rate is normal "
            "for the source, raise gates.max_quarantine_rate"))
    if d.get("failed_expectations"):
        out.append(Remedy(
            "the rows that landed break the rules the features and labels rely on (label rates, unique keys, "
            "types, the run window)",
            "open that day's Great Expectations Data Docs (adsrec up serves them) and fix the source; label-rate "
            "bounds are ingest.label_rate_bounds.<task>"))
    if d.get("days_missing"):
        out.append(Remedy("the model would learn from a window with holes in it",
                          "ingest the missing days (adsrec ingest --date DAY, or adsrec backfill) and run again"))
    return out


# ----- dimensional collapse -----------------------------------------------------------------------------------
UNDECIDED = "gates.inconclusive decides whether such a version passes"


def _collapse_unsure(gate: Mapping[str, Any], plot: str) -> Remedy:
    """Why the collapse gate could not tell, from what it had: nothing measured, no interval, or an interval
    around the threshold (naming the rows the fields had)."""
    value, threshold = finite_or_none(gate.get("value")), finite_or_none(gate.get("threshold"))
    report = (gate.get("details") or {}).get("report") or {}
    fields = report.get("fields") or []
    if value is None:
        return Remedy("no embedding field had 2 rows that training read, so collapse could not be measured at all",
                      f"check that the model has embedding fields training read; train on more days "
                      f"(pipeline.training_days); {UNDECIDED}")
    interval = gate.get("interval")
    if not interval:
        return Remedy(f"mean IA/d {value:.3f} has no interval (no bootstrap resamples), so it cannot be told from "
                      f"the threshold {fixed(threshold)}",
                      f"measure with resamples (gates.ia_resamples, at least 2); {UNDECIDED}")
    used = sum(int(f.get("used_rows") or 0) for f in fields)
    rows = f" ({used:,} rows over {len(fields)} fields)" if fields else ""
    return Remedy(
        f"the interval of mean IA/d, {interval[0]:.3f} to {interval[1]:.3f}, contains the threshold "
        f"{fixed(threshold)}: the rows measured{rows} are too few to tell collapsed embeddings from healthy ones",
        f"{plot}; measure more rows per field (gates.ia_max_rows) or train on more days (pipeline.training_days) "
        f"so more ids have trained rows; {UNDECIDED}")


def _collapse_remedies(gate: Mapping[str, Any]) -> list[Remedy]:
    d = gate.get("details") or {}
    value, threshold = finite_or_none(gate.get("value")), finite_or_none(gate.get("threshold"))
    plot = "see the singular spectra in <home>/models/<day>/analysis/collapse_spectra.png"
    if gate_status(gate) == INCONCLUSIVE:
        return [_collapse_unsure(gate, plot)]
    if value is None:
        return [Remedy("nothing was measured, so collapse cannot be ruled out",
                       "check that the model has embedding fields that training read")]
    floor, champion = finite_or_none(d.get("floor")), finite_or_none(d.get("champion"))
    if champion is not None and threshold is not None and floor is not None and threshold > floor:
        return [Remedy(
            "the embeddings span fewer directions than the champion's: this version tells fewer users and ads "
            "apart than the one serving now",
            f"{plot}; to allow a larger drop against the champion, raise gates.ia_champion_tolerance")]
    return [Remedy(
        "the embeddings span few of their dimensions, so the model tells few users and ads apart and its "
        "rankings flatten",
        f"{plot} and check the training settings (learning rate, embedding width); to accept less, lower "
        "gates.ia_floor")]


# ----- interest entanglement ----------------------------------------------------------------------------------
def _entanglement_unsure(gate: Mapping[str, Any]) -> Remedy:
    """Why the separation could not be judged, from what the gate had: the pairs found per task pair, and
    whether the separation, its interval, or neither was defined."""
    pairs = ((gate.get("details") or {}).get("report") or {}).get("pairs") or []
    counts = ", ".join(f"{p.get('task_a')}/{p.get('task_b')} {p.get('n_pairs_a', 0)}+{p.get('n_pairs_b', 0)} pairs"
                       for p in pairs) or "no task pair analysed"
    value, interval = finite_or_none(gate.get("value")), gate.get("interval")
    bound = f"the bound {fixed(gate.get('threshold'), 4)} (gates.min_separation)"
    if value is None:
        why = f"too few conflicting (user, ad) pairs with enough impressions were found to measure a separation ({counts})"
    elif not interval:
        why = (f"the smallest separation {value:.4f} has no interval: its pairs ({counts}) have too few users or ads "
               "to estimate a spread")
    else:
        why = (f"the interval of the smallest separation, {interval[0]:.4f} to {interval[1]:.4f}, contains {bound}: "
               f"its pairs ({counts}) are too few to decide")
    return Remedy(f"{why}, so the gate cannot tell whether one task's preferences leak into the other's",
                  "train on more days (pipeline.training_days) so more users and ads have enough impressions, or "
                  f"sample more pairs (gates.entanglement_max_pairs); {UNDECIDED}")


def _entanglement_remedies(gate: Mapping[str, Any]) -> list[Remedy]:
    d = gate.get("details") or {}
    out = []
    corr, max_corr = finite_or_none(d.get("expert_correlation")), finite_or_none(d.get("max_expert_correlation"))
    corr_failed = corr is not None and max_corr is not None and corr > max_corr
    value, threshold = finite_or_none(gate.get("value")), finite_or_none(gate.get("threshold"))
    verdict = d.get("separation_verdict")  # absent in gates stored before statuses: judged by value
    if verdict is None and d.get("separation_gated"):
        verdict = INCONCLUSIVE if value is None else FAIL if threshold is None or value <= threshold else PASS
    if verdict == INCONCLUSIVE:
        out.append(_entanglement_unsure(gate))
    elif verdict == FAIL:
        out.append(Remedy(
            "a task's own table does not keep its pairs apart from the other task's, so one task's preferences "
            "leak into the other's ranking",
            "see <home>/models/<day>/analysis/entanglement_distances.png; to accept a smaller separation, lower "
            "gates.min_separation"))
    if corr_failed:
        out.append(Remedy("the experts compute nearly the same thing, so mixing them adds nothing",
                          "to accept more redundant experts, raise gates.max_expert_correlation"))
    return out


# ----- model --------------------------------------------------------------------------------------------------
def _model_remedies(gate: Mapping[str, Any]) -> list[Remedy]:
    tasks = (gate.get("details") or {}).get("tasks") or {}
    if not tasks:
        return [Remedy("nothing was evaluated, so the version cannot be judged",
                       "check the train step's evaluation of the newest day")]
    out = []
    below = [t for t, m in tasks.items() if m.get("auc") is not None and not m.get("auc_ok", True)]
    undefined = [t for t, m in tasks.items() if m.get("auc") is None]
    off = [t for t, m in tasks.items() if not m.get("calibration_ok", True)]
    if below:
        out.append(Remedy(
            f"this version ranks the newest day's impressions worse than the champion serving now "
            f"({', '.join(below)} AUC)",
            "compare the two versions' metrics (adsrec models, the MLflow UI); " + (
                "the drop is beyond the noise (the whole paired difference interval lies below "
                "-gates.auc_tolerance); to accept it, raise gates.auc_tolerance"
                if any(tasks[t].get("delta_interval") for t in below)
                else "if the drop is the noise of a small day, raise gates.auc_tolerance")))
    if undefined:
        out.append(Remedy(
            f"the newest day has no positive or no negative {', '.join(undefined)} label, so the version cannot "
            "be judged on it",
            "run again when the newest day has both labels, or train on a longer window (pipeline.training_days)"))
    if off:
        out.append(Remedy(
            f"the predicted {', '.join(off)} rate is off from the observed rate by more than the band allows, "
            "so what the ranking expects of every ad is over- or under-stated",
            "check the label rates of the window against the newest day; to accept it, widen "
            "gates.calibration_band"))
    return out


# ----- baseline ---------------------------------------------------------------------------------------------
def _baseline_unsure(tasks: Mapping[str, Mapping[str, Any]], unsure: list[str]) -> Remedy:
    """The baseline comparison was made, but the newest day could not tell it for ``unsure``: per task, which
    interval straddles the margin (or why there is none) and how many positives the day had."""
    parts = []
    for t in unsure:
        m, diff = tasks[t], tasks[t].get("difference") or {}
        point, low, high = (finite_or_none(diff.get(k)) for k in ("point", "low", "high"))
        pos, rows = m.get("positives"), m.get("rows")  # absent in gates stored before the counts
        count = f"{pos:,} {t} positives in {rows:,} rows" if isinstance(pos, int) and isinstance(rows, int) else ""
        if m.get("best") is None or point is None:
            parts.append(f"{t}: the newest day has no positive or no negative {t} label" + (f" ({count})" if count
                                                                                             else ""))
        elif low is None or high is None:
            parts.append(f"{t}: the lead {point:+.3f} over {m.get('best')} has no interval, "
                         + (f"{count} are too few to resample" if count else "too few positives to resample"))
        else:
            parts.append(f"{t}: the lead over {m.get('best')}, {point:+.3f} [{low:+.3f}, {high:+.3f}], straddles "
                         "the margin" + (f" with {count}" if count else ""))
    return Remedy(
        "the model was compared with the baselines, but the newest day has too few positives to tell whether it "
        "beats them by gates.baseline_margin (" + "; ".join(parts) + ")",
        "judge on more days: raise training.test_days (every test day adds its positives and narrows the "
        f"interval), or train on a longer window (pipeline.training_days); {policy_key('baseline')} decides whether "
        "such a version passes (default: fail)")


def _baseline_remedies(gate: Mapping[str, Any]) -> list[Remedy]:
    tasks = (gate.get("details") or {}).get("tasks") or {}
    failed = [t for t, m in tasks.items() if m.get("verdict") == "FAIL"]
    unsure = [t for t, m in tasks.items() if m.get("verdict") == INCONCLUSIVE]
    out = []
    if failed:
        named = ", ".join(f"{t} ({tasks[t].get('best')})" for t in failed)
        out.append(Remedy(
            f"a trivial baseline counted on the same training window ranks the newest day's impressions at least "
            f"as well as this version ({named}): the model has learned nothing that counting past positives does "
            "not already give",
            "check the training (epochs, learning rate, width, regularisation: docs/training.md) and the features; "
            "train on a longer window (pipeline.training_days); to demand a smaller lead, lower "
            "gates.baseline_margin"))
    if unsure:
        out.append(_baseline_unsure(tasks, unsure))
    return out or [Remedy("nothing was compared with the baselines, so the version cannot be judged",
                          "check the newest day's rows and the model's scores of them")]


REMEDIES = {"data": _data_remedies, "collapse": _collapse_remedies, "entanglement": _entanglement_remedies,
            "model": _model_remedies, "baseline": _baseline_remedies}


def remedies(gate: Mapping[str, Any]) -> list[Remedy]:
    """Why each failed or inconclusive condition of ``gate`` (a gate dict) matters and what to do; empty when
    it passed outright."""
    if gate_status(gate) == PASS:
        return []
    words = REMEDIES.get(str(gate.get("name")))
    found = words(gate) if words is not None else []
    return found or [Remedy("the version is not fit to serve by this gate's measure",
                            "read the gate's details in gates.json")]


def failure_text(gate: Mapping[str, Any], version: int | None = None) -> str:
    """A failed gate for the user: what failed (its ``reason``), why it matters, what to do, and the
    forced promotion; empty for a gate that passed. ``version``: the registered version, if known."""
    if gate.get("passed"):
        return ""
    reason = gate.get("reason") or f"value {fixed(gate.get('value'), 4)}, threshold {fixed(gate.get('threshold'), 4)}"
    found = remedies(gate)
    force = FORCE_PROMOTE.format(version=version if version is not None else "V")
    return "\n".join([
        f"{gate.get('name')} gate failed: {reason}",
        "  why it matters: " + "; ".join(r.why for r in found),
        "  what to do: " + "; ".join(r.what_to_do for r in found),
        f"  or, having checked the version, promote it anyway: {force}",
    ])


def gate_notice(gate: Mapping[str, Any], version: int | None = None) -> str:
    """What the run prints under the gate table for ``gate``: :func:`failure_text` when it failed, a warning
    when it was inconclusive and passed by ``gates.inconclusive``, nothing when it passed outright."""
    if not gate.get("passed"):
        return failure_text(gate, version)
    if gate_status(gate) != INCONCLUSIVE:
        return ""
    found = remedies(gate)
    return "\n".join([
        f"warning: {gate.get('name')} gate inconclusive, passed by {policy_key(gate.get('name'))} = pass: {gate.get('reason')}",
        "  why it matters: " + "; ".join(r.why for r in found),
        "  what to do: " + "; ".join(r.what_to_do for r in found),
        f"  to hold such versions back instead: {policy_key(gate.get('name'))} = fail",
    ])


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
        lo, hi, v = finite_or_none(b.get("min_value")), finite_or_none(b.get("max_value")), finite_or_none(observed)
        if v is None:
            return f"{column} rate undefined ({where})"
        side = (f"above {hi:.2f}" if hi is not None and v > hi else f"below {lo:.2f}" if lo is not None and v < lo
                else f"outside [{fixed(lo, 2)}, {fixed(hi, 2)}]")
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


__all__ = ["FORCE_PROMOTE", "GATE_COLUMNS", "UNDECIDED", "Remedy", "expectation_words", "failure_text",
           "finite_or_none", "fixed", "gate_cells", "gate_notice", "gate_status", "interval_words", "percent",
           "policy_words", "remedies", "separation_words", "verdict_word"]

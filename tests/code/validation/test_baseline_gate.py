"""The baseline gate's verdicts from the model-minus-best-baseline interval (validation/gates.py
``baseline_gate``): fail, inconclusive (passes, said so) and pass, and the words of each."""

from __future__ import annotations

from typing import Any

from validation.baseline_gate import baseline_gate
from validation.gate_words import failure_text
from validation.gates import gate_table


def row(point: float | None, low: float | None, high: float | None, best: str | None = "per_ad") -> dict[str, Any]:
    return {"model_auc": 0.6 if point is None else 0.6 + point, "best": best, "best_auc": 0.6,
            "baselines": {"per_ad": 0.6, "per_user": 0.55, "popularity": 0.52},
            "difference": {"point": point, "low": low, "high": high, "level": 0.95, "n_boot": 200}}


def test_fail_inconclusive_and_pass_by_where_the_interval_lies() -> None:
    gate = baseline_gate({"click": row(0.05, 0.03, 0.07), "conversion": row(0.01, -0.02, 0.04)}, 0.0)
    assert gate.passed and gate.details["inconclusive"] == ["conversion"] and gate.value == 0.01
    assert gate.interval == (-0.02, 0.04)  # the interval of the task closest to failing, shown in the table
    assert "conversion AUC 0.610 vs best baseline per_ad 0.600: difference +0.010 [-0.020, +0.040] straddles" \
        in gate.reason and "inconclusive on conversion: passes" in gate.reason
    assert gate.details["tasks"]["click"]["verdict"] == "pass" and gate.status == "inconclusive"
    strict = baseline_gate({"click": row(0.05, 0.03, 0.07), "conversion": row(0.01, -0.02, 0.04)}, 0.0, "fail")
    assert not strict.passed and strict.status == "inconclusive"  # gates.inconclusive = fail holds it back
    assert baseline_gate({"click": row(0.05, 0.03, 0.07)}, 0.0).status == "pass"
    refused = baseline_gate({"click": row(0.05, 0.03, 0.07), "conversion": row(-0.03, -0.05, -0.01)}, 0.0)
    assert not refused.passed and refused.details["failed"] == ["conversion"]
    assert "conversion (per_ad)" in failure_text(refused.to_dict())
    # the margin moves the verdict: a lead of 0.05 [0.03, 0.07] is clearly short of a 0.08 margin
    assert not baseline_gate({"click": row(0.05, 0.03, 0.07)}, 0.08).passed
    assert "baseline" in gate_table([refused]) and "FAIL" in gate_table([refused])


def test_an_inconclusive_lead_says_why_naming_the_task_the_baseline_and_the_users() -> None:
    from validation.gate_words import gate_notice

    noisy = {**row(-0.006, -0.036, 0.031), "users": 18}
    gate = baseline_gate({"click": row(0.05, 0.03, 0.07), "conversion": noisy}, 0.0)
    assert "straddles the margin 0.000 (gates.baseline_margin) (18 users on the newest day)" in gate.reason
    notice = gate_notice(gate.to_dict())
    assert notice.startswith("warning: baseline gate inconclusive, passed by gates.baseline_inconclusive = pass")
    assert "conversion: the lead over per_ad, -0.006 [-0.036, +0.031], straddles the margin" in notice
    assert "training.test_days" in notice and "nothing could be compared" not in notice
    held = gate_notice(baseline_gate({"conversion": noisy}, 0.0, "fail").to_dict())
    assert held.startswith("baseline gate failed") and "(18 users on the newest day)" in held
    # an undefined AUC is said as such, next to a noisy lead
    both = gate_notice(baseline_gate({"click": row(None, None, None, best=None), "conversion": noisy}, 0.0).to_dict())
    assert "click: the newest day has no positive or no negative click label" in both and "conversion: the lead" in both


def test_undefined_auc_or_interval_is_inconclusive_not_a_failure() -> None:
    gate = baseline_gate({"click": row(None, None, None, best=None), "conversion": row(-0.02, None, None)}, 0.0)
    assert gate.passed and gate.details["inconclusive"] == ["click", "conversion"]
    assert "click AUC undefined" in gate.reason and "interval undefined" in gate.reason
    assert not baseline_gate({}, 0.0).passed  # nothing compared: not a pass


def test_run_summary_shows_baselines_and_ceilings_next_to_the_model() -> None:
    from flows.report import render_gates

    gate = baseline_gate({"click": row(0.05, 0.03, 0.07)}, 0.0)
    st = {"metrics": {"click": {"auc": 0.65, "calibration": 1.0}}, "gates": [gate.to_dict()],
          "gate_table": gate_table([gate]), "baselines": {"click": row(0.05, 0.03, 0.07)},
          "oracle": {"click": 0.8}, "ceilings": {"no_taste": {"click": 0.66}, "taxonomy_taste": {"click": 0.73}}}
    text = render_gates(st)
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "the model next to the trivial baselines and the achievable ceilings" in text
    assert "0.6500 (0.812)" in lines["model"] and "0.6000 (0.750)" in lines["baseline per_ad"]
    assert "0.6600 (0.825)" in lines["ceiling no_taste"] and "0.8000 (1.000)" in lines["oracle"]
    assert "+0.0500 [+0.0300, +0.0700]" in lines["model - best baseline"]
    # without the simulator: the baselines only, no ratio
    plain = render_gates({**st, "oracle": None, "ceilings": None})
    assert "achievable ceilings" not in plain and "0.6000 (" not in plain and "baseline popularity" in plain

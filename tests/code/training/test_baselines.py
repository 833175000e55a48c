"""The trivial baselines and the model's lead over the best one (components/training/baselines.py), judged
by the baseline gate (validation/baseline_gate.py): a model that learned nothing is refused
with a clear reason, a model ahead of the best baseline passes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from components.training.baselines import (
    baseline_comparison,
    baseline_scores,
    impression_counts,
    smoothed_rates,
)
from validation.baseline_gate import baseline_gate
from validation.gate_words import failure_text

N_ADS, N_USERS = 300, 2000
_rng = np.random.default_rng(0)
AD_EFFECT = _rng.normal(0, 0.8, N_ADS)
USER_EFFECT = _rng.normal(0, 0.8, N_USERS)


def log(n: int, seed: int) -> pa.Table:
    """Impressions whose click depends on the ad and the user, and whose conversion on the user only."""
    rng = np.random.default_rng(seed)
    ad, user = rng.integers(0, N_ADS, n), rng.integers(0, N_USERS, n)
    p_click = 1 / (1 + np.exp(2.5 - AD_EFFECT[ad] - USER_EFFECT[user]))
    p_conv = 1 / (1 + np.exp(2.0 - 1.5 * USER_EFFECT[user]))
    return pa.table({"ad_id": ad, "user_id": user, "click": (rng.random(n) < p_click).astype(np.int8),
                     "conversion": (rng.random(n) < p_conv).astype(np.int8)})


@pytest.fixture(scope="module")
def window() -> tuple[pa.Table, pa.Table]:
    return log(100_000, 1), log(20_000, 2)


def test_smoothed_rates_by_hand() -> None:
    # global rate 1/4, so the prior is worth m = 1 / 0.25 = 4 impressions at 0.25
    rates = smoothed_rates(np.array([1, 1, 1, 2]), np.array([1, 0, 0, 0]), np.array([2, 1, 3, 1]))
    assert rates == pytest.approx([1 / 5, 2 / 7, 0.25, 2 / 7])  # key 3 never seen: the global rate
    assert smoothed_rates(np.array([1, 2]), np.array([0, 0]), np.array([1, 5])) == pytest.approx([0.0, 0.0])
    assert impression_counts(np.array([1, 1, 2]), np.array([2, 1, 5])) == pytest.approx([1, 2, 0])


def test_baselines_take_string_ids_and_score_every_task() -> None:
    train = pa.table({"ad_id": ["a", "a", "b"], "user_id": ["u", "v", "v"], "click": [1, 0, 0]})
    valid = pa.table({"ad_id": ["b", "a", "c"], "user_id": ["v", "u", "w"], "click": [0, 1, 0]})
    scores = baseline_scores(train, valid, ["click"])
    assert set(scores) == {"per_ad", "per_user", "popularity"}
    assert scores["popularity"]["click"] == pytest.approx([1, 2, 0])
    assert scores["per_ad"]["click"][1] > scores["per_ad"]["click"][0]  # ad a had the click
    assert scores["per_user"]["click"][2] == pytest.approx(1 / 3)  # user w unseen: the global rate


def test_the_best_baseline_is_chosen_per_task(window) -> None:
    train, valid = window
    comp = baseline_comparison({t: np.zeros(valid.num_rows) for t in ("click", "conversion")}, train, valid,
                               ["click", "conversion"])
    assert comp["conversion"]["best"] == "per_user"  # conversion depends on the user only
    assert comp["click"]["baselines"]["per_ad"] > 0.6 and comp["conversion"]["baselines"]["per_user"] > 0.6
    for task, row in comp.items():
        assert row["best_auc"] == max(row["baselines"].values())
        labels = valid.column(task).to_numpy()  # what the interval has to go on, for the gate's words
        assert row["rows"] == valid.num_rows and row["positives"] == int(labels.sum())
        assert row["users"] == len(set(valid.column("user_id").to_pylist()))  # the units the interval resamples


@pytest.mark.parametrize("kind", ["random", "constant"])
def test_a_model_that_learned_nothing_is_refused_with_a_clear_reason(window, kind: str) -> None:
    train, valid = window
    n = valid.num_rows
    scores = np.random.default_rng(5).random(n) if kind == "random" else np.full(n, 0.05)
    comp = baseline_comparison({"click": scores, "conversion": scores}, train, valid, ["click", "conversion"])
    gate = baseline_gate(comp, 0.0)
    assert not gate.passed and gate.details["failed"] == ["click", "conversion"]
    best = comp["click"]["best"]
    assert "click AUC 0.50" in gate.reason and f"best baseline {best} {comp['click']['best_auc']:.3f}" in gate.reason
    assert "gates.baseline_margin" in gate.reason and "no better than the baseline" in gate.reason
    text = failure_text(gate.to_dict(), 4)
    assert text.startswith("baseline gate failed: click AUC")
    assert "lower gates.baseline_margin" in text and "--version 4 --force" in text


def test_a_model_ahead_of_the_best_baseline_passes(window) -> None:
    train, valid = window
    ad, user = (valid.column(c).to_numpy() for c in ("ad_id", "user_id"))
    # the ad's effect and part of the user's: about 0.05 AUC above the per-ad rate on click
    scores = {"click": AD_EFFECT[ad] + 0.3 * USER_EFFECT[user], "conversion": USER_EFFECT[user]}
    comp = baseline_comparison(scores, train, valid, ["click", "conversion"])
    lead = comp["click"]["difference"]
    assert comp["click"]["best"] == "per_ad" and 0.04 < lead["point"] < 0.06 and lead["low"] > 0
    gate = baseline_gate(comp, 0.0)
    assert gate.passed and gate.explain() == ""
    assert gate.value == pytest.approx(min(r["difference"]["point"] for r in comp.values()))
    assert "above the margin 0.000 (gates.baseline_margin)" in gate.reason
    assert not baseline_gate(comp, 0.1).passed  # a margin the lead's interval lies under: refused

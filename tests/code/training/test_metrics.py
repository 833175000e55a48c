"""The metrics of a binary task (components/training/metrics.py): AUC and log-loss from scikit-learn
against brute force and the formulas they replaced, GAUC against a per-user loop, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings as hyp_settings, strategies as st

from components.training.metrics import auc, calibration, gauc, gauc_detail, logloss


def brute_auc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).sum() / (pos.size * neg.size))


@hyp_settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 1)), min_size=1, max_size=60))
def test_auc_equals_a_pairwise_count_with_ties(rows: list[tuple[int, int]]) -> None:
    s = np.array([r[0] / 6 for r in rows])  # few distinct values: many ties
    y = np.array([r[1] for r in rows])
    expected = brute_auc(s, y)
    got = auc(s, y)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)


def test_auc_hand_examples_and_errors() -> None:
    assert auc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == 0.875
    assert auc([0.3, 0.3, 0.3], [0, 1, 0]) == 0.5
    assert auc([0.9, 0.1], [0, 1]) == 0.0
    assert math.isnan(auc([0.2, 0.5], [1, 1]))
    with pytest.raises(ValueError, match="NaN"):
        auc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="0/1"):
        auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="rows"):
        auc([0.1, 0.2, 0.3], [0, 1])


@hyp_settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 300), users=st.integers(1, 25))
def test_gauc_equals_a_per_user_loop(seed: int, n: int, users: int) -> None:
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 8, n) / 8.0  # ties inside users
    y = (rng.random(n) < 0.3).astype(int)
    g = rng.integers(0, users, n) * 7 - 3  # arbitrary, unsorted ids
    num = den = 0.0
    counted = 0
    for u in np.unique(g):  # the reference: an explicit loop over users
        m = g == u
        a = brute_auc(s[m], y[m])
        if not math.isnan(a):
            num += m.sum() * a
            den += m.sum()
            counted += 1
    value, n_users = gauc_detail(s, y, g)
    assert n_users == counted
    if counted == 0:
        assert math.isnan(value)
    else:
        assert value == pytest.approx(num / den, abs=1e-12)


def test_gauc_hand_example() -> None:
    # user 1: AUC 1 on 2 rows; user 2: AUC 0.5 on 3 rows; user 3: one class only, left out
    assert gauc([0.1, 0.9, 0.2, 0.3, 0.1, 0.5], [0, 1, 1, 0, 0, 1], [1, 1, 2, 2, 2, 3]) == pytest.approx(0.7)


def test_logloss_and_calibration_hand_examples() -> None:
    assert logloss([0.5, 0.5], [0, 1]) == pytest.approx(math.log(2))
    assert logloss([0.8, 0.1], [1, 0]) == pytest.approx(-(math.log(0.8) + math.log(0.9)) / 2)
    assert logloss([0.0], [1]) == pytest.approx(-math.log(1e-7))  # clipped, not infinite
    assert logloss([1.0, 0.0], [1, 0]) == pytest.approx(-math.log(1 - 1e-7))
    assert calibration([0.1, 0.3], [0, 1]) == pytest.approx(0.4)
    assert calibration([0.05, 0.05, 0.05, 0.05], [1, 0, 0, 0]) == pytest.approx(0.2)
    assert math.isnan(calibration([0.2, 0.3], [0, 0]))
    with pytest.raises(ValueError, match="probabilities"):
        logloss([1.5, 0.2], [1, 0])


def rank_auc(s: np.ndarray, y: np.ndarray) -> float:
    """The Mann-Whitney AUC from tie-averaged ranks: the formula metrics.auc used before scikit-learn."""
    order = np.argsort(s, kind="stable")
    ranks = np.empty(s.size)
    xs = s[order]
    new = np.ones(s.size, bool)
    new[1:] = xs[1:] != xs[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], s.size)
    ranks[order] = np.repeat((starts + ends - 1) / 2.0 + 1.0, ends - starts)
    n_pos = int(y.sum())
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * (y.size - n_pos)))


@pytest.fixture(scope="module")
def scored_rows() -> tuple[np.ndarray, np.ndarray]:
    """2,000 probabilities on 40 distinct values (many ties) with 0/1 labels that follow them, 0 and 1
    included (log-loss clipping)."""
    rng = np.random.default_rng(11)
    p = rng.integers(0, 41, 2000) / 40.0
    y = (rng.random(2000) < 0.15 + 0.6 * p).astype(np.int64)
    return p, y


def test_sklearn_auc_and_logloss_equal_brute_force_on_a_fixture(scored_rows) -> None:
    p, y = scored_rows
    assert (p == 0).any() and (p == 1).any() and len(np.unique(p)) == 41
    expected = brute_auc(p, y)
    assert auc(p, y) == pytest.approx(expected, abs=1e-12)
    assert auc(p, y) == pytest.approx(rank_auc(p, y), abs=1e-12)
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    by_hand = float(-np.mean(np.where(y == 1, np.log(clipped), np.log1p(-clipped))))
    assert logloss(p, y) == pytest.approx(by_hand, rel=1e-12)
    assert logloss(p, y, eps=1e-3) == pytest.approx(
        float(-np.mean(np.where(y == 1, np.log(np.clip(p, 1e-3, 1 - 1e-3)), np.log1p(-np.clip(p, 1e-3, 1 - 1e-3))))),
        rel=1e-12)


def test_single_class_and_empty_input_give_nan_not_sklearn_errors(scored_rows) -> None:
    p, _ = scored_rows
    assert math.isnan(auc(p, np.ones(p.size, int)))
    assert math.isnan(auc(p, np.zeros(p.size, int)))
    assert math.isnan(auc([], []))
    assert math.isnan(logloss([], []))
    # One class is still a log-loss (sklearn needs the labels named for it).
    assert logloss(p[:50], np.ones(50, int)) == pytest.approx(float(-np.mean(np.log(np.clip(p[:50], 1e-7, 1)))))

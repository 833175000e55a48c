"""Bootstrap AUC intervals over users (components/training/intervals.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.training.intervals import auc_difference_interval, auc_interval, weighted_auc


def _data(n: int = 3000, users: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, n)
    taste = rng.normal(0, 1, users)[user]
    y = rng.random(n) < 1 / (1 + np.exp(-(taste - 2)))
    s = np.round(taste + rng.normal(0, 1, n), 1)  # rounded: many ties
    return y, s, user


def test_weighted_auc_equals_sklearn_with_sample_weights() -> None:
    from sklearn.metrics import roc_auc_score

    y, s, _ = _data()
    w = np.random.default_rng(1).integers(0, 4, (3, y.size)).astype(float)
    got = weighted_auc(y, s, w)
    want = [roc_auc_score(y, s, sample_weight=row) for row in w]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert math.isnan(weighted_auc(np.zeros(5), np.arange(5.0), np.ones((1, 5)))[0])


def test_interval_contains_the_point_and_narrows_with_more_users() -> None:
    y, s, user = _data()
    small = auc_interval(y[:600], s[:600], user[:600], seed=0)
    large = auc_interval(y, s, user, seed=0)
    assert small.low < small.point < small.high and large.low < large.point < large.high
    assert large.half_width < small.half_width
    assert auc_interval(y, s, user, seed=0) == large  # seeded: the same interval again


def test_user_bootstrap_is_wider_than_row_bootstrap_when_users_drive_the_labels() -> None:
    y, s, user = _data(n=4000, users=80)
    by_user = auc_interval(y, s, user, seed=0)
    by_row = auc_interval(y, s, None, seed=0)
    assert by_user.half_width > by_row.half_width


def test_paired_difference_separates_a_better_model_and_not_a_copy() -> None:
    y, s, user = _data()
    noisy = s + np.random.default_rng(2).normal(0, 2, s.size)
    better = auc_difference_interval(y, s, noisy, user)
    assert better.point > 0 and better.excludes(0.0)
    same = auc_difference_interval(y, s, s.copy(), user)
    assert same.point == 0.0 and not same.excludes(0.0)
    with pytest.raises(ValueError, match="one shape"):
        auc_difference_interval(y, s, s[:-1], user)


def test_one_class_gives_an_undefined_interval() -> None:
    out = auc_interval(np.zeros(50), np.arange(50.0), np.arange(50) % 5)
    assert math.isnan(out.point) and math.isnan(out.low) and str(out) == "undefined"


def test_mean_difference_over_seeds_is_the_mean_of_the_paired_differences() -> None:
    from components.training.intervals import mean_auc_difference_interval

    y, s, user = _data()
    rng = np.random.default_rng(3)
    runs_a = [s + rng.normal(0, 0.5, s.size) for _ in range(3)]
    runs_b = [s + rng.normal(0, 2.0, s.size) for _ in range(3)]
    ones = np.ones((1, y.size))
    per_seed = [weighted_auc(y, a, ones)[0] - weighted_auc(y, b, ones)[0] for a, b in zip(runs_a, runs_b)]
    out = mean_auc_difference_interval(y, runs_a, runs_b, user)
    assert math.isclose(out.point, float(np.mean(per_seed)), abs_tol=1e-12) and out.excludes(0.0)
    one = auc_difference_interval(y, runs_a[0], runs_b[0], user)
    assert mean_auc_difference_interval(y, runs_a[:1], runs_b[:1], user) == one  # one seed: the plain difference
    # averaging three seeds' noise on the same resamples narrows the interval of the mean
    assert out.half_width < one.half_width
    with pytest.raises(ValueError, match="pair one to one"):
        mean_auc_difference_interval(y, runs_a, runs_b[:2], user)


def test_bootstrap_interval_of_any_statistic_uses_the_same_resamples() -> None:
    from components.training.intervals import bootstrap_interval

    y, s, user = _data()
    p = 1 / (1 + np.exp(-(s - 2)))
    out = bootstrap_interval(lambda w: (w * p).sum(1) / (w * y).sum(1), y.size, user)  # calibration
    assert math.isclose(out.point, p.mean() / y.mean()) and out.low < out.point < out.high
    # the AUC through it is auc_interval's, resample for resample
    via = bootstrap_interval(lambda w: weighted_auc(y, s, w), y.size, user, seed=4)
    assert via == auc_interval(y, s, user, seed=4)


def test_mean_over_seeds_uses_the_same_resamples_for_every_vector() -> None:
    from components.training.intervals import mean_auc_interval

    y, s, user = _data()
    one = auc_interval(y, s, user, seed=0)
    assert mean_auc_interval(y, [s, s.copy()], user, seed=0) == one  # two copies: the same resamples, averaged
    noisy = s + np.random.default_rng(3).normal(0, 1, s.size)
    both = mean_auc_interval(y, [s, noisy], user, seed=0)
    alone = auc_interval(y, noisy, user, seed=0)
    assert both.point == pytest.approx((one.point + alone.point) / 2, abs=1e-12)
    assert both.low < both.point < both.high
    with pytest.raises(ValueError, match="labels' shape"):
        mean_auc_interval(y, [s, s[:-1]], user)
    with pytest.raises(ValueError, match="labels' shape"):
        mean_auc_interval(y, [], user)

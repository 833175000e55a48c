"""Uncertainty of AUC: bootstrap intervals over users, for one model or the paired difference of two.

One test day holds few positives (the demo's newest day: about 135 conversions, an AUC standard error near
0.026), so a comparison of two models on it must carry an interval. Rows of one user are not independent
(the same taste drives all of them), so the bootstrap resamples users, not rows: each resample draws the
day's users with replacement and weights every row by how often its user was drawn. The paired difference
uses the same resamples for both models, so what they share (the day, the users) cancels; over several
seeds, :func:`mean_auc_difference_interval` scores every seed's pair on each resample and averages them.
Any other statistic of weighted rows (a calibration ratio, ...) gets the same resamples through
:func:`bootstrap_interval`.

All resamples are scored at once: the rows are sorted by score once, and each resample's weighted AUC is a
cumulative sum over that order (ties count one half), so ``n_boot`` resamples cost about ``n_boot`` passes
of numpy over the rows, no Python loop per row or per resample. scikit-learn's ``roc_auc_score`` (with
``sample_weight``) gives the same numbers one resample at a time; tests/code/training/test_intervals.py
checks that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_BOOTSTRAP = 200
DEFAULT_LEVEL = 0.95
# resamples scored per numpy pass: bounds the [resamples, rows] weight matrix at ~64 MB of float64
_CHUNK_CELLS = 8_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval: ``low`` and ``high`` are the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of ``n_boot`` resamples (NaN when undefined: one class only)."""

    point: float
    low: float
    high: float
    level: float = DEFAULT_LEVEL
    n_boot: int = DEFAULT_BOOTSTRAP

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes(self, value: float) -> bool:
        """Whether ``value`` lies outside the interval (False when the interval is undefined)."""
        return not (math.isnan(self.low) or math.isnan(self.high)) and not self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}

    def __str__(self) -> str:
        if math.isnan(self.point):
            return "undefined"
        if math.isnan(self.low):
            return f"{self.point:.4f}"
        return f"{self.point:.4f} [{self.low:.4f}, {self.high:.4f}]"


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of ``scores`` against 0/1 ``labels`` [n] under each row of ``weights`` [B, n] (a positive and a
    negative pair counts ``w_pos * w_neg``; tied scores count one half). Returns [B]; NaN where a resample
    has no positive or no negative weight."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(s, kind="mergesort")
    s, y, w = s[order], y[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first row of each distinct score
    pos = np.add.reduceat(np.where(y, w, 0.0), starts, axis=1)  # [B, distinct scores]
    neg = np.add.reduceat(np.where(y, 0.0, w), starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _group_codes(groups: Any, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have one entry per row ({n}), got shape {g.shape}")
    return np.unique(g, return_inverse=True)[1].ravel()


def _resample_weights(codes: np.ndarray, n_boot: int, seed: int) -> Sequence[np.ndarray]:
    """Chunks of [b, n] row weights: each row's weight is how often its group was drawn in that resample."""
    n_groups = int(codes.max()) + 1 if codes.size else 0
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / max(n_groups, 1)), size=n_boot) if n_groups else \
        np.zeros((n_boot, 0))
    step = max(1, _CHUNK_CELLS // max(codes.size, 1))
    return [counts[i:i + step][:, codes].astype(np.float64) for i in range(0, n_boot, step)]


def _interval(point: float, draws: np.ndarray, level: float, n_boot: int) -> Interval:
    finite = draws[np.isfinite(draws)]
    if math.isnan(point) or finite.size < max(10, n_boot // 2):  # too few defined resamples to say
        return Interval(point, math.nan, math.nan, level, n_boot)
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return Interval(point, float(low), float(high), level, n_boot)


def bootstrap_interval(statistic: Callable[[np.ndarray], np.ndarray], n_rows: int, groups: Any = None,
                       n_boot: int = DEFAULT_BOOTSTRAP, level: float = DEFAULT_LEVEL, seed: int = 0) -> Interval:
    """Any statistic of weighted rows with a bootstrap interval over ``groups`` (None: over rows).

    ``statistic(weights)`` maps row weights [B, n_rows] to one value per resample [B] (NaN where undefined);
    the point is the statistic under weight 1 for every row. The resamples depend only on ``groups``,
    ``n_boot`` and ``seed``, so statistics of several models on the same rows are paired.

    Example::

        bootstrap_interval(lambda w: (w * p).sum(1) / (w * y).sum(1), y.size, groups=user_ids)  # calibration
    """
    codes = _group_codes(groups, n_rows)
    point = float(np.asarray(statistic(np.ones((1, n_rows))))[0])
    draws = np.concatenate([np.asarray(statistic(w), dtype=np.float64)
                            for w in _resample_weights(codes, n_boot, seed)])
    return _interval(point, draws, level, n_boot)


def auc_interval(labels: Any, scores: Any, groups: Any = None, n_boot: int = DEFAULT_BOOTSTRAP,
                 level: float = DEFAULT_LEVEL, seed: int = 0) -> Interval:
    """AUC with a bootstrap interval over ``groups`` (e.g. the rows' user ids; None: over rows).

    Example::

        auc_interval(labels, scores, groups=user_ids)   # Interval(point=0.651, low=0.640, high=0.662, ...)
    """
    return mean_auc_interval(labels, [scores], groups, n_boot, level, seed)


def mean_auc_interval(labels: Any, scores: Sequence[Any], groups: Any = None, n_boot: int = DEFAULT_BOOTSTRAP,
                      level: float = DEFAULT_LEVEL, seed: int = 0) -> Interval:
    """The mean AUC of several score vectors on the same rows (one model trained with several seeds), with
    a bootstrap interval over ``groups``: every resample scores each vector and averages them, so the
    interval is the test rows' noise of the seed-averaged AUC (the seeds' own spread is not in it). One
    vector: :func:`auc_interval`."""
    y = np.asarray(labels)
    columns = [np.asarray(s, dtype=np.float64) for s in scores]
    if not columns or any(s.shape != y.shape for s in columns):
        raise ValueError(f"give one or more score vectors of the labels' shape {y.shape}, got "
                         f"{[s.shape for s in columns]}")
    return bootstrap_interval(lambda w: np.mean([weighted_auc(y, s, w) for s in columns], axis=0), y.size,
                              groups, n_boot, level, seed)


def auc_difference_interval(labels: Any, scores_a: Any, scores_b: Any, groups: Any = None,
                            n_boot: int = DEFAULT_BOOTSTRAP, level: float = DEFAULT_LEVEL,
                            seed: int = 0) -> Interval:
    """AUC(a) - AUC(b) on the same rows, with a paired bootstrap interval over ``groups`` (the same
    resamples score both models). An interval that excludes 0 is a difference beyond the noise."""
    return mean_auc_difference_interval(labels, [scores_a], [scores_b], groups, n_boot, level, seed)


def mean_auc_difference_interval(labels: Any, runs_a: Sequence[Any], runs_b: Sequence[Any], groups: Any = None,
                                 n_boot: int = DEFAULT_BOOTSTRAP, level: float = DEFAULT_LEVEL,
                                 seed: int = 0) -> Interval:
    """The mean over paired runs (e.g. seeds: ``runs_a[i]`` against ``runs_b[i]``) of AUC(a_i) - AUC(b_i) on
    the same rows, with a paired bootstrap interval over ``groups``: every resample scores every run of
    both models and averages the differences, so the interval is that of the seed-mean difference a table
    of seed means reports (the seeds' own spread is not in it; compare it separately)."""
    y = np.asarray(labels)
    a = [np.asarray(r, dtype=np.float64) for r in runs_a]
    b = [np.asarray(r, dtype=np.float64) for r in runs_b]
    if not a or len(a) != len(b):
        raise ValueError(f"runs_a ({len(a)}) and runs_b ({len(b)}) must pair one to one and not be empty")
    if any(r.shape != y.shape for r in (*a, *b)):
        raise ValueError(f"labels {y.shape} and every run's scores {sorted({r.shape for r in (*a, *b)})} must have "
                         "one shape")

    def statistic(w: np.ndarray) -> np.ndarray:
        return np.mean([weighted_auc(y, ra, w) - weighted_auc(y, rb, w) for ra, rb in zip(a, b)], axis=0)

    return bootstrap_interval(statistic, y.size, groups, n_boot, level, seed)

"""The metrics of a binary task: AUC and log-loss (scikit-learn's), GAUC (per user, vectorised),
calibration, and the checks of score and label arrays they share.

METHODS.md "Metrics", DESIGN.md section 7; definitions in docs/evaluation.md.

- :func:`auc`: ROC AUC (``sklearn.metrics.roc_auc_score``): a pair with equal scores counts one half.
  NaN when a class is missing (scikit-learn raises there).
- :func:`gauc`: ``sum_u n_u AUC_u / sum_u n_u`` over the users with both classes, ``n_u`` the user's
  impressions; one sort by (user, score) and ``bincount``s, no per-user Python.
- :func:`logloss` (``sklearn.metrics.log_loss`` of predictions clipped to ``[eps, 1 - eps]``) and
  :func:`calibration` (mean prediction / observed rate).
"""

from __future__ import annotations

from typing import Any

import numpy as np

LOGLOSS_EPS = 1e-7


def as_labels(labels: Any, n: int | None = None) -> np.ndarray:
    """``labels`` as a boolean vector, checked: one-dimensional, 0/1, ``n`` rows when given."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    if n is not None and y.size != n:
        raise ValueError(f"labels have {y.size} rows but scores have {n}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    return y.astype(bool)


def as_scores(scores: Any) -> np.ndarray:
    """``scores`` as a float64 vector, checked: one-dimensional and finite."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return s


def as_probabilities(probs: Any) -> np.ndarray:
    """``probs`` as :func:`as_scores`, checked to lie in [0, 1]."""
    p = as_scores(probs)
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError(
            f"predictions must be probabilities in [0, 1] (got {p.min():.4g}..{p.max():.4g}); pass sigmoid(logits)"
        )
    return p


def auc(scores: Any, labels: Any) -> float:
    """ROC AUC: the probability that a random positive scores above a random negative, ties counting
    one half. NaN when either class is missing.

    Example::

        >>> auc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1])
        0.875
    """
    from sklearn.metrics import roc_auc_score

    s = as_scores(scores)
    y = as_labels(labels, s.size)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return float("nan")
    return float(roc_auc_score(y, s))


def gauc_detail(scores: Any, labels: Any, groups: Any) -> tuple[float, int]:
    """(GAUC, number of groups with both classes). GAUC = ``sum_u n_u AUC_u / sum_u n_u`` over the groups
    (users) holding both a positive and a negative; ``n_u`` counts all of the group's rows. NaN when no
    group has both classes."""
    s = as_scores(scores)
    y = as_labels(labels, s.size)
    g = np.asarray(groups)
    if g.shape != s.shape:
        raise ValueError(f"groups have shape {g.shape} but scores have {s.shape}")
    if s.size == 0:
        return float("nan"), 0
    _, code = np.unique(g, return_inverse=True)
    return gauc_codes(s, y, code.ravel())


def gauc_codes(s: np.ndarray, y: np.ndarray, code: np.ndarray) -> tuple[float, int]:
    """GAUC over dense group codes ``0..G-1`` (validated inputs)."""
    if s.size == 0:
        return float("nan"), 0
    # By group, then score: a score sort then a stable sort by group (twice as fast as a lexsort).
    by_score = np.argsort(s)
    order = by_score[np.argsort(code[by_score], kind="stable")]
    cs, ss, ys = code[order], s[order], y[order]
    n = s.size
    group_start = np.ones(n, bool)
    group_start[1:] = cs[1:] != cs[:-1]
    run_start = group_start.copy()  # a run: equal (group, score), i.e. a tie inside a group
    run_start[1:] |= ss[1:] != ss[:-1]
    idx = np.arange(n)
    first_of_group = np.maximum.accumulate(np.where(group_start, idx, 0))
    starts = np.flatnonzero(run_start)
    ends = np.append(starts[1:], n)
    run_mid = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    rank = run_mid - first_of_group + 1.0  # 1-based, tie-averaged rank inside the group
    n_groups = int(cs[-1]) + 1
    size = np.bincount(cs, minlength=n_groups).astype(float)
    pos = np.bincount(cs, weights=ys.astype(float), minlength=n_groups)
    pos_rank = np.bincount(cs, weights=rank * ys, minlength=n_groups)
    neg = size - pos
    both = (pos > 0) & (neg > 0)
    if not both.any():
        return float("nan"), 0
    auc_u = (pos_rank[both] - pos[both] * (pos[both] + 1) / 2.0) / (pos[both] * neg[both])
    return float((size[both] * auc_u).sum() / size[both].sum()), int(both.sum())


def gauc(scores: Any, labels: Any, groups: Any) -> float:
    """Group AUC, impression-weighted over the users with both classes (see :func:`gauc_detail`).

    Example::

        >>> # user 1: AUC 1.0 on 2 rows; user 2: AUC 0.5 on 3 rows -> (2 * 1.0 + 3 * 0.5) / 5
        >>> gauc([0.1, 0.9, 0.2, 0.3, 0.1], [0, 1, 1, 0, 0], [1, 1, 2, 2, 2])
        0.7
    """
    return gauc_detail(scores, labels, groups)[0]


def logloss(probs: Any, labels: Any, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy, predictions clipped to ``[eps, 1 - eps]``. NaN on no rows."""
    p = as_probabilities(probs)
    y = as_labels(labels, p.size)
    if p.size == 0:
        return float("nan")
    from sklearn.metrics import log_loss

    return float(log_loss(y.astype(np.int8), np.clip(p, eps, 1.0 - eps), labels=[0, 1]))


def calibration(probs: Any, labels: Any) -> float:
    """Mean prediction / observed positive rate (1 is calibrated, > 1 over-predicts). NaN when the
    rows hold no positive."""
    p = as_probabilities(probs)
    y = as_labels(labels, p.size)
    if p.size == 0 or not y.any():
        return float("nan")
    return float(p.mean() / y.mean())


__all__ = ["LOGLOSS_EPS", "as_labels", "as_probabilities", "as_scores", "auc", "calibration", "gauc", "gauc_codes",
           "gauc_detail", "logloss"]

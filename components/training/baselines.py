"""Trivial baselines a ranker must beat, and the paired comparison the baseline gate judges.

Each baseline is fitted on the training window and scores the newest day's rows (docs/gates.md, "The
baseline gate"):

- ``per_ad``: the ad's positive rate in the window, per task;
- ``per_user``: the user's positive rate in the window, per task;
- ``popularity``: the ad's impression count in the window (the same ranking for every task).

Rates are smoothed toward the window's global rate ``g`` by a prior worth ``PRIOR_POSITIVES`` positives,
``(positives + m g) / (impressions + m)`` with ``m = PRIOR_POSITIVES / g``, so an id seen a few times
is not ranked first by luck; an id the window never saw gets ``g`` (popularity: 0 impressions). All of
it is a few ``np.unique`` / ``bincount`` passes, no Python loop over rows or ids.

:func:`baseline_comparison` scores every baseline, picks the best per task on the newest day and gives
the model's AUC minus the best baseline's with a paired bootstrap interval over users
(components/training/intervals.py); validation/baseline_gate.py judges that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from components.training.intervals import DEFAULT_BOOTSTRAP, auc_difference_interval
from components.training.metrics import auc

BASELINES = {
    "per_ad": "the ad's positive rate in the training window",
    "per_user": "the user's positive rate in the training window",
    "popularity": "the ad's impression count in the training window",
}
PRIOR_POSITIVES = 1.0  # the smoothing prior is worth this many positives at the global rate


def _column(table: Any, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False))


def _per_key(train_keys: np.ndarray, valid_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Dense codes of the training and newest-day keys over their union, and the number of codes."""
    codes = np.unique(np.concatenate([train_keys, valid_keys]), return_inverse=True)[1].ravel()
    return codes[:train_keys.size], codes[train_keys.size:], int(codes.max()) + 1 if codes.size else 0


def smoothed_rates(train_keys: np.ndarray, labels: np.ndarray, valid_keys: np.ndarray,
                   prior_positives: float = PRIOR_POSITIVES) -> np.ndarray:
    """Each newest-day key's positive rate over the training rows, smoothed toward the global rate
    (``(positives + m g) / (impressions + m)``, ``m = prior_positives / g``); unseen keys get ``g``."""
    y = np.asarray(labels, dtype=np.float64)
    g = float(y.mean()) if y.size else 0.0
    if valid_keys.size == 0 or g <= 0.0:
        return np.full(valid_keys.size, g)
    train_code, valid_code, n = _per_key(train_keys, valid_keys)
    impressions = np.bincount(train_code, minlength=n)
    positives = np.bincount(train_code, weights=y, minlength=n)
    m = prior_positives / g
    return ((positives + m * g) / (impressions + m))[valid_code]


def impression_counts(train_keys: np.ndarray, valid_keys: np.ndarray) -> np.ndarray:
    """How often each newest-day key was shown in the training rows (0 when never)."""
    if valid_keys.size == 0:
        return np.zeros(0)
    train_code, valid_code, n = _per_key(train_keys, valid_keys)
    return np.bincount(train_code, minlength=n)[valid_code].astype(np.float64)


def baseline_scores(train: Any, valid: Any, tasks: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """``{baseline: {task: scores of valid's rows}}`` for every baseline of :data:`BASELINES`, fitted on
    ``train`` (tables with ``ad_id``, ``user_id`` and the task labels)."""
    ads_t, ads_v = _column(train, "ad_id"), _column(valid, "ad_id")
    users_t, users_v = _column(train, "user_id"), _column(valid, "user_id")
    popularity = impression_counts(ads_t, ads_v)
    out: dict[str, dict[str, np.ndarray]] = {name: {} for name in BASELINES}
    for task in tasks:
        y = _column(train, task)
        out["per_ad"][task] = smoothed_rates(ads_t, y, ads_v)
        out["per_user"][task] = smoothed_rates(users_t, y, users_v)
        out["popularity"][task] = popularity
    return out


def baseline_comparison(model_scores: Mapping[str, Any], train: Any, valid: Any, tasks: Sequence[str],
                        n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per task: every baseline's AUC on the newest day (``valid``), the best one, the model's AUC,
    ``difference``: AUC(model) - AUC(best baseline) with its paired bootstrap interval over users (a dict
    of ``Interval.to_dict()``; None values where undefined), and the day's ``rows`` and ``positives`` (how
    much the interval has to go on). ``model_scores``: task -> the model's probabilities of ``valid``'s
    rows."""
    scores = baseline_scores(train, valid, tasks)
    users = _column(valid, "user_id")
    n_users = int(np.unique(users).size)  # what the interval's width depends on
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        y = _column(valid, task)
        model = np.asarray(model_scores[task], dtype=np.float64)
        aucs = {name: auc(per[task], y) for name, per in scores.items()}
        defined = {name: a for name, a in aucs.items() if np.isfinite(a)}
        best = max(defined, key=defined.__getitem__) if defined else None
        row: dict[str, Any] = {"baselines": {k: (v if np.isfinite(v) else None) for k, v in aucs.items()},
                               "best": best, "best_auc": defined.get(best) if best else None,
                               "rows": int(y.size), "positives": int(np.count_nonzero(y)),
                               "users": n_users}
        model_auc = auc(model, y)
        row["model_auc"] = model_auc if np.isfinite(model_auc) else None
        row["difference"] = (auc_difference_interval(y, model, scores[best][task], users, n_boot=n_boot,
                                                     seed=seed).to_dict() if best else None)
        out[task] = row
    return out


__all__ = ["BASELINES", "PRIOR_POSITIVES", "baseline_comparison", "baseline_scores", "impression_counts",
           "smoothed_rates"]

"""Repeated-exposure propensity and the inverse-propensity weights of the ranking loss.

METHODS.md "Repeated-exposure IPW". A retargeting policy re-shows ads to users who clicked them, so a
(user, ad) pair that was clicked is far more likely to be exposed again, and positives on repeated
exposures are over-represented in the log. This module estimates, from the impression log alone
(``user_id``, ``ad_id``, ``event_time``, ``exposure_index`` and the click label), how likely a pair is
to reach its next exposure given its history, and turns that into per-row loss weights.

The estimator (a choice; the paper gives no formula; docs/evaluation.md has the measured behaviour):

- **Continuation propensity.** For exposure n >= 2 and click state s (``s = 1`` when the pair was
  clicked on any of its exposures 1..n-1, else 0):
  ``rho_n(s) = P(the pair reaches exposure n within H | it reached exposure n-1, state s)``.
  Counted over every impression at exposure n-1 whose state is s: the numerator counts those whose
  pair has its next impression no later than ``H = horizon_days`` after it. Impressions later than
  ``log_end - H`` are right-censored (they had less than H to be re-shown) and not counted.
  Pairs whose first impression in the log has ``exposure_index > 1`` are left-censored (their earlier
  clicks are unseen, so their state is unknown) and are left out of the fit.
- **Smoothing.** Exposures ``>= max_exposure`` share one stratum. Each ``rho_n(s)`` is shrunk towards
  the pooled rate of its exposure ``rho_n`` with ``prior_strength`` pseudo-counts, and ``rho_n``
  towards the global re-exposure rate the same way, so thin strata do not produce wild weights.
- **Weights.** ``pi_first = rho_n(0)``: the propensity that a pair whose history holds no click (as
  every pair has at its first exposure) reaches exposure n; ``pi_n = rho_n(s)`` with the row's own
  state. A positive with ``exposure_index = n >= 2`` gets ``w = clip(pi_first / pi_n, w_min, 1)``;
  first exposures and negatives get exactly 1. A pair never clicked before has ``w = 1`` by
  construction; when the row's state is unknown (its pair's history starts before the table), the
  pooled ``rho_n`` stands in for ``pi_n``.

Everything is vectorised: one lexsort by (user, ad, time, exposure), a cumulative click sum per pair
and ``np.add.at`` counts; no per-row Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

US_PER_DAY = 86_400_000_000
REQUIRED_COLUMNS = ("user_id", "ad_id", "event_time", "exposure_index")
STATE_NEVER, STATE_CLICKED, STATE_UNKNOWN = 0, 1, 2


@dataclass
class _PairHistory:
    """Per row of a table, in the table's row order: where its pair stands."""

    exposure: np.ndarray  # int64, the row's exposure_index
    clicked_before: np.ndarray  # bool, any click of the pair on an earlier row of the table
    clicked_through: np.ndarray  # bool, ... on an earlier row or this one
    complete: np.ndarray  # bool, the pair's first row in the table is its exposure 1
    next_gap_us: np.ndarray  # int64, time to the pair's next row (-1 when it has none)
    time_us: np.ndarray  # int64, event_time in microseconds


def _column(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.timestamp("us", tz=col.type.tz)).cast(pa.int64())
    if col.null_count:
        raise ValueError(f"column {name!r} has {col.null_count} nulls; it is needed on every row")
    return col.to_numpy()


def _check_columns(table: pa.Table, label: str) -> None:
    missing = [c for c in (*REQUIRED_COLUMNS, label) if c not in table.column_names]
    if missing:
        raise ValueError(f"the impressions table lacks columns {missing} (has {table.column_names})")


def pair_history(table: pa.Table, label: str = "click") -> _PairHistory:
    """Each row's exposure history within ``table``: whether its (user, ad) pair was clicked on an
    earlier row (cumulative clicks strictly before it), whether the pair's history is complete, and
    the gap to the pair's next impression. Rows are returned in the table's order.

    Example::

        >>> h = pair_history(impressions)          # doctest: +SKIP
        >>> h.clicked_before.shape == (impressions.num_rows,)
        True
    """
    _check_columns(table, label)
    user, ad = _column(table, "user_id"), _column(table, "ad_id")
    time_us, exposure = _column(table, "event_time"), _column(table, "exposure_index").astype(np.int64)
    click = _column(table, label).astype(np.int64)
    n = table.num_rows
    # One sort puts every pair's rows together in time order; exposure breaks exact-time ties.
    order = np.lexsort((exposure, time_us, ad, user))
    u, a, t, c = user[order], ad[order], time_us[order], click[order]
    same_as_next = np.zeros(n, bool)
    if n > 1:
        same_as_next[:-1] = (u[1:] == u[:-1]) & (a[1:] == a[:-1])
    starts = np.ones(n, bool)
    starts[1:] = ~same_as_next[:-1]
    group = np.cumsum(starts) - 1
    cum = np.cumsum(c)
    before_group = (cum - c)[starts][group]  # clicks of earlier pairs in the sort order
    through = cum - before_group  # clicks of this pair up to and including this row
    gap = np.full(n, -1, np.int64)
    gap[same_as_next] = t[1:][same_as_next[:-1]] - t[:-1][same_as_next[:-1]]
    complete = (exposure[order][starts] == 1)[group]

    def unsort(x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        out[order] = x
        return out

    return _PairHistory(
        exposure=exposure,
        clicked_before=unsort(through - c > 0),
        clicked_through=unsort(through > 0),
        complete=unsort(complete),
        next_gap_us=unsort(gap),
        time_us=time_us,
    )


@dataclass
class ExposurePropensity:
    """Propensity of reaching the next exposure of a (user, ad) pair, and the IPW weights from it.

    Args:
        horizon_days: H, how soon after exposure n-1 a re-exposure counts as reaching exposure n.
        max_exposure: exposures at or above this share one stratum.
        prior_strength: pseudo-counts shrinking each stratum towards its pooled rate.
        label: the history label (the policy reacts to clicks).

    Example::

        >>> prop = ExposurePropensity(horizon_days=1.0).fit(impressions)     # doctest: +SKIP
        >>> w = prop.weights(train_table, "click", w_min=0.05)                 # doctest: +SKIP
        >>> w.shape, float(w.min()) >= 0.05, float(w.max()) <= 1.0
        ((61290,), True, True)
    """

    horizon_days: float = 1.0
    max_exposure: int = 10
    prior_strength: float = 20.0
    label: str = "click"
    # fitted: rows are exposure n = 0..max_exposure (0 and 1 unused), columns state never / clicked
    at_risk: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    reached: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    rho: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # never, clicked, pooled (= unknown)
    fit_rows: int = 0
    _last: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.horizon_days <= 0:
            raise ValueError(f"horizon_days must be > 0, got {self.horizon_days}")
        if self.max_exposure < 2:
            raise ValueError(f"max_exposure must be at least 2, got {self.max_exposure}")
        if self.prior_strength < 0:
            raise ValueError(f"prior_strength must be >= 0, got {self.prior_strength}")

    @property
    def fitted(self) -> bool:
        return self.rho.shape[0] > 0

    def fit(self, impressions: pa.Table, log_end_us: int | None = None) -> "ExposurePropensity":
        """Count, per (exposure n, click state), the pairs at exposure n-1 that reached n within H.

        ``log_end_us`` is the end of the log in microseconds since the epoch (default: its last
        ``event_time``); impressions later than ``log_end - H`` are right-censored.
        """
        if impressions.num_rows == 0:
            raise ValueError("cannot fit the exposure propensity on an empty impressions table")
        h = pair_history(impressions, self.label)
        horizon = int(round(self.horizon_days * US_PER_DAY))
        end = int(h.time_us.max()) if log_end_us is None else int(log_end_us)
        at_risk_rows = h.complete & (h.time_us <= end - horizon)
        if not at_risk_rows.any():
            span = (end - int(h.time_us.min())) / US_PER_DAY
            raise ValueError(
                f"no impression is followed by a full horizon of {self.horizon_days} days (the log spans "
                f"{span:.2f} days and needs pairs whose history starts at exposure 1): use a longer log "
                "or a shorter horizon_days"
            )
        # An impression at exposure k is at risk of exposure k+1, in the state after its own outcome.
        step = np.minimum(h.exposure[at_risk_rows] + 1, self.max_exposure)
        state = h.clicked_through[at_risk_rows].astype(np.int64)
        gap = h.next_gap_us[at_risk_rows]
        hit = (gap >= 0) & (gap <= horizon)
        size = self.max_exposure + 1
        self.at_risk = np.zeros((size, 2), np.int64)
        self.reached = np.zeros((size, 2), np.int64)
        np.add.at(self.at_risk, (step, state), 1)
        np.add.at(self.reached, (step, state), hit.astype(np.int64))
        self.fit_rows = int(at_risk_rows.sum())
        self.rho = self._smoothed()
        return self

    def _smoothed(self) -> np.ndarray:
        m = self.prior_strength
        risk, got = self.at_risk.astype(float), self.reached.astype(float)
        glob = got[2:].sum() / max(risk[2:].sum(), 1.0)
        # exposure level: shrink towards the global re-exposure rate; then each state towards its level.
        pooled = (got.sum(1) + m * glob) / np.maximum(risk.sum(1) + m, 1e-12)
        by_state = (got + m * pooled[:, None]) / np.maximum(risk + m, 1e-12)
        rho = np.column_stack([by_state, pooled])
        rho[:2] = np.nan  # exposures 0 and 1 have no continuation propensity
        return rho

    def propensity(self, exposure: np.ndarray, state: np.ndarray) -> np.ndarray:
        """``rho_n(s)`` for arrays of exposure n (>= 2) and state (0 never clicked, 1 clicked,
        2 unknown = pooled)."""
        self._require_fitted()
        n = np.clip(np.asarray(exposure, np.int64), 2, self.max_exposure)
        return self.rho[n, np.asarray(state, np.int64)]

    def weights(self, table: pa.Table, task: str, w_min: float = 0.1) -> np.ndarray:
        """IPW loss weights of ``task`` for every row of ``table`` (float32, table order):
        ``clip(rho_n(never) / rho_n(state), w_min, 1)`` on positives with exposure_index n >= 2, and
        exactly 1 on first exposures and negatives. The click history is read from ``table`` itself."""
        self._require_fitted()
        if not 0 < w_min <= 1:
            raise ValueError(f"w_min must be in (0, 1], got {w_min}")
        if task not in table.column_names:
            raise ValueError(f"the table has no label column {task!r}")
        h = pair_history(table, self.label)
        positive = _column(table, task).astype(np.int64) > 0
        weighted = positive & (h.exposure >= 2)
        state = np.where(h.clicked_before, STATE_CLICKED, np.where(h.complete, STATE_NEVER, STATE_UNKNOWN))
        w = np.ones(table.num_rows, np.float64)
        n = h.exposure[weighted]
        pi_first = self.propensity(n, np.zeros(n.size, np.int64))
        pi_n = self.propensity(n, state[weighted])
        ratio = np.divide(pi_first, pi_n, out=np.ones(n.size), where=pi_n > 0)
        w[weighted] = np.clip(ratio, w_min, 1.0)
        self._last = {"task": task, "w_min": w_min, "rows": table.num_rows, "weights": w[weighted],
                      "positives": int(positive.sum()), "state": state[weighted]}
        return w.astype(np.float32)

    def weight_summary(self) -> dict[str, Any]:
        """For logging: the fitted propensity per stratum and the distribution of the weights of the
        last ``weights()`` call over the positives it re-weighted (quantiles, share clipped at
        ``w_min``, share below 1, the effective number of positives)."""
        self._require_fitted()
        strata = []
        for n in range(2, self.max_exposure + 1):
            for s, name in ((0, "never"), (1, "clicked")):
                if self.at_risk[n, s]:
                    strata.append({"exposure": n, "clicked_before": name, "at_risk": int(self.at_risk[n, s]),
                                   "reached": int(self.reached[n, s]), "propensity": float(self.rho[n, s])})
        out: dict[str, Any] = {"horizon_days": self.horizon_days, "fit_rows": self.fit_rows, "strata": strata}
        if self._last:
            w, w_min = self._last["weights"], self._last["w_min"]
            q = np.quantile(w, [0.0, 0.1, 0.5, 0.9, 1.0]) if w.size else np.full(5, np.nan)
            out["weights"] = {
                "task": self._last["task"],
                "rows": self._last["rows"],
                "positives": self._last["positives"],
                "reweighted_positives": int(w.size),
                "clicked_before": int((self._last["state"] == STATE_CLICKED).sum()),
                "unknown_history": int((self._last["state"] == STATE_UNKNOWN).sum()),
                "quantiles": dict(zip(("min", "p10", "p50", "p90", "max"), map(float, q))),
                "mean": float(w.mean()) if w.size else float("nan"),
                "share_below_1": float((w < 1).mean()) if w.size else 0.0,
                "share_clipped": float(np.isclose(w, w_min).mean()) if w.size else 0.0,
                "effective_positives": float(self._last["positives"] - w.size + w.sum()),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings and counts (the smoothed rates are recomputed on load)."""
        return {"horizon_days": self.horizon_days, "max_exposure": self.max_exposure,
                "prior_strength": self.prior_strength, "label": self.label, "fit_rows": self.fit_rows,
                "at_risk": self.at_risk.tolist(), "reached": self.reached.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExposurePropensity":
        out = cls(horizon_days=d["horizon_days"], max_exposure=d["max_exposure"],
                  prior_strength=d["prior_strength"], label=d["label"])
        out.at_risk = np.asarray(d["at_risk"], np.int64).reshape(-1, 2)
        out.reached = np.asarray(d["reached"], np.int64).reshape(-1, 2)
        out.fit_rows = int(d["fit_rows"])
        if out.at_risk.shape[0]:
            out.rho = out._smoothed()
        return out

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("ExposurePropensity is not fitted: call fit(impressions) first")

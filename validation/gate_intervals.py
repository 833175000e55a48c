"""How sure the collapse and entanglement gates are of their values: a value's interval from its standard
error, the three-way verdict of an interval against a threshold (pass, fail, inconclusive), the bootstrap
of information abundance over a field's sampled rows, the standard error of a separation of conflicting
pairs (clustered by user and by ad), and the smallest separation of several task pairs with its
interval. Plain numpy; validation/gates.py decides with them.

Example::

    lo, hi = normal_interval(-0.0005, 0.0013, 0.95)          # (-0.0030, 0.0020)
    interval_verdict(lo, hi, 0.0, strict=True)                # "inconclusive": 0 lies inside
    ia_resamples(rows, resamples=30, seed=0)                  # [30] IA of rows drawn with replacement
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
STATUSES = (PASS, FAIL, INCONCLUSIVE)
# The config key that decides an inconclusive gate: the baseline gate has its own (default fail).
POLICY_KEYS = {"baseline": "gates.baseline_inconclusive"}


def policy_key(gate_name: Any) -> str:
    """The config key whose value (pass / fail) decides gate ``gate_name`` when it is inconclusive."""
    return POLICY_KEYS.get(str(gate_name), "gates.inconclusive")


RESAMPLE_CHUNK = 8  # resamples whose weighted Gram matrices are formed in one batched product


def normal_interval(value: float, se: float, level: float) -> tuple[float, float]:
    """``value ± z · se`` with ``z`` the two-sided normal quantile of ``level`` (1.96 at 0.95)."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return value - z * se, value + z * se


def interval_verdict(lo: float, hi: float, threshold: float, strict: bool) -> str:
    """``"pass"`` when the whole interval is on the right side of ``threshold`` (above it; with ``strict``
    strictly above), ``"fail"`` when the whole interval is on the wrong side, else ``"inconclusive"``."""
    if (lo > threshold) if strict else (lo >= threshold):
        return PASS
    if (hi <= threshold) if strict else (hi < threshold):
        return FAIL
    return INCONCLUSIVE


# ----- information abundance ------------------------------------------------------------------------------
def field_seed(seed: int, name: str) -> int:
    """A resampling seed per field name, stable across processes, so one field's rows are resampled the same
    way in every table (the tables' rows of a field are the same ids)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**32


def ia_resamples(rows: np.ndarray, resamples: int, seed: int = 0) -> np.ndarray:
    """IA of ``resamples`` bootstrap resamples of ``rows`` [n, d] (unit-norm rows, validation/
    information_abundance.py ``usable_rows``): [resamples] float64.

    A resample draws n rows with replacement, so its Gram matrix is ``rowsᵀ diag(c) rows`` with ``c`` the
    multinomial counts; the singular values are the square roots of its eigenvalues. The Gram matrices of
    ``RESAMPLE_CHUNK`` resamples are one batched product and their [d, d] eigenvalues one batched call.
    """
    n = rows.shape[0]
    if resamples < 1 or n < 2:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)  # [B, n]
    out = np.empty(resamples)
    for start in range(0, resamples, RESAMPLE_CHUNK):
        c = counts[start:start + RESAMPLE_CHUNK]
        gram = np.matmul((c[:, :, None] * rows[None]).transpose(0, 2, 1), rows)  # [b, d, d]
        sigma = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))  # ascending
        out[start:start + len(c)] = sigma.sum(axis=1) / sigma[:, -1]
    return out


# ----- separation of conflicting pairs ---------------------------------------------------------------------
def smallest_separation(pairs: Sequence[Mapping[str, Any]], level: float
                        ) -> tuple[float | None, tuple[float, float] | None]:
    """The smallest ``separation`` over task pairs (entanglement report dicts) and its interval at ``level``:
    from the smallest lower bound to the smallest upper bound, so it is above a bound exactly when every
    pair's interval is, and under it when some pair's is. The interval is None when a pair has no
    separation or no ``separation_se``."""
    def finite(x: Any) -> float | None:
        return None if x is None or not math.isfinite(float(x)) else float(x)

    seps = [finite(p.get("separation")) for p in pairs]
    ses = [finite(p.get("separation_se")) for p in pairs]
    defined = [v for v in seps if v is not None]
    value = min(defined) if defined else None
    if not pairs or any(v is None for v in [*seps, *ses]):
        return value, None
    bounds = [normal_interval(v, se, level) for v, se in zip(seps, ses)]  # type: ignore[arg-type]
    return value, (min(lo for lo, _ in bounds), min(hi for _, hi in bounds))


def clustered_separation_se(x_a: np.ndarray, x_b: np.ndarray, pairs_a: np.ndarray, pairs_b: np.ndarray
                            ) -> float | None:
    """Standard error of ``(mean(x_b) - mean(x_a)) / 2``, the separation when ``x`` is a pair's distance
    under A's table minus under B's (validation/entanglement.py), with ``pairs_*`` [n, 2] (user row, ad
    row). Pairs sharing a user (or an ad) share that row, so they are not independent: the variance is
    the two-way clustered one (users, ads; Cameron, Gelbach and Miller 2011), ``V_user + V_ad - V_pair``
    (at least the larger one-way variance), each with its ``G / (G - 1)`` small-sample factor. The
    normalising scale of each table is taken as fixed. None when a set has fewer than 2 pairs or the
    pairs have fewer than 2 users or 2 ads (too few to estimate a spread).
    """
    n_a, n_b = len(x_a), len(x_b)
    if n_a < 2 or n_b < 2:
        return None
    psi = np.concatenate([-(x_a - x_a.mean()) / n_a, (x_b - x_b.mean()) / n_b]) / 2  # influence of each pair
    pairs = np.concatenate([pairs_a, pairs_b])
    variances = []
    for key in (pairs[:, 0], pairs[:, 1]):
        groups, inverse = np.unique(key, return_inverse=True)
        if len(groups) < 2:
            return None
        sums = np.bincount(inverse, weights=psi, minlength=len(groups))
        variances.append(len(groups) / (len(groups) - 1) * float(np.sum(sums ** 2)))
    n = len(psi)
    v_pair = n / (n - 1) * float(np.sum(psi ** 2))
    v_user, v_ad = variances
    v = max(v_user + v_ad - v_pair, v_user, v_ad)
    return math.sqrt(v)


__all__ = ["FAIL", "INCONCLUSIVE", "PASS", "POLICY_KEYS", "STATUSES", "policy_key", "clustered_separation_se", "field_seed", "ia_resamples",
           "interval_verdict", "normal_interval", "smallest_separation"]

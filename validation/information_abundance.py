"""Information abundance, the measure of dimensional collapse (METHODS.md "Dimensional collapse"):
``IA(E) = Σ_k σ_k / max_k σ_k`` of a matrix ``E`` [n, d] whose rows are L2-normalised first, between 1
(every row on one line) and ``min(n, d)`` (a flat spectrum); the row selection it is computed on
(zero and unread rows dropped, at most ``max_rows`` drawn ∝ weights) and the spectra. Plain numpy,
float64 SVDs; validation/collapse.py applies it to every field of a ranker's tables.

Example::

    information_abundance(np.random.default_rng(0).normal(size=(5000, 16)))   # ≈ 14.6 (d = 16)
"""

from __future__ import annotations

from typing import Any

import numpy as np


def finite_matrix(matrix: Any) -> np.ndarray:
    """A 2-D float64 copy of a numpy array or a (possibly GPU, possibly grad-tracking) torch tensor."""
    if hasattr(matrix, "detach"):  # a torch tensor; no torch import needed to recognise it
        matrix = matrix.detach().float().cpu().numpy()
    out = np.asarray(matrix, dtype=np.float64)
    if out.ndim != 2:
        raise ValueError(f"expected a 2-D matrix [rows, dim], got shape {out.shape}")
    if not np.isfinite(out).all():
        raise ValueError("the matrix has NaN or infinite entries")
    return out


def weighted_sample(weights: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """``k`` distinct indices drawn without replacement with probability proportional to ``weights``
    (successive draws, as ``numpy.random.choice(replace=False, p=...)``), in sorted order.

    Vectorised with exponential keys (Efraimidis-Spirakis): index i gets ``Exp(1) / w_i`` and the ``k``
    smallest keys win. Zero weights are never drawn; ``k`` must not exceed the number of positive weights.
    """
    w = np.asarray(weights, dtype=np.float64)
    positive = int((w > 0).sum())
    if k > positive:
        raise ValueError(f"cannot draw {k} distinct rows from {positive} rows with positive weight")
    rng = np.random.default_rng(seed)
    with np.errstate(divide="ignore"):
        keys = np.where(w > 0, rng.exponential(size=len(w)) / np.where(w > 0, w, 1.0), np.inf)
    return np.sort(np.argpartition(keys, k - 1)[:k]) if k else np.zeros(0, dtype=np.int64)


def usable_rows(matrix: Any, max_rows: int | None = None, weights: Any = None, seed: int = 0) -> np.ndarray:
    """The rows information abundance is computed on: [n_used, d] float64, each of unit L2 norm.

    Rows with weight 0 (when ``weights`` [rows] is given) and all-zero rows are dropped; when more than
    ``max_rows`` remain, ``max_rows`` are drawn without replacement, with probability proportional to
    ``weights`` when given, else uniformly. ``seed`` makes the draw repeatable.
    """
    x = finite_matrix(matrix)
    keep = np.linalg.norm(x, axis=1) > 0
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != x.shape[0]:
            raise ValueError(f"weights have {w.shape[0]} entries for a matrix of {x.shape[0]} rows")
        if (w < 0).any() or not np.isfinite(w).all():
            raise ValueError("weights must be finite and non-negative")
        keep &= w > 0
    idx = np.flatnonzero(keep)
    if max_rows is not None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if len(idx) > max_rows:
            pick = weighted_sample(w[idx] if w is not None else np.ones(len(idx)), max_rows, seed)
            idx = idx[pick]
    x = x[idx]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def singular_values(rows: np.ndarray) -> np.ndarray:
    """Singular values of ``rows`` [n, d] (float64, descending; length min(n, d))."""
    if rows.shape[0] == 0:
        raise ValueError("no usable rows (every row is zero or has weight 0)")
    return np.linalg.svd(rows, compute_uv=False)


def information_abundance(matrix: Any, max_rows: int | None = None, weights: Any = None, seed: int = 0) -> float:
    """``IA = Σσ / max σ`` of ``matrix`` [rows, d] after :func:`usable_rows` (L2-normalised rows, zero rows
    and zero-weight rows dropped, at most ``max_rows`` sampled ∝ ``weights``). In ``[1, min(n_used, d)]``.

    Example::

        information_abundance(np.random.default_rng(0).normal(size=(5000, 16)))   # ≈ 14.6 (d = 16)
        information_abundance(np.outer(np.arange(1, 9), np.ones(16)))              # 1.0 (rank 1)
    """
    sigma = singular_values(usable_rows(matrix, max_rows, weights, seed))
    return float(sigma.sum() / sigma[0])


def normalised_spectrum(matrix: Any, max_rows: int | None = None, weights: Any = None, seed: int = 0) -> np.ndarray:
    """``σ / max σ`` of the usable rows (same row selection as :func:`information_abundance`), descending,
    length ``min(n_used, d)``. Its sum is the IA."""
    sigma = singular_values(usable_rows(matrix, max_rows, weights, seed))
    return sigma / sigma[0]


def ia_of_stack(x: np.ndarray) -> np.ndarray:
    """IA of each matrix of a stack [k, n, d] (rows normalised here; zero rows contribute nothing) -> [k]."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    sigma = np.linalg.svd(x, compute_uv=False)  # [k, min(n, d)], batched LAPACK
    top = sigma[:, 0]
    return np.divide(sigma.sum(axis=1), top, out=np.full(len(top), np.nan), where=top > 0)


__all__ = [
    "finite_matrix",
    "ia_of_stack",
    "information_abundance",
    "normalised_spectrum",
    "singular_values",
    "usable_rows",
    "weighted_sample",
]

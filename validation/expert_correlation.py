"""Inter-expert correlation of a multi-task ranker (METHODS.md "Interest entanglement"): the mean
absolute Pearson correlation between every pair of experts' outputs over a batch, and the matrix.
torch is imported on first use only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from validation.model_arrays import as_numpy, unwrap_ranker


def expert_correlation_matrix(
    ranker: Any, batch: Mapping[str, Any], max_rows: int, seed: int
) -> tuple[float, np.ndarray, list[str]]:
    import torch

    tensors = {k: torch.as_tensor(as_numpy(v)) for k, v in batch.items()}
    n = len(next(iter(tensors.values())))
    if n < 2:
        raise ValueError("expert correlation needs a batch of at least 2 rows")
    if n > max_rows:
        take = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False)))
        tensors = {k: v.index_select(0, take) for k, v in tensors.items()}
    device = next(ranker.parameters()).device
    tensors = {k: v.to(device) for k, v in tensors.items()}
    was_training = ranker.training
    ranker.eval()
    try:
        with torch.no_grad():
            outputs = ranker.forward_with_aux(tensors)[1]["expert_outputs"]
    finally:
        ranker.train(was_training)
    names = list(outputs)
    widths = {tuple(v.shape[1:]) for v in outputs.values()}
    if len(widths) != 1:
        raise ValueError(f"experts have different output shapes {sorted(widths)}: cannot correlate them")
    x = torch.stack([outputs[k].float() for k in names]).cpu().numpy().astype(np.float64)  # [E, B, h]
    x = x.reshape(x.shape[0], x.shape[1], -1)
    mean, std = x.mean(axis=1, keepdims=True), x.std(axis=1, keepdims=True)
    z = np.divide(x - mean, std, out=np.zeros_like(x), where=std > 0)  # constant dims -> 0
    flat = z.reshape(z.shape[0], -1)  # [E, B*h]
    norms = np.linalg.norm(flat, axis=1)
    denom = np.outer(norms, norms)
    matrix = np.divide(flat @ flat.T, denom, out=np.full(denom.shape, np.nan), where=denom > 0)
    upper = matrix[np.triu_indices(len(names), k=1)]
    upper = upper[np.isfinite(upper)]
    return (float(np.abs(upper).mean()) if len(upper) else math.nan), matrix, names


def expert_correlation(model: Any, batch: Mapping[str, Any], max_rows: int = 4096, seed: int = 0
                       ) -> tuple[float, np.ndarray]:
    """Mean absolute Pearson correlation between every pair of experts' outputs over ``batch``.

    The outputs ``model.forward_with_aux(batch)[1]["expert_outputs"]`` ({name: [B, h]}, in that order:
    the plan's experts, then PLE's upper-level ones) are standardised per output dimension over the batch
    (constant dimensions, e.g. dead ReLUs, become 0), flattened to [B*h] and correlated: r_ab is the Pearson
    correlation of the flattened standardised outputs, which equals the mean over matching dimensions of the
    per-dimension correlations when no dimension is constant. Note that this compares dimension k of one
    expert with dimension k of another; independently initialised experts can be redundant up to a
    permutation of their units, which this measure does not see.

    Args:
        model: a Ranker or TrainedModel.
        batch: an encoded batch (tensors or numpy arrays); at most ``max_rows`` rows (sampled) are used.

    Returns:
        (mean |r| over expert pairs in [0, 1], NaN with a single expert; matrix [E, E], NaN where an expert's
        output is constant over the batch).
    """
    mean_abs, matrix, _ = expert_correlation_matrix(unwrap_ranker(model), batch, max_rows, seed)
    return mean_abs, matrix


__all__ = ["expert_correlation", "expert_correlation_matrix"]

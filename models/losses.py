"""Training losses: combined-pair ranking loss per task, the multi-task sum, inter-expert de-correlation.

Kept apart from the model (TorchRec style: the model returns logits, a thin training wrapper scores them).
Everything is computed in float32 whatever the autocast dtype of the logits.

- ``L_pair = −1/(N⁺N⁻) Σ_{i∈pos} Σ_{j∈neg} log σ(z_i − z_j)`` (RankNet over all in-batch pairs).
- ``L = α·BCE_w + (1 − α)·L_pair``, with ``BCE_w = mean_i w_i·BCE(z_i, y_i)`` (IPW weights ``w``); a batch
  without positives or without negatives gets ``BCE_w`` alone. The pairwise term is unweighted (METHODS.md).
- De-correlation: mean absolute Pearson correlation between the output dimensions of each pair of experts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F


def pairwise_ranking_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """RankNet loss averaged over every (positive, negative) pair of the batch.

    Args:
        logits: [B] scores.
        labels: [B], positive where > 0.5.

    Returns a scalar; NaN-free 0 when there is no pair (callers fall back to BCE then).

    Example::

        pairwise_ranking_loss(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0]))
        # = (softplus(-2) + softplus(-1)) / 2
    """
    z = logits.float().reshape(-1)
    positive = labels.reshape(-1) > 0.5
    pos, neg = z[positive], z[~positive]  # boolean indexing: N⁺ x N⁻ stays small when positives are rare
    if pos.numel() == 0 or neg.numel() == 0:
        return z.sum() * 0.0
    # −log σ(z_i − z_j) = softplus(z_j − z_i)
    return F.softplus(neg.unsqueeze(0) - pos.unsqueeze(1)).mean()


def combined_pair_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, alpha: float
) -> torch.Tensor:
    """``α·BCE_w + (1 − α)·L_pair``; BCE alone when the batch lacks positives or negatives.

    Args:
        logits: [B]. labels: [B] in {0, 1}. weights: [B] per-sample BCE weights (IPW), or None for 1.
        alpha: weight of the BCE term, in [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    z, y = logits.float().reshape(-1), labels.float().reshape(-1)
    w = None if weights is None else weights.float().reshape(-1)
    bce = F.binary_cross_entropy_with_logits(z, y, weight=w)
    if alpha == 1.0:
        return bce
    # The fallback is chosen on the device (torch.where), not with int(n_pos): it needs no host sync of its
    # own (the pairwise term's boolean indexing is then the step's only one). Without a pair the pairwise
    # term is an exact 0 with a 0 gradient, so the unselected branch adds nothing (and no NaN).
    n_pos = (y > 0.5).sum()
    has_pairs = (n_pos > 0) & (n_pos < y.numel())
    return torch.where(has_pairs, alpha * bce + (1.0 - alpha) * pairwise_ranking_loss(z, y), bce)


def multitask_loss(
    logits: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    tasks: Sequence[str],
    alphas: Mapping[str, float],
    task_weights: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``Σ_t task_weight_t · combined_pair_loss_t``.

    Args:
        logits: {task: [B]}.
        labels: [B, T] in ``tasks`` order. weights: [B, T] IPW weights, or None.
        tasks: task order of the label columns.
        alphas: {task: α}; a task missing from it is an error.
        task_weights: {task: weight}; missing tasks weigh 1.

    Returns ``(total, {task: loss})`` (per-task losses keep their graph; ``.item()`` them to log).
    """
    missing = [t for t in tasks if t not in alphas]
    if missing:
        raise KeyError(f"no alpha for tasks {missing}")
    if labels.dim() != 2 or labels.shape[1] != len(tasks):
        raise ValueError(f"labels must be [B, {len(tasks)}] for tasks {tuple(tasks)}, got {tuple(labels.shape)}")
    task_weights = task_weights or {}
    per_task: dict[str, torch.Tensor] = {}
    total = None
    for t, task in enumerate(tasks):
        loss = combined_pair_loss(logits[task], labels[:, t], None if weights is None else weights[:, t], alphas[task])
        per_task[task] = loss
        term = float(task_weights.get(task, 1.0)) * loss
        total = term if total is None else total + term
    assert total is not None
    return total, per_task


def expert_decorrelation(outputs: Sequence[torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """Mean absolute Pearson correlation between experts, over a batch.

    Each expert output [B, h] is standardised per dimension; for each pair of experts (a, b) the h_a x h_b
    cross-correlation matrix ``Z_aᵀ Z_b / B`` is averaged in absolute value; the result is the mean over pairs.
    A constant output dimension contributes 0. Fewer than two experts give 0.

    Example::

        x = torch.randn(256, 8)
        expert_decorrelation([x, x])   # close to (1 + 7·E|r_noise|) / 8, the diagonal being exactly 1
    """
    if len(outputs) < 2:
        return outputs[0].float().sum() * 0.0 if outputs else torch.tensor(0.0)
    z = []
    for out in outputs:
        o = out.float()
        o = o - o.mean(dim=0, keepdim=True)
        z.append(o / (o.pow(2).mean(dim=0, keepdim=True).sqrt() + eps))
    batch = z[0].shape[0]
    total, pairs = None, 0
    for a in range(len(z)):
        for b in range(a + 1, len(z)):
            corr = (z[a].transpose(0, 1) @ z[b]).abs().mean() / batch
            total = corr if total is None else total + corr
            pairs += 1
    assert total is not None
    return total / pairs

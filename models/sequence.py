"""Behaviour-sequence encoders: TIM (Temporal Interest Module), DIN-style attention, masked mean.

All three are parameter-free: the item, target and temporal embeddings come from the ranker's tables
(``models/embeddings.py``), so every table gets its own sequence representation. Leading dimensions are
free (``...`` below is ``[B]`` or ``[tables, B]``).

TIM (METHODS.md): ``ẽ_i = e_i + p(f_i)``, ``ṽ_t = v_t + p(0)``,
``α = softmax_i(⟨ẽ_i, ṽ_t⟩ / √d)`` over real positions, ``u = Σ_i α_i (ẽ_i ⊙ ṽ_t)``.
DIN baseline: ``α = softmax_i(⟨e_i, v_t⟩ / √d)``, ``u = Σ_i α_i e_i`` (no temporal term, no ⊙ target).
A sequence with no real behaviour gives ``u = 0``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim counting only ``mask`` positions; all-masked rows give all zeros.

    Filling with the dtype's lowest finite value (not -inf) keeps all-masked rows finite; multiplying by the
    mask then zeroes them. Elsewhere masked entries are exp(min - max) = 0 exactly.
    """
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=-1) * mask.to(scores.dtype)


class TemporalInterest(nn.Module):
    """TIM: target-aware attention with target-relative temporal embeddings, then ⊙ target.

    Example::

        tim = TemporalInterest()
        items, target = torch.randn(4, 10, 16), torch.randn(4, 16)
        mask = torch.ones(4, 10, dtype=torch.bool)
        tim(items, target, mask, torch.randn(4, 10, 16), torch.randn(4, 16)).shape   # torch.Size([4, 16])
    """

    def forward(
        self,
        items: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        temporal: torch.Tensor | None = None,
        target_temporal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: items ``e`` [..., L, d]; target ``v`` [..., d]; mask [..., L] (True = real behaviour);
        temporal ``p(f_i)`` broadcastable to items; target_temporal ``p(0)`` broadcastable to target.
        Returns ``u`` [..., d]."""
        e = items if temporal is None else items + temporal
        v = target if target_temporal is None else target + target_temporal
        scores = torch.matmul(e, v.unsqueeze(-1)).squeeze(-1) / math.sqrt(e.shape[-1])  # [..., L]
        alpha = masked_softmax(scores, mask)
        pooled = torch.matmul(alpha.unsqueeze(-2), e).squeeze(-2)  # Σ α_i ẽ_i, [..., d]
        return pooled * v  # = Σ α_i (ẽ_i ⊙ ṽ_t)


class DINAttention(nn.Module):
    """Target attention without temporal encoding and without ⊙ target (TIM's baseline).

    Example::

        DINAttention()(torch.randn(4, 10, 16), torch.randn(4, 16), torch.ones(4, 10, dtype=torch.bool)).shape
        # torch.Size([4, 16])
    """

    def forward(
        self,
        items: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        temporal: torch.Tensor | None = None,
        target_temporal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Same arguments as :class:`TemporalInterest`; the temporal ones are ignored. Returns [..., d]."""
        scores = torch.matmul(items, target.unsqueeze(-1)).squeeze(-1) / math.sqrt(items.shape[-1])
        alpha = masked_softmax(scores, mask)
        return torch.matmul(alpha.unsqueeze(-2), items).squeeze(-2)


class MeanPooling(nn.Module):
    """Mean of the real behaviours' embeddings (0 for an empty sequence).

    Example::

        MeanPooling()(torch.randn(4, 10, 16), torch.randn(4, 16), torch.ones(4, 10, dtype=torch.bool)).shape
        # torch.Size([4, 16])
    """

    def forward(
        self,
        items: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        temporal: torch.Tensor | None = None,
        target_temporal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Same arguments as :class:`TemporalInterest`; only items and mask are used. Returns [..., d]."""
        m = mask.to(items.dtype)
        total = torch.matmul(m.unsqueeze(-2), items).squeeze(-2)
        return total / m.sum(-1, keepdim=True).clamp_min(1.0)


def build_sequence_encoder(kind: str | None) -> nn.Module | None:
    """``"tim"`` / ``"din"`` / ``"mean"`` -> the encoder; None -> None."""
    encoders: dict[str, type[nn.Module]] = {"tim": TemporalInterest, "din": DINAttention, "mean": MeanPooling}
    if kind is None:
        return None
    if kind not in encoders:
        raise ValueError(f"unknown sequence encoder {kind!r}; choose one of {sorted(encoders)}")
    return encoders[kind]()

"""Groups of independent linear layers / MLPs run as one batched matmul.

Experts, gates and towers come in groups of identically shaped networks with separate weights (one per
expert, gate or task). Looping over them launches many small kernels; stacking their weights as
``[G, in, out]`` and calling ``baddbmm`` runs the whole group in one. Member ``g`` of a group is exactly a
``Linear`` / MLP of its own: its output depends only on its input slice and its weight slice, so gradients
stay separate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class BatchedLinear(nn.Module):
    """G independent ``Linear(in_dim, out_dim)`` layers.

    Args:
        groups: G, number of independent layers.
        in_dim: input width.
        out_dim: output width.

    Example::

        layer = BatchedLinear(3, 8, 4)
        layer(torch.randn(3, 5, 8)).shape   # torch.Size([3, 5, 4]): member g maps x[g]
        layer(torch.randn(5, 8)).shape      # torch.Size([3, 5, 4]): every member reads the same input
    """

    def __init__(self, groups: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.groups, self.in_dim, self.out_dim = groups, in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(groups, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(groups, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The same bound nn.Linear's default init gives, per member.
        bound = 1.0 / math.sqrt(self.in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [G, B, in] (one input per member) or [B, in] (shared). Returns [G, B, out]."""
        if x.dim() == 2:
            # Shared input: one [B, in] x [in, G*out] matmul instead of G copies of x.
            w = self.weight.transpose(0, 1).reshape(self.in_dim, self.groups * self.out_dim)
            out = (x @ w).view(x.shape[0], self.groups, self.out_dim).transpose(0, 1)
            return out + self.bias.unsqueeze(1)
        if x.dim() != 3 or x.shape[0] != self.groups or x.shape[-1] != self.in_dim:
            raise ValueError(
                f"BatchedLinear expects [{self.groups}, B, {self.in_dim}] or [B, {self.in_dim}], got {tuple(x.shape)}"
            )
        return torch.baddbmm(self.bias.unsqueeze(1).to(x.dtype), x, self.weight.to(x.dtype))


class BatchedMLP(nn.Module):
    """G independent MLPs ``Linear -> ReLU -> [Dropout]`` per hidden width.

    Args:
        groups: G, number of independent MLPs.
        in_dim: input width.
        hidden: widths of the layers; each is followed by ReLU unless it is the last and
            ``final_activation`` is False (towers and gates end with a plain linear layer).
        dropout: dropout probability after each activation.
        final_activation: apply ReLU (and dropout) after the last layer too (experts: yes).

    Example::

        mlp = BatchedMLP(4, 32, (64, 16))
        mlp(torch.randn(4, 10, 32)).shape   # torch.Size([4, 10, 16])
    """

    def __init__(
        self,
        groups: int,
        in_dim: int,
        hidden: Sequence[int],
        dropout: float = 0.0,
        final_activation: bool = True,
    ) -> None:
        super().__init__()
        widths = [in_dim, *hidden]
        self.layers = nn.ModuleList(BatchedLinear(groups, a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.final_activation = final_activation
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [G, B, in] or [B, in] (shared). Returns [G, B, hidden[-1]] (``x`` itself if no layers)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last or self.final_activation:
                x = torch.relu(x)
                if self.dropout is not None:
                    x = self.dropout(x)
        return x

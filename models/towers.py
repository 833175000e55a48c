"""Task towers: one MLP per task from its mixed expert output to one logit, batched across tasks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.batched import BatchedMLP


class Towers(nn.Module):
    """T towers ``Linear -> ReLU`` per hidden width, then ``Linear -> 1`` (the logit).

    Args:
        n_tasks: T.
        in_dim: width of each task's input (the expert output width h).
        hidden: hidden widths.
        dropout: dropout after each hidden activation.

    Example::

        towers = Towers(2, in_dim=16, hidden=(32,))
        towers(torch.randn(2, 8, 16)).shape   # torch.Size([2, 8]): per task logits
        towers(torch.randn(8, 16)).shape      # torch.Size([2, 8]): every task reads the same input
    """

    def __init__(self, n_tasks: int, in_dim: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = BatchedMLP(n_tasks, in_dim, (*hidden, 1), dropout, final_activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [T, B, in] or shared [B, in]. Returns logits [T, B]."""
        return self.mlp(x).squeeze(-1)

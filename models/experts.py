"""Experts: MLP, DCNv2 cross network and GwPFM, each ending in a non-linearity, each reading one table.

A bank holds ``n`` experts of one kind over tables of one width, with weights stacked so the bank runs as
batched matmuls. Expert ``e`` of a bank reads ``x[e]``, the embeddings of its own table ([B, F, w]), and
nothing else; its output is [B, h] with ``h = hidden[-1]``. The final ReLU matters: without a
non-linearity after the interaction, multi-embedding collapses to a single embedding (METHODS.md).

- MLP: ``ReLU(W_k ... ReLU(W_1 flat(x)))``.
- DCNv2: ``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l`` for ``cross_layers`` layers on ``x_0 = flat(x)``, then
  the MLP.
- GwPFM: the table is ``G·d`` wide; field i's row splits into G sub-embeddings ``v_{i,g}`` (one per field
  group it can meet); ``h = Σ_{i<j} r_{g(i),g(j)} (v_{i,g(j)} ⊙ v_{j,g(i)})`` with learned group-pair weights
  ``r`` (init 1), then the MLP. Computed in O(F·G·d) with per-group sums, not over field pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.batched import BatchedLinear, BatchedMLP


class MLPExperts(nn.Module):
    """``n`` MLP experts over [B, F, w] tables.

    Args:
        n: experts in the bank.
        n_fields: F.
        width: w.
        hidden: layer widths (each followed by ReLU).
        dropout: dropout after each activation.

    Example::

        MLPExperts(3, n_fields=5, width=8, hidden=(32, 16))(torch.randn(3, 10, 5, 8)).shape   # [3, 10, 16]
    """

    def __init__(self, n: int, n_fields: int, width: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = BatchedMLP(n, n_fields * width, hidden, dropout, final_activation=True)
        self.out_dim = self.mlp.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [n, B, F, w] -> [n, B, h]."""
        return self.mlp(x.flatten(2))


class DCNv2Experts(nn.Module):
    """``n`` DCNv2 experts: a full-rank cross network then an MLP (stacked structure).

    Args:
        n: experts in the bank.
        n_fields: F.
        width: w.
        hidden: MLP widths after the cross layers.
        cross_layers: number of cross layers.
        dropout: dropout after each MLP activation.

    Example::

        DCNv2Experts(2, n_fields=5, width=8, hidden=(16,))(torch.randn(2, 10, 5, 8)).shape   # [2, 10, 16]
    """

    def __init__(
        self,
        n: int,
        n_fields: int,
        width: int,
        hidden: Sequence[int],
        cross_layers: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dim = n_fields * width
        self.cross = nn.ModuleList(BatchedLinear(n, dim, dim) for _ in range(cross_layers))
        self.mlp = BatchedMLP(n, dim, hidden, dropout, final_activation=True)
        self.out_dim = self.mlp.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [n, B, F, w] -> [n, B, h]."""
        x0 = x.flatten(2)  # [n, B, F*w]
        xl = x0
        for layer in self.cross:
            xl = x0 * layer(xl) + xl
        return self.mlp(xl)

    def first_cross_weight(self) -> torch.Tensor:
        """W of the first cross layer, [n, F*w, F*w] (``x W``): blocks ``W_{i→j}`` for interaction collapse."""
        return self.cross[0].weight.detach()


class GwPFMExperts(nn.Module):
    """``n`` GwPFM experts (group-weighted part-aware FM, then an MLP).

    Args:
        n: experts in the bank.
        field_groups: group id of every field (``0..G-1``).
        sub_dim: d, width of each sub-embedding; the table is ``G·d`` wide.
        hidden: MLP widths after the FM.
        dropout: dropout after each MLP activation.

    Example::

        ex = GwPFMExperts(2, field_groups=[0, 0, 1], sub_dim=4, hidden=(8,))
        ex(torch.randn(2, 10, 3, 2 * 4)).shape   # torch.Size([2, 10, 8])
    """

    def __init__(
        self, n: int, field_groups: Sequence[int], sub_dim: int, hidden: Sequence[int], dropout: float = 0.0
    ) -> None:
        super().__init__()
        groups = torch.tensor(list(field_groups), dtype=torch.long)
        self.n_groups = int(groups.max()) + 1 if len(groups) else 1
        self.sub_dim = sub_dim
        self.register_buffer("field_group", groups, persistent=False)
        self.register_buffer("membership", nn.functional.one_hot(groups, self.n_groups).float(), persistent=False)
        self.register_buffer("upper", torch.triu(torch.ones(self.n_groups, self.n_groups), 1), persistent=False)
        self.pair_weight = nn.Parameter(torch.ones(n, self.n_groups, self.n_groups))  # r_{g,h}, init 1
        self.mlp = BatchedMLP(n, sub_dim, hidden, dropout, final_activation=True)
        self.out_dim = self.mlp.out_dim

    def interaction(self, x: torch.Tensor) -> torch.Tensor:
        """The FM term ``Σ_{i<j} r_{g(i)g(j)} v_{i,g(j)} ⊙ v_{j,g(i)}``: [n, B, F, G·d] -> [n, B, d]."""
        n, b, f, _ = x.shape
        v = x.view(n, b, f, self.n_groups, self.sub_dim)  # v[..., i, h, :] = v_{i,h}
        member = self.membership.to(v.dtype)
        # a[g, h] = Σ_{i in group g} v_{i,h}
        a = torch.einsum("nbfhd,fg->nbghd", v, member)
        # Cross-group pairs (g < h): Σ_{i∈g, j∈h} v_{i,h} ⊙ v_{j,g} = a[g,h] ⊙ a[h,g].
        cross = a * a.transpose(2, 3)
        r = self.pair_weight.to(v.dtype)
        upper = self.upper.to(v.dtype)
        out = torch.einsum("nbghd,ngh->nbd", cross, r * upper)
        # Same-group pairs: ½((Σ_{i∈g} v_{i,g})² − Σ_{i∈g} v_{i,g}²).
        own = v[:, :, torch.arange(f, device=x.device), self.field_group]  # v_{i,g(i)}, [n, B, F, d]
        square_sum = torch.einsum("nbfd,fg->nbgd", own * own, member)
        diag_a = torch.diagonal(a, dim1=2, dim2=3).permute(0, 1, 3, 2)  # a[g,g], [n, B, G, d]
        same = 0.5 * (diag_a * diag_a - square_sum)
        return out + torch.einsum("nbgd,ng->nbd", same, torch.diagonal(r, dim1=1, dim2=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [n, B, F, G·d] -> [n, B, h]."""
        return self.mlp(self.interaction(x))


def build_expert_bank(
    kind: str,
    n: int,
    n_fields: int,
    width: int,
    field_groups: Sequence[int],
    hidden: Sequence[int],
    cross_layers: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """A bank of ``n`` experts of ``kind`` (``"mlp"``, ``"dcnv2"``, ``"gwpfm"``) over [B, F, width] tables."""
    if kind == "mlp":
        return MLPExperts(n, n_fields, width, hidden, dropout)
    if kind == "dcnv2":
        return DCNv2Experts(n, n_fields, width, hidden, cross_layers, dropout)
    if kind == "gwpfm":
        n_groups = max(field_groups) + 1
        if width % n_groups:
            raise ValueError(f"GwPFM table width {width} is not a multiple of its {n_groups} field groups")
        return GwPFMExperts(n, field_groups, width // n_groups, hidden, dropout)
    raise ValueError(f"unknown expert kind {kind!r}; choose mlp, dcnv2 or gwpfm")

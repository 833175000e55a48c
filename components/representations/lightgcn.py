"""LightGCN trained with BPR on a user-ad click graph (issue 3, DESIGN.md section 6): the model and its training.

The click log of a training window is a bipartite graph: users on one side, ads on the other, an edge
for every (user, ad) pair with at least one click (repeated clicks on a pair count once, as in
LightGCN). LightGCN (He et al., 2020) learns one free "ego" vector per node, ``E0``, and smooths it
over the graph with the symmetric-normalised adjacency, without weights or non-linearities::

    A_hat = D^-1/2 A D^-1/2            (A: the (users + ads)^2 bipartite adjacency, D: its degrees)
    E_{k+1} = A_hat E_k,  k = 0..K-1
    E = (E_0 + E_1 + ... + E_K) / (K + 1)

A user-ad score is the dot product of their final vectors. Training minimises BPR over mini-batches of
click edges ``(u, i)`` with one negative ad ``j`` per edge, drawn uniformly from the graph's ads (and
redrawn, vectorised, while it hits one of the user's own clicks)::

    loss = mean( softplus(-(e_u . e_i - e_u . e_j)) ) + reg / 2 * (|e0_u|^2 + |e0_i|^2 + |e0_j|^2) / B

with Adam. ``A_hat`` is a torch sparse tensor and every step is a handful of sparse-dense products and
gathers, so nothing loops over edges in Python. CPU runs are deterministic for a fixed seed.

Users and ads unseen in the graph get the zero vector and ``found=False`` (:class:`GraphVectors`). The
daily refresh and the snapshots on disk are in components/representations/graph.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Training knobs that are not (yet) in RepresentationConfig; the LightGCN paper's defaults where they exist.
DEFAULT_BATCH_SIZE = 2048  # click edges per BPR step (the LightGCN paper's)
DEFAULT_REG = 1e-4  # L2 weight on the ego vectors of the batch (LightGCN's lambda)
DEFAULT_INIT_STD = 0.1  # N(0, 0.1^2) initial ego vectors
NEGATIVE_RESAMPLE_ROUNDS = 10  # redraw negatives that hit a positive at most this often


@dataclass(eq=False)
class GraphVectors:
    """User and ad vectors of one LightGCN run.

    ``user_ids`` / ``ad_ids`` are sorted ascending (int64); row ``r`` of ``user_vectors`` belongs to
    ``user_ids[r]``. ``*_vectors`` are the final (layer-averaged) embeddings, the ones to score and
    compare with; ``*_ego`` are the trained layer-0 parameters, kept so tomorrow's run can warm-start
    from them. ``epoch_losses`` is the mean training loss of each epoch and ``initial_loss`` the loss
    of the starting vectors on the first epoch's (edge, negative) pairs, before any update.

    Example::

        gv = train_lightgcn(np.array([1, 1, 2]), np.array([10, 11, 10]), dim=8, layers=2, epochs=5,
                            lr=0.01, seed=0)
        vecs, found = gv.lookup_users(np.array([2, 99]))   # vecs: (2, 8); found: [True, False]
    """

    user_ids: np.ndarray
    user_vectors: np.ndarray
    ad_ids: np.ndarray
    ad_vectors: np.ndarray
    user_ego: np.ndarray | None = None
    ad_ego: np.ndarray | None = None
    epoch_losses: tuple[float, ...] = ()
    initial_loss: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.user_vectors.shape[1])

    def lookup_users(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Final vectors of ``ids`` ([m, dim] float32) and whether each was in the graph ([m] bool);
        unseen users get the zero vector."""
        return _lookup(self.user_ids, self.user_vectors, ids)

    def lookup_ads(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Final vectors of ad ``ids`` and whether each was in the graph; unseen ads get the zero vector."""
        return _lookup(self.ad_ids, self.ad_vectors, ids)


def _lookup(sorted_ids: np.ndarray, matrix: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``matrix`` for ``ids`` by binary search over ``sorted_ids``; absent ids: zeros, found=False."""
    ids = np.asarray(ids, dtype=np.int64).ravel()
    out = np.zeros((ids.size, matrix.shape[1]), dtype=np.float32)
    if sorted_ids.size == 0 or ids.size == 0:
        return out, np.zeros(ids.size, dtype=bool)
    pos = np.searchsorted(sorted_ids, ids)
    pos_clipped = np.minimum(pos, sorted_ids.size - 1)
    found = sorted_ids[pos_clipped] == ids
    out[found] = matrix[pos_clipped[found]]
    return out, found


# --- LightGCN ------------------------------------------------------------------------------------
def normalized_adjacency(edge_users: np.ndarray, edge_ads: np.ndarray, n_users: int, n_ads: int) -> "torch.Tensor":
    """``D^-1/2 A D^-1/2`` of the bipartite graph as a coalesced sparse COO tensor of shape
    (n_users + n_ads, n_users + n_ads); users are nodes ``0..n_users-1``, ad ``j`` is node ``n_users + j``.
    ``edge_users`` / ``edge_ads`` are node indices of distinct edges (no duplicates)."""
    import torch

    eu = np.asarray(edge_users, dtype=np.int64)
    ea = np.asarray(edge_ads, dtype=np.int64)
    deg_u = np.bincount(eu, minlength=n_users).astype(np.float64)
    deg_a = np.bincount(ea, minlength=n_ads).astype(np.float64)
    # Every edge endpoint has degree >= 1, so the division is safe.
    w = (1.0 / np.sqrt(deg_u[eu] * deg_a[ea])).astype(np.float32)
    rows = np.concatenate([eu, n_users + ea])
    cols = np.concatenate([n_users + ea, eu])
    n = n_users + n_ads
    adj = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([rows, cols])), torch.from_numpy(np.concatenate([w, w])), (n, n),
        check_invariants=True,  # O(nnz) and catches an out-of-range node index before it corrupts memory
    )
    return adj.coalesce()


def _symmetric_spmm() -> Any:
    """``A @ X`` for a symmetric sparse ``A`` as an autograd function whose backward is ``A @ grad``.

    Why: torch's generic sparse-mm backward transposes (and re-coalesces) ``A`` on every step; ``A_hat``
    is symmetric, so the transpose is ``A_hat`` itself. Built lazily so this module does not import torch.
    """
    import torch

    class SymmetricSpMM(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            ctx.adj = adj
            return torch.sparse.mm(adj, x)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
            return None, torch.sparse.mm(ctx.adj, grad)

    return SymmetricSpMM


_SPMM: Any = None


def _to_csr(adj: "torch.Tensor") -> "torch.Tensor":
    """CSR copy of a COO adjacency: its sparse-dense product is ~25% cheaper on CPU."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return adj.to_sparse_csr()


def propagate(adj: "torch.Tensor", ego: "torch.Tensor", layers: int) -> "torch.Tensor":
    """LightGCN propagation: the mean of ``ego, A ego, ..., A^layers ego`` ((n, d) -> (n, d)).
    ``adj`` must be symmetric (as :func:`normalized_adjacency` is): gradients use ``adj`` as its own
    transpose."""
    global _SPMM
    if _SPMM is None:
        _SPMM = _symmetric_spmm()
    out = ego
    h = ego
    for _ in range(layers):
        h = _SPMM.apply(adj, h)
        out = out + h
    return out / (layers + 1)


def sample_negatives(
    rng: np.random.Generator, edge_u: np.ndarray, edge_keys: np.ndarray, n_ads: int
) -> np.ndarray:
    """One uniformly drawn ad per edge, redrawn (vectorised, a few rounds) while the user clicked it.
    ``edge_keys`` are the sorted ``user * n_ads + ad`` keys of the positive edges."""
    neg = rng.integers(0, n_ads, size=edge_u.size)
    for _ in range(NEGATIVE_RESAMPLE_ROUNDS):
        keys = edge_u * n_ads + neg
        pos = np.minimum(np.searchsorted(edge_keys, keys), edge_keys.size - 1)
        hit = edge_keys[pos] == keys
        if not hit.any():
            break
        # A user who clicked (almost) every ad keeps a positive as negative after the last round: harmless.
        neg[hit] = rng.integers(0, n_ads, size=int(hit.sum()))
    return neg


def _bpr_loss(
    final: "torch.Tensor", ego: "torch.Tensor", u: "torch.Tensor", pos: "torch.Tensor", neg: "torch.Tensor",
    n_users: int, reg: float,
) -> "torch.Tensor":
    import torch
    import torch.nn.functional as F

    # One gather per tensor (users, positives, negatives stacked): each gather's backward allocates and
    # zero-fills an (n, d) gradient, a large share of a step on graphs of this size.
    b = u.shape[0]
    nodes = torch.cat([u, n_users + pos, n_users + neg])
    e = final[nodes].view(3, b, -1)  # (3, B, d): user, positive ad, negative ad
    margin = (e[0] * (e[1] - e[2])).sum(1)
    l2 = ego[nodes].pow(2).sum()
    return F.softplus(-margin).mean() + reg * 0.5 * l2 / b


def train_lightgcn(
    user_ids: np.ndarray,
    ad_ids: np.ndarray,
    *,
    dim: int,
    layers: int,
    epochs: int,
    lr: float,
    seed: int,
    warm_start: GraphVectors | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reg: float = DEFAULT_REG,
    init_std: float = DEFAULT_INIT_STD,
) -> GraphVectors:
    """Train LightGCN with BPR on click edges ``(user_ids[k], ad_ids[k])`` (parallel int arrays; repeated
    pairs count once) and return the users' and ads' vectors.

    Args:
        user_ids, ad_ids: one entry per click (or per distinct clicked pair).
        dim, layers, epochs, lr, seed: vector size, propagation layers K, passes over the edges, Adam
            learning rate, and the seed of the initial vectors, the edge order and the negatives.
        warm_start: a previous run; its ego vectors initialise the users and ads it knows (same
            ``dim`` required), the others start from N(0, init_std^2).
        batch_size, reg, init_std: edges per step, L2 weight on the batch's ego vectors, init scale.

    With no edges, returns empty vectors (every lookup gets the fallback).
    """
    import torch

    users, ads = _check_training_args(user_ids, ad_ids, dim, layers, epochs, batch_size, warm_start)
    meta = {"dim": dim, "layers": layers, "epochs": epochs, "lr": lr, "seed": seed, "batch_size": batch_size,
            "reg": reg, "init_std": init_std}
    if users.size == 0:
        empty = np.zeros((0, dim), np.float32)
        return GraphVectors(np.zeros(0, np.int64), empty, np.zeros(0, np.int64), empty.copy(), empty.copy(),
                            empty.copy(), (), None, {**meta, "edges": 0})

    graph = ClickGraph.build(users, ads)
    ego0, warm_users, warm_ads = _initial_ego(graph, dim, seed, init_std, warm_start)
    ego = torch.nn.Parameter(ego0)
    epoch_losses, initial_loss = _fit_bpr(graph, ego, layers=layers, epochs=epochs, lr=lr, seed=seed,
                                          batch_size=batch_size, reg=reg)

    with torch.no_grad():
        final = propagate(graph.adj, ego, layers).numpy().astype(np.float32, copy=True)
        ego_np = ego.detach().numpy().astype(np.float32, copy=True)
    n_u = graph.n_users
    meta.update(edges=graph.n_edges, users=n_u, ads=graph.n_ads, warm_users=warm_users, warm_ads=warm_ads)
    return GraphVectors(
        user_ids=graph.user_ids,
        user_vectors=final[:n_u],
        ad_ids=graph.ad_ids,
        ad_vectors=final[n_u:],
        user_ego=ego_np[:n_u],
        ad_ego=ego_np[n_u:],
        epoch_losses=tuple(epoch_losses),
        initial_loss=initial_loss,
        metadata=meta,
    )


def _check_training_args(
    user_ids: np.ndarray, ad_ids: np.ndarray, dim: int, layers: int, epochs: int, batch_size: int,
    warm_start: GraphVectors | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The click arrays as flat int64, after checking they are parallel and the sizes are in range."""
    users = np.asarray(user_ids, dtype=np.int64).ravel()
    ads = np.asarray(ad_ids, dtype=np.int64).ravel()
    if users.shape != ads.shape:
        raise ValueError(f"user_ids and ad_ids must be parallel arrays, got {users.size} and {ads.size} entries")
    for name, value, least in (("dim", dim, 1), ("layers", layers, 0), ("epochs", epochs, 0), ("batch_size", batch_size, 1)):
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    if warm_start is not None and warm_start.dim != dim:
        raise ValueError(f"warm start has dim {warm_start.dim}, this run has dim {dim}")
    return users, ads


@dataclass(eq=False)
class ClickGraph:
    """The distinct click edges of a training run, over node indices: ``user_ids`` / ``ad_ids`` are the
    sorted distinct ids (user ``r`` is node ``r``, ad ``j`` is node ``n_users + j``), ``edge_keys`` the
    sorted ``user * n_ads + ad`` keys of the edges, ``adj`` the normalised adjacency (CSR)."""

    user_ids: np.ndarray
    ad_ids: np.ndarray
    edge_keys: np.ndarray
    edge_u: np.ndarray
    edge_a: np.ndarray
    adj: "torch.Tensor"

    @classmethod
    def build(cls, users: np.ndarray, ads: np.ndarray) -> "ClickGraph":
        """The graph of parallel click arrays (repeated pairs count once)."""
        uniq_users, u_idx = np.unique(users, return_inverse=True)
        uniq_ads, a_idx = np.unique(ads, return_inverse=True)
        n_u, n_a = uniq_users.size, uniq_ads.size
        edge_keys = np.unique(u_idx.astype(np.int64) * n_a + a_idx)  # distinct edges, sorted
        edge_u, edge_a = edge_keys // n_a, edge_keys % n_a
        adj = _to_csr(normalized_adjacency(edge_u, edge_a, n_u, n_a))
        return cls(uniq_users, uniq_ads, edge_keys, edge_u, edge_a, adj)

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    @property
    def n_ads(self) -> int:
        return int(self.ad_ids.size)

    @property
    def n_edges(self) -> int:
        return int(self.edge_keys.size)


def _initial_ego(
    graph: ClickGraph, dim: int, seed: int, init_std: float, warm_start: GraphVectors | None
) -> tuple["torch.Tensor", int, int]:
    """Layer-0 vectors N(0, init_std^2) from ``seed``, overwritten by ``warm_start``'s ego vectors for the
    users and ads it knows; returns them with how many users and ads were warm-started."""
    import torch

    n_u, n_a = graph.n_users, graph.n_ads
    uniq_users, uniq_ads = graph.user_ids, graph.ad_ids
    gen = torch.Generator().manual_seed(seed)
    ego0 = torch.randn(n_u + n_a, dim, generator=gen) * init_std
    warm_users = warm_ads = 0
    if warm_start is not None:
        # Map yesterday's ego vectors onto today's node order; ids new to the graph keep the fresh init.
        prev_u = warm_start.user_ego if warm_start.user_ego is not None else warm_start.user_vectors
        prev_a = warm_start.ad_ego if warm_start.ad_ego is not None else warm_start.ad_vectors
        wu, fu = _lookup(warm_start.user_ids, prev_u, uniq_users)
        wa, fa = _lookup(warm_start.ad_ids, prev_a, uniq_ads)
        ego0[:n_u][torch.from_numpy(fu)] = torch.from_numpy(wu[fu])
        ego0[n_u:][torch.from_numpy(fa)] = torch.from_numpy(wa[fa])
        warm_users, warm_ads = int(fu.sum()), int(fa.sum())
    return ego0, warm_users, warm_ads


def _fit_bpr(
    graph: ClickGraph, ego: "torch.nn.Parameter", *, layers: int, epochs: int, lr: float, seed: int,
    batch_size: int, reg: float,
) -> tuple[list[float], float | None]:
    """Adam on the BPR loss over ``epochs`` shuffled passes of the edges, one negative per edge and
    epoch; returns each epoch's mean loss and the loss before any update (first epoch's pairs)."""
    import torch

    adj, edge_u, edge_a, edge_keys = graph.adj, graph.edge_u, graph.edge_a, graph.edge_keys
    n_u, n_a, n_edges = graph.n_users, graph.n_ads, graph.n_edges
    opt = torch.optim.Adam([ego], lr=lr)
    rng = np.random.default_rng(seed)

    epoch_losses: list[float] = []
    initial_loss: float | None = None
    eu_t, ea_t = torch.from_numpy(edge_u), torch.from_numpy(edge_a)
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(n_edges))
        neg_t = torch.from_numpy(sample_negatives(rng, edge_u, edge_keys, n_a))
        if epoch == 0:
            with torch.no_grad():
                initial_loss = float(_bpr_loss(propagate(adj, ego, layers), ego, eu_t, ea_t, neg_t, n_u, reg))
        total = 0.0
        for start in range(0, n_edges, batch_size):
            b = order[start:start + batch_size]
            loss = _bpr_loss(propagate(adj, ego, layers), ego, eu_t[b], ea_t[b], neg_t[b], n_u, reg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().item() * b.numel()
        epoch_losses.append(total / n_edges)
        log.debug("lightgcn epoch %d/%d: loss %.4f", epoch + 1, epochs, epoch_losses[-1])
    return epoch_losses, initial_loss

"""Graph embeddings: LightGCN trained with BPR on the user-ad click graph (issue 3, DESIGN.md section 6).

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

Daily refresh (:func:`refresh_graph`): train on the clicks of the ``graph_window_days`` days ending on
the run day; when ``graph_warm_start`` is on, the ego vectors start from the newest earlier snapshot,
mapped onto today's ids (ids new to the graph get fresh random rows). Snapshots live at
``<embeddings_dir>/graph/date=YYYY-MM-DD/{users,ads}.parquet`` and are swapped in atomically.

Fallback for users and ads unseen in the graph (new users, new ads, anyone without a click edge in the
window): the zero vector and ``found=False``. Their dot-product score is 0 and their cosine similarity
is undefined; consumers treat them as missing (docs/representations.md, "Graph embeddings").
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from components.schemas import TIMESTAMP, day_dir, day_window
from components.storage import replace_partition

if TYPE_CHECKING:
    import torch

    from components.config import Settings

log = logging.getLogger(__name__)

GRAPH_SPACE = "graph"  # folder under settings.embeddings_dir
USERS_FILE = "users.parquet"
ADS_FILE = "ads.parquet"
REPORT_FILE = "report.json"
METADATA_KEY = b"adsrec.graph"
CLICK_COLUMNS = ("user_id", "ad_id", "event_time")

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


def _sample_negatives(
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

    users = np.asarray(user_ids, dtype=np.int64).ravel()
    ads = np.asarray(ad_ids, dtype=np.int64).ravel()
    if users.shape != ads.shape:
        raise ValueError(f"user_ids and ad_ids must be parallel arrays, got {users.size} and {ads.size} entries")
    for name, value, least in (("dim", dim, 1), ("layers", layers, 0), ("epochs", epochs, 0), ("batch_size", batch_size, 1)):
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    if warm_start is not None and warm_start.dim != dim:
        raise ValueError(f"warm start has dim {warm_start.dim}, this run has dim {dim}")
    meta = {"dim": dim, "layers": layers, "epochs": epochs, "lr": lr, "seed": seed, "batch_size": batch_size,
            "reg": reg, "init_std": init_std}
    if users.size == 0:
        empty = np.zeros((0, dim), np.float32)
        return GraphVectors(np.zeros(0, np.int64), empty, np.zeros(0, np.int64), empty.copy(), empty.copy(),
                            empty.copy(), (), None, {**meta, "edges": 0})

    uniq_users, u_idx = np.unique(users, return_inverse=True)
    uniq_ads, a_idx = np.unique(ads, return_inverse=True)
    n_u, n_a = uniq_users.size, uniq_ads.size
    edge_keys = np.unique(u_idx.astype(np.int64) * n_a + a_idx)  # distinct edges, sorted
    edge_u, edge_a = edge_keys // n_a, edge_keys % n_a
    n_edges = edge_keys.size
    adj = _to_csr(normalized_adjacency(edge_u, edge_a, n_u, n_a))

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
    ego = torch.nn.Parameter(ego0)
    opt = torch.optim.Adam([ego], lr=lr)
    rng = np.random.default_rng(seed)

    epoch_losses: list[float] = []
    initial_loss: float | None = None
    eu_t, ea_t = torch.from_numpy(edge_u), torch.from_numpy(edge_a)
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(n_edges))
        neg_t = torch.from_numpy(_sample_negatives(rng, edge_u, edge_keys, n_a))
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

    with torch.no_grad():
        final = propagate(adj, ego, layers).numpy().astype(np.float32, copy=True)
        ego_np = ego.detach().numpy().astype(np.float32, copy=True)
    meta.update(edges=int(n_edges), users=int(n_u), ads=int(n_a), warm_users=warm_users, warm_ads=warm_ads)
    return GraphVectors(
        user_ids=uniq_users,
        user_vectors=final[:n_u],
        ad_ids=uniq_ads,
        ad_vectors=final[n_u:],
        user_ego=ego_np[:n_u],
        ad_ego=ego_np[n_u:],
        epoch_losses=tuple(epoch_losses),
        initial_loss=initial_loss,
        metadata=meta,
    )


# --- daily refresh and snapshots -----------------------------------------------------------------
def graph_dir(settings: "Settings") -> Path:
    return settings.embeddings_dir / GRAPH_SPACE


def graph_snapshots(settings: "Settings") -> list[dt.date]:
    """Days with a saved graph snapshot, ascending (temp folders, which start with a dot, are ignored)."""
    from components.store.sql import day_partitions

    return [day for day, _ in day_partitions(graph_dir(settings))]


def _vectors_table(id_name: str, ids: np.ndarray, vectors: np.ndarray, ego: np.ndarray | None,
                   meta: dict[str, Any]) -> pa.Table:
    dim = vectors.shape[1]

    def fixed(m: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(m, np.float32).ravel()), dim)

    cols = {id_name: pa.array(ids, pa.int64()), "vector": fixed(vectors)}
    if ego is not None:
        cols["ego"] = fixed(ego)
    table = pa.table(cols)
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})


def save_graph(settings: "Settings", day: dt.date, vectors: GraphVectors, report: dict[str, Any] | None = None) -> Path:
    """Write ``vectors`` as the snapshot of ``day`` (replacing any previous one atomically)."""
    from components.storage import write_parquet_durable

    meta = {**vectors.metadata, "day": day.isoformat()}
    users = _vectors_table("user_id", vectors.user_ids, vectors.user_vectors, vectors.user_ego, meta)
    ads = _vectors_table("ad_id", vectors.ad_ids, vectors.ad_vectors, vectors.ad_ego, meta)
    final = day_dir(settings.embeddings_dir, GRAPH_SPACE, day)

    def write(tmp: Path) -> None:
        write_parquet_durable(users, tmp / USERS_FILE)
        write_parquet_durable(ads, tmp / ADS_FILE)
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True, default=str))

    replace_partition(final, write)
    return final


def _read_vectors(path: Path, id_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    dim = int(meta.get("dim") or table.schema.field("vector").type.list_size)
    ids = table[id_name].to_numpy().astype(np.int64, copy=False)

    def matrix(col: str) -> np.ndarray:
        flat = table[col].combine_chunks().values.to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(-1, dim)

    ego = matrix("ego") if "ego" in table.column_names else None
    return ids, matrix("vector"), ego, meta


def load_graph(settings: "Settings", day: dt.date) -> GraphVectors | None:
    """The newest snapshot dated ``day`` or earlier (vectors trained on clicks through that date), or None
    when there is none. A consumer scoring impressions of day D asks for D - 1 to stay point-in-time."""
    days = [d for d in graph_snapshots(settings) if d <= day]
    if not days:
        return None
    folder = day_dir(settings.embeddings_dir, GRAPH_SPACE, days[-1])
    user_ids, user_vec, user_ego, meta = _read_vectors(folder / USERS_FILE, "user_id")
    ad_ids, ad_vec, ad_ego, _ = _read_vectors(folder / ADS_FILE, "ad_id")
    return GraphVectors(user_ids, user_vec, ad_ids, ad_vec, user_ego, ad_ego, metadata=meta)


def _window_clicks(clicks: pa.Table, first: dt.date, last: dt.date) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.compute as pc

    missing = [c for c in CLICK_COLUMNS if c not in clicks.column_names]
    if missing:
        raise ValueError(f"clicks table lacks column(s) {missing}; it needs {list(CLICK_COLUMNS)}")
    start, _ = day_window(first)
    _, end = day_window(last)
    t = clicks["event_time"]
    if t.type != TIMESTAMP:
        t = t.cast(TIMESTAMP)
    keep = pc.and_(
        pc.greater_equal(t, pa.scalar(start, TIMESTAMP)), pc.less(t, pa.scalar(end, TIMESTAMP))
    )
    # Rows with a null id cannot be edges.
    keep = pc.and_(keep, pc.and_(pc.is_valid(clicks["user_id"]), pc.is_valid(clicks["ad_id"])))
    window = clicks.select(["user_id", "ad_id"]).filter(pc.fill_null(keep, False))
    return (window["user_id"].to_numpy().astype(np.int64, copy=False),
            window["ad_id"].to_numpy().astype(np.int64, copy=False))


def refresh_graph(settings: "Settings", day: dt.date, clicks: pa.Table) -> tuple[GraphVectors, dict[str, Any]]:
    """Train LightGCN on the clicks of the ``graph_window_days`` days ending on ``day`` (UTC days; rows of
    ``clicks`` outside the window are ignored), warm-started from the newest snapshot before ``day`` when
    ``graph_warm_start``, save the snapshot of ``day`` and return it with a report.

    ``clicks`` has one row per click with ``user_id``, ``ad_id`` and ``event_time`` (other columns are
    ignored). Re-running a day never warm-starts from its own earlier snapshot, so a re-run gives the
    same vectors as the first run.
    """
    cfg = settings.representations
    first = day - dt.timedelta(days=cfg.graph_window_days - 1)
    users, ads = _window_clicks(clicks, first, day)

    warm: GraphVectors | None = None
    warm_from: dt.date | None = None
    warm_note = "disabled" if not cfg.graph_warm_start else "no earlier snapshot"
    if cfg.graph_warm_start:
        earlier = [d for d in graph_snapshots(settings) if d < day]
        if earlier:
            candidate = load_graph(settings, earlier[-1])
            if candidate is not None and candidate.dim == cfg.graph_dim:
                warm, warm_from, warm_note = candidate, earlier[-1], "ok"
            elif candidate is not None:
                warm_note = f"snapshot {earlier[-1]} has dim {candidate.dim}, config has {cfg.graph_dim}: cold start"

    t0 = time.perf_counter()
    vectors = train_lightgcn(
        users, ads, dim=cfg.graph_dim, layers=cfg.graph_layers, epochs=cfg.graph_epochs, lr=cfg.graph_lr,
        seed=cfg.seed, warm_start=warm, batch_size=cfg.graph_batch_size, reg=cfg.graph_reg,
    )
    seconds = time.perf_counter() - t0
    vectors.metadata.update(day=day.isoformat(), window_start=first.isoformat(), window_end=day.isoformat(),
                            warm_start_from=warm_from.isoformat() if warm_from else None)
    report: dict[str, Any] = {
        "day": day.isoformat(),
        "window_start": first.isoformat(),
        "window_end": day.isoformat(),
        "click_rows": int(users.size),
        "edges": int(vectors.metadata.get("edges", 0)),
        "users": int(vectors.user_ids.size),
        "ads": int(vectors.ad_ids.size),
        "dim": cfg.graph_dim,
        "layers": cfg.graph_layers,
        "epochs": cfg.graph_epochs,
        "seconds": round(seconds, 3),
        "initial_loss": vectors.initial_loss,
        "final_loss": vectors.epoch_losses[-1] if vectors.epoch_losses else None,
        "warm_start_from": warm_from.isoformat() if warm_from else None,
        "warm_start": warm_note,
        "warm_users": int(vectors.metadata.get("warm_users", 0)),
        "warm_ads": int(vectors.metadata.get("warm_ads", 0)),
    }
    path = save_graph(settings, day, vectors, report)
    report["path"] = str(path)
    log.info(
        "graph embeddings %s: %d edges, %d users, %d ads, %d epochs in %.1fs, loss %s -> %s (warm start: %s)",
        day, report["edges"], report["users"], report["ads"], cfg.graph_epochs, seconds,
        _fmt(report["initial_loss"]), _fmt(report["final_loss"]), warm_note,
    )
    return vectors, report


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"

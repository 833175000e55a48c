"""Dimensional collapse of a ranker's embeddings: information abundance per field and table, singular
spectra, and the DCNv2 interaction-collapse map (METHODS.md "Dimensional collapse"; DESIGN.md section 8).

**Information abundance** of a matrix ``E`` [n, d] whose rows are L2-normalised first:
``IA(E) = Σ_k σ_k / max_k σ_k``, between 1 (every row on one line: fully collapsed) and ``min(n, d)``
(a flat spectrum). Random init gives IA close to d; a collapsed table far less. Reported raw and as
``IA / d`` (d = the table's width).

Rows never read in training keep their random init and would pull IA towards d, hiding collapse, so
:func:`collapse_report` takes per-field *id counts* (how often each row was read, from
:func:`id_counts_from_batch`): rows with count 0 are left out and, when a field has more than ``max_rows``
read rows, rows are sampled without replacement with probability proportional to their count.

Everything here is numpy on the CPU (float64 SVDs of at most ``max_rows`` x d); torch is only touched to
read the model's weights, and matplotlib only inside the ``plot`` functions (Agg backend).

Example::

    from components.training.artefact import load_trained
    trained = load_trained(".adsrec/models/2026-11-07")
    counts = id_counts_from_batch(trained.model, trained.encoders.encode_numpy(train_table, with_labels=False))
    report = collapse_report(trained.model, id_counts=counts)
    print(report.to_text()); report.plot("spectra.png")
    report.mean_ia_ratio            # e.g. 0.36
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from models.ranker import Ranker
    from models.spec import FeatureSpec

DEFAULT_MNSE_BASES: tuple[int, ...] = (2, 3, 10)  # RankerConfig's default, for id counts from a bare spec
MAX_PANELS = 6


# ----- the measure --------------------------------------------------------------------------------------------
def _as_numpy(matrix: Any) -> np.ndarray:
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
    x = _as_numpy(matrix)
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


def _spectrum(rows: np.ndarray) -> np.ndarray:
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
    sigma = _spectrum(usable_rows(matrix, max_rows, weights, seed))
    return float(sigma.sum() / sigma[0])


def normalised_spectrum(matrix: Any, max_rows: int | None = None, weights: Any = None, seed: int = 0) -> np.ndarray:
    """``σ / max σ`` of the usable rows (same row selection as :func:`information_abundance`), descending,
    length ``min(n_used, d)``. Its sum is the IA."""
    sigma = _spectrum(usable_rows(matrix, max_rows, weights, seed))
    return sigma / sigma[0]


def _ia_stack(x: np.ndarray) -> np.ndarray:
    """IA of each matrix of a stack [k, n, d] (rows normalised here; zero rows contribute nothing) -> [k]."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    sigma = np.linalg.svd(x, compute_uv=False)  # [k, min(n, d)], batched LAPACK
    top = sigma[:, 0]
    return np.divide(sigma.sum(axis=1), top, out=np.full(len(top), np.nan), where=top > 0)


# ----- id counts ----------------------------------------------------------------------------------------------
def _mnse_digits(n_buckets: int, base: int) -> int:
    """K_b, as models.embeddings.mnse_num_digits (kept here so counting needs no torch)."""
    digits = 1
    while base**digits < n_buckets:
        digits += 1
    return digits


def _to_numpy_int(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.int64)


def id_counts_from_batch(
    model_or_spec: "Ranker | FeatureSpec",
    batch: Mapping[str, Any],
    mnse_bases: Sequence[int] | None = None,
    include_sequence: bool = True,
) -> dict[str, np.ndarray]:
    """How often each embedding row is read by ``batch``: ``{field: counts [rows of that field]}``, keyed
    like :meth:`models.ranker.Ranker.field_slices` (the same for every table).

    - categorical field ``f`` (column j of ``batch["cat"]`` [N, n_cat]): ``bincount`` of the column, so
      ``counts[id]`` = impressions carrying that id (row 0, unknown ids, included);
    - with ``include_sequence``, the behaviour sequence's items (``seq_items`` [N, L]) and categories
      (``seq_cats``) read the rows of the sequence's item / category field, so their non-padding positions
      (``seq_gaps > 0``) are added to those fields' counts: a row trained only through sequences counts;
    - MNSE block ``name@base<b>`` (numeric column j of ``batch["num"]`` [N, n_num]): every impression reads
      one token per digit position k < K_b, row ``b*k + digit_k(bucket)`` of the block; counts are
      impressions per token row.

    Args:
        model_or_spec: a :class:`~models.ranker.Ranker` (its spec and MNSE bases are used) or a
            :class:`~models.spec.FeatureSpec` (then ``mnse_bases``, default (2, 3, 10), must match the model's).
        batch: an encoded batch (numpy arrays or CPU tensors), e.g. ``FeatureEncoders.encode_numpy(table)``.
        mnse_bases: override the MNSE bases.
        include_sequence: add sequence reads to the item / category fields.
    """
    if hasattr(model_or_spec, "spec") and hasattr(model_or_spec, "config"):
        spec = model_or_spec.spec
        bases = tuple(mnse_bases or model_or_spec.config.mnse_bases)
    else:
        spec = model_or_spec
        bases = tuple(mnse_bases or DEFAULT_MNSE_BASES)
    counts: dict[str, np.ndarray] = {}
    if spec.categorical:
        if "cat" not in batch:
            raise KeyError("batch has no 'cat' tensor")
        cat = _to_numpy_int(batch["cat"])
        if cat.ndim != 2 or cat.shape[1] != len(spec.categorical):
            raise ValueError(f"batch['cat'] has shape {cat.shape}, expected [N, {len(spec.categorical)}]")
        for j, f in enumerate(spec.categorical):
            col = cat[:, j]
            if len(col) and (col.min() < 0 or col.max() >= f.vocab_size):
                raise ValueError(f"batch['cat'] column {j} ({f.name}) has ids outside [0, {f.vocab_size})")
            counts[f.name] = np.bincount(col, minlength=f.vocab_size).astype(np.int64)
    seq = spec.sequence
    if include_sequence and seq is not None and "seq_items" in batch and "seq_gaps" in batch:
        real = _to_numpy_int(batch["seq_gaps"]) > 0
        roles = [(seq.item_field, "seq_items"), (seq.category_field, "seq_cats")]
        for name, key in roles:
            if name is None or key not in batch:
                continue
            ids = _to_numpy_int(batch[key])[real]
            size = len(counts[name])
            if len(ids) and (ids.min() < 0 or ids.max() >= size):
                raise ValueError(f"batch[{key!r}] has ids outside [0, {size})")
            counts[name] = counts[name] + np.bincount(ids, minlength=size)
    if spec.numeric:
        if "num" not in batch:
            raise KeyError("batch has no 'num' tensor")
        num = _to_numpy_int(batch["num"])
        if num.ndim != 2 or num.shape[1] != len(spec.numeric):
            raise ValueError(f"batch['num'] has shape {num.shape}, expected [N, {len(spec.numeric)}]")
        for j, f in enumerate(spec.numeric):
            col = num[:, j]
            if len(col) and (col.min() < 0 or col.max() >= f.n_buckets):
                raise ValueError(f"batch['num'] column {j} ({f.name}) has buckets outside [0, {f.n_buckets})")
            bucket_counts = np.bincount(col, minlength=f.n_buckets)  # tokens depend only on the bucket
            buckets = np.arange(f.n_buckets)
            for b in bases:
                k_b = _mnse_digits(f.n_buckets, b)
                powers = b ** np.arange(k_b)
                rows = b * np.arange(k_b) + (buckets[:, None] // powers) % b  # [n_buckets, K_b] token rows
                weights = np.broadcast_to(bucket_counts[:, None], rows.shape)
                counts[f"{f.name}@base{b}"] = np.bincount(
                    rows.ravel(), weights=weights.ravel(), minlength=b * k_b
                ).astype(np.int64)
    return counts


# ----- the report ---------------------------------------------------------------------------------------------
@dataclass
class FieldCollapse:
    """Information abundance of one field of one table.

    ``rows``: rows of the field in the table; ``used_rows``: rows the IA was computed on (read rows, sampled);
    ``dim``: the table's width d; ``ia``: raw IA; ``ia_ratio``: IA / d; ``spectrum``: σ / max σ.
    """

    table: str
    field: str
    rows: int
    used_rows: int
    dim: int
    ia: float
    spectrum: np.ndarray
    weighted: bool

    @property
    def ia_ratio(self) -> float:
        return self.ia / self.dim

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table, "field": self.field, "rows": self.rows, "used_rows": self.used_rows,
            "dim": self.dim, "ia": self.ia, "ia_ratio": self.ia_ratio, "weighted": self.weighted,
            "spectrum": [float(v) for v in self.spectrum],
        }


@dataclass
class CollapseReport:
    """IA of every field of every embedding table of a ranker (see :func:`collapse_report`).

    ``fields``: one :class:`FieldCollapse` per (table, field); ``skipped``: (table, field, reason) of fields
    with fewer than 2 usable rows; ``weighted``: whether id counts chose the rows.
    """

    fields: list[FieldCollapse]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    weighted: bool = False
    max_rows: int | None = None
    arch: str | None = None

    @property
    def tables(self) -> list[str]:
        seen: dict[str, None] = {}
        for f in self.fields:
            seen.setdefault(f.table, None)
        return list(seen)

    @property
    def per_table(self) -> dict[str, float]:
        """Table -> mean IA/d over its fields."""
        out: dict[str, float] = {}
        for t in self.tables:
            out[t] = float(np.mean([f.ia_ratio for f in self.fields if f.table == t]))
        return out

    @property
    def mean_ia_ratio(self) -> float:
        """The headline: mean over tables of each table's mean IA/d (NaN when no field was measured)."""
        values = list(self.per_table.values())
        return float(np.mean(values)) if values else math.nan

    def field(self, table: str, name: str) -> FieldCollapse:
        for f in self.fields:
            if f.table == table and f.field == name:
                return f
        raise KeyError(f"no measured field {name!r} in table {table!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_ia_ratio": self.mean_ia_ratio,
            "per_table": self.per_table,
            "weighted": self.weighted,
            "max_rows": self.max_rows,
            "arch": self.arch,
            "fields": [f.to_dict() for f in self.fields],
            "skipped": [{"table": t, "field": n, "reason": r} for t, n, r in self.skipped],
        }

    def to_text(self) -> str:
        """A readable table: one line per field, IA/d under each table, then the per-table means."""
        tables = self.tables
        names: dict[str, None] = {}
        for f in self.fields:
            names.setdefault(f.field, None)
        by_key = {(f.table, f.field): f for f in self.fields}
        width = max([len("field"), *(len(n) for n in names)])
        cols = [max(9, len(t)) for t in tables]
        head = f"{'field':<{width}}  {'rows':>6}  {'used':>6}  " + "  ".join(
            f"{t:>{c}}" for t, c in zip(tables, cols))
        rows_used = ("rows read in training, sampled by count" if self.weighted
                     else "all rows, unweighted: unseen rows inflate IA")
        lines = [
            f"dimensional collapse: IA/d per field ({rows_used}; max {self.max_rows} rows)",
            head,
            "-" * len(head),
        ]
        for n in names:
            first = next(by_key[(t, n)] for t in tables if (t, n) in by_key)
            cells = [f"{by_key[(t, n)].ia_ratio:>{c}.3f}" if (t, n) in by_key else f"{'-':>{c}}"
                     for t, c in zip(tables, cols)]
            lines.append(f"{n:<{width}}  {first.rows:>6}  {first.used_rows:>6}  " + "  ".join(cells))
        lines.append("-" * len(head))
        per = self.per_table
        lines.append(f"{'mean IA/d':<{width}}  {'':>6}  {'':>6}  " + "  ".join(
            f"{per[t]:>{c}.3f}" for t, c in zip(tables, cols)))
        lines.append(f"overall mean IA/d (mean of the tables): {self.mean_ia_ratio:.3f}")
        if self.skipped:
            shown = ", ".join(sorted({f"{n} ({r})" for _, n, r in self.skipped}))
            lines.append(f"skipped: {shown}")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """PNG of the normalised singular spectra: one panel per table (at most 6), one line per field
        (categorical fields coloured and named, MNSE token blocks thin grey), log y."""
        plt = _pyplot()
        tables = self.tables[:MAX_PANELS]
        if not tables:
            raise ValueError("nothing to plot: no field was measured")
        ncols = min(3, len(tables))
        nrows = math.ceil(len(tables) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False, sharey=True)
        cmap = plt.get_cmap("tab20")
        for ax, table in zip(axes.ravel(), tables):
            fields = [f for f in self.fields if f.table == table]
            colour = 0
            for f in fields:
                k = np.arange(1, len(f.spectrum) + 1)
                spectrum = np.maximum(f.spectrum, 1e-12)
                if "@base" in f.field:
                    ax.plot(k, spectrum, color="0.75", lw=0.6, zorder=1)
                else:
                    ax.plot(k, spectrum, color=cmap(colour % 20), lw=1.4, zorder=2,
                            label=f"{f.field} ({f.ia_ratio:.2f})")
                    colour += 1
            ax.set_yscale("log")
            ax.set_title(f"{table}: mean IA/d {self.per_table[table]:.3f}", fontsize=10)
            ax.set_xlabel("k")
            ax.grid(alpha=0.3)
            if colour:
                ax.legend(fontsize=6, loc="lower left", ncol=1 if colour <= 12 else 2)
        for ax in axes.ravel()[len(tables):]:
            ax.set_visible(False)
        axes[0, 0].set_ylabel("σ_k / max σ (log)")
        extra = f" (first {MAX_PANELS} of {len(self.tables)} tables)" if len(self.tables) > MAX_PANELS else ""
        fig.suptitle(f"normalised singular spectra{extra}; grey: MNSE token blocks; legend: field (IA/d)",
                     fontsize=10)
        fig.tight_layout()
        return _save(fig, path)


def _unwrap(model: Any) -> Any:
    """A Ranker from a Ranker or anything holding one as ``.model`` (components.training.artefact.TrainedModel)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "embedding_tables"):
        return inner
    if not hasattr(model, "embedding_tables"):
        raise TypeError(f"expected a models.ranker.Ranker (or a TrainedModel), got {type(model).__name__}")
    return model


def collapse_report(
    model: Any,
    id_counts: Mapping[str, Any] | None = None,
    max_rows: int | None = 20_000,
    seed: int = 0,
) -> CollapseReport:
    """IA raw and IA/d of every field of every embedding table of ``model`` (a Ranker or TrainedModel).

    Fields are the rows blocks of :meth:`Ranker.field_slices`: each categorical field, and each MNSE token
    block ``name@base<b>`` (its ``b*K_b`` (position, digit) tokens). With ``id_counts`` (from
    :func:`id_counts_from_batch` on the training rows), a field's rows with count 0 are dropped and up to
    ``max_rows`` rows are drawn ∝ count; fields absent from ``id_counts`` use all their rows (and say
    so, ``weighted=False``). Fields with fewer than 2 usable rows are skipped and listed.
    """
    ranker = _unwrap(model)
    tables = ranker.embedding_tables()
    slices = ranker.field_slices()
    fields: list[FieldCollapse] = []
    skipped: list[tuple[str, str, str]] = []
    for table, weight in tables.items():
        w = _as_numpy(weight)
        for name, (start, stop) in slices[table].items():
            counts = None
            if id_counts is not None and name in id_counts:
                counts = np.asarray(id_counts[name], dtype=np.float64).reshape(-1)
                if len(counts) != stop - start:
                    raise ValueError(f"id_counts[{name!r}] has {len(counts)} entries; the field has "
                                     f"{stop - start} rows")
            rows = usable_rows(w[start:stop], max_rows, counts, seed)
            if rows.shape[0] < 2:
                reason = "fewer than 2 rows read" if counts is not None else "fewer than 2 non-zero rows"
                skipped.append((table, name, reason))
                continue
            sigma = _spectrum(rows)
            fields.append(FieldCollapse(
                table=table, field=name, rows=stop - start, used_rows=int(rows.shape[0]), dim=int(w.shape[1]),
                ia=float(sigma.sum() / sigma[0]), spectrum=sigma / sigma[0], weighted=counts is not None,
            ))
    return CollapseReport(fields, skipped, weighted=id_counts is not None, max_rows=max_rows,
                          arch=getattr(getattr(ranker, "config", None), "arch", None))


# ----- interaction collapse (DCNv2) ---------------------------------------------------------------------------
@dataclass
class InteractionMap:
    """IA of ``E_i W_{i→j}`` for every pair of fields (i: row, the field projected; j: column, the field
    it is projected for), from the first cross layer of one DCNv2 expert.

    ``ia``: [F, F] raw IA; ``ia / width`` is its ratio; ``fields``: names of the F fields; ``expert``
    and ``table``: which expert and which table it reads; ``width``: the table's width w.
    """

    ia: np.ndarray
    fields: list[str]
    expert: str
    table: str
    width: int
    experts: list[str] = field(default_factory=list)  # every DCNv2 expert of the model

    @property
    def ratio(self) -> np.ndarray:
        return self.ia / self.width

    def to_dict(self) -> dict[str, Any]:
        return {"expert": self.expert, "table": self.table, "width": self.width, "fields": self.fields,
                "ia": np.where(np.isfinite(self.ia), self.ia, np.nan).tolist(), "dcnv2_experts": self.experts}


def _dcnv2_experts(ranker: Any) -> list[tuple[str, int, Any, int]]:
    """(expert name, plan table index, bank module, member index) of every DCNv2 expert, rebuilding the
    bank grouping of Ranker.__init__ (experts grouped by (kind, width) in plan order)."""
    from models.experts import DCNv2Experts

    banks: dict[tuple[str, int], list[int]] = {}
    for e, slot in enumerate(ranker.plan.experts):
        banks.setdefault((slot.kind, ranker.plan.tables[slot.table][1]), []).append(e)
    out = []
    for module, members in zip(ranker.expert_banks, banks.values()):
        if isinstance(module, DCNv2Experts):
            for m, e in enumerate(members):
                slot = ranker.plan.experts[e]
                out.append((slot.name, slot.table, module, m))
    return out


def _static_field_embeddings(
    ranker: Any, table: str, id_counts: Mapping[str, Any] | None, max_rows: int | None, seed: int
) -> tuple[list[str], list[np.ndarray]]:
    """The embedding matrix each expert input field takes its values from, for one table.

    Categorical field: its rows (read rows only and sampled ∝ count when ``id_counts`` has it). Numeric
    field under MNSE: the pooled embedding of every bucket value (what the expert actually sees:
    [n_buckets, w], tokens summed per base, bases concatenated or summed as the model does). The
    sequence representation has no static table and is left out.
    """
    import torch

    emb = ranker.embedding
    weight = emb.table(table)  # [rows, w]
    names: list[str] = []
    mats: list[np.ndarray] = []
    for name, (start, stop) in emb.cat_slices.items():
        counts = None
        if id_counts is not None and name in id_counts:
            counts = np.asarray(id_counts[name], dtype=np.float64).reshape(-1)
            if len(counts) != stop - start:
                raise ValueError(f"id_counts[{name!r}] has {len(counts)} entries; the field has {stop - start} rows")
        x = _as_numpy(weight[start:stop])
        keep = np.flatnonzero(counts > 0) if counts is not None else np.arange(len(x))
        if max_rows is not None and len(keep) > max_rows:
            keep = keep[weighted_sample(counts[keep] if counts is not None else np.ones(len(keep)), max_rows, seed)]
        names.append(name)
        mats.append(x[keep])
    if emb.mnse is not None:
        spec_num = ranker.spec.numeric
        top = max(f.n_buckets for f in spec_num)
        values = torch.stack([torch.arange(top).clamp(max=f.n_buckets - 1) for f in spec_num], dim=1)  # [top, n_num]
        with torch.no_grad():
            tokens = weight[emb.mnse.token_rows(values.to(weight.device)) + emb.mnse_start]  # [top, n_num, P, w]
            pooled = emb.mnse.pool(tokens.float()).cpu().numpy().astype(np.float64)  # [top, n_num*C, w]
        per = emb.mnse.out_per_field
        bases = emb.mnse.bases
        for j, f in enumerate(spec_num):
            for c in range(per):
                names.append(f"{f.name}@base{bases[c]}" if per > 1 else f.name)
                mats.append(pooled[: f.n_buckets, j * per + c])
    return names, mats


def interaction_collapse_map(
    model: Any,
    id_counts: Mapping[str, Any] | None = None,
    max_rows: int | None = 20_000,
    seed: int = 0,
    expert: str | None = None,
) -> InteractionMap:
    """The F x F interaction-collapse map of one DCNv2 expert (METHODS.md "Interaction collapse").

    The first cross layer computes ``x W`` on ``x = [e_1, ..., e_F]`` (each ``e_i`` w wide), so field j's
    output block receives ``Σ_i e_i W[i, j]`` with ``W[i, j]`` the w x w block (rows of field i, columns
    of field j): ``E_i W[i, j]`` is field i as seen by field j (the paper's ``E_i W_{i→j}^T`` in its
    ``W x`` convention). Entry (i, j) is its IA, with rows L2-normalised. Fields: the categorical fields
    and the pooled MNSE fields (see :func:`_static_field_embeddings`); the sequence field is left out.

    Args:
        model: a Ranker (or TrainedModel) with at least one DCNv2 expert (``arch="dcnv2"`` or
            ``expert="dcnv2"``).
        id_counts: as for :func:`collapse_report` (categorical fields keep only read rows).
        max_rows: rows per field at most.
        seed: sampling seed.
        expert: which DCNv2 expert (by name, e.g. ``"shared/0"``); default the first.

    Raises:
        ValueError: the model has no DCNv2 expert, or no expert named ``expert``.
    """
    ranker = _unwrap(model)
    found = _dcnv2_experts(ranker)
    if not found:
        kinds = sorted({s.kind for s in ranker.plan.experts})
        raise ValueError(f"interaction collapse needs a DCNv2 expert; this model ({ranker.config.arch}) has "
                         f"only {kinds} experts (use arch='dcnv2' or expert='dcnv2')")
    names = [n for n, *_ in found]
    if expert is None:
        chosen = found[0]
    else:
        matches = [f for f in found if f[0] == expert]
        if not matches:
            raise ValueError(f"no DCNv2 expert named {expert!r}; DCNv2 experts: {names}")
        chosen = matches[0]
    name, table_index, bank, member = chosen
    table, width = ranker.plan.tables[table_index]
    w_cross = _as_numpy_3d(bank.first_cross_weight()[member])  # [F_all*w, F_all*w]
    fields, mats = _static_field_embeddings(ranker, table, id_counts, max_rows, seed)
    n_static = len(fields)
    ia = np.full((n_static, n_static), np.nan)
    for i, e_i in enumerate(mats):
        if len(e_i) == 0:
            continue
        block_rows = w_cross[i * width:(i + 1) * width, : n_static * width]  # [w, F*w]
        projected = (e_i @ block_rows).reshape(len(e_i), n_static, width).transpose(1, 0, 2)  # [F, n_i, w]
        ia[i] = _ia_stack(projected)
    return InteractionMap(ia=ia, fields=fields, expert=name, table=table, width=width, experts=names)


def _as_numpy_3d(weight: Any) -> np.ndarray:
    if hasattr(weight, "detach"):
        weight = weight.detach().float().cpu().numpy()
    return np.asarray(weight, dtype=np.float64)


def plot_interaction_map(imap: InteractionMap, path: str | Path, max_labels: int = 40) -> Path:
    """Heatmap PNG of ``imap.ia / width`` (row: field i projected, column: field j it is projected for)."""
    plt = _pyplot()
    n = len(imap.fields)
    size = min(14.0, 3.0 + 0.16 * n)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(imap.ratio, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    step = max(1, math.ceil(n / max_labels))
    ticks = np.arange(0, n, step)
    labels = [imap.fields[t] for t in ticks]
    ax.set_xticks(ticks, labels, rotation=90, fontsize=6)
    ax.set_yticks(ticks, labels, fontsize=6)
    ax.set_xlabel("field j (projected for)")
    ax.set_ylabel("field i (projected)")
    ax.set_title(f"interaction collapse, IA(E_i W_i→j)/w, expert {imap.expert} ({imap.table}, w={imap.width})",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="IA / w")
    fig.tight_layout()
    return _save(fig, path)


# ----- plotting helpers ---------------------------------------------------------------------------------------
def _pyplot():  # noqa: ANN202 - matplotlib.pyplot
    """pyplot, on the file-only Agg backend unless the caller (a notebook) already chose a backend."""
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = [
    "CollapseReport",
    "FieldCollapse",
    "InteractionMap",
    "collapse_report",
    "id_counts_from_batch",
    "information_abundance",
    "interaction_collapse_map",
    "normalised_spectrum",
    "plot_interaction_map",
    "usable_rows",
    "weighted_sample",
]

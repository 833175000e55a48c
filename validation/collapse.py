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
read the model's weights, and matplotlib only inside the ``plot`` functions (Agg backend). The measure
itself is in validation/information_abundance.py, the DCNv2 interaction map in
validation/interaction_collapse.py.

Example::

    trained = load_trained(".adsrec/models/2026-11-07")   # components/training/artefact.py
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

from validation.gate_intervals import field_seed, ia_resamples
from validation.information_abundance import finite_matrix, singular_values, usable_rows
from validation.model_arrays import unwrap_ranker
from validation.plots import pyplot, save_figure

if TYPE_CHECKING:
    from models.ranker import Ranker
    from models.spec import FeatureSpec

DEFAULT_MNSE_BASES: tuple[int, ...] = (2, 3, 10)  # RankerConfig's default, for id counts from a bare spec
MAX_PANELS = 6


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
    for j, f, col in _checked_columns(batch, "cat", spec.categorical, "vocab_size", "ids"):
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
    for j, f, col in _checked_columns(batch, "num", spec.numeric, "n_buckets", "buckets"):
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


def _checked_columns(batch: Any, key: str, fields: Sequence[Any], size_attr: str, what: str):
    """``(j, field, column j of batch[key])`` for each field, after checking the tensor is there (when there
    are fields), is [N, len(fields)], and every value lies in [0, field.<size_attr>)."""
    if not fields:
        return
    if key not in batch:
        raise KeyError(f"batch has no {key!r} tensor")
    matrix = _to_numpy_int(batch[key])
    if matrix.ndim != 2 or matrix.shape[1] != len(fields):
        raise ValueError(f"batch[{key!r}] has shape {matrix.shape}, expected [N, {len(fields)}]")
    for j, f in enumerate(fields):
        col, size = matrix[:, j], getattr(f, size_attr)
        if len(col) and (col.min() < 0 or col.max() >= size):
            raise ValueError(f"batch[{key!r}] column {j} ({f.name}) has {what} outside [0, {size})")
        yield j, f, col


# ----- the report ---------------------------------------------------------------------------------------------
@dataclass
class FieldCollapse:
    """Information abundance of one field of one table.

    ``rows``: rows of the field in the table; ``used_rows``: rows the IA was computed on (read rows, sampled);
    ``dim``: the table's width d; ``ia``: raw IA; ``ia_ratio``: IA / d; ``spectrum``: σ / max σ;
    ``ia_resamples``: raw IA of bootstrap resamples of the used rows (empty when none were drawn).
    """

    table: str
    field: str
    rows: int
    used_rows: int
    dim: int
    ia: float
    spectrum: np.ndarray
    weighted: bool
    ia_resamples: np.ndarray | None = None

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
    with fewer than 2 usable rows; ``weighted``: whether id counts chose the rows; ``resamples``: bootstrap
    resamples of every field's used rows (0: no interval).
    """

    fields: list[FieldCollapse]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    weighted: bool = False
    max_rows: int | None = None
    arch: str | None = None
    resamples: int = 0

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

    @property
    def mean_ia_ratio_se(self) -> float | None:
        """The headline's bootstrap standard error: each resample recomputes every field's IA on its rows
        drawn with replacement and averages as the headline does; None without resamples or fields."""
        if self.resamples < 2 or not self.fields:
            return None
        per_table = [np.mean([f.ia_resamples / f.dim for f in self.fields if f.table == t], axis=0)
                     for t in self.tables]
        return float(np.std(np.mean(per_table, axis=0), ddof=1))

    def field(self, table: str, name: str) -> FieldCollapse:
        for f in self.fields:
            if f.table == table and f.field == name:
                return f
        raise KeyError(f"no measured field {name!r} in table {table!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_ia_ratio": self.mean_ia_ratio,
            "mean_ia_ratio_se": self.mean_ia_ratio_se,
            "resamples": self.resamples,
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
        se = self.mean_ia_ratio_se
        lines.append(f"overall mean IA/d (mean of the tables): {self.mean_ia_ratio:.3f}"
                     + (f" (bootstrap s.e. {se:.4f} over {self.resamples} resamples)" if se is not None else ""))
        if self.skipped:
            shown = ", ".join(sorted({f"{n} ({r})" for _, n, r in self.skipped}))
            lines.append(f"skipped: {shown}")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """PNG of the normalised singular spectra: one panel per table (at most 6), one line per field
        (categorical fields coloured and named, MNSE token blocks thin grey), log y."""
        plt = pyplot()
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
        return save_figure(fig, path)


def collapse_report(
    model: Any,
    id_counts: Mapping[str, Any] | None = None,
    max_rows: int | None = 20_000,
    seed: int = 0,
    resamples: int = 0,
) -> CollapseReport:
    """IA raw and IA/d of every field of every embedding table of ``model`` (a Ranker or TrainedModel).

    Fields are the rows blocks of :meth:`Ranker.field_slices`: each categorical field, and each MNSE token
    block ``name@base<b>`` (its ``b*K_b`` (position, digit) tokens). With ``id_counts`` (from
    :func:`id_counts_from_batch` on the training rows), a field's rows with count 0 are dropped and up to
    ``max_rows`` rows are drawn ∝ count; fields absent from ``id_counts`` use all their rows (and say
    so, ``weighted=False``). Fields with fewer than 2 usable rows are skipped and listed. With
    ``resamples`` (>= 2), each field's used rows are also resampled with replacement that many times
    (validation/gate_intervals.py ``ia_resamples``, one seed per field name), giving the headline's
    standard error :attr:`CollapseReport.mean_ia_ratio_se`.
    """
    ranker = unwrap_ranker(model)
    tables = ranker.embedding_tables()
    slices = ranker.field_slices()
    fields: list[FieldCollapse] = []
    skipped: list[tuple[str, str, str]] = []
    for table, weight in tables.items():
        w = finite_matrix(weight)
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
            sigma = singular_values(rows)
            fields.append(FieldCollapse(
                table=table, field=name, rows=stop - start, used_rows=int(rows.shape[0]), dim=int(w.shape[1]),
                ia=float(sigma.sum() / sigma[0]), spectrum=sigma / sigma[0], weighted=counts is not None,
                ia_resamples=ia_resamples(rows, resamples, field_seed(seed, name)) if resamples >= 2 else None,
            ))
    return CollapseReport(fields, skipped, weighted=id_counts is not None, max_rows=max_rows,
                          arch=getattr(getattr(ranker, "config", None), "arch", None),
                          resamples=resamples if resamples >= 2 else 0)


__all__ = ["CollapseReport", "FieldCollapse", "collapse_report", "id_counts_from_batch"]

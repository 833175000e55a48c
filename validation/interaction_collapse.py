"""Interaction collapse of a DCNv2 expert (METHODS.md "Interaction collapse"): the F x F map of the
information abundance of ``E_i W_{i→j}``, field i's embeddings as the first cross layer projects them
for field j, and its heatmap. torch is imported only to pool the MNSE fields.

Example::

    imap = interaction_collapse_map(trained.model, id_counts=counts)   # a DCNv2 ranker
    plot_interaction_map(imap, "interaction.png")
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from validation.information_abundance import finite_matrix, ia_of_stack, weighted_sample
from validation.model_arrays import unwrap_ranker
from validation.plots import pyplot, save_figure


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


def static_field_embeddings(
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
        x = finite_matrix(weight[start:stop])
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
    and the pooled MNSE fields (see :func:`static_field_embeddings`); the sequence field is left out.

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
    ranker = unwrap_ranker(model)
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
    fields, mats = static_field_embeddings(ranker, table, id_counts, max_rows, seed)
    n_static = len(fields)
    ia = np.full((n_static, n_static), np.nan)
    for i, e_i in enumerate(mats):
        if len(e_i) == 0:
            continue
        block_rows = w_cross[i * width:(i + 1) * width, : n_static * width]  # [w, F*w]
        projected = (e_i @ block_rows).reshape(len(e_i), n_static, width).transpose(1, 0, 2)  # [F, n_i, w]
        ia[i] = ia_of_stack(projected)
    return InteractionMap(ia=ia, fields=fields, expert=name, table=table, width=width, experts=names)


def _as_numpy_3d(weight: Any) -> np.ndarray:
    if hasattr(weight, "detach"):
        weight = weight.detach().float().cpu().numpy()
    return np.asarray(weight, dtype=np.float64)


def plot_interaction_map(imap: InteractionMap, path: str | Path, max_labels: int = 40) -> Path:
    """Heatmap PNG of ``imap.ia / width`` (row: field i projected, column: field j it is projected for)."""
    plt = pyplot()
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
    return save_figure(fig, path)


__all__ = ["InteractionMap", "interaction_collapse_map", "plot_interaction_map", "static_field_embeddings"]

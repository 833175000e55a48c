"""Embedding tables: multi-embedding (several tables per feature) with one fused lookup, and MNSE.

A *table* here is one full set of per-field embeddings (every categorical field, every MNSE token of every
numeric field) of one width. The ranker owns several tables (``T`` task tables + a shared one in STEM, ``M``
in multi-embedding, a few widths in AME). All fields of a table live in one matrix at fixed row offsets, and
all tables of the same width are stacked in one parameter, so a whole batch of every field of every table of
a width is one ``F.embedding`` call (METHODS.md "Multi-Embedding"; DESIGN.md section 7).

MNSE (Multiple Numeral Systems Encoding, METHODS.md): a bucket id ``v`` is written in every base ``b`` with
``K_b`` digits (``K_b`` fixed per feature from its ``n_buckets``); the pair (position ``k``, digit) is its own
token, row ``b*k + digit`` of that base's table; tokens are summed over positions and the bases concatenated
(or summed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.sequence import build_sequence_encoder
from models.spec import FeatureSpec


def mnse_num_digits(n_buckets: int, base: int) -> int:
    """K_b: digits needed to write every bucket id in ``[0, n_buckets)`` in ``base`` (at least 1)."""
    digits = 1
    while base**digits < n_buckets:
        digits += 1
    return digits


class MNSECodec(nn.Module):
    """Turns bucket ids of several numeric fields into MNSE token rows, and pools token embeddings.

    Parameter-free (only index buffers), so the tokens can live in any embedding matrix: ``token_rows``
    gives row ids relative to the start of the MNSE block, laid out field by field, base by base, each
    (field, base) block ``b * K_b`` rows long.

    Args:
        n_buckets: buckets of each numeric field.
        bases: numeral bases.
        combine: ``"concat"`` (one output field per base) or ``"sum"`` (one output field per numeric field).

    Example::

        codec = MNSECodec((10, 100), bases=(2, 10))
        codec.token_rows(torch.tensor([[3, 42]])).shape   # torch.Size([1, 2, P]), P = max K_2 + max K_10 = 7 + 2
        codec.pool(torch.randn(1, 2, 9, 16)).shape        # torch.Size([1, 4, 16]): 2 fields x 2 bases
    """

    def __init__(self, n_buckets: Sequence[int], bases: Sequence[int], combine: str = "concat") -> None:
        super().__init__()
        if combine not in ("concat", "sum"):
            raise ValueError(f"MNSE combine must be 'concat' or 'sum', got {combine!r}")
        self.n_buckets, self.bases, self.combine = tuple(n_buckets), tuple(bases), combine
        self.frozen = False  # see _pooled_values and freeze_pooled
        n_fields = len(self.n_buckets)
        digits = [[mnse_num_digits(n, b) for b in self.bases] for n in self.n_buckets]  # [field][base]
        # Every field gets the same P = sum_b max_field K_b positions so the ids form one rectangular
        # tensor; positions past a field's own K_b are masked out of the pooling below (their digit is
        # always 0 anyway) and point at a valid row of that field so the lookup stays in range.
        k_max = [max((digits[j][i] for j in range(n_fields)), default=1) for i in range(len(self.bases))]
        self.positions = sum(k_max)
        self.rows_per_field = [sum(b * digits[j][i] for i, b in enumerate(self.bases)) for j in range(n_fields)]
        self.num_rows = sum(self.rows_per_field)
        self.out_per_field = len(self.bases) if combine == "concat" else 1

        divisor, modulus = [], []
        for i, b in enumerate(self.bases):
            for k in range(k_max[i]):
                divisor.append(b**k)
                modulus.append(b)
        row_offset = torch.zeros(n_fields, self.positions, dtype=torch.long)
        pool = torch.zeros(n_fields, self.positions, self.out_per_field)
        field_start = 0
        self.block_slices: dict[tuple[int, int], tuple[int, int]] = {}  # (field, base) -> rows
        for j in range(n_fields):
            block_start, p = field_start, 0
            for i, b in enumerate(self.bases):
                self.block_slices[(j, b)] = (block_start, block_start + b * digits[j][i])
                for k in range(k_max[i]):
                    if k < digits[j][i]:
                        row_offset[j, p] = block_start + b * k  # token row = b*k + digit inside the base block
                        pool[j, p, i if combine == "concat" else 0] = 1.0
                    else:
                        row_offset[j, p] = field_start  # masked position: any valid row of this field
                    p += 1
                block_start += b * digits[j][i]
            field_start += self.rows_per_field[j]
        self.register_buffer("divisor", torch.tensor(divisor, dtype=torch.long), persistent=False)
        self.register_buffer("modulus", torch.tensor(modulus, dtype=torch.long), persistent=False)
        self.register_buffer("row_offset", row_offset, persistent=False)
        self.register_buffer("pool_matrix", pool, persistent=False)
        # The same pooling as an EmbeddingBag: one bag per (field, output) over that base's contiguous run of
        # positions (all P positions for "sum"), masked positions weighted 0.
        run_starts = [sum(k_max[:i]) for i in range(len(self.bases))] if combine == "concat" else [0]
        self.register_buffer("bag_starts", torch.tensor(run_starts, dtype=torch.long), persistent=False)
        self.register_buffer("position_weight", pool.sum(-1), persistent=False)  # [n_fields, P], 1 or 0
        # Every (field, bucket) pair's token rows: the pooled value table of ``embed`` (V = sum n_buckets rows).
        counts = torch.tensor(list(n_buckets), dtype=torch.long)
        self.register_buffer("value_start", torch.cumsum(counts, 0) - counts, persistent=False)
        field_of = torch.repeat_interleave(torch.arange(n_fields), counts)
        local = torch.arange(int(counts.sum())) - self.value_start[field_of]
        self.register_buffer("value_pool", pool[field_of], persistent=False)  # [V, P, C]: each value's pooling
        self.register_buffer("value_rows", row_offset[field_of] + self._digits_of(local, field_of), persistent=False)

    def _digits_of(self, local: torch.Tensor, field_of: torch.Tensor) -> torch.Tensor:
        """Digits [V, P] of bucket ids ``local`` [V] (of fields ``field_of``), the masked positions zeroed."""
        return self.digits(local.unsqueeze(-1)).squeeze(-2) * (self.pool_matrix[field_of].sum(-1) > 0)

    def digits(self, values: torch.Tensor) -> torch.Tensor:
        """Digits of ``values`` [B, n_fields] in every (base, position) -> [B, n_fields, P], least significant first."""
        return torch.div(values.unsqueeze(-1), self.divisor, rounding_mode="floor") % self.modulus

    def token_rows(self, values: torch.Tensor) -> torch.Tensor:
        """Rows (relative to the MNSE block) of every token: [B, n_fields] -> [B, n_fields, P]."""
        return self.row_offset + self.digits(values)

    def embed(self, weight: torch.Tensor, values: torch.Tensor, block_starts: torch.Tensor,
              sparse: bool = False) -> torch.Tensor:
        """Pooled MNSE embeddings read straight from ``weight``, for every table whose MNSE block starts at
        a row of ``block_starts`` [G]: ``values`` [B, n_fields] -> [G, B, n_fields * C, d].

        Equal to ``pool(weight[token_rows(values) + start])`` (tests/code/models/test_models_embeddings.py),
        without building the [G, B, n_fields, P, d] token tensor, whose gather, pool and backward cost
        several times the rest of a training step on CPU. When the fields have fewer buckets in all
        (V = sum n_buckets) than the batch has (sample, field) pairs, every bucket of every field is pooled
        once and the samples gather the pooled rows (V x P reads instead of B x n_fields x P); otherwise one
        ``F.embedding_bag`` pools the tokens as it reads them."""
        n_groups, n_fields, width = block_starts.numel(), values.shape[-1], weight.shape[-1]
        starts = block_starts.view(-1, 1, 1)
        if self.value_rows.shape[0] <= values.numel():
            pooled = self._pooled_values(weight, starts, sparse)
            n_values = self.value_rows.shape[0]
            idx = (values + self.value_start) + torch.arange(n_groups, device=values.device).view(-1, 1, 1) * n_values
            out = F.embedding(idx, pooled.reshape(n_groups * n_values, -1))  # [G, B, n_fields, C * d]
            return out.view(n_groups, values.shape[0], n_fields * self.out_per_field, width)
        rows = starts.unsqueeze(-1) + self.token_rows(values).unsqueeze(0)  # [G, B, n_fields, P]
        n_pairs = rows.numel() // self.positions
        offsets = (torch.arange(n_pairs, device=rows.device) * self.positions).unsqueeze(1) + self.bag_starts
        weights = self.position_weight.to(weight.dtype).expand(rows.shape).reshape(-1)
        pooled = F.embedding_bag(rows.reshape(-1), weight, offsets.reshape(-1), mode="sum", sparse=sparse,
                                 per_sample_weights=weights)
        return pooled.view(n_groups, values.shape[0], n_fields * self.out_per_field, width)

    def _pooled_values(self, weight: torch.Tensor, starts: torch.Tensor, sparse: bool) -> torch.Tensor:
        """[G, V, C, d]: every bucket of every field pooled. A frozen codec (:func:`freeze_pooled`: the
        weights will not change, as in a loaded artefact that only scores) keeps the result between calls
        without autograd, so a scorer answering many small requests pools once instead of per request.
        Training never caches: an optimiser step does not always move ``weight._version`` (fused Adam
        does not), so the weights' identity cannot tell a stale result."""
        key = None
        if self.frozen and not torch.is_grad_enabled():
            key = (id(weight), weight.data_ptr(), weight.dtype, tuple(starts.view(-1).tolist()))
            cached = self.__dict__.get("_pooled_cache")
            if cached is not None and cached[0] == key:
                return cached[1]
        tokens = F.embedding(starts + self.value_rows, weight, sparse=sparse)  # [G, V, P, d]
        pooled = torch.einsum("gvpd,vpc->gvcd", tokens, self.value_pool.to(tokens.dtype))
        if key is not None:
            self.__dict__["_pooled_cache"] = (key, pooled)
        return pooled

    def pool(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        """Sum tokens within a base, concat (or sum) bases: [..., n_fields, P, d] -> [..., n_fields * C, d]."""
        pooled = torch.einsum("...npd,npc->...ncd", token_embeddings, self.pool_matrix.to(token_embeddings.dtype))
        return pooled.flatten(-3, -2)


def freeze_pooled(model: nn.Module) -> nn.Module:
    """Mark every MNSE codec of ``model`` frozen: its weights will not change again (a loaded artefact
    that only scores), so the pooled bucket embeddings are kept between no-grad calls. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, MNSECodec):
            module.frozen = True
            module.__dict__.pop("_pooled_cache", None)
    return model


class MNSEEmbedding(nn.Module):
    """MNSE with its own embedding matrix, for numeric features used on their own (e.g. SEE similarities).

    Args:
        n_buckets: buckets of each numeric field.
        dim: embedding width d.
        bases: numeral bases.
        combine: ``"concat"`` or ``"sum"``.

    Example::

        mnse = MNSEEmbedding((20,), dim=8)
        mnse(torch.tensor([[5], [6]])).shape   # torch.Size([2, 3, 8]): 1 field x 3 bases (2, 3, 10)
    """

    def __init__(
        self, n_buckets: Sequence[int], dim: int, bases: Sequence[int] = (2, 3, 10), combine: str = "concat"
    ) -> None:
        super().__init__()
        self.codec = MNSECodec(n_buckets, bases, combine)
        self.table = nn.Embedding(self.codec.num_rows, dim)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """``values``: [B, n_fields] bucket ids. Returns [B, n_fields * C, d]."""
        zero = torch.zeros(1, dtype=torch.long, device=values.device)
        return self.codec.embed(self.table.weight, values, zero)[0]


def output_field_groups(
    spec: FeatureSpec, mnse_bases: Sequence[int], mnse_combine: str, sequence_encoder: str | None
) -> list[str]:
    """Group (``user`` / ``ad`` / ``context``) of every output field of a table, in field order.

    Fields: categorical, then MNSE (one per base with ``concat``, one per numeric field with ``sum``), then
    the sequence representation, which describes the user.
    """
    groups = [f.group for f in spec.categorical]
    per_numeric = len(mnse_bases) if mnse_combine == "concat" else 1
    for f in spec.numeric:
        groups += [f.group] * per_numeric
    if spec.sequence is not None and sequence_encoder is not None:
        groups.append("user")
    return groups


@dataclass(frozen=True)
class TableGroup:
    """Tables of one width, stacked in one parameter: ``tables`` are indices into the ranker's table list."""

    width: int
    tables: tuple[int, ...]


class MultiEmbedding(nn.Module):
    """Every table of the ranker, looked up with one fused ``F.embedding`` per width, plus the sequence encoder.

    Row layout of one table (the same for every table): categorical fields in spec order (``vocab_size``
    rows each), then the MNSE token rows of the numeric fields. Each table's output is ``X`` [B, F, w] with
    fields: categorical (n_cat), MNSE (n_num x C, C = number of bases for concat, 1 for sum), then the
    sequence representation (1, when a sequence encoder is used). The sequence items share the rows of
    ``spec.sequence.item_field`` (and ``category_field``) of the same table; TIM's temporal embeddings
    (positions 0..L, gap buckets) are a small dense parameter per table.

    Args:
        spec: the feature specification.
        tables: ``(name, width)`` of every table.
        mnse_bases: MNSE bases.
        mnse_combine: ``"concat"`` or ``"sum"``.
        sequence_encoder: ``"tim"``, ``"din"``, ``"mean"`` or None.
        tim_temporal: ``"position"``, ``"gap"`` or ``"both"`` (TIM only).
        init_std: normal init of the rows.
        sparse: sparse gradients for the big matrices.

    Example::

        spec = FeatureSpec((CategoricalField("user_id", 100, "user"), CategoricalField("ad_id", 50, "ad")))
        emb = MultiEmbedding(spec, [("task:click", 16), ("shared", 16), ("wide", 32)])
        xs = emb({"cat": torch.randint(0, 50, (8, 2))})
        [x.shape for x in xs]   # [torch.Size([2, 8, 2, 16]), torch.Size([1, 8, 2, 32])]: one per width
    """

    def __init__(
        self,
        spec: FeatureSpec,
        tables: Sequence[tuple[str, int]],
        mnse_bases: Sequence[int] = (2, 3, 10),
        mnse_combine: str = "concat",
        sequence_encoder: str | None = "tim",
        tim_temporal: str = "both",
        init_std: float = 0.05,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        if not tables:
            raise ValueError("MultiEmbedding needs at least one table")
        names = [n for n, _ in tables]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate table names: {names}")
        self.spec, self.table_names, self.sparse = spec, names, sparse
        self.table_widths = [w for _, w in tables]

        # Row layout of one table.
        self.cat_slices: dict[str, tuple[int, int]] = {}
        start = 0
        for f in spec.categorical:
            self.cat_slices[f.name] = (start, start + f.vocab_size)
            start += f.vocab_size
        self.register_buffer(
            "cat_offsets", torch.tensor([s for s, _ in self.cat_slices.values()], dtype=torch.long), persistent=False
        )
        self.mnse = MNSECodec([f.n_buckets for f in spec.numeric], mnse_bases, mnse_combine) if spec.numeric else None
        self.mnse_start = start
        self.rows = start + (self.mnse.num_rows if self.mnse else 0)

        # The sequence is used only when the spec has one and the config asks for an encoder.
        seq = spec.sequence if sequence_encoder is not None else None
        self.seq = seq
        self.seq_kind = sequence_encoder if seq is not None else None
        self.use_position = self.seq_kind == "tim" and tim_temporal in ("position", "both")
        self.use_gap = self.seq_kind == "tim" and tim_temporal in ("gap", "both")
        self.seq_encoder = build_sequence_encoder(self.seq_kind) if seq is not None else None
        self.gap_start = (seq.length + 1) if (seq is not None and self.use_position) else 0
        temporal_rows = self.gap_start + (seq.n_gap_buckets if (seq is not None and self.use_gap) else 0)

        groups = output_field_groups(spec, mnse_bases, mnse_combine, sequence_encoder)
        self.field_groups: list[str] = groups
        self.num_fields = len(groups)

        # One stacked parameter (and one temporal parameter) per distinct width.
        by_width: dict[int, list[int]] = {}
        for i, w in enumerate(self.table_widths):
            by_width.setdefault(w, []).append(i)
        self.groups = [TableGroup(w, tuple(idx)) for w, idx in by_width.items()]
        self.weights = nn.ParameterList()
        self.temporal = nn.ParameterList()
        for g in self.groups:
            weight = nn.Parameter(torch.empty(len(g.tables) * self.rows, g.width))
            nn.init.normal_(weight, std=init_std)
            self.weights.append(weight)
            if temporal_rows:
                temporal = nn.Parameter(torch.empty(len(g.tables), temporal_rows, g.width))
                nn.init.normal_(temporal, std=init_std)
                self.temporal.append(temporal)
            self.register_buffer(
                f"table_offsets_{len(self.weights) - 1}",
                torch.arange(len(g.tables), dtype=torch.long) * self.rows,
                persistent=False,
            )
        # table index -> (group, position inside the group)
        self.locate = {t: (gi, j) for gi, g in enumerate(self.groups) for j, t in enumerate(g.tables)}

    def _direct_ids(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Rows of one table read one per id: [B, N] (categorical fields, then sequence items / categories)."""
        parts = []
        if self.spec.categorical:
            parts.append(batch["cat"] + self.cat_offsets)
        if self.seq is not None:
            parts.append(batch["seq_items"] + self.cat_slices[self.seq.item_field][0])
            if self.seq.category_field is not None:
                parts.append(batch["seq_cats"] + self.cat_slices[self.seq.category_field][0])
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _row_ids(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rows of one table read by every sample: [B, N] (categorical, MNSE tokens, sequence items/cats)."""
        direct = self._direct_ids(batch)
        if self.mnse is None:
            return direct
        tokens = self.mnse.token_rows(batch["num"]).flatten(1) + self.mnse_start
        if direct is None:
            return tokens
        n_cat = len(self.spec.categorical)
        return torch.cat([direct[:, :n_cat], tokens, direct[:, n_cat:]], dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Returns one tensor per width group (``self.groups`` order): [n_tables_in_group, B, F, w].

        Per width: one ``F.embedding`` for the ids read one row each (categorical fields, the sequence)
        and the pooled MNSE embeddings of the numeric fields (``MNSECodec.embed``)."""
        ids = self._direct_ids(batch)
        n_cat = len(self.spec.categorical)
        out = []
        for gi in range(len(self.groups)):
            offsets = getattr(self, f"table_offsets_{gi}")
            fields, emb = [], None
            if ids is not None:
                idx = offsets.view(-1, 1, 1) + ids.unsqueeze(0)  # [G, B, N]
                emb = F.embedding(idx, self.weights[gi], sparse=self.sparse)  # [G, B, N, w]
                fields.append(emb if self.seq is None else emb[:, :, :n_cat])
            if self.mnse is not None:  # [G, B, n_num * C, w]
                fields.append(self.mnse.embed(self.weights[gi], batch["num"], offsets + self.mnse_start, self.sparse))
            if self.seq is not None:
                fields.append(self._encode_sequence(gi, emb, n_cat, batch).unsqueeze(2))
            out.append(fields[0] if len(fields) == 1 else torch.cat(fields, dim=2))
        return out

    def _encode_sequence(self, gi: int, emb: torch.Tensor, pos: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Behaviour sequence of every table of group ``gi`` -> [G, B, w]."""
        seq = self.seq
        assert seq is not None and self.seq_encoder is not None
        length = seq.length
        items = emb[:, :, pos : pos + length]  # e_i = item (+ category) embedding, [G, B, L, w]
        target = emb[:, :, self.spec.categorical_index(seq.item_field)]  # v_t, [G, B, w]
        if seq.category_field is not None:
            items = items + emb[:, :, pos + length : pos + 2 * length]
            target = target + emb[:, :, self.spec.categorical_index(seq.category_field)]
        mask = batch["seq_gaps"] > 0  # [B, L]; gap bucket 0 marks padding
        temporal = target_temporal = None
        if self.use_position or self.use_gap:
            table = self.temporal[gi]  # [G, rows, w]
            n_tab, rows, width = table.shape
            temporal = torch.zeros((), dtype=table.dtype, device=table.device)
            target_temporal = torch.zeros((), dtype=table.dtype, device=table.device)
            if self.use_position:
                # f_i = target-relative position: the newest behaviour (index 0) is 1; the target is 0.
                temporal = temporal + table[:, 1 : length + 1].unsqueeze(1)  # [G, 1, L, w]
                target_temporal = target_temporal + table[:, 0].unsqueeze(1)  # [G, 1, w]
            if self.use_gap:
                gap_idx = batch["seq_gaps"].unsqueeze(0) + (
                    torch.arange(n_tab, device=table.device).view(-1, 1, 1) * rows + self.gap_start
                )
                temporal = temporal + F.embedding(gap_idx, table.reshape(n_tab * rows, width))  # [G, B, L, w]
                # gap bucket 0 (zero time to the target) is the target's own temporal embedding
                target_temporal = target_temporal + table[:, self.gap_start].unsqueeze(1)
        return self.seq_encoder(items, target, mask, temporal, target_temporal)

    # -- inspection (issue 5: dimensional collapse, contradictory preferences) ------------------------------

    def table(self, name: str) -> torch.Tensor:
        """Weight of table ``name``, [rows, w] (a detached view)."""
        if name not in self.table_names:
            raise KeyError(f"no table {name!r}; tables: {self.table_names}")
        gi, j = self.locate[self.table_names.index(name)]
        return self.weights[gi].detach()[j * self.rows : (j + 1) * self.rows]

    def field_slices(self) -> dict[str, tuple[int, int]]:
        """Rows of each field inside a table: categorical fields by name, MNSE blocks as ``name@base<b>``."""
        slices = dict(self.cat_slices)
        if self.mnse is not None:
            for (j, b), (s, e) in self.mnse.block_slices.items():
                slices[f"{self.spec.numeric[j].name}@base{b}"] = (self.mnse_start + s, self.mnse_start + e)
        return slices

    def check_ids(self, batch: dict[str, torch.Tensor]) -> None:
        """Raise if any id is outside its field's range (an out-of-range id would read the next field's rows).

        Not called by ``forward`` (it syncs with the host); the trainer calls it once on the encoded data.
        """
        checks = [("cat", batch.get("cat"), [f.vocab_size for f in self.spec.categorical])]
        if self.spec.numeric:
            checks.append(("num", batch.get("num"), [f.n_buckets for f in self.spec.numeric]))
        for key, values, limits in checks:
            if values is None:
                raise KeyError(f"batch has no {key!r} tensor")
            limit = torch.tensor(limits, device=values.device)
            bad = (values < 0) | (values >= limit)
            if bool(bad.any()):
                col = int(bad.any(dim=0).nonzero()[0])
                raise ValueError(f"batch[{key!r}] column {col} has ids outside [0, {limits[col]})")
        if self.seq is not None:
            vocab = self.spec.categorical[self.spec.categorical_index(self.seq.item_field)].vocab_size
            for key, hi in (("seq_items", vocab), ("seq_gaps", self.seq.n_gap_buckets)):
                values = batch[key]
                if bool(((values < 0) | (values >= hi)).any()):
                    raise ValueError(f"batch[{key!r}] has ids outside [0, {hi})")

"""The multi-task ranker: embeddings -> experts -> multi-task layer -> towers, assembled from a config.

``Ranker(spec, config)`` builds the named parts (``embedding``: :class:`~models.embeddings.MultiEmbedding`,
``expert_banks``: experts grouped by kind and width, ``mixer``: STEM / AME / STEM-AL / MMoE / PLE / shared,
``towers``). ``forward(batch)`` returns ``{task: logits [B] float32}``; the loss lives in
``models/losses.py`` so the model stays pure. Device-agnostic: every tensor it creates follows the inputs'
device; autocast is the trainer's business.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from models.config import RankerConfig
from models.embeddings import MultiEmbedding, output_field_groups
from models.experts import build_expert_bank
from models.multitask import build_mixer, build_plan
from models.spec import GROUPS, FeatureSpec
from models.towers import Towers


def _as_range(indices: Sequence[int]) -> slice | None:
    """``slice(a, b)`` when ``indices`` are ``a, a+1, ..., b-1``, else None."""
    if indices and list(indices) == list(range(indices[0], indices[0] + len(indices))):
        return slice(indices[0], indices[0] + len(indices))
    return None


def cascade_logit(parent: torch.Tensor, child: torch.Tensor, detach_parent: bool = True) -> torch.Tensor:
    """The logit of p = sigmoid(parent) * sigmoid(child) (ESMM: p(conversion) = p(click) * p(conv | click)),
    computed in log space: log p = logsigmoid(a) + logsigmoid(b), logit = log p - log(1 - p). [B] -> [B].

    Example::

        a, b = torch.tensor([0.3]), torch.tensor([-1.2])
        torch.sigmoid(cascade_logit(a, b))   # == torch.sigmoid(a) * torch.sigmoid(b)
    """
    a = parent.detach() if detach_parent else parent
    log_p = (F.logsigmoid(a) + F.logsigmoid(child)).clamp(max=-1e-7)  # p < 1: the logit stays finite
    # log(1 - e^x) for x < 0, stable on both sides of -ln 2; each branch sees only safe inputs so that
    # the branch torch.where discards has no inf/NaN gradient either.
    near_one = log_p > -0.6931471805599453
    log_1mp = torch.where(near_one, torch.log(-torch.expm1(torch.where(near_one, log_p, -1.0))),
                          torch.log1p(-torch.exp(torch.where(near_one, -1.0, log_p))))
    return log_p - log_1mp


class Ranker(nn.Module):
    """Multi-task ranker over a :class:`FeatureSpec`, architecture chosen by a :class:`RankerConfig`.

    Args:
        spec: the input fields and tasks.
        config: architecture and sizes.

    Example::

        spec = FeatureSpec((CategoricalField("user_id", 100, "user"), CategoricalField("ad_id", 50, "ad")))
        model = Ranker(spec, RankerConfig(arch="stem"))
        logits = model({"cat": torch.randint(0, 50, (8, 2))})
        {t: v.shape for t, v in logits.items()}   # {'click': torch.Size([8]), 'conversion': torch.Size([8])}
    """

    def __init__(self, spec: FeatureSpec, config: RankerConfig) -> None:
        super().__init__()
        if config.arch == "stem_al" and config.main_task is not None and config.main_task not in spec.tasks:
            raise ValueError(f"main_task {config.main_task!r} is not one of the tasks {spec.tasks}")
        self.spec, self.config, self.tasks = spec, config, tuple(spec.tasks)
        names = output_field_groups(spec, config.mnse_bases, config.mnse_combine, config.sequence_encoder)
        present = [g for g in GROUPS if g in names]
        field_groups = [present.index(g) for g in names]
        self.plan = build_plan(self.tasks, config, len(present))

        self.embedding = MultiEmbedding(
            spec,
            self.plan.tables,
            config.mnse_bases,
            config.mnse_combine,
            config.sequence_encoder,
            config.tim_temporal,
            config.embedding_init_std,
            config.sparse_embeddings,
        )
        n_fields = self.embedding.num_fields

        # Experts of one kind over tables of one width form one bank (batched matmuls).
        banks: dict[tuple[str, int], list[int]] = {}
        for e, slot in enumerate(self.plan.experts):
            banks.setdefault((slot.kind, self.plan.tables[slot.table][1]), []).append(e)
        self.expert_banks = nn.ModuleList()
        self._bank_inputs: list[tuple[int, slice | str]] = []  # (table group, slice or name of an index buffer)
        bank_order: list[int] = []
        for (kind, width), members in banks.items():
            self.expert_banks.append(
                build_expert_bank(
                    kind, len(members), n_fields, width, field_groups, config.expert_hidden, config.cross_layers,
                    config.dropout,
                )
            )
            located = [self.embedding.locate[self.plan.experts[e].table] for e in members]
            group = located[0][0]
            local = [j for _, j in located]
            full = list(range(len(self.embedding.groups[group].tables)))
            select: slice | str
            if local == full:
                select = slice(None)
            else:
                as_slice = _as_range(local)
                if as_slice is not None:
                    select = as_slice
                else:
                    select = f"bank_select_{len(self._bank_inputs)}"
                    self.register_buffer(select, torch.tensor(local, dtype=torch.long), persistent=False)
            self._bank_inputs.append((group, select))
            bank_order += members
        # Permutation from bank order back to plan order (None when already in plan order).
        self._reorder = bank_order != sorted(bank_order)
        self.register_buffer(
            "expert_reorder", torch.tensor([bank_order.index(e) for e in range(len(bank_order))]), persistent=False
        )
        table_dims = [n_fields * w for _, w in self.plan.tables]
        self.mixer = build_mixer(self.plan, self.tasks, config, table_dims)
        self.towers = Towers(len(self.tasks), config.expert_hidden[-1], config.tower_hidden, config.dropout)
        unknown = sorted({t for pair in config.cascade for t in pair} - set(self.tasks))
        if unknown:
            raise ValueError(f"cascade names tasks {unknown} that the spec does not have ({list(self.tasks)})")
        self._cascade = config.cascade

    # -- forward ---------------------------------------------------------------------------------------------

    def _table_stack(self, grouped: list[torch.Tensor]):  # noqa: ANN202 - returns models.multitask.TableStack
        """A function from table indices to their stacked flattened embeddings [k, B, F*w]."""
        locate = self.embedding.locate

        def stack(indices: Sequence[int]) -> torch.Tensor:
            where = [locate[i] for i in indices]
            groups = {g for g, _ in where}
            if len(groups) == 1:
                g = where[0][0]
                as_slice = _as_range([j for _, j in where])
                if as_slice is not None:
                    return grouped[g][as_slice].flatten(2)  # a view: no copy
            return torch.stack([grouped[g][j].flatten(1) for g, j in where])

        return stack

    def forward_with_aux(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
        """Per-task logits and the inside view: ``aux["expert_outputs"]`` {expert name: [B, h]} and
        ``aux["gates"]`` {task: [B, n_experts]} (weights of the last mixing layer; 0 where not allowed)."""
        grouped = self.embedding(batch)  # per width group: [n_tables, B, F, w]
        outputs = []
        for bank, (group, select) in zip(self.expert_banks, self._bank_inputs):
            x = grouped[group]
            x = x[select] if isinstance(select, slice) else x.index_select(0, getattr(self, select))
            outputs.append(bank(x))  # [n, B, h]
        experts = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
        if self._reorder:
            experts = experts.index_select(0, self.expert_reorder)
        mixed, gates = self.mixer(self._table_stack(grouped), experts)
        logits = self.towers(mixed).float()  # [T, B]
        out = {task: logits[t] for t, task in enumerate(self.tasks)}
        for child, parent in self._cascade:
            out[child] = cascade_logit(out[parent], out[child], self.config.cascade_detach_parent)
        expert_outputs = {slot.name: experts[e] for e, slot in enumerate(self.plan.experts)}
        expert_outputs.update(self.mixer.extra_experts())
        aux = {"expert_outputs": expert_outputs, "gates": {task: gates[t] for t, task in enumerate(self.tasks)}}
        return out, aux

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch``: ``"cat"`` [B, n_cat], ``"num"`` [B, n_num], ``"seq_items"``/``"seq_cats"``/``"seq_gaps"``
        [B, L] (int64). Returns ``{task: logits [B] float32}``."""
        return self.forward_with_aux(batch)[0]

    # -- inspection and optimiser helpers -------------------------------------------------------------------

    def embedding_tables(self) -> dict[str, torch.Tensor]:
        """Table name -> weight [rows, w] (detached views); rows of each field: :meth:`field_slices`."""
        return {name: self.embedding.table(name) for name in self.embedding.table_names}

    def field_slices(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Table name -> {field -> (start, stop) rows}; every table has the same layout."""
        slices = self.embedding.field_slices()
        return {name: dict(slices) for name in self.embedding.table_names}

    def user_item_embeddings(
        self, table: str, user_field: str = "user_id", item_field: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the user-id and item-id fields of ``table``: ([n_users, w], [n_items, w]).

        ``item_field`` defaults to the sequence's item field, else ``"ad_id"``.
        """
        if item_field is None:
            item_field = self.spec.sequence.item_field if self.spec.sequence is not None else "ad_id"
        weight, slices = self.embedding.table(table), self.embedding.field_slices()
        for name in (user_field, item_field):
            if name not in slices:
                raise KeyError(f"no field {name!r} in table {table!r}; fields: {sorted(slices)}")
        (us, ue), (is_, ie) = slices[user_field], slices[item_field]
        return weight[us:ue], weight[is_:ie]

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The big (possibly sparse-gradient) embedding matrices, for a row-wise optimiser."""
        return list(self.embedding.weights)

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other parameter."""
        sparse_ids = {id(p) for p in self.embedding.weights}
        return [p for p in self.parameters() if id(p) not in sparse_ids]

    def check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """Raise if ids are out of range (see :meth:`MultiEmbedding.check_ids`)."""
        self.embedding.check_ids(batch)

"""Multi-task layers: which tables and experts each architecture has, and how each task mixes the experts.

:func:`build_plan` turns a :class:`~models.config.RankerConfig` into tables (name, width) and experts (name,
table read, kind). The mixers then turn expert outputs [E, B, h] into one tower input per task:

- STEM: task ``t``'s gate reads ``X_t + X_s`` (its table and the shared table, flattened) and softmaxes over
  all experts; every other task's experts enter with their outputs *detached* (all forward, task-specific
  backward), its own and the shared experts normally.
- STEM-AL: each auxiliary task mixes only its own experts (gate on its own table); the main task's gate
  reads its own table and softmaxes over its own experts plus the auxiliary experts detached.
- AME: tables of different widths, one expert each, a per-task softmax gate over all experts (gate input:
  all tables flattened and concatenated), no stop-gradient.
- MMoE: per-task softmax gates over shared experts of one table. PLE: task-specific + shared experts in
  ``ple_levels`` extraction layers. Shared-bottom / DCNv2: one expert for all towers.
- Multi-embedding: one expert per table, combined by their mean, learned per-task softmax weights, or a
  per-task gate on the summed tables.

Gates are batched across tasks; excluded experts get a ``-inf`` logit (weight exactly 0, so exactly zero
gradient) and detached experts are mixed in with a second batched matmul over ``outputs.detach()``, so no
per-task stacked copies of the expert outputs are made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from models.batched import BatchedMLP
from models.config import RankerConfig


@dataclass(frozen=True)
class ExpertSlot:
    """One expert: its name, the table it reads (index into the plan's tables) and its kind."""

    name: str
    table: int
    kind: str


@dataclass(frozen=True)
class Plan:
    """Tables (name, width) and experts of an architecture, and its mixing rule."""

    tables: tuple[tuple[str, int], ...]
    experts: tuple[ExpertSlot, ...]
    mixing: str  # "shared", "me_mean", "me_weighted", "gate", "ple"


def build_plan(tasks: Sequence[str], config: RankerConfig, n_field_groups: int) -> Plan:
    """Tables and experts of ``config.arch`` for ``tasks``.

    When any expert is GwPFM, every table is ``n_field_groups`` times wider (one sub-embedding per group).
    """
    d, k_shared, per_task = config.embedding_dim, config.num_shared_experts, config.experts_per_task
    kinds = config.expert_kinds
    arch = config.arch
    tables: list[tuple[str, int]] = []
    reads: list[tuple[str, int]] = []  # (expert name, table)
    mixing = "gate"
    if arch in ("shared_bottom", "dcnv2"):
        tables, reads, mixing = [("shared", d)], [("shared/0", 0)], "shared"
    elif arch == "multi_embedding":
        tables = [(f"me{m}", d) for m in range(config.num_tables)]
        reads = [(f"me{m}/0", m) for m in range(config.num_tables)]
        mixing = {"mean": "me_mean", "weighted": "me_weighted", "gate": "gate"}[config.me_combine]
    elif arch == "mmoe":
        tables, reads = [("shared", d)], [(f"shared/{k}", 0) for k in range(k_shared)]
    elif arch == "ple":
        tables = [("shared", d)]
        reads = [(f"task:{t}/{p}", 0) for t in tasks for p in range(per_task)]
        reads += [(f"shared/{k}", 0) for k in range(k_shared)]
        mixing = "ple"
    elif arch in ("stem", "stem_al"):
        tables = [(f"task:{t}", d) for t in tasks]
        reads = [(f"task:{t}/{p}", i) for i, t in enumerate(tasks) for p in range(per_task)]
        if arch == "stem" and k_shared:
            tables.append(("shared", d))
            reads += [(f"shared/{k}", len(tasks)) for k in range(k_shared)]
    elif arch == "ame":
        tables = [(f"ame{i}_w{w}", w) for i, w in enumerate(config.ame_widths)]
        reads = [(f"ame{i}_w{w}/0", i) for i, w in enumerate(config.ame_widths)]
    else:  # pragma: no cover - RankerConfig validates arch
        raise ValueError(f"unknown arch {arch!r}")
    if not reads:
        raise ValueError(f"arch {arch!r} with this config has no experts (num_shared_experts={k_shared})")
    experts = [
        ExpertSlot(name, table, "dcnv2" if arch == "dcnv2" else kinds[i % len(kinds)])
        for i, (name, table) in enumerate(reads)
    ]
    # With any GwPFM expert every table is G times wider, so tables stay summable for the gates (STEM's
    # X_t + X_s) and every expert of a kind sees the same layout; MLP/DCNv2 experts just see wider rows.
    scale = n_field_groups if any(e.kind == "gwpfm" for e in experts) else 1
    return Plan(tuple((n, w * scale) for n, w in tables), tuple(experts), mixing)


class GatedMixture(nn.Module):
    """T softmax gates over E experts, with per-gate allowed and detached experts.

    Args:
        allowed: [T, E] bool, experts gate t may weigh (excluded ones get weight exactly 0).
        detached: [T, E] bool, experts that enter gate t's mixture with their output detached.
        gate_in: width of a gate's input.
        gate_hidden: hidden widths of each gate MLP (a final linear layer gives E logits).

    Example::

        allowed = torch.ones(2, 3, dtype=torch.bool)
        detached = torch.tensor([[False, True, False], [True, False, False]])
        mix = GatedMixture(allowed, detached, gate_in=12, gate_hidden=(8,))
        mixed, weights = mix(torch.randn(2, 5, 12), torch.randn(3, 5, 4))
        mixed.shape, weights.shape   # torch.Size([2, 5, 4]), torch.Size([2, 5, 3])
    """

    def __init__(self, allowed: torch.Tensor, detached: torch.Tensor, gate_in: int, gate_hidden: Sequence[int]) -> None:
        super().__init__()
        allowed, detached = allowed.bool(), detached.bool() & allowed.bool()
        if not bool(allowed.any(dim=1).all()):
            raise ValueError("every gate must allow at least one expert")
        n_gates, n_experts = allowed.shape
        self.n_gates = n_gates
        self.gates = BatchedMLP(n_gates, gate_in, (*gate_hidden, n_experts), final_activation=False)
        self.register_buffer("logit_bias", torch.where(allowed, 0.0, float("-inf")), persistent=False)
        self.register_buffer("live", (allowed & ~detached).float(), persistent=False)
        self.register_buffer("frozen", detached.float(), persistent=False)
        self.has_detached = bool(detached.any())

    def forward(self, gate_input: torch.Tensor, experts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``gate_input``: [T, B, in] or [B, in] (shared); ``experts``: [E, B, h].
        Returns the mixtures [T, B, h] and the gate weights [T, B, E]."""
        logits = self.gates(gate_input) + self.logit_bias.unsqueeze(1)
        weights = torch.softmax(logits.float(), dim=-1).to(experts.dtype)  # [T, B, E]
        outputs = experts.transpose(0, 1)  # [B, E, h]
        mixed = torch.bmm((weights * self.live.unsqueeze(1).to(weights.dtype)).transpose(0, 1), outputs)
        if self.has_detached:
            frozen = (weights * self.frozen.unsqueeze(1).to(weights.dtype)).transpose(0, 1)
            mixed = mixed + torch.bmm(frozen, outputs.detach())
        return mixed.transpose(0, 1), weights


TableStack = Callable[[Sequence[int]], torch.Tensor]
"""Given table indices, their flattened embeddings stacked: [k, B, F*w] (a view when possible)."""


class Mixer(nn.Module):
    """Base of the mixers.

    ``forward(tables, experts) -> (tower inputs [T, B, h] or shared [B, h], gate weights [T, B, E])``.
    """

    def __init__(self, n_tasks: int) -> None:
        super().__init__()
        self.n_tasks = n_tasks

    def extra_experts(self) -> dict[str, torch.Tensor]:
        """Expert outputs made inside the mixer (PLE's upper levels) from the last forward."""
        return {}


class SharedMixer(Mixer):
    """Every tower reads the same expert (shared-bottom, DCNv2) or the experts' mean (ME "mean")."""

    def forward(self, tables: TableStack, experts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_experts, batch = experts.shape[0], experts.shape[1]
        mixed = experts[0] if n_experts == 1 else experts.mean(dim=0)
        gates = experts.new_full((1, 1, 1), 1.0 / n_experts).expand(self.n_tasks, batch, n_experts)
        return mixed, gates


class WeightedMixer(Mixer):
    """Learned per-task softmax weights over the experts (ME "weighted"); init uniform."""

    def __init__(self, n_tasks: int, n_experts: int) -> None:
        super().__init__(n_tasks)
        self.logits = nn.Parameter(torch.zeros(n_tasks, n_experts))

    def forward(self, tables: TableStack, experts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.softmax(self.logits, dim=-1).to(experts.dtype)  # [T, E]
        mixed = torch.einsum("te,ebh->tbh", weights, experts)
        return mixed, weights.unsqueeze(1).expand(-1, experts.shape[1], -1)


class GatedMixer(Mixer):
    """Per-task gates (STEM, STEM-AL, AME, MMoE, ME "gate").

    Args:
        n_tasks: T.
        allowed: [T, E] experts each task's gate may use.
        detached: [T, E] experts entering with detached outputs.
        gate_tables: for each task, the tables summed to form its gate input; or None with
            ``shared_tables`` set.
        shared_tables: tables concatenated (``"concat"``) or summed (``"sum"``) into one gate input for all tasks.
        gate_in: width of a gate input.
        gate_hidden: gate MLP widths.
    """

    def __init__(
        self,
        n_tasks: int,
        allowed: torch.Tensor,
        detached: torch.Tensor,
        gate_tables: list[tuple[int, ...]] | None,
        shared_tables: tuple[str, tuple[int, ...]] | None,
        gate_in: int,
        gate_hidden: Sequence[int],
    ) -> None:
        super().__init__(n_tasks)
        if (gate_tables is None) == (shared_tables is None):
            raise ValueError("give exactly one of gate_tables and shared_tables")
        self.gate_tables, self.shared_tables = gate_tables, shared_tables
        self.mixture = GatedMixture(allowed, detached, gate_in, gate_hidden)

    def gate_input(self, tables: TableStack) -> torch.Tensor:
        """[T, B, in] (per-task) or [B, in] (shared)."""
        if self.shared_tables is not None:
            how, idx = self.shared_tables
            if how == "sum":
                return tables(idx).sum(dim=0)
            if len(idx) == 1:
                return tables(idx)[0]
            return torch.cat([tables([i])[0] for i in idx], dim=-1)  # widths may differ (AME)
        assert self.gate_tables is not None
        # Same number of summed tables per task (checked by the ranker), so sum position by position:
        # e.g. STEM: X_t (tables 0..T-1, a view) + X_s (broadcast).
        out = None
        for pos in range(len(self.gate_tables[0])):
            column = [g[pos] for g in self.gate_tables]
            part = tables(column) if len(set(column)) > 1 else tables(column[:1])
            out = part if out is None else out + part
        assert out is not None
        return out.expand(self.n_tasks, -1, -1) if out.shape[0] == 1 else out

    def forward(self, tables: TableStack, experts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mixture(self.gate_input(tables), experts)


class PLEMixer(Mixer):
    """Progressive layered extraction: ``levels`` of task-specific + shared experts with gates.

    Level 1's experts are the ranker's experts (reading the shared table); level l > 1 has its own MLP
    experts reading the previous level's mixtures (task t's experts read task t's, the shared experts the
    shared gate's). Each task gate weighs its own experts and the shared ones; the shared gate (present
    below the top level) weighs all.
    """

    def __init__(
        self,
        n_tasks: int,
        per_task: int,
        n_shared: int,
        in_dim: int,
        hidden: Sequence[int],
        gate_hidden: Sequence[int],
        levels: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(n_tasks)
        n_experts = n_tasks * per_task + n_shared
        owner = [t for t in range(n_tasks) for _ in range(per_task)] + [n_tasks] * n_shared  # n_tasks = shared
        self.owner = owner
        self.levels = levels
        self.mixtures = nn.ModuleList()
        self.upper_experts = nn.ModuleList()
        for level in range(levels):
            top = level == levels - 1
            n_gates = n_tasks if top else n_tasks + 1
            allowed = torch.zeros(n_gates, n_experts, dtype=torch.bool)
            for g in range(n_gates):
                for e, o in enumerate(owner):
                    allowed[g, e] = g == n_tasks or o == g or o == n_tasks
            gate_in = in_dim if level == 0 else hidden[-1]
            self.mixtures.append(GatedMixture(allowed, torch.zeros_like(allowed), gate_in, gate_hidden))
            if level > 0:
                self.upper_experts.append(BatchedMLP(n_experts, hidden[-1], hidden, dropout, final_activation=True))
        self.register_buffer("expert_source", torch.tensor(owner, dtype=torch.long), persistent=False)
        self._extra: dict[str, torch.Tensor] = {}

    def forward(self, tables: TableStack, experts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._extra = {}
        mixed, weights = self.mixtures[0](tables([0])[0], experts)
        for level in range(1, self.levels):
            inputs = mixed.index_select(0, self.expert_source)  # [E, B, h]: each expert's source mixture
            outputs = self.upper_experts[level - 1](inputs)
            for e in range(outputs.shape[0]):
                self._extra[f"level{level}/{e}"] = outputs[e]
            mixture = self.mixtures[level]
            mixed, weights = mixture(mixed[: mixture.n_gates], outputs)  # gate g reads mixture g
        return mixed, weights

    def extra_experts(self) -> dict[str, torch.Tensor]:
        # Hand the last forward's upper-level outputs over and forget them: held on the module they would
        # keep that step's autograd graph alive and make the module impossible to deepcopy (the trainer
        # copies the final model) after a training forward.
        extra, self._extra = self._extra, {}
        return extra


def build_mixer(plan: Plan, tasks: Sequence[str], config: RankerConfig, table_dims: Sequence[int]) -> Mixer:
    """The mixer of ``plan`` (``table_dims``: flattened width F*w of each table)."""
    n_tasks, n_experts = len(tasks), len(plan.experts)
    if plan.mixing == "shared" or plan.mixing == "me_mean":
        return SharedMixer(n_tasks)
    if plan.mixing == "me_weighted":
        return WeightedMixer(n_tasks, n_experts)
    if plan.mixing == "ple":
        return PLEMixer(
            n_tasks,
            config.experts_per_task,
            config.num_shared_experts,
            table_dims[0],
            config.expert_hidden,
            config.gate_hidden,
            config.ple_levels,
            config.dropout,
        )
    allowed = torch.ones(n_tasks, n_experts, dtype=torch.bool)
    detached = torch.zeros(n_tasks, n_experts, dtype=torch.bool)
    all_tables = tuple(range(len(plan.tables)))
    gate_tables: list[tuple[int, ...]] | None = None
    shared: tuple[str, tuple[int, ...]] | None = None
    if config.arch == "stem":
        has_shared = len(plan.tables) > n_tasks
        gate_tables = [(t, n_tasks) if has_shared else (t,) for t in range(n_tasks)]
        for t in range(n_tasks):
            for e, slot in enumerate(plan.experts):
                detached[t, e] = slot.table < n_tasks and slot.table != t  # other tasks' experts
        gate_in = table_dims[0]
    elif config.arch == "stem_al":
        main = tasks.index(config.main_task) if config.main_task is not None else 0
        gate_tables = [(t,) for t in range(n_tasks)]
        for t in range(n_tasks):
            for e, slot in enumerate(plan.experts):
                if t == main:
                    detached[t, e] = slot.table != main  # auxiliaries: forward only
                else:
                    allowed[t, e] = slot.table == t  # an auxiliary sees only its own experts
        gate_in = table_dims[0]
    elif config.arch == "mmoe":
        shared, gate_in = ("concat", (0,)), table_dims[0]
    elif config.arch == "ame":
        shared, gate_in = ("concat", all_tables), sum(table_dims)
    else:  # multi_embedding with me_combine == "gate": summed tables (concat when widths differ)
        if len(set(table_dims)) == 1:
            shared, gate_in = ("sum", all_tables), table_dims[0]
        else:
            shared, gate_in = ("concat", all_tables), sum(table_dims)
    return GatedMixer(n_tasks, allowed, detached, gate_tables, shared, gate_in, config.gate_hidden)

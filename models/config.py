"""The ranker's typed configuration: which architecture, how wide, which encoders.

One dataclass, :class:`RankerConfig`, chooses everything the :class:`models.ranker.Ranker` builds; the knobs
are described in ``docs/models.md``. It imports only the standard library, so the CLI and the trainer can
read and write it (``to_dict`` / ``from_dict``, JSON-ready) without importing torch.

Example::

    cfg = RankerConfig(arch="mmoe", num_shared_experts=4)
    assert RankerConfig.from_dict(cfg.to_dict()) == cfg
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

ARCHS: tuple[str, ...] = ("stem", "ame", "stem_al", "shared_bottom", "mmoe", "ple", "dcnv2", "multi_embedding")
EXPERTS: tuple[str, ...] = ("mlp", "dcnv2", "gwpfm")
SEQUENCE_ENCODERS: tuple[str, ...] = ("tim", "din", "mean")
TIM_TEMPORAL: tuple[str, ...] = ("position", "gap", "both")
MNSE_COMBINE: tuple[str, ...] = ("concat", "sum")
ME_COMBINE: tuple[str, ...] = ("mean", "weighted", "gate")


@dataclass(frozen=True)
class RankerConfig:
    """Architecture and sizes of the multi-task ranker.

    Args:
        arch: ``"stem"`` (shared + task-specific tables, all-forward task-specific-backward gates), ``"ame"``
            (shared tables of different widths, per-task gates), ``"stem_al"`` (main task + auxiliaries),
            ``"shared_bottom"``, ``"mmoe"``, ``"ple"``, ``"dcnv2"`` (single-table DCNv2 baseline) or
            ``"multi_embedding"`` (M tables, one expert per table, combined).
        embedding_dim: d, width of every table (AME uses ``ame_widths``). GwPFM tables are
            ``d x n_groups`` wide (one d-wide sub-embedding per field group).
        num_tables: M, tables of ``multi_embedding`` (other architectures ignore it).
        expert: expert kind, or a tuple of kinds assigned round-robin to the experts (heterogeneous experts).
        expert_hidden: hidden widths of each expert's MLP; the last is the expert output width h.
        num_shared_experts: shared experts (STEM, MMoE, PLE).
        experts_per_task: task-specific experts (STEM, PLE, STEM-AL).
        gate_hidden: hidden widths of each gate MLP.
        tower_hidden: hidden widths of each task tower (a final layer gives one logit).
        ame_widths: widths of the AME tables (one expert per table).
        mnse_bases: numeral bases of MNSE.
        mnse_combine: ``"concat"`` the per-base embeddings (one field per base) or ``"sum"`` them.
        sequence_encoder: ``"tim"``, ``"din"``, ``"mean"`` or None (ignore the sequence).
        tim_temporal: TIM's temporal signal: ``"position"``, ``"gap"`` or ``"both"``.
        main_task: STEM-AL's main task (None: the spec's first task).
        dropout: dropout after hidden layers of experts and towers.
        cross_layers: cross layers of DCNv2 experts.
        ple_levels: stacked extraction layers of PLE.
        me_combine: how ``multi_embedding`` combines its experts: ``"mean"``, ``"weighted"`` (learned
            softmax weights per task) or ``"gate"`` (per-task softmax gate on the summed embeddings).
        embedding_init_std: standard deviation of the normal init of embedding rows.
        sparse_embeddings: produce sparse gradients for the big tables (for row-wise optimisers).
        cascade: ESMM-style conditional tasks, ``{child: parent}``: the child's tower predicts
            p(child | parent) and the model outputs p(child) = p(parent) * p(child | parent) as the child's
            logit, so an unconditional conversion label trains a post-click conversion tower.
        cascade_detach_parent: stop the child's loss from updating the parent's path (keeps STEM's
            task-specific backward; ESMM itself does not detach).
    """

    arch: str = "stem"
    embedding_dim: int = 16
    num_tables: int = 1
    expert: str | tuple[str, ...] = "mlp"
    expert_hidden: tuple[int, ...] = (256, 128)
    num_shared_experts: int = 1
    experts_per_task: int = 1
    gate_hidden: tuple[int, ...] = (128, 64)
    tower_hidden: tuple[int, ...] = (128, 64)
    ame_widths: tuple[int, ...] = (16, 32, 64)
    mnse_bases: tuple[int, ...] = (2, 3, 10)
    mnse_combine: str = "concat"
    sequence_encoder: str | None = "tim"
    tim_temporal: str = "both"
    main_task: str | None = None
    dropout: float = 0.0
    cross_layers: int = 2
    ple_levels: int = 2
    me_combine: str = "weighted"
    embedding_init_std: float = 0.05
    sparse_embeddings: bool = False
    cascade: tuple[tuple[str, str], ...] | dict[str, str] = ()
    cascade_detach_parent: bool = True

    def __post_init__(self) -> None:
        # Lists (from JSON or YAML) become tuples so configs stay hashable and comparable.
        for name in ("expert_hidden", "gate_hidden", "tower_hidden", "ame_widths", "mnse_bases"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        pairs = self.cascade.items() if isinstance(self.cascade, dict) else self.cascade
        object.__setattr__(self, "cascade", tuple(sorted((str(c), str(p)) for c, p in pairs)))
        if isinstance(self.expert, list | tuple):
            object.__setattr__(self, "expert", tuple(self.expert))
        self._validate()

    def _validate(self) -> None:
        def choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
            if value not in allowed:
                raise ValueError(f"RankerConfig.{name} = {value!r} is not one of {allowed}")

        choice("arch", self.arch, ARCHS)
        for kind in self.expert_kinds:
            choice("expert", kind, EXPERTS)
        choice("mnse_combine", self.mnse_combine, MNSE_COMBINE)
        choice("sequence_encoder", self.sequence_encoder, (*SEQUENCE_ENCODERS, None))
        choice("tim_temporal", self.tim_temporal, TIM_TEMPORAL)
        choice("me_combine", self.me_combine, ME_COMBINE)
        positive = {
            "embedding_dim": self.embedding_dim,
            "num_tables": self.num_tables,
            "cross_layers": self.cross_layers,
            "ple_levels": self.ple_levels,
            "experts_per_task": self.experts_per_task,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"RankerConfig.{name} must be >= 1, got {value}")
        if self.num_shared_experts < 0:
            raise ValueError(f"RankerConfig.num_shared_experts must be >= 0, got {self.num_shared_experts}")
        if self.arch == "mmoe" and self.num_shared_experts < 1:
            raise ValueError("arch 'mmoe' needs num_shared_experts >= 1")
        if not self.expert_hidden:
            raise ValueError("RankerConfig.expert_hidden needs at least one width (the expert output width)")
        if any(v < 1 for v in (*self.expert_hidden, *self.gate_hidden, *self.tower_hidden, *self.ame_widths)):
            raise ValueError("hidden widths and ame_widths must be >= 1")
        if not self.ame_widths:
            raise ValueError("RankerConfig.ame_widths needs at least one width")
        if not self.mnse_bases or any(b < 2 for b in self.mnse_bases):
            raise ValueError(f"RankerConfig.mnse_bases must be integers >= 2, got {self.mnse_bases}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RankerConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.embedding_init_std <= 0:
            raise ValueError("RankerConfig.embedding_init_std must be > 0")
        children = dict(self.cascade)
        for child, parent in self.cascade:
            if child == parent or parent in children:
                raise ValueError(f"RankerConfig.cascade {children}: a task cannot be its own parent, "
                                 "and a parent cannot itself be a child")

    @property
    def expert_kinds(self) -> tuple[str, ...]:
        """The expert kinds as a tuple (one kind means every expert is of that kind)."""
        return (self.expert,) if isinstance(self.expert, str) else tuple(self.expert)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists); :meth:`from_dict` inverts it."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["cascade"] = dict(self.cascade)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankerConfig:
        """Rebuild a config; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RankerConfig keys: {unknown}")
        return cls(**data)

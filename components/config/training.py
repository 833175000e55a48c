"""Configuration of the daily model step, typed end to end: the ranker it builds (:class:`RankerSettings`,
mirroring ``models.config.RankerConfig``), how it trains (:class:`TrainerSettings`, mirroring the trainer's
``TrainConfig``) and the ``training`` section around them (:class:`TrainingConfig`).

A misspelt key or an unknown choice fails when the settings load, naming the key
(``training.ranker.archh``) and, for a choice, the allowed values, not when the train step runs.
tests/code/test_config.py checks that each sub-model has exactly its dataclass's fields.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from components.config.section import Section
from models.config import ARCHS, EXPERTS, ME_COMBINE, MNSE_COMBINE, SEQUENCE_ENCODERS, TIM_TEMPORAL, RankerConfig

# The choices of RankerConfig, as enums built from models.config's tuples (one list of names).
RankerArch = StrEnum("RankerArch", [(name, name) for name in ARCHS])
ExpertKind = StrEnum("ExpertKind", [(name, name) for name in EXPERTS])
SequenceEncoderKind = StrEnum("SequenceEncoderKind", [(name, name) for name in SEQUENCE_ENCODERS])
TimTemporal = StrEnum("TimTemporal", [(name, name) for name in TIM_TEMPORAL])
MnseCombine = StrEnum("MnseCombine", [(name, name) for name in MNSE_COMBINE])
MeCombine = StrEnum("MeCombine", [(name, name) for name in ME_COMBINE])

Widths = tuple[int, ...]
Alpha = Annotated[float, Field(ge=0, le=1)]


class RankerSettings(Section):
    """The ranker's architecture and sizes: every field of ``models.config.RankerConfig`` (docs/models.md),
    with the same defaults; :meth:`to_ranker_config` builds it. The dataclass's own checks (positive
    sizes, dropout in [0, 1), a valid cascade) also run at load."""

    arch: RankerArch = Field(RankerArch("stem"), description="the architecture (docs/models.md)")
    embedding_dim: int = Field(16, description="d, the width of every embedding table (AME: ame_widths)")
    num_tables: int = Field(1, description="M, the tables of multi_embedding (other architectures ignore it)")
    expert: ExpertKind | tuple[ExpertKind, ...] = Field(
        ExpertKind("mlp"), description="expert kind, or a list of kinds assigned round-robin to the experts")
    expert_hidden: Widths = Field((256, 128), description="hidden widths of each expert; the last is its output")
    num_shared_experts: int = Field(1, description="shared experts (STEM, MMoE, PLE)")
    experts_per_task: int = Field(1, description="task-specific experts (STEM, PLE, STEM-AL)")
    gate_hidden: Widths = Field((128, 64), description="hidden widths of each gate MLP")
    tower_hidden: Widths = Field((128, 64), description="hidden widths of each task tower")
    ame_widths: Widths = Field((16, 32, 64), description="widths of the AME tables (one expert per table)")
    mnse_bases: Widths = Field((2, 3, 10), description="numeral bases of the MNSE numeric-field embeddings")
    mnse_combine: MnseCombine = Field(
        MnseCombine("concat"), description="concat the per-base MNSE embeddings (one field per base) or sum them")
    sequence_encoder: SequenceEncoderKind | None = Field(
        SequenceEncoderKind("tim"), description="the click-sequence encoder, or null to ignore the sequence")
    tim_temporal: TimTemporal = Field(TimTemporal("both"), description="TIM's temporal signal")
    main_task: str | None = Field(None, description="STEM-AL's main task (null: the first task)")
    dropout: float = Field(0.0, description="dropout after hidden layers of experts and towers, in [0, 1)")
    cross_layers: int = Field(2, description="cross layers of DCNv2 experts")
    ple_levels: int = Field(2, description="stacked extraction layers of PLE")
    me_combine: MeCombine = Field(
        MeCombine("weighted"), description="how multi_embedding combines its experts")
    embedding_init_std: float = Field(0.05, description="standard deviation of the embedding rows' normal init")
    sparse_embeddings: bool = Field(False, description="sparse gradients for the big tables")
    cascade: dict[str, str] = Field(
        default_factory=dict, description="ESMM-style conditional tasks, {child: parent}: the child's tower "
        "predicts p(child | parent)")
    cascade_detach_parent: bool = Field(True, description="stop a child's loss from updating its parent's path")

    @field_validator("expert", mode="before")
    @classmethod
    def _expert_kinds(cls, value: Any) -> Any:
        # One message naming the allowed kinds, instead of one error per member of the union.
        kinds = [value] if isinstance(value, str) else value
        if isinstance(kinds, list | tuple):
            bad = [kind for kind in kinds if kind not in EXPERTS]
            if bad:
                raise ValueError(f"expert kind {bad[0]!r} is not one of {', '.join(EXPERTS)} "
                                 "(one kind, or a list of kinds)")
        return value

    @field_validator("cascade", mode="before")
    @classmethod
    def _cascade_pairs(cls, value: Any) -> Any:
        # RankerConfig also takes [[child, parent], ...] pairs.
        return dict(value) if isinstance(value, list | tuple) else value

    @model_validator(mode="after")
    def _valid_ranker(self) -> RankerSettings:
        self.to_ranker_config()  # RankerConfig's own checks, at load
        return self

    def to_ranker_config(self) -> RankerConfig:
        """The ``models.config.RankerConfig`` these settings describe."""
        return RankerConfig.from_dict(self.model_dump(mode="json"))


class TrainerSettings(Section):
    """How the ranker trains: every field of the trainer's ``TrainConfig`` (docs/training.md), with the
    same defaults and checks; :meth:`to_dict` gives its keyword arguments."""

    epochs: int = Field(5, ge=1, description="passes over the training set (early stopping may end sooner)")
    batch_size: int = Field(4096, ge=1, description="global rows per optimiser step (split over DDP ranks)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, description="Adam's L2 penalty")
    alphas: dict[str, Alpha] = Field(
        default_factory=dict, description="per task alpha of alpha*BCE + (1 - alpha)*pairwise loss")
    default_alpha: Alpha = Field(0.7, description="alpha of the tasks not in alphas")
    task_weights: dict[str, float] = Field(
        default_factory=dict, description="per task weight of its loss in the total (missing: 1)")
    ipw: bool = Field(True, description="weight the BCE by the IPW weights (the daily run sets it from training.ipw)")
    decorrelation: float = Field(0.0, description="weight of the inter-expert de-correlation loss (0: off)")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N")
    compile: bool = Field(False, description="wrap the training step's module in torch.compile")
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    checkpoint_every: int = Field(0, ge=0, description="save a checkpoint every N optimiser steps (0: never)")
    checkpoint_dir: str | None = Field(
        None, description="where checkpoints go (the daily run's default: <home>/models/<day>/checkpoints)")
    resume: bool = Field(False, description="continue from checkpoint_dir/checkpoint.pt when it exists")
    patience: int = Field(2, ge=0, description="stop after this many epochs without a better validation metric "
                                               "(0: never stop early)")
    early_stopping_task: str | None = Field(
        None, description="the task whose validation AUC decides early stopping (null: the mean over tasks)")
    min_delta: float = Field(0.0, description="smallest validation improvement that counts")
    seed: int = Field(0, description="seeds the model init, the permutations and dropout")
    log_every: int = Field(100, ge=0, description="log progress every N steps (0: only per epoch)")
    eval_batch_size: int = Field(65536, ge=1, description="rows per forward pass when scoring")
    prior_bias: bool = Field(True, description="start each task's output bias at the logit of its positive rate")
    device_data_fraction: float = Field(
        0.5, description="on CUDA, keep the data on the GPU when it needs less than this share of free memory")
    stream_chunk_rows: int = Field(1 << 20, description="rows per host-to-GPU copy when streaming")
    stream_data: bool | None = Field(
        None, description="force streaming (true) or residency (false) of the training data; null: by size")
    find_unused_parameters: bool = Field(False, description="passed to DDP")
    data_path: Literal["auto", "memory", "stream"] = Field(
        "auto", description="training batches from memory, streamed from the parquet on disk, or auto: stream "
        "when the set's decoded size is over memory_budget_mb (docs/training.md)")
    memory_budget_mb: float | None = Field(
        None, gt=0, description="decoded training-set size above which auto streams (null: half the RAM)")
    shuffle_buffer_rows: int = Field(1 << 18, ge=1, description="streamed rows are shuffled in windows this large")
    prefetch_batches: int = Field(4, ge=1, description="streamed batches decoded ahead by a background thread")

    def to_dict(self) -> dict[str, Any]:
        """The trainer's ``TrainConfig`` keyword arguments (``TrainConfig.from_dict(settings.to_dict())``)."""
        return self.model_dump()


class TrainingConfig(Section):
    """The ranker the daily run trains (issue 4): ``ranker`` (a ``models.config.RankerConfig``) and
    ``train`` (the trainer's ``TrainConfig``), both typed and checked at load."""

    enabled: bool = Field(
        True, description="train, gate and register a model in the daily run (false: skip those steps)")
    valid_days: int = Field(1, ge=1, description="the validation days, just before the test days: early stopping "
                            "and every model choice")
    test_days: int = Field(1, ge=1, description="the newest days of the window, held out for the reported "
                           "evaluation and the champion comparison; never seen by training or early stopping")
    # CPU-friendly defaults for the daily demo: MNSE digits summed over bases (METHODS.md's option; the
    # concat default triples the numeric fields) and two epochs, which the demo's validation AUC
    # stops improving after (docs/training.md). On a GPU, use {"arch": "stem"} and more epochs.
    # A ranker / train given in the YAML or environment starts from the dataclass defaults, as before.
    ranker: RankerSettings = Field(
        default_factory=lambda: RankerSettings(arch="stem", mnse_combine="sum"),
        description="the ranker (default {arch: stem, mnse_combine: sum}; a ranker given in the config starts "
        "from RankerConfig's defaults)")
    train: TrainerSettings = Field(
        default_factory=lambda: TrainerSettings(epochs=2, batch_size=2048, patience=1),
        description="how it trains (default {epochs: 2, batch_size: 2048, patience: 1}; a train given in the "
        "config starts from TrainConfig's defaults)")
    min_steps_per_epoch: int = Field(
        32, ge=0, description="small data: when the training rows give fewer optimiser steps per epoch at "
        "train.batch_size, the daily step lowers the batch so that an epoch has this many (never below 64 rows), "
        "so that early stopping judges a trained model, not the initial one; 0: off (docs/training.md)")
    ipw: bool = Field(True, description="repeated-exposure inverse propensity weights on positives")
    ipw_task: str | None = Field(
        None, description="the task whose positives the re-exposure policy reacts to (the propensity's history "
        "label); default: the first of the source's tasks")
    ipw_w_min: float = Field(0.1, gt=0, le=1, description="the smallest IPW weight a positive gets")

"""How to train the ranker: :class:`TrainConfig` (optimisation, device, checkpoints, early stopping).

What to train is :class:`models.config.RankerConfig`; ``components/training/loop.py`` reads both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping


@dataclass
class TrainConfig:
    """How to train (what to train is :class:`models.config.RankerConfig`).

    Args:
        epochs: passes over the training set (early stopping may end sooner).
        batch_size: global rows per optimiser step (split over DDP ranks).
        lr: Adam learning rate.
        weight_decay: Adam's L2 penalty (0: embeddings are not shrunk towards 0).
        alphas: per task α of ``α·BCE_w + (1 − α)·pairwise`` (missing tasks: ``default_alpha``).
        default_alpha: α for tasks not in ``alphas`` (METHODS.md: best ≈ 0.7 at ~3% positives).
        task_weights: per task weight of its loss in the total (missing: 1).
        ipw: use the batch's ``weights`` (inverse propensity weights) in the BCE; False: all 1.
        decorrelation: weight of the inter-expert de-correlation loss (0: off, and no aux forward).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        compile: wrap the training step's module in ``torch.compile``.
        bf16: bf16 autocast on CUDA (ignored on CPU).
        checkpoint_every: save a checkpoint every N optimiser steps (0: never).
        checkpoint_dir: where (default: ``<settings.training_dir>/checkpoints`` when settings are given).
        resume: continue from ``checkpoint_dir/checkpoint.pt`` when it exists.
        patience: stop after this many epochs without a better validation metric (0: never stop early).
        early_stopping_task: the task whose validation AUC decides; None: the mean AUC over tasks.
        min_delta: smallest improvement that counts.
        seed: seeds the model init, the permutations and dropout.
        log_every: log progress every N steps (0: only per epoch).
        eval_batch_size: rows per forward pass when scoring.
        device_data_fraction: on CUDA keep the dataset on the GPU when it needs less than this share of
            free GPU memory; otherwise stream it from pinned host memory.
        stream_chunk_rows: rows per host-to-GPU copy when streaming.
        stream_data: force streaming (True) or residency (False) of the training data; None: decide by
            size (streaming is the GPU path; on CPU it only exercises the same chunk arithmetic).
        prior_bias: start each task's output bias at the logit of its (IPW-weighted) positive rate in the
            training set (a cascade child: of its rate given the parent), so a rare task starts calibrated
            instead of at p = 0.5 and a short run does not end under-predicting it.
        find_unused_parameters: passed to DDP (needed when some parameters get no gradient).
        data_path: where training batches come from: ``"memory"`` (the whole set read and encoded once),
            ``"stream"`` (read from the training set's parquet on disk, row group by row group:
            components/training/stream.py) or ``"auto"``: stream when the set's decoded size is over
            ``memory_budget_mb``. Decided where the set is read (the daily step, ``python -m
            components.training``); ``train_ranker`` streams when it is given a ``ParquetRows``.
        memory_budget_mb: the decoded training-set size above which ``"auto"`` streams; None: half the
            machine's RAM (the in-memory path holds the decoded table and its encoded tensors at once).
        shuffle_buffer_rows: streamed rows are shuffled in windows of at least this many (whole row groups).
        prefetch_batches: streamed batches decoded ahead of the optimiser by a background thread.
    """

    epochs: int = 5
    batch_size: int = 4096
    lr: float = 1e-3
    weight_decay: float = 0.0
    alphas: dict[str, float] = field(default_factory=dict)
    default_alpha: float = 0.7
    task_weights: dict[str, float] = field(default_factory=dict)
    ipw: bool = True
    decorrelation: float = 0.0
    device: str = "auto"
    compile: bool = False
    bf16: bool = True
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    resume: bool = False
    patience: int = 2
    early_stopping_task: str | None = None
    min_delta: float = 0.0
    seed: int = 0
    log_every: int = 100
    eval_batch_size: int = 65536
    prior_bias: bool = True
    device_data_fraction: float = 0.5
    stream_chunk_rows: int = 1 << 20
    stream_data: bool | None = None
    find_unused_parameters: bool = False
    data_path: str = "auto"
    memory_budget_mb: float | None = None
    shuffle_buffer_rows: int = 1 << 18
    prefetch_batches: int = 4

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("TrainConfig: epochs, batch_size and eval_batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        for task, alpha in {**self.alphas, "default": self.default_alpha}.items():
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"TrainConfig alpha for {task!r} must be in [0, 1], got {alpha}")
        if self.checkpoint_every < 0 or self.patience < 0 or self.log_every < 0:
            raise ValueError("TrainConfig: checkpoint_every, patience and log_every must be >= 0")
        if self.data_path not in ("auto", "memory", "stream"):
            raise ValueError(f"TrainConfig.data_path must be auto, memory or stream, got {self.data_path!r}")
        if self.shuffle_buffer_rows < 1 or self.prefetch_batches < 1:
            raise ValueError("TrainConfig: shuffle_buffer_rows and prefetch_batches must be >= 1")
        if self.memory_budget_mb is not None and self.memory_budget_mb <= 0:
            raise ValueError(f"TrainConfig.memory_budget_mb must be > 0 (or null), got {self.memory_budget_mb}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {unknown}")
        return cls(**dict(data))


__all__ = ["TrainConfig"]

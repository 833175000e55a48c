"""The one trainer of the ranker: CPU, one GPU, or DDP under ``torchrun``.

``train_ranker(settings, train, valid, ranker_config, train_config)`` fits the feature encoders on the
training rows (components/training/encoders.py), encodes both tables once into contiguous tensors and trains
``models.ranker.Ranker`` with Adam on the multi-task combined-pair loss (models/losses.py), early-stopping
on validation AUC. docs/training.md describes every knob; the essentials:

- **data**: the whole training set is one set of tensors. On CUDA it is copied to the GPU when it fits in
  ``device_data_fraction`` of free memory, else kept in pinned host memory and streamed to the GPU in
  chunks of ``stream_chunk_rows`` rows (one large copy per chunk, batches sliced on the GPU). Batches are
  slices of a per-epoch index permutation (seeded by ``seed`` and the epoch): no per-row Python, no
  DataLoader.
- **precision**: bf16 autocast on CUDA only; the loss is computed in float32.
- **DDP**: when ``WORLD_SIZE > 1`` (``torchrun``), the process group is gloo on CPU, NCCL on GPU.
  ``batch_size`` is the global batch: every step each rank takes its own contiguous slice of the same
  permutation slice (disjoint shards), gradients are averaged, so a step equals a one-process step on
  the same global batch up to the in-batch pairs of the ranking loss. Training loss and validation
  scores are all-reduced / all-gathered, so every rank makes the same early-stopping decision.
- **checkpoints**: every ``checkpoint_every`` steps (rank 0, atomic rename) the model, optimiser, RNG
  states, epoch, position in the epoch's permutation, the epoch's running loss and the early-stopping
  state. ``resume=True`` continues from it and ends with bit-identical weights to an uninterrupted run
  (tests/code/training/test_train.py checks it on CPU).
- **progress**: ``logging`` every ``log_every`` steps with samples/s, and an optional callback receiving
  a dict per logged step and per epoch. No host synchronisation per step: losses are accumulated on the
  device and read when logged.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from components.training.encoders import FeatureEncoders

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

    from components.config import Settings
    from models.config import RankerConfig
    from models.spec import FeatureSpec

log = logging.getLogger(__name__)

Batch = dict[str, "torch.Tensor"]
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {unknown}")
        return cls(**dict(data))


@dataclass
class TrainResult:
    """What a training run produced. ``model`` holds the best epoch's weights (on CPU)."""

    model: Any  # models.ranker.Ranker
    encoders: FeatureEncoders | None
    spec: "FeatureSpec"
    ranker_config: "RankerConfig"
    train_config: TrainConfig
    history: list[dict[str, Any]]  # per epoch: train_loss, train_loss_per_task, valid_auc, seconds, samples_per_s
    best_epoch: int
    best_metric: float
    samples_per_s: float  # training rows / training seconds (validation excluded), all ranks together
    seconds: float
    device: str
    world_size: int
    steps: int
    stopped_early: bool
    valid_scores: dict[str, np.ndarray] = field(default_factory=dict)  # best model's validation probabilities

    @property
    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {
            "best_epoch": self.best_epoch,
            "best_metric": self.best_metric,
            "valid_auc": self.history[self.best_epoch - 1]["valid_auc"] if self.history else {},
            "epochs": len(self.history),
            "steps": self.steps,
            "samples_per_s": self.samples_per_s,
            "seconds": self.seconds,
            "device": self.device,
            "world_size": self.world_size,
            "stopped_early": self.stopped_early,
            "final_train_loss": last.get("train_loss"),
        }

    def save(self, directory: str | Path) -> Path:
        """Weights (``model.pt``), ``encoders.json``, ``spec.json``, ``ranker_config.json``,
        ``train_config.json`` and ``history.json`` in ``directory``: what loading the model back needs."""
        import json

        import torch

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), directory / "model.pt")
        if self.encoders is not None:
            self.encoders.save(directory / "encoders.json")
        (directory / "spec.json").write_text(json.dumps(self.spec.to_dict(), indent=1))
        (directory / "ranker_config.json").write_text(json.dumps(self.ranker_config.to_dict(), indent=1))
        (directory / "train_config.json").write_text(json.dumps(self.train_config.to_dict(), indent=1))
        (directory / "history.json").write_text(json.dumps({"history": self.history, **self.summary()}, indent=1))
        return directory


@dataclass
class TrainedModel:
    """A saved ranker loaded back from the folder :meth:`TrainResult.save` wrote (weights, spec, encoders,
    configs); ``model`` is in eval mode on CPU. ``score(table)`` gives probabilities per task."""

    model: Any  # models.ranker.Ranker
    encoders: FeatureEncoders | None
    spec: "FeatureSpec"
    ranker_config: "RankerConfig"
    directory: Path

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.model.tasks)

    def score(self, table: Any, batch_size: int = 65536) -> dict[str, np.ndarray]:
        """Probabilities per task for every row of ``table`` (a pyarrow Table with the training set's
        feature columns; labels are not needed)."""
        if self.encoders is None:
            raise ValueError(f"{self.directory} has no encoders.json: it cannot score raw rows")
        return predict(self.model, self.encoders.encode(table, with_labels=False), self.tasks,
                       batch_size=batch_size)


def load_trained(directory: str | Path) -> TrainedModel:
    """Load what :meth:`TrainResult.save` wrote to ``directory``."""
    import json

    import torch

    from models.config import RankerConfig
    from models.ranker import Ranker
    from models.spec import FeatureSpec

    directory = Path(directory)
    missing = [n for n in ("model.pt", "spec.json", "ranker_config.json") if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a saved ranker: missing {', '.join(missing)}")
    spec = FeatureSpec.from_dict(json.loads((directory / "spec.json").read_text()))
    config = RankerConfig.from_dict(json.loads((directory / "ranker_config.json").read_text()))
    model = Ranker(spec, config)
    model.load_state_dict(torch.load(directory / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    encoders = FeatureEncoders.load(directory / "encoders.json") if (directory / "encoders.json").is_file() else None
    return TrainedModel(model=model, encoders=encoders, spec=spec, ranker_config=config, directory=directory)


# ----- metrics -------------------------------------------------------------------------------------------
def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC as components/training/evaluation.py defines it (ties count half; NaN when a class is missing)."""
    from components.training.evaluation import auc

    return float(auc(scores, labels))


# ----- distributed ---------------------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _init_distributed(device_kind: str) -> _Dist:
    """DDP when launched by torchrun (``WORLD_SIZE`` > 1): gloo on CPU, NCCL on CUDA."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    initialized_here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        initialized_here = True
    return _Dist(rank, world, local_rank, initialized_here)


def _resolve_device(name: str, dist_info: _Dist | None = None) -> "torch.device":
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", dist_info.local_rank if dist_info and dist_info.enabled else 0)
        torch.cuda.set_device(device)
    return device


# ----- data on the device --------------------------------------------------------------------------------
class DeviceData:
    """The encoded dataset as contiguous tensors, and batches of it by row indices.

    On the training device when it fits (or on CPU), else in pinned host memory, from which
    :meth:`chunks` copies large index-gathered chunks to the device."""

    def __init__(
        self, batch: Batch, device: "torch.device", max_fraction: float = 0.5, stream: bool | None = None
    ) -> None:
        import torch

        self.rows = int(next(iter(batch.values())).shape[0])
        self.device = device
        nbytes = sum(t.numel() * t.element_size() for t in batch.values())
        self.on_device = device.type != "cuda"
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            self.on_device = nbytes <= max_fraction * free
        if stream is not None:
            self.on_device = not stream
        if self.on_device:
            self.tensors = {k: v.contiguous().to(device) for k, v in batch.items()}
        elif device.type == "cuda":
            # Pinned pages make the per-chunk host-to-device copy asynchronous and full speed.
            self.tensors = {k: v.contiguous().pin_memory() for k, v in batch.items()}
        else:
            self.tensors = {k: v.contiguous() for k, v in batch.items()}
        self.nbytes = nbytes

    @classmethod
    def resident(cls, tensors: Batch, device: "torch.device") -> "DeviceData":
        """Wrap tensors already on ``device`` (a streamed chunk) without copying them."""
        out = cls.__new__(cls)
        out.rows = int(next(iter(tensors.values())).shape[0])
        out.device, out.on_device, out.tensors = device, True, tensors
        out.nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        return out

    def take(self, index: "torch.Tensor") -> Batch:
        """Rows ``index`` (an int64 tensor on the data's device) as a batch on the training device."""
        import torch

        if self.on_device or self.device.type != "cuda":
            return {k: v.index_select(0, index) for k, v in self.tensors.items()}
        out = {}
        for k, v in self.tensors.items():
            # Gather straight into pinned memory, then one asynchronous copy per tensor.
            staged = torch.empty((len(index), *v.shape[1:]), dtype=v.dtype, pin_memory=True)
            torch.index_select(v, 0, index, out=staged)
            out[k] = staged.to(self.device, non_blocking=True)
        return out


def _init_prior_bias(model: Any, batch: Batch, use_weights: bool) -> dict[str, float]:
    """Set each task tower's output bias to the logit of the task's positive rate in ``batch`` (positives
    weighted by their IPW weights when ``use_weights``): the constant the weighted BCE would learn first.
    A cascade child (``RankerConfig.cascade``) gets the logit of its rate given its parent. Returns the
    rates."""
    import torch

    labels = batch["labels"].double()
    weights = batch["weights"].double() if use_weights and "weights" in batch else torch.ones_like(labels)
    pos = (labels * weights).sum(0)
    rates = (pos / (pos + (1 - labels).sum(0)).clamp(min=1e-12)).clamp(1e-6, 1 - 1e-6)
    by_task = {t: float(rates[i]) for i, t in enumerate(model.tasks)}
    for child, parent in model.config.cascade:
        by_task[child] = min(max(by_task[child] / by_task[parent], 1e-6), 1 - 1e-6)
    bias = model.towers.mlp.layers[-1].bias  # [T, 1]
    with torch.no_grad():
        for i, t in enumerate(model.tasks):
            bias[i, 0] = float(np.log(by_task[t] / (1 - by_task[t])))
    return by_task


def _epoch_permutation(rows: int, seed: int, epoch: int) -> "torch.Tensor":
    """The same permutation on every rank and after a resume: a function of (seed, epoch) only."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(rows, generator=g)


# ----- the training step module --------------------------------------------------------------------------
def _loss_module(model: Any, spec: "FeatureSpec", cfg: TrainConfig) -> Any:
    """Wrap the ranker so one ``forward(batch)`` returns (total loss, per-task losses [T]): DDP hooks
    and torch.compile then see the whole step, auxiliary outputs included."""
    import torch
    from torch import nn

    from models.losses import expert_decorrelation, multitask_loss

    tasks = tuple(spec.tasks)
    alphas = {t: float(cfg.alphas.get(t, cfg.default_alpha)) for t in tasks}
    task_weights = {t: float(cfg.task_weights.get(t, 1.0)) for t in tasks}
    unknown = sorted((set(cfg.alphas) | set(cfg.task_weights)) - set(tasks))
    if unknown:
        raise ValueError(f"alphas / task_weights name tasks {unknown} that the model does not have ({list(tasks)})")

    class RankerLoss(nn.Module):
        def __init__(self, ranker: Any) -> None:
            super().__init__()
            self.ranker = ranker  # models.ranker.Ranker

        def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
            if cfg.decorrelation > 0:
                logits, aux = self.ranker.forward_with_aux(batch)
            else:
                logits, aux = self.ranker(batch), None
            logits = {t: v.float() for t, v in logits.items()}  # loss in fp32 under autocast
            labels = batch["labels"]
            weights = batch["weights"] if cfg.ipw and "weights" in batch else torch.ones_like(labels)
            total, per_task = multitask_loss(logits, labels, weights, tasks, alphas, task_weights)
            if aux is not None and aux.get("expert_outputs"):
                outputs = [o.float() for o in aux["expert_outputs"].values()]
                if len(outputs) > 1:
                    total = total + cfg.decorrelation * expert_decorrelation(outputs)
            per = torch.stack([per_task[t].detach().float() for t in tasks])
            return total, per

    return RankerLoss(model)


def _optimizers(model: Any, cfg: TrainConfig) -> list[Any]:
    """Adam; embeddings built with sparse gradients (``RankerConfig.sparse_embeddings``) get SparseAdam,
    which updates only the rows a batch touched."""
    import torch
    from torch import nn

    sparse_ids: set[int] = set()
    # The ranker's fused tables are plain parameters read with F.embedding(..., sparse=True), not nn.Embedding.
    if getattr(getattr(model, "config", None), "sparse_embeddings", False):
        sparse_ids.update(id(p) for p in model.embedding_parameters())
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.sparse:
            sparse_ids.add(id(module.weight))
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    sparse = [p for p in model.parameters() if p.requires_grad and id(p) in sparse_ids]
    # fused=True: one multi-tensor kernel per step (CPU and CUDA) instead of the foreach path's ~10 passes
    # over every parameter with temporaries; on the 36.7M-row x 16 tables of the benchmark shape the
    # foreach step was 58% of a CPU step (bench/train_throughput.py, docs/benchmarks.md).
    opts: list[Any] = [torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)]
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=cfg.lr))
    return opts


# ----- checkpoints ---------------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {
        "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crash mid-write leaves the previous checkpoint intact


# ----- scoring -------------------------------------------------------------------------------------------
def predict(
    model: Any,
    batch: Batch | DeviceData,
    tasks: tuple[str, ...] | list[str],
    *,
    device: "torch.device | str | None" = None,
    batch_size: int = 65536,
    rows: "torch.Tensor | None" = None,
    bf16: bool = True,
) -> dict[str, np.ndarray]:
    """Click/conversion/... probabilities of every row (or of ``rows``), as float32 numpy per task."""
    import torch

    data = batch if isinstance(batch, DeviceData) else None
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if data is None:
        data = DeviceData(batch, dev)  # type: ignore[arg-type]
    index = rows if rows is not None else torch.arange(data.rows)
    index = index.to(data.tensors["cat"].device)
    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    use_bf16 = bf16 and dev.type == "cuda"
    with torch.no_grad():
        for start in range(0, len(index), batch_size):
            chunk = data.take(index[start:start + batch_size])
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(chunk)
            for t in tasks:
                out[t].append(torch.sigmoid(logits[t].float()).cpu().numpy())
    model.train(was_training)
    return {t: (np.concatenate(v) if v else np.zeros(0, dtype=np.float32)) for t, v in out.items()}


def _validate(
    model: Any, data: DeviceData | None, tasks: tuple[str, ...], cfg: TrainConfig, dist_info: _Dist, device: Any
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Per-task AUC on the validation set. Under DDP each rank scores a contiguous shard and the
    scores are all-gathered, so every rank computes the same AUCs."""
    import torch

    if data is None or data.rows == 0:
        return {}, {}
    n = data.rows
    per = -(-n // dist_info.world_size)
    lo, hi = min(n, dist_info.rank * per), min(n, (dist_info.rank + 1) * per)
    scores = predict(model, data, tasks, device=device, batch_size=cfg.eval_batch_size,
                     rows=torch.arange(lo, hi), bf16=cfg.bf16)
    if dist_info.enabled:
        import torch.distributed as dist

        local = torch.zeros((per, len(tasks)), dtype=torch.float32)
        for j, t in enumerate(tasks):
            local[: hi - lo, j] = torch.from_numpy(scores[t])
        local = local.to(device)
        gathered = [torch.empty_like(local) for _ in range(dist_info.world_size)]
        dist.all_gather(gathered, local)
        full = torch.cat(gathered)[:n].cpu().numpy()
        scores = {t: full[:, j].copy() for j, t in enumerate(tasks)}
    labels = data.tensors["labels"].cpu().numpy()
    return {t: _auc(scores[t], labels[:, j]) for j, t in enumerate(tasks)}, scores


def _metric(valid_auc: Mapping[str, float], task: str | None) -> float:
    if not valid_auc:
        return float("nan")
    if task is not None:
        if task not in valid_auc:
            raise ValueError(f"early_stopping_task {task!r} is not a task ({sorted(valid_auc)})")
        return float(valid_auc[task])
    vals = [v for v in valid_auc.values() if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


# ----- the trainer ---------------------------------------------------------------------------------------
def train_ranker(
    settings: "Settings | None",
    train_table: "pa.Table | Batch",
    valid_table: "pa.Table | Batch | None",
    config: "RankerConfig",
    train_config: TrainConfig | None = None,
    *,
    encoders: FeatureEncoders | None = None,
    spec: "FeatureSpec | None" = None,
    train_weights: Mapping[str, np.ndarray] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a :class:`models.ranker.Ranker` and return the best epoch's model.

    Args:
        settings: platform settings (the encoders' sequence category column; the default checkpoint
            folder ``<training_dir>/checkpoints``); None for a standalone run.
        train_table: the training rows (a training-set table) or an already encoded batch dict.
        valid_table: validation rows (same form), or None (no early stopping, last epoch kept).
        config: the ranker's architecture.
        train_config: optimisation, device, checkpoints (default :class:`TrainConfig`).
        encoders: fitted encoders (default: fitted on ``train_table``; required for encoded input
            unless ``spec`` is given).
        spec: the feature specification for encoded input without encoders.
        train_weights: per task inverse propensity weights of the training rows
            (components/training/propensity.py), used when ``train_config.ipw``.
        callback: receives progress dicts (``event`` = ``"step"`` or ``"epoch"``).

    Example::

        train, valid = time_split(read_training_set(path))
        result = train_ranker(settings, train, valid, RankerConfig(arch="stem"), TrainConfig(epochs=3))
        result.history[-1]["valid_auc"]   # {"click": 0.7, "conversion": 0.68}
    """
    import pyarrow as pa
    import torch

    from models.ranker import Ranker

    cfg = train_config or TrainConfig()
    started = time.perf_counter()
    # --- data -------------------------------------------------------------------------------------
    if isinstance(train_table, pa.Table):
        if encoders is None:
            seq_col = settings.features.sequence_category_column if settings is not None else None
            encoders = FeatureEncoders.fit(train_table, sequence_category_column=seq_col)
        train_batch = encoders.encode(train_table, weights=train_weights, with_labels=True)
    else:
        train_batch = dict(train_table)
        if train_weights:
            raise ValueError("train_weights apply to a table; put them in the encoded batch's 'weights'")
    if isinstance(valid_table, pa.Table):
        if encoders is None:
            raise ValueError("a validation table needs encoders")
        valid_batch: Batch | None = encoders.encode(valid_table, with_labels=True)
    else:
        valid_batch = dict(valid_table) if valid_table is not None else None
    if spec is None:
        if encoders is None:
            raise ValueError("encoded input needs `encoders` or `spec`")
        spec = encoders.spec()
    tasks = tuple(spec.tasks)
    for name, b in (("train", train_batch), ("valid", valid_batch)):
        if b is not None and ("labels" not in b or b["labels"].shape[1] != len(tasks)):
            raise ValueError(f"{name} batch needs labels [N, {len(tasks)}] for tasks {tasks}")

    # --- device, process group, model ---------------------------------------------------------------
    wants_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    dist_info = _init_distributed("cuda" if wants_cuda else "cpu")
    device = _resolve_device(cfg.device, dist_info)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    random.seed(cfg.seed)
    model = Ranker(spec, config)
    if cfg.prior_bias:
        _init_prior_bias(model, train_batch, cfg.ipw)
    # Once per run, on CPU: an out-of-range id would silently read another field's rows (docs/models.md).
    for b in (train_batch, valid_batch):
        if b is not None:
            model.check_batch(b)
    model = model.to(device)
    step_module: Any = _loss_module(model, spec, cfg).to(device)
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        step_module = DDP(
            step_module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )
    if cfg.compile:
        step_module = torch.compile(step_module)
    optimizers = _optimizers(model, cfg)
    train_data = DeviceData(train_batch, device, cfg.device_data_fraction, cfg.stream_data)
    valid_data = DeviceData(valid_batch, device, cfg.device_data_fraction) if valid_batch is not None else None
    use_bf16 = cfg.bf16 and device.type == "cuda"

    # --- schedule: global batches of the epoch permutation, each rank its slice ---------------------
    n = train_data.rows
    steps_per_epoch = -(-n // cfg.batch_size)
    if n - (steps_per_epoch - 1) * cfg.batch_size < dist_info.world_size:
        steps_per_epoch -= 1  # a last batch too small to give every rank a row is dropped
    if steps_per_epoch < 1:
        raise ValueError(f"{n} training rows cannot feed {dist_info.world_size} ranks")

    # --- state (possibly resumed) --------------------------------------------------------------------
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else (
        settings.training_dir / "checkpoints" if settings is not None else None)
    ckpt_path = ckpt_dir / CHECKPOINT_FILE if ckpt_dir is not None else None
    if cfg.checkpoint_every and ckpt_path is None:
        raise ValueError("checkpoint_every needs checkpoint_dir (or settings)")
    epoch, step_in_epoch, global_step = 0, 0, 0
    history: list[dict[str, Any]] = []
    best_metric, best_epoch, bad_epochs = -float("inf"), 0, 0
    best_state: dict[str, Any] | None = None
    epoch_loss = torch.zeros(len(tasks) + 1, dtype=torch.float64, device=device)
    epoch_rows, epoch_train_s = 0, 0.0
    if cfg.resume and ckpt_path is not None and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"checkpoint {ckpt_path} has version {state.get('version')}, expected {CHECKPOINT_VERSION}"
            )
        if state["world_size"] != dist_info.world_size or state["batch_size"] != cfg.batch_size:
            raise ValueError(
                f"checkpoint {ckpt_path} was written with world_size {state['world_size']} and batch_size "
                f"{state['batch_size']}; resuming needs the same (now {dist_info.world_size}, {cfg.batch_size})"
            )
        model.load_state_dict(state["model"])
        for opt, opt_state in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        history, best_metric, best_epoch = state["history"], state["best_metric"], state["best_epoch"]
        bad_epochs, best_state = state["bad_epochs"], state["best_state"]
        epoch_loss = state["epoch_loss"].to(device)
        epoch_rows, epoch_train_s = state["epoch_rows"], state["epoch_train_s"]
        _set_rng_state(state["rng"])
        log.info("resumed from %s at epoch %d step %d", ckpt_path, epoch + 1, step_in_epoch)

    def checkpoint() -> None:
        if ckpt_path is None or dist_info.rank != 0:
            return
        _save_checkpoint(ckpt_path, {
            "version": CHECKPOINT_VERSION,
            "model": model.state_dict(),
            "optimizers": [o.state_dict() for o in optimizers],
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "history": history, "best_metric": best_metric, "best_epoch": best_epoch,
            "bad_epochs": bad_epochs, "best_state": best_state,
            "epoch_loss": epoch_loss.cpu(), "epoch_rows": epoch_rows, "epoch_train_s": epoch_train_s,
            "rng": _rng_state(), "world_size": dist_info.world_size, "batch_size": cfg.batch_size,
            "ranker_config": config.to_dict(), "spec": spec.to_dict(),
        })

    # --- loop ------------------------------------------------------------------------------------------
    stopped_early = False
    train_seconds, trained_rows = 0.0, 0
    step_module.train()
    if dist_info.rank == 0:
        log.info(
            "training %s on %s (world %d): %d rows, %d steps/epoch of %d, data %s (%.1f MB)",
            config.arch, device, dist_info.world_size, n, steps_per_epoch, cfg.batch_size,
            "on device" if train_data.on_device else "streamed from pinned memory", train_data.nbytes / 1e6,
        )
    while epoch < cfg.epochs and not stopped_early:
        perm = _epoch_permutation(n, cfg.seed, epoch).to(train_data.tensors["cat"].device)
        t_epoch = time.perf_counter()
        t_log, rows_log = t_epoch, 0
        chunk_rows = max(cfg.batch_size, (cfg.stream_chunk_rows // cfg.batch_size) * cfg.batch_size)
        chunk: DeviceData | None = None
        chunk_start = -1
        while step_in_epoch < steps_per_epoch:
            lo = step_in_epoch * cfg.batch_size
            hi = min(n, lo + cfg.batch_size)
            part = perm[lo:hi].tensor_split(dist_info.world_size)[dist_info.rank]
            if train_data.on_device:
                batch = train_data.take(part)
            else:
                # Streaming: one large gather + copy per chunk of the permutation, batches sliced on the GPU.
                start = (lo // chunk_rows) * chunk_rows
                if chunk is None or start != chunk_start:
                    chunk = DeviceData.resident(train_data.take(perm[start:min(n, start + chunk_rows)]), device)
                    chunk_start = start
                local = torch.arange(lo - start, hi - start, device=device)
                local = local.tensor_split(dist_info.world_size)[dist_info.rank]
                batch = chunk.take(local)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, per_task = step_module(batch)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
            rows = hi - lo
            epoch_loss += torch.cat([loss.detach().double().reshape(1), per_task.double()]) * len(part)
            epoch_rows += rows
            rows_log += rows
            step_in_epoch += 1
            global_step += 1
            if cfg.log_every and global_step % cfg.log_every == 0:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                now = time.perf_counter()
                event = {"event": "step", "epoch": epoch + 1, "step": global_step, "loss": float(loss.detach()),
                         "samples_per_s": rows_log / max(now - t_log, 1e-9)}
                if dist_info.rank == 0:
                    log.info("epoch %d step %d loss %.4f %.0f samples/s", event["epoch"], global_step,
                             event["loss"], event["samples_per_s"])
                if callback is not None:
                    callback(event)
                t_log, rows_log = now, 0
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                epoch_train_s += time.perf_counter() - t_epoch
                t_epoch = time.perf_counter()
                checkpoint()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_train_s += time.perf_counter() - t_epoch
        # --- end of epoch: all-reduced training loss, validation, early stopping ----------------------
        summed = epoch_loss.clone()
        if dist_info.enabled:
            import torch.distributed as dist

            dist.all_reduce(summed)
        totals = (summed / max(epoch_rows, 1)).cpu().numpy()
        t_valid = time.perf_counter()
        valid_auc, _ = _validate(model, valid_data, tasks, cfg, dist_info, device)
        metric = _metric(valid_auc, cfg.early_stopping_task)
        record = {
            "epoch": epoch + 1,
            "train_loss": float(totals[0]),
            "train_loss_per_task": {t: float(totals[j + 1]) for j, t in enumerate(tasks)},
            "valid_auc": valid_auc,
            "metric": metric,
            "train_seconds": epoch_train_s,
            "valid_seconds": time.perf_counter() - t_valid,
            "samples_per_s": epoch_rows / max(epoch_train_s, 1e-9),
        }
        history.append(record)
        train_seconds += epoch_train_s
        trained_rows += epoch_rows
        if dist_info.rank == 0:
            log.info("epoch %d: train loss %.4f, valid AUC %s, %.0f samples/s", epoch + 1, record["train_loss"],
                     {t: round(a, 4) for t, a in valid_auc.items()}, record["samples_per_s"])
        if callback is not None:
            callback({"event": "epoch", **record})
        improved = valid_data is None or np.isnan(metric) or metric > best_metric + cfg.min_delta
        if improved:
            best_metric = metric if not np.isnan(metric) else best_metric
            best_epoch, bad_epochs = epoch + 1, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            stopped_early = cfg.patience > 0 and bad_epochs >= cfg.patience
        epoch += 1
        step_in_epoch = 0
        epoch_loss.zero_()
        epoch_rows, epoch_train_s = 0, 0.0
        if cfg.checkpoint_every:
            checkpoint()  # epoch boundary: a resume never repeats a validation

    # --- result -------------------------------------------------------------------------------------------
    if best_state is not None:
        model.load_state_dict(best_state)
    _, valid_scores = _validate(model, valid_data, tasks, cfg, dist_info, device)
    final = copy.deepcopy(model).cpu()
    if dist_info.initialized_here:
        import torch.distributed as dist

        dist.destroy_process_group()
    seconds = time.perf_counter() - started
    return TrainResult(
        model=final,
        encoders=encoders,
        spec=spec,
        ranker_config=config,
        train_config=cfg,
        history=history,
        best_epoch=best_epoch,
        best_metric=float(best_metric) if best_metric != -float("inf") else float("nan"),
        samples_per_s=trained_rows / max(train_seconds, 1e-9),
        seconds=seconds,
        device=str(device),
        world_size=dist_info.world_size,
        steps=global_step,
        stopped_early=stopped_early,
        valid_scores=valid_scores,
    )


def main(argv: list[str] | None = None) -> int:
    """Train from a training-set parquet; the entry point for DDP:

    ``torchrun --nproc_per_node 2 -m components.training.trainer --training-set <home>/training/<day>/train.parquet
    --out <dir> [--ranker-config '{"arch": "stem"}'] [--train-config '{"epochs": 3}']``

    The last ``--valid-days`` days validate; rank 0 writes :meth:`TrainResult.save` into ``--out``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m components.training.trainer", description=main.__doc__)
    parser.add_argument("--training-set", required=True, help="train.parquet of components/training/training_set.py")
    parser.add_argument("--out", required=True, help="folder for the model, encoders and history")
    parser.add_argument("--valid-days", type=int, default=1)
    parser.add_argument("--ranker-config", default="{}", help="RankerConfig as JSON (or a JSON file)")
    parser.add_argument("--train-config", default="{}", help="TrainConfig as JSON (or a JSON file)")
    args = parser.parse_args(argv)

    def as_dict(value: str) -> dict[str, Any]:
        text = Path(value).read_text() if not value.lstrip().startswith("{") else value
        return json.loads(text)

    from components.training.encoders import read_training_set, time_split
    from models.config import RankerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train, valid = time_split(read_training_set(args.training_set), args.valid_days)
    result = train_ranker(
        None, train, valid, RankerConfig.from_dict(as_dict(args.ranker_config)),
        TrainConfig.from_dict(as_dict(args.train_config)),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        result.save(args.out)
        log.info("saved to %s: %s", args.out, result.summary())
    return 0


__all__ = ["DeviceData", "TrainConfig", "TrainResult", "main", "predict", "train_ranker"]

if __name__ == "__main__":
    raise SystemExit(main())

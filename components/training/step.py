"""The training step's parts: :func:`loss_module` (the ranker wrapped so one forward returns the total and
per-task losses), :func:`optimizers_for` (Adam, and SparseAdam for sparse embeddings),
:func:`init_prior_bias` (output biases at the training set's positive rates) and
:func:`epoch_permutation` (the epoch's row order, the same on every rank and after a resume) and
:func:`early_stopping_metric` (what early stopping compares)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:
    import torch

    from components.training.device import Batch
    from components.training.train_config import TrainConfig
    from models.spec import FeatureSpec


def init_prior_bias(model: Any, batch: Batch, use_weights: bool) -> dict[str, float]:
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


def epoch_permutation(rows: int, seed: int, epoch: int) -> "torch.Tensor":
    """The same permutation on every rank and after a resume: a function of (seed, epoch) only."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(rows, generator=g)


def early_stopping_metric(valid_auc: Mapping[str, float], task: str | None) -> float:
    """The early-stopping metric: ``task``'s validation AUC, or the mean over tasks (NaN when none)."""
    if not valid_auc:
        return float("nan")
    if task is not None:
        if task not in valid_auc:
            raise ValueError(f"early_stopping_task {task!r} is not a task ({sorted(valid_auc)})")
        return float(valid_auc[task])
    vals = [v for v in valid_auc.values() if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def loss_module(model: Any, spec: "FeatureSpec", cfg: TrainConfig) -> Any:
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

        def forward(self, batch: "Batch") -> tuple[torch.Tensor, torch.Tensor]:
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


def optimizers_for(model: Any, cfg: TrainConfig) -> list[Any]:
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


__all__ = ["early_stopping_metric", "epoch_permutation", "init_prior_bias", "loss_module", "optimizers_for"]

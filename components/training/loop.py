"""The training loop of the ranker: :func:`train_ranker`, on CPU, one GPU, or DDP under ``torchrun``
(the command line is components/training/__main__.py, ``python -m components.training``).

``train_ranker(settings, train, valid, ranker_config, train_config)`` fits the feature encoders on the
training rows (components/training/encoders.py), encodes both tables once into tensors and trains
``models.ranker.Ranker`` with Adam on the multi-task combined-pair loss (models/losses.py), early-stopping on
validation AUC (docs/training.md). Batches are slices of a per-epoch permutation, resident on the device or
streamed from pinned host memory (components/training/device.py), or, for training rows left on disk
(a ``ParquetRows``), streamed from the parquet (components/training/stream.py). bf16 autocast on CUDA only.
Under DDP ``batch_size`` is the global batch, each rank its own part; losses and validation scores are
all-reduced / all-gathered, so every rank makes the same early-stopping decision. Progress: a bar with an
ETA on a terminal, ``logging`` and an optional callback every ``log_every`` steps and per epoch.

A run is a few named steps around one :class:`~components.training.checkpoint.LoopState` (saved whole by
the checkpoints, so a resumed run ends bit-identical): :func:`_encode_inputs`, :func:`_set_up` (device,
process group, model, data: a :class:`_Run`), :func:`_start_state` (fresh or resumed), per epoch
:func:`_train_epoch` and :func:`_end_epoch`, and :func:`_result`.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from components.training.artefact import TrainResult
from components.training.checkpoint import LoopState, checkpoint_path, restore_checkpoint, save_checkpoint
from components.training.device import (Batch, DeviceData, DistInfo, EpochBatches, all_gather_scores, all_reduce_sum,
                                        init_distributed, place_step_module, predict, resolve_device, shard_bounds,
                                        synchronize, teardown_distributed, uses_bf16)
from components.training.encoders import FeatureEncoders
from components.training.step import (early_stopping_metric, epoch_permutation, init_prior_bias, loss_module,
                                      optimizers_for)
from components.training.stream import ParquetRows, StreamedData, fit_encoders_on_disk
from components.training.train_config import TrainConfig

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

    from components.config import Settings
    from models.config import RankerConfig
    from models.spec import FeatureSpec

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """What stays fixed while a run trains: its configs, device and process group, the step module, the
    data, the schedule, where checkpoints go, and who hears of progress."""

    cfg: TrainConfig
    config: "RankerConfig"
    spec: "FeatureSpec"
    tasks: tuple[str, ...]
    device: "torch.device"
    dist_info: DistInfo
    step_module: Any
    train_data: DeviceData | StreamedData
    valid_data: DeviceData | None
    steps_per_epoch: int
    ckpt_path: Path | None
    callback: Callable[[dict[str, Any]], None] | None
    bar: Any = None  # the progress bar (rank 0), or None
    train_seconds: float = 0.0  # this process's training seconds and rows (samples_per_s of the result)
    trained_rows: int = 0


def _encode_inputs(
    settings: "Settings | None", train_table: "pa.Table | Batch | ParquetRows", valid_table: "pa.Table | Batch | None",
    encoders: FeatureEncoders | None, spec: "FeatureSpec | None", train_weights: Mapping[str, np.ndarray] | None,
    cfg: TrainConfig,
) -> tuple[FeatureEncoders | None, "FeatureSpec", "Batch | StreamedData", Batch | None]:
    """Tables to encoded batches (fitting the encoders on the training rows when none are given), and
    the feature spec; checks both batches carry labels for every task. Rows left on disk stay there."""
    import pyarrow as pa

    seq_col = settings.features.sequence_category_column if settings is not None else None
    if isinstance(train_table, ParquetRows):  # streamed (components/training/stream.py)
        encoders = encoders or fit_encoders_on_disk(train_table, seq_col)
        train_batch: "Batch | StreamedData" = StreamedData(train_table, encoders, cfg, train_weights)
    elif isinstance(train_table, pa.Table):
        encoders = encoders or FeatureEncoders.fit(train_table, sequence_category_column=seq_col)
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
        if isinstance(b, dict) and ("labels" not in b or b["labels"].shape[1] != len(tasks)):
            raise ValueError(f"{name} batch needs labels [N, {len(tasks)}] for tasks {tasks}")
    return encoders, spec, train_batch, valid_batch


def _set_up(
    settings: "Settings | None", cfg: TrainConfig, config: "RankerConfig", spec: "FeatureSpec",
    train_batch: "Batch | StreamedData", valid_batch: Batch | None, callback: Callable[[dict[str, Any]], None] | None,
) -> tuple[_Run, Any]:
    """Join the process group, pick the device, seed, build the model (prior biases, checked ids) and
    its step module, place the data, and fix the schedule. Returns the run and the model."""
    import torch

    from models.ranker import Ranker

    wants_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    dist_info = init_distributed("cuda" if wants_cuda else "cpu")
    device = resolve_device(cfg.device, dist_info)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    random.seed(cfg.seed)
    model = Ranker(spec, config)
    streamed = isinstance(train_batch, StreamedData)
    if cfg.prior_bias:
        init_prior_bias(model, train_batch.labels() if streamed else train_batch, cfg.ipw)
    # Once per run, on CPU: an out-of-range id would silently read another field's rows (docs/models.md).
    for b in ((valid_batch,) if streamed else (train_batch, valid_batch)):
        if b is not None:
            model.check_batch(b)
    model = model.to(device)
    step_module = place_step_module(loss_module(model, spec, cfg), device, dist_info, cfg)
    valid_data = DeviceData(valid_batch, device, cfg.device_data_fraction) if valid_batch is not None else None
    if streamed:  # each rank its own row groups, the same number of steps (components/training/stream.py)
        train_data: DeviceData | StreamedData = train_batch.bind(device, dist_info)
        steps_per_epoch = train_data.steps_per_epoch
    else:  # global batches of the epoch permutation, each rank its slice
        train_data = DeviceData(train_batch, device, cfg.device_data_fraction, cfg.stream_data)
        n = train_data.rows
        steps_per_epoch = -(-n // cfg.batch_size)
        if n - (steps_per_epoch - 1) * cfg.batch_size < dist_info.world_size:
            steps_per_epoch -= 1  # a last batch too small to give every rank a row is dropped
        if steps_per_epoch < 1:
            raise ValueError(f"{n} training rows cannot feed {dist_info.world_size} ranks")
    run = _Run(cfg=cfg, config=config, spec=spec, tasks=tuple(spec.tasks), device=device, dist_info=dist_info,
               step_module=step_module, train_data=train_data, valid_data=valid_data,
               steps_per_epoch=steps_per_epoch, ckpt_path=checkpoint_path(cfg, settings), callback=callback)
    return run, model


def _start_state(run: _Run, model: Any) -> LoopState:
    """A fresh loop state, or the checkpoint's when ``resume`` and one exists."""
    import torch

    state = LoopState(model=model, optimizers=optimizers_for(model, run.cfg),
                      epoch_loss=torch.zeros(len(run.tasks) + 1, dtype=torch.float64, device=run.device))
    if run.cfg.resume and run.ckpt_path is not None and run.ckpt_path.is_file():
        restore_checkpoint(run.ckpt_path, state, run.dist_info.world_size, run.cfg.batch_size,
                           stream=getattr(run.train_data, "stream_key", None))
    return state


def _checkpoint(run: _Run, state: LoopState) -> None:
    """Save the whole loop state (rank 0 only, when checkpoints have a place)."""
    if run.ckpt_path is None or run.dist_info.rank != 0:
        return
    save_checkpoint(run.ckpt_path, state, {
        "world_size": run.dist_info.world_size, "batch_size": run.cfg.batch_size,
        "ranker_config": run.config.to_dict(), "spec": run.spec.to_dict(),
        "stream": getattr(run.train_data, "stream_key", None),
    })


def _train_epoch(run: _Run, state: LoopState) -> None:
    """The optimiser steps of the current epoch from ``state.step_in_epoch`` on, with step logs and
    checkpoints; the epoch's training seconds go to ``state.epoch_train_s``."""
    import torch

    cfg, device, data = run.cfg, run.device, run.train_data
    if isinstance(data, StreamedData):  # from the step a resume starts at (stream.py replays the epoch)
        batches: EpochBatches | Any = data.epoch(state.epoch, state.step_in_epoch)
    else:
        perm = epoch_permutation(data.rows, cfg.seed, state.epoch).to(data.tensors["cat"].device)
        batches = EpochBatches(data, perm, cfg.batch_size, cfg.stream_chunk_rows, run.dist_info)
    t_epoch = time.perf_counter()
    t_log, rows_log = t_epoch, 0
    try:
        while state.step_in_epoch < run.steps_per_epoch:
            batch, rows, local_rows = batches.at(state.step_in_epoch)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(cfg, device)):
                loss, per_task = run.step_module(batch)
            for opt in state.optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in state.optimizers:
                opt.step()
            state.epoch_loss += torch.cat([loss.detach().double().reshape(1), per_task.double()]) * local_rows
            state.epoch_rows += rows
            rows_log += rows
            state.step_in_epoch += 1
            state.global_step += 1
            if run.bar is not None:
                run.bar.update(1)
            if cfg.log_every and state.global_step % cfg.log_every == 0:
                synchronize(device)
                now = time.perf_counter()
                _log_step(run, state, float(loss.detach()), rows_log / max(now - t_log, 1e-9))
                t_log, rows_log = now, 0
            if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0:
                synchronize(device)
                state.epoch_train_s += time.perf_counter() - t_epoch
                t_epoch = time.perf_counter()
                _checkpoint(run, state)
    finally:
        batches.close()
    synchronize(device)
    state.epoch_train_s += time.perf_counter() - t_epoch


def _log_step(run: _Run, state: LoopState, loss: float, samples_per_s: float) -> None:
    event = {"event": "step", "epoch": state.epoch + 1, "step": state.global_step, "loss": loss,
             "samples_per_s": samples_per_s}
    if run.dist_info.rank == 0:
        log.info("epoch %d step %d loss %.4f %.0f samples/s", event["epoch"], state.global_step, loss, samples_per_s)
    if run.callback is not None:
        run.callback(event)


def _end_epoch(run: _Run, state: LoopState) -> None:
    """All-reduced training loss, validation, the epoch's history record, early stopping; then the next
    epoch's position and a checkpoint (at the epoch boundary, so a resume never repeats a validation)."""
    cfg = run.cfg
    totals = (all_reduce_sum(state.epoch_loss, run.dist_info) / max(state.epoch_rows, 1)).cpu().numpy()
    t_valid = time.perf_counter()
    valid_auc, valid_logloss, _ = _validate(run, state.model)
    metric = early_stopping_metric(valid_auc, cfg.early_stopping_task)
    record = {
        "epoch": state.epoch + 1,
        "train_loss": float(totals[0]),
        "train_loss_per_task": {t: float(totals[j + 1]) for j, t in enumerate(run.tasks)},
        "valid_auc": valid_auc,
        "valid_logloss": valid_logloss,
        "valid_rows": run.valid_data.rows if run.valid_data is not None else 0,
        "metric": metric,
        "train_seconds": state.epoch_train_s,
        "valid_seconds": time.perf_counter() - t_valid,
        "samples_per_s": state.epoch_rows / max(state.epoch_train_s, 1e-9),
    }
    state.history.append(record)
    run.train_seconds += state.epoch_train_s
    run.trained_rows += state.epoch_rows
    if run.dist_info.rank == 0:
        log.info("epoch %d: train loss %.4f, valid AUC %s, %.0f samples/s", state.epoch + 1, record["train_loss"],
                 {t: round(a, 4) for t, a in valid_auc.items()}, record["samples_per_s"])
    if run.bar is not None and valid_auc:
        run.bar.set_postfix_str(f"epoch {state.epoch + 1} valid AUC {metric:.4f}")
    if run.callback is not None:
        run.callback({"event": "epoch", **record})
    if run.valid_data is None or np.isnan(metric) or metric > state.best_metric + cfg.min_delta:
        state.best_metric = metric if not np.isnan(metric) else state.best_metric
        state.best_epoch, state.bad_epochs = state.epoch + 1, 0
        state.best_state = {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}
    else:
        state.bad_epochs += 1
        state.stopped_early = cfg.patience > 0 and state.bad_epochs >= cfg.patience
    state.epoch += 1
    state.step_in_epoch = 0
    state.epoch_loss.zero_()
    state.epoch_rows, state.epoch_train_s = 0, 0.0
    if cfg.checkpoint_every:
        _checkpoint(run, state)


def _validate(run: _Run, model: Any) -> tuple[dict[str, float], dict[str, float], dict[str, np.ndarray]]:
    """Per-task AUC and log loss on the validation set, and the scores. Under DDP each rank scores a
    contiguous shard and the scores are all-gathered, so every rank computes the same metrics."""
    import torch

    from components.training.metrics import auc, logloss

    data = run.valid_data
    if data is None or data.rows == 0:
        return {}, {}, {}
    lo, hi, _ = shard_bounds(data.rows, run.dist_info)
    scores = predict(model, data, run.tasks, device=run.device, batch_size=run.cfg.eval_batch_size,
                     rows=torch.arange(lo, hi), bf16=run.cfg.bf16)
    scores = all_gather_scores(scores, run.tasks, data.rows, run.dist_info, run.device)
    labels = data.tensors["labels"].cpu().numpy()
    return ({t: float(auc(scores[t], labels[:, j])) for j, t in enumerate(run.tasks)},
            {t: float(logloss(scores[t], labels[:, j])) for j, t in enumerate(run.tasks)}, scores)


def _result(run: _Run, state: LoopState, encoders: FeatureEncoders | None, started: float) -> TrainResult:
    """The best epoch's model (on CPU), its validation scores and the run's history; leaves the process group."""
    if state.best_state is not None:
        state.model.load_state_dict(state.best_state)
    _, _, valid_scores = _validate(run, state.model)
    final = copy.deepcopy(state.model).cpu()
    teardown_distributed(run.dist_info)
    return TrainResult(
        model=final,
        encoders=encoders,
        spec=run.spec,
        ranker_config=run.config,
        train_config=run.cfg,
        history=state.history,
        best_epoch=state.best_epoch,
        best_metric=float(state.best_metric) if state.best_metric != -float("inf") else float("nan"),
        samples_per_s=run.trained_rows / max(run.train_seconds, 1e-9),
        seconds=time.perf_counter() - started,
        device=str(run.device),
        world_size=run.dist_info.world_size,
        steps=state.global_step,
        stopped_early=state.stopped_early,
        valid_scores=valid_scores,
    )


def train_ranker(
    settings: "Settings | None",
    train_table: "pa.Table | Batch | ParquetRows",
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
        train_table: the training rows (a training-set table), an already encoded batch dict, or
            :class:`~components.training.stream.ParquetRows` (rows left on disk: batches stream from them).
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
    from components.progress import progress_bar

    cfg = train_config or TrainConfig()
    started = time.perf_counter()
    encoders, spec, train_batch, valid_batch = _encode_inputs(
        settings, train_table, valid_table, encoders, spec, train_weights, cfg)
    run, model = _set_up(settings, cfg, config, spec, train_batch, valid_batch, callback)
    state = _start_state(run, model)
    run.step_module.train()
    if run.dist_info.rank == 0:
        log.info(
            "training %s on %s (world %d): %d rows, %d steps/epoch of %d, data %s (%.1f MB)",
            config.arch, run.device, run.dist_info.world_size, run.train_data.rows, run.steps_per_epoch,
            cfg.batch_size, getattr(run.train_data, "source", None) or (
                "on device" if run.train_data.on_device else "streamed from pinned memory"),
            run.train_data.nbytes / 1e6,
        )
        run.bar = progress_bar(cfg.epochs * run.steps_per_epoch, f"training {config.arch}", unit="step")
        run.bar.update(state.global_step)
    try:
        while state.epoch < cfg.epochs and not state.stopped_early:
            _train_epoch(run, state)
            _end_epoch(run, state)
    finally:
        if run.bar is not None:
            run.bar.close()
    return _result(run, state, encoders, started)


__all__ = ["TrainConfig", "TrainResult", "train_ranker"]

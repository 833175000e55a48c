"""The training loop's state, and its checkpoint: :class:`LoopState` holds everything a run carries from
one step to the next (model, optimisers, position in the schedule, running epoch loss, history,
early-stopping state); :func:`save_checkpoint` writes it whole with the RNG states (rank 0, atomic
rename) and :func:`restore_checkpoint` puts it back, so a resumed run ends with bit-identical weights to
an uninterrupted one (tests/code/training/test_train.py)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:
    import torch

    from components.config import Settings
    from components.training.train_config import TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1


@dataclass
class LoopState:
    """What the training loop changes as it runs.

    ``epoch`` and ``step_in_epoch`` are the position in the schedule (0-based; the epoch's permutation
    is a function of the seed and the epoch); ``epoch_loss`` sums (total loss, per-task losses) × rows of
    the epoch so far on the device; ``epoch_rows`` and ``epoch_train_s`` its rows and training seconds.
    ``best_state`` is the best epoch's weights on CPU; ``bad_epochs`` counts epochs since it."""

    model: Any  # models.ranker.Ranker
    optimizers: list[Any]
    epoch_loss: "torch.Tensor"
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float = -float("inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict[str, Any] | None = None
    epoch_rows: int = 0
    epoch_train_s: float = 0.0
    stopped_early: bool = False


def checkpoint_path(cfg: "TrainConfig", settings: "Settings | None") -> Path | None:
    """``<checkpoint_dir>/checkpoint.pt`` (default folder ``<settings.training_dir>/checkpoints``); None
    without either. Raises when ``checkpoint_every`` asks for checkpoints that have nowhere to go."""
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else (
        settings.training_dir / "checkpoints" if settings is not None else None)
    ckpt_path = ckpt_dir / CHECKPOINT_FILE if ckpt_dir is not None else None
    if cfg.checkpoint_every and ckpt_path is None:
        raise ValueError("checkpoint_every needs checkpoint_dir (or settings)")
    return ckpt_path


def rng_state() -> dict[str, Any]:
    """The torch, numpy, Python (and CUDA) random generators' states."""
    import torch

    state: dict[str, Any] = {
        "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: LoopState, schedule: Mapping[str, Any]) -> None:
    """Write ``state`` whole, the RNG states and ``schedule`` (world_size, batch_size, ranker_config,
    spec: what a resume must match) to ``path``, atomically: a crash mid-write leaves the previous
    checkpoint intact."""
    import torch

    payload = {
        "version": CHECKPOINT_VERSION,
        "model": state.model.state_dict(),
        "optimizers": [o.state_dict() for o in state.optimizers],
        "epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step,
        "history": state.history, "best_metric": state.best_metric, "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs, "best_state": state.best_state, "stopped_early": state.stopped_early,
        "epoch_loss": state.epoch_loss.cpu(), "epoch_rows": state.epoch_rows, "epoch_train_s": state.epoch_train_s,
        "rng": rng_state(), **schedule,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def restore_checkpoint(path: Path, state: LoopState, world_size: int, batch_size: int,
                       stream: Mapping[str, Any] | None = None) -> None:
    """Load the checkpoint at ``path`` into ``state`` (model and optimisers in place, the rest by value)
    and restore the RNG states. Raises when it was written by another format version, world size, batch
    size or data stream (``stream``: ``StreamedData.stream_key`` of a run streamed from disk, None in
    memory; the schedule would differ)."""
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path} has version {saved.get('version')}, expected {CHECKPOINT_VERSION}")
    if saved["world_size"] != world_size or saved["batch_size"] != batch_size:
        raise ValueError(
            f"checkpoint {path} was written with world_size {saved['world_size']} and batch_size "
            f"{saved['batch_size']}; resuming needs the same (now {world_size}, {batch_size})"
        )
    if saved.get("stream") != (dict(stream) if stream is not None else None):
        raise ValueError(f"checkpoint {path} was written streaming {saved.get('stream')}; resuming needs the same "
                         f"data path and stream (now {stream})")
    state.model.load_state_dict(saved["model"])
    for opt, opt_state in zip(state.optimizers, saved["optimizers"]):
        opt.load_state_dict(opt_state)
    state.epoch, state.step_in_epoch = saved["epoch"], saved["step_in_epoch"]
    state.global_step, state.history = saved["global_step"], saved["history"]
    state.best_metric, state.best_epoch = saved["best_metric"], saved["best_epoch"]
    state.bad_epochs, state.best_state = saved["bad_epochs"], saved["best_state"]
    state.stopped_early = saved.get("stopped_early", False)  # absent from checkpoints written before it was saved
    state.epoch_loss = saved["epoch_loss"].to(state.epoch_loss.device)
    state.epoch_rows, state.epoch_train_s = saved["epoch_rows"], saved["epoch_train_s"]
    set_rng_state(saved["rng"])
    log.info("resumed from %s at epoch %d step %d", path, state.epoch + 1, state.step_in_epoch)


__all__ = [
    "CHECKPOINT_FILE", "CHECKPOINT_VERSION", "LoopState", "checkpoint_path", "restore_checkpoint", "rng_state",
    "save_checkpoint", "set_rng_state",
]

"""Where training runs and its data lives: the device choice, bf16 autocast, the DDP process group
(set up under ``torchrun``, torn down at the end), the encoded dataset resident on the device or streamed
from pinned host memory (:class:`DeviceData`), and :func:`predict`, which scores rows on the device.

docs/training.md describes the residency and streaming rule; ``components/training/loop.py`` uses all of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from components.training.train_config import TrainConfig

Batch = dict[str, "torch.Tensor"]


# ----- distributed ---------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    """This process's place in the run: rank, world size, local rank; ``initialized_here`` when
    :func:`init_distributed` joined the process group (and so :func:`teardown_distributed` leaves it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> DistInfo:
    """DDP when launched by torchrun (``WORLD_SIZE`` > 1): gloo on CPU, NCCL on CUDA."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    initialized_here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        initialized_here = True
    return DistInfo(rank, world, local_rank, initialized_here)


def resolve_device(name: str, dist_info: DistInfo | None = None) -> "torch.device":
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


def place_step_module(step_module: Any, device: "torch.device", dist_info: DistInfo, cfg: "TrainConfig") -> Any:
    """The training step module on ``device``, wrapped in DDP when the run is distributed and compiled
    when ``cfg.compile``."""
    import torch

    step_module = step_module.to(device)
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        step_module = DDP(
            step_module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )
    if cfg.compile:
        step_module = torch.compile(step_module)
    return step_module


def teardown_distributed(dist_info: DistInfo) -> None:
    """Leave the process group if :func:`init_distributed` joined it."""
    if dist_info.initialized_here:
        import torch.distributed as dist

        dist.destroy_process_group()


def uses_bf16(cfg: "TrainConfig", device: "torch.device") -> bool:
    """bf16 autocast: on CUDA only, when ``cfg.bf16``."""
    return cfg.bf16 and device.type == "cuda"


def synchronize(device: "torch.device") -> None:
    """Wait for the device's queued work (before reading a clock or a loss); a no-op off CUDA."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


class EpochBatches:
    """The batches of one epoch: global batches of ``batch_size`` rows, slices of the epoch's permutation
    ``perm``, this rank's part of each. Streamed data is gathered and copied to the device one large chunk
    of the permutation at a time (``stream_chunk_rows``, whole batches), batches sliced from it on the device."""

    def __init__(self, data: DeviceData, perm: "torch.Tensor", batch_size: int, stream_chunk_rows: int,
                 dist_info: DistInfo) -> None:
        self.data, self.perm, self.batch_size, self.dist_info = data, perm, batch_size, dist_info
        self.chunk_rows = max(batch_size, (stream_chunk_rows // batch_size) * batch_size)
        self.chunk: DeviceData | None = None
        self.chunk_start = -1

    def at(self, step: int) -> tuple[Batch, int, int]:
        """(this rank's batch, global rows of the step, this rank's rows) of step ``step`` of the epoch."""
        import torch

        data, n, world, rank = self.data, self.data.rows, self.dist_info.world_size, self.dist_info.rank
        lo = step * self.batch_size
        hi = min(n, lo + self.batch_size)
        part = self.perm[lo:hi].tensor_split(world)[rank]
        if data.on_device:
            return data.take(part), hi - lo, len(part)
        start = (lo // self.chunk_rows) * self.chunk_rows
        if self.chunk is None or start != self.chunk_start:
            self.chunk = DeviceData.resident(data.take(self.perm[start:min(n, start + self.chunk_rows)]), data.device)
            self.chunk_start = start
        local = torch.arange(lo - start, hi - start, device=data.device).tensor_split(world)[rank]
        return self.chunk.take(local), hi - lo, len(part)

    def close(self) -> None:
        """Nothing to stop (the streamed epoch of components/training/stream.py has a thread to end)."""


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
    if was_training:  # eval() walks every module: skip it for a model that is in eval mode already
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
    if was_training:
        model.train()
    return {t: (np.concatenate(v) if v else np.zeros(0, dtype=np.float32)) for t, v in out.items()}


def shard_bounds(rows: int, dist_info: DistInfo) -> tuple[int, int, int]:
    """This rank's contiguous shard ``[lo, hi)`` of ``rows`` and the shard size every rank pads to."""
    per = -(-rows // dist_info.world_size)
    return min(rows, dist_info.rank * per), min(rows, (dist_info.rank + 1) * per), per


def all_gather_scores(
    scores: dict[str, np.ndarray], tasks: tuple[str, ...], rows: int, dist_info: DistInfo, device: Any
) -> dict[str, np.ndarray]:
    """Every rank's shard of per-task scores (:func:`shard_bounds`) joined in row order, on every rank;
    ``scores`` unchanged when the run is not distributed."""
    if not dist_info.enabled:
        return scores
    import torch
    import torch.distributed as dist

    lo, hi, per = shard_bounds(rows, dist_info)
    local = torch.zeros((per, len(tasks)), dtype=torch.float32)
    for j, t in enumerate(tasks):
        local[: hi - lo, j] = torch.from_numpy(scores[t])
    local = local.to(device)
    gathered = [torch.empty_like(local) for _ in range(dist_info.world_size)]
    dist.all_gather(gathered, local)
    full = torch.cat(gathered)[:rows].cpu().numpy()
    return {t: full[:, j].copy() for j, t in enumerate(tasks)}


def all_reduce_sum(tensor: "torch.Tensor", dist_info: DistInfo) -> "torch.Tensor":
    """A copy of ``tensor`` summed over the ranks (the copy alone when the run is not distributed)."""
    summed = tensor.clone()
    if dist_info.enabled:
        import torch.distributed as dist

        dist.all_reduce(summed)
    return summed


__all__ = [
    "Batch", "DeviceData", "DistInfo", "EpochBatches", "all_gather_scores", "all_reduce_sum", "init_distributed",
    "place_step_module", "predict", "resolve_device", "shard_bounds", "synchronize", "teardown_distributed", "uses_bf16",
]

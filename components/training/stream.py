"""Training sets larger than memory: the training rows stay in their parquet file and batches stream from it.

- :class:`ParquetRows` names the training rows of a training set on disk (file positions, and their IPW
  weights); :func:`split_on_disk` splits a set by day reading only its ``event_time`` column (the held-out
  days, small, come back as tables); :func:`streams` decides the path (``TrainConfig.data_path``,
  ``memory_budget_mb``) from the parquet metadata's decoded size.
- :func:`fit_encoders_on_disk` fits the feature encoders reading one column at a time: the same encoders
  as ``FeatureEncoders.fit`` on the whole table (tests/code/training/test_stream.py), with one column of
  the training rows in memory at a time.
- :class:`StreamedData` is the loop's training data (components/training/loop.py): per epoch the row groups
  in a seeded order (seed, epoch), this rank's share (every ``world_size``-th unit of that order: disjoint
  row groups per DDP rank), decoded with Arrow, encoded vectorised by the fitted encoders, shuffled in
  windows of at least ``shuffle_buffer_rows`` rows (a window's leftover rows join the next one), cut into
  this rank's batches; :class:`EpochStream` runs that in a background thread ahead of the optimiser
  (a queue of ``prefetch_batches``).

The stream's order is a function of (seed, epoch, rank, world size, batch size, buffer size) and the row
counts only, never of the rows' values, so a resume replays the epoch's stream from its start and skips
the batches the checkpoint says were consumed: the resumed run trains on the same batches and ends with the
same weights. docs/training.md, "Training sets larger than memory", describes the path and its memory.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np

from components.training.device import DistInfo
from components.training.encoders import FeatureEncoders
from components.training.field_encoders import (
    SEQUENCE_CATEGORIES,
    SEQUENCE_ITEMS,
    SEQUENCE_LENGTH,
    SEQUENCE_PREFIX,
    fit_fields,
    fit_sequence,
    label_columns,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

    from components.training.device import Batch
    from components.training.train_config import TrainConfig

log = logging.getLogger(__name__)

ROW = "__row"  # the file position column of split_on_disk's narrow table


@dataclass
class ParquetRows:
    """Training rows left on disk: ``rows`` are file positions (int64, ascending) of the parquet at ``path``;
    ``weights`` the per task IPW weights of those rows, in the same order (None: all 1)."""

    path: Path
    rows: np.ndarray
    weights: dict[str, np.ndarray] | None = None

    def column(self, name: str) -> "pa.ChunkedArray":
        """One column of the training rows (the only column this reads)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        col = pq.ParquetFile(self.path).read(columns=[name]).column(0)
        return col if len(self.rows) == col.length() else col.take(pa.array(self.rows))

    def table(self, columns: list[str]) -> "pa.Table":
        import pyarrow as pa

        return pa.table({c: self.column(c) for c in columns})


def estimated_bytes(path: Path, sample_rows: int = 4096) -> int:
    """The decoded (Arrow) size of a parquet file: the first ``sample_rows`` rows decoded, scaled to the
    file's rows (the metadata's uncompressed sizes are of the encoded pages: ~7x under Arrow's on the
    demo's training set, whose strings and lists are dictionary- and run-length-encoded)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    rows = pf.metadata.num_rows
    if rows == 0:
        return 0
    first = next(pf.iter_batches(batch_size=sample_rows))
    return int(first.nbytes / max(first.num_rows, 1) * rows)


def memory_budget_bytes(cfg: "TrainConfig") -> int:
    """``memory_budget_mb`` in bytes; None: half the machine's physical memory."""
    if cfg.memory_budget_mb is not None:
        return int(cfg.memory_budget_mb * 2**20)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def streams(cfg: "TrainConfig", path: Path) -> bool:
    """Whether the training set at ``path`` trains streamed: ``data_path`` stream, or auto and the set's
    decoded size over the memory budget."""
    if cfg.data_path != "auto":
        return cfg.data_path == "stream"
    size, budget = estimated_bytes(path), memory_budget_bytes(cfg)
    if size > budget:
        log.info("training set %s: %.0f MB decoded > budget %.0f MB: streaming it from disk", path, size / 2**20,
                 budget / 2**20)
    return size > budget


def group_cuts(handle: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The row counts of a ``pq.ParquetFile``'s row groups, their first file positions (and the file's
    rows at the end) and ``cut``: group g holds ``rows[cut[g]:cut[g + 1]]`` of the ascending ``rows``."""
    meta = handle.metadata
    counts = np.array([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    return counts, starts, np.searchsorted(rows, starts)


def read_rows(path: Path, rows: np.ndarray) -> "pa.Table":
    """The rows at file positions ``rows`` (ascending), reading only the row groups that hold them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    _, starts, _ = group_cuts(pf, rows)
    groups = np.unique(np.searchsorted(starts, rows, side="right") - 1) if len(rows) else np.zeros(0, np.int64)
    if len(groups) == 0:
        return pf.schema_arrow.empty_table()
    table = pf.read_row_groups([int(g) for g in groups])
    local = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in groups])
    return table.take(pa.array(np.searchsorted(local, rows)))


def split_on_disk(path: Path, splitter: Callable[["pa.Table"], Any]) -> tuple[ParquetRows, list["pa.Table"]]:
    """``splitter`` (``time_split`` or ``window_split`` of components/training/encoders.py) applied to the
    set at ``path`` reading only ``event_time``: the first part as :class:`ParquetRows` (left on disk), the
    other parts (the held-out days) read into tables."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    times = pq.ParquetFile(path).read(columns=["event_time"]).column(0)
    parts = splitter(pa.table({"event_time": times, ROW: pa.array(np.arange(len(times), dtype=np.int64))}))
    rows = [np.sort(p.column(ROW).to_numpy()) for p in parts]
    return ParquetRows(Path(path), rows[0]), [read_rows(Path(path), r) for r in rows[1:]]


def fit_encoders_on_disk(data: ParquetRows, sequence_category_column: str | None = None, *, min_count: int = 2,
                         numeric_buckets: int = 32, n_gap_buckets: int = 18) -> FeatureEncoders:
    """``FeatureEncoders.fit`` on the training rows of ``data``, one column read at a time (the sequence's
    two list columns together): the same encoders, with one column of the rows in memory."""
    import pyarrow.parquet as pq

    if len(data.rows) == 0:
        raise ValueError(f"cannot fit feature encoders on no rows of {data.path}")
    schema = pq.ParquetFile(data.path).schema_arrow
    tasks = label_columns(schema.empty_table(), None)
    categorical, numeric, ignored = [], [], {}
    for name in schema.names:
        if name in tasks or (name.startswith(SEQUENCE_PREFIX) and name != SEQUENCE_LENGTH):
            continue
        cat, num, why = fit_fields(data.table([name]), tasks, set(), min_count, numeric_buckets)
        categorical += cat
        numeric += num
        ignored.update(why)
    sequence = None
    if SEQUENCE_ITEMS in schema.names:
        summary = _sequence_summary(data, SEQUENCE_CATEGORIES in schema.names)
        sequence = fit_sequence(summary, categorical, set(), sequence_category_column, n_gap_buckets)
    for name in schema.names:
        if name.startswith(SEQUENCE_PREFIX) and name != SEQUENCE_LENGTH and sequence is None:
            ignored.setdefault(name, "no usable behaviour sequence")
    return FeatureEncoders(list(tasks), categorical, numeric, sequence, ignored, len(data.rows))


def _sequence_summary(data: ParquetRows, with_categories: bool) -> "pa.Table":
    """What ``fit_sequence`` reads of the sequence columns, gathered row group by row group: one row whose
    item list is as long as the longest (the sequence's length) and whose category list holds every
    distinct category of the training rows (the category field's choice): the same fit, without the lists
    of every row in memory at once."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(data.path)
    counts, starts, cut = group_cuts(handle, data.rows)
    cols = [SEQUENCE_ITEMS] + ([SEQUENCE_CATEGORIES] if with_categories else [])
    length, distinct = 0, []
    for g in range(len(counts)):
        if cut[g + 1] == cut[g]:
            continue
        part = handle.read_row_group(g, columns=cols).take(pa.array(data.rows[cut[g]:cut[g + 1]] - starts[g]))
        length = max(length, int(pc.max(pc.list_value_length(part.column(SEQUENCE_ITEMS))).as_py() or 0))
        if with_categories:
            distinct.append(pc.unique(pc.list_flatten(part.column(SEQUENCE_CATEGORIES).combine_chunks())))
    out = {SEQUENCE_ITEMS: pa.array([[0] * length], pa.list_(pa.int64()))}
    if with_categories:
        values = pc.unique(pa.chunked_array(distinct).combine_chunks())
        out[SEQUENCE_CATEGORIES] = pa.array([values.to_pylist()], pa.list_(values.type))
    return pa.table(out)


class StreamedData:
    """The training rows of a :class:`ParquetRows` as the loop's data: ``rows``, ``nbytes`` (decoded size
    estimate), :meth:`labels` (for the prior biases), then, once :meth:`bind` placed it on a device and rank,
    ``steps_per_epoch`` and :meth:`epoch` (one epoch's batches from a step on, prefetched)."""

    on_device = False

    source = "streamed from parquet"

    def __init__(self, data: ParquetRows, encoders: FeatureEncoders, cfg: "TrainConfig",
                 weights: "Mapping[str, np.ndarray] | None" = None) -> None:
        import pyarrow.parquet as pq

        if weights:
            data = ParquetRows(data.path, data.rows, {t: np.asarray(w, dtype=np.float32) for t, w in weights.items()})
        self.data, self.encoders, self.cfg = data, encoders, cfg
        handle = pq.ParquetFile(data.path)
        counts, starts, cut = group_cuts(handle, data.rows)
        self.units = [(g, int(cut[g]), int(cut[g + 1]), int(starts[g])) for g in range(len(counts))
                      if cut[g + 1] > cut[g]]
        self.rows = len(data.rows)
        self.nbytes = int(estimated_bytes(data.path) * self.rows / max(int(starts[-1]), 1))
        names = set(handle.schema_arrow.names)
        extra = ["event_time"] if encoders.sequence is not None and "event_time" in names else []
        self.columns = list(dict.fromkeys(encoders.feature_columns + list(encoders.tasks) + extra))
        self.device: Any = None
        self.dist_info = DistInfo()
        self.steps_per_epoch = 0

    @property
    def stream_key(self) -> dict[str, Any]:
        """What fixes the stream's order besides (seed, epoch, world size, batch size): a checkpoint written
        by another stream cannot be resumed."""
        return {"rows": self.rows, "units": len(self.units), "shuffle_buffer_rows": self.cfg.shuffle_buffer_rows}

    def labels(self) -> "Batch":
        """``labels`` and ``weights`` [N, T] of every training row (8 bytes per row and task)."""
        import torch

        labels = np.stack([self.data.column(t).to_numpy().astype(np.float32) for t in self.encoders.tasks], 1)
        weights = np.ones_like(labels)
        for j, task in enumerate(self.encoders.tasks):
            if self.data.weights and task in self.data.weights:
                weights[:, j] = self.data.weights[task]
        return {"labels": torch.from_numpy(labels), "weights": torch.from_numpy(weights)}

    def bind(self, device: "torch.device", dist_info: DistInfo) -> "StreamedData":
        """Place the stream on ``device`` and this rank; fixes ``steps_per_epoch``, the same on every rank:
        every rank gets at least ``len(units) // world`` units of any epoch's order, so the smallest such
        share gives the steps (one process: every row, the last batch partial as in memory)."""
        world, bs = dist_info.world_size, self.cfg.batch_size
        self.device, self.dist_info = device, dist_info
        self.local_batch = len(np.array_split(np.arange(bs), world)[dist_info.rank])
        if world == 1:
            self.steps_per_epoch = -(-self.rows // bs)
            return self
        if len(self.units) < world:
            raise ValueError(f"{len(self.units)} row groups of training rows cannot feed {world} ranks: write the "
                             "training set with smaller row groups")
        sizes = np.sort([hi - lo for _, lo, hi, _ in self.units])
        least = int(sizes[: len(self.units) // world].sum())
        self.steps_per_epoch = least // -(-bs // world)
        if self.steps_per_epoch < 1:
            raise ValueError(f"{least} training rows per rank cannot make one batch of {bs // world}")
        return self

    def unit_order(self, epoch: int) -> list[tuple[int, int, int, int]]:
        """This rank's units of ``epoch``: every world-size-th of the epoch's seeded order of all units."""
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.units))
        return [self.units[i] for i in order[self.dist_info.rank::self.dist_info.world_size]]

    def _decode(self, unit: tuple[int, int, int, int], handle: Any) -> dict[str, np.ndarray]:
        import pyarrow as pa

        group, lo, hi, start = unit
        table = handle.read_row_group(group, columns=self.columns)
        local = self.data.rows[lo:hi] - start
        if len(local) < table.num_rows:
            table = table.take(pa.array(local))
        weights = {t: w[lo:hi] for t, w in self.data.weights.items()} if self.data.weights else None
        return self.encoders.encode_numpy(table, weights=weights, with_labels=True)

    def batches(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """This rank's batches of ``epoch`` (numpy), ``steps_per_epoch`` of them, in the stream's order."""
        import pyarrow.parquet as pq

        handle = pq.ParquetFile(self.data.path)
        units, bs, emitted, window = self.unit_order(epoch), self.local_batch, 0, 0
        pending: list[dict[str, np.ndarray]] = []
        for i, unit in enumerate(units):
            pending.append(self._decode(unit, handle))
            held = sum(len(p["labels"]) for p in pending)
            if held < self.cfg.shuffle_buffer_rows and i + 1 < len(units):
                continue
            buf = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
            pending.clear()
            rng = np.random.default_rng([self.cfg.seed, epoch, self.dist_info.rank, window])
            order = rng.permutation(held)
            window += 1
            full = held // bs if i + 1 < len(units) else -(-held // bs)
            for b in range(full):
                if emitted == self.steps_per_epoch:
                    return
                yield {k: v[order[b * bs:(b + 1) * bs]] for k, v in buf.items()}
                emitted += 1
            rest = order[full * bs:]
            pending = [{k: v[rest] for k, v in buf.items()}] if len(rest) else []

    def epoch(self, epoch: int, start_step: int) -> "EpochStream":
        return EpochStream(self, epoch, start_step)


class EpochStream:
    """One epoch of a :class:`StreamedData` from step ``start_step`` on, decoded by a background thread
    into a queue of ``prefetch_batches``; :meth:`at` is ``EpochBatches.at`` for the loop, :meth:`close`
    stops the thread (the loop calls it when the epoch ends or fails)."""

    def __init__(self, data: StreamedData, epoch: int, start_step: int) -> None:
        self.data, self.epoch, self.start = data, epoch, start_step
        self.queue: queue.Queue = queue.Queue(maxsize=data.cfg.prefetch_batches)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name=f"stream-epoch-{epoch}", daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        import torch

        try:
            for step, batch in enumerate(self.data.batches(self.epoch)):
                if step < self.start:
                    continue  # consumed before the checkpoint this run resumed from
                if not self._put((step, {k: torch.from_numpy(v) for k, v in batch.items()})):
                    return
            self._put(None)
        except BaseException as exc:  # handed to the training thread, which raises it
            self._put(exc)

    def at(self, step: int) -> tuple["Batch", int, int]:
        """(this rank's batch, global rows of the step, this rank's rows) of step ``step`` (the next one)."""
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise RuntimeError(f"streaming the training set {self.data.data.path} failed: {item}") from item
        if item is None or item[0] != step:
            raise RuntimeError(f"the training stream gave {'no batch' if item is None else f'step {item[0]}'} "
                               f"where the loop expected step {step}")
        batch = {k: v.to(self.data.device) for k, v in item[1].items()}
        local = int(batch["labels"].shape[0])
        world = self.data.dist_info.world_size
        return batch, (local if world == 1 else self.data.cfg.batch_size), local

    def close(self) -> None:
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self.thread.join()


__all__ = [
    "EpochStream", "ParquetRows", "StreamedData", "estimated_bytes", "fit_encoders_on_disk", "group_cuts",
    "memory_budget_bytes", "read_rows", "split_on_disk", "streams",
]

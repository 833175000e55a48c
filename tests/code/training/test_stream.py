"""components/training/stream.py: training rows left on disk. The encoders fitted column by column equal the
in-memory fit; an epoch's streamed batches are the in-memory encoding of every training row, once; DDP ranks
read disjoint row groups and take equal steps; a streamed run resumes to the same weights, reaches the
in-memory run's test AUC within its bootstrap interval, and trains a set four times its memory budget
within that budget (peak RSS of a child process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from components.config import PROJECT_ROOT

TINY = {"arch": "stem", "embedding_dim": 8, "expert_hidden": [32], "gate_hidden": [16], "tower_hidden": [16]}
GROUP_ROWS = 1024  # small row groups: the small set has ~12 units to shuffle and share out


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """The small real training set (tests/code/training/test_dataset.py) rewritten in 1,024-row groups."""
    import pyarrow.parquet as pq

    from tests.code.training.test_dataset import small_training_set

    path = tmp_path_factory.mktemp("stream") / "train.parquet"
    pq.write_table(pq.read_table(small_training_set(tmp_path_factory, shared_data)), path,
                   row_group_size=GROUP_ROWS)
    return path


def _ranker():
    from models.config import RankerConfig

    return RankerConfig.from_dict(TINY)


def _rows(batch: dict[str, Any]) -> np.ndarray:
    """Every row of an encoded batch as one float64 row (inputs, labels, weights), sorted."""
    keys = sorted(batch)
    flat = np.concatenate([np.asarray(batch[k], dtype=np.float64).reshape(len(batch[k]), -1) for k in keys], 1)
    return flat[np.lexsort(flat.T[::-1])]


def test_encoders_fitted_column_by_column_equal_the_in_memory_fit(on_disk: Path) -> None:
    from components.training.encoders import FeatureEncoders, read_training_set, time_split
    from components.training.stream import fit_encoders_on_disk, split_on_disk

    train, valid = time_split(read_training_set(on_disk))
    rows, (held,) = split_on_disk(on_disk, time_split)
    assert len(rows.rows) == train.num_rows and held.equals(valid)
    assert fit_encoders_on_disk(rows).to_dict() == FeatureEncoders.fit(train).to_dict()


def test_an_epoch_streams_every_training_row_once_encoded_as_in_memory(on_disk: Path) -> None:
    import torch

    from components.training.device import DistInfo
    from components.training.encoders import FeatureEncoders, read_training_set, time_split
    from components.training.stream import StreamedData, split_on_disk
    from components.training.train_config import TrainConfig

    train, _ = time_split(read_training_set(on_disk))
    enc = FeatureEncoders.fit(train)
    weights = {"click": np.linspace(0.5, 2.0, train.num_rows, dtype=np.float32)}
    rows, _ = split_on_disk(on_disk, time_split)
    data = StreamedData(rows, enc, TrainConfig(batch_size=500, shuffle_buffer_rows=3000), weights)
    data.bind(torch.device("cpu"), DistInfo())
    batches = list(data.batches(0))
    assert len(batches) == data.steps_per_epoch == -(-train.num_rows // 500)
    assert all(len(b["labels"]) == 500 for b in batches[:-1])
    streamed = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    np.testing.assert_array_equal(_rows(streamed), _rows(enc.encode_numpy(train, weights=weights)))
    # Shuffled across row groups, and the same order again for the same epoch (what a resume replays).
    first = batches[0]["cat"][:, 0]
    assert not np.array_equal(first, enc.encode_numpy(train.slice(0, 500))["cat"][:, 0])
    again = next(iter(data.batches(0)))
    assert all(np.array_equal(again[k], batches[0][k]) for k in again)
    assert not np.array_equal(next(iter(data.batches(1)))["cat"], batches[0]["cat"])


def test_ddp_ranks_read_disjoint_row_groups_and_take_equal_steps(on_disk: Path) -> None:
    import torch

    from components.training.device import DistInfo
    from components.training.stream import StreamedData, fit_encoders_on_disk, split_on_disk
    from components.training.encoders import time_split
    from components.training.train_config import TrainConfig

    rows, _ = split_on_disk(on_disk, time_split)
    enc = fit_encoders_on_disk(rows)
    ranks = [StreamedData(rows, enc, TrainConfig(batch_size=512, shuffle_buffer_rows=2048))
             .bind(torch.device("cpu"), DistInfo(rank=r, world_size=3)) for r in range(3)]
    for epoch in (0, 1):
        units = [{u[0] for u in d.unit_order(epoch)} for d in ranks]
        assert not (units[0] & units[1]) and not (units[0] & units[2]) and not (units[1] & units[2])
        assert set().union(*units) == {u[0] for u in ranks[0].units}
        counts = [sum(1 for _ in d.batches(epoch)) for d in ranks]
        assert counts == [ranks[0].steps_per_epoch] * 3 and counts[0] >= 1
        assert all(len(b["labels"]) == d.local_batch for d in ranks for b in d.batches(epoch))
    assert [d.local_batch for d in ranks] == [171, 171, 170]  # the global batch split as in memory


def test_torchrun_trains_streamed_on_two_ranks(tmp_path: Path, on_disk: Path) -> None:
    """2 gloo processes stream their own row groups (``python -m components.training``, data_path stream):
    the same number of steps on both (no rank waits for a missing all-reduce), each step a full global batch,
    and a model that ranks."""
    import torch

    from components.training.device import DistInfo
    from components.training.encoders import time_split
    from components.training.stream import StreamedData, fit_encoders_on_disk, split_on_disk
    from components.training.train_config import TrainConfig

    train_cfg = {"epochs": 2, "batch_size": 512, "lr": 3e-3, "patience": 0, "device": "cpu", "log_every": 0,
                 "data_path": "stream", "shuffle_buffer_rows": 2048}
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2", "-m",
         "components.training", "--training-set", str(on_disk), "--out", str(tmp_path / "out"),
         "--ranker-config", json.dumps(TINY), "--train-config", json.dumps(train_cfg)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert StreamedData.source in proc.stderr
    out = json.loads((tmp_path / "out" / "history.json").read_text())
    assert out["world_size"] == 2 and len(out["history"]) == 2
    rows, _ = split_on_disk(on_disk, time_split)
    data = StreamedData(rows, fit_encoders_on_disk(rows), TrainConfig.from_dict(train_cfg))
    per_epoch = data.bind(torch.device("cpu"), DistInfo(rank=0, world_size=2)).steps_per_epoch
    assert out["steps"] == 2 * per_epoch and per_epoch >= 5
    assert out["history"][-1]["valid_auc"]["click"] > 0.55, out["history"]


class _Interrupt(Exception):
    pass


def test_a_streamed_run_resumes_to_the_same_weights(tmp_path: Path, on_disk: Path) -> None:
    import torch

    from components.training.encoders import time_split
    from components.training.loop import train_ranker
    from components.training.stream import split_on_disk
    from components.training.train_config import TrainConfig

    rows, (valid,) = split_on_disk(on_disk, time_split)
    rows.rows = rows.rows[:4000]  # 8 steps per epoch
    base: dict[str, Any] = dict(epochs=2, batch_size=512, lr=3e-3, patience=0, checkpoint_every=3, log_every=1,
                                shuffle_buffer_rows=2000, device="cpu")
    ranker = _ranker()
    whole = train_ranker(None, rows, valid, ranker, TrainConfig(**base, checkpoint_dir=str(tmp_path / "a")))

    def stop_at_step_11(event: dict) -> None:  # epoch 2, step 3 of 8; last checkpoint: step 9
        if event["event"] == "step" and event["step"] == 11:
            raise _Interrupt

    cfg = TrainConfig(**base, checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(_Interrupt):
        train_ranker(None, rows, valid, ranker, cfg, callback=stop_at_step_11)
    resumed = train_ranker(None, rows, valid, ranker, TrainConfig(**{**base, "resume": True},
                           checkpoint_dir=str(tmp_path / "b")))
    assert resumed.steps == whole.steps == 16
    a, b = whole.state_dict, resumed.state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Another stream (here another shuffle buffer) cannot resume the checkpoint's position.
    with pytest.raises(ValueError, match="stream"):
        train_ranker(None, rows, valid, ranker, TrainConfig(**{**base, "resume": True, "shuffle_buffer_rows": 999},
                     checkpoint_dir=str(tmp_path / "b")))


def test_a_streamed_run_reaches_the_in_memory_auc_within_noise(on_disk: Path) -> None:
    """Three seeds of each path early-stop on the validation day and are compared on the test day, which none
    saw. The streamed batches differ from the in-memory permutation as another seed's would, so the check is
    the seed means: the paired bootstrap interval (over users, 95%) of mean AUC(streamed) - mean AUC(in
    memory) reaches 0 or above (streaming costs no AUC beyond the test day's noise), and the difference is
    within the in-memory seeds' own spread."""
    from components.training.device import predict
    from components.training.encoders import read_training_set, window_split
    from components.training.intervals import mean_auc_difference_interval
    from components.training.loop import train_ranker
    from components.training.stream import split_on_disk
    from components.training.train_config import TrainConfig

    train, valid, test = window_split(read_training_set(on_disk))
    rows, (valid_d, test_d) = split_on_disk(on_disk, window_split)
    assert valid_d.equals(valid) and test_d.equals(test)
    labels, users = test.column("click").to_numpy(), test.column("user_id").to_numpy()
    scores: dict[str, list[np.ndarray]] = {"memory": [], "stream": []}
    for seed in (0, 1, 2):
        cfg = TrainConfig(epochs=3, batch_size=512, lr=3e-3, patience=1, log_every=0, device="cpu", seed=seed,
                          shuffle_buffer_rows=2048)
        for name, data in (("memory", train), ("stream", rows)):
            result = train_ranker(None, data, valid, _ranker(), cfg)
            scores[name].append(predict(result.model, result.encoders.encode(test), ("click",))["click"])
    diff = mean_auc_difference_interval(labels, scores["stream"], scores["memory"], groups=users)
    from components.training.metrics import auc

    memory_aucs = [auc(s, labels) for s in scores["memory"]]
    assert diff.high >= 0, (diff, memory_aucs)
    assert abs(diff.point) <= max(memory_aucs) - min(memory_aucs), (diff, memory_aucs)


CHILD = """
import json, sys
from pathlib import Path
from components.training.encoders import read_training_set, time_split
from components.training.loop import train_ranker
from components.training.stream import estimated_bytes, split_on_disk, streams
from components.training.train_config import TrainConfig
from models.config import RankerConfig

path, budget_mb, ranker, data_path, batch = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
cfg = TrainConfig(epochs=1, batch_size=batch, patience=0, log_every=0, device="cpu", memory_budget_mb=budget_mb,
                  shuffle_buffer_rows=4 * batch, prefetch_batches=2, eval_batch_size=batch, data_path=data_path)
if streams(cfg, path):
    train, (valid,) = split_on_disk(path, time_split)
else:
    assert data_path == "memory"
    train, valid = time_split(read_training_set(path))
result = train_ranker(None, train, valid, RankerConfig.from_dict(json.loads(ranker)), cfg)
# VmHWM: this address space's peak. ru_maxrss would not do: Linux keeps it across execve, so a child of a
# large pytest process would report its parent's peak.
hwm = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps({"peak": hwm,
                  "decoded": estimated_bytes(path), "steps": result.steps}))
"""


def big_set(small: Path, out: Path, times: int) -> Path:
    """The small set's training days repeated ``times`` times (then its last day) in 2,048-row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.training.encoders import time_split

    train, valid = time_split(pq.read_table(small))
    pq.write_table(pa.concat_tables([train] * times + [valid]), out, row_group_size=2048)
    return out


def _peak_rss(runs: list[tuple[Path, float, str, int]]) -> list[dict[str, Any]]:
    """Peak RSS of child processes (run side by side), each training one epoch on ``(path, budget_mb,
    data_path, batch_size)``."""
    # A fixed mmap threshold: glibc's dynamic one keeps freed batch buffers in the heap, and RSS drifts up
    # by tens of MB over the first epochs before it settles (docs/training.md).
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "1048576"}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(budget), json.dumps(TINY), data_path,
                               str(batch)], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for path, budget, data_path, batch in runs]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_streaming_saves_the_memory_the_in_memory_path_holds(tmp_path: Path, on_disk: Path) -> None:
    """The always-on, quick version of the budget test below: on ~70k training rows (~75 MB decoded) the
    streamed run's peak RSS is under the in-memory run's by at least half the set's decoded size (measured:
    1,013 MB in memory, 848 MB streamed: the gap ~2.2x the decoded size)."""
    from components.training.stream import estimated_bytes

    big = big_set(on_disk, tmp_path / "big.parquet", 6)
    decoded = estimated_bytes(big)
    # auto: the set is over the budget, so it streams
    memory, streamed = _peak_rss([(big, 1e6, "memory", 4096), (big, decoded / 4 / 2**20, "auto", 4096)])
    assert streamed["steps"] == memory["steps"] > 15
    assert streamed["peak"] < memory["peak"] - decoded / 2, (streamed, memory, decoded)


@pytest.mark.slow
def test_a_set_four_times_the_budget_trains_within_it(tmp_path: Path, on_disk: Path) -> None:
    """~290k training rows (~300 MB decoded), a budget of a quarter of that (~75 MB). The stated overhead is
    the peak RSS of the same streamed run on a set of a eighth of the size (the interpreter with torch and
    pyarrow, the model and Adam, a step's and a validation batch's working memory, the validation day, the
    shuffle window and the prefetched batches: ~610 MB here at batch 1,024, none of it growing with the
    training rows). The run on the large set (encoders fitted a column at a time, the row positions and
    labels: what grows with the rows) stays within the budget above that."""
    from components.training.stream import estimated_bytes

    big = big_set(on_disk, tmp_path / "big.parquet", 24)
    budget_mb = estimated_bytes(big) / 4 / 2**20
    small = big_set(on_disk, tmp_path / "small.parquet", 3)
    reference, out = _peak_rss([(small, budget_mb, "stream", 1024), (big, budget_mb, "auto", 1024)])
    overhead = reference["peak"]
    assert out["decoded"] >= 4 * budget_mb * 2**20 * 0.99
    assert out["peak"] < overhead + budget_mb * 2**20, (out, overhead, budget_mb)


def test_the_training_set_writer_writes_row_groups_to_stream(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.training.training_set import ROW_GROUP_ROWS, write_training_parquet

    table = pa.table({"request_id": pa.array(np.arange(ROW_GROUP_ROWS + 10).astype(str)),
                      "click": pa.array(np.zeros(ROW_GROUP_ROWS + 10, dtype=np.int8))})
    path = write_training_parquet(table, tmp_path)
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [ROW_GROUP_ROWS, 10]
    assert pq.read_table(path).equals(table)

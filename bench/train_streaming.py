"""Training throughput and peak memory of the streamed path (training rows left in their parquet,
components/training/stream.py) against the in-memory path, on the CPU, at the same size.

The training set is a real one (``--training-set``, a ``train.parquet`` of components/training/training_set.py)
whose training days (all but the last, which validates) are repeated ``--times`` times into a temporary
parquet written in the training-set writer's row groups (``ROW_GROUP_ROWS``), so the size can exceed what the
demo builds. Each (path, repeat) trains in its own child process, so its peak RSS is its own; the two paths
alternate within each repeat so that both see the same load on a shared box. Each child trains
``--epochs`` epochs of the ranker (``--ranker``, default the small test ranker) through the real trainer;
scoring batches are of ``--batch-size`` rows too (the trainer's default 65,536 would dominate the peak
memory); the figure is training rows / training seconds of the last epoch as the trainer times them (the streamed
path's reading, decoding and encoding run inside that time, in the prefetch thread; the in-memory path's
encoding happened before it), and ``seconds`` is the child's whole run: reading, fitting the encoders,
encoding, every epoch and validation.

Prints one JSON object: the command, the machine (components/machine.py), load averages, per path the
median and range over ``--repeats`` of samples/s, seconds and peak RSS, and the streamed/in-memory ratio of
the medians. docs/benchmarks.md, "Training from disk", records runs.

    OMP_NUM_THREADS=1 .venv/bin/python bench/train_streaming.py --training-set <home>/training/<day>/train.parquet \
        --times 0.6 --repeats 3 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine  # noqa: E402

# A fixed mmap threshold, as in the memory tests: glibc's dynamic one lets RSS drift up by tens of MB
# (docs/training.md, "Training sets larger than memory").
CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "1048576"}
SMALL_RANKER = {"arch": "stem", "embedding_dim": 8, "expert_hidden": [32], "gate_hidden": [16], "tower_hidden": [16]}


def build_set(source: Path, times: float, out: Path) -> dict[str, Any]:
    """``source``'s training days ``times`` times (a fraction: their first rows), then its last day, in
    the writer's row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.training.encoders import time_split
    from components.training.stream import estimated_bytes
    from components.training.training_set import ROW_GROUP_ROWS

    train, valid = time_split(pq.read_table(source))
    rows = int(train.num_rows * times)
    train = pa.concat_tables([train] * -(-rows // train.num_rows)).slice(0, rows)
    pq.write_table(pa.concat_tables([train, valid]), out, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    meta = pq.ParquetFile(out).metadata
    return {"rows": meta.num_rows, "train_rows": rows, "row_groups": meta.num_row_groups,
            "decoded_mb": round(estimated_bytes(out) / 2**20, 1), "file_mb": round(out.stat().st_size / 2**20, 1)}


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM; ``ru_maxrss`` survives execve on Linux, so a child would report its
    parent's peak when that was higher)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """One training run on ``args.path`` by ``args.child`` (memory or stream)."""
    from components.training.encoders import read_training_set, time_split
    from components.training.loop import train_ranker
    from components.training.stream import split_on_disk
    from components.training.train_config import TrainConfig
    from models.config import RankerConfig

    started = time.perf_counter()
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, patience=0, log_every=0, device="cpu",
                      data_path=args.child, shuffle_buffer_rows=args.shuffle_buffer_rows,
                      prefetch_batches=args.prefetch_batches, eval_batch_size=args.batch_size)
    if args.child == "stream":
        train, (valid,) = split_on_disk(Path(args.path), time_split)
    else:
        train, valid = time_split(read_training_set(args.path))
    result = train_ranker(None, train, valid, RankerConfig.from_dict(json.loads(args.ranker)), cfg)
    return {
        "samples_per_s": result.history[-1]["samples_per_s"],
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "valid_auc": result.history[-1]["valid_auc"],
        "steps": result.steps,
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("samples_per_s", "seconds", "peak_rss_mb"):
        values = [r[key] for r in runs]
        out[key] = {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
                    "max": round(max(values), 1)}
    out["valid_auc"] = [r["valid_auc"] for r in runs]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--training-set", type=Path, help="a train.parquet to repeat (required unless --child)")
    p.add_argument("--times", type=float, default=1.0,
                   help="how many times its training days are repeated (a fraction: their first rows)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--shuffle-buffer-rows", type=int, default=1 << 18)
    p.add_argument("--prefetch-batches", type=int, default=4)
    p.add_argument("--ranker", default=json.dumps(SMALL_RANKER), help="RankerConfig as JSON")
    p.add_argument("--child", choices=("memory", "stream"), help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    if args.training_set is None:
        raise SystemExit("--training-set is required")
    report: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                              "machine": describe_machine(), "load_average_at_start": os.getloadavg()}
    runs: dict[str, list[dict[str, Any]]] = {"memory": [], "stream": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.parquet"
        report["set"] = build_set(args.training_set, args.times, path)
        print(f"set: {report['set']}", file=sys.stderr, flush=True)
        passthrough = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--ranker", args.ranker,
                       "--shuffle-buffer-rows", str(args.shuffle_buffer_rows),
                       "--prefetch-batches", str(args.prefetch_batches)]
        for repeat in range(args.repeats):
            for name in (("memory", "stream") if repeat % 2 == 0 else ("stream", "memory")):
                cmd = [sys.executable, __file__, "--child", name, "--path", str(path), *passthrough]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=CHILD_ENV)
                if proc.returncode != 0:
                    raise SystemExit(f"{name} run failed:\n{proc.stderr[-3000:]}")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[name].append(res)
                print(f"{name} #{repeat}: {res['samples_per_s']:.0f} samples/s, {res['seconds']:.1f} s, "
                      f"{res['peak_rss_mb']:.0f} MB, load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    report["load_average_at_end"] = os.getloadavg()
    report["memory"], report["stream"] = _summary(runs["memory"]), _summary(runs["stream"])
    report["stream_over_memory"] = {
        k: round(report["stream"][k]["median"] / report["memory"][k]["median"], 3)
        for k in ("samples_per_s", "seconds", "peak_rss_mb")}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

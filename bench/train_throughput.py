"""Training throughput of the ranker (default STEM and every baseline) on the issue's synthetic shape.

The dataset has the shape that public CTR benchmarks use, so the figure compares with other libraries:
``--rows`` rows (4,000,000 by default), 26 categorical fields with vocabulary sizes 1,000,000 · 500,000 ·
300,000 · 200,000 · 100,000 · 100,000 · 50,000 · 20,000 · 10,000 · 5,000 · 2,000 · 1,000 · 1,000 · 800 · 600
· 500 · 300 · 200 · 150 · 100 · 60 · 30 · 20 · 15 · 10 · 4 and power-law (Zipf) id frequencies, two tasks
(click 4% positive, conversion 0.5% positive, conversions a subset of clicks), no numeric field, no
sequence. Ids are drawn vectorised (inverse CDF of a truncated power law, then a fixed random permutation
of the ids so the hot rows are scattered through the table, as hashed ids are).

Each model trains through the real trainer (``components.training.loop.train_ranker``): the encoded tensors are
loaded once (on the GPU when it fits), batches are index slices of a per-epoch permutation, the step is
forward + multi-task combined-pair loss + backward + optimiser step, bf16 autocast on CUDA. So data
loading is inside the timed figure. ``--warmup-epochs`` whole epochs (default 1: allocator, thread
pool, optimiser state, cuDNN/cuBLAS heuristics, ``--compile``) are run first and excluded; the figure is
training rows / training seconds of the ``--epochs`` epochs after them, as the trainer times them
(validation is off; the trainer synchronises CUDA at each epoch end before reading the clock).

Every model runs in its own child process, so its peak memory is its own: peak RSS on CPU, and
``torch.cuda.max_memory_allocated`` on CUDA. ``--optimizer adam`` is dense Adam over every parameter;
``--optimizer sparse`` builds the embeddings with sparse gradients and gives them ``torch.optim.SparseAdam``
(a row-wise Adam that updates only the rows a batch touched; the rest stays with Adam). The JSON says
which one each figure used.

Prints one JSON object: the command, the machine (CPU model and count, load average before and after
every model: the dev box is shared), Python / torch versions, the device and per model samples/s,
seconds, peak memory and parameter counts. docs/benchmarks.md records runs.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/train_throughput.py --rows 200000 --batch-size 4096  # CPU
    .venv/bin/python bench/train_throughput.py --device cuda        # GPU shape: 4M rows, batch 8192
    .venv/bin/python bench/train_throughput.py --models dcnv2 --optimizer sparse --rows 200000 --batch-size 4096
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_model  # noqa: E402

VOCAB_SIZES: tuple[int, ...] = (
    1_000_000, 500_000, 300_000, 200_000, 100_000, 100_000, 50_000, 20_000, 10_000, 5_000, 2_000, 1_000, 1_000,
    800, 600, 500, 300, 200, 150, 100, 60, 30, 20, 15, 10, 4,
)
TASK_RATES: dict[str, float] = {"click": 0.04, "conversion": 0.005}
MODELS: tuple[str, ...] = ("stem", "ame", "stem_al", "shared_bottom", "mmoe", "ple", "dcnv2", "multi_embedding")
# Field groups only matter to GwPFM experts (not used by the defaults); a plausible split anyway.
GROUP_OF_FIELD: tuple[str, ...] = ("user",) * 9 + ("ad",) * 9 + ("context",) * 8


def synthetic_batch(rows: int, seed: int = 0, zipf: float = 1.1) -> dict[str, Any]:
    """The encoded training tensors: ``cat`` int64 [rows, 26], ``labels`` / ``weights`` float32 [rows, 2].

    Field f's ids: rank r in [1, V_f) drawn with P(r) ∝ r^-zipf (continuous inverse CDF, floored), mapped
    through a fixed random permutation of [1, V_f) (id 0 is the unknown id every vocabulary reserves).
    """
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    cat = np.empty((rows, len(VOCAB_SIZES)), dtype=np.int64)
    one_minus_s = 1.0 - zipf
    for f, vocab in enumerate(VOCAB_SIZES):
        n_ids = vocab - 1
        u = rng.random(rows)
        # Inverse CDF of the density ∝ x^-s on [1, n_ids + 1): x = ((n+1)^(1-s) - 1)·u + 1)^(1/(1-s)).
        x = ((float(n_ids + 1) ** one_minus_s - 1.0) * u + 1.0) ** (1.0 / one_minus_s)
        rank = np.minimum(x.astype(np.int64), n_ids)  # 1 .. n_ids, rank 1 the most frequent
        ids = rng.permutation(n_ids) + 1
        cat[:, f] = ids[rank - 1]
    click = rng.random(rows) < TASK_RATES["click"]
    # Conversions follow clicks: P(conversion | click) = 0.5% / 4%.
    conversion = click & (rng.random(rows) < TASK_RATES["conversion"] / TASK_RATES["click"])
    labels = np.stack([click, conversion], axis=1).astype(np.float32)
    return {
        "cat": torch.from_numpy(cat),
        "labels": torch.from_numpy(labels),
        "weights": torch.ones((rows, len(TASK_RATES)), dtype=torch.float32),
    }


def feature_spec() -> Any:
    from models.spec import CategoricalField, FeatureSpec

    fields = tuple(
        CategoricalField(f"c{f:02d}", vocab, GROUP_OF_FIELD[f]) for f, vocab in enumerate(VOCAB_SIZES)
    )
    return FeatureSpec(categorical=fields, tasks=tuple(TASK_RATES))


def ranker_config(arch: str, optimizer: str, embedding_dim: int) -> Any:
    """Each architecture's defaults, width ``embedding_dim``; multi-embedding with 2 tables (M = 1, its
    default, would be a single-table MLP)."""
    from models.config import RankerConfig

    extra: dict[str, Any] = {"num_tables": 2} if arch == "multi_embedding" else {}
    return RankerConfig(
        arch=arch, embedding_dim=embedding_dim, sparse_embeddings=optimizer == "sparse", **extra
    )


def _rss_mib() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(args: argparse.Namespace, arch: str) -> dict[str, Any]:
    """Train one architecture in this process and measure it."""
    import torch

    from components.training.loop import train_ranker
    from components.training.train_config import TrainConfig
    from models.ranker import Ranker

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    batch = synthetic_batch(args.rows, args.seed, args.zipf)
    generate_s = time.perf_counter() - t0
    rss_data = _rss_mib()
    spec = feature_spec()
    config = ranker_config(arch, args.optimizer, args.embedding_dim)
    counter = Ranker(spec, config)
    n_params = sum(p.numel() for p in counter.parameters())
    n_embedding = sum(p.numel() for p in counter.embedding_parameters())
    del counter
    device_kind = "cuda" if args.device.startswith("cuda") or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device_kind == "cuda":
        torch.cuda.reset_peak_memory_stats()
    load_before = os.getloadavg()
    train_cfg = TrainConfig(
        epochs=args.warmup_epochs + args.epochs,
        batch_size=args.batch_size,
        lr=1e-3,
        device=args.device,
        compile=args.compile,
        bf16=True,
        patience=0,
        log_every=0,
        seed=args.seed,
    )
    result = train_ranker(None, batch, None, config, train_cfg, spec=spec)
    timed = result.history[args.warmup_epochs:]
    seconds = sum(h["train_seconds"] for h in timed)
    rows = args.rows * len(timed)
    sps = rows / seconds
    out: dict[str, Any] = {
        "arch": arch,
        "optimizer": "Adam (dense)" if args.optimizer == "adam" else "SparseAdam on embeddings + Adam on the rest",
        "samples_per_s": round(sps, 1),
        "seconds": round(seconds, 3),
        "timed_epochs": len(timed),
        "warmup_samples_per_s": [round(h["samples_per_s"], 1) for h in result.history[: args.warmup_epochs]],
        "epoch_samples_per_s": [round(h["samples_per_s"], 1) for h in timed],
        "final_train_loss": round(result.history[-1]["train_loss"], 5),
        "parameters": n_params,
        "embedding_parameters": n_embedding,
        "dense_parameters": n_params - n_embedding,
        # Each dense weight is used once per sample (experts read only their own table), so a training
        # step costs ~6 FLOPs per dense weight per sample (2 forward, 4 backward), elementwise work aside.
        "est_dense_tflop_per_s": round(6 * (n_params - n_embedding) * sps / 1e12, 4),
        "device": result.device,
        "generate_s": round(generate_s, 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": torch.get_num_threads(),
    }
    if device_kind == "cuda":
        out["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["peak_memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        # ru_maxrss is KiB on Linux; it includes the dataset and the trainer's best-weights copy.
        out["peak_memory_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1)
        out["peak_memory_kind"] = "peak RSS of the process (dataset included)"
        out["dataset_rss_mib"] = round(rss_data, 1)
    return out


def _machine() -> dict[str, Any]:
    cpu = cpu_model()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        # The dev box is shared with other jobs: a load above the core count makes the figures pessimistic.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }
    return info


def _versions() -> dict[str, Any]:
    import numpy as np
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {','.join(MODELS)}")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs (after the warm-up)")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--optimizer", choices=("adam", "sparse"), default="adam",
                        help="adam: dense Adam everywhere; sparse: SparseAdam (row-wise) on the embeddings")
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--zipf", type=float, default=1.1, help="power-law exponent of the id frequencies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one model, print its JSON
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models.split(",")) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    if args.rows < args.batch_size:
        parser.error(f"--rows ({args.rows}) must be at least --batch-size ({args.batch_size})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args, args.child)))
        return 0
    env = dict(os.environ)
    # Idle OpenMP threads sleep instead of spinning: on a shared 2-core box spinning steals the other jobs'
    # (and our own Python thread's) cycles. Must be set before torch starts, hence the child processes.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": _machine(),
        "versions": _versions(),
        "device": args.device,
        "rows": args.rows,
        "batch_size": args.batch_size,
        "embedding_dim": args.embedding_dim,
        "optimizer": args.optimizer,
        "compile": args.compile,
        "warmup_epochs": args.warmup_epochs,
        "timed_epochs": args.epochs,
        "dataset": {
            "categorical_fields": len(VOCAB_SIZES), "vocab_sizes": list(VOCAB_SIZES),
            "rows_per_table": sum(VOCAB_SIZES), "zipf_exponent": args.zipf, "positive_rates": TASK_RATES,
        },
        "models": {},
    }
    child_argv = list(argv if argv is not None else sys.argv[1:])
    for arch in args.models.split(","):
        cmd = [sys.executable, str(Path(__file__).resolve()), *child_argv, "--child", arch]
        print(f"[train_throughput] {arch} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            report["models"][arch] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
            print(proc.stderr[-3000:], file=sys.stderr, flush=True)
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        report["models"][arch] = res
        print(f"[train_throughput] {arch}: {res['samples_per_s']:.0f} samples/s, "
              f"{res['peak_memory_mib']:.0f} MiB, load {res['load_average_after'][0]}", file=sys.stderr, flush=True)
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if all("error" not in m for m in report["models"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

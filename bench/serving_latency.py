"""Serving-latency benchmark: the ``adsrec serve`` scoring service, measured over HTTP from another process.

It starts ``adsrec serve`` (one process, ``serving.torch_threads`` torch threads) on a home that has a
champion and a materialised online store (by default ``./.adsrec``, what ``adsrec demo`` leaves), then:

- **cold**: for each candidate count, a fresh service process; the time until ``/ready`` and the latency of
  its first request;
- **warm**: sequential requests (one user drawn at random, candidates drawn at random from the online
  store's ads, slot 'feed'), after a warm-up; client-side p50 / p95 / p99 and the service's own breakdown
  (median of ``timings_ms``: feature lookup, request-time features, row building, model);
- **throughput**: ``--concurrency`` client threads sending 100-candidate requests for ``--seconds``
  seconds: requests per second and the latency percentiles under that load.

The client runs in this process (keep-alive ``http.client`` connections), on the same cores as the service,
so the numbers include its cost. Prints one JSON object and a Markdown table; docs/benchmarks.md records
them.

    .venv/bin/python bench/serving_latency.py                     # ./.adsrec (run `adsrec demo` first)
    .venv/bin/python bench/serving_latency.py --home /tmp/home --requests 300 --sizes 10 100 500
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe_machine  # noqa: E402

STAGES = ("feature_lookup", "request_features", "rows", "model", "total")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def candidates(home: Path) -> tuple[list[int], list[int]]:
    """User ids and ad ids the online store serves (from the newest profile partitions)."""
    import pyarrow.parquet as pq

    def ids(view: str, key: str) -> list[int]:
        parts = sorted((home / "features" / view).glob("date=*"))
        if not parts:
            raise SystemExit(f"{home} has no {view} features: run `adsrec demo` (or point --home at a home)")
        return sorted(set(pq.read_table(parts[-1], columns=[key]).column(key).to_pylist()))

    return ids("user_profile", "user_id"), ids("ad_profile", "ad_id")


class Server:
    """``adsrec serve`` in a subprocess on a free port."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "flows.cli", "serve", "--port", str(self.port)]
        started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env={**env, "ADSREC_HOME": str(home)}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = started + 300
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"adsrec serve exited: {self.proc.stdout.read() if self.proc.stdout else ''}")
            try:
                status, _ = Client(self.port).get("/ready")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            self.stop()
            raise SystemExit("adsrec serve was not ready within 300 s")
        self.ready_seconds = time.perf_counter() - started

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Client:
    """One keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str) -> tuple[int, bytes]:
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def score(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        data = json.dumps(body).encode()
        started = time.perf_counter()
        self.conn.request("POST", "/score", body=data, headers={"content-type": "application/json"})
        resp = self.conn.getresponse()
        payload = resp.read()
        seconds = time.perf_counter() - started
        if resp.status != 200:
            raise SystemExit(f"/score answered {resp.status}: {payload[:500]!r}")
        return seconds, json.loads(payload)


def percentiles(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50": round(statistics.median(ms), 2), "p95": round(q[94], 2), "p99": round(q[98], 2),
            "mean": round(statistics.fmean(ms), 2)}


def body(rng: Any, users: list[int], ads: list[int], n: int) -> dict[str, Any]:
    return {"user_id": int(rng.choice(users)), "ads": [int(a) for a in rng.choice(ads, n, replace=False)],
            "slot": "feed"}


def warm_run(port: int, users: list[int], ads: list[int], n: int, requests: int, seed: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    client = Client(port)
    for _ in range(20):
        client.score(body(rng, users, ads, n))
    latencies, stages = [], {s: [] for s in STAGES}
    for _ in range(requests):
        seconds, out = client.score(body(rng, users, ads, n))
        latencies.append(1000 * seconds)
        for s in STAGES:
            stages[s].append(out["timings_ms"][s])
    return {"candidates": n, "requests": requests, "latency_ms": percentiles(latencies),
            "requests_per_s_sequential": round(requests / (sum(latencies) / 1000), 1),
            "service_ms_median": {s: round(statistics.median(v), 2) for s, v in stages.items()}}


def throughput(port: int, users: list[int], ads: list[int], n: int, threads: int, seconds: float) -> dict[str, Any]:
    import numpy as np

    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        client = Client(port)
        mine = []
        while time.perf_counter() < stop:
            took, _ = client.score(body(rng, users, ads, n))
            mine.append(1000 * took)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(100 + i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    return {"candidates": n, "concurrency": threads, "seconds": round(elapsed, 1), "requests": len(latencies),
            "requests_per_s": round(len(latencies) / elapsed, 1), "latency_ms": percentiles(latencies)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("ADSREC_HOME", ".adsrec")))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--requests", type=int, default=300, help="warm requests per size")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the throughput run")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold starts (one process per size)")
    args = parser.parse_args(argv)
    import numpy as np

    home = args.home.expanduser().resolve()
    users, ads = candidates(home)
    env = {k: v for k, v in os.environ.items() if k != "ADSREC_HOME"}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    result: dict[str, Any] = {"home": str(home), "machine": describe_machine(), "users": len(users), "ads": len(ads),
                              "cold": [], "warm": [], "command": "bench/serving_latency.py " + " ".join(argv or sys.argv[1:])}
    if not args.no_cold:
        for n in args.sizes:
            server = Server(home, env)
            try:
                took, out = Client(server.port).score(body(np.random.default_rng(n), users, ads, n))
                result["cold"].append({"candidates": n, "ready_s": round(server.ready_seconds, 2),
                                       "first_request_ms": round(1000 * took, 1),
                                       "service_ms": out["timings_ms"]})
            finally:
                server.stop()
    server = Server(home, env)
    try:
        result["ready_s"] = round(server.ready_seconds, 2)
        for i, n in enumerate(args.sizes):
            result["warm"].append(warm_run(server.port, users, ads, n, args.requests, seed=i))
        result["throughput"] = throughput(server.port, users, ads, 100 if 100 in args.sizes else args.sizes[0],
                                          args.concurrency, args.seconds)
    finally:
        server.stop()
    print(json.dumps(result, indent=2))
    print(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = ["| candidates | p50 ms | p95 ms | p99 ms | req/s (sequential) | feature lookup | request-time features "
             "| rows (all) | model | cold: first request ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    cold = {c["candidates"]: c["first_request_ms"] for c in result["cold"]}
    for w in result["warm"]:
        lat, st = w["latency_ms"], w["service_ms_median"]
        lines.append(f"| {w['candidates']} | {lat['p50']} | {lat['p95']} | {lat['p99']} | "
                     f"{w['requests_per_s_sequential']} | {st['feature_lookup']} | {st['request_features']} | "
                     f"{st['rows']} | {st['model']} | {cold.get(w['candidates'], '-')} |")
    t = result.get("throughput")
    if t:
        lines.append(f"\nthroughput: {t['requests_per_s']} requests/s with {t['concurrency']} concurrent clients x "
                     f"{t['candidates']} candidates for {t['seconds']} s (p50 {t['latency_ms']['p50']} ms, p99 "
                     f"{t['latency_ms']['p99']} ms); ready after {result.get('ready_s')} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

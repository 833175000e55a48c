"""Ingestion benchmark: rows/s to ingest one day, and seconds per day as the landed history grows.

Two parts, each in its own temporary ADSREC_HOME, printing one JSON object with the machine and the
command line (figures recorded in docs/benchmarks.md):

- **throughput**: one clean day of ``--rows`` impressions (plus its ads and users) written to the raw
  landing zone, then ``components.ingest.day.ingest_day`` (read, conform, row checks, index lookups, Great
  Expectations, quarantine, atomic writes, index update), timed end to end and per stage
  (``report.timings``); Great Expectations is reported on its own line (``expectations_gx``);
- **history**: ``--history`` small landed days (``--history-rows`` impressions each) written straight
  into the offline store, the ingest index rebuilt from them once (timed), then the median time to
  ingest ``--probe-days`` new days of the same size, next to the same after ``--base-history`` days.

    .venv/bin/python bench/ingest_throughput.py --rows 1000000
    .venv/bin/python bench/ingest_throughput.py --rows 10000000 --skip-history
    .venv/bin/python bench/ingest_throughput.py --rows 0 --history 3000
    .venv/bin/python bench/ingest_throughput.py --rows 1000000 --profile   # cProfile top functions
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe_machine  # noqa: E402

SOURCE = "bench"
TASKS = ["click", "conversion"]
START = dt.date(2026, 11, 1)
US_PER_DAY = 86_400_000_000


def day_tables(day: dt.date, rows: int, seed: int, id_offset: int = 0, n_users: int = 50_000, n_ads: int = 20_000):
    """One clean day as Arrow tables (impressions, ads, users), built with numpy, no Python row loops.
    Request ids are unique across days through ``id_offset``; every user and ad is delivered on the day."""
    import numpy as np
    import pyarrow as pa

    from components.schemas import TIMESTAMP

    rng = np.random.default_rng(seed)
    start_us = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp() * 1_000_000)
    n_users, n_ads = min(n_users, max(10, rows)), min(n_ads, max(10, rows))
    ids = np.arange(id_offset, id_offset + rows, dtype=np.int64)
    impressions = pa.table({
        "event_time": pa.array(start_us + np.sort(rng.integers(0, US_PER_DAY, rows)), pa.int64()).cast(TIMESTAMP),
        "request_id": pa.compute.binary_join_element_wise("q", pa.array(ids).cast(pa.string()), ""),
        "user_id": pa.array(rng.integers(0, n_users, rows)),
        "ad_id": pa.array(rng.integers(0, n_ads, rows)),
        "slot": pa.array(np.array(["feed", "search", "detail"])[rng.integers(0, 3, rows)]),
        "position": pa.array(rng.integers(1, 6, rows).astype(np.int32)),
        "exposure_index": pa.array(np.full(rows, (day - START).days + 1, dtype=np.int32)),
        "click": pa.array((rng.random(rows) < 0.04).astype(np.int8)),
        "conversion": pa.array((rng.random(rows) < 0.01).astype(np.int8)),
    })
    created = pa.array(np.full(n_ads, start_us), pa.int64()).cast(TIMESTAMP)
    ads = pa.table({
        "ad_id": pa.array(np.arange(n_ads, dtype=np.int64)),
        "advertiser_id": pa.array(rng.integers(0, 300, n_ads)),
        "campaign_id": pa.array(rng.integers(0, 3000, n_ads)),
        "title": pa.array(np.char.add("ad ", np.arange(n_ads).astype(str))),
        "image": pa.nulls(n_ads, pa.binary()),
        "bid": pa.array(rng.random(n_ads)),
        "created_at": created,
    })
    users = pa.table({"user_id": pa.array(np.arange(n_users, dtype=np.int64)),
                      "created_at": pa.array(np.full(n_users, start_us), pa.int64()).cast(TIMESTAMP)})
    return {"impressions": impressions, "ads": ads, "users": users}


def settings_for(home: Path):
    from components.config import load_settings

    return load_settings(environ={}, overrides={"home": str(home)}).resolved()


def land_raw(settings, day: dt.date, tables) -> None:  # noqa: ANN001
    import pyarrow.parquet as pq

    from components.schemas import day_dir

    for name, table in tables.items():
        folder = day_dir(settings.raw_dir / SOURCE, name, day)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-0.parquet")


def throughput(rows: int, profile: bool) -> dict:
    from components.ingest.day import ingest_day

    with tempfile.TemporaryDirectory(prefix="adsrec-bench-ingest-") as tmp:
        settings = settings_for(Path(tmp) / "home")
        land_raw(settings, START, day_tables(START, rows, seed=1))
        ingest_day(settings, SOURCE, START + dt.timedelta(days=400), TASKS)  # warm-up: imports, GX context
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0 = time.perf_counter()
        report = ingest_day(settings, SOURCE, START, TASKS)
        seconds = time.perf_counter() - t0
        if profiler is not None:
            import io
            import pstats

            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(os.environ.get("PROFILE_SORT", "cumulative")).print_stats(int(os.environ.get("PROFILE_TOP", "25")))
            print(out.getvalue(), file=sys.stderr)
    imp = report.tables["impressions"]
    assert imp.rows_landed == rows and not report.failed, report.summary()
    gx = report.timings.get("expectations_gx", 0.0)
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "rows_per_s_without_gx": round(rows / (seconds - gx)) if seconds > gx else None,
        "gx_seconds": round(gx, 2),
        "timings": {k: round(v, 2) for k, v in report.timings.items()},
    }


def history(n_days: int, rows: int, probe_days: int) -> dict:
    """Seconds per new day after ``n_days`` landed days (written straight into the offline store)."""
    import pyarrow.parquet as pq

    from components.ingest.day import ingest_day
    from components.ingest.index import open_index
    from components.schemas import day_dir

    with tempfile.TemporaryDirectory(prefix="adsrec-bench-history-") as tmp:
        settings = settings_for(Path(tmp) / "home")
        t0 = time.perf_counter()
        for i in range(n_days):
            day = START + dt.timedelta(days=i)
            for name, table in day_tables(day, rows, seed=i, id_offset=i * rows, n_users=200, n_ads=100).items():
                folder = day_dir(settings.offline_dir, name, day)
                folder.mkdir(parents=True, exist_ok=True)
                pq.write_table(table, folder / "part-0.parquet")
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with open_index(settings) as index:
            rebuilt = dict(index.synced)
        rebuild_s = time.perf_counter() - t0
        times, without_gx = [], []
        for j in range(probe_days + 1):  # the first probe day warms up imports and the GX context
            day = START + dt.timedelta(days=n_days + j)
            land_raw(settings, day, day_tables(day, rows, seed=10_000 + j, id_offset=(n_days + j) * rows,
                                               n_users=200, n_ads=100))
            t0 = time.perf_counter()
            report = ingest_day(settings, SOURCE, day, TASKS)
            times.append(time.perf_counter() - t0)
            without_gx.append(times[-1] - report.timings.get("expectations_gx", 0.0))
            assert not report.failed and report.tables["impressions"].rows_landed == rows, report.summary()
    return {"landed_days": n_days, "rows_per_day": rows, "write_history_s": round(write_s, 1),
            "index_rebuild_s": round(rebuild_s, 2), "index_rebuilt": rebuilt,
            "seconds_per_day_median": round(statistics.median(times[1:]), 3),
            "seconds_per_day": [round(t, 3) for t in times[1:]],
            "seconds_per_day_without_gx_median": round(statistics.median(without_gx[1:]), 3),
            "last_timings": {k: round(v, 3) for k, v in report.timings.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="*", default=[1_000_000], help="impressions of the throughput day(s); 0: skip")
    ap.add_argument("--history", type=int, default=3000, help="landed days for the history part")
    ap.add_argument("--base-history", type=int, default=10, help="the small history it is compared with")
    ap.add_argument("--history-rows", type=int, default=500, help="impressions per history day")
    ap.add_argument("--probe-days", type=int, default=5, help="new days timed after each history")
    ap.add_argument("--skip-history", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile the throughput run (top 25 to stderr)")
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import logging

    logging.getLogger("components.ingest.day").setLevel(logging.ERROR)
    out: dict = {"machine": describe_machine(), "command": " ".join([Path(sys.executable).name, *sys.argv])}
    out["throughput"] = [throughput(n, args.profile) for n in args.rows if n > 0]
    if not args.skip_history:
        base = history(args.base_history, args.history_rows, args.probe_days)
        big = history(args.history, args.history_rows, args.probe_days)
        out["history"] = [base, big]
        out["history_ratio"] = round(big["seconds_per_day_median"] / base["seconds_per_day_median"], 3)
        out["history_ratio_without_gx"] = round(big["seconds_per_day_without_gx_median"]
                                                / base["seconds_per_day_without_gx_median"], 3)
    out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

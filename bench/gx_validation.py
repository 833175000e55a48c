"""Cost of the Great Expectations validation of one impressions day (validation/expectations.py).

Builds an impressions-shaped Arrow table (vectorised numpy, seed 0) with the contract's columns:
``event_time`` (timestamp[us, UTC] inside one day), ``request_id`` (``"<yyyymmdd>-<n>-<pos>"`` strings,
unique), ``user_id`` / ``ad_id`` (int64), ``slot`` (a few strings), ``position`` / ``exposure_index``
(int32), ``click`` / ``conversion`` (int8 0/1). Then times :func:`validation.expectations.validate_batch`
on it with the spec ingestion builds (every column type-checked, keys non-null, ``request_id``
unique, labels in {0, 1}, timestamps in the day, label-rate bounds). The GX import and one warm-up
call on 1,000 rows are timed separately; with ``--gx-dir`` the file-backed project (suites,
checkpoint, Data Docs) is used, as ingestion does.

Prints one JSON object per size (command, machine, seconds, rows/s, peak RSS).

``--small-day`` instead times the whole ``ingest_day`` of a small simulated day (2,000 users, 1,000
ads; about 20,000 impressions) five times in one process, in a temporary ``ADSREC_HOME``: what the
GX project costs a small day (the first call also imports GX).

    .venv/bin/python bench/gx_validation.py --rows 1000000 10000000
    .venv/bin/python bench/gx_validation.py --small-day
    .venv/bin/python bench/gx_validation.py --rows 1000000 --gx-dir /tmp/gxbench/gx
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model  # noqa: E402

DAY = dt.date(2026, 11, 1)


def impressions(n: int, seed: int = 0) -> Any:
    """An impressions-shaped Arrow table of ``n`` rows, all inside ``DAY``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(seed)
    start = int(dt.datetime(DAY.year, DAY.month, DAY.day, tzinfo=dt.timezone.utc).timestamp() * 1_000_000)
    t = np.sort(rng.integers(start, start + 86_400_000_000, n))
    request = np.arange(n, dtype=np.int64) // 10
    position = (np.arange(n) % 10).astype(np.int32)
    request_id = pc.binary_join_element_wise(
        DAY.strftime("%Y%m%d"), pc.cast(pa.array(request), pa.string()), pc.cast(pa.array(position), pa.string()), "-")
    slots = pa.array(["feed", "search", "sidebar"])
    click = (rng.random(n) < 0.04).astype(np.int8)
    conversion = (click.astype(bool) & (rng.random(n) < 0.1)).astype(np.int8)
    return pa.table({
        "event_time": pa.array(t, type=pa.timestamp("us", tz="UTC")),
        "request_id": request_id,
        "user_id": pa.array(rng.integers(0, 200_000, n)),
        "ad_id": pa.array(rng.integers(0, 50_000, n)),
        "slot": slots.take(pa.array(rng.integers(0, 3, n))),
        "position": pa.array(position),
        "exposure_index": pa.array(rng.integers(0, 5, n).astype(np.int32)),
        "click": pa.array(click),
        "conversion": pa.array(conversion),
    })


def spec_for(table: Any) -> Any:
    """The spec ``components.ingest.day._expectation_spec`` builds for an impressions day."""
    from components.schemas import IMPRESSIONS, day_window
    from validation.expectations import BatchSpec, gx_type_name

    start, end = day_window(DAY)
    labels = ("click", "conversion")
    return BatchSpec(
        table="impressions",
        column_types={f.name: n for f in table.schema if (n := gx_type_name(f.type))},
        not_null=IMPRESSIONS.keys, unique=IMPRESSIONS.unique, labels=labels,
        label_rate_bounds={"click": (0.001, 0.5), "conversion": (0.0, 0.2)},
        time_column="event_time", time_min=start, time_max=end, min_rows=1,
    )


def small_day(shared_data: Path) -> dict[str, Any]:
    """Five ``ingest_day`` runs of one small simulated day (see the module docstring)."""
    import tempfile

    from components import steps
    from components.config import load_settings
    from components.ingest.day import ingest_day

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(environ={}, overrides={
            "home": str(Path(tmp) / "home"),
            "pipeline": {"shared_data": str(shared_data), "start_date": DAY.isoformat()},
            "simulator": {"n_users": 2000, "sessions_per_user_day": 2.0, "n_initial_ads": 1000, "new_ads_per_day": 50},
        }).resolved()
        steps.deliver_day(settings, DAY)
        source = steps._source(settings)
        seconds = []
        for _ in range(5):
            t0 = time.perf_counter()
            report = ingest_day(settings, source.name, DAY, source.tasks)
            seconds.append(round(time.perf_counter() - t0, 3))
    return {"command": " ".join(sys.argv), "machine": f"{cpu_model()}, {platform.python_version()}",
            "rows": {t: r.rows_landed for t, r in report.tables.items()}, "seconds": seconds,
            "expectations_passed": report.expectations_passed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=1, help="timed calls per size (the best is reported)")
    parser.add_argument("--gx-dir", type=Path, default=None,
                        help="use the file-backed GX project in this folder (named gx)")
    parser.add_argument("--small-day", action="store_true", help="time ingest_day of a small simulated day")
    parser.add_argument("--shared-data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    if args.small_day:
        print(json.dumps(small_day(args.shared_data)))
        return

    t0 = time.perf_counter()
    from validation import expectations
    import great_expectations  # noqa: F401

    import_s = time.perf_counter() - t0
    kwargs: dict[str, Any] = {}
    if args.gx_dir is not None:
        kwargs["gx_dir"] = args.gx_dir
    small = impressions(1_000)
    t0 = time.perf_counter()
    warm = expectations.validate_batch(small, spec_for(small), **kwargs)
    warm_s = time.perf_counter() - t0
    assert all(r.success for r in warm), [r.sentence() for r in warm if not r.success]
    for n in args.rows:
        table = impressions(n)
        spec = spec_for(table)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            results = expectations.validate_batch(table, spec, **kwargs)
            times.append(time.perf_counter() - t0)
        failed = [r.sentence() for r in results if not r.success]
        best = min(times)
        print(json.dumps({
            "command": " ".join(sys.argv), "machine": f"{cpu_model()}, {platform.python_version()}",
            "rows": n, "expectations": len(results), "failed": failed,
            "gx_import_s": round(import_s, 2), "warmup_1000_rows_s": round(warm_s, 3),
            "seconds": [round(t, 3) for t in times], "rows_per_s": round(n / best),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        }), flush=True)
        del table


if __name__ == "__main__":
    main()

"""Feature-retrieval benchmark: building a point-in-time training set through Feast's join and through the
direct DuckDB ASOF join over the same parquet.

It writes its own synthetic offline store (vectorised numpy, fixed seed) into a temporary ADSREC_HOME:
``--rows`` impressions over ``--days`` days plus ads and users tables, builds every feature view for every
day with ``components.store.features.build_features``, then times both joins of the whole window, checks that
they are identical, and prints one JSON object. Figures are recorded in docs/benchmarks.md.

    .venv/bin/python bench/feature_retrieval.py              # 1,000,000 impressions
    .venv/bin/python bench/feature_retrieval.py --rows 50000 # quick run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model  # noqa: E402
from components.schemas import TIMESTAMP, day_dir  # noqa: E402

START = dt.date(2026, 11, 1)


def write_synthetic_store(
    offline: Path, rows: int, days: int, seed: int = 0, n_users: int | None = None, n_ads: int | None = None
) -> dict[str, int]:
    """Impressions / ads / users day partitions in the contract's layout, generated without Python loops
    over rows: users and ads with Zipf-like popularity, clicks ~4%, conversions ~15% of clicks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n_users = n_users or max(100, rows // 50)
    n_ads = n_ads or max(100, rows // 200)
    categories = np.array(["Apparel", "Footwear", "Accessories", "Personal Care", "Home"])
    start = dt.datetime(START.year, START.month, START.day, tzinfo=dt.timezone.utc)
    us_per_day = 86_400_000_000
    start_us = int(start.timestamp() * 1_000_000)

    # Ads: a third exist before the first day, the rest appear day by day (cold start).
    ad_day = np.where(rng.random(n_ads) < 1 / 3, -1, rng.integers(0, days, n_ads))
    ad_created = start_us + ad_day * us_per_day + rng.integers(0, us_per_day, n_ads)
    ad_created = np.where(ad_day < 0, start_us - rng.integers(1, 5 * us_per_day, n_ads), ad_created)
    ads = pa.table(
        {
            "ad_id": pa.array(np.arange(n_ads, dtype=np.int64)),
            "advertiser_id": pa.array(rng.integers(0, max(1, n_ads // 10), n_ads)),
            "campaign_id": pa.array(rng.integers(0, max(1, n_ads // 3), n_ads)),
            "title": pa.array(np.char.add("ad ", np.arange(n_ads).astype(str))),
            "image": pa.nulls(n_ads, pa.binary()),
            "bid": pa.array(rng.gamma(2.0, 0.5, n_ads)),
            "created_at": pa.array(ad_created, TIMESTAMP),
            "master_category": pa.array(categories[rng.integers(0, len(categories), n_ads)]),
            "article_type": pa.array(np.char.add("type_", rng.integers(0, 40, n_ads).astype(str))),
        }
    )
    user_created = start_us - rng.integers(1, 30 * us_per_day, n_users)
    users = pa.table(
        {
            "user_id": pa.array(np.arange(n_users, dtype=np.int64)),
            "created_at": pa.array(user_created, TIMESTAMP),
            "gender": pa.array(np.array(["f", "m", "u"])[rng.integers(0, 3, n_users)]),
            "age": pa.array(rng.integers(18, 70, n_users)),
        }
    )
    written = {"ads": 0, "users": 0, "impressions": 0}
    for table, name, col in ((ads, "ads", "created_at"), (users, "users", "created_at")):
        dates = (np.floor_divide(table.column(col).cast(pa.int64()).to_numpy() - start_us, us_per_day)).astype(int)
        for d in np.unique(dates):
            part = table.filter(pa.array(dates == d))
            out = day_dir(offline, name, START + dt.timedelta(days=int(d)))
            out.mkdir(parents=True, exist_ok=True)
            pq.write_table(part, out / "part-0.parquet")
            written[name] += part.num_rows

    per_day = np.full(days, rows // days)
    per_day[: rows - per_day.sum()] += 1
    user_pop = rng.zipf(1.6, n_users).astype(float)
    user_p = user_pop / user_pop.sum()
    next_request = 0
    for d in range(days):
        n = int(per_day[d])
        day_start = start_us + d * us_per_day
        # Ads already created by the day's end; impressions of an ad never precede its creation.
        live = np.flatnonzero(ad_created < day_start + us_per_day)
        user = rng.choice(n_users, n, p=user_p)
        ad = live[rng.integers(0, len(live), n)]
        t = np.maximum(day_start + rng.integers(0, us_per_day, n), ad_created[ad] + 1)
        t = np.minimum(t, day_start + us_per_day - 1)
        click = (rng.random(n) < 0.04).astype(np.int8)
        conversion = (click * (rng.random(n) < 0.15)).astype(np.int8)
        order = np.argsort(t, kind="stable")
        table = pa.table(
            {
                "event_time": pa.array(t[order], TIMESTAMP),
                "request_id": pa.array(np.char.add("r", np.arange(next_request, next_request + n).astype(str))),
                "user_id": pa.array(user[order].astype(np.int64)),
                "ad_id": pa.array(ad[order].astype(np.int64)),
                "slot": pa.array(np.array(["feed", "search", "detail"])[rng.integers(0, 3, n)]),
                "position": pa.array(rng.integers(1, 6, n).astype(np.int32)),
                "exposure_index": pa.array(np.ones(n, dtype=np.int32)),
                "click": pa.array(click[order]),
                "conversion": pa.array(conversion[order]),
            }
        )
        next_request += n
        out = day_dir(offline, "impressions", START + dt.timedelta(days=d))
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / "part-0.parquet")
        written["impressions"] += n
    return written


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="impressions in the training window")
    parser.add_argument("--days", type=int, default=7, help="days in the window (features built for each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-feast", action="store_true", help="time only the DuckDB join")
    args = parser.parse_args(argv)

    import duckdb
    import feast
    import pyarrow as pa

    from components.config import load_settings
    from components.store.features import build_features
    from components.training.training_set import join_duckdb, join_feast, read_impressions

    with tempfile.TemporaryDirectory(prefix="adsrec-bench-") as tmp:
        settings = load_settings(environ={}, overrides={"home": str(Path(tmp) / "home")}).resolved()
        t0 = time.perf_counter()
        written = write_synthetic_store(settings.offline_dir, args.rows, args.days, args.seed)
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        feature_rows: dict[str, int] = {}
        for d in range(args.days):
            for view, n in build_features(settings, START + dt.timedelta(days=d), ["click", "conversion"]).items():
                feature_rows[view] = feature_rows.get(view, 0) + n
        t_features = time.perf_counter() - t0
        last = START + dt.timedelta(days=args.days - 1)
        entities = read_impressions(settings, START, last, ["click", "conversion"])

        t0 = time.perf_counter()
        direct = join_duckdb(settings, entities)
        t_duck = time.perf_counter() - t0
        rss_after_duck = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result: dict = {
            "rows": entities.num_rows,
            "days": args.days,
            "features": len([c for c in direct.column_names if "__" in c]),
            "feature_rows": feature_rows,
            "generate_seconds": round(t_gen, 2),
            "build_features_seconds": round(t_features, 2),
            "build_features_rows_per_s": round(written["impressions"] / t_features),
            "duckdb": {"seconds": round(t_duck, 2), "rows_per_s": round(entities.num_rows / t_duck)},
            "peak_rss_mib_after_duckdb": round(rss_after_duck),
        }
        if not args.skip_feast:
            t0 = time.perf_counter()
            via_feast = join_feast(settings, entities)
            t_feast = time.perf_counter() - t0
            result["feast"] = {"seconds": round(t_feast, 2), "rows_per_s": round(entities.num_rows / t_feast)}
            result["peak_rss_mib_after_feast"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            result["identical"] = bool(via_feast.equals(direct))
            result["duckdb_speedup_over_feast"] = round(t_feast / t_duck, 1)
        result["machine"] = {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "duckdb": duckdb.__version__,
            "feast": feast.__version__,
            "pyarrow": pa.__version__,
        }
    print(json.dumps(result, indent=2))
    if result.get("identical") is False:
        raise SystemExit("the Feast and DuckDB training sets differ")
    return result


if __name__ == "__main__":
    main()

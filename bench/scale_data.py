"""The scale map's input (bench/scale.py): a synthetic log in the files source's format, written with
numpy and Arrow (no Python row loops), and the YAML that points the files source at it.

Shape, scaled with the rows (docs/scale.md states the ratios):

- ``days`` UTC days of impressions, ``impressions/date=YYYY-MM-DD/part-0.parquet`` (hive layout), every
  contract column given (request id, slot, position, exposure index, click, conversion);
- users: ``rows / ROWS_PER_USER`` of them, activity heavy-tailed (log-normal weights), one snapshot file;
- ads: ``rows / ROWS_PER_AD`` of them with a title, a bid, an advertiser and a ``category`` (a taxonomy
  column, so the user x category interest views are built), popularity log-normal, one snapshot file;
- labels: click with probability sigmoid(base + user bias + ad bias) (about 4 %), conversion about a
  tenth of the clicks, so a model has something to learn.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

ROWS_PER_USER = 50      # impressions per user over the window (about 7 a day over 7 days)
ROWS_PER_AD = 200       # impressions per ad over the window
ADS_PER_CATEGORY = 50   # ads per category value
START = dt.date(2026, 10, 1)
US_PER_DAY = 86_400_000_000


def shape(rows: int, days: int) -> dict[str, int]:
    """Users, ads, categories and days for ``rows`` impressions."""
    users = max(100, rows // ROWS_PER_USER)
    ads = max(50, rows // ROWS_PER_AD)
    return {"rows": rows, "days": days, "users": users, "ads": ads,
            "categories": max(5, ads // ADS_PER_CATEGORY), "rows_per_user_day": round(rows / users / days, 2)}


def _weights(rng: Any, n: int, sigma: float) -> Any:
    import numpy as np

    w = rng.lognormal(0.0, sigma, n)
    return np.cumsum(w / w.sum())


def write_log(folder: Path, rows: int, days: int, seed: int = 0) -> dict[str, Any]:
    """Write the log into ``folder`` (impressions per day, ``ads.parquet``, ``users.parquet``); returns
    the shape and the days written."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from components.schemas import TIMESTAMP

    s = shape(rows, days)
    rng = np.random.default_rng(seed)
    t0 = int(dt.datetime(START.year, START.month, START.day, tzinfo=dt.timezone.utc).timestamp() * 1e6)
    user_cdf, ad_cdf = _weights(rng, s["users"], 1.0), _weights(rng, s["ads"], 1.2)
    user_bias, ad_bias = rng.normal(0, 0.6, s["users"]), rng.normal(0, 0.6, s["ads"])
    folder.mkdir(parents=True, exist_ok=True)
    per_day = np.full(days, rows // days)
    per_day[: rows % days] += 1
    offset = 0
    for d, n in enumerate(per_day):
        users = np.minimum(np.searchsorted(user_cdf, rng.random(n)), s["users"] - 1)
        ads = np.minimum(np.searchsorted(ad_cdf, rng.random(n)), s["ads"] - 1)
        logit = -3.4 + user_bias[users] + ad_bias[ads]
        click = rng.random(n) < 1 / (1 + np.exp(-logit))
        times = t0 + d * US_PER_DAY + np.sort(rng.integers(0, US_PER_DAY, n))
        ids = pa.array(np.arange(offset, offset + n, dtype=np.int64)).cast(pa.string())
        table = pa.table({
            "event_time": pa.array(times, pa.int64()).cast(TIMESTAMP),
            "request_id": pc.binary_join_element_wise("r", ids, ""),
            "user_id": pa.array(users.astype(np.int64)),
            "ad_id": pa.array(ads.astype(np.int64)),
            "slot": pa.array(np.array(["feed", "search", "detail"])[rng.integers(0, 3, n)]),
            "position": pa.array(rng.integers(1, 6, n).astype(np.int32)),
            "exposure_index": pa.array(rng.geometric(0.7, n).astype(np.int32)),
            "click": pa.array(click.astype(np.int8)),
            "conversion": pa.array((click & (rng.random(n) < 0.1)).astype(np.int8)),
        })
        part = folder / "impressions" / f"date={(START + dt.timedelta(days=d)).isoformat()}"
        part.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, part / "part-0.parquet", row_group_size=1_000_000)
        offset += n
    created = pa.array(np.full(s["ads"], t0 - US_PER_DAY), pa.int64()).cast(TIMESTAMP)
    ad_ids = np.arange(s["ads"], dtype=np.int64)
    category = (ad_ids % s["categories"]).astype(str)
    pq.write_table(pa.table({
        "ad_id": pa.array(ad_ids),
        "advertiser_id": pa.array(rng.integers(0, max(10, s["ads"] // 20), s["ads"])),
        "campaign_id": pa.array(rng.integers(0, max(10, s["ads"] // 4), s["ads"])),
        "title": pa.array(np.char.add(np.char.add("ad ", ad_ids.astype(str)), np.char.add(" in category ", category))),
        "bid": pa.array(rng.random(s["ads"])),
        "category": pa.array(np.char.add("c", category)),
        "created_at": created,
    }), folder / "ads.parquet")
    pq.write_table(pa.table({
        "user_id": pa.array(np.arange(s["users"], dtype=np.int64)),
        "created_at": pa.array(np.full(s["users"], t0 - US_PER_DAY), pa.int64()).cast(TIMESTAMP),
    }), folder / "users.parquet")
    return {**s, "first_day": START.isoformat(), "last_day": (START + dt.timedelta(days=days - 1)).isoformat()}


def write_config(path: Path, data: Path, days: int) -> Path:
    """The files-source YAML for the log in ``data`` (a training window of ``days`` days)."""
    path.write_text(
        "pipeline:\n  source: files\n"
        f"  training_days: {days}\n"
        "files:\n  name: scale_files\n  tasks: [click, conversion]\n"
        f"  impressions: {{path: {data / 'impressions'}, format: parquet, layout: hive}}\n"
        f"  ads: {{path: {data / 'ads.parquet'}, format: parquet, columns: {{category: category}}}}\n"
        f"  users: {{path: {data / 'users.parquet'}, format: parquet}}\n"
    )
    return path

"""Taobao UserBehavior adapter: Alibaba's real pv/cart/fav/buy log mapped onto the data contract.

The file (``<shared_data>/taobao/user_behavior_head.csv``, no header:
``user_id,item_id,category_id,behavior,timestamp``) holds only positives: what users did with items.
The mapping (docs/sources.md has the full story and the measured rates):

- **cleaning**: a line whose fields do not parse (the file is a byte-cut head; its last line lacks the
  timestamp) is *malformed*; an event outside the dataset's published collection window, 2017-11-25
  00:00 to 2017-12-04 00:00 China time (UTC+8), is *outside_window*. Both are dropped and counted.
- **impressions**: one per (user, item, UTC day) that has at least one ``pv`` that day. Its
  ``event_time`` is the pair's first event of the day (the moment the item was evidently in front of
  the user); labels: ``click`` = 1, ``conversion`` / ``cart`` / ``fav`` = the pair has a ``buy`` /
  ``cart`` / ``fav`` that same day. Events of a pair-day without any ``pv`` (e.g. buying straight from
  the cart) are not attributed to an impression and are counted as ``events_without_same_day_pv``.
- **negatives**: ``negatives_per_positive`` (default 4) per positive impression, items drawn by that
  day's popularity (distinct viewers) from the items viewed that day, never an item the user had any
  event with that day, never twice to one user in a day; ``event_time`` = the positive's +/- up to
  ``jitter_s`` seconds, kept inside the day and the collection window. Seeded per day.
- **constants**: ``slot`` = "taobao", ``position`` = 1 (the log records no placement);
  ``exposure_index`` counts the pair's earlier impressions across days.
- **ads** = items: ``category`` (the category_id as text, a categorical taxonomy column), title
  "category <id>" (synthetic: the log has no text), no image, ``bid`` 1.0 (no price in the log),
  ``advertiser_id`` a stable hash bucket of the item id (synthetic shops), ``campaign_id`` =
  advertiser x category. **users**: ``user_id`` and ``created_at`` only (the log has no profile).
  ``created_at`` = the entity's first impression, so it lands on the first day it is seen.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from components.schemas import ADS, USERS, impressions_schema
from components.sources.real_log import (
    DayPartitionedLog,
    LoggedSource,
    exposure_index,
    first_seen,
    pair_keys,
    request_ids,
    require_file,
    sample_negatives,
    seconds_to_timestamps,
    stable_bucket,
)

if TYPE_CHECKING:
    from pathlib import Path

CHINA = dt.timezone(dt.timedelta(hours=8))
WINDOW_START = dt.datetime(2017, 11, 25, tzinfo=CHINA)
WINDOW_END = dt.datetime(2017, 12, 4, tzinfo=CHINA)
BEHAVIOURS = ("pv", "cart", "fav", "buy")
TASKS: tuple[str, ...] = ("click", "conversion", "cart", "fav")
SLOT = "taobao"
N_ADVERTISERS = 5_000
CATEGORY_SPAN = 10_000_000  # campaign_id = advertiser_id * CATEGORY_SPAN + category_id


class TaobaoSource(LoggedSource):
    """The Taobao UserBehavior head as a ``Source``. Parses and derives everything once per instance."""

    name = "taobao"
    tasks: tuple[str, ...] = TASKS

    DEFAULT_SEED = 20171125

    @property
    def path(self) -> "Path":
        return self.settings.shared_data / "taobao" / "user_behavior_head.csv"

    def _read_pair_days(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """DuckDB pass over the CSV: counts, one row per (user, item, UTC day) and item categories."""
        from components.store.sql import connect, sql_str

        path = require_file(self.path, "Taobao UserBehavior log")
        lo, hi = int(WINDOW_START.timestamp()), int(WINDOW_END.timestamp())
        con = connect()
        try:
            # every field as text first, so one odd line is counted as malformed instead of failing the read
            con.execute(
                f"""CREATE TEMP TABLE raw AS SELECT
                    TRY_CAST(u AS BIGINT) AS user_id, TRY_CAST(i AS BIGINT) AS item_id,
                    TRY_CAST(c AS BIGINT) AS category_id, b AS behavior, TRY_CAST(t AS BIGINT) AS ts
                FROM read_csv({sql_str(path)}, header=false, delim=',', quote='', escape='', null_padding=true,
                              columns={{'u': 'VARCHAR', 'i': 'VARCHAR', 'c': 'VARCHAR', 'b': 'VARCHAR',
                                        't': 'VARCHAR'}})"""
            )
            behaviours = ", ".join(f"'{b}'" for b in BEHAVIOURS)
            valid = (
                "coalesce(user_id IS NOT NULL AND item_id IS NOT NULL AND category_id IS NOT NULL "
                f"AND ts IS NOT NULL AND behavior IN ({behaviours}), false)"
            )
            counts = con.execute(
                f"""SELECT count(*), count(*) FILTER (WHERE NOT {valid}),
                       count(*) FILTER (WHERE ({valid}) AND (ts < {lo} OR ts >= {hi})),
                       count(*) FILTER (WHERE ({valid}) AND ts >= {lo} AND ts < {hi} AND behavior = 'pv')
                FROM raw"""
            ).fetchone()
            if counts is None:  # an aggregate always returns one row; this only narrows the type
                raise RuntimeError(f"DuckDB returned no counts for {path}")
            con.execute(
                f"CREATE TEMP TABLE ev AS SELECT *, ts // 86400 AS day FROM raw "
                f"WHERE {valid} AND ts >= {lo} AND ts < {hi}"
            )
            pairs = con.execute(
                """SELECT user_id, item_id, day, min(ts) AS first_ts, count(*) AS n_events,
                       count(*) FILTER (WHERE behavior = 'pv') AS n_pv,
                       bool_or(behavior = 'buy')::TINYINT AS conversion,
                       bool_or(behavior = 'cart')::TINYINT AS cart,
                       bool_or(behavior = 'fav')::TINYINT AS fav
                FROM ev GROUP BY user_id, item_id, day ORDER BY day, user_id, item_id"""
            ).to_arrow_table()
            # an item's category is the one on its first event (one item in the file carries two)
            categories = con.execute(
                "SELECT item_id, first(category_id ORDER BY ts, category_id) AS category_id "
                "FROM ev GROUP BY item_id ORDER BY item_id"
            ).to_arrow_table()
        finally:
            con.close()
        self._stats = {
            "raw_rows": int(counts[0]),
            "malformed_rows": int(counts[1]),
            "outside_window_rows": int(counts[2]),
            "pv_events": int(counts[3]),
        }
        as_np = lambda t: {c: t.column(c).to_numpy() for c in t.column_names}  # noqa: E731
        return as_np(pairs), as_np(categories)

    def _build(self) -> DayPartitionedLog:
        pairs, categories = self._read_pair_days()
        has_pv = pairs["n_pv"] > 0
        self._stats["in_window_events"] = int(pairs["n_events"].sum())
        self._stats["events_in_impressions"] = int(pairs["n_events"][has_pv].sum())
        self._stats["events_without_same_day_pv"] = int(pairs["n_events"][~has_pv].sum())
        self._stats["pv_pair_days"] = int(has_pv.sum())

        pos = {k: v[has_pv] for k, v in pairs.items()}
        item_span = int(max(pairs["item_id"].max(initial=0), 0)) + 1
        lo, hi = int(WINDOW_START.timestamp()), int(WINDOW_END.timestamp())

        neg_user, neg_item, neg_time, neg_day = [], [], [], []
        unfilled = 0
        for day in np.unique(pos["day"]):
            sel = pos["day"] == day
            users, items, first_ts = pos["user_id"][sel], pos["item_id"][sel], pos["first_ts"][sel]
            # the pool: items viewed that day, weighted by how many users viewed them
            pool_items, pool_weights = np.unique(items, return_counts=True)
            # forbidden: every pair with any event that day (pv or not)
            all_sel = pairs["day"] == day
            forbidden = np.unique(pair_keys(pairs["user_id"][all_sel], pairs["item_id"][all_sel], item_span))
            rng = np.random.default_rng([self.seed, int(day)])
            draw = sample_negatives(
                rng, users, pool_items, pool_weights, forbidden, item_span, self.negatives_per_positive, self.jitter_s
            )
            unfilled += draw.unfilled
            day_lo = max(int(day) * 86_400, lo)
            day_hi = min((int(day) + 1) * 86_400, hi) - 1
            neg_user.append(users[draw.parent])
            neg_item.append(draw.item)
            neg_time.append(np.clip(first_ts[draw.parent] + draw.offset_s, day_lo, day_hi))
            neg_day.append(np.full(draw.item.size, day, dtype=np.int64))
        self._stats["positive_impressions"] = int(has_pv.sum())
        self._stats["negative_impressions"] = int(sum(a.size for a in neg_item))
        self._stats["unfilled_negatives"] = unfilled

        n_pos = pos["user_id"].size
        cat = lambda parts: np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)  # noqa: E731
        user = np.concatenate([pos["user_id"], cat(neg_user)]).astype(np.int64)
        item = np.concatenate([pos["item_id"], cat(neg_item)]).astype(np.int64)
        ts = np.concatenate([pos["first_ts"], cat(neg_time)]).astype(np.int64)
        day = np.concatenate([pos["day"], cat(neg_day)]).astype(np.int64)
        n_neg = user.size - n_pos
        labels = {
            "click": np.concatenate([np.ones(n_pos, np.int8), np.zeros(n_neg, np.int8)]),
            **{
                t: np.concatenate([pos[t].astype(np.int8), np.zeros(n_neg, np.int8)])
                for t in ("conversion", "cart", "fav")
            },
        }
        # output order: time, then user, then item ((user, item, day) is unique, so this is total)
        order = np.lexsort((item, user, ts))
        user, item, ts, day = user[order], item[order], ts[order], day[order]
        labels = {t: v[order] for t, v in labels.items()}
        exposure = exposure_index(user, item, ts, np.arange(user.size))

        n = user.size
        impressions = pa.table(
            {
                "event_time": seconds_to_timestamps(ts),
                "request_id": request_ids(self.name, day, user, item),
                "user_id": pa.array(user, pa.int64()),
                "ad_id": pa.array(item, pa.int64()),
                "slot": pa.array(np.full(n, SLOT, dtype=object), pa.string()),
                "position": pa.array(np.ones(n, np.int32), pa.int32()),
                "exposure_index": pa.array(exposure, pa.int32()),
                **{t: pa.array(labels[t], pa.int8()) for t in TASKS},
            },
            schema=impressions_schema(TASKS),
        )
        return DayPartitionedLog(
            {
                "impressions": impressions,
                "ads": self._ads(item, ts, categories),
                "users": _users(user, ts),
            }
        )

    def _ads(self, item: np.ndarray, ts: np.ndarray, categories: dict[str, np.ndarray]) -> pa.Table:
        ad_id, created = first_seen(item, ts)
        pos = np.searchsorted(categories["item_id"], ad_id)
        category = categories["category_id"][pos].astype(np.int64)
        if category.size and category.max() >= CATEGORY_SPAN:
            raise ValueError(f"category ids must be < {CATEGORY_SPAN} to build campaign ids; got {category.max()}")
        advertiser = stable_bucket(ad_id, N_ADVERTISERS, salt=1) + 1
        import pyarrow.compute as pc

        category_text = pa.array(category).cast(pa.string())
        n = ad_id.size
        schema = ADS.required.append(pa.field("category", pa.string()))
        return pa.table(
            {
                "ad_id": pa.array(ad_id, pa.int64()),
                "advertiser_id": pa.array(advertiser, pa.int64()),
                "campaign_id": pa.array(advertiser * CATEGORY_SPAN + category, pa.int64()),
                "title": pc.binary_join_element_wise("category", category_text, " "),
                "image": pa.nulls(n, pa.binary()),
                "bid": pa.array(np.ones(n), pa.float64()),
                "created_at": seconds_to_timestamps(created),
                "category": category_text,
            },
            schema=schema,
        )


def _users(user: np.ndarray, ts: np.ndarray) -> pa.Table:
    """Users have no profile in this log: id and ``created_at`` = first impression."""
    ids, first = first_seen(user, ts)
    return pa.table(
        {"user_id": pa.array(ids, pa.int64()), "created_at": seconds_to_timestamps(first)}, schema=USERS.required
    )

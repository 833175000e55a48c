"""Golden point-in-time tests: Feast's join (the reference) and the direct DuckDB ASOF join on hand-made
feature rows that hit every edge: future values, late-arriving rows, duplicate event timestamps, TTL
boundaries, entities without rows, and views without a TTL."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.store.features import build_features
from components.schemas import TIMESTAMP, day_dir, impressions_schema
from components.training.training_set import build_training_set

UTC = dt.timezone.utc
T = dt.datetime(2026, 11, 3, 12, tzinfo=UTC)
S = dt.timedelta(seconds=1)
H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)
TASKS = ["click", "conversion"]

# (request_id, user_id, ad_id, event_time, click): the training window is 2026-11-03.
IMPRESSIONS = [
    ("r01", 1, 100, T, 0),
    ("r02", 1, 100, T + 2 * S, 1),
    ("r03", 1, 100, T - 2 * H, 0),
    ("r04", 2, 101, T, 0),
    ("r05", 3, 101, T, 0),
    ("r06", 4, 102, T, 0),
    ("r07", 5, 102, T, 0),
    ("r08", 6, 102, T, 0),
    ("r09", 7, 103, T, 0),
    ("r10", 5, 102, T + S, 0),
    ("r11", 7, 103, T + 2 * H, 0),
]
# Earlier days: enough for build_features to produce ad stats and click sequences the window uses.
HISTORY = [
    ("h01", 1, 100, dt.datetime(2026, 11, 1, 10, tzinfo=UTC), 1),
    ("h02", 2, 101, dt.datetime(2026, 11, 2, 9, tzinfo=UTC), 1),
    ("h03", 3, 101, dt.datetime(2026, 11, 2, 11, tzinfo=UTC), 0),
    ("h04", 4, 102, dt.datetime(2026, 11, 2, 13, tzinfo=UTC), 0),
]
# Hand-made user_stats rows: (user_id, impressions_1d used as a marker, event_timestamp, created_timestamp).
USER_STATS = [
    (1, 1, T - H, T - H),
    (1, 2, T + S, T + S),  # stamped after r01: never used for it, used for r02
    (2, 10, T - D, T + 5 * D),  # late-arriving: written days later for an earlier timestamp
    (2, 20, T - 2 * D + H, T - 2 * D + H),
    (3, 30, T - H, T - H),
    (3, 31, T - 3 * H, T + D),  # late and older than the newest row: does not override it
    (4, 41, T - H, T - 30 * 60 * S),  # duplicate event timestamp: the newest created row wins...
    (4, 40, T - H, T - 50 * 60 * S),  # ...whatever the file order
    (5, 50, T - 2 * D, T - 2 * D),  # exactly TTL old at r07 (inclusive), 1 s too old at r10
    (6, 60, T - 2 * D - S, T - 2 * D - S),  # 1 s outside the TTL at r08
]
EXPECTED_MARKER = {
    "r01": 1, "r02": 2, "r03": None, "r04": 10, "r05": 30, "r06": 41,
    "r07": 50, "r08": None, "r09": None, "r10": None, "r11": None,
}


def _write(path: Path, table: pa.Table) -> None:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-0.parquet")


def _impressions(rows: list[tuple]) -> pa.Table:
    n = len(rows)
    return pa.Table.from_pydict(
        {
            "event_time": [r[3] for r in rows],
            "request_id": [r[0] for r in rows],
            "user_id": [r[1] for r in rows],
            "ad_id": [r[2] for r in rows],
            "slot": ["feed"] * n,
            "position": [1] * n,
            "exposure_index": [1] * n,
            "click": [r[4] for r in rows],
            "conversion": [0] * n,
        },
        schema=impressions_schema(TASKS),
    )


@pytest.fixture()
def pit_home(settings):
    """An offline store with three days, features built for each, user_stats replaced by USER_STATS."""
    settings.features.ttl_days = 2
    # This file pins the daily views' join; the fresh sequence and counters that replace the daily
    # sequence by default are pinned by tests/data/test_fresh_behaviour.py.
    settings.features.fresh_behaviour = False
    offline = settings.offline_dir
    everything = HISTORY + IMPRESSIONS
    for day in (dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)):
        _write(day_dir(offline, "impressions", day), _impressions([r for r in everything if r[3].date() == day]))
    ads = pa.Table.from_pydict(
        {
            "ad_id": [100, 101, 102, 103],
            "advertiser_id": [1, 1, 2, 3],
            "campaign_id": [10, 11, 12, 13],
            "title": ["a", "b", "c", "d"],
            "image": [None] * 4,
            "bid": [1.0, 1.5, 2.0, 2.5],
            "created_at": [T - 40 * D] * 3 + [T + H],  # ad 103 is new: created an hour after r09
            "master_category": ["Apparel", "Footwear", "Apparel", "Home"],
        },
        schema=pa.schema(
            [("ad_id", pa.int64()), ("advertiser_id", pa.int64()), ("campaign_id", pa.int64()),
             ("title", pa.string()), ("image", pa.binary()), ("bid", pa.float64()), ("created_at", TIMESTAMP),
             ("master_category", pa.string())]
        ),
    )
    for created in sorted(set(ads.column("created_at").to_pylist())):
        _write(day_dir(offline, "ads", created.date()), ads.filter(pa.compute.equal(ads["created_at"], created)))
    users = pa.Table.from_pydict(
        {"user_id": list(range(1, 8)), "created_at": [T - 60 * D] * 7, "gender": list("fmfmfmf")},
        schema=pa.schema([("user_id", pa.int64()), ("created_at", TIMESTAMP), ("gender", pa.string())]),
    )
    _write(day_dir(offline, "users", (T - 60 * D).date()), users)
    for day in (dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)):
        build_features(settings, day, TASKS)

    stats_dir = settings.features_dir / "user_stats"
    schema = pq.read_schema(next(stats_dir.glob("date=*/part-0.parquet")))
    shutil.rmtree(stats_dir)
    rows = [
        {"user_id": u, "impressions_1d": m, "click_1d": 0, "event_timestamp": ts, "created_timestamp": c}
        for u, m, ts, c in USER_STATS
    ]
    _write(day_dir(settings.features_dir, "user_stats", dt.date(2026, 11, 3)), pa.Table.from_pylist(rows, schema))
    return settings


@pytest.fixture()
def both_sets(pit_home):
    """The training set of 2026-11-03 through each join path."""
    out = {}
    for path in ("feast", "duckdb"):
        target = build_training_set(pit_home, dt.date(2026, 11, 3), days=1, tasks=TASKS, join_path=path)
        out[path] = (pq.read_table(target), json.loads((target.parent / "meta.json").read_text()))
    return out


@pytest.mark.parametrize("join_path", ["feast", "duckdb"])
def test_golden_point_in_time_values(both_sets, join_path: str) -> None:
    table, meta = both_sets[join_path]
    rows = {r["request_id"]: r for r in table.to_pylist()}
    assert set(rows) == {r[0] for r in IMPRESSIONS}  # every impression of the window, none of the history
    assert {k: rows[k]["user_stats__impressions_1d"] for k in rows} == EXPECTED_MARKER
    # Views without a TTL: a user created 60 days ago keeps its profile; a new ad has none before creation.
    assert rows["r09"]["user_profile__gender"] == "f"
    assert rows["r09"]["ad_profile__master_category"] is None
    assert rows["r11"]["ad_profile__master_category"] == "Home"
    # Daily views built from the log: the 2026-11-02 row (stamped 11-03 00:00) serves the 11-03 impressions.
    assert rows["r04"]["ad_stats__impressions_1d"] == 2 and rows["r04"]["ad_stats__click_1d"] == 1
    assert rows["r04"]["user_sequence__ad_ids"][:2] == [101, -1] and rows["r04"]["user_sequence__length"] == 1
    assert rows["r01"]["user_sequence__ad_ids"][0] == 100  # 11-01's click, 1.5 days old: inside the TTL
    assert rows["r05"]["user_sequence__length"] is None  # user 3 never clicked
    assert meta["join_path"] == join_path and meta["rows"] == len(IMPRESSIONS)
    assert meta["label_rates"]["click"] == pytest.approx(1 / len(IMPRESSIONS))
    assert meta["feature_views"]["user_stats"]["ttl_days"] == 2 and meta["feature_views"]["ad_profile"]["ttl_days"] is None
    assert "user_stats__click_rate_7d" in meta["features"]


@pytest.mark.parametrize("join_path", ["feast", "duckdb"])
def test_golden_user_attribute_interest_values(both_sets, join_path: str) -> None:
    """The (user, ad's master_category) view, keyed on '<user_id>|<category>' of the impression's ad as of its
    time: only earlier days count (r02 does not see r01 or r03 of the same day), a new ad has no key yet."""
    table, meta = both_sets[join_path]
    rows = {r["request_id"]: r for r in table.to_pylist()}
    col = "user_master_category_interest__{}".format
    assert "user_master_category_key" not in table.column_names  # a join input, not a feature
    # User 1 saw Apparel (ad 100) once, on 11-01, and clicked: 7-day window only.
    for r in ("r01", "r02", "r03"):
        assert (rows[r][col("impressions_7d")], rows[r][col("click_7d")], rows[r][col("impressions_1d")]) == (1, 1, 0)
    # Rates: the prior is the user's own rate of the window, smoothed toward the global one (m = 20).
    user_rate = (1 + 20 * 0.5) / 21  # 7 days: user 1 has 1 click in 1; global 2 clicks in 4
    assert rows["r01"][col("click_rate_7d")] == pytest.approx((1 + 20 * user_rate) / 21, rel=1e-12)
    assert rows["r01"][col("click_rate_1d")] == pytest.approx(1 / 3, rel=1e-12)  # idle user: the global rate
    assert (rows["r04"][col("impressions_1d")], rows["r04"][col("click_1d")]) == (1, 1)  # user 2, Footwear
    assert (rows["r06"][col("impressions_1d")], rows["r06"][col("click_1d")]) == (1, 0)  # user 4, Apparel
    assert rows["r07"][col("impressions_7d")] is None  # user 5 never saw Apparel before
    assert rows["r09"][col("impressions_7d")] is None  # ad 103 not created yet: no category, no key
    assert rows["r11"][col("impressions_7d")] is None  # ad 103 known, but user 7 never saw Home
    assert meta["feature_views"]["user_master_category_interest"]["entity"] == "user_master_category_key"
    assert meta["feature_views"]["user_master_category_interest"]["ttl_days"] == 2


def test_direct_join_equals_feast_join(both_sets) -> None:
    feast_table, _ = both_sets["feast"]
    duck_table, _ = both_sets["duckdb"]
    assert feast_table.schema.equals(duck_table.schema)
    assert feast_table.equals(duck_table)
    assert feast_table.column_names[:7] == ["event_time", "request_id", "user_id", "ad_id", "slot", "position",
                                             "exposure_index"]
    assert feast_table.schema.field("event_time").type == TIMESTAMP


def test_auto_join_path_follows_the_row_threshold(pit_home) -> None:
    pit_home.features.direct_join_min_rows = len(IMPRESSIONS)
    target = build_training_set(pit_home, dt.date(2026, 11, 3), days=1, tasks=TASKS)
    assert json.loads((target.parent / "meta.json").read_text())["join_path"] == "duckdb"
    with pytest.raises(ValueError, match="no impressions between 2026-11-05 and 2026-11-05"):
        _write(day_dir(pit_home.offline_dir, "impressions", dt.date(2026, 11, 5)), _impressions([]))
        build_training_set(pit_home, dt.date(2026, 11, 5), days=1, tasks=TASKS)

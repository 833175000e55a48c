"""Daily feature views (components/store/features.py) against brute-force pandas recounts on a small random log."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.store.features import PAD_AD_ID, PAD_CATEGORY, VIEWS, build_features, read_view
from components.schemas import TIMESTAMP, day_dir, impressions_schema

DAY0 = dt.date(2026, 11, 1)
UTC = dt.timezone.utc


def write_day(offline: Path, table: str, day: dt.date, data: pa.Table) -> None:
    out = day_dir(offline, table, day)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(data, out / "part-0.parquet")


def random_log(offline: Path, days: int, seed: int = 3, n_users: int = 25, n_ads: int = 12) -> pd.DataFrame:
    """A random impression log (whole seconds, unique times per row) plus ads and users; returns the log."""
    rng = np.random.default_rng(seed)
    n = 90 * days
    start = pd.Timestamp(DAY0, tz="UTC")
    seconds = rng.choice(days * 86_400, n, replace=False)
    log = pd.DataFrame(
        {
            "event_time": (start + pd.to_timedelta(np.sort(seconds), unit="s")).astype("datetime64[us, UTC]"),
            "request_id": [f"q{i:05d}" for i in range(n)],
            # Skewed activity (p ~ 1/rank) so some users click a lot and some rarely.
            "user_id": rng.choice(np.arange(1, n_users + 1), n, p=(1 / np.arange(1, n_users + 1)) / np.sum(
                1 / np.arange(1, n_users + 1))).astype("int64"),
            "ad_id": rng.integers(100, 100 + n_ads, n).astype("int64"),
            "slot": "feed",
            "position": rng.integers(1, 4, n).astype("int32"),
            "exposure_index": np.ones(n, dtype="int32"),
            "click": (rng.random(n) < 0.35).astype("int8"),
        }
    )
    log["conversion"] = (log["click"] * (rng.random(n) < 0.5)).astype("int8")
    schema = impressions_schema(["click", "conversion"])
    for d in range(days):
        day = DAY0 + dt.timedelta(days=d)
        part = log[log["event_time"].dt.date == day]
        write_day(offline, "impressions", day, pa.Table.from_pandas(part, schema=schema, preserve_index=False))
    ads = pa.table(
        {
            "ad_id": pa.array(np.arange(100, 100 + n_ads), pa.int64()),
            "advertiser_id": pa.array(np.arange(n_ads) % 3, pa.int64()),
            "campaign_id": pa.array(np.arange(n_ads) % 5, pa.int64()),
            "title": [f"ad {i}" for i in range(n_ads)],
            "image": pa.nulls(n_ads, pa.binary()),
            "bid": pa.array(np.linspace(0.5, 2.0, n_ads)),
            "created_at": pa.array([dt.datetime(2026, 10, 20, tzinfo=UTC)] * n_ads, TIMESTAMP),
            "sub_category": [f"sub{i % 4}" for i in range(n_ads)],
            "article_type": [f"type{i % 6}" for i in range(n_ads)],
        }
    )
    write_day(offline, "ads", dt.date(2026, 10, 20), ads)
    users = pa.table(
        {
            "user_id": pa.array(np.arange(1, n_users + 1), pa.int64()),
            "created_at": pa.array([dt.datetime(2026, 10, 1, tzinfo=UTC)] * n_users, TIMESTAMP),
            "gender": [["f", "m"][i % 2] for i in range(n_users)],
            "age": pa.array(np.arange(n_users, dtype=np.int16) + 20),
        }
    )
    write_day(offline, "users", dt.date(2026, 10, 1), users)
    return log


def expected_stats(log: pd.DataFrame, key: str, day: dt.date, windows: list[int], prior: float) -> pd.DataFrame:
    """Brute-force recount of the rolling stats as of the end of ``day``, one entity at a time."""
    end = pd.Timestamp(day + dt.timedelta(days=1), tz="UTC")
    span = log[(log.event_time >= end - pd.Timedelta(days=max(windows) + 1)) & (log.event_time < end)]
    rows = []
    for entity in sorted(span[key].unique()):
        row: dict = {key: entity}
        for w in windows:
            win = log[(log.event_time >= end - pd.Timedelta(days=w)) & (log.event_time < end)]
            mine = win[win[key] == entity]
            row[f"impressions_{w}d"] = len(mine)
            for task in ("click", "conversion"):
                pos = int(mine[task].sum())
                global_rate = win[task].sum() / len(win)
                row[f"{task}_{w}d"] = pos
                denominator = len(mine) + prior
                row[f"{task}_rate_{w}d"] = (pos + prior * global_rate) / denominator if denominator else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("prior", [0.0, 20.0])
def test_rolling_stats_match_a_brute_force_recount(settings, prior: float) -> None:
    settings.features.rolling_windows_days = [1, 3]
    settings.features.rate_prior_strength = prior
    log = random_log(settings.offline_dir, days=6)
    day = DAY0 + dt.timedelta(days=5)
    rows = build_features(settings, day, ["click", "conversion"])
    for view, key in (("user_stats", "user_id"), ("ad_stats", "ad_id")):
        got = read_view(settings, view, [day]).to_pandas().sort_values(key).reset_index(drop=True)
        want = expected_stats(log, key, day, [1, 3], prior)
        assert rows[view] == len(want) == len(got)
        assert (got["event_timestamp"] == pd.Timestamp(day + dt.timedelta(days=1), tz="UTC")).all()
        if key == "user_id":  # the recount covers users idle in the short window (skewed activity)
            assert (want["impressions_1d"] == 0).any()
        for col in want.columns:
            np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-12, err_msg=col)


def test_raw_rate_of_an_idle_entity_is_null(settings) -> None:
    settings.features.rolling_windows_days = [1]
    settings.features.rate_prior_strength = 0.0
    offline = settings.offline_dir
    random_log(offline, days=1)
    # user 999 has one impression on day 0 and none on day 1: day 1 writes its zero row, rate NULL.
    extra = pa.table(
        {
            "event_time": pa.array([dt.datetime(2026, 11, 2, 5, tzinfo=UTC)], TIMESTAMP),
            "request_id": ["late-1"], "user_id": pa.array([999], pa.int64()), "ad_id": pa.array([100], pa.int64()),
            "slot": ["feed"], "position": pa.array([1], pa.int32()), "exposure_index": pa.array([1], pa.int32()),
            "click": pa.array([1], pa.int8()), "conversion": pa.array([0], pa.int8()),
        }
    )
    write_day(offline, "impressions", DAY0 + dt.timedelta(days=1), extra)
    write_day(offline, "impressions", DAY0 + dt.timedelta(days=2), extra.slice(0, 0))
    build_features(settings, DAY0 + dt.timedelta(days=2), ["click", "conversion"])
    stats = read_view(settings, "user_stats", [DAY0 + dt.timedelta(days=2)]).to_pandas()
    assert stats["user_id"].tolist() == [999]
    assert stats.loc[0, "impressions_1d"] == 0 and stats.loc[0, "click_1d"] == 0
    assert pd.isna(stats.loc[0, "click_rate_1d"])


def test_sequence_order_length_padding_and_categories(settings) -> None:
    settings.features.sequence_length = 3
    settings.features.ttl_days = 4  # also the look-back of the click sequence
    log = random_log(settings.offline_dir, days=6)
    day = DAY0 + dt.timedelta(days=5)
    build_features(settings, day, ["click", "conversion"])
    got = read_view(settings, "user_sequence", [day]).to_pandas().set_index("user_id")

    end = pd.Timestamp(day + dt.timedelta(days=1), tz="UTC")
    clicks = log[(log.click == 1) & (log.event_time >= end - pd.Timedelta(days=4)) & (log.event_time < end)]
    active = sorted(clicks[clicks.event_time >= end - pd.Timedelta(days=1)].user_id.unique())
    assert sorted(got.index) == active  # a row only for users who clicked during the day
    category = {100 + i: f"sub{i % 4}" for i in range(12)}  # default: first taxonomy column (sub_category)
    padded_one = False
    for user in active:
        mine = clicks[clicks.user_id == user].sort_values(["event_time", "request_id"], ascending=False).head(3)
        n = len(mine)
        row = got.loc[user]
        assert row["length"] == n
        assert list(row["ad_ids"]) == mine.ad_id.tolist() + [PAD_AD_ID] * (3 - n)
        assert list(row["categories"]) == [category[a] for a in mine.ad_id] + [PAD_CATEGORY] * (3 - n)
        times = pd.to_datetime(pd.Series(list(row["click_times"])[:n]), utc=True)
        assert times.tolist() == mine.event_time.tolist()
        assert times.is_monotonic_decreasing
        padded_one |= n < 3
    assert padded_one, "the random log should contain a user with fewer clicks than the sequence length"
    assert any(got["length"] == 3), "and one whose sequence is truncated"


def test_configured_category_column_and_latest_profile_row_wins(settings) -> None:
    settings.features.sequence_category_column = "article_type"
    offline = settings.offline_dir
    random_log(offline, days=2)
    # A newer row for ad 100 (new bid and type) arrives on day 1: it replaces the old one from then on.
    newer = pq.read_table(day_dir(offline, "ads", dt.date(2026, 10, 20)) / "part-0.parquet").slice(0, 1)
    newer = newer.set_column(5, "bid", pa.array([9.5])).set_column(8, "article_type", pa.array(["type-new"]))
    newer = newer.set_column(6, "created_at", pa.array([dt.datetime(2026, 11, 2, 6, tzinfo=UTC)], TIMESTAMP))
    write_day(offline, "ads", dt.date(2026, 11, 2), newer)
    build_features(settings, dt.date(2026, 11, 1), ["click", "conversion"])
    build_features(settings, dt.date(2026, 11, 2), ["click", "conversion"])
    day0 = read_view(settings, "ad_profile", [dt.date(2026, 11, 1)]).to_pandas().set_index("ad_id")
    day1 = read_view(settings, "ad_profile", [dt.date(2026, 11, 2)]).to_pandas().set_index("ad_id")
    assert day0.loc[100, "bid"] == 0.5 and day1.loc[100, "bid"] == 9.5
    assert day1.loc[100, "article_type"] == "type-new"
    assert day1.loc[100, "event_timestamp"] == pd.Timestamp("2026-11-02 06:00", tz="UTC")  # stamped created_at
    assert len(day1) == 12 and {"title", "image", "created_at"}.isdisjoint(day1.columns)
    users = read_view(settings, "user_profile", [dt.date(2026, 11, 2)])
    assert users.schema.field("age").type == pa.int64() and users.schema.field("gender").type == pa.string()
    seq = read_view(settings, "user_sequence", [dt.date(2026, 11, 2)]).to_pandas()
    cats = {c for row in seq["categories"] for c in row if c != PAD_CATEGORY}
    assert cats and cats <= {f"type{i}" for i in range(6)} | {"type-new"}


def test_rerunning_a_day_replaces_it(settings) -> None:
    log = random_log(settings.offline_dir, days=3)
    day = DAY0 + dt.timedelta(days=2)
    first = build_features(settings, day, ["click", "conversion"])
    before = {v: read_view(settings, v, [day]).drop_columns(["created_timestamp"]) for v in VIEWS}
    second = build_features(settings, day, ["click", "conversion"])
    assert first == second
    for view in VIEWS:
        after = read_view(settings, view, [day]).drop_columns(["created_timestamp"])
        assert after.equals(before[view]), view
        folder = settings.features_dir / view
        assert [p.name for p in folder.iterdir()] == [f"date={day}"]  # no temporary folders left behind
        assert [p.name for p in (folder / f"date={day}").iterdir()] == ["part-0.parquet"]
    # Changed input replaces the partition instead of adding to it.
    part = day_dir(settings.offline_dir, "impressions", day) / "part-0.parquet"
    pq.write_table(pq.read_table(part).slice(0, 10), part)
    build_features(settings, day, ["click", "conversion"])
    stats = read_view(settings, "user_stats", [day]).to_pandas()
    assert stats["impressions_1d"].sum() == 10
    assert len(log) > 10


def test_missing_day_and_missing_task_are_clear_errors(settings) -> None:
    random_log(settings.offline_dir, days=1)
    with pytest.raises(FileNotFoundError, match="no impressions partition for 2026-11-05"):
        build_features(settings, dt.date(2026, 11, 5), ["click"])
    with pytest.raises(ValueError, match=r"task column\(s\) \['add_to_cart'\]"):
        build_features(settings, DAY0, ["click", "add_to_cart"])

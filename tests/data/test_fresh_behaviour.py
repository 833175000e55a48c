"""The fresh behaviour rule (components/store/fresh.py) on hand-made events: strictly-before (same timestamp
invisible, 1 µs before visible), tie order, L truncation, look-back expiry, counter window boundaries,
the click's ad category as of the click, users without clicks or without any event."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.schemas import TIMESTAMP, day_dir, impressions_schema

UTC = dt.timezone.utc
T = dt.datetime(2026, 11, 3, 12, tzinfo=UTC)
US = dt.timedelta(microseconds=1)
H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

# (request_id, user_id, ad_id, event_time, click)
EVENTS = [
    ("r10", 1, 105, T - D, 1),
    ("r11", 1, 101, T - 3 * H, 1),
    ("r12a", 1, 102, T - H, 1),  # two clicks at one timestamp: r12b is the newer in the tie order
    ("r12b", 1, 103, T - H, 1),
    ("r13", 1, 100, T - H / 2, 0),
    ("r15", 1, 106, T - US, 1),  # 1 µs before T: visible at T
    ("r14", 1, 104, T, 1),  # at T: invisible at T, visible 1 µs later
    ("r20", 2, 100, T - 2 * D, 1),  # exactly ttl_days before T: inside at T, expired 1 µs later
    ("r30", 3, 100, T - H / 6, 0),
    ("r31", 3, 101, T - H / 6, 0),
]
# (ad_id, created_at, master_category): ad 102 changes category before its click; ad 103 is created
# after its click, so the click has no row as of its time.
ADS = [
    (100, T - 40 * D, "Apparel"), (101, T - 40 * D, "Footwear"), (102, T - 40 * D, "Apparel"),
    (102, T - 1.5 * H, "Home"), (103, T - H / 2, "Home"), (104, T - 40 * D, "Apparel"),
    (105, T - 40 * D, "Apparel"), (106, T - 40 * D, "Apparel"),
]
PAD = (-1, "", EPOCH)


def _write(path: Path, table: pa.Table) -> None:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-0.parquet")


@pytest.fixture()
def fresh_settings(settings):
    settings.features.ttl_days = 2
    settings.features.sequence_length = 4
    settings.features.fresh_windows_hours = [1, 24]
    for day in sorted({e[3].date() for e in EVENTS}):
        rows = [e for e in EVENTS if e[3].date() == day]
        n = len(rows)
        _write(day_dir(settings.offline_dir, "impressions", day), pa.Table.from_pydict({
            "event_time": [r[3] for r in rows], "request_id": [r[0] for r in rows],
            "user_id": [r[1] for r in rows], "ad_id": [r[2] for r in rows], "slot": ["feed"] * n,
            "position": [1] * n, "exposure_index": [1] * n, "click": [r[4] for r in rows], "conversion": [0] * n,
        }, schema=impressions_schema(["click", "conversion"])))
    schema = pa.schema([("ad_id", pa.int64()), ("advertiser_id", pa.int64()), ("campaign_id", pa.int64()),
                        ("title", pa.string()), ("image", pa.binary()), ("bid", pa.float64()),
                        ("created_at", TIMESTAMP), ("master_category", pa.string())])
    for day in sorted({a[1].date() for a in ADS}):
        _write(day_dir(settings.offline_dir, "ads", day), pa.Table.from_pylist(
            [{"ad_id": ad, "advertiser_id": 1, "campaign_id": 1, "title": "t", "image": None, "bid": 1.0,
              "created_at": created, "master_category": category}
             for ad, created, category in ADS if created.date() == day], schema=schema))
    return settings


def _rows(settings, queries: list[tuple[int, dt.datetime]]) -> list[dict]:
    from components.store.fresh import fresh_behaviour

    entities = pa.table({"user_id": pa.array([q[0] for q in queries], pa.int64()),
                         "event_time": pa.array([q[1] for q in queries], TIMESTAMP)})
    cols = fresh_behaviour(settings, entities)
    return pa.table(cols).to_pylist()


def _seq(items: list[tuple[int, str, dt.datetime]], L: int = 4) -> dict:
    padded = items + [PAD] * (L - len(items))
    return {"user_sequence__ad_ids": [p[0] for p in padded], "user_sequence__categories": [p[1] for p in padded],
            "user_sequence__click_times": [p[2] for p in padded], "user_sequence__length": len(items)}


def test_sequence_is_strictly_before_newest_first_truncated_and_expires(fresh_settings) -> None:
    rows = _rows(fresh_settings, [(1, T), (1, T + US), (1, T - 2 * H), (2, T), (2, T + US), (3, T), (4, T), (1, T)])
    at_t = _seq([(106, "Apparel", T - US), (103, "", T - H), (102, "Home", T - H), (101, "Footwear", T - 3 * H)])
    # At T: the click at T is invisible, the one 1 µs before is first; r12b before r12a (tie order);
    # ad 102's category is its row as of the click (changed at T - 1.5 h), ad 103 had no row yet;
    # L = 4 truncates the click of T - 1 day.
    assert {k: rows[0][k] for k in at_t} == at_t
    assert rows[7] == rows[0]  # duplicate (user, time) rows get the same values
    just_after = _seq([(104, "Apparel", T), (106, "Apparel", T - US), (103, "", T - H), (102, "Home", T - H)])
    assert {k: rows[1][k] for k in just_after} == just_after
    earlier = _seq([(101, "Footwear", T - 3 * H), (105, "Apparel", T - D)])  # T - 1h is still in the future
    assert {k: rows[2][k] for k in earlier} == earlier
    # Look-back: a click exactly ttl_days old is inside (inclusive), 1 µs later it has expired.
    assert rows[3]["user_sequence__ad_ids"] == [100, -1, -1, -1] and rows[3]["user_sequence__length"] == 1
    empty = _seq([])
    assert {k: rows[4][k] for k in empty} == empty
    assert {k: rows[5][k] for k in empty} == empty  # impressions but no click
    assert {k: rows[6][k] for k in empty} == empty  # no event at all


def test_counters_cover_half_open_hour_windows(fresh_settings) -> None:
    rows = _rows(fresh_settings, [(1, T), (1, T + US), (2, T), (3, T), (3, T - H / 6), (4, T)])
    got = [(r["user_recent__impressions_1h"], r["user_recent__click_1h"], r["user_recent__impressions_24h"],
            r["user_recent__click_24h"]) for r in rows]
    assert got == [
        (4, 3, 6, 5),  # [T - 1h, T): r12a, r12b (at T - 1h, inclusive), r13, r15; 24 h includes r10 at T - 1 day
        (3, 2, 6, 5),  # 1 µs later: r12a/b leave the hour, r14 enters; r10 leaves the day
        (0, 0, 0, 0),  # user 2's click is two days old
        (2, 0, 2, 0),
        (0, 0, 0, 0),  # at the impressions' own timestamp: they do not count themselves
        (0, 0, 0, 0),
    ]


def test_types_and_empty_input(fresh_settings) -> None:
    from components.store.fresh import fresh_behaviour, fresh_types

    types = fresh_types(fresh_settings)
    assert list(types) == ["user_sequence__ad_ids", "user_sequence__categories", "user_sequence__click_times",
                           "user_sequence__length", "user_recent__impressions_1h", "user_recent__click_1h",
                           "user_recent__impressions_24h", "user_recent__click_24h"]
    got = fresh_behaviour(fresh_settings, pa.table({"user_id": pa.array([1], pa.int64()),
                                                    "event_time": pa.array([T], TIMESTAMP)}))
    assert {k: v.type for k, v in got.items()} == types
    empty = fresh_behaviour(fresh_settings, pa.table({"user_id": pa.array([], pa.int64()),
                                                      "event_time": pa.array([], TIMESTAMP)}))
    assert all(len(v) == 0 and v.type == types[k] for k, v in empty.items())
    with pytest.raises(ValueError, match="user_id"):
        fresh_behaviour(fresh_settings, pa.table({"event_time": pa.array([T], TIMESTAMP)}))


QUERIES = [(1, T), (1, T + US), (1, T - 2 * H), (2, T), (2, T + US), (3, T), (3, T - H / 6), (4, T), (1, T)]


def _events(rows: list[tuple]) -> pa.Table:
    n = len(rows)
    return pa.Table.from_pydict({
        "event_time": [r[3] for r in rows], "request_id": [r[0] for r in rows], "user_id": [r[1] for r in rows],
        "ad_id": [r[2] for r in rows], "slot": ["feed"] * n, "position": [1] * n, "exposure_index": [1] * n,
        "click": [r[4] for r in rows], "conversion": [0] * n}, schema=impressions_schema(["click", "conversion"]))


def _us(t: dt.datetime) -> int:
    return (t - EPOCH) // US


def _state_columns(state, queries) -> list[dict]:
    users = np.array([q[0] for q in queries], dtype=np.int64)
    times = np.array([_us(q[1]) for q in queries], dtype=np.int64)
    return pa.table(state.columns(users, times)).to_pylist()


def test_behaviour_state_gives_the_offline_values(fresh_settings) -> None:
    """Seeded with everything, or seeded early and pushed the rest (shuffled, twice): the same rows."""
    from components.serving.behaviour_state import BehaviourState
    from components.store.fresh import fresh_behaviour, fresh_types

    entities = pa.table({"user_id": pa.array([q[0] for q in QUERIES], pa.int64()),
                         "event_time": pa.array([q[1] for q in QUERIES], TIMESTAMP)})
    expected = pa.table(fresh_behaviour(fresh_settings, entities)).to_pylist()
    # Seeded with the log before T + 1 µs: exact for requests from then on (older events are dropped).
    seeded = BehaviourState.from_log(fresh_settings, T + US)
    after = [i for i, q in enumerate(QUERIES) if q[1] >= T + US]
    got = seeded.columns(np.array([QUERIES[i][0] for i in after]), np.array([_us(QUERIES[i][1]) for i in after]))
    assert {k: v.type for k, v in got.items()} == fresh_types(fresh_settings)
    assert pa.table(got).to_pylist() == [expected[i] for i in after]

    early = BehaviourState.from_log(fresh_settings, T - 2 * H)  # holds r10, r11 and r20
    assert early.stats()["events"] == 3
    later = [e for e in EVENTS if e[3] >= T - 2 * H]
    assert early.push(_events(later[::-1])) == len(later)
    assert early.push(_events(later[:3])) == 0  # a re-push is not counted twice
    assert _state_columns(early, QUERIES) == expected
    # An event too old for the look-back of what the state has seen is dropped, not kept.
    assert early.push(_events([("old", 1, 100, T - 3 * D, 1)])) == 0
    with pytest.raises(ValueError, match="lack columns"):
        early.push(_events(later).drop_columns(["click"]))

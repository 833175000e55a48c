"""BehaviourState (components/serving/behaviour_state.py) on its own: an empty log, pushes, the ads catalogue,
the look-back sweep and bad input. The offline/online equality is in tests/data/test_fresh_behaviour.py and
tests/data/test_fresh_replay.py."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from components.schemas import TIMESTAMP, impressions_schema

UTC = dt.timezone.utc
T = dt.datetime(2026, 11, 3, 12, tzinfo=UTC)
T_US = int(T.timestamp()) * 1_000_000
H_US = 3_600_000_000


def _events(rows: list[tuple[str, int, int, int, int]]) -> pa.Table:
    """(request_id, user_id, ad_id, µs after T, click)"""
    n = len(rows)
    return pa.Table.from_pydict({
        "event_time": pa.array([T_US + r[3] for r in rows], pa.int64()).cast(TIMESTAMP),
        "request_id": [r[0] for r in rows], "user_id": [r[1] for r in rows], "ad_id": [r[2] for r in rows],
        "slot": ["feed"] * n, "position": [1] * n, "exposure_index": [1] * n, "click": [r[4] for r in rows],
        "conversion": [0] * n}, schema=impressions_schema(["click", "conversion"]))


def test_an_empty_log_then_pushes(settings) -> None:
    from components.serving.behaviour_state import BehaviourState

    settings.features.sequence_length = 3
    state = BehaviourState.from_log(settings, T)  # nothing ingested: an empty state
    assert state.stats() == {"users": 0, "events": 0, "watermark_us": T_US, "ads": 0}
    empty = state.columns(np.array([], np.int64), np.array([], np.int64))
    assert all(len(v) == 0 for v in empty.values())
    assert state.push(_events([("a", 1, 10, 0, 1), ("b", 1, 11, 5, 1), ("a", 1, 10, 0, 1)])) == 2
    got = state.columns(np.array([1, 1, 2]), np.array([T_US + 5, T_US + 6, T_US + 6]))
    assert got["user_sequence__ad_ids"].to_pylist() == [[10, -1, -1], [11, 10, -1], [-1, -1, -1]]
    assert got["user_sequence__categories"].to_pylist()[1] == ["", "", ""]  # no ads rows known
    assert got["user_recent__click_1h"].to_pylist() == [1, 2, 0]
    # A category arrives with the ad's row; it applies to clicks at or after the row's created_at.
    ads = pa.table({"ad_id": [10, 11], "created_at": pa.array([T_US - H_US, T_US + 10], pa.int64()).cast(TIMESTAMP),
                    "master_category": ["Home", "Apparel"]})
    assert state.add_ads(ads) == 2  # a state without a category column keeps '' for every click
    assert state.columns(np.array([1]), np.array([T_US + 6]))["user_sequence__categories"].to_pylist() == [[""] * 3]
    named = BehaviourState(settings, "master_category")
    named.push(_events([("a", 1, 10, 0, 1), ("b", 1, 11, 5, 1)]))
    with pytest.raises(ValueError, match="lack columns"):
        named.add_ads(ads.drop_columns(["master_category"]))
    assert named.add_ads(ads) == 2 and named.add_ads(ads) == 2 and named.stats()["ads"] == 2  # no duplicate rows
    got = named.columns(np.array([1]), np.array([T_US + 6]))
    assert got["user_sequence__categories"].to_pylist() == [["", "Home", ""]]  # ad 11's row is newer than its click


def test_the_lookback_drops_old_events_and_users(settings) -> None:
    from components.serving.behaviour_state import BehaviourState

    settings.features.ttl_days = 1
    settings.features.fresh_windows_hours = [1]
    state = BehaviourState(settings)
    assert state.push(_events([("a", 1, 10, 0, 1), ("b", 2, 10, 0, 0)])) == 2
    day = 24 * H_US
    assert state.push(_events([("c", 2, 10, day + 2 * H_US, 1)])) == 1  # user 1's event leaves the look-back
    assert state.stats()["users"] == 1 and state.stats()["events"] == 1
    assert state.push(_events([("a", 1, 10, 0, 1)])) == 0  # too old to keep
    with pytest.raises(ValueError, match="same length"):
        state.columns(np.array([1, 2]), np.array([T_US]))
    with pytest.raises(ValueError, match="must not be null"):
        state.push(_events([("d", 1, 10, 0, 1)]).set_column(1, "request_id", pa.array([None], pa.string())))

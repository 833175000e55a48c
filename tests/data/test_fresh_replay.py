"""Replay parity of the fresh behaviour features (issue 13, "Done when"): a small simulated market goes
through the real steps (deliver, ingest, features) and a point-in-time training set; a BehaviourState
seeded from the log up to the start of the last day then replays that day in event_time groups (serve
the group's impressions, then push them), and every served row equals the training set's, sequence
lists and counters exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from components.schemas import TIMESTAMP, day_window

pytestmark = pytest.mark.shared_data
DAYS = 3


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Any]:
    from components import steps
    from components.config import load_settings
    from components.training.training_set import build_training_set

    home = tmp_path_factory.mktemp("fresh-replay") / "home"
    settings = load_settings(environ={}, overrides={
        "home": str(home),
        "pipeline": {"shared_data": str(shared_data)},
        "simulator": {"n_users": 150, "sessions_per_user_day": 3.0, "n_initial_ads": 120, "new_ads_per_day": 10,
                      "new_users_per_day": 5, "n_candidates": 40, "click_base_logit": -2.0},
        "features": {"sequence_length": 5, "fresh_windows_hours": [1, 6]},
    }).resolved()
    days = steps.demo_window(settings, DAYS)
    for day in days:
        steps.deliver_day(settings, day)
        steps.ingest(settings, day)
        steps.features(settings, day)
    train = pq.read_table(build_training_set(settings, days[-1], days=DAYS, join_path="duckdb",
                                             representations=False))
    start, _ = day_window(days[-1])
    last_day = train.filter(pc.greater_equal(train["event_time"], pa.scalar(start, TIMESTAMP)))
    return {"settings": settings, "start": start, "last_day": last_day}


def test_replaying_a_day_serves_the_training_set_rows(market: dict[str, Any]) -> None:
    from components.serving.behaviour_state import BehaviourState
    from components.store.fresh import fresh_types

    settings, rows = market["settings"], market["last_day"]
    names = list(fresh_types(settings))
    assert [c for c in rows.column_names if c in names] == names  # in the view's place, counters appended
    state = BehaviourState.from_log(settings, market["start"])
    times = rows["event_time"].cast(pa.int64()).to_numpy()
    users = rows["user_id"].to_numpy()
    order = np.argsort(times, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(times[order])) + 1)
    served: list[pa.Table] = []
    pushed = 0
    for group in groups:  # serve the group's impressions, then make them visible
        take = pa.array(group)
        served.append(pa.table(state.columns(users[group], times[group])).append_column("row", take))
        pushed += state.push(rows.take(take))
    assert pushed == rows.num_rows
    online = pa.concat_tables(served).sort_by("row")
    expected = rows.select(names)
    for name in names:
        assert online[name].to_pylist() == expected[name].to_pylist(), name
    # The day has repeat clicks within the hour and sequences that change during the day: a real check.
    assert pc.max(rows[names[5]]).as_py() > 0 and pc.sum(pc.greater(rows["user_sequence__length"], 0)).as_py() > 0
    first_click = pc.list_element(rows["user_sequence__click_times"], 0).cast(pa.int64())
    assert pc.sum(pc.greater_equal(first_click, int(market["start"].timestamp() * 1_000_000))).as_py() > 0

    # A re-push of the whole day adds nothing and changes nothing.
    assert state.push(rows) == 0
    again = state.columns(users, times)
    for name in names:
        assert again[name].to_pylist() == expected[name].to_pylist(), name

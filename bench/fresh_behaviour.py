"""Cost of the fresh behaviour features (components/store/fresh.py) on the demo-sized training set.

Simulates the demo's window (default simulator settings, ``--days`` days) through deliver, ingest and
features into a temporary ADSREC_HOME, then builds the training set of the whole window with
``features.fresh_behaviour`` off and on (``--repeats`` times each, alternating, the join path the demo
uses), times ``fresh_behaviour`` alone, and seeds a ``BehaviourState`` from the log. Prints one JSON
object; figures are recorded in docs/features.md ("Fresh behaviour features").

    .venv/bin/python bench/fresh_behaviour.py            # 7 days, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from components import steps
    from components.config import load_settings
    from components.schemas import day_window
    from components.serving.behaviour_state import BehaviourState
    from components.store.fresh import fresh_behaviour
    from components.training.training_set import build_training_set

    with tempfile.TemporaryDirectory() as tmp:
        shared = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
        settings = load_settings(environ={}, overrides={"home": str(Path(tmp) / "home"),
                                                        "pipeline": {"shared_data": str(shared)}}).resolved()
        days = steps.demo_window(settings, args.days)
        for day in days:
            steps.deliver_day(settings, day)
            steps.ingest(settings, day)
            steps.features(settings, day)
        seconds: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.repeats):
            for mode in ("off", "on"):
                settings.features.fresh_behaviour = mode == "on"
                started = time.perf_counter()
                target = build_training_set(settings, days[-1], days=args.days, representations=False)
                seconds[mode].append(time.perf_counter() - started)
        meta = json.loads((target.parent / "meta.json").read_text())
        entities = pq.read_table(target, columns=["user_id", "event_time"])
        started = time.perf_counter()
        fresh_behaviour(settings, entities)
        alone = time.perf_counter() - started
        started = time.perf_counter()
        state = BehaviourState.from_log(settings, day_window(days[-1])[1])
        seeded = time.perf_counter() - started
        print(json.dumps({
            "rows": meta["rows"], "join_path": meta["join_path"], "days": args.days,
            "build_seconds_off": [round(s, 2) for s in seconds["off"]],
            "build_seconds_on": [round(s, 2) for s in seconds["on"]],
            "median_off": round(statistics.median(seconds["off"]), 2),
            "median_on": round(statistics.median(seconds["on"]), 2),
            "fresh_behaviour_seconds": round(alone, 2),
            "state_from_log_seconds": round(seeded, 2), "state": state.stats(),
            "fresh_summary": meta["fresh_behaviour"],
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "load": os.getloadavg()[0]},
        }, indent=1))


if __name__ == "__main__":
    main()

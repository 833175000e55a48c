"""The demo marketplace: real fashion products as ads, simulated users and a log with known labels.

DESIGN.md section 5. Ads are real products from ``../shared/data/fashion`` (title, taxonomy, photo);
users, the serving policy and the ``click`` / ``conversion`` labels come from a generative model whose
every parameter is a knob of ``SimulatorConfig``. The true probabilities, policy propensities and
latent preferences go to a separate ground-truth folder (``settings.truth_dir``), never to the raw
tables, so downstream analyses can be checked against the truth (oracle AUC, planted entanglement,
repeated-exposure bias, semantic-temporal interest). The model, as formulas, is in docs/simulator.md.

Time runs in ``rounds_per_day`` rounds per day. Inside a round everything is vectorised over the
round's requests; state that later rounds see (last click time per user and article type, the
retargeting pool, exposure counts) is updated between rounds, so clicks in one round change the
click probabilities and the ads shown in later rounds.

Determinism: every day draws from its own random streams seeded by ``(seed, stream, day index)``, and
day D reads only state built by days before it, so day D is byte-identical whatever window it was
simulated in. Knobs that only change probabilities (fatigue, temporal boost, preference correlation,
...) leave the random draws aligned ("common random numbers"), so comparing two values of a knob on the
same seed isolates its effect.

The model itself is in components/sources/market.py (the state and the day step) and
components/sources/market_serving.py (serving one round: the policy and the labels); this module is the
public surface: ``simulate`` and the ``SimulatorSource``, with a per-process cache of recent days.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from components.schemas import day_dir
from components.sources.market import TASKS, Marketplace
from components.storage import write_json_atomic, write_parquet_atomic

if TYPE_CHECKING:
    from components.config import Settings

RAW_TABLES = ("impressions", "ads", "users")
TRUTH_TABLES = ("truth_impressions", "truth_ads", "truth_users")


def _fingerprint(settings: "Settings", start: dt.date) -> str:
    payload = json.dumps(
        {"simulator": settings.simulator.model_dump(mode="json"), "start": start.isoformat(),
         "data": str(Path(settings.shared_data).expanduser().resolve())},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _new_marketplace(settings: "Settings", start: dt.date) -> Marketplace:
    from components.sources.fashion import load_catalog

    return Marketplace(settings.simulator, start, load_catalog(settings.shared_data))


def simulate(settings: "Settings", start: dt.date | None = None, days: int | None = None) -> dict[str, pa.Table]:
    """Simulate ``days`` days of the marketplace opening on ``start`` (default: pipeline.start_date
    and pipeline.demo_days), and return the raw tables (``impressions``, ``ads``, ``users``) and the
    ground truth (``truth_impressions``, ``truth_ads``, ``truth_users``), each concatenated over days."""
    start = start or settings.pipeline.start_date
    days = settings.pipeline.demo_days if days is None else days
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    market = _new_marketplace(settings, start)
    per_day = [market.step() for _ in range(days)]
    return {name: pa.concat_tables([d[name] for d in per_day]) for name in RAW_TABLES + TRUTH_TABLES}


class _Cache:
    """Per process: the latest marketplace per configuration and its recent days, so delivering days
    in order simulates each day once (a day before the cached ones re-simulates from the start)."""

    max_markets = 2
    max_days = 14

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: OrderedDict[str, tuple[Marketplace, dict[int, dict[str, pa.Table]]]] = OrderedDict()

    def day(self, settings: "Settings", start: dt.date, index: int) -> dict[str, pa.Table]:
        key = _fingerprint(settings, start)
        with self.lock:
            market, days = self.entries.get(key) or (None, {})
            if index in days:
                self.entries.move_to_end(key)
                return days[index]
            if market is None or market.day_index > index:
                market, days = _new_marketplace(settings, start), {}
            while market.day_index <= index:
                out = market.step()
                days[market.day_index - 1] = out
                for old in [d for d in days if d < market.day_index - self.max_days]:
                    del days[old]
            self.entries[key] = (market, days)
            self.entries.move_to_end(key)
            while len(self.entries) > self.max_markets:
                self.entries.popitem(last=False)
            return days[index]


_CACHE = _Cache()


class SimulatorSource:
    """The demo marketplace as a ``Source``: one simulated day per ``deliver`` call."""

    name = "simulator"
    tasks: tuple[str, ...] = TASKS

    def __init__(self, settings: "Settings") -> None:
        self.settings = settings

    def available_days(self) -> tuple[dt.date, dt.date]:
        start = self.settings.pipeline.start_date
        return start, start + dt.timedelta(days=self.settings.simulator.horizon_days - 1)

    def deliver(self, day: dt.date) -> dict[str, int]:
        """Write the day's raw impressions/ads/users and its ground truth; return raw rows per table."""
        first, last = self.available_days()
        if not first <= day <= last:
            raise ValueError(f"the simulator delivers days {first} to {last} (simulator.horizon_days); got {day}")
        from components.sources.landing import write_raw_day

        out = _CACHE.day(self.settings, first, (day - first).days)
        # refuses, before writing, a landing partition holding files the simulator did not write
        write_raw_day(self.settings, self.name, day, {table: out[table] for table in RAW_TABLES})
        for table in TRUTH_TABLES:
            truth_table = table[len("truth_"):]
            write_parquet_atomic(out[table], day_dir(self.settings.truth_dir, truth_table, day) / "part-0.parquet")
        meta = {
            "source": self.name,
            "start": first.isoformat(),
            "simulator": self.settings.simulator.model_dump(mode="json"),
        }
        write_json_atomic(self.settings.truth_dir / "simulator.json", meta)
        return {table: out[table].num_rows for table in RAW_TABLES}

"""Shared machinery of the real-log adapters (``taobao``, ``movielens``, and the ``files`` source's
negatives): turning a positives-only interaction log into a contract impression log. Popularity-weighted
negative sampling with exclusions, the per-(user, ad) ``exposure_index``, deterministic ``request_id``
strings, stable synthetic advertiser buckets, and ``DayPartitionedLog``, which holds a source's full
derived tables and cuts them into UTC days; ``LoggedSource`` is the adapters' common body.

Everything is vectorised with numpy / Arrow: loops run over days or sampling rounds, never over rows.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from components.schemas import TIMESTAMP
from components.sources.landing import write_raw_day

if TYPE_CHECKING:
    from components.config import Settings

US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND
_EPOCH = dt.date(1970, 1, 1)


# --- time ------------------------------------------------------------------------------------------


def seconds_to_timestamps(seconds: np.ndarray) -> pa.Array:
    """Unix seconds (int64) -> ``timestamp[us, tz=UTC]``."""
    return pa.array(np.asarray(seconds, dtype=np.int64) * US_PER_SECOND, type=TIMESTAMP)


def utc_day_ordinal(seconds: np.ndarray) -> np.ndarray:
    """Unix seconds -> days since 1970-01-01 (the UTC date, as int64)."""
    return np.floor_divide(np.asarray(seconds, dtype=np.int64), 86_400)


def ordinal_to_date(day: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=int(day))


def date_to_ordinal(day: dt.date) -> int:
    return (day - _EPOCH).days


# --- ids -------------------------------------------------------------------------------------------


def request_ids(source_name: str, day: np.ndarray, user_id: np.ndarray, ad_id: np.ndarray) -> pa.Array:
    """``"<source>-<YYYY-MM-DD>-<user_id>-<ad_id>"``: unique as long as each (user, ad) pair has at
    most one impression per UTC day, which the real-log adapters guarantee by construction."""
    import pyarrow.compute as pc

    days = pa.array(np.asarray(day, dtype="int64").astype("datetime64[D]").astype(str))
    return pc.binary_join_element_wise(
        source_name,
        days,
        pc.cast(pa.array(user_id, type=pa.int64()), pa.string()),
        pc.cast(pa.array(ad_id, type=pa.int64()), pa.string()),
        "-",
    )


def stable_bucket(ids: np.ndarray, buckets: int, salt: int) -> np.ndarray:
    """A fixed pseudo-random bucket in ``[0, buckets)`` per id (splitmix64 finaliser): the same on every
    machine and Python run, unlike ``hash()``. Used for synthetic advertiser ids where a log has none."""
    z = np.asarray(ids).astype(np.uint64) + np.uint64((salt * 0x9E3779B97F4A7C15) % 2**64)
    # uint64 array arithmetic wraps modulo 2**64, which is exactly what the mixer wants
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(buckets)).astype(np.int64)


# --- negative sampling -----------------------------------------------------------------------------


def pair_keys(user_id: np.ndarray, item_id: np.ndarray, item_span: int) -> np.ndarray:
    """One int64 per (user, item): ``user * item_span + item`` (item ids must be < item_span)."""
    return np.asarray(user_id, dtype=np.int64) * np.int64(item_span) + np.asarray(item_id, dtype=np.int64)


@dataclass(frozen=True)
class NegativeDraw:
    """Negatives for one day's positives: ``parent`` indexes the positives passed in, ``item`` is the
    sampled item, ``offset_s`` its time offset from the parent in seconds; ``unfilled`` counts the
    slots left empty because the user had fewer allowed items in the pool than slots."""

    parent: np.ndarray
    item: np.ndarray
    offset_s: np.ndarray
    unfilled: int


def sample_negatives(
    rng: np.random.Generator,
    users: np.ndarray,
    pool_items: np.ndarray,
    pool_weights: np.ndarray,
    forbidden: np.ndarray,
    item_span: int,
    per_positive: int,
    jitter_s: int,
    rejection_rounds: int = 8,
) -> NegativeDraw:
    """Draw ``per_positive`` negatives for each positive impression of one day.

    ``pool_items`` (sorted, unique) are drawn with probability proportional to ``pool_weights``. A
    (user, item) pair is never drawn when it is in ``forbidden`` (``pair_keys`` of the pairs the user
    interacted with) or was already given to that user this day, so each pair gets at most one
    impression a day. Most slots are filled by a few rounds of draw-and-reject; slots still empty
    after that (users who block most of the popular items) are filled by weighted sampling without
    replacement over the user's allowed items (Gumbel top-k), so every slot is filled whenever the
    user has enough allowed items, and ``unfilled`` is exactly the shortfall. The time offset of each
    negative is uniform in ``[-jitter_s, jitter_s]`` seconds. Deterministic for a given ``rng`` state.
    """
    n_slots = users.size * per_positive
    parent_of_slot = np.repeat(np.arange(users.size, dtype=np.int64), per_positive)
    offsets = rng.integers(-jitter_s, jitter_s + 1, size=n_slots, dtype=np.int64)
    n_pool = pool_items.size
    if n_slots == 0 or n_pool == 0:
        empty = np.empty(0, dtype=np.int64)
        return NegativeDraw(empty, empty, empty, int(n_slots))
    weights = np.asarray(pool_weights, dtype=np.float64)
    if weights.shape != pool_items.shape or not np.all(weights > 0):
        raise ValueError("pool_weights must be positive, one per pool item")
    cum = np.cumsum(weights)

    # blocked[u, j]: user u (local index) may not get pool item j, as a dense (users x pool) matrix
    day_users, slot_user = np.unique(users[parent_of_slot], return_inverse=True)
    f_user, f_item = np.divmod(np.asarray(forbidden, dtype=np.int64), np.int64(item_span))
    u_pos = np.minimum(np.searchsorted(day_users, f_user), day_users.size - 1)
    j_pos = np.minimum(np.searchsorted(pool_items, f_item), n_pool - 1)
    hit = (day_users[u_pos] == f_user) & (pool_items[j_pos] == f_item)
    blocked = np.zeros((day_users.size, n_pool), dtype=bool)
    blocked[u_pos[hit], j_pos[hit]] = True

    # slots beyond what a user's allowed items can fill stay empty (-2); the rest start unfilled (-1)
    capacity = n_pool - blocked.sum(axis=1)
    by_user = np.argsort(slot_user, kind="stable")
    starts = np.searchsorted(slot_user[by_user], np.arange(day_users.size))
    rank_in_user = np.empty(n_slots, dtype=np.int64)
    rank_in_user[by_user] = np.arange(n_slots) - starts[slot_user[by_user]]
    chosen = np.where(rank_in_user < capacity[slot_user], -1, -2).astype(np.int64)

    remaining = np.flatnonzero(chosen == -1)
    for _ in range(rejection_rounds):
        if remaining.size == 0:
            break
        j = np.minimum(np.searchsorted(cum, rng.random(remaining.size) * cum[-1], side="right"), n_pool - 1)
        u = slot_user[remaining]
        ok_idx = np.flatnonzero(~blocked[u, j])
        # of several slots drawing the same pair this round, the first (lowest slot) wins
        _, first = np.unique(u[ok_idx] * n_pool + j[ok_idx], return_index=True)
        accept = ok_idx[first]
        chosen[remaining[accept]] = j[accept]
        blocked[u[accept], j[accept]] = True
        remaining = remaining[chosen[remaining] == -1]

    if remaining.size:
        # Gumbel top-k over each leftover user's allowed items = weighted sampling without replacement
        left_users, row = np.unique(slot_user[remaining], return_inverse=True)
        scores = np.log(weights)[None, :] + rng.gumbel(size=(left_users.size, n_pool))
        scores[blocked[left_users]] = -np.inf
        ranking = np.argsort(-scores, axis=1, kind="stable")
        order = np.argsort(row, kind="stable")
        row_starts = np.searchsorted(row[order], np.arange(left_users.size))
        k = np.empty(remaining.size, dtype=np.int64)
        k[order] = np.arange(remaining.size) - row_starts[row[order]]
        chosen[remaining] = ranking[row, k]

    keep = chosen >= 0
    return NegativeDraw(parent_of_slot[keep], pool_items[chosen[keep]], offsets[keep], int((~keep).sum()))


# --- exposure index --------------------------------------------------------------------------------


def exposure_index(user_id: np.ndarray, ad_id: np.ndarray, time_us: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """1 + the number of earlier impressions of the same (user, ad) pair, in time order (ties broken by
    ``tiebreak``), over every row given: pass all days at once so the count runs across days."""
    n = user_id.size
    order = np.lexsort((tiebreak, time_us, ad_id, user_id))
    u, a = user_id[order], ad_id[order]
    new_pair = np.ones(n, dtype=bool)
    if n > 1:
        new_pair[1:] = (u[1:] != u[:-1]) | (a[1:] != a[:-1])
    rows = np.arange(n, dtype=np.int64)
    pair_start = np.maximum.accumulate(np.where(new_pair, rows, 0)) if n else rows
    out = np.empty(n, dtype=np.int32)
    out[order] = (rows - pair_start + 1).astype(np.int32)
    return out


def first_seen(entity: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct entities and their first timestamp, ordered by (first timestamp, entity id)."""
    ids, inverse = np.unique(entity, return_inverse=True)
    first = np.full(ids.size, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, inverse, np.asarray(ts, dtype=np.int64))
    order = np.lexsort((ids, first))
    return ids[order], first[order]


# --- per-day slicing -------------------------------------------------------------------------------


def _time_us(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False)


class DayPartitionedLog:
    """A source's full derived tables, each sorted by its partition time column, cut into UTC days.

    ``impressions`` partitions by ``event_time``, ``ads`` and ``users`` by ``created_at`` (the day an
    entity first appears is the day it is delivered, as the simulator does).
    """

    TIME_COLUMN = {"impressions": "event_time", "ads": "created_at", "users": "created_at"}

    def __init__(self, tables: dict[str, pa.Table]) -> None:
        self.tables: dict[str, pa.Table] = {}
        self._day_of_row: dict[str, np.ndarray] = {}
        for name, table in tables.items():
            t_us = _time_us(table, self.TIME_COLUMN[name])
            if t_us.size and np.any(np.diff(t_us) < 0):
                raise ValueError(f"{name} must be sorted by {self.TIME_COLUMN[name]} before slicing into days")
            self.tables[name] = table
            self._day_of_row[name] = np.floor_divide(t_us, US_PER_DAY)

    def day_range(self) -> tuple[dt.date, dt.date]:
        days = self._day_of_row["impressions"]
        if days.size == 0:
            raise ValueError("the log holds no impressions")
        return ordinal_to_date(days[0]), ordinal_to_date(days[-1])

    def for_day(self, day: dt.date) -> dict[str, pa.Table]:
        """The day's rows of every table; a day with no rows gives empty tables with the same schema."""
        d = date_to_ordinal(day)
        out: dict[str, pa.Table] = {}
        for name, table in self.tables.items():
            days = self._day_of_row[name]
            lo, hi = np.searchsorted(days, [d, d + 1])
            out[name] = table.slice(int(lo), int(hi - lo))
        return out


def daily_label_rates(impressions: pa.Table, tasks: tuple[str, ...]) -> list[dict[str, object]]:
    """Per UTC day: impressions and the mean of each task label (for reports and docs)."""
    days = np.floor_divide(_time_us(impressions, "event_time"), US_PER_DAY)
    uniq, inverse, counts = np.unique(days, return_inverse=True, return_counts=True)
    rows: list[dict[str, object]] = [
        {"day": ordinal_to_date(d).isoformat(), "impressions": int(c)} for d, c in zip(uniq, counts)
    ]
    for task in tasks:
        labels = impressions.column(task).to_numpy(zero_copy_only=False).astype(np.float64)
        sums = np.bincount(inverse, weights=labels, minlength=uniq.size)
        for row, s, c in zip(rows, sums, counts):
            row[f"{task}_rate"] = round(float(s / c), 5)
    return rows


def require_file(path: Path, what: str) -> Path:
    """The path, or a ``FileNotFoundError`` that says what was expected where."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} not found at {path}; real data is read from pipeline.shared_data "
            f"(default ../shared/data beside the repository) and never copied into it"
        )
    return path


class LoggedSource:
    """A real log with only positives, parsed once per instance and cut into UTC days: the shared body
    of the Taobao and MovieLens adapters. Subclasses set ``name``, ``tasks``, ``DEFAULT_SEED`` and
    implement ``_build()`` (which fills ``self._stats`` with how the raw rows were accounted for)."""

    name: str
    tasks: tuple[str, ...]
    DEFAULT_SEED: int = 0

    def __init__(self, settings: "Settings", negatives_per_positive: int = 4, seed: int | None = None,
                 jitter_s: int = 120) -> None:
        if negatives_per_positive < 0:
            raise ValueError(f"negatives_per_positive must be >= 0, got {negatives_per_positive}")
        self.settings = settings
        self.negatives_per_positive = negatives_per_positive
        self.seed = self.DEFAULT_SEED if seed is None else seed
        self.jitter_s = jitter_s
        self._lock = threading.Lock()
        self._log: DayPartitionedLog | None = None
        self._stats: dict[str, int] = {}

    # --- Source protocol -------------------------------------------------------------------------------

    def available_days(self) -> tuple[dt.date, dt.date]:
        return self.log.day_range()

    def deliver(self, day: dt.date) -> dict[str, int]:
        """Write the day's impressions / ads / users to ``raw/<name>``; a day without events gets empty
        tables (zeros)."""
        return write_raw_day(self.settings, self.name, day, self.log.for_day(day))

    # --- derived tables --------------------------------------------------------------------------------

    @property
    def log(self) -> DayPartitionedLog:
        with self._lock:
            if self._log is None:
                self._log = self._build()
        return self._log

    @property
    def stats(self) -> dict[str, int]:
        """How the raw rows were accounted for (see the adapter's module docstring)."""
        _ = self.log
        return dict(self._stats)

    def daily_summary(self) -> list[dict[str, object]]:
        return daily_label_rates(self.log.tables["impressions"], self.tasks)

    def _build(self) -> DayPartitionedLog:
        raise NotImplementedError

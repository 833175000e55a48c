"""Fresh behaviour features online: a small in-process state of the users' recent impressions and clicks that
a scoring service updates as events arrive, so a click is visible to the very next request
(docs/serving.md, "Fresh behaviour online"; the rule is components/store/fresh.py's).

:class:`BehaviourState` keeps, per user, the impressions of the look-back (``fresh_lookback``: the
sequence's ``ttl_days`` or the widest counter window) as small numpy arrays sorted by (``event_time``,
``request_id``, ``ad_id``), plus a catalogue of ad rows for the click categories:

- :meth:`BehaviourState.from_log` seeds it from the offline impressions with ``event_time < until``;
- :meth:`BehaviourState.push` adds impression events (the impressions contract columns and the behaviour
  task's label), idempotent per (``request_id``, ``ad_id``), and drops what fell out of the look-back;
- :meth:`BehaviourState.columns` gives, for requests (user, time), exactly the columns and types of
  ``fresh_behaviour``: events strictly before each request's own time, windows relative to it.

Every method takes the state's lock. Work is per distinct user of a call (vectorised over that user's
history with ``searchsorted``), never a Python loop over the rows of a history.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from components.schemas import TIMESTAMP
from components.store.features import PAD_AD_ID, PAD_CATEGORY, behaviour_task
from components.store.fresh import (
    ads_relation,
    fresh_behaviour,
    fresh_lookback,
    fresh_types,
    impressions_relation,
    recent_columns,
    with_fresh_behaviour,
)
from components.training.field_encoders import SEQUENCE_CATEGORIES, SEQUENCE_ITEMS, SEQUENCE_LENGTH, SEQUENCE_TIMES

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings

HOUR_US = 3_600_000_000
SWEEP_EVERY_US = HOUR_US  # a full pass dropping expired events at most once per hour of event time


@dataclass(frozen=True)
class _History:
    """One user's impressions, ascending by (t, request_id, ad_id)."""

    t: np.ndarray  # int64 µs
    rid: np.ndarray  # object (str)
    ad: np.ndarray  # int64
    click: np.ndarray  # bool

    def since(self, cutoff_us: int) -> "_History | None":
        """The events at or after ``cutoff_us`` (None when none are left)."""
        start = int(np.searchsorted(self.t, cutoff_us, side="left"))
        if start == 0:
            return self
        if start >= self.t.size:
            return None
        return _History(self.t[start:], self.rid[start:], self.ad[start:], self.click[start:])


def _sorted_history(t: np.ndarray, rid: np.ndarray, ad: np.ndarray, click: np.ndarray) -> _History:
    """A history of these events in the tie order of components/store/fresh.py (Arrow's byte-wise string
    order, DuckDB's)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    order = pc.sort_indices(pa.table({"t": t, "rid": pa.array(rid, pa.string()), "ad": ad}),
                            sort_keys=[("t", "ascending"), ("rid", "ascending"), ("ad", "ascending")]).to_numpy()
    return _History(t[order], rid[order], ad[order], click[order])


class BehaviourState:
    """Recent impressions and clicks per user, and the ads' category rows (see the module docstring)."""

    def __init__(self, settings: "Settings", category_column: str | None = None) -> None:
        cfg = settings.features
        self.settings = settings
        self.click_task = behaviour_task(settings)
        self.category_column = category_column
        self._L = cfg.sequence_length
        self._ttl_us = cfg.ttl_days * 24 * HOUR_US
        self._windows_us = [w * HOUR_US for w in cfg.fresh_windows_hours]
        self._lookback_us = int(fresh_lookback(settings) / dt.timedelta(microseconds=1))
        self._types = fresh_types(settings)
        self._recent = recent_columns(settings)
        self._lock = threading.Lock()
        self._users: dict[int, _History] = {}
        self._watermark = np.iinfo(np.int64).min  # newest event time seen (µs)
        self._swept = self._watermark
        self._ads = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, dtype=object))

    # ----- seeding ---------------------------------------------------------------------------------
    @classmethod
    def from_log(cls, settings: "Settings", until: dt.datetime) -> "BehaviourState":
        """A state holding the offline impressions with ``event_time`` in ``[until - look-back, until)`` and
        every ads row of the offline store (a click's category is looked up as of the click, so later
        rows do not leak into earlier clicks)."""
        from components.store.sql import connect

        if until.tzinfo is None:
            raise ValueError("BehaviourState.from_log: `until` must be timezone-aware (UTC)")
        con = connect()
        try:
            impressions_relation(con, settings, until - fresh_lookback(settings), until)
            log = con.execute("SELECT user_id, event_time, request_id, ad_id, is_click FROM log "
                              "ORDER BY user_id, event_time, request_id, ad_id").arrow().read_all()
            category = ads_relation(con, settings, None)
            ads = con.execute("SELECT ad_id, created_at, category FROM ad_categories").arrow().read_all()
        finally:
            con.close()
        state = cls(settings, category)
        state._watermark = state._swept = int(until.timestamp() * 1_000_000)
        state._set_ads(ads)
        users = log.column("user_id").to_numpy()
        t = log.column("event_time").cast("int64").to_numpy()
        rid = log.column("request_id").to_numpy().astype(object)
        ad = log.column("ad_id").to_numpy()
        click = log.column("is_click").combine_chunks().to_numpy(zero_copy_only=False)
        bounds = np.flatnonzero(np.diff(users)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, users.size]):  # one slice per user
            if hi > lo:
                state._users[int(users[lo])] = _History(t[lo:hi], rid[lo:hi], ad[lo:hi], click[lo:hi])
        return state

    def catch_up(self, since: dt.datetime, until: dt.datetime) -> int:
        """Merge the offline log's impressions with ``event_time`` in ``[since, until)`` (a day that landed
        after the seeding: events the service was not pushed, from another server or a backfill; those it
        was pushed are recognised by (request_id, ad_id) and not counted twice) and re-read the ads
        catalogue (categories of ads created since). Returns the events added."""

        from components.store.sql import connect

        con = connect()
        try:
            impressions_relation(con, self.settings, since, until)
            log = con.execute("SELECT event_time, request_id, user_id, ad_id, is_click::INTEGER AS click "
                              "FROM log").arrow().read_all()
            ads_relation(con, self.settings, None)
            ads = con.execute("SELECT ad_id, created_at, category FROM ad_categories").arrow().read_all()
        finally:
            con.close()
        with self._lock:
            self._set_ads(ads)
        log = log.rename_columns(["event_time", "request_id", "user_id", "ad_id", self.click_task])
        return self.push(log)

    def add_ads(self, ads: "pa.Table") -> int:
        """Add ads rows (``ad_id``, ``created_at`` and the category column when there is one) to the
        catalogue the click categories are read from; returns the rows added."""
        import pyarrow as pa

        missing = [c for c in ("ad_id", "created_at", self.category_column) if c and c not in ads.column_names]
        if missing:
            raise ValueError(f"add_ads: the ads lack columns {missing}")
        category = (ads.column(self.category_column).cast(pa.string()).fill_null(PAD_CATEGORY)
                    if self.category_column else pa.array([PAD_CATEGORY] * ads.num_rows, pa.string()))
        table = pa.table({"ad_id": ads.column("ad_id").cast(pa.int64()),
                          "created_at": ads.column("created_at").cast(TIMESTAMP), "category": category})
        with self._lock:
            ad, created, values = self._ads
            old = pa.table({"ad_id": ad, "created_at": pa.array(created).cast(TIMESTAMP),
                            "category": pa.array(values, pa.string())})
            self._set_ads(pa.concat_tables([old, table]))
        return table.num_rows

    def _set_ads(self, ads: "pa.Table") -> None:
        """The catalogue: arrays sorted by (ad_id, created_at); a repeated (ad_id, created_at) keeps one row."""
        ad = ads.column("ad_id").to_numpy()
        created = ads.column("created_at").cast("int64").to_numpy()
        values = np.asarray(ads.column("category").to_pylist(), dtype=object)
        order = np.lexsort((created, ad))
        ad, created, values = ad[order], created[order], values[order]
        keep = np.r_[True, (ad[1:] != ad[:-1]) | (created[1:] != created[:-1])] if ad.size else np.zeros(0, bool)
        self._ads = (ad[keep], created[keep], values[keep])

    def _categories(self, ads: np.ndarray, at_us: np.ndarray) -> np.ndarray:
        """The category of each ad as of each time: the newest catalogue row with created_at <= time, ''
        when none."""
        cat_ad, cat_t, cat_val = self._ads
        out = np.full(ads.shape, PAD_CATEGORY, dtype=object)
        if not cat_ad.size or not ads.size:
            return out
        first = np.searchsorted(cat_ad, ads, side="left")
        idx = np.searchsorted(cat_ad, ads, side="right") - 1
        pending = idx >= first  # the ad has rows: step back over the ones created after the time
        while True:
            later = pending & (cat_t[np.maximum(idx, 0)] > at_us)
            if not later.any():
                break
            idx = np.where(later, idx - 1, idx)
            pending &= idx >= first
        out[pending] = cat_val[idx[pending]]
        return out

    # ----- updates -------------------------------------------------------------------------------------
    def push(self, events: "pa.Table") -> int:
        """Make impression events visible to later requests; returns how many were new (a re-pushed
        (request_id, ad_id) and an event older than the look-back are not counted or kept)."""
        import pyarrow as pa

        self.check_events(events)
        if events.num_rows == 0:
            return 0
        t = events.column("event_time").cast(TIMESTAMP).cast(pa.int64()).to_numpy()
        rid = np.asarray(events.column("request_id").cast(pa.string()).to_pylist(), dtype=object)
        users = events.column("user_id").cast(pa.int64()).to_numpy()
        ad = events.column("ad_id").cast(pa.int64()).to_numpy()
        click = events.column(self.click_task).fill_null(0).cast(pa.int64()).to_numpy() == 1
        added = 0
        with self._lock:
            self._watermark = max(self._watermark, int(t.max()))
            cutoff = self._watermark - self._lookback_us
            order = np.argsort(users, kind="stable")
            order = order[t[order] >= cutoff]
            bounds = np.flatnonzero(np.diff(users[order])) + 1
            for sel in np.split(order, bounds) if order.size else []:  # one merge per user of the push
                added += self._merge(int(users[sel[0]]), t[sel], rid[sel], ad[sel], click[sel], cutoff)
            if self._watermark - self._swept >= SWEEP_EVERY_US:
                self._sweep(cutoff)
        return added

    def check_events(self, events: "pa.Table") -> None:
        """Raise ``ValueError`` naming the problem when :meth:`push` would refuse ``events``."""
        needed = ["event_time", "request_id", "user_id", "ad_id", self.click_task]
        missing = [c for c in needed if c not in events.column_names]
        if missing:
            raise ValueError(f"push: the events lack columns {missing} (the impressions contract columns and the "
                             f"behaviour task {self.click_task!r})")
        if any(events.column(c).null_count for c in needed[:4]):
            raise ValueError("push: event_time, request_id, user_id and ad_id must not be null")

    def _merge(self, user: int, t: np.ndarray, rid: np.ndarray, ad: np.ndarray, click: np.ndarray,
               cutoff: int) -> int:
        """Merge one user's new events (duplicates of stored or of each other dropped); returns how many."""
        old = self._users.get(user)
        fresh = np.ones(t.size, dtype=bool)
        known = np.isin(rid, old.rid) if old is not None else np.zeros(t.size, dtype=bool)
        seen: set[tuple[str, int]] = set()
        for i in range(t.size):  # the pushed events only, never the history
            key = (rid[i], int(ad[i]))
            if key in seen or (known[i] and bool(np.any((old.rid == key[0]) & (old.ad == key[1])))):
                fresh[i] = False
            seen.add(key)
        if not fresh.any():
            return 0
        parts = [t[fresh], rid[fresh], ad[fresh], click[fresh]]
        if old is not None:
            parts = [np.concatenate([a, b]) for a, b in zip((old.t, old.rid, old.ad, old.click), parts)]
        history = _sorted_history(*parts).since(cutoff)
        if history is None:
            self._users.pop(user, None)
        else:
            self._users[user] = history
        return int(fresh.sum())

    def _sweep(self, cutoff: int) -> None:
        """Drop every user's events older than ``cutoff`` (and users left without any)."""
        for user in list(self._users):
            kept = self._users[user].since(cutoff)
            if kept is None:
                del self._users[user]
            else:
                self._users[user] = kept
        self._swept = self._watermark

    # ----- reads -------------------------------------------------------------------------------------------
    def columns(self, user_ids: np.ndarray, event_us: np.ndarray) -> dict[str, "pa.Array"]:
        """The fresh columns (``fresh_types``: same names, order and types as ``fresh_behaviour``) for
        requests of ``user_ids`` at ``event_us`` (µs since the epoch, UTC), in request order."""
        import pyarrow as pa

        user_ids = np.asarray(user_ids, dtype=np.int64)
        event_us = np.asarray(event_us, dtype=np.int64)
        if user_ids.shape != event_us.shape or user_ids.ndim != 1:
            raise ValueError("columns: user_ids and event_us must be 1-d arrays of the same length")
        if user_ids.size == 0:
            return {name: pa.array([], type=typ) for name, typ in self._types.items()}
        keys, inverse = np.unique(np.stack([user_ids, event_us], axis=1), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        m, L = keys.shape[0], self._L
        item_ad = np.full((m, L), PAD_AD_ID, dtype=np.int64)
        item_t = np.zeros((m, L), dtype=np.int64)  # PAD_CLICK_TIME: the epoch
        length = np.zeros(m, dtype=np.int32)
        counters = {name: np.zeros(m, dtype=np.int64) for name in self._recent}
        with self._lock:
            bounds = np.flatnonzero(np.diff(keys[:, 0])) + 1
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, m]):
                history = self._users.get(int(keys[lo, 0])) if hi > lo else None
                if history is not None:
                    self._fill(history, keys[lo:hi, 1], slice(lo, hi), item_ad, item_t, length, counters)
            real = np.arange(L)[None, :] < length[:, None]
            item_cat = np.full((m, L), PAD_CATEGORY, dtype=object)
            item_cat[real] = self._categories(item_ad[real], item_t[real])
        flat = np.arange(0, m * L + 1, L, dtype=np.int32)
        out = {
            SEQUENCE_ITEMS: pa.ListArray.from_arrays(flat, pa.array(item_ad.reshape(-1))),
            SEQUENCE_CATEGORIES: pa.ListArray.from_arrays(flat, pa.array(item_cat.reshape(-1), pa.string())),
            SEQUENCE_TIMES: pa.ListArray.from_arrays(flat, pa.array(item_t.reshape(-1)).cast(TIMESTAMP)),
            SEQUENCE_LENGTH: pa.array(length),
            **{name: pa.array(values) for name, values in counters.items()},
        }
        index = pa.array(inverse.astype(np.int64))
        return {name: out[name].take(index).cast(typ) for name, typ in self._types.items()}

    def _fill(self, h: _History, at: np.ndarray, rows: slice, item_ad: np.ndarray, item_t: np.ndarray,
              length: np.ndarray, counters: dict[str, np.ndarray]) -> None:
        """One user's rows ``rows`` (request times ``at``): the sequence and the counters, vectorised."""
        end = np.searchsorted(h.t, at, side="left")  # events strictly before each request
        clicks_before = np.r_[0, np.cumsum(h.click)]
        for w, (imp_name, click_name) in zip(self._windows_us, zip(self._recent[::2], self._recent[1::2])):
            start = np.searchsorted(h.t, at - w, side="left")
            counters[imp_name][rows] = end - start
            counters[click_name][rows] = clicks_before[end] - clicks_before[start]
        ci = np.flatnonzero(h.click)
        if ci.size == 0:
            return  # no click: length 0, all padding
        ct = h.t[ci]
        k = np.searchsorted(ct, at, side="left")
        first = np.maximum(np.searchsorted(ct, at - self._ttl_us, side="left"), k - self._L)
        n = (k - first).astype(np.int32)
        length[rows] = n
        pos = k[:, None] - 1 - np.arange(self._L)[None, :]  # newest first
        real = np.arange(self._L)[None, :] < n[:, None]
        picked = ci[np.where(real, pos, 0)]
        item_ad[rows] = np.where(real, h.ad[picked], PAD_AD_ID)
        item_t[rows] = np.where(real, h.t[picked], 0)

    def stats(self) -> dict[str, Any]:
        """Users and events held, the newest event time seen (µs) and the catalogue's rows."""
        with self._lock:
            return {"users": len(self._users), "events": int(sum(h.t.size for h in self._users.values())),
                    "watermark_us": int(self._watermark), "ads": int(self._ads[0].size)}


def add_fresh_columns(settings: "Settings", table: "pa.Table", behaviour: BehaviourState | None
                      ) -> tuple["pa.Table", dict[str, Any] | None]:
    """With ``features.fresh_behaviour``: ``table`` (online rows with ``user_id`` and ``event_time``) with
    the fresh columns (from ``behaviour``, else from the offline log), and what the summary records
    (source, seconds); unchanged and None when it is off."""
    import pyarrow as pa

    if not settings.features.fresh_behaviour:
        return table, None
    started = time.perf_counter()
    if behaviour is not None:
        n = table.num_rows
        users = table.column("user_id").to_numpy() if n else np.zeros(0, np.int64)
        times = table.column("event_time").cast(TIMESTAMP).cast(pa.int64()).to_numpy() if n else np.zeros(0, np.int64)
        columns, source = behaviour.columns(users, times), "state"
    else:
        columns, source = fresh_behaviour(settings, table), "log"
    return with_fresh_behaviour(table, columns), {"source": source,
                                                  "seconds": round(time.perf_counter() - started, 4)}


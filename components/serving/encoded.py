"""The scoring service's fast path: a request's model inputs gathered from entity rows encoded in advance.

Why: the generic path (``online_rows.online_feature_rows`` then ``FeatureEncoders.encode_numpy``) builds an Arrow
table of about a hundred columns and encodes about seventy of them for every request. Each column costs tens of
microseconds whatever its length, so one user and a hundred ads paid about 8 ms before the forward pass. Here
every view of the warm online store (``readers.WarmReader``) is encoded once per (model, store) with the
model's own encoders; a request then gathers integer rows per view with the same point-in-time rule
(``online_rows.served_by_time``), encodes the few columns that belong to the request (ids, slot, position), the
user's one row (behaviour sequence and counters) and the pair similarities, and fills the batch. The encoders
are element-wise, so "encode the store, then gather" equals "gather, then encode". The batch is the generic
path's, value for value: tests/code/serving/test_service.py compares them on known, unknown, expired and
freshly pushed cases, and the scores.

:meth:`EncodedSnapshot.build` raises :class:`Unsupported` for a model that reads a column this path does not
know; the service then uses the generic path for that model.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from components.training.field_encoders import SEQUENCE_ITEMS, SEQUENCE_LENGTH, SEQUENCE_PREFIX

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings

REQUEST_COLUMNS = ("user_id", "ad_id", "slot", "position")
SEE_PREFIX = "see_"
RECENT_PREFIX = "user_recent__"
SEMANTIC_PREFIX = "ad_semantic_id__"
US = 1_000_000


class Unsupported(ValueError):
    """The model reads a column the fast path does not build."""


@dataclass
class EncodedView:
    """One view of the warm store encoded for one model: per key, the codes of the view's columns the model
    reads (``cat`` / ``num``, an extra all-zero last row for "no row": a null encodes as 0), which slots of
    the batch they fill, the keys' event timestamps (µs) and the view's TTL."""

    name: str
    entity: str
    ttl_us: int | None
    index: Any
    stamps_us: np.ndarray
    cat_slots: list[int]
    cat: np.ndarray
    num_slots: list[int]
    num: np.ndarray

    def positions(self, keys: Any, event_us: int) -> tuple[np.ndarray, np.ndarray]:
        """Row of each key in this view (the zero row when it may not be served) and whether it is served:
        the store has it, stamped no later than the request and, with a TTL, not expired."""
        pos = self.index.get_indexer(keys)
        found = pos >= 0
        stamp = np.where(found, self.stamps_us[np.maximum(pos, 0)] if len(self.stamps_us) else 0, 0)
        served = found & (stamp > 0) & (stamp <= event_us)
        if self.ttl_us is not None:
            served &= stamp >= event_us - self.ttl_us
        return np.where(served, pos, len(self.stamps_us)), served


def _with_zero_row(codes: list[np.ndarray], n: int) -> np.ndarray:
    out = np.zeros((n + 1, len(codes)), dtype=np.int64)
    for j, c in enumerate(codes):
        out[:n, j] = c
    return out


@dataclass
class FastRows:
    """What one request's fast path produced: the batch, the flags and what the objective may read."""

    batch: dict[str, np.ndarray]
    user_known: bool
    ad_known: np.ndarray
    raw: dict[str, np.ndarray]
    seconds_lookup: float
    seconds_request: float


class EncodedSnapshot:
    """The warm store encoded for one model (see the module docstring)."""

    def __init__(self, settings: "Settings", trained: Any, reader: Any, similarity: Any) -> None:
        self.settings, self.trained, self.reader, self.similarity = settings, trained, reader, similarity
        enc = trained.encoders
        self.encoders = enc
        self.cat_names = [c.name for c in enc.categorical]
        self.num_names = [n.name for n in enc.numeric]
        self.fresh = settings.features.fresh_behaviour
        specs = {s.name: s for s in reader.specs}
        self.user_views = [s.name for s in reader.specs if s.entity == "user"]
        self.ad_views = [s.name for s in reader.specs if s.entity == "ad"]
        self.interest = [s for s in reader.specs if s.attribute]
        self.views: dict[str, EncodedView] = {}
        wanted: dict[str, tuple[list[int], list[int]]] = {name: ([], []) for name in specs}
        self.user_row_num: list[int] = []
        self.see_num: list[int] = []
        self.code_cat: list[int] = []
        self.code_num: list[int] = []
        for kind, names in (("cat", self.cat_names), ("num", self.num_names)):
            for j, name in enumerate(names):
                self._place(kind, j, name, specs, wanted)
        for name, (cats, nums) in wanted.items():
            if cats or nums or specs[name].entity in ("user", "ad"):
                self.views[name] = self._encode_view(specs[name], cats, nums)
        self._encode_codes()

    # ----- building -------------------------------------------------------------------------------------
    def _place(self, kind: str, j: int, name: str, specs: dict[str, Any],
               wanted: dict[str, tuple[list[int], list[int]]]) -> None:
        view = name.split("__", 1)[0] if "__" in name else None
        if kind == "cat" and name in REQUEST_COLUMNS:
            return
        if name.startswith(SEMANTIC_PREFIX):
            (self.code_cat if kind == "cat" else self.code_num).append(j)
        elif kind == "num" and (name.startswith(RECENT_PREFIX) or name.startswith(SEQUENCE_PREFIX)):
            self.user_row_num.append(j)
        elif kind == "num" and name.startswith(SEE_PREFIX) and self.similarity is not None \
                and name not in self.similarity.skipped:
            self.see_num.append(j)
        elif view in specs and name.split("__", 1)[1] in specs[view].feature_names:
            wanted[view][0 if kind == "cat" else 1].append(j)
        else:
            raise Unsupported(f"the fast path does not build {name!r}")

    def _encode_view(self, spec: Any, cats: list[int], nums: list[int]) -> EncodedView:
        snap = self.reader.views[spec.name]
        enc = self.encoders
        n = len(snap.stamps)
        cat = _with_zero_row([enc.categorical[j].encode(snap.values.column(self.cat_names[j])) for j in cats], n)
        num = _with_zero_row([enc.numeric[j].encode(snap.values.column(self.num_names[j])) for j in nums], n)
        ttl = None if spec.ttl is None else int(spec.ttl.total_seconds() * US)
        return EncodedView(name=spec.name, entity=spec.entity, ttl_us=ttl, index=snap.index,
                           stamps_us=np.asarray(snap.stamps, np.int64) * US, cat_slots=cats, cat=cat,
                           num_slots=nums, num=num)

    def _encode_codes(self) -> None:
        """The semantic-ID codes of every coded ad, encoded (the similarity inputs' codes table)."""
        import pyarrow as pa

        codes = None if self.similarity is None else self.similarity.codes
        if (self.code_cat or self.code_num) and codes is None:
            raise Unsupported("the model reads semantic IDs but there are no codes")
        self.code_ids = np.zeros(0, np.int64) if codes is None else self.similarity.code_ids
        encoded = []
        for kind, slots in (("cat", self.code_cat), ("num", self.code_num)):
            for j in slots:
                name = (self.cat_names if kind == "cat" else self.num_names)[j]
                column = name[len(SEMANTIC_PREFIX):]
                if column not in codes.column_names:
                    raise Unsupported(f"the codes have no column {column!r}")
                dtype = np.int64 if column == "simhash" else np.int32
                values = codes.column(column).to_numpy().astype(dtype)[self.similarity.code_order]
                encoder = (self.encoders.categorical if kind == "cat" else self.encoders.numeric)[j]
                encoded.append(encoder.encode(pa.array(values, type=pa.from_numpy_dtype(dtype))))
        self.codes = _with_zero_row(encoded, len(self.code_ids))

    # ----- one request ----------------------------------------------------------------------------------
    def rows(self, request: Any, behaviour: Any, now: dt.datetime | None = None) -> FastRows:
        """The batch of ``request`` (a ``service.ScoreRequest``) at its ``event_time`` (default now)."""
        import time

        import pyarrow as pa

        started = time.perf_counter()
        ads = np.asarray(request.ads, dtype=np.int64)
        n = ads.shape[0]
        when = request.event_time or now or dt.datetime.now(dt.timezone.utc)
        when = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
        event_us = int(pa.scalar(when, pa.timestamp("us", tz="UTC")).value)
        cat = np.zeros((n, len(self.cat_names)), dtype=np.int64)
        num = np.zeros((n, len(self.num_names)), dtype=np.int64)
        raw: dict[str, np.ndarray] = {}
        user_known = self._fill_entity(self.user_views, np.array([request.user_id]), event_us, cat, num, raw, n)
        ad_known = self._fill_entity(self.ad_views, ads, event_us, cat, num, raw, n)
        self._fill_interest(request.user_id, event_us, cat, num, raw, n)
        self._fill_request(request, ads, cat)
        lookup = time.perf_counter() - started
        user_row = self._user_row(request.user_id, event_us, behaviour)
        batch = {"cat": cat, "num": num}
        for j in self.user_row_num:
            num[:, j] = self.encoders.numeric[j].encode(user_row.column(self.num_names[j]))[0]
        if self.encoders.sequence is not None:
            batch.update({k: np.repeat(v, n, axis=0) for k, v in self.encoders.encode_sequence(user_row).items()})
        self._fill_similarities(request.user_id, ads, event_us, user_row, num, raw)
        pos = np.minimum(np.searchsorted(self.code_ids, ads), max(len(self.code_ids) - 1, 0))
        coded = (self.code_ids[pos] == ads) if len(self.code_ids) else np.zeros(n, dtype=bool)
        rows = self.codes[np.where(coded, pos, len(self.code_ids))]
        for k, j in enumerate(self.code_cat):
            cat[:, j] = rows[:, k]
        for k, j in enumerate(self.code_num, start=len(self.code_cat)):
            num[:, j] = rows[:, k]
        return FastRows(batch=batch, user_known=bool(user_known[0]), ad_known=ad_known, raw=raw,
                        seconds_lookup=lookup, seconds_request=time.perf_counter() - started - lookup)

    def _fill_entity(self, views: list[str], keys: np.ndarray, event_us: int, cat: np.ndarray, num: np.ndarray,
                     raw: dict[str, np.ndarray], n: int) -> np.ndarray:
        """Fill the columns of one entity's views; returns per key whether any of its views served a row."""
        known = np.zeros(len(keys), dtype=bool)
        for name in views:
            view = self.views[name]
            pos, served = view.positions(keys, event_us)
            known |= served
            if len(keys) != n:  # the user: one key for every row
                pos = np.repeat(pos, n)
            cat[:, view.cat_slots] = view.cat[pos]
            num[:, view.num_slots] = view.num[pos]
            raw[f"__pos__{name}"] = pos
        return known

    def _fill_interest(self, user_id: int, event_us: int, cat: np.ndarray, num: np.ndarray,
                       raw: dict[str, np.ndarray], n: int) -> None:
        """The user x attribute views, keyed on the user and the attribute of each ad's served profile."""
        import pyarrow as pa

        from components.store.interest import interest_keys

        if not self.interest:
            return
        profile = self.reader.views["ad_profile"].values
        pos = raw["__pos__ad_profile"]
        index = pa.array(pos, mask=pos >= len(self.views["ad_profile"].stamps_us))  # not served: no attribute
        for spec in (s for s in self.interest if s.name in self.views):
            values = profile.column(f"ad_profile__{spec.attribute}").take(index)
            keys = interest_keys(pa.array(np.full(n, user_id, dtype=np.int64)), values).fill_null("")
            view = self.views[spec.name]
            rows, _ = view.positions(np.asarray(keys.to_pylist(), dtype=object), event_us)
            cat[:, view.cat_slots] = view.cat[rows]
            num[:, view.num_slots] = view.num[rows]
            raw[f"__pos__{spec.name}"] = rows

    def _fill_request(self, request: Any, ads: np.ndarray, cat: np.ndarray) -> None:
        import pyarrow as pa

        n = len(ads)
        slot = None if request.slot is None else str(request.slot)
        positions = (pa.array(np.asarray(request.positions, dtype=np.int32)) if request.positions is not None
                     else pa.array(np.ones(n, dtype=np.int32)))
        columns = {"user_id": (pa.array([request.user_id], pa.int64()), True),
                   "ad_id": (pa.array(ads), False), "slot": (pa.array([slot], pa.string()), True),
                   "position": (positions, False)}
        for j, name in enumerate(self.cat_names):
            if name in columns:
                values, single = columns[name]
                codes = self.encoders.categorical[j].encode(values)
                cat[:, j] = codes[0] if single else codes

    def _user_row(self, user_id: int, event_us: int, behaviour: Any) -> "pa.Table":
        """The user's one row: ``event_time``, the click sequence and the ``user_recent__`` counters (fresh:
        from ``behaviour``; else the served ``user_sequence`` view)."""
        import pyarrow as pa

        columns: dict[str, Any] = {"user_id": pa.array([user_id], pa.int64()),
                                   "event_time": pa.array([event_us], pa.int64()).cast(pa.timestamp("us", tz="UTC"))}
        if self.fresh:
            if behaviour is None:
                raise Unsupported("fresh behaviour features without a behaviour state")
            columns.update(behaviour.columns(np.array([user_id], np.int64), np.array([event_us], np.int64)))
        elif "user_sequence" in self.reader.views:
            view = self.views["user_sequence"]
            pos, served = view.positions(np.array([user_id]), event_us)
            values = self.reader.views["user_sequence"].values
            taken = values.take(pa.array([int(pos[0]) if served[0] else 0], mask=[not bool(served[0])]))
            columns.update(zip(taken.column_names, taken.columns))
        return pa.table(columns)

    def _fill_similarities(self, user_id: int, ads: np.ndarray, event_us: int, user_row: "pa.Table",
                           num: np.ndarray, raw: dict[str, np.ndarray]) -> None:
        """``see_*`` as add_similarity_features computes them (float32, null where undefined), encoded."""
        import pyarrow as pa

        from components.representations.similarity import (gather_rows, graph_similarity, mean_vectors,
                                                             rowwise_cosine, sequence_matrix)

        if not self.see_num:
            return
        n = len(ads)
        sims: dict[str, np.ndarray] = {}
        if SEQUENCE_ITEMS in user_row.column_names:
            one = user_row.select([c for c in (SEQUENCE_ITEMS, SEQUENCE_LENGTH) if c in user_row.column_names])
            seq = sequence_matrix(one, self.settings.representations.interest_last_n)  # the one user's row
            same = np.zeros(n, dtype=np.int64)
            for space, store in self.similarity.stores.items():
                # similarity.interest_similarity for n rows sharing one sequence: its unique step gives this row
                means, defined = mean_vectors(seq, store)
                ad_pos, ad_ok = gather_rows(store, ads)
                vectors = store.vectors if store.vectors.ndim == 2 and store.vectors.shape[0] else \
                    np.zeros((1, means.shape[1]), np.float32)
                sims[f"see_{space}"] = rowwise_cosine(means, same, vectors, ad_pos, defined[same] & ad_ok)
        if "see_graph" not in self.similarity.skipped:
            day = np.full(n, event_us // (86_400 * US), dtype=np.int64)
            sims["see_graph"] = graph_similarity(self.settings, np.full(n, user_id, np.int64), ads, day,
                                                 load=self.similarity.graph)[0]
        for j in self.see_num:
            name = self.num_names[j]
            if name not in sims:
                raise Unsupported(f"the fast path cannot compute {name!r}")
            values = sims[name]
            num[:, j] = self.encoders.numeric[j].encode(pa.array(values, type=pa.float32(), mask=~np.isfinite(values)))
            raw[name] = np.where(np.isfinite(values), values.astype(np.float64), np.nan)

    def raw_column(self, rows: FastRows, name: str) -> np.ndarray:
        """float64 values of an online-row column (NaN for null), for the objective: a view column or a
        similarity; :class:`Unsupported` for anything else."""
        import pyarrow as pa

        if name in rows.raw and not name.startswith("__"):
            return rows.raw[name]
        view = name.split("__", 1)[0] if "__" in name else None
        pos = rows.raw.get(f"__pos__{view}")
        if pos is None or view not in self.reader.views or name not in self.reader.views[view].values.column_names:
            raise Unsupported(f"the objective's column {name!r} is not built by the fast path")
        column = self.reader.views[view].values.column(name)
        size = len(self.views[view].stamps_us)
        taken = column.take(pa.array(pos, mask=pos >= size))
        return taken.cast(pa.float64()).fill_null(float("nan")).to_numpy(zero_copy_only=False)

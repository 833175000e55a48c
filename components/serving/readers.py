"""Readers of the online store: where online rows (components/serving/online_rows.py) get each entity's
feature values and their event timestamps.

- :class:`FeastReader`: one Feast ``get_online_features`` call per entity kind and request batch (the
  ``adsrec score`` batch path). Feast's Python online read costs tens of milliseconds even for one user and
  a hundred ads (docs/benchmarks.md, "Serving latency"), too slow for a service.
- :class:`WarmReader`: the whole online store read once through the same Feast call (Feast stays the
  store of record) into memory, then looked up per request with a vectorised index (pandas
  ``Index.get_indexer``) and Arrow ``take``: microseconds. The ``adsrec serve`` service
  (components/serving/service.py) holds one and loads a new one when ``adsrec materialize`` rewrites the
  store (:func:`online_stamp` changes). The keys to read are the view parquet's keys with an event timestamp in
  the range the materialisation read (``online_store.read_start``), so the snapshot holds exactly what was
  materialised; tests/code/serving checks that both readers give the same rows.

Both implement ``fetch(specs, key, ids) -> (values, stamps)``: for the distinct ``ids`` of one entity, the
values of every feature of ``specs`` as Arrow arrays (the views' parquet types, null where the store has no
row) and per view the event timestamp in seconds of each id's row (0 when none). Feast and pandas are
imported inside the functions.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from components.serving.online_store import (OnlineStoreMissing, core_view_specs, online_db_path, online_state,
                                             read_start)

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings

FETCH_CHUNK = 5_000  # keys per Feast call while loading a snapshot


def feast_fetch(store: Any, specs: list[Any], key: str, ids: np.ndarray
                ) -> tuple[dict[str, "pa.Array"], dict[str, np.ndarray]]:
    """One ``get_online_features`` call for the distinct ``ids`` of one entity (module docstring)."""
    import pyarrow as pa

    refs = [f"{spec.name}:{name}" for spec in specs for name in spec.feature_names]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            response = store.get_online_features(features=refs, entity_rows={key: ids.tolist()},
                                                 full_feature_names=True)
    except Exception as exc:  # Feast raises several kinds for a view or feature it does not know
        raise OnlineStoreMissing(
            f"the online store cannot serve the current feature views ({type(exc).__name__}: {exc}); "
            "re-run `adsrec materialize`"
        ) from exc
    data = response.to_dict(include_event_timestamps=True)
    values: dict[str, pa.Array] = {}
    stamps: dict[str, np.ndarray] = {}
    for spec in specs:
        for name, typ in spec.fields:
            col = f"{spec.name}__{name}"
            values[col] = pa.array(data[col], type=typ)
        first = f"{spec.name}__{spec.feature_names[0]}__ts"
        stamps[spec.name] = np.asarray(data[first], dtype=np.int64)
    return values, stamps


@dataclass
class FeastReader:
    """Reads Feast's online store per call (see the module docstring)."""

    store: Any
    specs: list[Any]
    state: dict[str, Any]

    @classmethod
    def open(cls, settings: "Settings") -> "FeastReader":
        """Raises :class:`OnlineStoreMissing` before the first materialisation, before loading Feast."""
        state = online_state(settings)
        import feast  # noqa: F401  - loaded before a caller's clock starts

        from components.store.feast_store import feature_store

        return cls(store=feature_store(settings, apply=False), specs=core_view_specs(settings), state=state)

    def fetch(self, specs: list[Any], key: str, ids: np.ndarray) -> tuple[dict[str, "pa.Array"], dict[str, np.ndarray]]:
        return feast_fetch(self.store, specs, key, ids)


def online_stamp(settings: "Settings") -> tuple[int, int]:
    """(mtime ns, size) of the live online store file: changes when ``adsrec materialize`` replaces it."""
    try:
        st = os.stat(online_db_path(settings))
    except FileNotFoundError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


@dataclass
class ViewSnapshot:
    """One view's rows as the online store serves them: ``index`` (pandas Index of the keys), ``values``
    (an Arrow table of the ``<view>__<feature>`` columns aligned with the index) and ``stamps`` (event
    timestamps in seconds)."""

    index: Any
    values: "pa.Table"
    stamps: np.ndarray


@dataclass
class WarmReader:
    """The online store held in memory (see the module docstring)."""

    specs: list[Any]
    state: dict[str, Any]
    views: dict[str, ViewSnapshot]
    stamp: tuple[int, int]
    seconds: float
    keys: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, settings: "Settings") -> "WarmReader":
        """Read every materialised key of every core view through Feast. Raises
        :class:`OnlineStoreMissing` before the first materialisation."""
        started = time.perf_counter()
        stamp = online_stamp(settings)
        feast = FeastReader.open(settings)
        as_of = dt.datetime.fromisoformat(feast.state["as_of"])
        views: dict[str, ViewSnapshot] = {}
        for spec in feast.specs:
            keys = materialised_keys(spec, as_of)
            views[spec.name] = snapshot_view(feast, spec, keys)
        return cls(specs=feast.specs, state=feast.state, views=views, stamp=stamp,
                   seconds=round(time.perf_counter() - started, 3),
                   keys={name: len(v.stamps) for name, v in views.items()})

    def fetch(self, specs: list[Any], key: str, ids: np.ndarray) -> tuple[dict[str, "pa.Array"], dict[str, np.ndarray]]:
        import pyarrow as pa

        values: dict[str, pa.Array] = {}
        stamps: dict[str, np.ndarray] = {}
        for spec in specs:
            view = self.views[spec.name]
            pos = view.index.get_indexer(ids) if len(ids) else np.zeros(0, np.int64)
            found = pos >= 0
            taken = view.values.take(pa.array(pos.astype(np.int64), mask=~found))  # one take for all columns
            for col, arr in zip(taken.column_names, taken.columns):
                values[col] = arr
            stamps[spec.name] = np.where(found, view.stamps[np.maximum(pos, 0)] if len(view.stamps) else 0, 0)
        return values, stamps


def materialised_keys(spec: Any, as_of: dt.datetime) -> np.ndarray:
    """The keys of ``spec``'s parquet with a row the materialisation as of ``as_of`` read (event timestamp in
    ``[read_start, as_of]``), sorted."""
    from components.store.sql import connect, sql_list, sql_ts, view_globs

    con = connect()
    try:
        rows = con.execute(
            f"SELECT DISTINCT {spec.join_key} AS k FROM read_parquet({sql_list(view_globs(spec.path))}, hive_partitioning = false, "
            f"union_by_name = true) WHERE event_timestamp >= {sql_ts(read_start(spec, as_of))} "
            f"AND event_timestamp <= {sql_ts(as_of)} AND {spec.join_key} IS NOT NULL ORDER BY k"
        ).fetchnumpy()["k"]
    finally:
        con.close()
    return np.asarray(rows, dtype=object if rows.dtype.kind in "OUS" else np.int64)


def snapshot_view(reader: FeastReader, spec: Any, keys: np.ndarray) -> ViewSnapshot:
    """Every key of ``keys`` read from Feast in chunks of ``FETCH_CHUNK`` into one :class:`ViewSnapshot`;
    keys the store does not hold keep stamp 0 (the reader then serves no row for them)."""
    import pandas as pd
    import pyarrow as pa

    parts: dict[str, list[pa.Array]] = {f"{spec.name}__{n}": [] for n in spec.feature_names}
    stamps: list[np.ndarray] = []
    for start in range(0, len(keys), FETCH_CHUNK):
        chunk = keys[start:start + FETCH_CHUNK]
        values, got = reader.fetch([spec], spec.join_key, chunk)
        for col in parts:
            parts[col].append(values[col])
        stamps.append(got[spec.name])
    columns = pa.table({col: (pa.concat_arrays(arrs) if arrs else pa.array([], type=typ))
                        for (col, arrs), (_, typ) in zip(parts.items(), spec.fields)}).combine_chunks()
    held = np.concatenate(stamps) if stamps else np.zeros(0, np.int64)
    return ViewSnapshot(index=pd.Index(keys), values=columns, stamps=held)

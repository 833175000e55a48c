"""Online feature rows for (user, ad) requests: the columns of a training-set row (labels aside), read from
the Feast online store under the point-in-time rule (docs/serving.md, "Online rows").

For each request :func:`online_feature_rows` gives the impression's contract columns
(components/serving/requests.py), ``<view>__<feature>`` from ``get_online_features`` (one call per entity
for the distinct ids of all rows), then the SEE similarities and semantic-ID codes from
``components.representations.similarity`` (the function the training set uses). Feast's online read does
not apply view TTLs, so the point-in-time rule is applied here against each request's ``event_time``: a
view's value is served only if its event timestamp is ``<= event_time`` and, for views with a TTL,
``>= event_time - ttl`` (the same rule as components/training/training_set.py). Two flags,
``user_known`` / ``ad_known``, say whether the online store served any row for the entity; unknown
entities still score (the encoders map them to the unknown id). The user x attribute interest views are
read by their composite key, built from the request's user and the ``ad_profile__<attribute>`` served
for it (components/store/interest.py), the training set's rule.

Heavy libraries (Feast, pandas) are imported inside the functions.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from components.serving.requests import as_chunked, normalize_requests

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings
    from components.serving.behaviour_state import BehaviourState

USER_KNOWN = "user_known"
AD_KNOWN = "ad_known"
FLAG_COLUMNS = (USER_KNOWN, AD_KNOWN)
METADATA_KEY = b"adsrec.serving"


@dataclass(frozen=True)
class EntityColumns:
    """What the online store served for one entity's views: the ``<view>__<feature>`` columns (null where
    withheld), whether any view served each request (``known``), per view the counts of withheld values,
    and the seconds spent in Feast."""

    columns: dict[str, Any]
    known: np.ndarray
    withheld: dict[str, dict[str, int]]
    seconds: float


def served_by_time(stamps: np.ndarray, event_us: np.ndarray, ttl: dt.timedelta | None
                   ) -> tuple[np.ndarray, dict[str, int]]:
    """The point-in-time rule for one view: which requests may see its row (event timestamp ``stamps`` in
    seconds, 0 when the store has none), and how many were withheld because the store had no row
    (``not_in_store``), the row is newer than the request (``after_request``) or older than its TTL
    (``expired``)."""
    n = event_us.shape[0]
    ts_us = stamps * 1_000_000
    found = stamps > 0
    future = found & (ts_us > event_us)  # not known yet at the request's time
    expired = found & ~future & (
        (ts_us < event_us - int(ttl.total_seconds() * 1_000_000)) if ttl is not None
        else np.zeros(n, dtype=bool)
    )
    served = found & ~future & ~expired
    return served, {"not_in_store": int((~found).sum()), "after_request": int(future.sum()),
                    "expired": int(expired.sum())}


def entity_columns(reader: Any, entity_specs: list[Any], key: str, ids: np.ndarray,
                   event_us: np.ndarray) -> EntityColumns:
    """The columns of ``entity_specs`` (the views of one entity, keyed by ``key``) for requests with
    entity ids ``ids`` at times ``event_us``: one ``reader.fetch`` for the distinct ids
    (components/serving/readers.py), then per view the values :func:`served_by_time` allows, in request
    order."""
    import pyarrow as pa

    uniq, inverse = np.unique(ids, return_inverse=True)
    t = time.perf_counter()
    if uniq.size and entity_specs:  # an entity may have no view with columns (no user profile, ...)
        values, stamps = reader.fetch(entity_specs, key, uniq)
    else:
        values = {f"{s.name}__{f}": pa.array([], type=typ) for s in entity_specs for f, typ in s.fields}
        stamps = {s.name: np.zeros(0, np.int64) for s in entity_specs}
    seconds = time.perf_counter() - t
    columns: dict[str, Any] = {}
    known = np.zeros(ids.shape[0], dtype=bool)
    withheld: dict[str, dict[str, int]] = {}
    for spec in entity_specs:
        served, withheld[spec.name] = served_by_time(stamps[spec.name][inverse], event_us, spec.ttl)
        known |= served
        index = pa.array(inverse.astype(np.int64), mask=~served)  # null index -> null features
        names = [f"{spec.name}__{name}" for name in spec.feature_names]
        taken = pa.table({col: values[col] for col in names}).take(index)  # one take for the view's columns
        columns.update(zip(names, taken.columns))
    return EntityColumns(columns=columns, known=known, withheld=withheld, seconds=seconds)


def _interest_columns(reader: Any, specs: list[Any], columns: dict[str, Any], event_us: np.ndarray,
                      withheld: dict[str, dict[str, int]]) -> float:
    """Add the user x attribute interest views' columns to ``columns``: each view is read by its composite
    key from the request's user and the ``ad_profile__<attribute>`` just served (the training set's rule,
    components/store/interest.py); a null attribute reads no row. Returns the seconds spent in Feast."""
    from components.store.interest import interest_keys

    seconds = 0.0
    for spec in (s for s in specs if s.attribute):
        keys = interest_keys(as_chunked(columns["user_id"]), as_chunked(columns[f"ad_profile__{spec.attribute}"]))
        ids = np.asarray(keys.fill_null("").to_pylist() if len(keys) else [], dtype=object)
        got = entity_columns(reader, [spec], spec.join_key, ids, event_us)
        columns.update(got.columns)
        withheld.update(got.withheld)
        seconds += got.seconds
    return seconds


def with_serving_summary(table: "pa.Table", summary: dict[str, Any]) -> "pa.Table":
    """``table`` with ``summary`` as JSON in its schema metadata (what :func:`serving_summary` reads)."""
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(summary).encode()
    return table.replace_schema_metadata(metadata)


def online_feature_rows(
    settings: "Settings",
    requests: "pa.Table",
    *,
    now: dt.datetime | None = None,
    representations: bool | None = None,
    reader: Any = None,
    similarity: Any = None,
    behaviour: "BehaviourState | None" = None,
) -> "pa.Table":
    """Online feature rows for ``requests`` (see :func:`normalize_requests` for their columns).

    Returns one row per request, in request order, with the columns of a training-set row without
    labels: ``event_time, request_id, user_id, ad_id, slot, position, exposure_index``, every
    ``<view>__<feature>`` of the ``training`` service (same names and Arrow types as
    ``train.parquet``), then, when the representations exist (``representations=None``) or when asked,
    ``see_text, see_visual, see_graph`` and ``ad_semantic_id__*``; finally the flags ``user_known`` /
    ``ad_known`` (bool: the online store served a row of any of the entity's views). A summary
    (unknown entities, values withheld by the point-in-time rule, seconds) is in the schema metadata
    (:func:`serving_summary`). Raises :class:`OnlineStoreMissing` before the first materialisation.

    ``reader``: where the entity features come from (components/serving/readers.py): Feast's online read
    per call when None (``FeastReader.open``), or a ``WarmReader`` held by a service. ``similarity``: the
    similarity inputs already loaded (``similarity_inputs.load_similarity_inputs``), loaded here when None.
    With ``features.fresh_behaviour`` the click sequence and ``user_recent__*`` counters come from
    ``behaviour`` (a :class:`BehaviourState`) when given, else from the offline impressions log."""
    import pyarrow as pa

    from components.serving.behaviour_state import add_fresh_columns
    from components.serving.readers import FeastReader
    from components.training.training_set import adds_similarities, feature_row_schema

    # Fails fast, before loading Feast, when nothing was materialised; the clock starts after the load.
    reader = reader if reader is not None else FeastReader.open(settings)
    state = reader.state
    started = time.perf_counter()
    base = normalize_requests(requests, now)
    n = base.num_rows
    specs = reader.specs
    schema = feature_row_schema(specs)
    event_us = base.column("event_time").cast(pa.int64()).to_numpy() if n else np.zeros(0, np.int64)

    columns: dict[str, Any] = {name: base.column(name) for name in base.column_names}
    known: dict[str, np.ndarray] = {}
    withheld: dict[str, dict[str, int]] = {}
    fetch_seconds = 0.0
    for entity, key in (("user", "user_id"), ("ad", "ad_id")):
        ids = base.column(key).to_numpy() if n else np.zeros(0, np.int64)
        got = entity_columns(reader, [s for s in specs if s.entity == entity], key, ids, event_us)
        columns.update(got.columns)
        known[entity] = got.known
        withheld.update(got.withheld)
        fetch_seconds += got.seconds
    fetch_seconds += _interest_columns(reader, specs, columns, event_us, withheld)
    arrays = [as_chunked(columns[f.name]) for f in schema]
    table = pa.Table.from_arrays([a if a.type == f.type else a.cast(f.type) for a, f in zip(arrays, schema)],
                                 schema=schema)
    table, fresh = add_fresh_columns(settings, table, behaviour)  # before the similarities, as in training

    similarity_seconds = 0.0
    if adds_similarities(settings, representations):
        from components.representations.similarity import add_similarity_features

        t = time.perf_counter()
        table = add_similarity_features(settings, table, similarity)
        similarity_seconds = time.perf_counter() - t
    table = table.append_column(USER_KNOWN, pa.array(known["user"], pa.bool_()))
    table = table.append_column(AD_KNOWN, pa.array(known["ad"], pa.bool_()))
    return with_serving_summary(table, {
        "rows": n,
        "unknown_users": int((~known["user"]).sum()),
        "unknown_ads": int((~known["ad"]).sum()),
        **distinct_entities(base),
        "withheld": withheld,
        "online_as_of": state.get("as_of"),
        "seconds": round(time.perf_counter() - started, 4),
        "seconds_feast": round(fetch_seconds, 4),
        "seconds_similarity": round(similarity_seconds, 4),
        "fresh_behaviour": fresh,
    })


def distinct_entities(base: "pa.Table") -> dict[str, int]:
    """Distinct users and ads among the requests (for the summary)."""
    n = base.num_rows
    return {f"distinct_{kind}s": int(np.unique(base.column(key).to_numpy()).size) if n else 0
            for kind, key in (("user", "user_id"), ("ad", "ad_id"))}


def serving_summary(table: "pa.Table") -> dict[str, Any]:
    """The summary :func:`online_feature_rows` put in the schema metadata (empty when absent)."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def model_input(rows: "pa.Table") -> "pa.Table":
    """``rows`` without the serving flags: exactly the training-set-row columns a scorer is given."""
    return rows.drop_columns([c for c in FLAG_COLUMNS if c in rows.column_names])

"""Online serving: the Feast online store, online feature rows for (user, ad) requests, and scoring them.

Three steps, each usable on its own (docs/serving.md):

- ``materialize_online(settings, end_day)``: the newest value of every entity in the ``training``
  service's views as of the END of ``end_day`` (``end_day + 1`` 00:00 UTC, inclusive, the point-in-time
  join's ``<=``) goes into Feast's SQLite online store. The store is rebuilt into a new file and swapped
  in (rename), so re-running a day gives the same store, going back to an earlier day gives exactly that
  day's store (no entity or value from a later day survives), and a reader never sees a half-written
  store. A record of what was materialised is kept in ``<feast_dir>/online_store.json``.
- ``online_feature_rows(settings, requests)``: for each request (``user_id``, ``ad_id`` and optional
  context), one row with the columns of a training-set row (labels aside): the impression's contract
  columns, ``<view>__<feature>`` from ``get_online_features`` (one call per entity for the distinct ids of
  all rows), then the SEE similarities and semantic-ID codes from ``components.representations.similarity`` (the
  function the training set uses). Feast's online read does not apply view TTLs, so the point-in-time
  rule is applied here against each request's ``event_time``: a view's value is served only if its
  event timestamp is ``<= event_time`` and, for views with a TTL, ``>= event_time - ttl`` (the same
  rule as components/training/training_set.py). Two flags, ``user_known`` / ``ad_known``, say whether the online
  store served any row for the entity; unknown entities still score (the encoders map them to the
  unknown id).
- ``score_requests(settings, requests, scorer)``: online rows plus one ``p_<task>`` column per task, from a
  ``components.training.artefact.TrainedModel`` (``.score(table)``) or an MLflow pyfunc (``.predict(DataFrame)``,
  e.g. ``components.registry.client.load_champion``).

Heavy libraries (Feast, torch, pandas) are imported inside the functions.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from components.schemas import IMPRESSIONS, TIMESTAMP, day_window
from components.storage import write_json_atomic

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings

STATE_FILE = "online_store.json"
ONLINE_DB = "online_store.db"
USER_KNOWN = "user_known"
AD_KNOWN = "ad_known"
FLAG_COLUMNS = (USER_KNOWN, AD_KNOWN)
METADATA_KEY = b"adsrec.serving"
REQUIRED_REQUEST_COLUMNS = ("user_id", "ad_id")
# Context a request may leave out, and what it gets then (docs/serving.md, "Requests").
DEFAULT_POSITION = 1
DEFAULT_EXPOSURE_INDEX = 1  # not a model input (components/training/encoders.py NOT_FEATURES); kept for the row shape
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class OnlineStoreMissing(FileNotFoundError):
    """No online store has been materialised for this home."""


# ----- materialisation ---------------------------------------------------------------------------------
def _core_specs(settings: "Settings") -> list[Any]:
    """The ``training`` service's view specs (the views a training-set row joins)."""
    from components.store.feast_store import views_module

    return views_module().view_specs(settings.home, settings.features.ttl_days)


def _online_db(settings: "Settings") -> Path:
    return settings.feast_dir.expanduser().resolve() / ONLINE_DB


def _state_path(settings: "Settings") -> Path:
    return settings.feast_dir.expanduser().resolve() / STATE_FILE


def online_state(settings: "Settings") -> dict[str, Any]:
    """What the last :func:`materialize_online` wrote (``as_of``, ``end_day``, rows per view, ...).

    Raises :class:`OnlineStoreMissing` (a ``FileNotFoundError``) when nothing was materialised yet."""
    path, db = _state_path(settings), _online_db(settings)
    if not path.is_file() or not db.is_file():
        raise OnlineStoreMissing(
            f"no online store materialised under {settings.feast_dir}: run `adsrec materialize` "
            "(or components.serving.online.materialize_online) first"
        )
    return json.loads(path.read_text())


def newest_feature_day(settings: "Settings") -> dt.date:
    """The newest day every core view has a feature partition for (the default day to materialise)."""
    specs = _core_specs(settings)
    return min(dt.date.fromisoformat(s.latest_partition.removeprefix("date=")) for s in specs)


def materialize_online(settings: "Settings", end_day: dt.date) -> dict[str, Any]:
    """Rebuild the Feast online store with every entity's newest feature values as of the end of
    ``end_day`` and return a summary: ``as_of``, ``views`` (view -> entities written and the
    ``start`` of the range read), ``entities``, ``seconds``.

    Per view Feast's ``materialize(start, as_of)`` picks the newest row per entity with event timestamp
    in ``[start, as_of]``: ``start`` is the epoch for views without a TTL (profiles) and ``as_of - ttl``
    for the others (an older row has expired for every request after ``as_of``). The rows go to a new
    SQLite file that replaces the live one by rename. Raises ``FileNotFoundError`` when a core view has
    no partition for ``end_day`` (build the day's features first)."""
    started = time.perf_counter()
    specs = _core_specs(settings)
    features_dir = settings.features_dir
    partition = f"date={end_day.isoformat()}"
    missing = [s.name for s in specs if not any((features_dir / s.name / partition).glob("*.parquet"))]
    if missing:
        raise FileNotFoundError(
            f"no feature partition for {end_day} in views {missing}: build the day's features first "
            f"(adsrec features --date {end_day})"
        )
    _, as_of = day_window(end_day)

    from feast import FeatureStore
    from feast.infra.online_stores.helpers import compute_table_id
    from feast.infra.online_stores.sqlite import SqliteOnlineStore
    from feast.repo_config import RepoConfig

    from components.store.feast_store import FEATURE_REPO, feature_store, repo_config_dict

    # Register the views (the registry is shared by the live and the new store).
    feature_store(settings, apply=True)
    applied = time.perf_counter()

    live = _online_db(settings)
    tmp = live.with_name(f".{live.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    config_dict = repo_config_dict(settings)
    config_dict["online_store"] = {"type": "sqlite", "path": str(tmp)}
    config = RepoConfig(**config_dict)
    config.repo_path = FEATURE_REPO
    store = FeatureStore(repo_path=str(FEATURE_REPO), config=config)
    views = [store.get_feature_view(s.name) for s in specs]
    # Tables of the new file (what `apply` creates in the live one), via the online store's own update.
    SqliteOnlineStore().update(config, tables_to_delete=[], tables_to_keep=views, entities_to_delete=[],
                               entities_to_keep=[], partial=False)
    groups: dict[dt.datetime, list[str]] = {}
    for spec in specs:
        start = EPOCH if spec.ttl is None else as_of - spec.ttl
        groups.setdefault(start, []).append(spec.name)
    try:
        with warnings.catch_warnings():
            # ibis (under Feast's DuckDB store) still calls duckdb's deprecated fetch_arrow_table().
            warnings.filterwarnings("ignore", message="fetch_arrow_table", category=DeprecationWarning)
            for start, names in groups.items():
                store.materialize(start_date=start, end_date=as_of, feature_views=names)
        import sqlite3

        conn = sqlite3.connect(tmp)
        try:
            counts = {
                v.name: int(conn.execute(
                    f'SELECT COUNT(DISTINCT entity_key) FROM "{compute_table_id(config.project, v)}"'
                ).fetchone()[0])
                for v in views
            }
        finally:
            conn.close()
        os.replace(tmp, live)  # readers see the old store or the new one, never half of one
    finally:
        tmp.unlink(missing_ok=True)

    entities: dict[str, int] = {}
    for spec in specs:
        entities[spec.entity] = max(entities.get(spec.entity, 0), counts[spec.name])
    summary = {
        "end_day": end_day.isoformat(),
        "as_of": as_of.isoformat(),
        "views": {
            s.name: {
                "entity": s.entity,
                "entities_written": counts[s.name],
                "start": (EPOCH if s.ttl is None else as_of - s.ttl).isoformat(),
                "ttl_days": s.ttl.days if s.ttl else None,
                "partition": s.latest_partition.removeprefix("date="),
            }
            for s in specs
        },
        "entities": entities,
        "online_store": str(live),
        "seconds": round(time.perf_counter() - started, 3),
        "seconds_register": round(applied - started, 3),
        "materialized_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    write_json_atomic(_state_path(settings), summary, sort_keys=False)
    return summary


# ----- online rows ---------------------------------------------------------------------------------------
def _event_times(column: "pa.ChunkedArray | None", n: int, now: dt.datetime) -> "pa.Array":
    """Request times as timestamp[us, UTC]: naive values are UTC, strings are ISO 8601, nulls are ``now``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column is None:
        return pa.array(np.full(n, int(now.timestamp() * 1_000_000), dtype=np.int64), pa.int64()).cast(TIMESTAMP)
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        import pandas as pd

        try:
            parsed = pd.to_datetime(pd.Series(column.to_pylist(), dtype=object), utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"event_time: cannot read the values as ISO 8601 times ({exc})") from None
        column = pa.Array.from_pandas(parsed)
    if not pa.types.is_timestamp(column.type):
        raise TypeError(f"event_time must be a timestamp or an ISO 8601 string column, got {column.type}")
    column = column.cast(TIMESTAMP)  # a naive timestamp is read as UTC
    return pc.fill_null(column, pa.scalar(now, TIMESTAMP))


def normalize_requests(requests: "pa.Table", now: dt.datetime | None = None) -> "pa.Table":
    """The impression columns of a training-set row (``IMPRESSIONS`` contract types) for each request.

    ``user_id`` and ``ad_id`` are required and non-null. Optional, with defaults for missing columns or
    null values: ``event_time`` (``now``, UTC), ``slot`` (null: the model's unknown slot),
    ``position`` (1), ``exposure_index`` (1; not a model input), ``request_id`` (``serve-<row>``).
    Other columns are dropped."""
    import pyarrow as pa
    import pyarrow.compute as pc

    missing = [c for c in REQUIRED_REQUEST_COLUMNS if c not in requests.column_names]
    if missing:
        raise ValueError(f"requests lack the column(s) {missing}; they have {requests.column_names}")
    n = requests.num_rows
    now = now or dt.datetime.now(dt.timezone.utc)
    out: dict[str, Any] = {}
    for key in REQUIRED_REQUEST_COLUMNS:
        col = requests.column(key)
        if col.null_count:
            raise ValueError(f"{key} has {col.null_count} null value(s): every request needs a user and an ad")
        try:
            out[key] = col.cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"{key} must hold integer ids ({exc})") from None
    out["event_time"] = _event_times(requests.column("event_time") if "event_time" in requests.column_names
                                     else None, n, now)
    if "request_id" in requests.column_names:
        rid = requests.column("request_id").cast(pa.string())
        generated = pa.array([f"serve-{i}" for i in range(n)], pa.string()) if rid.null_count else None
        out["request_id"] = pc.coalesce(rid, generated) if generated is not None else rid
    else:
        out["request_id"] = pa.array([f"serve-{i}" for i in range(n)], pa.string())
    out["slot"] = (requests.column("slot").cast(pa.string()) if "slot" in requests.column_names
                   else pa.nulls(n, pa.string()))
    for name, default in (("position", DEFAULT_POSITION), ("exposure_index", DEFAULT_EXPOSURE_INDEX)):
        if name in requests.column_names:
            out[name] = pc.fill_null(requests.column(name).cast(pa.int32()), pa.scalar(default, pa.int32()))
        else:
            out[name] = pa.array(np.full(n, default, dtype=np.int32), pa.int32())
    schema = IMPRESSIONS.required
    return pa.Table.from_arrays([_as_chunked(out[f.name]).cast(f.type) for f in schema], schema=schema)


def _fetch(
    store: Any, specs: list[Any], key: str, ids: np.ndarray
) -> tuple[dict[str, "pa.Array"], dict[str, np.ndarray]]:
    """One ``get_online_features`` call for the distinct ``ids`` of one entity: the values of every
    feature of ``specs`` as Arrow arrays (the views' parquet types), and per view the event timestamp in
    seconds of each id's row (0 when the store has none)."""
    import pyarrow as pa

    refs = [f"{spec.name}:{name}" for spec in specs for name in spec.feature_names]
    try:
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


def online_feature_rows(
    settings: "Settings",
    requests: "pa.Table",
    *,
    now: dt.datetime | None = None,
    representations: bool | None = None,
) -> "pa.Table":
    """Online feature rows for ``requests`` (see :func:`normalize_requests` for their columns).

    Returns one row per request, in request order, with the columns of a training-set row without
    labels: ``event_time, request_id, user_id, ad_id, slot, position, exposure_index``, every
    ``<view>__<feature>`` of the ``training`` service (same names and Arrow types as
    ``train.parquet``), then, when the representations exist (``representations=None``) or when asked,
    ``see_text, see_visual, see_graph`` and ``ad_semantic_id__*``; finally the flags ``user_known`` /
    ``ad_known`` (bool: the online store served a row of any of the entity's views). A summary
    (unknown entities, values withheld by the point-in-time rule, seconds) is in the schema metadata
    (:func:`serving_summary`). Raises :class:`OnlineStoreMissing` before the first materialisation."""
    import pyarrow as pa

    state = online_state(settings)  # fails fast, before loading Feast, when nothing was materialised
    import feast  # noqa: F401  - loaded before the clock starts: the summary times the work, not the import

    from components.store.feast_store import feature_store
    from components.training.training_set import adds_similarities, feature_row_schema

    started = time.perf_counter()
    base = normalize_requests(requests, now)
    n = base.num_rows
    specs = _core_specs(settings)
    schema = feature_row_schema(specs)
    event_us = base.column("event_time").cast(pa.int64()).to_numpy() if n else np.zeros(0, np.int64)

    store = feature_store(settings, apply=False)
    columns: dict[str, Any] = {name: base.column(name) for name in base.column_names}
    known = {"user": np.zeros(n, dtype=bool), "ad": np.zeros(n, dtype=bool)}
    withheld: dict[str, dict[str, int]] = {}
    fetch_seconds = 0.0
    for entity, key in (("user", "user_id"), ("ad", "ad_id")):
        entity_specs = [s for s in specs if s.entity == entity]
        ids = base.column(key).to_numpy() if n else np.zeros(0, np.int64)
        uniq, inverse = np.unique(ids, return_inverse=True)
        t = time.perf_counter()
        if uniq.size and entity_specs:  # an entity may have no view with columns (no user profile, ...)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                values, stamps = _fetch(store, entity_specs, key, uniq)
        else:
            values = {f"{s.name}__{f}": pa.array([], type=typ) for s in entity_specs for f, typ in s.fields}
            stamps = {s.name: np.zeros(0, np.int64) for s in entity_specs}
        fetch_seconds += time.perf_counter() - t
        for spec in entity_specs:
            ts_us = stamps[spec.name][inverse] * 1_000_000
            found = stamps[spec.name][inverse] > 0
            future = found & (ts_us > event_us)  # not known yet at the request's time
            expired = found & ~future & (
                (ts_us < event_us - int(spec.ttl.total_seconds() * 1_000_000)) if spec.ttl is not None
                else np.zeros(n, dtype=bool)
            )
            served = found & ~future & ~expired
            known[entity] |= served
            withheld[spec.name] = {"not_in_store": int((~found).sum()), "after_request": int(future.sum()),
                                   "expired": int(expired.sum())}
            index = pa.array(inverse.astype(np.int64), mask=~served)  # null index -> null features
            for name in spec.feature_names:
                col = f"{spec.name}__{name}"
                columns[col] = values[col].take(index)
    table = pa.Table.from_arrays([_as_chunked(columns[f.name]).cast(f.type) for f in schema], schema=schema)

    similarity_seconds = 0.0
    if adds_similarities(settings, representations):
        from components.representations.similarity import add_similarity_features

        t = time.perf_counter()
        table = add_similarity_features(settings, table)
        similarity_seconds = time.perf_counter() - t
    table = table.append_column(USER_KNOWN, pa.array(known["user"], pa.bool_()))
    table = table.append_column(AD_KNOWN, pa.array(known["ad"], pa.bool_()))
    summary = {
        "rows": n,
        "unknown_users": int((~known["user"]).sum()),
        "unknown_ads": int((~known["ad"]).sum()),
        "distinct_users": int(np.unique(base.column("user_id").to_numpy()).size) if n else 0,
        "distinct_ads": int(np.unique(base.column("ad_id").to_numpy()).size) if n else 0,
        "withheld": withheld,
        "online_as_of": state.get("as_of"),
        "seconds": round(time.perf_counter() - started, 4),
        "seconds_feast": round(fetch_seconds, 4),
        "seconds_similarity": round(similarity_seconds, 4),
    }
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(summary).encode()
    return table.replace_schema_metadata(metadata)


def _as_chunked(values: Any) -> "pa.ChunkedArray":
    import pyarrow as pa

    return values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])


def serving_summary(table: "pa.Table") -> dict[str, Any]:
    """The summary :func:`online_feature_rows` put in the schema metadata (empty when absent)."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def model_input(rows: "pa.Table") -> "pa.Table":
    """``rows`` without the serving flags: exactly the training-set-row columns a scorer is given."""
    return rows.drop_columns([c for c in FLAG_COLUMNS if c in rows.column_names])


# ----- scoring -------------------------------------------------------------------------------------------
def _probabilities(scorer: Any, rows: "pa.Table") -> dict[str, np.ndarray]:
    """``{p_<task>: float32 [N]}`` from a TrainedModel (``.score(table)``) or an MLflow pyfunc
    (``.predict(DataFrame)`` -> DataFrame of ``p_<task>`` columns)."""
    inputs = model_input(rows)
    encoders = getattr(scorer, "encoders", None)
    if hasattr(scorer, "score") and encoders is not None:
        missing = [c for c in encoders.feature_columns if c not in inputs.column_names]
        if missing:
            raise KeyError(
                f"the model reads columns the online rows do not have: {missing} (were the representations "
                "refreshed for this home, and is no representations switch (text, visual, graph, see, "
                "semantic_ids) off that was on when the model was trained? the model was trained with them)"
            )
        probs = scorer.score(inputs)
        return {f"p_{task}": np.asarray(p, dtype=np.float32) for task, p in probs.items()}
    if hasattr(scorer, "predict"):
        out = scorer.predict(inputs.to_pandas())
        cols = [c for c in getattr(out, "columns", []) if str(c).startswith("p_")]
        if not cols:
            raise ValueError(f"the pyfunc model returned no p_<task> columns (got {list(getattr(out, 'columns', []))})")
        if len(out) != inputs.num_rows:
            raise ValueError(f"the pyfunc model returned {len(out)} rows for {inputs.num_rows} requests")
        return {str(c): out[c].to_numpy(dtype=np.float32) for c in cols}
    raise TypeError(
        f"cannot score with a {type(scorer).__name__}: pass a components.training.artefact.TrainedModel or an MLflow "
        "pyfunc model (components.registry.client.load_champion)"
    )


def score_requests(settings: "Settings", requests: "pa.Table", scorer: Any,
                   *, now: dt.datetime | None = None) -> "pa.Table":
    """:func:`online_feature_rows` of ``requests`` plus one float32 ``p_<task>`` column per task.

    ``scorer``: a ``components.training.artefact.TrainedModel`` (``load_trained(dir)``) or an MLflow pyfunc model
    (``components.registry.client.load_champion(settings)``). The scorer sees the rows without the
    ``user_known`` / ``ad_known`` flags. The summary in the schema metadata gains ``seconds_scoring``."""
    import pyarrow as pa

    rows = online_feature_rows(settings, requests, now=now)
    t = time.perf_counter()
    probs = _probabilities(scorer, rows) if rows.num_rows else {}
    summary = serving_summary(rows)
    for name, values in probs.items():
        rows = rows.append_column(name, pa.array(values, pa.float32()))
    summary["seconds_scoring"] = round(time.perf_counter() - t, 4)
    metadata = dict(rows.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(summary).encode()
    return rows.replace_schema_metadata(metadata)


def read_requests(path: str | Path) -> "pa.Table":
    """A pairs file (``.csv`` or ``.parquet``) as an Arrow table; raises naming a missing file or
    an unsupported suffix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pairs file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if suffix == ".csv":
        import pyarrow.csv as pcsv

        return pcsv.read_csv(path)
    raise ValueError(f"pairs file {path}: expected a .csv or .parquet file")


__all__ = [
    "AD_KNOWN",
    "OnlineStoreMissing",
    "USER_KNOWN",
    "materialize_online",
    "model_input",
    "newest_feature_day",
    "normalize_requests",
    "online_feature_rows",
    "online_state",
    "read_requests",
    "score_requests",
    "serving_summary",
]

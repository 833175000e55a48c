"""Point-in-time training sets: every impression of a window with its labels and the feature values that
were known at its ``event_time``.

Two join paths give the same table (tests/data/test_point_in_time.py proves it on every edge case):

- ``feast``: Feast's ``get_historical_features`` with the ``training`` feature service (the reference);
- ``duckdb``: the same semantics written directly as DuckDB ``ASOF LEFT JOIN``s over the same parquet,
  used for windows of at least ``features.direct_join_min_rows`` impressions (Feast's join materialises
  every (impression, feature row within TTL) pair before picking the newest, the ASOF join does not).

Semantics (Feast's, kept by both): for each impression and view, the row of the same entity with the
largest ``event_timestamp <= event_time`` is used; among rows with that same event timestamp, the one
with the largest ``created_timestamp`` wins; for views with a TTL the value is used only if
``event_timestamp >= event_time - ttl`` (inclusive), otherwise, or without any row, the features are null.
Feature columns are named ``<view>__<feature>``. The user x attribute interest views are keyed on
``'<user_id>|<value>'`` of the impression's ad as of its time (:func:`add_interest_keys`, a first join of
``ad_profile``); the key columns are join inputs, not columns of the output.

With ``features.fresh_behaviour`` (default on) the joined ``user_sequence__*`` columns are then replaced
by the fresh sequence, and ``user_recent__*`` counters appended, computed from the impression log
strictly before each ``event_time`` (:func:`add_fresh_behaviour`, components/store/fresh.py); this
happens before the similarities, so SEE reads the fresh sequence.

Output: ``<training_dir>/<end_day>/train.parquet`` sorted by (event_time, request_id), and
``meta.json`` beside it (window, rows, label rates, features, view versions, join path).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

from components.faults import declare, fault_point
from components.store.sql import connect, partition_globs, sql_list, sql_ts, view_globs
from components.schemas import IMPRESSIONS, TIMESTAMP, day_window
from components.storage import write_json_atomic, write_parquet_atomic

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings

log = logging.getLogger(__name__)

JoinPath = Literal["auto", "feast", "duckdb"]
META_FILE = "meta.json"
BUILDING_FILE = ".building"  # beside train.parquet while a build runs: removed after meta.json is written
# Rows per parquet row group of train.parquet: the units a streamed run (components/training/stream.py)
# shuffles and DDP ranks share out; ~55 MB decoded at the demo's ~860 bytes per row (Arrow's default, 1Mi
# rows, would leave a 3M-row set 3 units).
ROW_GROUP_ROWS = 1 << 16
declare("training_set.after_parquet")
ENTITY_COLUMNS = tuple(IMPRESSIONS.required.names)


def read_impressions(settings: "Settings", first: dt.date, last: dt.date, tasks: Sequence[str]) -> "pa.Table":
    """Impressions with ``event_time`` in [first 00:00, last + 1 day) from the offline store, sorted by
    (event_time, request_id): the entity rows of a training set."""
    start, _ = day_window(first)
    _, end = day_window(last)
    # One partition either side: with a late-event tolerance a day's events can sit in the previous
    # day's partition; selecting by event_time keeps the window exact.
    globs = partition_globs(
        settings.offline_dir, "impressions", first - dt.timedelta(days=1), last + dt.timedelta(days=1)
    )
    if not globs:
        from components.store.features import impressions_landed

        if any(impressions_landed(settings, first + dt.timedelta(days=i)) for i in range((last - first).days + 1)):
            from components.schemas import impressions_schema

            return impressions_schema(list(tasks)).empty_table().select([*ENTITY_COLUMNS, *tasks])
        raise FileNotFoundError(f"no impressions partitions for {first}..{last} under {settings.offline_dir}")
    cols = ", ".join(f'"{c}"' for c in (*ENTITY_COLUMNS, *tasks))
    con = connect()
    try:
        table = con.execute(
            f"SELECT {cols} FROM read_parquet({sql_list(globs)}, union_by_name = true, hive_partitioning = false) "
            f"WHERE event_time >= {sql_ts(start)} AND event_time < {sql_ts(end)} ORDER BY event_time, request_id"
        ).arrow().read_all()
    finally:
        con.close()
    return table


def _output_schema(entities: "pa.Schema", specs: list[Any]) -> "pa.Schema":
    import pyarrow as pa

    keys = {s.join_key for s in specs if s.attribute}  # interest views' composite keys: join inputs only
    fields = [pa.field(f.name, TIMESTAMP if f.name == "event_time" else f.type) for f in entities if f.name not in keys]
    for spec in specs:
        fields.extend(pa.field(f"{spec.name}__{name}", typ) for name, typ in spec.fields)
    return pa.schema(fields)


def feature_row_schema(specs: list[Any], tasks: Sequence[str] = ()) -> "pa.Schema":
    """The columns of a training-set row before the similarity columns: the impression's contract columns
    (``IMPRESSIONS``), the ``tasks`` labels, then ``<view>__<feature>`` per view of ``specs``. Serving
    (components/serving/online_rows.py) builds its online rows to this schema with ``tasks=()``."""
    from components.schemas import impressions_schema

    return _output_schema(impressions_schema(list(tasks)), specs)


def adds_similarities(settings: "Settings", representations: bool | None) -> bool:
    """Whether a training set / online row gets the SEE similarities and semantic-ID codes: ``None``
    means "when the representations have been refreshed" (``<home>/embeddings`` exists)."""
    return bool(representations or (representations is None and settings.embeddings_dir.is_dir()))


def _canonical(table: "pa.Table", schema: "pa.Schema", sort: bool = True) -> "pa.Table":
    """Same columns, order, types and row order, whichever join produced ``table`` (``sort=False``: the
    caller guarantees the (event_time, request_id) order already)."""
    import pyarrow as pa

    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"joined table lacks columns {missing}")
    table = table.select(schema.names)
    table = pa.Table.from_arrays(
        [table.column(n).cast(schema.field(n).type) for n in schema.names], schema=schema
    )
    if sort:
        table = table.sort_by([("event_time", "ascending"), ("request_id", "ascending")])
    return table.combine_chunks()


def join_feast(settings: "Settings", entities: "pa.Table", specs: list[Any] | None = None) -> "pa.Table":
    """Feast's point-in-time join of ``entities`` with the ``training`` feature service."""
    from components.store.feast_store import feature_store, views_module

    store = feature_store(settings, apply=True)
    specs = specs if specs is not None else views_module().view_specs(settings.home, settings.features.ttl_days)
    # Feast looks for `event_timestamp` (and prints a notice when it has to guess); rename both ways.
    entity_df = entities.to_pandas().rename(columns={"event_time": "event_timestamp"})
    with warnings.catch_warnings():
        # ibis (under Feast's DuckDB store) still calls duckdb's deprecated fetch_arrow_table().
        warnings.filterwarnings("ignore", message="fetch_arrow_table", category=DeprecationWarning)
        job = store.get_historical_features(
            entity_df=entity_df,
            features=store.get_feature_service(views_module().FEATURE_SERVICE),
            full_feature_names=True,
        )
        out = job.to_arrow()
    out = out.rename_columns(["event_time" if c == "event_timestamp" else c for c in out.column_names])
    return _canonical(out, _output_schema(entities.schema, specs))


def join_duckdb(settings: "Settings", entities: "pa.Table", specs: list[Any] | None = None) -> "pa.Table":
    """The same point-in-time join as DuckDB ASOF joins over the views' parquet.

    DuckDB only matches row positions (impression row -> feature row, on narrow key/timestamp columns);
    the feature values, list columns included, are then gathered column-wise with Arrow ``take``, which
    avoids pushing wide rows through the join and a sort."""
    import numpy as np
    import pyarrow as pa

    from components.store.feast_store import views_module

    specs = specs if specs is not None else views_module().view_specs(settings.home, settings.features.ttl_days)
    entities = entities.sort_by([("event_time", "ascending"), ("request_id", "ascending")])
    n = entities.num_rows
    columns: dict[str, Any] = {name: entities.column(name) for name in entities.column_names}
    con = connect()
    try:
        keys = {"row_index": pa.array(np.arange(n, dtype=np.int64)), "event_time": entities.column("event_time")}
        for spec in specs:
            keys[spec.join_key] = entities.column(spec.join_key)
        # Copied into DuckDB tables: an ASOF join that scans a registered Arrow table directly ran ~70x
        # slower here (1M impressions: 10 s instead of 0.15 s per view).
        con.register("impression_keys_arrow", pa.table(keys))
        con.execute("CREATE TEMP TABLE impression_keys AS SELECT * FROM impression_keys_arrow")
        con.unregister("impression_keys_arrow")
        for spec in specs:
            cols = ", ".join(f'"{c}"' for c in spec.feature_names)
            # Ties on (key, event_timestamp) go to the newest created_timestamp, as in Feast's dedup.
            rows = con.execute(
                f"SELECT {spec.join_key}, event_timestamp, {cols} "
                f"FROM read_parquet({sql_list(view_globs(spec.path))}, hive_partitioning = false, union_by_name = true) "
                f"QUALIFY row_number() OVER (PARTITION BY {spec.join_key}, event_timestamp "
                "ORDER BY created_timestamp DESC) = 1"
            ).arrow().read_all()
            con.register(
                "feature_keys_arrow",
                pa.table(
                    {
                        "key": rows.column(spec.join_key),
                        "event_timestamp": rows.column("event_timestamp"),
                        "position": pa.array(np.arange(rows.num_rows, dtype=np.int64)),
                    }
                ),
            )
            if spec.ttl is None:
                matched = "f.position"
            else:
                # Feast's TTL: usable while event_timestamp + ttl >= event_time (inclusive). Checking the
                # newest row is enough: every older row is older still.
                micros = int(spec.ttl.total_seconds() * 1_000_000)
                matched = f"CASE WHEN f.event_timestamp >= k.event_time - to_microseconds({micros}) THEN f.position END"
            con.execute("CREATE OR REPLACE TEMP TABLE feature_keys AS SELECT * FROM feature_keys_arrow")
            con.unregister("feature_keys_arrow")
            match = con.execute(
                f"SELECT k.row_index, {matched} AS position FROM impression_keys k "
                f"ASOF LEFT JOIN feature_keys f ON k.{spec.join_key} = f.key AND k.event_time >= f.event_timestamp"
            ).arrow().read_all()
            position = np.full(n, -1, dtype=np.int64)
            position[match.column("row_index").to_numpy()] = match.column("position").fill_null(-1).to_numpy()
            take = pa.array(position, mask=position < 0)  # null index -> null features
            gathered = rows.select(spec.feature_names).take(take)
            for name in spec.feature_names:
                columns[f"{spec.name}__{name}"] = gathered.column(name)
    finally:
        con.close()
    return _canonical(pa.table(columns), _output_schema(entities.schema, specs), sort=False)


def add_interest_keys(settings: "Settings", entities: "pa.Table", specs: list[Any]) -> "pa.Table":
    """``entities`` (sorted by event_time, request_id) plus the composite key of every interest view of
    ``specs``: the impression's user and its ad's attribute as of ``event_time``, i.e. the
    ``ad_profile__<attribute>`` the point-in-time join gives the row (components/store/interest.py)."""
    from components.store.interest import with_interest_keys

    if not any(s.attribute for s in specs):
        return entities
    profile = join_duckdb(settings, entities, [s for s in specs if s.name == "ad_profile"])
    return with_interest_keys(entities, profile, specs)


def add_fresh_behaviour(settings: "Settings", table: "pa.Table") -> tuple["pa.Table", dict[str, Any] | None]:
    """With ``features.fresh_behaviour``: ``table`` with the fresh click sequence replacing the daily
    view's and the ``user_recent__`` counters appended (components/store/fresh.py), and a summary for
    meta.json (None when off)."""
    if not settings.features.fresh_behaviour:
        return table, None
    from components.store.fresh import fresh_behaviour, recent_summary, with_fresh_behaviour

    started = time.perf_counter()
    columns = fresh_behaviour(settings, table)
    summary = {**recent_summary(columns), "seconds": round(time.perf_counter() - started, 3)}
    return with_fresh_behaviour(table, columns), summary


def _view_versions(specs: list[Any]) -> dict[str, dict[str, Any]]:
    """A view's version: the newest partition it was read with and a hash of its fields and TTL."""
    out = {}
    for spec in specs:
        fingerprint = json.dumps(
            [[n, str(t)] for n, t in spec.fields] + [spec.ttl.total_seconds() if spec.ttl else None]
        )
        out[spec.name] = {
            "latest_partition": spec.latest_partition.removeprefix("date="),
            "schema_hash": hashlib.sha256(fingerprint.encode()).hexdigest()[:12],
            "ttl_days": spec.ttl.days if spec.ttl else None,
            "entity": spec.entity,
        }
    return out


def build_training_set(
    settings: "Settings",
    end_day: dt.date,
    days: int | None = None,
    tasks: Sequence[str] | None = None,
    join_path: JoinPath = "auto",
    representations: bool | None = None,
) -> Path:
    """Write ``<training_dir>/<end_day>/train.parquet`` (+ ``meta.json``) for the ``days`` days ending on
    ``end_day`` (inclusive) and return the parquet's path. ``join_path="auto"`` uses the DuckDB ASOF join
    for at least ``features.direct_join_min_rows`` impressions and Feast's join below that.

    ``representations`` adds the SEE similarities and visual semantic-ID codes
    (``components.representations.similarity.add_similarity_features``); ``None`` adds them when the representations
    have been refreshed (``<home>/embeddings`` exists), ``True`` requires them."""
    from components.store.feast_store import views_module

    days = days if days is not None else settings.pipeline.training_days
    if days < 1:
        raise ValueError(f"a training window needs at least one day, got days={days}")
    tasks = list(tasks if tasks is not None else settings.tasks)
    first = end_day - dt.timedelta(days=days - 1)
    started = time.perf_counter()
    entities = read_impressions(settings, first, end_day, tasks)
    if entities.num_rows == 0:
        raise ValueError(f"no impressions between {first} and {end_day}: nothing to train on")
    specs = views_module().view_specs(settings.home, settings.features.ttl_days)
    entities = add_interest_keys(settings, entities, specs)
    if join_path == "auto":
        join_path = "duckdb" if entities.num_rows >= settings.features.direct_join_min_rows else "feast"
    if join_path == "feast":
        table = join_feast(settings, entities, specs)
    elif join_path == "duckdb":
        table = join_duckdb(settings, entities, specs)
    else:
        raise ValueError(f"join_path must be auto, feast or duckdb, got {join_path!r}")

    table, fresh = add_fresh_behaviour(settings, table)  # before the similarities: SEE reads the sequence
    similarity: dict[str, Any] | None = None
    if adds_similarities(settings, representations):
        from components.representations.similarity import (add_similarity_features, similarity_summary,
                                                           without_timing)

        table = add_similarity_features(settings, table)
        similarity = similarity_summary(table)
        table = without_timing(table, similarity)
        if similarity.get("skipped"):
            log.info("training set %s: left out %s", end_day,
                     "; ".join(f"{name} ({reason})" for name, reason in similarity["skipped"].items()))

    out_dir = settings.training_dir / end_day.isoformat()
    target = write_training_parquet(table, out_dir)

    import pyarrow.compute as pc

    meta = {
        "window": {"first_day": first.isoformat(), "end_day": end_day.isoformat(), "days": days},
        "rows": table.num_rows,
        "label_rates": {t: float(pc.mean(table.column(t).cast("float64")).as_py()) for t in tasks},
        "tasks": tasks,
        "entity_columns": [c for c in table.column_names if c in entities.column_names and c not in tasks],
        "features": [c for c in table.column_names if "__" in c or c.startswith("see_")],
        "feature_views": _view_versions(specs),
        "feature_service": views_module().FEATURE_SERVICE,
        "join_path": join_path,
        "representations": similarity,
        "fresh_behaviour": fresh,
        "seconds": round(time.perf_counter() - started, 3),
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    write_json_atomic(out_dir / META_FILE, meta, sort_keys=False)
    (out_dir / BUILDING_FILE).unlink()
    return target


def write_training_parquet(table: "pa.Table", out_dir: Path) -> Path:
    """Write ``out_dir/train.parquet``. A build in progress is marked first (the caller removes the mark after
    meta.json), and meta.json goes before the parquet is replaced: a build cut short leaves the mark
    (training_set_meta refuses the set), never a new parquet described by an older build's meta.json."""
    target = out_dir / "train.parquet"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / BUILDING_FILE).touch()
    (out_dir / META_FILE).unlink(missing_ok=True)
    # A reader sees the old or the new set, never half.
    write_parquet_atomic(table, target, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    fault_point("training_set.after_parquet")
    return target


def training_set_meta(training_set: "str | Path") -> dict[str, Any]:
    """The ``meta.json`` beside a training set's parquet ({} for a parquet written by other means). Raises
    ``FileNotFoundError`` (one line) while the folder is marked as being built: a build was cut short there
    (components/faults.py, docs/reliability/data-stages.md)."""
    path = Path(training_set)
    if path.with_name(BUILDING_FILE).exists():
        raise FileNotFoundError(f"training set {path} is half-written (its build was cut short): run "
                                f"`adsrec training-set --date {path.parent.name}` again")
    meta = path.with_name(META_FILE)
    return json.loads(meta.read_text()) if meta.is_file() else {}

"""The Feast online store of serving: materialising it and reading what was materialised (docs/serving.md).

:func:`materialize_online` puts the newest value of every entity in the ``training`` service's views as of
the END of ``end_day`` (``end_day + 1`` 00:00 UTC, inclusive, the point-in-time join's ``<=``) into Feast's
SQLite online store. The store is rebuilt into a new file and swapped in (rename), so re-running a day
gives the same store, going back to an earlier day gives exactly that day's store (no entity or value
from a later day survives), and a reader never sees a half-written store. A record of what was
materialised is kept in ``<feast_dir>/online_store.json`` (:func:`online_state`) and, so that the rename swaps
the store and its record together, inside the SQLite file (table ``adsrec_materialization``): after a
materialise killed between the rename and the JSON, :func:`online_state` returns the file's own record.

Feast is imported inside the functions.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.faults import declare, fault_point
from components.schemas import day_window
from components.storage import write_json_atomic

if TYPE_CHECKING:
    from components.config import Settings

STATE_FILE = "online_store.json"
ONLINE_DB = "online_store.db"
STATE_TABLE = "adsrec_materialization"  # inside the SQLite file: the record of what it holds
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
declare("materialize.after_rename")


class OnlineStoreMissing(FileNotFoundError):
    """No online store has been materialised for this home."""


def core_view_specs(settings: "Settings") -> list[Any]:
    """The ``training`` service's view specs (the views a training-set row joins)."""
    from components.store.feast_store import views_module

    return views_module().view_specs(settings.home, settings.features.ttl_days)


def online_db_path(settings: "Settings") -> Path:
    """The live SQLite file of the online store."""
    return settings.feast_dir.expanduser().resolve() / ONLINE_DB


def _state_path(settings: "Settings") -> Path:
    return settings.feast_dir.expanduser().resolve() / STATE_FILE


def online_state(settings: "Settings") -> dict[str, Any]:
    """What the last :func:`materialize_online` wrote (``as_of``, ``end_day``, rows per view, ...).

    Raises :class:`OnlineStoreMissing` (a ``FileNotFoundError``) when nothing was materialised yet."""
    path, db = _state_path(settings), online_db_path(settings)
    if not db.is_file() or (not path.is_file() and embedded_state(db) is None):
        raise OnlineStoreMissing(
            f"no online store materialised under {settings.feast_dir}: run `adsrec materialize` "
            "(or components.serving.online_store.materialize_online) first"
        )
    state = json.loads(path.read_text()) if path.is_file() else None
    inside = embedded_state(db)
    if inside is not None and (state is None or state.get("materialized_at") != inside.get("materialized_at")):
        # The store was swapped in but its record was not (a materialise cut short): the file's own record wins.
        import logging

        logging.getLogger(__name__).warning("%s does not describe %s (a materialise was cut short): using the "
                                            "record inside the store; the next `adsrec materialize` rewrites it",
                                            path, db)
        return inside
    return state  # type: ignore[return-value]


def embedded_state(db: Path) -> dict[str, Any] | None:
    """The record :func:`materialize_online` put inside the SQLite file itself (table ``STATE_TABLE``),
    swapped in with it by the same rename; None for a store written before the record was embedded."""
    import sqlite3

    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)  # as_uri: quoted, any path
    try:
        row = conn.execute(f"SELECT summary FROM {STATE_TABLE}").fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return json.loads(row[0]) if row else None


def newest_feature_day(settings: "Settings") -> dt.date:
    """The newest day every core view has a feature partition for (the default day to materialise)."""
    specs = core_view_specs(settings)
    return min(dt.date.fromisoformat(s.latest_partition.removeprefix("date=")) for s in specs)


# ----- materialisation steps ---------------------------------------------------------------------------------
def check_feature_partitions(settings: "Settings", specs: list[Any], end_day: dt.date) -> None:
    """Raise ``FileNotFoundError`` naming the core views without a feature partition for ``end_day`` (or
    ``HalfWrittenDay`` when the day's features are half-written, components/store/days.py)."""
    from components.store.days import require_day

    features_dir = settings.features_dir
    require_day(features_dir, end_day, f"`adsrec features --date {end_day}` again")
    partition = f"date={end_day.isoformat()}"
    missing = [s.name for s in specs if not any((features_dir / s.name / partition).glob("*.parquet"))]
    if missing:
        raise FileNotFoundError(
            f"no feature partition for {end_day} in views {missing}: build the day's features first "
            f"(adsrec features --date {end_day})"
        )


def read_start(spec: Any, as_of: dt.datetime) -> dt.datetime:
    """The oldest event time of ``spec`` still served after ``as_of``: the epoch without a TTL
    (profiles), ``as_of - ttl`` otherwise (an older row has expired for every later request)."""
    return EPOCH if spec.ttl is None else as_of - spec.ttl


def new_online_store(settings: "Settings", specs: list[Any], path: Path) -> tuple[Any, Any, list[Any]]:
    """A Feast ``FeatureStore`` whose SQLite online store is the new file ``path``, with the tables of the
    core views created (what ``apply`` creates in the live one): (store, its ``RepoConfig``, the views)."""
    from feast import FeatureStore
    from feast.infra.online_stores.sqlite import SqliteOnlineStore
    from feast.repo_config import RepoConfig

    from components.store.feast_store import FEATURE_REPO, repo_config_dict

    config_dict = repo_config_dict(settings)
    config_dict["online_store"] = {"type": "sqlite", "path": str(path)}
    config = RepoConfig(**config_dict)
    config.repo_path = FEATURE_REPO
    store = FeatureStore(repo_path=str(FEATURE_REPO), config=config)
    views = [store.get_feature_view(s.name) for s in specs]
    # Tables of the new file, via the online store's own update.
    SqliteOnlineStore().update(config, tables_to_delete=[], tables_to_keep=views, entities_to_delete=[],
                               entities_to_keep=[], partial=False)
    return store, config, views


def fill_online_store(store: Any, specs: list[Any], as_of: dt.datetime) -> None:
    """Feast's ``materialize(start, as_of)`` per group of views with one :func:`read_start`: the newest
    row per entity with event timestamp in ``[start, as_of]``."""
    groups: dict[dt.datetime, list[str]] = {}
    for spec in specs:
        groups.setdefault(read_start(spec, as_of), []).append(spec.name)
    with warnings.catch_warnings():
        # ibis (under Feast's DuckDB store) still calls duckdb's deprecated fetch_arrow_table().
        warnings.filterwarnings("ignore", message="fetch_arrow_table", category=DeprecationWarning)
        for start, names in groups.items():
            store.materialize(start_date=start, end_date=as_of, feature_views=names)


def entities_written(path: Path, config: Any, views: list[Any]) -> dict[str, int]:
    """View name -> distinct entities in its table of the SQLite online store at ``path``."""
    import sqlite3

    from feast.infra.online_stores.helpers import compute_table_id

    conn = sqlite3.connect(path)
    try:
        return {
            v.name: int(conn.execute(
                f'SELECT COUNT(DISTINCT entity_key) FROM "{compute_table_id(config.project, v)}"'
            ).fetchone()[0])
            for v in views
        }
    finally:
        conn.close()


def materialization_summary(specs: list[Any], end_day: dt.date, as_of: dt.datetime, counts: dict[str, int],
                            live: Path) -> dict[str, Any]:
    """The record of one materialisation (``<feast_dir>/online_store.json`` without the timings)."""
    entities: dict[str, int] = {}
    for spec in specs:
        entities[spec.entity] = max(entities.get(spec.entity, 0), counts[spec.name])
    return {
        "end_day": end_day.isoformat(),
        "as_of": as_of.isoformat(),
        "views": {
            s.name: {
                "entity": s.entity,
                "entities_written": counts[s.name],
                "start": read_start(s, as_of).isoformat(),
                "ttl_days": s.ttl.days if s.ttl else None,
                "partition": s.latest_partition.removeprefix("date="),
            }
            for s in specs
        },
        "entities": entities,
        "online_store": str(live),
    }


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
    specs = core_view_specs(settings)
    check_feature_partitions(settings, specs, end_day)
    _, as_of = day_window(end_day)

    from components.store.feast_store import feature_store

    # Register the views (the registry is shared by the live and the new store).
    feature_store(settings, apply=True)
    applied = time.perf_counter()

    live = online_db_path(settings)
    tmp = live.with_name(f".{live.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    store, config, views = new_online_store(settings, specs, tmp)
    try:
        fill_online_store(store, specs, as_of)
        counts = entities_written(tmp, config, views)
        summary = {
            **materialization_summary(specs, end_day, as_of, counts, live),
            "seconds": round(time.perf_counter() - started, 3),
            "seconds_register": round(applied - started, 3),
            "materialized_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        _embed_state(tmp, summary)  # the record travels with the store: one rename swaps both
        os.replace(tmp, live)  # readers see the old store or the new one, never half of one
    finally:
        tmp.unlink(missing_ok=True)
    fault_point("materialize.after_rename")
    write_json_atomic(_state_path(settings), summary, sort_keys=False)
    return summary


def _embed_state(db: Path, summary: dict[str, Any]) -> None:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(f"CREATE TABLE {STATE_TABLE} (summary TEXT NOT NULL)")
            conn.execute(f"INSERT INTO {STATE_TABLE} VALUES (?)", (json.dumps(summary),))
    finally:
        conn.close()

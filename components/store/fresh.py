"""Fresh behaviour features: the user's click sequence and short-window counters, point-in-time to the
microsecond, computed from the impression log itself (docs/features.md, "Fresh behaviour features").

With ``features.fresh_behaviour`` on, a training-set row (and an online row) at time ``t`` of user ``u``
gets, instead of the daily ``user_sequence`` view's columns (stamped at the previous midnight):

- ``user_sequence__ad_ids / __categories / __click_times / __length``: the user's last
  ``L = features.sequence_length`` clicks (positives of the behaviour task, ``behaviour_task(settings)``)
  with ``event_time`` in ``[t - ttl_days, t)``: STRICTLY before ``t``, so impressions of the same request
  (same timestamp) never see each other's clicks. Newest first; ties on ``event_time`` broken by
  ``request_id`` then ``ad_id``, both descending (the daily view's order). Same names, Arrow types and
  padding as the daily view (``PAD_AD_ID`` / ``PAD_CATEGORY`` / ``PAD_CLICK_TIME``, resized to ``L``);
  a user without a click in the look-back gets an all-padding sequence of length 0 (not null).
- ``user_recent__impressions_<w>h`` and ``user_recent__<click task>_<w>h`` (int64), for each ``w`` of
  ``features.fresh_windows_hours``: the user's impressions / clicks with ``event_time`` in ``[t - w h, t)``.

A clicked ad's category is the sequence category column (the features manifest's
``sequence_category_column``, the one the daily view uses) of the ads row as of the click: the newest
row with ``created_at <= click time``; ``''`` when there is none or the ads have no taxonomy column.

:func:`fresh_behaviour` computes the columns for any table of (``user_id``, ``event_time``) rows from the
offline impressions partitions, set-based in DuckDB: per-user click "states" (a ROWS window of the last L
clicks, one state per click timestamp) matched with a strict ASOF join (``q.event_time > s.event_time``),
and per-user cumulative impression / click counts matched by ASOF joins at ``t`` and ``t - w``. The online
path (components/serving/behaviour_state.py) applies the same rule to pushed events.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from components.schemas import TIMESTAMP
from components.store.features import (
    MANIFEST,
    PAD_AD_ID,
    PAD_CATEGORY,
    PAD_CLICK_TIME,
    behaviour_task,
    taxonomy_columns,
)
from components.store.sql import connect, partition_globs, sql_ident, sql_list, sql_ts
from components.training.field_encoders import (
    RECENT_PREFIX,
    SEQUENCE_CATEGORIES,
    SEQUENCE_ITEMS,
    SEQUENCE_LENGTH,
    SEQUENCE_TIMES,
)

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from components.config import Settings

SEQUENCE_COLUMNS = (SEQUENCE_ITEMS, SEQUENCE_CATEGORIES, SEQUENCE_TIMES, SEQUENCE_LENGTH)


def fresh_lookback(settings: "Settings") -> dt.timedelta:
    """How far back a fresh feature at ``t`` reads the log: the sequence's ``ttl_days`` or the widest
    counter window, whichever is longer."""
    cfg = settings.features
    return max(dt.timedelta(days=cfg.ttl_days), dt.timedelta(hours=max(cfg.fresh_windows_hours)))


def recent_columns(settings: "Settings") -> list[str]:
    """The counter columns, in the order they are appended: per window, impressions then clicks."""
    click = behaviour_task(settings)
    return [f"{RECENT_PREFIX}{what}_{w}h" for w in settings.features.fresh_windows_hours
            for what in ("impressions", click)]


def fresh_types(settings: "Settings") -> dict[str, "pa.DataType"]:
    """Every fresh column and its Arrow type (the daily ``user_sequence`` view's types; int64 counters)."""
    import pyarrow as pa

    types = {SEQUENCE_ITEMS: pa.list_(pa.int64()), SEQUENCE_CATEGORIES: pa.list_(pa.string()),
             SEQUENCE_TIMES: pa.list_(TIMESTAMP), SEQUENCE_LENGTH: pa.int32()}
    types.update(dict.fromkeys(recent_columns(settings), pa.int64()))
    return types


def sequence_category_column(settings: "Settings", con: "duckdb.DuckDBPyConnection | None" = None,
                             ads: str | None = None) -> str | None:
    """The ads column of the sequence's categories: the features manifest's ``sequence_category_column``
    (what the daily view was built with); before any build, ``features.sequence_category_column`` or the
    first taxonomy column of relation ``ads`` on ``con``, as the build chooses it. None: no taxonomy."""
    path = settings.features_dir / MANIFEST
    if path.is_file():
        return json.loads(path.read_text()).get("sequence_category_column")
    if settings.features.sequence_category_column or con is None or ads is None:
        return settings.features.sequence_category_column
    taxonomy = taxonomy_columns(con, ads)
    return taxonomy[0] if taxonomy else None


def with_fresh_behaviour(table: "pa.Table", columns: dict[str, "pa.Array"]) -> "pa.Table":
    """``table`` with its sequence columns replaced in place by the fresh ones (cast to the table's types
    where it has them) and the ``user_recent__`` counters appended (or replaced) in ``columns``' order."""
    for name, values in columns.items():
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, table.schema.field(i), values.cast(table.schema.field(i).type))
        else:
            table = table.append_column(name, values)
    return table


def impressions_relation(con: "duckdb.DuckDBPyConnection", settings: "Settings", start: dt.datetime,
                         end: dt.datetime, name: str = "log") -> None:
    """Temp view ``name``: the offline impressions with ``event_time`` in ``[start, end)`` (user_id, ad_id,
    request_id, event_time, ``is_click`` of the behaviour task)."""
    click = behaviour_task(settings)
    # A partition can hold a little of the next day (late events): start one partition early.
    globs = partition_globs(settings.offline_dir, "impressions", start.date() - dt.timedelta(days=1), end.date())
    if globs:
        source = f"read_parquet({sql_list(globs)}, union_by_name = true, hive_partitioning = false)"
        cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        if click not in cols:
            raise ValueError(f"the behaviour task column {click!r} is not in the impressions (have {sorted(cols)})")
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT user_id, ad_id, request_id, event_time, "
            f"coalesce({sql_ident(click)} = 1, false) AS is_click FROM {source} "
            f"WHERE event_time >= {sql_ts(start)} AND event_time < {sql_ts(end)}"
        )
    else:
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT NULL::BIGINT AS user_id, NULL::BIGINT AS ad_id, "
            "NULL::VARCHAR AS request_id, NULL::TIMESTAMPTZ AS event_time, false AS is_click WHERE false"
        )


def ads_relation(con: "duckdb.DuckDBPyConnection", settings: "Settings", last: dt.date | None,
                 name: str = "ad_categories") -> str | None:
    """Temp view ``name`` of every ads row up to partition ``last`` (None: all): ``ad_id``, ``created_at``,
    ``category`` (the sequence category column, ``''`` when null). Returns the category column (None:
    the ads have no taxonomy, every category is ``''``)."""
    globs = partition_globs(settings.offline_dir, "ads", None, last)
    category = None
    if globs:
        con.execute(f"CREATE OR REPLACE TEMP VIEW ads_src AS SELECT * FROM read_parquet({sql_list(globs)}, "
                    "union_by_name = true, hive_partitioning = false)")
        category = sequence_category_column(settings, con, "ads_src")
        have = {r[0] for r in con.execute("DESCRIBE ads_src").fetchall()}
        if category is not None and category not in have:
            raise ValueError(f"the sequence category column {category!r} is not in the ads (have {sorted(have)})")
        value = f"coalesce({sql_ident(category)}::VARCHAR, '{PAD_CATEGORY}')" if category else f"'{PAD_CATEGORY}'"
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT ad_id, created_at::TIMESTAMPTZ AS created_at, "
                    f"{value} AS category FROM ads_src")
    else:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT NULL::BIGINT AS ad_id, "
                    "NULL::TIMESTAMPTZ AS created_at, NULL::VARCHAR AS category WHERE false")
    return category


def _fresh_query(settings: "Settings") -> str:
    """The fresh columns for every distinct (user_id, event_time) of temp table ``q`` over views ``log``
    and ``ad_categories``."""
    cfg = settings.features
    L = cfg.sequence_length
    # State after each click timestamp: the last L clicks (ROWS window), one per (user, event_time): the
    # row of the timestamp's last click in the tie order, which sees every click of that timestamp.
    states = f"""
        clicks AS (
            SELECT c.user_id, c.ad_id, c.request_id, c.event_time, coalesce(a.category, '{PAD_CATEGORY}') AS category
            FROM (SELECT * FROM log WHERE is_click) c
            ASOF LEFT JOIN ad_categories a ON c.ad_id = a.ad_id AND c.event_time >= a.created_at),
        states AS (
            SELECT user_id, event_time,
                   list({{'t': event_time, 'r': request_id, 'a': ad_id, 'c': category}}) OVER (
                       PARTITION BY user_id ORDER BY event_time, request_id, ad_id
                       ROWS BETWEEN {L - 1} PRECEDING AND CURRENT ROW) AS items
            FROM clicks
            QUALIFY row_number() OVER (PARTITION BY user_id, event_time ORDER BY request_id DESC, ad_id DESC) = 1),
        counts AS (
            SELECT user_id, event_time,
                   sum(n) OVER w AS cum_impressions, sum(c) OVER w AS cum_clicks
            FROM (SELECT user_id, event_time, count(*) AS n, count(*) FILTER (WHERE is_click) AS c
                  FROM log GROUP BY user_id, event_time)
            WINDOW w AS (PARTITION BY user_id ORDER BY event_time ROWS UNBOUNDED PRECEDING))"""
    windows = cfg.fresh_windows_hours
    probes = ", ".join(f"q.event_time - INTERVAL {w} HOUR AS p{w}" for w in windows)
    joins = "".join(f" ASOF LEFT JOIN counts c{w} ON p.user_id = c{w}.user_id AND p.p{w} > c{w}.event_time"
                    for w in windows)
    click = behaviour_task(settings)
    counters = ", ".join(
        f"(coalesce(c0.cum_{kind}, 0) - coalesce(c{w}.cum_{kind}, 0))::BIGINT AS "
        f"{sql_ident(f'{RECENT_PREFIX}{name}_{w}h')}"
        for w in windows for kind, name in (("impressions", "impressions"), ("clicks", click)))
    ttl = f"INTERVAL {cfg.ttl_days} DAY"
    seq = "list_filter(list_reverse_sort(coalesce(s.items, [])), x -> x.t >= p.event_time - " + ttl + ")"
    return f"""
        WITH {states},
        p AS (SELECT q.user_id, q.event_time, {probes} FROM q),
        matched AS (
            SELECT p.user_id, p.event_time, {seq} AS items, {counters}
            FROM p ASOF LEFT JOIN states s ON p.user_id = s.user_id AND p.event_time > s.event_time
            ASOF LEFT JOIN counts c0 ON p.user_id = c0.user_id AND p.event_time > c0.event_time{joins})
        SELECT user_id, event_time,
               list_resize(list_transform(items, x -> x.a), {L}, {PAD_AD_ID}::BIGINT) AS {sql_ident(SEQUENCE_ITEMS)},
               list_resize(list_transform(items, x -> x.c), {L}, '{PAD_CATEGORY}') AS {sql_ident(SEQUENCE_CATEGORIES)},
               list_resize(list_transform(items, x -> x.t), {L}, TIMESTAMPTZ '{PAD_CLICK_TIME}')
                   AS {sql_ident(SEQUENCE_TIMES)},
               len(items)::INTEGER AS {sql_ident(SEQUENCE_LENGTH)},
               {', '.join(sql_ident(c) for c in recent_columns(settings))}
        FROM matched
    """


def fresh_behaviour(settings: "Settings", entities: "pa.Table") -> dict[str, "pa.Array"]:
    """The fresh columns (:func:`fresh_types`) for each row of ``entities`` (any table with ``user_id`` and
    ``event_time``), in row order, from the offline impressions log (see the module docstring)."""
    import numpy as np
    import pyarrow as pa

    missing = [c for c in ("user_id", "event_time") if c not in entities.column_names]
    if missing:
        raise ValueError(f"fresh_behaviour needs columns {missing} (have {entities.column_names})")
    types = fresh_types(settings)
    n = entities.num_rows
    if n == 0:
        return {name: pa.array([], type=typ) for name, typ in types.items()}
    times = entities.column("event_time").cast(TIMESTAMP)
    if times.null_count or entities.column("user_id").null_count:
        raise ValueError("fresh_behaviour: user_id and event_time must not be null")
    import pyarrow.compute as pc

    first, last = pc.min(times).as_py(), pc.max(times).as_py()
    con = connect()
    try:
        keys = pa.table({"row_index": pa.array(np.arange(n, dtype=np.int64)),
                         "user_id": entities.column("user_id").cast(pa.int64()), "event_time": times})
        con.register("keys_arrow", keys)
        con.execute("CREATE TEMP TABLE keys AS SELECT * FROM keys_arrow")
        con.unregister("keys_arrow")
        con.execute("CREATE TEMP TABLE q AS SELECT DISTINCT user_id, event_time FROM keys")
        impressions_relation(con, settings, first - fresh_lookback(settings), last)
        ads_relation(con, settings, last.date())
        con.execute(f"CREATE TEMP TABLE fresh AS {_fresh_query(settings)}")
        cols = ", ".join(f"f.{sql_ident(c)}" for c in types)
        out = con.execute(
            f"SELECT k.row_index, {cols} FROM keys k JOIN fresh f USING (user_id, event_time) ORDER BY k.row_index"
        ).arrow().read_all()
    finally:
        con.close()
    if out.num_rows != n:
        raise RuntimeError(f"fresh_behaviour matched {out.num_rows} of {n} rows")
    return {name: out.column(name).combine_chunks().cast(typ) for name, typ in types.items()}


def recent_summary(columns: dict[str, Any]) -> dict[str, Any]:
    """A small summary of fresh columns for a training set's meta.json: share of rows with a sequence and
    the mean of each counter."""
    import pyarrow.compute as pc

    length = columns[SEQUENCE_LENGTH]
    n = len(length)
    out: dict[str, Any] = {"rows": n, "with_sequence": float(pc.mean(pc.greater(length, 0).cast("float64")).as_py())
                           if n else 0.0}
    for name, values in columns.items():
        if name.startswith(RECENT_PREFIX):
            out[name] = float(pc.mean(values.cast("float64")).as_py()) if n else 0.0
    return out

"""Daily feature views computed with DuckDB SQL over the offline store (DESIGN.md section 6).

``build_features(settings, day, tasks)`` computes, as of the END of ``day``, the feature views and
writes each as one parquet partition ``<features_dir>/<view>/date=YYYY-MM-DD/part-0.parquet``:

- ``user_stats`` / ``ad_stats``: per window ``w`` in ``features.rolling_windows_days``: impressions,
  positives per task and a smoothed rate per task over ``[day_end - w days, day_end)``.
- ``user_sequence``: the user's last ``sequence_length`` clicks (ad ids, ad categories, click times),
  newest first, padded to a fixed length. A "click" is a positive of the behaviour task
  (``representations.behaviour_task``, default the first task); without a taxonomy column the
  categories are all the padding value ``''``.
- ``user_profile`` / ``ad_profile``: the latest row per id of the users / ads tables.
- ``user_<attribute>_interest``: per (user, ad attribute value), for each of
  ``features.interest_attributes`` (default every taxonomy column): components/store/interest.py.

Timestamps (every view has ``event_timestamp`` and ``created_timestamp``, Arrow timestamp[us, UTC]):
stats and sequence rows are stamped ``day_end`` (the next day's 00:00 UTC) because their values are only
known once the day has closed; profile rows are stamped with the row's own ``created_at`` (an ad's
attributes are known when it is created, so a new ad's first impressions can see them).
``created_timestamp`` is when the row was computed; it breaks ties between rows with equal keys and
event timestamps. docs/features.md has the full semantics.

Everything is set-based SQL (no per-row Python); each partition is written to a temporary folder and
swapped into place (components/storage.py), so re-running a day replaces it and readers never see a
half-written day.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from components.faults import declare, fault_point
from components.schemas import ADS, USERS, day_dir, day_window
from components.storage import replace_partition, write_json_atomic
from components.store.days import begin_day, commit_day, day_lock, is_committed, require_day
from components.store.interest import interest_attributes, interest_key, interest_query, interest_view
from components.store.sql import connect, day_partitions, partition_globs, sql_ident, sql_list, sql_str, sql_ts

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from components.config import Settings

VIEWS = ("user_profile", "user_stats", "user_sequence", "ad_profile", "ad_stats")
EVENT_TS = "event_timestamp"
CREATED_TS = "created_timestamp"
# Padding of the behaviour sequence (the ``length`` column says how many entries are real).
PAD_AD_ID = -1
PAD_CATEGORY = ""
PAD_CLICK_TIME = "1970-01-01 00:00:00+00"
MANIFEST = "_views.json"
declare("features.after_first_view", "features.before_marker")

# Required ads/users columns that are not profile features: ids and timestamps are keys, the title
# and image are the text/visual engineers' inputs, not categorical features.
_AD_NON_FEATURES = {"ad_id", "title", "image", "created_at"}
_USER_NON_FEATURES = {"user_id", "created_at"}


_PROFILE_CASTS = {
    # Feast has one integer, float, string and bool type each in practice: normalise to those.
    **dict.fromkeys(
        ["BIGINT", "INTEGER", "SMALLINT", "TINYINT", "UBIGINT", "UINTEGER", "USMALLINT", "UTINYINT", "HUGEINT"],
        "BIGINT",
    ),
    **dict.fromkeys(["DOUBLE", "FLOAT", "DECIMAL"], "DOUBLE"),
    "VARCHAR": "VARCHAR",
    "BOOLEAN": "BOOLEAN",
}


def _profile_columns(con: "duckdb.DuckDBPyConnection", relation: str, excluded: set[str]) -> dict[str, str]:
    """Profile features of an ads or users relation: column -> SQL type it is written as. Extra string,
    numeric and boolean columns are kept; lists, structs, binaries and timestamps are not features."""
    keep = {}
    for name, dtype in con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {relation})").fetchall():
        cast = _PROFILE_CASTS.get(dtype.split("(")[0])
        if name not in excluded and name != "date" and cast is not None:  # 'date': a hive partition column
            keep[name] = cast
    return keep


def taxonomy_columns(con: "duckdb.DuckDBPyConnection", relation: str) -> list[str]:
    """Categorical taxonomy columns of the ads: extra string columns beyond the contract's required ones."""
    required = set(ADS.required.names)
    return [
        name
        for name, dtype in con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {relation})").fetchall()
        if dtype == "VARCHAR" and name not in required and name != "date"
    ]


def _write_partition(con: "duckdb.DuckDBPyConnection", query: str, target: Path) -> int:
    """COPY ``query`` to ``target/part-0.parquet`` atomically (``storage.replace_partition``); returns its rows."""
    rows: list[int] = []

    def write(tmp: Path) -> None:
        con.execute(f"COPY ({query}) TO {sql_str(tmp / 'part-0.parquet')} (FORMAT parquet, COMPRESSION zstd)")
        rows.append(con.execute(f"SELECT count(*) FROM read_parquet({sql_str(tmp / 'part-0.parquet')})").fetchone()[0])

    replace_partition(target, write)
    return int(rows[0])


def _stats_query(
    key: str, tasks: Sequence[str], windows: Sequence[int], day_end: dt.datetime, prior: float, built_at: dt.datetime
) -> str:
    """Rolling stats of one entity as of ``day_end`` over relation ``imp``.

    Rows are emitted for every entity with an impression in the largest window plus one day: the extra
    day writes an all-zero row the day an entity's last impression leaves the window, so the point-in-time
    join never keeps serving the older, non-zero row."""
    span = max(windows) + 1
    aggs, global_aggs, selects = [], [], [f"a.{key} AS {key}"]
    for w in windows:
        since = sql_ts(day_end - dt.timedelta(days=w))
        inside = f"event_time >= {since}"
        aggs.append(f"count(*) FILTER (WHERE {inside}) AS impressions_{w}d")
        global_aggs.append(f"count(*) FILTER (WHERE {inside}) AS g_impressions_{w}d")
        selects.append(f"a.impressions_{w}d")
        for t in tasks:
            col = sql_ident(t)
            # sum() of BIGINT is HUGEINT in DuckDB: cast back so the column is int64 in parquet and Feast.
            aggs.append(f"coalesce(sum({col}::BIGINT) FILTER (WHERE {inside}), 0)::BIGINT AS {sql_ident(f'{t}_{w}d')}")
            global_aggs.append(f"sum({col}::BIGINT) FILTER (WHERE {inside}) AS {sql_ident(f'g_{t}_{w}d')}")
            pos, imps = f"a.{sql_ident(f'{t}_{w}d')}", f"a.impressions_{w}d"
            g_rate = f"(g.{sql_ident(f'g_{t}_{w}d')}::DOUBLE / nullif(g.g_impressions_{w}d, 0))"
            # Smoothed rate: `prior` pseudo-impressions at the window's global rate; an entity with zero
            # impressions in the window gets the global rate (or NULL when prior is 0, the raw rate).
            rate = f"({pos} + {prior} * {g_rate}) / nullif({imps} + {prior}, 0)"
            selects.extend([pos, f"{rate}::DOUBLE AS {sql_ident(f'{t}_rate_{w}d')}"])
    start = sql_ts(day_end - dt.timedelta(days=span))
    return f"""
        WITH win AS (SELECT * FROM imp WHERE event_time >= {start} AND event_time < {sql_ts(day_end)}),
        a AS (SELECT {key}, {', '.join(aggs)} FROM win GROUP BY {key}),
        g AS (SELECT {', '.join(global_aggs)} FROM win)
        SELECT {', '.join(selects)}, {sql_ts(day_end)} AS {EVENT_TS}, {sql_ts(built_at)} AS {CREATED_TS}
        FROM a CROSS JOIN g ORDER BY a.{key}
    """


def pick_task(value: str | None, tasks: Sequence[str], key: str) -> str:
    """The task a setting names (``key`` in the message), or the first task when it names none."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError(f"{key}: there are no task columns to choose from (Settings.tasks is empty)")
    if value is None:
        return tasks[0]
    if value not in tasks:
        raise ValueError(f"{key} is {value!r}, which is not one of the tasks {tasks} (the source's label "
                         "columns, Settings.tasks); name one of them or leave it unset for the first")
    return value


def behaviour_task(settings: "Settings", tasks: Sequence[str] | None = None) -> str:
    """The task whose positives are the user's behaviour: the click sequence here, and in
    components/representations/refresh.py the graph's edges and the interest vectors (which average the
    sequence's ads). ``representations.behaviour_task``, default the first task."""
    return pick_task(settings.representations.behaviour_task,
                     tasks if tasks is not None else settings.tasks, "representations.behaviour_task")


def impressions_landed(settings: "Settings", day: dt.date) -> bool:
    """Whether ingestion landed and committed ``day`` (components/store/days.py): the impressions folder exists,
    with a parquet file or, for a day without impressions, possibly none (an empty day is still a day)."""
    return day_dir(settings.offline_dir, "impressions", day).is_dir() and is_committed(settings.offline_dir, day)


def lookback_days(settings: "Settings") -> int:
    """How many days before ``day`` the build of ``day`` reads impressions partitions from: the widest
    rolling window plus the retiring day, or the click-sequence look-back (the TTL), whichever is longer,
    plus one partition for late events. Days [day - lookback_days, day] are the build's inputs."""
    return max(max(settings.features.rolling_windows_days) + 1, settings.features.ttl_days)


def build_features(settings: "Settings", day: dt.date, tasks: Sequence[str] | None = None) -> dict[str, int]:
    """Compute every feature view as of the end of ``day`` and write its partition; rows per view.

    Reads the offline store's ``impressions`` partitions of the look-back window (the largest rolling
    window, and ``ttl_days`` for the click sequence) and every ``ads`` / ``users`` partition up to ``day``.
    Idempotent: re-running a day replaces that day's partitions. Its commit marker (components/store/days.py)
    is removed first and written last; a half-ingested offline day raises ``HalfWrittenDay`` naming it."""
    cfg = settings.features
    tasks, windows = _tasks_and_windows(settings, tasks)
    click_task = behaviour_task(settings, tasks)
    _, day_end = day_window(day)
    offline = settings.offline_dir
    # One extra partition at the start: with a late-event tolerance, a partition may hold events a
    # little past its own day, so the first day of a window can start in the partition before it.
    imp_globs = partition_globs(offline, "impressions", day - dt.timedelta(days=lookback_days(settings)), day)
    require_day(offline, day, f"`adsrec ingest --date {day}` again")
    if not impressions_landed(settings, day):
        raise FileNotFoundError(f"no impressions partition for {day} under {offline / 'impressions'}; "
                                "ingest the day first")
    built_at = dt.datetime.now(dt.timezone.utc)

    con = connect()
    _impressions_view(con, imp_globs, tasks, day)
    rows: dict[str, int] = {}
    features = settings.features_dir
    with day_lock(features, day):  # a concurrent writer of the day (another command) waits
        begin_day(features, day, VIEWS)
        # --- rolling stats ------------------------------------------------------------------------------
        for view, key in (("user_stats", "user_id"), ("ad_stats", "ad_id")):
            query = _stats_query(key, tasks, windows, day_end, cfg.rate_prior_strength, built_at)
            rows[view] = _write_partition(con, query, day_dir(features, view, day))
            fault_point("features.after_first_view")
        # --- profiles and behaviour sequence --------------------------------------------------------------
        category_col = _write_profiles(con, settings, day, built_at, rows)
        # --- user x ad-attribute interest (components/store/interest.py) ----------------------------------
        interest = interest_attributes(cfg.interest_attributes, taxonomy_columns(con, "latest_ads"))
        for attribute in interest:
            query = interest_query(attribute, tasks, windows, day_end, cfg.rate_prior_strength, built_at)
            view = interest_view(attribute)
            rows[view] = _write_partition(con, query, day_dir(features, view, day))
        seq_query = _sequence_query(settings, day, click_task, category_col, built_at)
        rows["user_sequence"] = _write_partition(con, seq_query, day_dir(features, "user_sequence", day))
        con.close()

        _write_manifest(settings, tasks, windows, category_col, click_task, interest)
        fault_point("features.before_marker")
        views = (*VIEWS, *map(interest_view, interest))
        commit_day(features, day, views)
    return {v: rows[v] for v in views}


def _tasks_and_windows(settings: "Settings", tasks: Sequence[str] | None) -> tuple[list[str], list[int]]:
    """The task columns to build for (default ``settings.tasks``) and the sorted rolling windows, checked."""
    cfg = settings.features
    tasks = list(tasks if tasks is not None else settings.tasks)
    if not tasks:
        raise ValueError("build_features needs at least one task column (e.g. click)")
    if any(w < 1 for w in cfg.rolling_windows_days):
        raise ValueError(f"features.rolling_windows_days must be >= 1, got {cfg.rolling_windows_days}")
    return tasks, sorted(set(cfg.rolling_windows_days))


def _impressions_view(con: "duckdb.DuckDBPyConnection", imp_globs: list[str], tasks: list[str], day: dt.date) -> None:
    """View ``imp`` over the look-back's impressions partitions; every task column must be in it."""
    if imp_globs:
        con.execute(
            f"CREATE VIEW imp AS SELECT * FROM read_parquet({sql_list(imp_globs)}, union_by_name = true, "
            "hive_partitioning = false)"
        )
    else:  # every day of the look-back is empty (landed without a file): the contract's columns, no rows
        from components.schemas import impressions_schema

        con.register("imp_empty", impressions_schema(tasks).empty_table())
        con.execute("CREATE VIEW imp AS SELECT * FROM imp_empty")
    imp_cols = {r[0] for r in con.execute("DESCRIBE imp").fetchall()}
    missing = [t for t in tasks if t not in imp_cols]
    if missing:
        raise ValueError(f"task column(s) {missing} are not in the impressions of {day} (have {sorted(imp_cols)})")


def _write_profiles(con: "duckdb.DuckDBPyConnection", settings: "Settings", day: dt.date, built_at: dt.datetime,
                    rows: dict[str, int]) -> str | None:
    """Write ``ad_profile`` and ``user_profile`` (the latest row per id known by the end of the day; their
    rows go to ``rows``) and leave views ``latest_ads`` / ``latest_users``; returns the sequence's
    category column (None: no taxonomy)."""
    cfg = settings.features
    _, day_end = day_window(day)
    category_col: str | None = None
    for view, table, key, excluded in (
        ("ad_profile", "ads", "ad_id", _AD_NON_FEATURES),
        ("user_profile", "users", "user_id", _USER_NON_FEATURES),
    ):
        cols = _latest_view(con, partition_globs(settings.offline_dir, table, None, day), table, key, excluded,
                            day_end)
        if table == "ads":
            taxonomy = taxonomy_columns(con, "latest_ads")
            category_col = cfg.sequence_category_column or (taxonomy[0] if taxonomy else None)
            if category_col is not None and category_col not in cols:
                raise ValueError(
                    f"features.sequence_category_column {category_col!r} is not a categorical column of the "
                    f"ads table (have {cols})"
                )
        select = ", ".join(f"{sql_ident(c)}::{t} AS {sql_ident(c)}" for c, t in cols.items())
        query = (
            f"SELECT {key}, {select}{', ' if select else ''}created_at::TIMESTAMPTZ AS {EVENT_TS}, "
            f"{sql_ts(built_at)} AS {CREATED_TS} FROM latest_{table} ORDER BY {key}"
        )
        rows[view] = _write_partition(con, query, day_dir(settings.features_dir, view, day))
    return category_col


def _latest_view(con: "duckdb.DuckDBPyConnection", globs: list[str], table: str, key: str, excluded: set[str],
                 day_end: dt.datetime) -> dict[str, str]:
    """View ``latest_<table>``: the latest ads or users row per id created before ``day_end``; returns its
    profile columns (column -> SQL type)."""
    if globs:
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW src_{table} AS SELECT * FROM read_parquet({sql_list(globs)}, "
            "union_by_name = true, hive_partitioning = false)"
        )
        cols = _profile_columns(con, f"src_{table}", excluded)
        latest = f"""
            SELECT * FROM src_{table} WHERE created_at < {sql_ts(day_end)}
            QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY created_at DESC) = 1
        """
    else:
        # No partition yet: an empty view with the contract's required profile columns.
        contract = ADS if table == "ads" else USERS
        required = {"advertiser_id": "BIGINT", "campaign_id": "BIGINT", "bid": "DOUBLE"}
        cols = {c: required[c] for c in contract.required.names if c not in excluded}
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW src_{table} AS SELECT NULL::BIGINT AS {key}, "
            + "".join(f"NULL::{t} AS {c}, " for c, t in cols.items())
            + "NULL::TIMESTAMPTZ AS created_at WHERE false"
        )
        latest = f"SELECT * FROM src_{table}"
    con.execute(f"CREATE OR REPLACE TEMP VIEW latest_{table} AS {latest}")
    return cols


def _sequence_query(settings: "Settings", day: dt.date, click_task: str, category_col: str | None,
                    built_at: dt.datetime) -> str:
    """The ``user_sequence`` rows over views ``imp`` and ``latest_ads``.

    A row only for users who clicked during the day: the sequence changes only on a click, and the
    point-in-time join keeps serving a user's latest row until then (or until the TTL, which is also
    the sequence's look-back, runs out)."""
    cfg = settings.features
    day_start, day_end = day_window(day)
    L = cfg.sequence_length
    seq_start = sql_ts(day_end - dt.timedelta(days=cfg.ttl_days))
    cat_expr = f"coalesce(a.{sql_ident(category_col)}, '{PAD_CATEGORY}')" if category_col else f"'{PAD_CATEGORY}'"
    return f"""
        WITH clicks AS (
            SELECT user_id, ad_id, event_time, request_id FROM imp
            WHERE {sql_ident(click_task)} = 1 AND event_time >= {seq_start} AND event_time < {sql_ts(day_end)}),
        active AS (SELECT DISTINCT user_id FROM clicks WHERE event_time >= {sql_ts(day_start)}),
        recent AS (
            SELECT c.*, row_number() OVER (PARTITION BY c.user_id ORDER BY c.event_time DESC, c.request_id DESC) AS rn
            FROM clicks c SEMI JOIN active USING (user_id)
            QUALIFY rn <= {L}),
        seq AS (
            SELECT r.user_id,
                   list(r.ad_id ORDER BY r.rn) AS ad_ids,
                   list({cat_expr} ORDER BY r.rn) AS categories,
                   list(r.event_time ORDER BY r.rn) AS click_times,
                   count(*)::INTEGER AS length
            FROM recent r LEFT JOIN latest_ads a ON a.ad_id = r.ad_id
            GROUP BY r.user_id)
        SELECT user_id,
               list_resize(ad_ids, {L}, {PAD_AD_ID}::BIGINT) AS ad_ids,
               list_resize(categories, {L}, '{PAD_CATEGORY}') AS categories,
               list_resize(click_times, {L}, TIMESTAMPTZ '{PAD_CLICK_TIME}') AS click_times,
               length, {sql_ts(day_end)} AS {EVENT_TS}, {sql_ts(built_at)} AS {CREATED_TS}
        FROM seq ORDER BY user_id
    """


def _write_manifest(settings: "Settings", tasks: list[str], windows: list[int], category: str | None,
                    sequence_task: str, interest: list[str]) -> None:
    """``<features_dir>/_views.json``: how the views were built (the Feast repo reads the TTL and the
    interest views from it)."""
    cfg = settings.features
    manifest = {
        "views": list(VIEWS),
        "tasks": tasks,
        "rolling_windows_days": windows,
        "sequence_length": cfg.sequence_length,
        "sequence_task": sequence_task,
        "sequence_category_column": category,
        "rate_prior_strength": cfg.rate_prior_strength,
        "ttl_days": cfg.ttl_days,
        "interest_views": {interest_view(a): {"attribute": a, "key": interest_key(a)} for a in interest},
    }
    write_json_atomic(settings.features_dir / MANIFEST, manifest, sort_keys=False)


def read_view(settings: "Settings", view: str, days: Sequence[dt.date] | None = None) -> "pa.Table":
    """A feature view's committed partitions (all, or the given days) as one Arrow table (tests, inspection)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if view not in VIEWS and not (settings.features_dir / view).is_dir():
        raise ValueError(f"unknown feature view {view!r}; expected one of {VIEWS} or a built interest view")
    base = settings.features_dir / view
    wanted = set(days or ())
    files = [f for d, p in day_partitions(base, min(wanted, default=None), max(wanted, default=None))
             if not wanted or d in wanted for f in sorted(p.glob("*.parquet"))]
    if not files:
        raise FileNotFoundError(f"no partitions of feature view {view} under {base}")
    return pa.concat_tables([pq.read_table(f) for f in files])


def build_features_range(
    settings: "Settings", first: dt.date, last: dt.date, tasks: Sequence[str] | None = None
) -> dict[str, Any]:
    """``build_features`` for every day in [first, last], in order; rows per view summed."""
    total: dict[str, int] = {v: 0 for v in VIEWS}
    for i in range((last - first).days + 1):
        for view, n in build_features(settings, first + dt.timedelta(days=i), tasks).items():
            total[view] = total.get(view, 0) + n
    return total

"""User x ad-attribute interest views: point-in-time statistics per (user, value of one ad attribute), in
DuckDB SQL, and the composite key that joins them to an impression (docs/features.md, "Interest views").

For each attribute ``a`` of ``features.interest_attributes`` (default: every taxonomy column of the ads,
e.g. ``master_category``, ``sub_category``, ``article_type``) the build writes the view
``user_<a>_interest``: one row per (user, value of ``a``) with, per rolling window ``w``, the user's
impressions of ads with that value, positives per task and a smoothed rate per task over
``[day_end - w days, day_end)``, stamped ``day_end`` like ``user_stats`` (so a day's own impressions
never count for that day's impressions). The rate's prior is the USER's own smoothed rate of the window
(itself smoothed toward the window's global rate): ``(pos + m * prior_user) / (imp + m)``.

The view is keyed on one composite string column ``user_<a>_key`` = ``'<user_id>|<value>'``. The
impression's value of ``a`` is its ad's ``ad_profile__<a>`` at the impression's time (the same
point-in-time rule as every view), so the training set and the online row derive the key from the same
column with :func:`interest_keys`.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Sequence

from components.store.sql import sql_ident, sql_ts

if TYPE_CHECKING:
    import pyarrow as pa

KEY_SEPARATOR = "|"
PROFILE_PREFIX = "ad_profile__"


def interest_view(attribute: str) -> str:
    """The view of one attribute: ``user_<attribute>_interest``."""
    return f"user_{attribute}_interest"


def interest_key(attribute: str) -> str:
    """The composite key column (and Feast entity) of one attribute's view: ``user_<attribute>_key``."""
    return f"user_{attribute}_key"


def interest_attributes(configured: Sequence[str] | None, taxonomy: Sequence[str]) -> list[str]:
    """The attributes to build views for: the configured list, or every taxonomy column of the ads
    (a source without taxonomy columns gets none). A configured name the ads lack is an error."""
    if configured is None:
        return list(taxonomy)
    missing = [a for a in configured if a not in taxonomy]
    if missing:
        raise ValueError(f"features.interest_attributes {missing} are not categorical columns of the ads table "
                         f"(have {list(taxonomy)})")
    return list(dict.fromkeys(configured))


def interest_query(attribute: str, tasks: Sequence[str], windows: Sequence[int], day_end: dt.datetime,
                   prior: float, built_at: dt.datetime) -> str:
    """Rows of ``user_<attribute>_interest`` as of ``day_end`` over views ``imp`` and ``latest_ads``.

    Like the rolling stats, a row for every (user, value) with an impression in the widest window plus
    one day, so the day a pair's last impression leaves the window writes an all-zero row."""
    span = max(windows) + 1
    attr = sql_ident(attribute)
    pair_aggs, user_aggs, global_aggs, selects = [], [], [], []
    for w in windows:
        inside = f"event_time >= {sql_ts(day_end - dt.timedelta(days=w))}"
        pair_aggs.append(f"count(*) FILTER (WHERE {inside}) AS impressions_{w}d")
        user_aggs.append(f"count(*) FILTER (WHERE {inside}) AS u_imp_{w}d")
        global_aggs.append(f"count(*) FILTER (WHERE {inside}) AS g_imp_{w}d")
        selects.append(f"p.impressions_{w}d")
        for i, t in enumerate(tasks):
            col, pos = sql_ident(t), sql_ident(f"{t}_{w}d")
            pair_aggs.append(f"coalesce(sum({col}::BIGINT) FILTER (WHERE {inside}), 0)::BIGINT AS {pos}")
            user_aggs.append(f"coalesce(sum({col}::BIGINT) FILTER (WHERE {inside}), 0) AS u_pos_{i}_{w}d")
            global_aggs.append(f"sum({col}::BIGINT) FILTER (WHERE {inside}) AS g_pos_{i}_{w}d")
            g_rate = f"(g.g_pos_{i}_{w}d::DOUBLE / nullif(g.g_imp_{w}d, 0))"
            # The user's own rate of the window, smoothed toward the global rate, is the pair's prior.
            u_rate = f"((u.u_pos_{i}_{w}d + {prior} * {g_rate}) / nullif(u.u_imp_{w}d + {prior}, 0))"
            rate = f"(p.{pos} + {prior} * {u_rate}) / nullif(p.impressions_{w}d + {prior}, 0)"
            selects.extend([f"p.{pos}", f"{rate}::DOUBLE AS {sql_ident(f'{t}_rate_{w}d')}"])
    window = f"event_time >= {sql_ts(day_end - dt.timedelta(days=span))} AND event_time < {sql_ts(day_end)}"
    key = interest_key(attribute)
    return f"""
        WITH win AS (SELECT * FROM imp WHERE {window}),
        pairs AS (SELECT w.*, a.{attr} AS attribute_value FROM win w JOIN latest_ads a USING (ad_id)
                  WHERE a.{attr} IS NOT NULL),
        p AS (SELECT user_id, attribute_value, {', '.join(pair_aggs)} FROM pairs GROUP BY user_id, attribute_value),
        u AS (SELECT user_id, {', '.join(user_aggs)} FROM win GROUP BY user_id),
        g AS (SELECT {', '.join(global_aggs)} FROM win)
        SELECT p.user_id::VARCHAR || '{KEY_SEPARATOR}' || p.attribute_value AS {key}, {', '.join(selects)},
               {sql_ts(day_end)} AS event_timestamp, {sql_ts(built_at)} AS created_timestamp
        FROM p JOIN u USING (user_id) CROSS JOIN g ORDER BY {key}
    """


def interest_keys(user_ids: "pa.Array | pa.ChunkedArray", values: "pa.Array | pa.ChunkedArray") -> "pa.Array":
    """The composite keys ``'<user_id>|<value>'`` of rows with these user ids and attribute values (the
    same text as the SQL's ``user_id::VARCHAR || '|' || value``); null where the value is null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    users = pa.chunked_array([user_ids]) if isinstance(user_ids, pa.Array) else user_ids
    vals = pa.chunked_array([values]) if isinstance(values, pa.Array) else values
    keys = pc.binary_join_element_wise(users.cast(pa.string()), vals.cast(pa.string()), KEY_SEPARATOR)
    return keys.combine_chunks()


def with_interest_keys(entities: "pa.Table", rows: Any, specs: Sequence[Any]) -> "pa.Table":
    """``entities`` plus the key column of every interest view of ``specs`` (those with an ``attribute``),
    from ``rows``' ``user_id`` and ``ad_profile__<attribute>`` (a table or a dict of columns)."""
    for spec in specs:
        if getattr(spec, "attribute", None):
            keys = interest_keys(rows["user_id"], rows[PROFILE_PREFIX + spec.attribute])
            entities = entities.append_column(spec.join_key, keys)
    return entities


"""The representation views: the tables the daily refresh writes for Feast, and their partitions.

One partition per view and day, ``<features_dir>/<view>/date=D/part-0.parquet``, replaced atomically
(components/representations/refresh.py has the table of views, their rows and their stamps). Vectors are
``list<float32>`` columns named ``vector`` (Feast ``Array(Float32)``); ``event_timestamp`` is the ad's
``created_at`` for content views and the end of the day for user and graph views; ``created_timestamp``
is when the refresh built them.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import numpy as np

from components.representations.similarity import gather_rows, mean_vectors, sequence_matrix
from components.schemas import day_dir

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings

EVENT_TS = "event_timestamp"
CREATED_TS = "created_timestamp"
VECTOR = "vector"
REPRESENTATION_VIEWS = (
    "ad_semantic_id",
    "ad_text_embedding",
    "ad_visual_embedding",
    "user_text_interest",
    "user_visual_interest",
    "user_graph_embedding",
    "ad_graph_embedding",
)


def vector_column(matrix: np.ndarray) -> "pa.Array":
    """A float32 [n, d] matrix as a ``list<float32>`` column (what Feast reads as ``Array(Float32)``)."""
    import pyarrow as pa

    n, d = matrix.shape
    values = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel(), type=pa.float32())
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32), type=pa.int32())
    return pa.ListArray.from_arrays(offsets, values)


def write_view(settings: "Settings", view: str, day: dt.date, table: "pa.Table") -> int:
    """Replace the view's partition of ``day`` atomically (components/storage.py); returns its rows."""
    from components.storage import replace_partition, write_parquet_durable

    replace_partition(day_dir(settings.features_dir, view, day),
                      lambda tmp: write_parquet_durable(table, tmp / "part-0.parquet"))
    return table.num_rows


def _stamps(n: int, value: dt.datetime) -> "pa.Array":
    import pyarrow as pa

    from components.schemas import TIMESTAMP

    return pa.array([value] * n, type=TIMESTAMP) if n else pa.array([], type=TIMESTAMP)


def ad_vector_view(ads: "pa.Table", store: Any, built_at: dt.datetime) -> "pa.Table":
    """``ad_id``, ``vector``, stamped with the ad's ``created_at``; ads without input have no row."""
    import pyarrow as pa

    ad_ids = ads.column("ad_id").to_numpy()
    pos, ok = gather_rows(store, ad_ids)
    keep = np.flatnonzero(ok)
    dim = store.vectors.shape[1]
    vectors = store.vectors[pos[keep]] if keep.size else np.zeros((0, dim), np.float32)
    return pa.table({
        "ad_id": pa.array(ad_ids[keep], pa.int64()),
        VECTOR: vector_column(vectors),
        EVENT_TS: ads.column("created_at").take(pa.array(keep, pa.int64())),
        CREATED_TS: _stamps(keep.size, built_at),
    })


def interest_view(sequences: "pa.Table", store: Any, day_end: dt.datetime, built_at: dt.datetime,
                   last_n: int) -> "pa.Table":
    """``user_id``, ``vector`` (mean of the usable clicked ads' vectors), ``clicks_used`` (how many);
    users with no usable clicked ad have no row."""
    import pyarrow as pa

    seq = sequence_matrix(sequences, last_n)
    means, defined = mean_vectors(seq, store)
    pos, ok = gather_rows(store, seq) if seq.size else (seq, np.zeros(seq.shape, bool))
    used = ok.sum(axis=1).astype(np.int32)
    keep = np.flatnonzero(defined)
    users = sequences.column("user_id").to_numpy()
    return pa.table({
        "user_id": pa.array(users[keep], pa.int64()),
        VECTOR: vector_column(means[keep]),
        "clicks_used": pa.array(used[keep], pa.int32()),
        EVENT_TS: _stamps(keep.size, day_end),
        CREATED_TS: _stamps(keep.size, built_at),
    })


def graph_views(graph: Any, day_end: dt.datetime, built_at: dt.datetime) -> tuple["pa.Table", "pa.Table"]:
    """The ``user_graph_embedding`` and ``ad_graph_embedding`` tables of a graph run, stamped ``day_end``."""
    import pyarrow as pa

    out = []
    for key, ids, vectors in (("user_id", graph.user_ids, graph.user_vectors),
                              ("ad_id", graph.ad_ids, graph.ad_vectors)):
        n = ids.shape[0]
        out.append(pa.table({
            key: pa.array(ids, pa.int64()),
            VECTOR: vector_column(np.asarray(vectors, np.float32).reshape(n, -1)),
            EVENT_TS: _stamps(n, day_end),
            CREATED_TS: _stamps(n, built_at),
        }))
    return out[0], out[1]


def empty_vector_view(key: str, dim: int) -> "pa.Table":
    """A vector view without rows (a day without a new graph snapshot)."""
    import pyarrow as pa

    from components.schemas import TIMESTAMP

    return pa.table({
        key: pa.array([], pa.int64()),
        VECTOR: vector_column(np.zeros((0, dim), np.float32)),
        EVENT_TS: pa.array([], TIMESTAMP),
        CREATED_TS: pa.array([], TIMESTAMP),
    })


def semantic_id_view(ads: "pa.Table", codes: "pa.Table", sids: list[str], built_at: dt.datetime) -> "pa.Table":
    """Every ad of the day with its codes, stamped with its ``created_at``."""
    import pyarrow as pa

    ad_ids = ads.column("ad_id").to_numpy()
    code_ids = codes.column("ad_id").to_numpy()
    pos = np.searchsorted(code_ids, ad_ids)  # codes are sorted by ad_id and cover every ad of the day
    columns: dict[str, Any] = {"ad_id": pa.array(ad_ids, pa.int64())}
    for c in sids:
        columns[c] = codes.column(c).take(pa.array(pos, pa.int64()))
    columns[EVENT_TS] = ads.column("created_at")
    columns[CREATED_TS] = _stamps(ads.num_rows, built_at)
    return pa.table(columns)


def representation_views(settings: "Settings") -> list[Any]:
    """Specs of the representation views built under ``settings.home`` (feature_repo/adsrec_views.py)."""
    from components.store.feast_store import views_module

    names = set(REPRESENTATION_VIEWS)
    specs = views_module().view_specs(settings.home, settings.features.ttl_days, representations=True)
    return [s for s in specs if s.name in names]

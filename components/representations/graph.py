"""Graph embeddings, day by day: LightGCN on the user-ad click graph (issue 3, DESIGN.md section 6).

The click log of a training window is a bipartite user-ad graph; LightGCN learns user and ad vectors on
it (the model and its training: components/representations/lightgcn.py). This module holds the daily
refresh and the snapshots on disk.

Daily refresh (:func:`refresh_graph`): train on the clicks of the ``graph_window_days`` days ending on
the run day; when ``graph_warm_start`` is on, the ego vectors start from the newest earlier snapshot,
mapped onto today's ids (ids new to the graph get fresh random rows). Snapshots live at
``<embeddings_dir>/graph/date=YYYY-MM-DD/{users,ads}.parquet`` and are swapped in atomically.

Fallback for users and ads unseen in the graph (new users, new ads, anyone without a click edge in the
window): the zero vector and ``found=False``. Their dot-product score is 0 and their cosine similarity
is undefined; consumers treat them as missing (docs/representations.md, "Graph embeddings").
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from components.representations.lightgcn import GraphVectors, train_lightgcn
from components.schemas import TIMESTAMP, day_dir, day_window
from components.storage import replace_partition

if TYPE_CHECKING:
    from components.config import Settings

log = logging.getLogger(__name__)

GRAPH_SPACE = "graph"  # folder under settings.embeddings_dir
USERS_FILE = "users.parquet"
ADS_FILE = "ads.parquet"
REPORT_FILE = "report.json"
METADATA_KEY = b"adsrec.graph"
CLICK_COLUMNS = ("user_id", "ad_id", "event_time")



# --- daily refresh and snapshots -----------------------------------------------------------------
def graph_dir(settings: "Settings") -> Path:
    return settings.embeddings_dir / GRAPH_SPACE


def graph_snapshots(settings: "Settings") -> list[dt.date]:
    """Days with a saved graph snapshot, ascending (temp folders, which start with a dot, are ignored)."""
    from components.store.sql import day_partitions

    return [day for day, _ in day_partitions(graph_dir(settings))]


def _vectors_table(id_name: str, ids: np.ndarray, vectors: np.ndarray, ego: np.ndarray | None,
                   meta: dict[str, Any]) -> pa.Table:
    dim = vectors.shape[1]

    def fixed(m: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(m, np.float32).ravel()), dim)

    cols = {id_name: pa.array(ids, pa.int64()), "vector": fixed(vectors)}
    if ego is not None:
        cols["ego"] = fixed(ego)
    table = pa.table(cols)
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})


def save_graph(settings: "Settings", day: dt.date, vectors: GraphVectors, report: dict[str, Any] | None = None) -> Path:
    """Write ``vectors`` as the snapshot of ``day`` (replacing any previous one atomically)."""
    from components.storage import write_parquet_durable

    meta = {**vectors.metadata, "day": day.isoformat()}
    users = _vectors_table("user_id", vectors.user_ids, vectors.user_vectors, vectors.user_ego, meta)
    ads = _vectors_table("ad_id", vectors.ad_ids, vectors.ad_vectors, vectors.ad_ego, meta)
    final = day_dir(settings.embeddings_dir, GRAPH_SPACE, day)

    def write(tmp: Path) -> None:
        write_parquet_durable(users, tmp / USERS_FILE)
        write_parquet_durable(ads, tmp / ADS_FILE)
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True, default=str))

    replace_partition(final, write)
    return final


def _read_vectors(path: Path, id_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    dim = int(meta.get("dim") or table.schema.field("vector").type.list_size)
    ids = table[id_name].to_numpy().astype(np.int64, copy=False)

    def matrix(col: str) -> np.ndarray:
        flat = table[col].combine_chunks().values.to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(-1, dim)

    ego = matrix("ego") if "ego" in table.column_names else None
    return ids, matrix("vector"), ego, meta


def load_graph(settings: "Settings", day: dt.date) -> GraphVectors | None:
    """The newest snapshot dated ``day`` or earlier (vectors trained on clicks through that date), or None
    when there is none. A consumer scoring impressions of day D asks for D - 1 to stay point-in-time."""
    days = [d for d in graph_snapshots(settings) if d <= day]
    if not days:
        return None
    folder = day_dir(settings.embeddings_dir, GRAPH_SPACE, days[-1])
    user_ids, user_vec, user_ego, meta = _read_vectors(folder / USERS_FILE, "user_id")
    ad_ids, ad_vec, ad_ego, _ = _read_vectors(folder / ADS_FILE, "ad_id")
    return GraphVectors(user_ids, user_vec, ad_ids, ad_vec, user_ego, ad_ego, metadata=meta)


def _window_clicks(clicks: pa.Table, first: dt.date, last: dt.date) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.compute as pc

    missing = [c for c in CLICK_COLUMNS if c not in clicks.column_names]
    if missing:
        raise ValueError(f"clicks table lacks column(s) {missing}; it needs {list(CLICK_COLUMNS)}")
    start, _ = day_window(first)
    _, end = day_window(last)
    t = clicks["event_time"]
    if t.type != TIMESTAMP:
        t = t.cast(TIMESTAMP)
    keep = pc.and_(
        pc.greater_equal(t, pa.scalar(start, TIMESTAMP)), pc.less(t, pa.scalar(end, TIMESTAMP))
    )
    # Rows with a null id cannot be edges.
    keep = pc.and_(keep, pc.and_(pc.is_valid(clicks["user_id"]), pc.is_valid(clicks["ad_id"])))
    window = clicks.select(["user_id", "ad_id"]).filter(pc.fill_null(keep, False))
    return (window["user_id"].to_numpy().astype(np.int64, copy=False),
            window["ad_id"].to_numpy().astype(np.int64, copy=False))


def refresh_graph(settings: "Settings", day: dt.date, clicks: pa.Table) -> tuple[GraphVectors, dict[str, Any]]:
    """Train LightGCN on the clicks of the ``graph_window_days`` days ending on ``day`` (UTC days; rows of
    ``clicks`` outside the window are ignored), warm-started from the newest snapshot before ``day`` when
    ``graph_warm_start``, save the snapshot of ``day`` and return it with a report.

    ``clicks`` has one row per click with ``user_id``, ``ad_id`` and ``event_time`` (other columns are
    ignored). Re-running a day never warm-starts from its own earlier snapshot, so a re-run gives the
    same vectors as the first run.
    """
    cfg = settings.representations
    first = day - dt.timedelta(days=cfg.graph_window_days - 1)
    users, ads = _window_clicks(clicks, first, day)

    warm: GraphVectors | None = None
    warm_from: dt.date | None = None
    warm_note = "disabled" if not cfg.graph_warm_start else "no earlier snapshot"
    if cfg.graph_warm_start:
        earlier = [d for d in graph_snapshots(settings) if d < day]
        if earlier:
            candidate = load_graph(settings, earlier[-1])
            if candidate is not None and candidate.dim == cfg.graph_dim:
                warm, warm_from, warm_note = candidate, earlier[-1], "ok"
            elif candidate is not None:
                warm_note = f"snapshot {earlier[-1]} has dim {candidate.dim}, config has {cfg.graph_dim}: cold start"

    t0 = time.perf_counter()
    vectors = train_lightgcn(
        users, ads, dim=cfg.graph_dim, layers=cfg.graph_layers, epochs=cfg.graph_epochs, lr=cfg.graph_lr,
        seed=cfg.seed, warm_start=warm, batch_size=cfg.graph_batch_size, reg=cfg.graph_reg,
    )
    seconds = time.perf_counter() - t0
    vectors.metadata.update(day=day.isoformat(), window_start=first.isoformat(), window_end=day.isoformat(),
                            warm_start_from=warm_from.isoformat() if warm_from else None)
    report: dict[str, Any] = {
        "day": day.isoformat(),
        "window_start": first.isoformat(),
        "window_end": day.isoformat(),
        "click_rows": int(users.size),
        "edges": int(vectors.metadata.get("edges", 0)),
        "users": int(vectors.user_ids.size),
        "ads": int(vectors.ad_ids.size),
        "dim": cfg.graph_dim,
        "layers": cfg.graph_layers,
        "epochs": cfg.graph_epochs,
        "seconds": round(seconds, 3),
        "initial_loss": vectors.initial_loss,
        "final_loss": vectors.epoch_losses[-1] if vectors.epoch_losses else None,
        "warm_start_from": warm_from.isoformat() if warm_from else None,
        "warm_start": warm_note,
        "warm_users": int(vectors.metadata.get("warm_users", 0)),
        "warm_ads": int(vectors.metadata.get("warm_ads", 0)),
    }
    path = save_graph(settings, day, vectors, report)
    report["path"] = str(path)
    log.info(
        "graph embeddings %s: %d edges, %d users, %d ads, %d epochs in %.1fs, loss %s -> %s (warm start: %s)",
        day, report["edges"], report["users"], report["ads"], cfg.graph_epochs, seconds,
        _fmt(report["initial_loss"]), _fmt(report["final_loss"]), warm_note,
    )
    return vectors, report


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"

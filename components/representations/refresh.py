"""The daily refresh of the pre-trained representations and their Feast views (DESIGN.md section 6).

``refresh_representations(settings, day)`` runs after the day's features were built and, for the ads
known by the end of ``day`` (the offline store, latest row per ad):

1. text vectors (space ``text``: the ``representations.text_columns`` joined) and visual vectors
   (space ``visual``: the ``image`` JPEG bytes, null without a photo), incrementally: only ads whose
   content hash is new are encoded (components/representations/vector_store.py);
2. visual semantic IDs: the codebook is fitted the first time (on every ad with a photo known then)
   and then reused, so new ads get codes without a refit (components/representations/semantic_ids.py);
3. LightGCN user / ad vectors on the clicks of the ``graph_window_days`` ending ``day``, warm-started
   from the newest earlier snapshot (components/representations/graph.py);
4. one partition per representation view ``<features_dir>/<view>/date=D/part-0.parquet`` (written
   atomically, like components/store/features.py):

   | view | entity | rows | stamped (``event_timestamp``) | Feast TTL |
   |---|---|---|---|---|
   | ``ad_text_embedding`` | ad | ads with text | the ad's ``created_at`` | none |
   | ``ad_visual_embedding`` | ad | ads with a photo | the ad's ``created_at`` | none |
   | ``ad_semantic_id`` | ad | every ad (``-1`` codes without a photo) | the ad's ``created_at`` | none |
   | ``user_text_interest`` | user | users who clicked on ``day`` (as ``user_sequence``) | ``day`` + 1, 00:00 UTC | ``ttl_days`` |
   | ``user_visual_interest`` | user | as above | ``day`` + 1, 00:00 UTC | ``ttl_days`` |
   | ``user_graph_embedding`` | user | users in the day's graph | ``day`` + 1, 00:00 UTC | 1 day |
   | ``ad_graph_embedding`` | ad | ads in the day's graph | ``day`` + 1, 00:00 UTC | 1 day |

   Content views are stamped like ``ad_profile`` because a content vector is a function of the creative
   only (no label information): a new ad's first impressions may use it. The user interest vector is the
   mean of the vectors of the first ``interest_last_n`` ads of the day's ``user_sequence`` row (the last
   clicks before the day ended), so the Feast view and the training-set similarities
   (components/representations/similarity.py) average exactly the same ads. Vectors are ``list<float32>`` columns named
   ``vector`` (Feast ``Array(Float32)``).

Every space is optional (docs/representations.md, "Switches"): ``representations.text`` / ``visual`` /
``graph`` false, or ``semantic_ids: off``, skip it; so does the absence of its inputs (no ad with a
title, no ad with a decodable photo, no positive of the behaviour task in the graph window). A skipped
space writes no view, loads no encoder, logs one line saying what is skipped and why, and is reported as
``{"skipped": reason}``; the SEE columns and codes of components/representations/similarity.py follow. The graph's edges
and the interest vectors' clicks are positives of ``representations.behaviour_task`` (default: the first
task), the task the features' click sequence is built from.

Returns a report: items encoded / reused per space, seconds per stage, codebook usage and collision rate,
graph training statistics and rows per view. docs/representations.md has the full semantics.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from components.schemas import day_dir, day_window
from components.representations.similarity import SEQUENCE_IDS, SEQUENCE_LENGTH, gather_rows, mean_vectors, sequence_matrix

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings

log = logging.getLogger(__name__)

EVENT_TS = "event_timestamp"
CREATED_TS = "created_timestamp"
VECTOR = "vector"
TEXT_SEPARATOR = ". "  # between the text columns of one ad
REPRESENTATION_VIEWS = (
    "ad_semantic_id",
    "ad_text_embedding",
    "ad_visual_embedding",
    "user_text_interest",
    "user_visual_interest",
    "user_graph_embedding",
    "ad_graph_embedding",
)


def _text_columns(settings: "Settings", names: list[str]) -> list[str]:
    """The configured text columns the ads table has. A column named explicitly in the configuration that
    the table lacks is an error (a typo must not silently switch text off); the default ``title`` absent
    from the ads means the log has no titles."""
    rep = settings.representations
    columns = rep.text_columns
    missing = [c for c in columns if c not in names]
    if missing and "text_columns" in rep.model_fields_set:
        raise ValueError(
            f"representations.text_columns {missing} are not columns of the ads table (have {names})"
        )
    return [c for c in columns if c in names]


def ads_as_of(settings: "Settings", day: dt.date) -> "pa.Table":
    """The ads known at the end of ``day`` (latest row per ad in the offline store), sorted by ``ad_id``:
    ``ad_id``, ``created_at``, ``image``, ``text`` (the text columns joined, null when all are null or
    when the ads have none of the text columns; an ads table without ``image`` gives nulls)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from components.store.offline import read_offline

    ads = read_offline(settings, "ads", None, day, latest=True)
    _, day_end = day_window(day)
    ads = ads.filter(pc.less(ads.column("created_at"), pa.scalar(day_end, ads.schema.field("created_at").type)))
    columns = _text_columns(settings, ads.column_names)
    parts = [pc.cast(ads.column(c), pa.string()) for c in columns]
    if not parts:
        text = pa.nulls(ads.num_rows, pa.string())
    elif len(parts) == 1:
        text = parts[0]
    else:
        text = pc.binary_join_element_wise(*parts, TEXT_SEPARATOR, null_handling="skip")
    text = pc.if_else(pc.equal(pc.utf8_trim_whitespace(text), ""), pa.scalar(None, pa.string()), text)
    image = ads.column("image") if "image" in ads.column_names else pa.nulls(ads.num_rows, pa.binary())
    out = pa.table({
        "ad_id": ads.column("ad_id"),
        "created_at": ads.column("created_at"),
        "image": image,
        "text": text,
    })
    return out.sort_by("ad_id").combine_chunks()


# What a skipped space takes with it (the log line and docs/representations.md say the same).
SKIPPED_OUTPUTS = {
    "text": "text vectors, user_text_interest and see_text",
    "visual": "visual vectors, semantic IDs, user_visual_interest and see_visual",
    "semantic_ids": "the ad_semantic_id codes",
    "graph": "graph vectors and see_graph",
}


def _skip(report: dict[str, Any], space: str, reason: str) -> None:
    """Record and log, in one line, that ``space`` is skipped and why."""
    report[space] = {"skipped": reason}
    report.setdefault("spaces_skipped", {})[space] = reason
    log.info("%s: %s; %s are skipped", space, reason, SKIPPED_OUTPUTS[space])


def vector_column(matrix: np.ndarray) -> "pa.Array":
    """A float32 [n, d] matrix as a ``list<float32>`` column (what Feast reads as ``Array(Float32)``)."""
    import pyarrow as pa

    n, d = matrix.shape
    values = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel(), type=pa.float32())
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32), type=pa.int32())
    return pa.ListArray.from_arrays(offsets, values)


def _write_view(settings: "Settings", view: str, day: dt.date, table: "pa.Table") -> int:
    """Replace the view's partition of ``day`` atomically (components/storage.py); returns its rows."""
    from components.storage import replace_partition, write_parquet_durable

    replace_partition(day_dir(settings.features_dir, view, day),
                      lambda tmp: write_parquet_durable(table, tmp / "part-0.parquet"))
    return table.num_rows


def _stamps(n: int, value: dt.datetime) -> "pa.Array":
    import pyarrow as pa

    from components.schemas import TIMESTAMP

    return pa.array([value] * n, type=TIMESTAMP) if n else pa.array([], type=TIMESTAMP)


def _ad_vector_view(ads: "pa.Table", store: Any, built_at: dt.datetime) -> "pa.Table":
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


def _read_sequences(settings: "Settings", day: dt.date) -> "pa.Table":
    """The ``user_sequence`` partition of ``day`` with columns renamed as in a training set."""
    import pyarrow.parquet as pq

    part = day_dir(settings.features_dir, "user_sequence", day)
    files = sorted(part.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"no user_sequence partition for {day} under {part}: build the day's features first "
            "(components.steps.features / components.store.features.build_features)"
        )
    table = pq.read_table(files[0], columns=["user_id", "ad_ids", "length"])
    return table.rename_columns(["user_id", SEQUENCE_IDS, SEQUENCE_LENGTH])


def _interest_view(sequences: "pa.Table", store: Any, day_end: dt.datetime, built_at: dt.datetime,
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


def _graph_views(graph: Any, day_end: dt.datetime, built_at: dt.datetime) -> tuple["pa.Table", "pa.Table"]:
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


def _empty_vector_view(key: str, dim: int) -> "pa.Table":
    import pyarrow as pa

    from components.schemas import TIMESTAMP

    return pa.table({
        key: pa.array([], pa.int64()),
        VECTOR: vector_column(np.zeros((0, dim), np.float32)),
        EVENT_TS: pa.array([], TIMESTAMP),
        CREATED_TS: pa.array([], TIMESTAMP),
    })


def _window_clicks(settings: "Settings", day: dt.date) -> "pa.Table":
    """Clicks (``user_id``, ``ad_id``, ``event_time``) of the graph window ending ``day``; one partition
    more at the start because a late-event tolerance can put a window's first events there."""
    import pyarrow.compute as pc

    from components.store.offline import read_offline

    first = day - dt.timedelta(days=settings.representations.graph_window_days)
    from components.store.features import behaviour_task

    task = behaviour_task(settings)
    imp = read_offline(settings, "impressions", first, day, columns=["user_id", "ad_id", "event_time", task])
    return imp.filter(pc.equal(imp.column(task), 1)).select(["user_id", "ad_id", "event_time"])


def refresh_representations(
    settings: "Settings", day: dt.date, *, progress: bool = True, refit_codebook: bool = False
) -> dict[str, Any]:
    """Refresh every pre-trained representation as of the end of ``day`` and write its view partitions.

    Needs the day's ingested ads / impressions and the day's ``user_sequence`` partition (run after the
    features step). Idempotent: a re-run of the same day encodes nothing (content hashes), re-codes with
    the same codebook, retrains the same graph (the warm start never reads the day's own snapshot) and
    replaces the day's view partitions. ``refit_codebook`` fits a new semantic-ID codebook on every ad
    with a photo known by ``day`` (new codes for every ad; a new codebook version).
    """
    from components.representations.text import make_text_encoder
    from components.representations.vector_store import load_ad_vectors, refresh_ad_vectors
    from components.representations.visual import decodable_images, make_image_encoder
    from components.representations.graph import refresh_graph
    from components.representations.semantic_ids import assign_codes, code_columns, codebook_report, fit_or_load_codebook, \
        load_codebook

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    report: dict[str, Any] = {"day": day.isoformat()}
    rep = settings.representations
    _, day_end = day_window(day)
    built_at = dt.datetime.now(dt.timezone.utc)

    t0 = time.perf_counter()
    ads = ads_as_of(settings, day)
    if ads.num_rows == 0:
        raise FileNotFoundError(f"no ads known by the end of {day} in {settings.offline_dir / 'ads'}; ingest first")
    ad_ids = ads.column("ad_id").to_numpy().astype(np.int64)
    sequences = _read_sequences(settings, day)
    seconds["read_inputs"] = time.perf_counter() - t0
    report["ads"] = int(ad_ids.size)

    # --- 1. content vectors (incremental) ------------------------------------------------------------
    # A space switched off, or without any input, is skipped before its encoder is even loaded.
    stores: dict[str, Any] = {}
    for space, column, make in (("text", "text", make_text_encoder), ("visual", "image", make_image_encoder)):
        t0 = time.perf_counter()
        if not getattr(rep, space):
            _skip(report, space, f"switched off (representations.{space}: false)")
            continue
        what = ("an image" if space == "visual" else
                "a title" if rep.text_columns == ["title"] else f"text in {rep.text_columns}")
        if ads.column(column).null_count == ads.num_rows:
            _skip(report, space, f"no ad known by {day} has {what}")
            continue
        contents = ads.column(column).to_pylist()  # str / bytes / None per ad: what the encoders take
        unreadable: list[int] = []
        if space == "visual":
            # A corrupt photo must not stop the day: the ad is treated as having no photo, and counted.
            ok = decodable_images(contents)
            unreadable = [int(a) for a, c, good in zip(ad_ids, contents, ok) if c is not None and not good]
            contents = [c if good else None for c, good in zip(contents, ok)]
            if unreadable:
                log.warning("%d ads have an undecodable photo and are treated as having none (ad_ids %s%s)",
                            len(unreadable), unreadable[:10], " ..." if len(unreadable) > 10 else "")
        if len(unreadable) == ads.num_rows - ads.column(column).null_count:
            _skip(report, space, f"no ad known by {day} has a decodable image ({len(unreadable)} undecodable)")
            continue
        encoder = make(settings)
        encoded = refresh_ad_vectors(settings, space, ad_ids, contents, encoder, progress=progress)
        stores[space] = load_ad_vectors(settings, space)
        report[space] = encoded.to_dict()
        if space == "visual":
            report[space]["photos_unreadable"] = len(unreadable)
            report[space]["unreadable_ad_ids"] = unreadable[:100]
        seconds[f"{space}_vectors"] = time.perf_counter() - t0

    # --- 2. visual semantic IDs ----------------------------------------------------------------------
    t0 = time.perf_counter()
    sid_table = None
    if rep.semantic_ids == "off":
        _skip(report, "semantic_ids", "switched off (representations.semantic_ids: off)")
    elif "visual" not in stores:
        report["semantic_ids"] = {"skipped": "no visual vectors: " + report["visual"]["skipped"]}
    else:
        visual = stores["visual"]
        pos, has_photo = gather_rows(visual, ad_ids)
        X = visual.vectors[pos] * has_photo[:, None]
        previous = load_codebook(settings)
        codebook = fit_or_load_codebook(settings, X[has_photo], encoder=visual.encoder, refit=refit_codebook)
        codes = assign_codes(settings, ad_ids, X, has_photo)
        import pyarrow.compute as pc

        codes_today = codes.filter(pc.is_in(codes.column("ad_id"), value_set=ads.column("ad_id")))
        sids = code_columns(settings)
        report["semantic_ids"] = {
            "method": codebook.method,
            "version": codebook.version,
            "fitted_now": previous is None or previous.version != codebook.version,
            **codebook_report(codes_today.select(sids), _sizes(codebook)),
        }
        sid_table = _semantic_id_view(ads, codes_today, sids, built_at)
    seconds["semantic_ids"] = time.perf_counter() - t0

    # --- 3. graph ------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    graph = None
    if not rep.graph:
        _skip(report, "graph", "switched off (representations.graph: false)")
    else:
        clicks = _window_clicks(settings, day)
        if clicks.num_rows:
            graph, graph_report = refresh_graph(settings, day, clicks)
            report["graph"] = graph_report
        else:
            # No edge in the window (sparse or empty days): no new snapshot; consumers keep using the
            # newest earlier one (components/representations/similarity.py reads the snapshot of the day before).
            report["graph"] = {"skipped": f"no positive of the behaviour task in the {rep.graph_window_days} "
                                          f"days ending {day}"}
            log.info("graph: no new edges (no positive of the behaviour task in the %d days ending %s); no new "
                     "snapshot, the newest earlier one, if any, stays in use", rep.graph_window_days, day)
    seconds["graph"] = time.perf_counter() - t0

    # --- 4. views ------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    rows: dict[str, int] = {}
    for space, store in stores.items():
        rows[f"ad_{space}_embedding"] = _write_view(settings, f"ad_{space}_embedding", day,
                                                    _ad_vector_view(ads, store, built_at))
        view = f"user_{space}_interest"
        rows[view] = _write_view(settings, view, day,
                                 _interest_view(sequences, store, day_end, built_at, rep.interest_last_n))
    if sid_table is not None:
        rows["ad_semantic_id"] = _write_view(settings, "ad_semantic_id", day, sid_table)
    if rep.graph:
        if graph is not None:
            users_view, ads_view = _graph_views(graph, day_end, built_at)
        else:
            users_view = _empty_vector_view("user_id", rep.graph_dim)
            ads_view = _empty_vector_view("ad_id", rep.graph_dim)
        rows["user_graph_embedding"] = _write_view(settings, "user_graph_embedding", day, users_view)
        rows["ad_graph_embedding"] = _write_view(settings, "ad_graph_embedding", day, ads_view)
    seconds["views"] = time.perf_counter() - t0
    report["views"] = rows
    if rep.interest_last_n > settings.features.sequence_length:
        report["interest_last_n_capped_at"] = settings.features.sequence_length
    seconds["total"] = time.perf_counter() - started
    report["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    log.info(
        "representations %s: %d ads; text %s, visual %s; semantic IDs %s; graph %s; %.1f s",
        day, report["ads"], _encoded(report["text"]), _encoded(report["visual"]),
        {k: report["semantic_ids"].get(k) for k in ("codebook_usage", "collision_rate", "skipped") if
         k in report["semantic_ids"]},
        report["graph"].get("edges", report["graph"].get("skipped")), seconds["total"],
    )
    return report


def _encoded(space: dict[str, Any]) -> str:
    if "skipped" in space:
        return "skipped"
    return f"{space.get('items_encoded', 0)} encoded / {space.get('items_reused', 0)} reused"


def _sizes(codebook: Any) -> list[int]:
    sizes = getattr(codebook, "level_sizes", None)
    return list(sizes) if sizes is not None else [1 << int(codebook.bits)]


def _semantic_id_view(ads: "pa.Table", codes: "pa.Table", sids: list[str], built_at: dt.datetime) -> "pa.Table":
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


def representations_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a run summary shows: items encoded / reused, codebook usage, collision rate,
    graph edges and loss, seconds per stage."""
    sid = report.get("semantic_ids", {})
    graph = report.get("graph", {})
    return {
        "day": report.get("day"),
        "text_encoded": report.get("text", {}).get("items_encoded"),
        "text_reused": report.get("text", {}).get("items_reused"),
        "visual_encoded": report.get("visual", {}).get("items_encoded"),
        "visual_reused": report.get("visual", {}).get("items_reused"),
        "codebook_version": sid.get("version"),
        "codebook_usage": sid.get("codebook_usage"),
        "collision_rate": sid.get("collision_rate"),
        "graph_edges": graph.get("edges"),
        "graph_final_loss": graph.get("final_loss"),
        "stage_seconds": report.get("stage_seconds", report.get("seconds")),
        "spaces_skipped": report.get("spaces_skipped"),
    }


__all__ = [
    "REPRESENTATION_VIEWS",
    "ads_as_of",
    "refresh_representations",
    "representation_views",
    "representations_summary",
    "vector_column",
]

"""The daily refresh of the pre-trained representations and their Feast views (DESIGN.md section 6).

``refresh_representations(settings, day)`` runs after the day's features were built and, for the ads
known by the end of ``day`` (the offline store, latest row per ad):

1. text vectors (space ``text``: the ``representations.text_columns`` joined) and visual vectors
   (space ``visual``: the ``image`` JPEG bytes, null without a photo), incrementally: only ads whose
   content hash is new are encoded (components/representations/vector_store.py);
2. visual semantic IDs: the codebook is fitted the first time (on every ad with a photo known then)
   and then reused, so new ads get codes without a refit (components/representations/semantic_ids.py,
   the quantisers in components/representations/quantisers.py);
3. LightGCN user / ad vectors on the clicks of the ``graph_window_days`` ending ``day``, warm-started
   from the newest earlier snapshot (components/representations/graph.py, the model in lightgcn.py);
4. one partition per representation view ``<features_dir>/<view>/date=D/part-0.parquet`` (written
   atomically, like components/store/features.py; the tables: components/representations/views.py):

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

from components.faults import declare, fault_point
from components.representations.similarity import SEQUENCE_IDS, SEQUENCE_LENGTH, gather_rows
from components.representations.views import (
    ad_vector_view,
    empty_vector_view,
    graph_views,
    interest_view,
    semantic_id_view,
    write_view,
)
from components.schemas import day_dir, day_window
from components.store.days import extending_day

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings

log = logging.getLogger(__name__)
declare("representations.after_vectors", "representations.between_views")

TEXT_SEPARATOR = ". "  # between the text columns of one ad


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
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    report: dict[str, Any] = {"day": day.isoformat()}
    built_at = dt.datetime.now(dt.timezone.utc)

    t0 = time.perf_counter()
    ads, ad_ids, sequences = _read_inputs(settings, day)
    seconds["read_inputs"] = time.perf_counter() - t0
    report["ads"] = int(ad_ids.size)

    stores: dict[str, Any] = {}
    for space in ("text", "visual"):
        t0 = time.perf_counter()
        store = _refresh_content_space(settings, space, day, ads, ad_ids, report, progress)
        if store is not None:
            stores[space] = store
            seconds[f"{space}_vectors"] = time.perf_counter() - t0

    fault_point("representations.after_vectors")  # vector stores updated, codes and views not yet
    t0 = time.perf_counter()
    sid_table = _refresh_semantic_ids(settings, ads, ad_ids, stores, report, built_at, refit_codebook)
    seconds["semantic_ids"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    graph = _refresh_graph_space(settings, day, report)
    seconds["graph"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with extending_day(settings.features_dir, day, f"`adsrec features --date {day}`") as views:  # all or none
        report["views"] = _write_views(settings, day, ads, sequences, stores, sid_table, graph, built_at)
        views.extend(report["views"])
    seconds["views"] = time.perf_counter() - t0
    if settings.representations.interest_last_n > settings.features.sequence_length:
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


def _read_inputs(settings: "Settings", day: dt.date) -> tuple["pa.Table", np.ndarray, "pa.Table"]:
    """The ads known by the end of ``day``, their ids (int64) and the day's user sequences."""
    ads = ads_as_of(settings, day)
    if ads.num_rows == 0:
        raise FileNotFoundError(f"no ads known by the end of {day} in {settings.offline_dir / 'ads'}; ingest first")
    ad_ids = ads.column("ad_id").to_numpy().astype(np.int64)
    return ads, ad_ids, _read_sequences(settings, day)


def _refresh_content_space(
    settings: "Settings", space: str, day: dt.date, ads: "pa.Table", ad_ids: np.ndarray, report: dict[str, Any],
    progress: bool,
) -> Any:
    """Step 1, one content space (``text`` or ``visual``): encode the ads whose content is new and return
    the space's stored vectors, or None when the space is skipped (switched off, or no ad has an input:
    then its encoder is never loaded). Writes the space's entry of ``report``."""
    from components.representations.text import make_text_encoder
    from components.representations.vector_store import load_ad_vectors, refresh_ad_vectors
    from components.representations.visual import decodable_images, make_image_encoder

    rep = settings.representations
    column, make = ("text", make_text_encoder) if space == "text" else ("image", make_image_encoder)
    if not getattr(rep, space):
        _skip(report, space, f"switched off (representations.{space}: false)")
        return None
    what = ("an image" if space == "visual" else
            "a title" if rep.text_columns == ["title"] else f"text in {rep.text_columns}")
    if ads.column(column).null_count == ads.num_rows:
        _skip(report, space, f"no ad known by {day} has {what}")
        return None
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
        return None
    encoder = make(settings)
    encoded = refresh_ad_vectors(settings, space, ad_ids, contents, encoder, progress=progress)
    report[space] = encoded.to_dict()
    if space == "visual":
        report[space]["photos_unreadable"] = len(unreadable)
        report[space]["unreadable_ad_ids"] = unreadable[:100]
    return load_ad_vectors(settings, space)


def _refresh_semantic_ids(
    settings: "Settings", ads: "pa.Table", ad_ids: np.ndarray, stores: dict[str, Any], report: dict[str, Any],
    built_at: dt.datetime, refit_codebook: bool,
) -> "pa.Table | None":
    """Step 2: code every ad with the semantic-ID codebook (fitted the first time, or when asked) and
    return the ``ad_semantic_id`` table, or None when the codes are skipped."""
    import pyarrow.compute as pc

    from components.representations.quantisers import codebook_sizes
    from components.representations.semantic_ids import code_columns, codebook_report, fit_and_assign

    if settings.representations.semantic_ids == "off":
        _skip(report, "semantic_ids", "switched off (representations.semantic_ids: off)")
        return None
    if "visual" not in stores:
        report["semantic_ids"] = {"skipped": "no visual vectors: " + report["visual"]["skipped"]}
        return None
    visual = stores["visual"]
    pos, has_photo = gather_rows(visual, ad_ids)
    X = visual.vectors[pos] * has_photo[:, None]
    previous, codebook, codes = fit_and_assign(settings, X[has_photo], ad_ids, X, has_photo, encoder=visual.encoder,
                                               refit=refit_codebook)  # one process at a time
    codes_today = codes.filter(pc.is_in(codes.column("ad_id"), value_set=ads.column("ad_id")))
    sids = code_columns(settings)
    report["semantic_ids"] = {
        "method": codebook.method,
        "version": codebook.version,
        "fitted_now": previous is None or previous.version != codebook.version,
        **codebook_report(codes_today.select(sids), codebook_sizes(codebook)),
    }
    return semantic_id_view(ads, codes_today, sids, built_at)


def _refresh_graph_space(settings: "Settings", day: dt.date, report: dict[str, Any]) -> Any:
    """Step 3: train the day's LightGCN snapshot on the window's clicks and return it; None when the graph
    is switched off or the window has no click (then no new snapshot)."""
    from components.representations.graph import refresh_graph

    rep = settings.representations
    if not rep.graph:
        _skip(report, "graph", "switched off (representations.graph: false)")
        return None
    clicks = _window_clicks(settings, day)
    if clicks.num_rows:
        graph, graph_report = refresh_graph(settings, day, clicks)
        report["graph"] = graph_report
        return graph
    # No edge in the window (sparse or empty days): no new snapshot; consumers keep using the
    # newest earlier one (components/representations/similarity.py reads the snapshot of the day before).
    report["graph"] = {"skipped": f"no positive of the behaviour task in the {rep.graph_window_days} "
                                  f"days ending {day}"}
    log.info("graph: no new edges (no positive of the behaviour task in the %d days ending %s); no new "
             "snapshot, the newest earlier one, if any, stays in use", rep.graph_window_days, day)
    return None


def _write_views(
    settings: "Settings", day: dt.date, ads: "pa.Table", sequences: "pa.Table", stores: dict[str, Any],
    sid_table: "pa.Table | None", graph: Any, built_at: dt.datetime,
) -> dict[str, int]:
    """Step 4: write the day's partition of every view a space produced; returns rows per view."""
    rep = settings.representations
    _, day_end = day_window(day)
    rows: dict[str, int] = {}
    for space, store in stores.items():
        rows[f"ad_{space}_embedding"] = write_view(settings, f"ad_{space}_embedding", day,
                                                   ad_vector_view(ads, store, built_at))
        view = f"user_{space}_interest"
        rows[view] = write_view(settings, view, day,
                                interest_view(sequences, store, day_end, built_at, rep.interest_last_n))
    fault_point("representations.between_views")  # content views written: the day is invisible until the last
    if sid_table is not None:
        rows["ad_semantic_id"] = write_view(settings, "ad_semantic_id", day, sid_table)
    if rep.graph:
        if graph is not None:
            users_view, ads_view = graph_views(graph, day_end, built_at)
        else:
            users_view = empty_vector_view("user_id", rep.graph_dim)
            ads_view = empty_vector_view("ad_id", rep.graph_dim)
        rows["user_graph_embedding"] = write_view(settings, "user_graph_embedding", day, users_view)
        rows["ad_graph_embedding"] = write_view(settings, "ad_graph_embedding", day, ads_view)
    return rows


def _encoded(space: dict[str, Any]) -> str:
    if "skipped" in space:
        return "skipped"
    return f"{space.get('items_encoded', 0)} encoded / {space.get('items_reused', 0)} reused"


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
    "ads_as_of",
    "refresh_representations",
    "representations_summary",
]

"""SEE (Similarity Encoding Embedding) inputs: per (user, ad) cosine similarities in the pre-trained spaces.

METHODS.md, "Feature encoding": pre-trained user and ad vectors live in another space than the ranking
model's ids, so they are not fed to the model directly; ``w = cos(v_user, v_ad)`` is a per-pair numeric
feature (the model discretises it and encodes it with MNSE). This module computes the raw similarities
and adds them, with the ad's visual semantic-ID codes, to a point-in-time training set:

- ``see_text`` / ``see_visual``: the user side is the mean of the text / visual vectors of the ads in
  the user's click sequence *as the point-in-time join served it* (``user_sequence__ad_ids``, newest
  first; the first ``representations.interest_last_n`` real entries), so it only contains clicks from
  days that closed before the impression. The ad side is the ad's vector: a content vector is a function
  of the creative alone (no label information), so, like the ad profile, it is known from the ad's
  creation on. Ads of the sequence without that input (no photo) are left out of the mean; a user with
  no such ad, or an ad without input, gives null.
- ``see_graph``: cos(user, ad) in the LightGCN space trained through the day *before* the impression's
  day (never the same day: the same day's clicks are labels). Null when that graph does not exist or
  the user / ad is not in it.
- ``ad_semantic_id__sid_1..L`` (int32; ``ad_semantic_id__simhash`` int64 under the SimHash variant): the
  ad's codes from the fitted codebook (``-1`` at every level
  for an ad without a photo, null for an ad the refresh has not coded yet). Named as the
  ``ad_semantic_id`` feature view's columns, so training and serving use the same names.

A column whose input is switched off or absent is not added at all (``similarity_inputs.usable_inputs``: ``see_text`` /
``see_visual`` without text / visual vectors or with ``representations.text`` / ``visual`` false,
``see_graph`` without any graph snapshot or with ``representations.graph`` false, every ``see_*`` with
``representations.see`` false, the codes without visual vectors or with ``semantic_ids: off``); the summary
says what was skipped and why, and the model's feature spec, fitted on the training set's columns,
follows.

Everything is vectorised: sequences are de-duplicated (many impressions share one served sequence),
vectors are gathered with ``searchsorted`` and masked means, and cosines are taken chunk by chunk so
memory stays bounded (1M rows: a few seconds, docs/benchmarks.md).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from components.representations.similarity_inputs import SEE_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings
    from components.representations.similarity_inputs import SimilarityInputs

log = logging.getLogger(__name__)

SEQUENCE_IDS = "user_sequence__ad_ids"
SEQUENCE_LENGTH = "user_sequence__length"
SEMANTIC_ID_VIEW = "ad_semantic_id"
METADATA_KEY = b"adsrec.representations"
PAD_AD_ID = -1  # components/store/features.py pads the click sequence with -1
# Rows per chunk of a gather; keeps each [chunk, ..., dim] float32 block to tens of MB.
_GATHER_BUDGET = 1 << 24  # floats


class VectorTable(Protocol):
    """What the similarity code needs of an ad vector store (components.representations.vector_store.AdVectors)."""

    ad_ids: np.ndarray  # int64, sorted ascending
    vectors: np.ndarray  # float32 [n, d]
    has_input: np.ndarray  # bool [n]


def gather_rows(table: VectorTable, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in ``table`` and whether each is usable (present and with an input).
    Positions of unusable ids are 0 (mask them with the second array)."""
    ids = np.asarray(ids, dtype=np.int64)
    n = table.ad_ids.shape[0]
    if n == 0:
        return np.zeros(ids.shape, dtype=np.int64), np.zeros(ids.shape, dtype=bool)
    pos = np.searchsorted(table.ad_ids, ids)
    pos = np.minimum(pos, n - 1)
    ok = (table.ad_ids[pos] == ids) & table.has_input[pos]
    return np.where(ok, pos, 0), ok


def _unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit length, and whether each row had a non-zero norm."""
    norms = np.linalg.norm(x, axis=1)
    ok = norms > 0
    out = np.zeros_like(x, dtype=np.float32)
    out[ok] = x[ok] / norms[ok, None]
    return out, ok


def sequence_matrix(table: "pa.Table", last_n: int) -> np.ndarray:
    """The served click sequences as an int64 ``[rows, k]`` matrix (k = min(last_n, L)), newest first,
    with ``-1`` past each row's ``length`` and for rows without a sequence (null list)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if SEQUENCE_IDS not in table.column_names:
        raise ValueError(
            f"the table has no {SEQUENCE_IDS} column: add_similarity_features needs the point-in-time joined "
            "click sequence (components.training.training_set.build_training_set output)"
        )
    n = table.num_rows
    col = table.column(SEQUENCE_IDS).combine_chunks()
    if isinstance(col, pa.ChunkedArray):  # an empty table has no chunk to combine
        col = pa.array([], pa.list_(pa.int64()))
    lengths_list = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    width = int(lengths_list.max()) if n else 0
    k = min(last_n, width)
    out = np.full((n, max(k, 0)), PAD_AD_ID, dtype=np.int64)
    if n == 0 or k == 0:
        return out
    flat = pc.list_flatten(col).fill_null(PAD_AD_ID).to_numpy(zero_copy_only=False).astype(np.int64)
    valid_rows = ~col.is_null().to_numpy(zero_copy_only=False)
    sizes = lengths_list[valid_rows]
    if sizes.size and (sizes == width).all():
        # The feature view pads every list to L: one reshape, no index arithmetic.
        out[valid_rows] = flat.reshape(-1, width)[:, :k]
    elif flat.size:
        # Ragged lists: each flattened value's row and position within its list, then one scatter.
        rows = np.repeat(np.arange(n), lengths_list * valid_rows)
        starts = np.cumsum(lengths_list * valid_rows) - lengths_list * valid_rows
        position = np.arange(flat.size) - np.repeat(starts, lengths_list * valid_rows)
        keep = position < k
        out[rows[keep], position[keep]] = flat[keep]
    if SEQUENCE_LENGTH in table.column_names:
        length = table.column(SEQUENCE_LENGTH).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        out[np.arange(k)[None, :] >= length[:, None]] = PAD_AD_ID
    return out


def unique_sequences(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """De-duplicate the rows of ``seq`` ([n, k] int64): (unique rows [m, k], inverse [n]).

    A 64-bit multiplicative hash per row makes this a 1-D ``np.unique``; the result is verified against
    the rows and falls back to an exact row-wise unique if two different sequences ever collide."""
    n, k = seq.shape
    if n == 0:
        return seq.copy(), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(0x5EE)
    mult = rng.integers(1, np.iinfo(np.int64).max, size=k, dtype=np.int64).astype(np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        h = np.zeros(n, dtype=np.uint64)
        for j in range(k):
            h = (h ^ (seq[:, j].astype(np.uint64) * mult[j])) * np.uint64(0x9E3779B97F4A7C15)
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    uniq = seq[first]
    if not np.array_equal(uniq[inverse], seq):
        uniq, inverse = np.unique(seq, axis=0, return_inverse=True)
    return uniq, inverse.reshape(-1).astype(np.int64)


def mean_vectors(sequences: np.ndarray, table: VectorTable) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the vectors of each row's ads ([m, k] ids, ``-1`` = none): (means float32 [m, d],
    defined bool [m]). Ads absent from ``table`` or without input are left out; a row with none of its
    ads usable is undefined (zero vector)."""
    m, k = sequences.shape
    d = table.vectors.shape[1] if table.vectors.ndim == 2 else 0
    means = np.zeros((m, d), dtype=np.float32)
    counts = np.zeros(m, dtype=np.int64)
    if m == 0 or k == 0 or d == 0:
        return means, counts > 0
    chunk = max(1, _GATHER_BUDGET // (k * d))
    for start in range(0, m, chunk):
        ids = sequences[start:start + chunk]
        pos, ok = gather_rows(table, ids)
        block = table.vectors[pos]  # [c, k, d]
        block *= ok[..., None]
        cnt = ok.sum(axis=1)
        counts[start:start + chunk] = cnt
        means[start:start + chunk] = block.sum(axis=1) / np.maximum(cnt, 1)[:, None]
    return means, counts > 0


def rowwise_cosine(
    left: np.ndarray, left_index: np.ndarray, right: np.ndarray, right_index: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """cos(left[left_index[i]], right[right_index[i]]) for each row i where ``valid``; NaN elsewhere and
    where either vector is zero. Chunked so the gathered blocks stay small."""
    n = left_index.shape[0]
    out = np.full(n, np.nan, dtype=np.float32)
    if n == 0:
        return out
    # Only the rows used are normalised (a request scores 100 ads against a store of thousands).
    lrows, left_index = np.unique(left_index, return_inverse=True)
    rrows, right_index = np.unique(right_index, return_inverse=True)
    lu, lok = _unit(np.asarray(left, dtype=np.float32)[lrows])
    ru, rok = _unit(np.asarray(right, dtype=np.float32)[rrows])
    d = max(lu.shape[1], 1)
    chunk = max(1, _GATHER_BUDGET // (2 * d))
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        li, ri = left_index[sl], right_index[sl]
        ok = valid[sl] & lok[li] & rok[ri]
        dots = (lu[li][:, None, :] @ ru[ri][:, :, None])[:, 0, 0]  # batched dot: faster than einsum here
        out[sl] = np.where(ok, np.clip(dots, -1.0, 1.0), np.nan)
    return out


def interest_similarity(
    sequences: np.ndarray, ad_ids: np.ndarray, table: VectorTable
) -> tuple[np.ndarray, dict[str, float]]:
    """cos(mean of the sequence's ad vectors, the target ad's vector) per row (NaN when undefined), and
    coverage counts."""
    uniq, inverse = unique_sequences(sequences)
    means, defined = mean_vectors(uniq, table)
    ad_pos, ad_ok = gather_rows(table, ad_ids)
    valid = defined[inverse] & ad_ok
    vectors = table.vectors if table.vectors.ndim == 2 and table.vectors.shape[0] else np.zeros((1, means.shape[1]),
                                                                                                 np.float32)
    sims = rowwise_cosine(means, inverse, vectors, ad_pos, valid)
    stats = {
        "distinct_sequences": int(uniq.shape[0]),
        "rows_with_user_vector": int(defined[inverse].sum()),
        "rows_with_ad_vector": int(ad_ok.sum()),
    }
    return sims, stats


def graph_similarity(
    settings: "Settings", user_ids: np.ndarray, ad_ids: np.ndarray, event_days: np.ndarray,
    load: Any = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """cos(user, ad) in the graph trained through the day before each row's day (NaN when undefined).

    ``event_days``: int64 days since the epoch (UTC) of each row's ``event_time``. One graph is loaded per
    distinct day, never the row's own day, so a day's clicks never reach that day's similarities.
    ``load(day)`` reads a snapshot (default ``graph.load_graph``; ``SimilarityInputs.graph`` keeps them)."""
    from components.representations.graph import load_graph

    if load is None:
        load = lambda day: load_graph(settings, day)  # noqa: E731

    out = np.full(user_ids.shape[0], np.nan, dtype=np.float32)
    used: dict[str, str | None] = {}
    for day_number in np.unique(event_days):
        day = dt.date(1970, 1, 1) + dt.timedelta(days=int(day_number))
        graph_day = day - dt.timedelta(days=1)
        graph = load(graph_day)  # the newest snapshot dated graph_day or earlier
        used[day.isoformat()] = str(graph.metadata.get("day", graph_day)) if graph is not None else None
        if graph is None:
            continue
        rows = np.flatnonzero(event_days == day_number)
        uvec, ufound = graph.lookup_users(user_ids[rows])
        avec, afound = graph.lookup_ads(ad_ids[rows])
        idx = np.arange(rows.shape[0])
        out[rows] = rowwise_cosine(uvec, idx, avec, idx, ufound & afound)
    return out, {"graph_day_by_impression_day": used}


def add_similarity_features(settings: "Settings", table: "pa.Table",
                            inputs: "SimilarityInputs | None" = None) -> "pa.Table":
    """``table`` (a point-in-time training set: ``user_id``, ``ad_id``, ``event_time``,
    ``user_sequence__ad_ids`` [, ``user_sequence__length``]) plus ``see_text``, ``see_visual``,
    ``see_graph`` (float32, null when undefined) and ``ad_semantic_id__sid_1..L`` (int32).

    Reads the vector stores, the graph of each impression day's previous day and the semantic-ID codes
    that ``components.representations.refresh.refresh_representations`` wrote. Row order is unchanged. A summary
    (coverage, graph days used, codebook version) is put in the schema metadata under
    ``adsrec.representations``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    started = time.perf_counter()
    for name in ("user_id", "ad_id", "event_time"):
        if name not in table.column_names:
            raise ValueError(f"add_similarity_features needs a {name!r} column; the table has {table.column_names}")
    n = table.num_rows
    user_ids = table.column("user_id").to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
    ad_ids = table.column("ad_id").to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
    micros = pc.cast(table.column("event_time"), pa.timestamp("us", tz="UTC")).cast(pa.int64())
    event_days = np.floor_divide(micros.to_numpy() if n else np.zeros(0, np.int64), 86_400_000_000)
    sequences = sequence_matrix(table, settings.representations.interest_last_n)

    summary: dict[str, Any] = {"rows": n}
    columns: dict[str, np.ndarray] = {}
    if inputs is None:
        from components.representations.similarity_inputs import load_similarity_inputs

        inputs = load_similarity_inputs(settings)
    vectors, skipped = inputs.stores, dict(inputs.skipped)
    for space, store in vectors.items():
        sims, stats = interest_similarity(sequences, ad_ids, store)
        columns[f"see_{space}"] = sims
        summary[space] = {**stats, "encoder": store.encoder, "defined": int(np.isfinite(sims).sum())}
    if "see_graph" not in skipped:
        sims, graph_info = graph_similarity(settings, user_ids, ad_ids, event_days, load=inputs.graph)
        columns["see_graph"] = sims
        summary["graph"] = {**graph_info, "defined": int(np.isfinite(sims).sum())}

    out = table
    for name in SEE_COLUMNS:
        if name not in columns:
            continue
        values = columns[name]
        arr = pa.array(values, type=pa.float32(), mask=~np.isfinite(values))
        out = _set(out, name, arr)

    codes = inputs.codes
    if skipped:
        summary["skipped"] = skipped
        log.debug("similarity features: skipped %s", skipped)
    if codes is None:
        summary["seconds"] = round(time.perf_counter() - started, 3)
        metadata = dict(out.schema.metadata or {})
        metadata[METADATA_KEY] = json.dumps(summary, default=str).encode()
        return out.replace_schema_metadata(metadata)
    code_ids, order = inputs.code_ids, inputs.code_order
    pos = np.minimum(np.searchsorted(code_ids, ad_ids), max(code_ids.shape[0] - 1, 0))
    found = (code_ids[pos] == ad_ids) if code_ids.shape[0] else np.zeros(n, dtype=bool)
    # Residual k-means codes are sid_1..sid_L (int32); the SimHash variant is one int64 `simhash` column.
    sid_columns = [c for c in codes.column_names if c.startswith("sid_") or c == "simhash"]
    for c in sid_columns:
        dtype = np.int64 if c == "simhash" else np.int32
        values = codes.column(c).to_numpy().astype(dtype)[order]
        arr = pa.array(values[pos] if code_ids.shape[0] else np.zeros(n, dtype), type=pa.from_numpy_dtype(dtype),
                       mask=~found)
        out = _set(out, f"{SEMANTIC_ID_VIEW}__{c}", arr)
    meta_codes = codes.schema.metadata or {}
    summary["semantic_ids"] = {
        "columns": [f"{SEMANTIC_ID_VIEW}__{c}" for c in sid_columns],
        "rows_coded": int(found.sum()),
        "codebook_version": (meta_codes.get(b"version") or b"").decode() or None,
    }
    summary["seconds"] = round(time.perf_counter() - started, 3)
    metadata = dict(out.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(summary, default=str).encode()
    return out.replace_schema_metadata(metadata)


def _set(table: "pa.Table", name: str, values: "pa.Array") -> "pa.Table":
    """Append ``name`` or replace it when the table has it already (re-running adds no duplicate)."""
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def similarity_summary(table: "pa.Table") -> dict[str, Any]:
    """The summary ``add_similarity_features`` put in the schema metadata (empty when absent)."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def without_timing(table: "pa.Table", summary: dict[str, Any]) -> "pa.Table":
    """``table`` whose metadata summary leaves out ``seconds``: a file written from it has the same bytes
    however long the step took (the registration fingerprint hashes the training set's file, and a re-run
    after a kill builds it again: docs/reliability/flows.md)."""
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps({k: v for k, v in summary.items() if k != "seconds"}, default=str).encode()
    return table.replace_schema_metadata(metadata)

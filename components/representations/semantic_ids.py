"""Visual semantic IDs: short discrete codes for ad creatives, so visually similar ads share ids.

Ad ids are arbitrary and say nothing about a new ad. Quantising each ad's visual vector into a few
small codes gives ad-side categorical fields that a new ad shares with visually similar old ones
(METHODS.md, "Visual semantic IDs"). The quantisers (residual k-means, SimHash; chosen by
``representations.semantic_ids``) live in components/representations/quantisers.py; this module holds
the pipeline's side: the versioned codebook in use, the codes of every ad, and their usage and
collision statistics (:func:`codebook_report`).

A codebook is fitted once on the catalogue and versioned by a content hash of what it learned. New ads
get codes from the stored codebook; nothing is refitted unless asked, or the configuration or the
encoder changed. Ads without a visual vector (no photo: zero vector or ``has_input=False``) get code
``-1`` at every level, a value no fitted code takes.

State under ``settings.embeddings_dir / "semantic_ids"``: ``<version>/`` (``codebook.npz`` and
``meta.json``), ``CURRENT.json`` (the version in use) and ``codes.parquet`` (one row per ad).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.representations.kmeans import as_matrix
from components.representations.quantisers import (
    META_FILE,
    NO_CODE,
    Quantizer,
    ResidualKMeans,
    SimHash,
    codebook_sizes,
    load_quantizer,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings

log = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT.json"
CODES_FILE = "codes.parquet"


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
def codebook_report(codes: "np.ndarray | pa.Table", codebook_size: int | list[int] | None = None) -> dict[str, Any]:
    """How a code table uses its codebook.

    Args:
        codes: int [n, levels] (or [n] for SimHash), or a table with ``sid_*`` / ``simhash`` columns
            (as :func:`assign_codes` writes). Rows with a ``-1`` (no visual vector) are counted apart.
        codebook_size: codes available per level (an int for all levels, or one per level); default:
            the table's ``codebook_sizes`` metadata, else 256 (the default ``rq_codes``).

    Returns a dict: ``items`` (coded rows), ``items_without_code``, ``levels``, ``codebook_size``,
    ``codes_used`` (distinct codes per level), ``codebook_usage`` (codes used / size, per level),
    ``distinct_prefixes`` (distinct codes of levels 1..l, per l), ``distinct_codes`` (full codes),
    ``collision_rate`` (share of coded items whose full code another item also has),
    ``items_per_code`` (mean items per used full code) and ``max_items_per_code``.
    """
    sizes_meta: list[int] | None = None
    if not isinstance(codes, np.ndarray):
        table = codes
        cols = [c for c in table.column_names if c.startswith("sid_") or c == "simhash"]
        if not cols:
            raise ValueError(f"code table has no sid_* or simhash columns: {table.column_names}")
        codes = (np.column_stack([table[c].to_numpy() for c in cols]) if table.num_rows
                 else np.zeros((0, len(cols)), np.int64))
        md = table.schema.metadata or {}
        if b"codebook_sizes" in md:
            sizes_meta = json.loads(md[b"codebook_sizes"])
    arr = np.asarray(codes)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"codes must be [n] or [n, levels], got shape {arr.shape}")
    levels = arr.shape[1]
    if codebook_size is None:
        codebook_size = sizes_meta if sizes_meta is not None else 256
    if isinstance(codebook_size, (int, np.integer)):
        sizes = [int(codebook_size)] * levels
    else:
        sizes = [int(s) for s in codebook_size]
    if len(sizes) != levels:
        raise ValueError(f"codebook_size has {len(sizes)} entries for {levels} levels")
    coded = (arr >= 0).all(axis=1)
    arr = arr[coded]
    n = int(arr.shape[0])
    codes_used = [int(np.unique(arr[:, level]).size) for level in range(levels)]
    distinct_prefixes = [int(np.unique(arr[:, : level + 1], axis=0).shape[0]) if n else 0 for level in range(levels)]
    if n:
        _, counts = np.unique(arr, axis=0, return_counts=True)
        collided = int(counts[counts > 1].sum())
        max_per_code = int(counts.max())
    else:
        counts, collided, max_per_code = np.zeros(0, dtype=np.int64), 0, 0
    return {
        "items": n,
        "items_without_code": int((~coded).sum()),
        "levels": levels,
        "codebook_size": sizes,
        "codes_used": codes_used,
        "codebook_usage": [round(u / s, 4) for u, s in zip(codes_used, sizes)],
        "distinct_prefixes": distinct_prefixes,
        "distinct_codes": int(counts.size),
        "collision_rate": round(collided / n, 4) if n else 0.0,
        "items_per_code": round(n / counts.size, 3) if n else 0.0,
        "max_items_per_code": max_per_code,
    }


# --------------------------------------------------------------------------------------------------
# the pipeline step: one codebook per configuration, codes for every ad
# --------------------------------------------------------------------------------------------------
def semantic_ids_dir(settings: "Settings") -> Path:
    return settings.embeddings_dir / "semantic_ids"


def codes_path(settings: "Settings") -> Path:
    return semantic_ids_dir(settings) / CODES_FILE


def code_columns(settings: "Settings") -> list[str]:
    """The code columns of ``codes.parquet`` under the configured method: ``sid_1..sid_L`` (int32) for
    residual k-means, ``simhash`` (int64) for SimHash."""
    rep = settings.representations
    return ["simhash"] if rep.semantic_ids == "simhash" else [f"sid_{i + 1}" for i in range(rep.rq_levels)]


def _new_quantizer(settings: "Settings", dim: int) -> Quantizer:
    rep = settings.representations
    if rep.semantic_ids == "simhash":
        return SimHash(dim, bits=rep.simhash_bits, seed=rep.seed)
    return ResidualKMeans(levels=rep.rq_levels, codes=rep.rq_codes, pca_dim=rep.rq_pca_dim, seed=rep.seed)


def load_codebook(settings: "Settings", version: str | None = None) -> Quantizer | None:
    """The codebook in use (``CURRENT.json``), or the given version; None when none was fitted."""
    root = semantic_ids_dir(settings)
    if version is None:
        current = root / CURRENT_FILE
        if not current.is_file():
            return None
        version = json.loads(current.read_text())["version"]
    return load_quantizer(root / str(version))


def _stale_reason(q: Quantizer, fresh: Quantizer, dim: int, encoder: str | None) -> str | None:
    # SimHash params carry the input dim; it is compared on its own below.
    old_params = {k: v for k, v in q.params().items() if k != "dim"}
    new_params = {k: v for k, v in fresh.params().items() if k != "dim"}
    if old_params != new_params:
        return f"configuration changed ({old_params} -> {new_params})"
    if q.input_dim != dim:
        return f"vector dimension changed ({q.input_dim} -> {dim})"
    stored = q.provenance.get("encoder")
    if encoder is not None and stored is not None and stored != encoder:
        return f"image encoder changed ({stored} -> {encoder})"
    return None


def fit_or_load_codebook(
    settings: "Settings", X_fit: np.ndarray, *, encoder: str | None = None, refit: bool = False
) -> Quantizer:
    """The codebook in use, fitting one on ``X_fit`` (rows without a vector are skipped) only when
    none exists, ``refit`` is asked for, or the stored one no longer matches the configuration
    (method, sizes, seed), the vector dimension or the ``encoder`` name. A fitted codebook is saved
    to ``semantic_ids/<version>/`` and made current; an existing version folder is reused."""
    import datetime as dt

    from components.storage import write_json_atomic

    X_fit = as_matrix(X_fit)
    dim = int(X_fit.shape[1])
    fresh = _new_quantizer(settings, dim)
    current = load_codebook(settings)
    if current is not None and not refit:
        reason = _stale_reason(current, fresh, dim, encoder)
        if reason is None:
            return current
        log.info("semantic IDs: refitting the codebook: %s", reason)
    q = fresh.fit(X_fit)
    q.provenance = {"encoder": encoder, "fitted_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    root = semantic_ids_dir(settings)
    target = root / q.version
    if not (target / META_FILE).is_file():
        q.save(target)
    write_json_atomic(root / CURRENT_FILE, {"version": q.version, "method": q.method, "encoder": encoder})
    log.info("semantic IDs: fitted %s codebook %s on %d vectors in %.1f s",
             q.method, q.version, q.fit_items, getattr(q, "fit_seconds", 0.0))
    return q


def fit_and_assign(settings: "Settings", X_fit: np.ndarray, ad_ids: np.ndarray, X: np.ndarray, has_input: np.ndarray,
                   *, encoder: str | None = None, refit: bool = False) -> tuple[Quantizer | None, Quantizer, "pa.Table"]:
    """(the codebook before, the one in use, the codes): :func:`fit_or_load_codebook` then :func:`assign_codes`
    under an exclusive ``flock`` on ``semantic_ids/.lock``. Two commands refreshing at once (a daily beside a
    backfill) used to both find no codebook, fit two, and code their days with whichever ``CURRENT.json`` said
    last; now the second waits, loads the first one's codebook and codes with it."""
    from components.storage import file_lock

    with file_lock(semantic_ids_dir(settings) / ".lock"):
        previous = load_codebook(settings)
        codebook = fit_or_load_codebook(settings, X_fit, encoder=encoder, refit=refit)
        return previous, codebook, assign_codes(settings, ad_ids, X, has_input)


def assign_codes(settings: "Settings", ad_ids: np.ndarray, X: np.ndarray, has_input: np.ndarray) -> "pa.Table":
    """Code ads with the current codebook (never refits) and store them in ``codes.parquet``.

    Args:
        ad_ids: int64 [n] ad ids (unique).
        X: their visual vectors [n, dim].
        has_input: bool [n], False for ads without a photo; they get ``-1`` at every level.

    Returns the stored table, sorted by ``ad_id``: ``ad_id`` int64 plus ``sid_1..sid_L`` int32
    (residual k-means) or ``simhash`` int64. Ads already stored under the same codebook version and not
    in ``ad_ids`` are kept, so coding only the new ads of a day is enough; after a refit, only the
    given ads remain. Schema metadata: ``method``, ``version``, ``codebook_sizes`` and ``report``
    (:func:`codebook_report`, also logged).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from components.storage import write_parquet_atomic

    q = load_codebook(settings)
    if q is None:
        raise RuntimeError(
            f"no semantic-ID codebook under {semantic_ids_dir(settings)}: call fit_or_load_codebook first"
        )
    ad_ids = np.asarray(ad_ids, dtype=np.int64)
    has_input = np.asarray(has_input, dtype=bool)
    X = as_matrix(X, q.input_dim)
    if not (ad_ids.shape[0] == X.shape[0] == has_input.shape[0]):
        raise ValueError(
            f"ad_ids ({ad_ids.shape[0]}), X ({X.shape[0]}) and has_input ({has_input.shape[0]}) differ in length"
        )
    if np.unique(ad_ids).size != ad_ids.size:
        raise ValueError("assign_codes: ad_ids has duplicates")
    raw = q.encode(X)
    raw = raw if raw.ndim == 2 else raw[:, None]
    raw[~has_input] = NO_CODE
    names = ["simhash"] if isinstance(q, SimHash) else [f"sid_{i + 1}" for i in range(q.levels)]
    arrow_type = pa.int64() if isinstance(q, SimHash) else pa.int32()
    new = pa.table({"ad_id": pa.array(ad_ids, pa.int64()),
                    **{name: pa.array(raw[:, i], arrow_type) for i, name in enumerate(names)}})

    path = codes_path(settings)
    if path.is_file():
        old = pq.read_table(path)
        md = old.schema.metadata or {}
        if md.get(b"version", b"").decode() == q.version and old.column_names == new.column_names:
            keep = pc.invert(pc.is_in(old["ad_id"], value_set=new["ad_id"]))
            new = pa.concat_tables([old.filter(keep).replace_schema_metadata(None), new])
    new = new.sort_by("ad_id")
    sizes = codebook_sizes(q)
    report = codebook_report(new.select(names), sizes)
    new = new.replace_schema_metadata({
        "method": q.method, "version": q.version, "codebook_sizes": json.dumps(sizes), "report": json.dumps(report),
    })
    write_parquet_atomic(new, path)
    log.info("semantic IDs %s: %d ads coded, %d without a photo; codes used per level %s (usage %s), "
             "collision rate %.3f", q.version, report["items"], report["items_without_code"],
             report["codes_used"], report["codebook_usage"], report["collision_rate"])
    return new


def load_codes(settings: "Settings") -> "pa.Table | None":
    """``codes.parquet`` (see :func:`assign_codes`), or None before the first assignment."""
    import pyarrow.parquet as pq

    path = codes_path(settings)
    return pq.read_table(path) if path.is_file() else None


@dataclass(frozen=True)
class SemanticIdSummary:
    """What the run summary shows about the semantic IDs (read back from ``codes.parquet``)."""

    method: str
    version: str
    report: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "version": self.version, **self.report}


def semantic_id_summary(settings: "Settings") -> SemanticIdSummary | None:
    """Method, codebook version and :func:`codebook_report` of the stored codes (None if none)."""
    table = load_codes(settings)
    if table is None:
        return None
    md = table.schema.metadata or {}
    return SemanticIdSummary(md[b"method"].decode(), md[b"version"].decode(), json.loads(md[b"report"]))

"""The incremental, content-addressed store of ad vectors, one per representation space.

Each space ("text", "visual", ...) is one parquet file, ``<embeddings_dir>/<space>/vectors.parquet``:

    ad_id int64 | content_hash string | has_input bool | vector fixed_size_list<float32>[dim]

sorted by ``ad_id``, with the encoder's name and the dimension in the schema metadata. An ad's
``content_hash`` is sha256(encoder name, content): a refresh encodes only contents whose hash is not
stored yet (new ads, changed titles or photos, or everything after a model change), and copies every
other vector from the store. Ads without content (null or empty title/photo) get a zero vector and
``has_input=False`` and never reach the encoder. Ads the store holds but a refresh does not mention
are kept, so the file is the union of every ad seen. The file is replaced atomically, and only when
something changed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from components.config import Settings

log = logging.getLogger(__name__)

VECTORS_FILE = "vectors.parquet"
META_ENCODER = b"adsrec.encoder"
META_DIM = b"adsrec.dim"
# Contents per encoder call: big enough to batch well, small enough for a progress bar that moves.
ENCODE_CHUNK = 256
_SPACE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class Encoder(Protocol):
    """Anything with a stable ``name``, a ``dim`` and ``encode(contents) -> float32 [n, dim]``:
    :class:`~components.representations.text.TextEncoder` and the image encoders."""

    name: str
    dim: int

    def encode(self, items: Sequence[Any]) -> np.ndarray: ...


@dataclass(frozen=True)
class EncodeReport:
    """What one refresh did. ``items_total = items_encoded + items_reused + items_without_input``;
    ``items_encoded`` counts ads whose content hash was new (ads sharing one new content are encoded
    once); ``seconds`` is the whole refresh (read, hash, encode, write)."""

    space: str
    items_total: int
    items_encoded: int
    items_reused: int
    items_without_input: int
    seconds: float
    items_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AdVectors:
    """A space's vectors in memory: ``ad_ids`` int64 sorted ascending, ``vectors`` float32 [n, d]
    (zero rows where ``has_input`` is False), the ``encoder`` that made them."""

    space: str
    ad_ids: np.ndarray
    vectors: np.ndarray
    has_input: np.ndarray
    encoder: str

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for ``ids`` (any order, repeats allowed): float32 [m, d] and ``found`` bool [m].

        ``found`` is True only where the ad is stored AND had content (a real vector). Every other
        row (unknown ad, or an ad without a title/photo) is the zero vector with ``found=False``:
        that is the fallback downstream code sees.
        """
        ids = np.asarray(ids, dtype=np.int64)
        m = ids.shape[0]
        if self.ad_ids.size == 0:
            return np.zeros((m, self.dim), dtype=np.float32), np.zeros(m, dtype=bool)
        pos = np.clip(np.searchsorted(self.ad_ids, ids), 0, self.ad_ids.size - 1)
        found = (self.ad_ids[pos] == ids) & self.has_input[pos]
        out = np.zeros((m, self.dim), dtype=np.float32)
        out[found] = self.vectors[pos[found]]
        return out, found


def vectors_path(settings: Settings, space: str) -> Path:
    """``<embeddings_dir>/<space>/vectors.parquet`` (``space`` must be a plain folder name)."""
    if not _SPACE_NAME.match(space):
        raise ValueError(f"space name {space!r} must be a plain folder name (letters, digits, _ . -)")
    return Path(settings.embeddings_dir) / space / VECTORS_FILE


def content_hashes(encoder_name: str, contents: Sequence[bytes | str | None]) -> list[str | None]:
    """sha256 hex of (encoder name, content) per item; None where the content is null or empty.

    One hashlib call per item (C code; ~1 µs for a title, ~10 µs for a 2 KB photo): hashing cannot be
    vectorised further, and it is tiny next to encoding.
    """
    prefix = hashlib.sha256(encoder_name.encode() + b"\0")
    out: list[str | None] = []
    for c in contents:
        if c is None or len(c) == 0:
            out.append(None)
            continue
        h = prefix.copy()
        h.update(c.encode() if isinstance(c, str) else bytes(c))
        out.append(h.hexdigest())
    return out


def _as_list(contents: Sequence[bytes | str | None] | pa.Array | pa.ChunkedArray) -> list[Any]:
    if isinstance(contents, (pa.Array, pa.ChunkedArray)):
        return contents.to_pylist()
    return list(contents)


def _empty_store(space: str, dim: int, encoder: str) -> AdVectors:
    return AdVectors(
        space=space,
        ad_ids=np.zeros(0, np.int64),
        vectors=np.zeros((0, dim), np.float32),
        has_input=np.zeros(0, bool),
        encoder=encoder,
    )


def _read(path: Path, space: str) -> tuple[AdVectors, np.ndarray]:
    """The stored vectors and their content hashes (object array, None where no input)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if META_ENCODER not in meta or META_DIM not in meta:
        raise ValueError(f"{path} is not a vector store file (schema metadata lacks the encoder name and dim)")
    dim = int(meta[META_DIM])
    encoder = meta[META_ENCODER].decode()
    vec_col = table["vector"].combine_chunks()
    # flatten() respects slicing offsets; a fixed-size list of n rows holds exactly n * dim values.
    flat = vec_col.flatten().to_numpy(zero_copy_only=False) if len(vec_col) else np.zeros(0, np.float32)
    vectors = np.ascontiguousarray(flat, dtype=np.float32).reshape(len(vec_col), dim)
    store = AdVectors(
        space=space,
        ad_ids=table["ad_id"].to_numpy().astype(np.int64),
        vectors=vectors,
        has_input=table["has_input"].to_numpy(zero_copy_only=False).astype(bool),
        encoder=encoder,
    )
    hashes = np.asarray(table["content_hash"].to_pylist(), dtype=object)
    return store, hashes


def load_ad_vectors(settings: Settings, space: str) -> AdVectors:
    """The stored vectors of ``space``. Raises FileNotFoundError when the space was never refreshed."""
    path = vectors_path(settings, space)
    if not path.is_file():
        raise FileNotFoundError(
            f"no {space!r} vectors at {path}: run refresh_ad_vectors for this space first "
            "(the daily refresh_representations step does)"
        )
    return _read(path, space)[0]


def _write(path: Path, store: AdVectors, hashes: np.ndarray) -> None:
    from components.storage import write_parquet_atomic

    dim = store.dim
    vector = pa.FixedSizeListArray.from_arrays(pa.array(store.vectors.reshape(-1), pa.float32()), dim)
    schema = pa.schema(
        [
            ("ad_id", pa.int64()),
            ("content_hash", pa.string()),
            ("has_input", pa.bool_()),
            ("vector", pa.list_(pa.float32(), dim)),
        ],
        metadata={META_ENCODER: store.encoder.encode(), META_DIM: str(dim).encode()},
    )
    table = pa.Table.from_arrays(
        [pa.array(store.ad_ids, pa.int64()), pa.array(list(hashes), pa.string()), pa.array(store.has_input), vector],
        schema=schema,
    )
    write_parquet_atomic(table, path)


def refresh_ad_vectors(
    settings: Settings,
    space: str,
    ad_ids: np.ndarray,
    contents: Sequence[bytes | str | None] | pa.Array | pa.ChunkedArray,
    encoder: Encoder,
    progress: bool = True,
) -> EncodeReport:
    """Bring ``space``'s stored vectors up to date for these ads, encoding only new contents.

    Args:
        ad_ids: int64 [n], unique.
        contents: per ad, the text (str) or photo (JPEG bytes) to encode; None or empty = no input.
        encoder: a text or image encoder (``name``, ``dim``, ``encode``).
        progress: show a progress bar with an ETA over the items to encode (components/progress.py:
            on a terminal, or with ``ADSREC_PROGRESS=1``).

    A stored vector is reused whenever its content hash (encoder name + content) matches, whichever
    ad it was stored for. When the store was made by another encoder (a model change), its rows are
    all dropped and every ad given here is re-encoded; ads not given here are then gone too.
    """
    started = time.perf_counter()
    ids, items = _checked_inputs(space, ad_ids, contents)
    path = vectors_path(settings, space)
    stored, stored_hashes = _stored_for_encoder(path, space, encoder)

    hashes = np.asarray(content_hashes(encoder.name, items), dtype=object)
    has_input = np.asarray([h is not None for h in hashes], dtype=bool)

    # Content-addressed reuse: a hash -> stored row index, over every stored row that has input.
    known = {h: i for i, h in enumerate(stored_hashes) if h is not None}
    src = np.fromiter((known.get(h, -1) if h is not None else -1 for h in hashes), dtype=np.int64, count=ids.size)
    reused = has_input & (src >= 0)
    to_encode = has_input & (src < 0)

    vectors = np.zeros((ids.size, encoder.dim), dtype=np.float32)
    vectors[reused] = stored.vectors[src[reused]]
    if to_encode.any():
        _encode_new_contents(vectors, items, hashes, to_encode, encoder, space, progress)

    # Merge: stored rows for ads not given now, plus every given ad with its (new or reused) vector.
    keep = ~np.isin(stored.ad_ids, ids)
    changed = bool(to_encode.any()) or not _same_rows(stored, stored_hashes, ids, hashes)
    if changed or not path.is_file():
        all_ids = np.concatenate([stored.ad_ids[keep], ids])
        order = np.argsort(all_ids, kind="stable")
        merged = AdVectors(
            space=space,
            ad_ids=all_ids[order],
            vectors=np.concatenate([stored.vectors[keep], vectors])[order],
            has_input=np.concatenate([stored.has_input[keep], has_input])[order],
            encoder=encoder.name,
        )
        _write(path, merged, np.concatenate([stored_hashes[keep], hashes])[order])

    seconds = time.perf_counter() - started
    n_encoded = int(to_encode.sum())
    report = EncodeReport(
        space=space,
        items_total=int(ids.size),
        items_encoded=n_encoded,
        items_reused=int(reused.sum()),
        items_without_input=int((~has_input).sum()),
        seconds=round(seconds, 4),
        items_per_s=round(n_encoded / seconds, 2) if n_encoded and seconds > 0 else 0.0,
    )
    log.info(
        "%s vectors: %d ads, %d encoded, %d reused, %d without input, %.2f s",
        space, report.items_total, report.items_encoded, report.items_reused, report.items_without_input, seconds,
    )
    return report


def _checked_inputs(
    space: str, ad_ids: np.ndarray, contents: Sequence[bytes | str | None] | pa.Array | pa.ChunkedArray
) -> tuple[np.ndarray, list[Any]]:
    """The ad ids as int64 and the contents as a list, after checking they match and the ids are unique."""
    ids = np.asarray(ad_ids)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        raise TypeError(f"ad_ids must be a 1-D integer array, got {ids.dtype} with shape {ids.shape}")
    ids = ids.astype(np.int64)
    items = _as_list(contents)
    if len(items) != ids.size:
        raise ValueError(f"{ids.size} ad_ids but {len(items)} contents for space {space!r}")
    uniq, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"duplicate ad_ids given to refresh {space!r}: {uniq[counts > 1][:10].tolist()}")
    return ids, items


def _stored_for_encoder(path: Path, space: str, encoder: Encoder) -> tuple[AdVectors, np.ndarray]:
    """The stored vectors and hashes of ``space``; empty when there are none or another encoder made them."""
    if path.is_file():
        stored, stored_hashes = _read(path, space)
        if stored.encoder == encoder.name and stored.dim == encoder.dim:
            return stored, stored_hashes
        log.warning(
            "space %s was encoded by %s (dim %d); re-encoding with %s (dim %d)",
            space, stored.encoder, stored.dim, encoder.name, encoder.dim,
        )
    return _empty_store(space, encoder.dim, encoder.name), np.zeros(0, object)


def _encode_new_contents(
    vectors: np.ndarray, items: list[Any], hashes: np.ndarray, to_encode: np.ndarray, encoder: Encoder, space: str,
    progress: bool,
) -> None:
    """Encode the distinct contents of the ``to_encode`` rows in chunks (ads sharing a title are encoded
    once) and write each row's vector into ``vectors``; a bar with an ETA follows the chunks."""
    from components.progress import progress_bar

    new_hashes, first, inverse = np.unique(hashes[to_encode], return_index=True, return_inverse=True)
    rows = np.flatnonzero(to_encode)
    todo = [items[rows[i]] for i in first]
    fresh = np.empty((len(todo), encoder.dim), dtype=np.float32)
    bar = progress_bar(len(todo), f"encode {space}", unit="item") if progress else nullcontext()
    with bar:
        for start in range(0, len(todo), ENCODE_CHUNK):
            chunk = todo[start : start + ENCODE_CHUNK]
            out = np.asarray(encoder.encode(chunk), dtype=np.float32)
            if out.shape != (len(chunk), encoder.dim):
                raise ValueError(
                    f"encoder {encoder.name} returned shape {out.shape} for {len(chunk)} items "
                    f"(expected ({len(chunk)}, {encoder.dim}))"
                )
            if not np.isfinite(out).all():
                raise ValueError(f"encoder {encoder.name} returned non-finite values")
            fresh[start : start + len(chunk)] = out
            if progress:
                bar.update(len(chunk))
    vectors[rows] = fresh[inverse]


def _same_rows(stored: AdVectors, stored_hashes: np.ndarray, ids: np.ndarray, hashes: np.ndarray) -> bool:
    """True when every given ad is already stored with exactly this content hash (nothing to write)."""
    if stored.ad_ids.size == 0:
        return ids.size == 0
    pos = np.clip(np.searchsorted(stored.ad_ids, ids), 0, stored.ad_ids.size - 1)
    if not np.array_equal(stored.ad_ids[pos], ids):
        return False
    return bool(np.all(stored_hashes[pos] == hashes))

"""The real fashion catalogue that the demo marketplace turns into ads (DESIGN.md section 5).

Reads ``<shared_data>/fashion/catalog.parquet`` (44k real products with titles and a taxonomy) and the
product photos in ``images-00/01.parquet`` (60x80 JPEGs for 15,409 of them). Nothing is copied into the
project: the files are read in place, once per process, and kept in memory (about 25 MB).

The simulator works on integer codes, so the catalogue is handed over as one row per product with
each categorical column dictionary-encoded against a *sorted* vocabulary: codes are then the same on
every machine and independent of the file's row order.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

CATALOG_FILE = "catalog.parquet"
PHOTO_FILES = ("images-00.parquet", "images-01.parquet")
# Columns of catalog.parquet that are categorical; colour and usage are the ones the simulator hides.
CATEGORICAL = ("master_category", "sub_category", "article_type", "colour", "usage", "brand")

_LOCK = threading.Lock()


@dataclass(frozen=True)
class FashionCatalog:
    """The catalogue as arrays aligned by row (rows sorted by ``product_id``).

    Attributes:
        product_id: int64 product ids (also the simulator's ad ids).
        title: the product titles (Arrow string array).
        codes: for each column in ``CATEGORICAL``, an int32 code per product into ``vocab[column]``.
        vocab: the sorted distinct values of each categorical column. ``brand`` is the title's first
            word, lower-cased (the catalogue has no brand column; titles start with the brand).
        has_photo: whether the product has a photo in ``images-0*.parquet``.
    """

    root: Path
    product_id: np.ndarray
    title: pa.Array
    codes: dict[str, np.ndarray]
    vocab: dict[str, tuple[str, ...]]
    has_photo: np.ndarray

    @property
    def n_products(self) -> int:
        return int(self.product_id.shape[0])

    def photos(self, product_ids: np.ndarray) -> pa.Array:
        """The JPEG bytes of each product id (``pa.binary()``), null where the product has no photo."""
        return _photos_for(self.root, np.asarray(product_ids, dtype=np.int64))


def fashion_dir(shared_data: Path) -> Path:
    """``<shared_data>/fashion``, checked to hold the catalogue, with an error that says where to look."""
    root = Path(shared_data).expanduser().resolve() / "fashion"
    if not (root / CATALOG_FILE).is_file():
        raise FileNotFoundError(
            f"fashion catalogue not found at {root / CATALOG_FILE}; the demo marketplace reads the real "
            "products from ../shared/data/fashion beside the repo (settings.pipeline.shared_data)"
        )
    return root


def load_catalog(shared_data: Path) -> FashionCatalog:
    """Load (once per process and folder) the catalogue with its photo index."""
    root = fashion_dir(shared_data)
    with _LOCK:
        return _load_catalog(root)


@functools.lru_cache(maxsize=2)
def _load_catalog(root: Path) -> FashionCatalog:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(root / CATALOG_FILE)
    missing = {"product_id", "title", *CATEGORICAL[:-1]} - set(table.column_names)
    if missing:
        raise ValueError(f"{root / CATALOG_FILE} lacks columns {sorted(missing)}")
    table = table.sort_by("product_id")
    product_id = table["product_id"].to_numpy().astype(np.int64)
    if np.any(np.diff(product_id) == 0):
        raise ValueError(f"{root / CATALOG_FILE} has duplicate product_id values")
    title = pc.cast(table["title"].combine_chunks(), pa.string())
    brand = pc.list_element(pc.split_pattern(pc.utf8_lower(pc.utf8_trim_whitespace(title)), " ", max_splits=1), 0)

    columns = {c: pc.cast(table[c].combine_chunks(), pa.string()) for c in CATEGORICAL[:-1]}
    columns["brand"] = brand
    codes: dict[str, np.ndarray] = {}
    vocab: dict[str, tuple[str, ...]] = {}
    for name, values in columns.items():
        if values.null_count:
            raise ValueError(f"{root / CATALOG_FILE}: column {name} has {values.null_count} nulls")
        uniq = pc.array_sort_indices(pc.unique(values))
        sorted_vocab = pc.take(pc.unique(values), uniq)
        vocab[name] = tuple(sorted_vocab.to_pylist())
        codes[name] = pc.index_in(values, value_set=sorted_vocab).to_numpy().astype(np.int32)

    photo_ids = _photo_index(root)
    has_photo = np.isin(product_id, photo_ids)
    return FashionCatalog(
        root=root,
        product_id=product_id,
        title=title,
        codes=codes,
        vocab=vocab,
        has_photo=has_photo,
    )


@functools.lru_cache(maxsize=2)
def _photo_table(root: Path) -> pa.Table:
    """All photos, sorted by product id (about 23 MB of JPEG bytes)."""
    import pyarrow.parquet as pq

    paths = [root / f for f in PHOTO_FILES if (root / f).is_file()]
    if not paths:
        return pa.table({"product_id": pa.array([], pa.int64()), "jpeg": pa.array([], pa.binary())})
    table = pa.concat_tables([pq.read_table(p, columns=["product_id", "jpeg"]) for p in paths])
    table = table.cast(pa.schema([("product_id", pa.int64()), ("jpeg", pa.binary())]))
    return table.sort_by("product_id").combine_chunks()


def _photo_index(root: Path) -> np.ndarray:
    return _photo_table(root)["product_id"].to_numpy()


def _photos_for(root: Path, product_ids: np.ndarray) -> pa.Array:
    import pyarrow.compute as pc

    with _LOCK:
        photos = _photo_table(root)
    ids = photos["product_id"].to_numpy()
    if ids.size == 0:
        return pa.nulls(len(product_ids), pa.binary())
    pos = np.clip(np.searchsorted(ids, product_ids), 0, ids.size - 1)
    found = ids[pos] == product_ids
    jpeg = photos["jpeg"].combine_chunks()  # one contiguous array, so the result is a plain Array
    taken = pc.take(jpeg, pa.array(pos))
    return pc.if_else(pa.array(found), taken, pa.nulls(len(product_ids), pa.binary()))

"""What the SEE similarities and semantic-ID codes are computed from, loaded once: the ad vector stores,
what is skipped and why, the semantic-ID codes and the graph snapshots (components/representations/
similarity.py uses them).

A training-set build loads them once per call (:func:`load_similarity_inputs` inside
``add_similarity_features``). A long-lived scorer (the ``adsrec serve`` service,
components/serving/service.py) loads them once and passes the same :class:`SimilarityInputs` to every
request, so a request pays for the arithmetic only, not for reading parquet; it loads a new one when the
representations are refreshed (:func:`inputs_fingerprint` changes). Graph snapshots are read lazily, one
per graph day asked for, and kept.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings

SEE_COLUMNS = ("see_text", "see_visual", "see_graph")


@dataclass
class SimilarityInputs:
    """The loaded inputs of one home's similarities: ``stores`` (space -> ad vector store), ``skipped``
    (column or ``semantic_ids`` -> reason), ``codes`` (the semantic-ID codes table or None) with
    ``code_ids`` / ``code_order`` (its ad ids sorted, and the permutation that sorts them) and the graph
    snapshots read so far (``graph(day)``)."""

    settings: "Settings"
    stores: dict[str, Any]
    skipped: dict[str, str]
    codes: "pa.Table | None"
    code_ids: np.ndarray
    code_order: np.ndarray
    fingerprint: tuple[Any, ...] = ()
    _graphs: dict[dt.date, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def graph(self, day: dt.date) -> Any:
        """The newest graph snapshot dated ``day`` or earlier (``graph.load_graph``), read once per day."""
        from components.representations.graph import load_graph

        with self._lock:
            if day not in self._graphs:
                self._graphs[day] = load_graph(self.settings, day)
            return self._graphs[day]


def usable_inputs(settings: "Settings") -> tuple[dict[str, Any], dict[str, str]]:
    """The vector stores the SEE columns are computed from, and what is skipped (``see_text``,
    ``see_visual``, ``see_graph``, ``semantic_ids``) with the reason: switched off in
    ``representations``, or no input (the refresh skipped the space: no ad with a title / a photo, no
    graph snapshot yet). Training sets and online rows call this with the same settings and home, so they
    get the same columns."""
    from components.representations.graph import graph_snapshots
    from components.representations.vector_store import load_ad_vectors, vectors_path

    rep = settings.representations
    stores: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    visual_reason = None
    for space in ("text", "visual"):
        reason = None
        if not getattr(rep, space):
            reason = f"switched off (representations.{space}: false)"
        elif not vectors_path(settings, space).is_file():
            reason = f"no ad has {'an image' if space == 'visual' else 'text'} (no {space} vectors were built)"
        else:
            store = load_ad_vectors(settings, space)
            if not store.has_input.any():
                reason = f"no ad has {'an image' if space == 'visual' else 'text'} (the {space} store is empty)"
            elif rep.see:
                stores[space] = store
        if reason is not None:
            skipped[f"see_{space}"] = reason
            if space == "visual":
                visual_reason = reason
    if not rep.graph:
        skipped["see_graph"] = "switched off (representations.graph: false)"
    elif not graph_snapshots(settings):
        skipped["see_graph"] = "no graph snapshot yet (no positive of the behaviour task in any graph window)"
    if not rep.see:
        for name in SEE_COLUMNS:
            skipped.setdefault(name, "switched off (representations.see: false)")
    if rep.semantic_ids == "off":
        skipped["semantic_ids"] = "switched off (representations.semantic_ids: off)"
    elif visual_reason is not None:
        skipped["semantic_ids"] = f"no visual vectors: {visual_reason}"
    return stores, skipped


def inputs_fingerprint(settings: "Settings") -> tuple[Any, ...]:
    """A cheap fingerprint of the representation files (path, size, mtime of every file under
    ``<home>/embeddings``): it changes when a refresh rewrites any of them."""
    root = settings.embeddings_dir
    if not root.is_dir():
        return ()
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            out.append((str(path.relative_to(root)), st.st_size, st.st_mtime_ns))
    return tuple(out)


def load_similarity_inputs(settings: "Settings", fingerprint: bool = False) -> SimilarityInputs:
    """Load every input of the similarities once. Raises ``FileNotFoundError`` when the ads have visual
    vectors but no semantic-ID codes were assigned (the refresh did not finish). ``fingerprint=True`` also
    records :func:`inputs_fingerprint` (what a long-lived scorer compares to know when to reload)."""
    from components.representations import semantic_ids

    stamp = inputs_fingerprint(settings) if fingerprint else ()
    stores, skipped = usable_inputs(settings)
    codes = None if "semantic_ids" in skipped else semantic_ids.load_codes(settings)
    if codes is None and "semantic_ids" not in skipped:
        raise FileNotFoundError(
            f"no semantic-ID codes under {settings.embeddings_dir / 'semantic_ids'} although the ads have visual "
            "vectors: run components.representations.refresh.refresh_representations first"
        )
    if codes is not None:
        ids = codes.column("ad_id").to_numpy().astype(np.int64)
        order = np.argsort(ids, kind="stable")
        code_ids = ids[order]
    else:
        order = code_ids = np.zeros(0, np.int64)
    return SimilarityInputs(settings=settings, stores=stores, skipped=skipped, codes=codes, code_ids=code_ids,
                            code_order=order, fingerprint=stamp)

"""Visual semantic IDs: short discrete codes for ad creatives, so visually similar ads share ids.

Ad ids are arbitrary and say nothing about a new ad. Quantising each ad's visual vector into a few
small codes gives ad-side categorical fields that a new ad shares with visually similar old ones
(METHODS.md, "Visual semantic IDs"). Two quantisers, chosen by ``representations.semantic_ids``:

- :class:`ResidualKMeans` (default ``"rqkmeans"``): rows L2-normalised, centred and PCA-reduced to
  ``pca_dim``; level 1 runs k-means with ``codes`` centroids on that vector, level l on the residual
  the levels before it left. A code is ``levels`` int32 ids; its prefixes are coarser clusters.
- :class:`SimHash` (``"simhash"``): ``bits`` random hyperplanes, ``bit_i = 1[r_i . x > 0]``, read as
  one int64 (cosine LSH: the chance two vectors share a bit is ``1 - angle / pi``).

Both are fitted once on the catalogue and versioned by a content hash of what they learned
(``version``). New ads get codes from the stored codebook; nothing is refitted unless asked, or the
configuration or the encoder changed. Ads without a visual vector (no photo: zero vector or
``has_input=False``) get code ``-1`` at every level, a value no fitted code takes.

State under ``settings.embeddings_dir / "semantic_ids"``: ``<version>/`` (``codebook.npz`` and
``meta.json``), ``CURRENT.json`` (the version in use) and ``codes.parquet`` (one row per ad).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings

log = logging.getLogger(__name__)

NO_CODE = -1  # the code of an ad without a visual vector, at every level
CODEBOOK_FILE = "codebook.npz"
META_FILE = "meta.json"
CURRENT_FILE = "CURRENT.json"
CODES_FILE = "codes.parquet"
_ENCODE_BATCH = 8192  # rows per distance matrix in encode: 8192 x 256 float32 = 8 MB


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _as_matrix(X: np.ndarray, dim: int | None = None) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors [n, dim], got shape {X.shape}")
    if dim is not None and X.shape[1] != dim:
        raise ValueError(f"vectors have {X.shape[1]} dimensions, the codebook was fitted on {dim}")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float32)
    return X


def _normalise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised rows (float32) and a mask of rows that carry a vector (finite, non-zero norm);
    other rows come back as zeros."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1)
    valid = np.isfinite(norms) & (norms > 0)
    out = np.zeros_like(X)
    out[valid] = X[valid] / norms[valid, None]
    return out, valid


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))  # length-prefixed, so part boundaries are unambiguous
        h.update(p)
    return h.hexdigest()[:16]


def _array_bytes(a: np.ndarray) -> bytes:
    # Canonical layout (C order, little-endian, explicit dtype) so the hash does not depend on strides.
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()


def _sq_distances(X: np.ndarray, C: np.ndarray, c_sq: np.ndarray | None = None) -> np.ndarray:
    """Squared Euclidean distances [n, k] by ``|x|^2 - 2 x.c + |c|^2`` (one matmul, clipped at 0)."""
    if c_sq is None:
        c_sq = np.einsum("ij,ij->i", C, C)
    d = np.einsum("ij,ij->i", X, X)[:, None] - 2.0 * (X @ C.T) + c_sq[None, :]
    np.maximum(d, 0.0, out=d)
    return d


def _nearest(X: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centroid and the squared distance to it, batched to bound memory."""
    n = X.shape[0]
    labels = np.empty(n, dtype=np.int32)
    dist = np.empty(n, dtype=X.dtype)
    c_sq = np.einsum("ij,ij->i", C, C)
    for start in range(0, n, _ENCODE_BATCH):
        d = _sq_distances(X[start:start + _ENCODE_BATCH], C, c_sq)
        lab = d.argmin(axis=1)
        labels[start:start + _ENCODE_BATCH] = lab
        dist[start:start + _ENCODE_BATCH] = d[np.arange(d.shape[0]), lab]
    return labels, dist


# --------------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------------
def _cluster_sums(X: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-cluster sums of the rows [k, d] in float64: rows sorted by cluster, then one
    ``add.reduceat`` over the runs (about 4x faster than ``np.add.at`` here)."""
    sums = np.zeros((counts.size, X.shape[1]), dtype=np.float64)
    nonempty = np.flatnonzero(counts)
    if nonempty.size:
        order = np.argsort(labels, kind="stable")
        starts = (np.cumsum(counts) - counts)[nonempty]
        sums[nonempty] = np.add.reduceat(X[order].astype(np.float64), starts, axis=0)
    return sums


def _kmeans_pp(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability proportional to the squared
    distance to the nearest centre chosen so far (O(n d) per centre, vectorised over points)."""
    n = X.shape[0]
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    closest = np.einsum("ij,ij->i", X - X[chosen[0]], X - X[chosen[0]])
    for j in range(1, k):
        if float(closest.sum(dtype=np.float64)) <= 0.0:
            # Every point coincides with a centre already (fewer distinct points than k): take any
            # point not chosen yet; the duplicate centre ends up empty and is re-seeded or left unused.
            rest = np.setdiff1d(np.arange(n), chosen[:j])
            chosen[j] = rng.choice(rest) if rest.size else rng.integers(n)
        else:
            # Inverse-CDF draw in float64 (rng.choice(p=...) rejects float32 weights whose sum is
            # off by rounding); side="right" never picks a zero-weight point.
            cdf = np.cumsum(closest, dtype=np.float64)
            chosen[j] = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), n - 1)
        diff = X - X[chosen[j]]
        np.minimum(closest, np.einsum("ij,ij->i", diff, diff), out=closest)
    return X[chosen].copy()


def kmeans(
    X: np.ndarray, k: int, *, seed: int | tuple[int, ...], max_iter: int = 25, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray, int]:
    """Lloyd's k-means with k-means++ seeding. Returns (centroids [k, d] float32, labels [n] int32,
    iterations run).

    Args:
        X: points [n, d]; ``k`` must not exceed ``n``.
        seed: fixes the seeding (an int or a tuple of ints, e.g. (seed, level)), so the same input
            gives the same centroids.
        max_iter: bound on Lloyd iterations (assignment + update).
        tol: stop when the inertia improves by less than this share.

    A cluster left empty by an update is re-seeded at the point currently farthest from its
    centroid (one distinct point per empty cluster), so all ``k`` codes stay in use as long as the
    data has at least ``k`` distinct points.

    Example::

        C, labels, _ = kmeans(np.random.default_rng(0).normal(size=(1000, 8)), 16, seed=0)
        C.shape, labels.shape  # ((16, 8), (1000,))
    """
    n = X.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= points, got k={k} for {n} points")
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    rng = np.random.default_rng(seed)
    C = _kmeans_pp(X32, k, rng)
    prev_inertia = np.inf
    labels = np.zeros(n, dtype=np.int32)
    it = 0
    for it in range(1, max_iter + 1):
        labels, dist = _nearest(X32, C)
        inertia = float(dist.sum(dtype=np.float64))
        counts = np.bincount(labels, minlength=k)
        sums = _cluster_sums(X32, labels, counts)
        nonempty = counts > 0
        C[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
        empty = np.flatnonzero(~nonempty)
        if empty.size:
            far = np.argsort(-dist, kind="stable")[: empty.size]
            C[empty] = X32[far]
        if empty.size == 0 and np.isfinite(prev_inertia) and prev_inertia - inertia <= tol * prev_inertia:
            break
        prev_inertia = inertia
    labels, _ = _nearest(X32, C)  # labels consistent with the final centroids
    return C, labels, it


def _principal_axes(centred: np.ndarray, p: int) -> np.ndarray:
    """The top-``p`` principal axes [p, d] of centred rows [n, d] (float64).

    With more rows than dimensions, the eigenvectors of the d x d scatter matrix ``X^T X`` (the right
    singular vectors of X): on 15k x 1024 that is 1.5 s on 2 cores against 30 s for a thin SVD of X.
    Otherwise the thin SVD of X itself, which is then the cheaper one.
    """
    n, d = centred.shape
    if n >= d:
        _, vecs = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        return vecs[:, ::-1][:, :p].T.copy()
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:p].copy()


# --------------------------------------------------------------------------------------------------
# quantisers
# --------------------------------------------------------------------------------------------------
class ResidualKMeans:
    """Residual k-means (RQ-k-means) over L2-normalised, PCA-reduced vectors.

    Args:
        levels: code length L (one k-means per level).
        codes: centroids per level (capped at the number of fit vectors, see ``level_sizes``).
        pca_dim: PCA dimensions kept (capped at the input dimension and the number of fit vectors).
        seed: fixes k-means seeding; fitting the same data twice gives the same ``version``.
        max_iter: Lloyd iterations per level.

    Example::

        rq = ResidualKMeans(levels=3, codes=256, pca_dim=64, seed=0).fit(vectors)  # [n, 1024]
        rq.encode(vectors)  # int32 [n, 3], each in [0, 256); -1 rows for zero vectors
        rq.version          # 16 hex digits of sha256 over the fitted codebook
    """

    method = "rqkmeans"

    def __init__(self, levels: int = 3, codes: int = 256, pca_dim: int = 64, seed: int = 0, max_iter: int = 25):
        if levels < 1 or codes < 2 or pca_dim < 1 or max_iter < 1:
            raise ValueError(
                f"ResidualKMeans needs levels >= 1, codes >= 2, pca_dim >= 1, max_iter >= 1; "
                f"got levels={levels}, codes={codes}, pca_dim={pca_dim}, max_iter={max_iter}"
            )
        self.levels, self.codes, self.pca_dim, self.seed, self.max_iter = levels, codes, pca_dim, seed, max_iter
        self.mean: np.ndarray | None = None  # [input_dim] float32, mean of the normalised fit rows
        self.components: np.ndarray | None = None  # [pca_dim_eff, input_dim] float32, PCA axes
        self.centroids: list[np.ndarray] = []  # per level [k_l, pca_dim_eff] float32
        self.fit_items = 0
        self.fit_seconds = 0.0
        self.provenance: dict[str, Any] = {}  # encoder name and fit time, stored in meta.json

    # -- fitting ------------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.components is not None

    @property
    def input_dim(self) -> int:
        self._check_fitted()
        return int(self.components.shape[1])  # type: ignore[union-attr]

    @property
    def level_sizes(self) -> list[int]:
        """Centroids actually fitted per level (``codes``, or fewer when fitted on fewer vectors)."""
        return [int(c.shape[0]) for c in self.centroids]

    def fit(self, X: np.ndarray) -> "ResidualKMeans":
        """Fit PCA and the L k-means levels on ``X`` [n, dim]; rows without a vector (zero or
        non-finite) are left out. Returns ``self``."""
        t0 = time.perf_counter()
        Xn, valid = _normalise(_as_matrix(X))
        Xn = Xn[valid]
        n, d = Xn.shape
        if n < 2:
            raise ValueError(f"ResidualKMeans.fit needs at least 2 non-zero vectors, got {n}")
        mean = Xn.mean(axis=0, dtype=np.float64)
        centred = Xn.astype(np.float64) - mean  # the scatter matrix is summed in float64
        p = min(self.pca_dim, d, n)
        comp = _principal_axes(centred, p)
        # Eigenvector signs are arbitrary: fix them (largest |loading| positive) so the version hash
        # depends only on the data and the seed.
        signs = np.sign(comp[np.arange(p), np.abs(comp).argmax(axis=1)])
        comp = comp * np.where(signs == 0, 1.0, signs)[:, None]
        self.mean = mean.astype(np.float32)
        self.components = comp.astype(np.float32)
        residual = self._project(Xn)
        k = min(self.codes, n)
        if k < self.codes:
            log.warning("semantic IDs: only %d fit vectors, so %d codes per level instead of %d", n, k, self.codes)
        self.centroids = []
        for level in range(self.levels):
            C, labels, iters = kmeans(residual, k, seed=(self.seed, level), max_iter=self.max_iter)
            residual = residual - C[labels]
            self.centroids.append(C)
            log.debug("semantic IDs: level %d fitted in %d iterations", level + 1, iters)
        self.fit_items = n
        self.fit_seconds = time.perf_counter() - t0
        return self

    # -- coding -------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("ResidualKMeans is not fitted: call fit(X) or ResidualKMeans.load(path)")

    def _project(self, Xn: np.ndarray) -> np.ndarray:
        """Normalised rows [n, dim] -> PCA coordinates [n, p] float32."""
        projected = (Xn - self.mean) @ self.components.T  # type: ignore[operator,union-attr]
        return np.ascontiguousarray(projected, dtype=np.float32)

    def _residuals(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Codes [n, L] (-1 rows where no vector), the validity mask, and the residual norms² after
        each level (index 0: before quantising) for the valid rows."""
        self._check_fitted()
        Xn, valid = _normalise(_as_matrix(X, self.input_dim))
        residual = self._project(Xn[valid])
        codes = np.full((Xn.shape[0], self.levels), NO_CODE, dtype=np.int32)
        energies = [np.einsum("ij,ij->i", residual, residual)]
        for level, C in enumerate(self.centroids):
            labels, dist = _nearest(residual, C)
            codes[valid, level] = labels
            residual = residual - C[labels]
            energies.append(dist)
        return codes, valid, energies

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Codes int32 [n, levels] from the fitted codebook (never refits); ``-1`` at every level for
        rows without a vector (zero or non-finite)."""
        return self._residuals(X)[0]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The PCA-space reconstruction [n, p] of codes (sum of each level's centroid); rows with a
        ``-1`` code decode to the origin (the fit mean)."""
        self._check_fitted()
        codes = np.asarray(codes)
        out = np.zeros((codes.shape[0], self.components.shape[0]), dtype=np.float32)  # type: ignore[union-attr]
        ok = (codes >= 0).all(axis=1)
        for level, C in enumerate(self.centroids):
            out[ok] += C[codes[ok, level]]
        return out

    def quantization_error(self, X: np.ndarray) -> np.ndarray:
        """Mean squared reconstruction error in PCA space using the first l levels, l = 0..levels
        (index 0: the variance kept by PCA, nothing quantised). Decreases level by level on data like
        the fit set."""
        _, _, energies = self._residuals(X)
        return np.array([float(e.mean()) if e.size else 0.0 for e in energies])

    # -- versioning and persistence -----------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        arrays = {"mean": self.mean, "components": self.components}
        arrays.update({f"centroids_{i}": c for i, c in enumerate(self.centroids)})
        return arrays  # type: ignore[return-value]

    def params(self) -> dict[str, Any]:
        return {"method": self.method, "levels": self.levels, "codes": self.codes, "pca_dim": self.pca_dim,
                "seed": self.seed, "max_iter": self.max_iter}

    @property
    def version(self) -> str:
        """16 hex digits of sha256 over the parameters and every fitted array: equal codebooks,
        equal versions; any changed centroid, a new version."""
        arrays = self._arrays()
        parts = [json.dumps(self.params(), sort_keys=True).encode()]
        parts += [name.encode() + _array_bytes(arrays[name]) for name in sorted(arrays)]
        return _digest(parts)

    def save(self, path: str | Path) -> Path:
        """Write the codebook to the folder ``path`` (``codebook.npz`` + ``meta.json``), atomically."""
        return _save(self, Path(path), self._arrays(), {"level_sizes": self.level_sizes})

    @classmethod
    def load(cls, path: str | Path) -> "ResidualKMeans":
        """Read a folder written by :meth:`save`; the stored version is checked against the arrays."""
        meta, arrays = _load(Path(path), cls.method)
        p = meta["params"]
        rq = cls(levels=p["levels"], codes=p["codes"], pca_dim=p["pca_dim"], seed=p["seed"], max_iter=p["max_iter"])
        rq.mean, rq.components = arrays["mean"], arrays["components"]
        rq.centroids = [arrays[f"centroids_{i}"] for i in range(rq.levels)]
        rq.fit_items = int(meta.get("fit_items", 0))
        _check_version(rq, meta, Path(path))
        return rq


class SimHash:
    """SimHash semantic IDs: ``bits`` random hyperplanes through the (optionally fitted) centre.

    Args:
        dim: input dimension.
        bits: hash length, 1..63 (the code is a non-negative int64).
        seed: fixes the hyperplanes.

    ``fit(X)`` is optional: it stores the mean of the L2-normalised rows as the centre. Image features
    after a ReLU (MobileNet) all lie in one orthant, where most hyperplanes through the origin cut no
    pair apart; centring makes the bits informative. Without ``fit`` the hyperplanes pass through 0.

    Example::

        sh = SimHash(1024, bits=32, seed=0).fit(vectors)
        sh.encode(vectors)  # int64 [n]; -1 for zero vectors
    """

    method = "simhash"

    def __init__(self, dim: int, bits: int = 32, seed: int = 0):
        if not 1 <= bits <= 63:
            raise ValueError(f"SimHash bits must be in [1, 63] to fit a non-negative int64, got {bits}")
        if dim < 1:
            raise ValueError(f"SimHash dim must be positive, got {dim}")
        self.dim, self.bits, self.seed = dim, bits, seed
        self.hyperplanes = np.random.default_rng(seed).standard_normal((bits, dim)).astype(np.float32)
        self.center = np.zeros(dim, dtype=np.float32)
        self.fit_items = 0
        self.provenance: dict[str, Any] = {}  # encoder name and fit time, stored in meta.json

    @property
    def levels(self) -> int:
        return 1

    @property
    def input_dim(self) -> int:
        return self.dim

    def fit(self, X: np.ndarray) -> "SimHash":
        Xn, valid = _normalise(_as_matrix(X, self.dim))
        if not valid.any():
            raise ValueError("SimHash.fit needs at least one non-zero vector")
        self.center = Xn[valid].mean(axis=0).astype(np.float32)
        self.fit_items = int(valid.sum())
        return self

    def signs(self, X: np.ndarray) -> np.ndarray:
        """The hash bits as bool [n, bits] (bit i: the row lies on the positive side of hyperplane i)."""
        Xn, _ = _normalise(_as_matrix(X, self.dim))
        return ((Xn - self.center) @ self.hyperplanes.T) > 0

    def encode(self, X: np.ndarray) -> np.ndarray:
        """int64 [n]: bit i of the code is ``1[r_i . (x/|x| - centre) > 0]``; -1 for rows without a vector."""
        _, valid = _normalise(_as_matrix(X, self.dim))
        weights = np.left_shift(np.int64(1), np.arange(self.bits, dtype=np.int64))
        codes = self.signs(X).astype(np.int64) @ weights
        codes[~valid] = NO_CODE
        return codes

    def params(self) -> dict[str, Any]:
        return {"method": self.method, "dim": self.dim, "bits": self.bits, "seed": self.seed}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"hyperplanes": self.hyperplanes, "center": self.center}

    @property
    def version(self) -> str:
        arrays = self._arrays()
        parts = [json.dumps(self.params(), sort_keys=True).encode()]
        parts += [name.encode() + _array_bytes(arrays[name]) for name in sorted(arrays)]
        return _digest(parts)

    def save(self, path: str | Path) -> Path:
        return _save(self, Path(path), self._arrays(), {})

    @classmethod
    def load(cls, path: str | Path) -> "SimHash":
        meta, arrays = _load(Path(path), cls.method)
        p = meta["params"]
        sh = cls(dim=p["dim"], bits=p["bits"], seed=p["seed"])
        sh.hyperplanes, sh.center = arrays["hyperplanes"], arrays["center"]
        sh.fit_items = int(meta.get("fit_items", 0))
        _check_version(sh, meta, Path(path))
        return sh


Quantizer = Union[ResidualKMeans, SimHash]


def _save(q: Quantizer, path: Path, arrays: dict[str, np.ndarray], extra: dict[str, Any]) -> Path:
    from components.storage import replace_partition, write_json_atomic

    meta = {"version": q.version, "params": q.params(), "input_dim": q.input_dim, "fit_items": q.fit_items,
            **extra, **q.provenance}

    def write(tmp: Path) -> None:
        # np.savez stores the arrays' exact bytes and dtypes, so load() gives back identical arrays.
        with open(tmp / CODEBOOK_FILE, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
        write_json_atomic(tmp / META_FILE, meta)

    replace_partition(path, write)
    return path


def _load(path: Path, method: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not (path / META_FILE).is_file() or not (path / CODEBOOK_FILE).is_file():
        raise FileNotFoundError(f"no semantic-ID codebook at {path} (expected {META_FILE} and {CODEBOOK_FILE})")
    meta = json.loads((path / META_FILE).read_text())
    if meta.get("params", {}).get("method") != method:
        raise ValueError(f"codebook at {path} is a {meta.get('params', {}).get('method')!r} codebook, not {method!r}")
    with np.load(path / CODEBOOK_FILE, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    return meta, arrays


def _check_version(q: Quantizer, meta: dict[str, Any], path: Path) -> None:
    if q.version != meta["version"]:
        raise ValueError(
            f"codebook at {path} is corrupt: its arrays hash to {q.version}, meta.json says {meta['version']}"
        )
    q.provenance = {k: meta[k] for k in ("encoder", "fitted_at") if k in meta}


def load_quantizer(path: str | Path) -> Quantizer:
    """Load whichever quantiser the folder holds (``meta.json`` names the method)."""
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"no semantic-ID codebook at {path} (missing {META_FILE})")
    method = json.loads(meta_path.read_text()).get("params", {}).get("method")
    if method == ResidualKMeans.method:
        return ResidualKMeans.load(path)
    if method == SimHash.method:
        return SimHash.load(path)
    raise ValueError(f"codebook at {path} has unknown method {method!r}")


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

    X_fit = _as_matrix(X_fit)
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


def _codebook_sizes(q: Quantizer) -> list[int]:
    return q.level_sizes if isinstance(q, ResidualKMeans) else [1 << q.bits]


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
    X = _as_matrix(X, q.input_dim)
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
    sizes = _codebook_sizes(q)
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

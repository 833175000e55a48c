"""The two semantic-ID quantisers and their stored codebooks (METHODS.md, "Visual semantic IDs").

- :class:`ResidualKMeans` (``"rqkmeans"``): rows L2-normalised, centred and PCA-reduced to ``pca_dim``;
  level 1 runs k-means with ``codes`` centroids on that vector, level l on the residual the levels
  before it left. A code is ``levels`` int32 ids; its prefixes are coarser clusters.
- :class:`SimHash` (``"simhash"``): ``bits`` random hyperplanes, ``bit_i = 1[r_i . x > 0]``, read as
  one int64 (cosine LSH: the chance two vectors share a bit is ``1 - angle / pi``).

Both are versioned by a content hash of what they learned (``version``) and saved to a folder as
``codebook.npz`` + ``meta.json`` (:meth:`save`, :func:`load_quantizer`). Rows without a vector (zero or
non-finite) get :data:`NO_CODE` at every level. Which codebook is in use, and the codes of every ad,
are components/representations/semantic_ids.py's business.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Union

import numpy as np

from components.representations.kmeans import as_matrix, kmeans, nearest_centroid, normalise_rows, principal_axes

log = logging.getLogger(__name__)

NO_CODE = -1  # the code of an ad without a visual vector, at every level
CODEBOOK_FILE = "codebook.npz"
META_FILE = "meta.json"


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


def _content_version(params: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    """16 hex digits of sha256 over the parameters and every array (by name): the codebook's version."""
    parts = [json.dumps(params, sort_keys=True).encode()]
    parts += [name.encode() + _array_bytes(arrays[name]) for name in sorted(arrays)]
    return _digest(parts)


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
        Xn, valid = normalise_rows(as_matrix(X))
        Xn = Xn[valid]
        n, d = Xn.shape
        if n < 2:
            raise ValueError(f"ResidualKMeans.fit needs at least 2 non-zero vectors, got {n}")
        mean = Xn.mean(axis=0, dtype=np.float64)
        centred = Xn.astype(np.float64) - mean  # the scatter matrix is summed in float64
        p = min(self.pca_dim, d, n)
        comp = principal_axes(centred, p)
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
        Xn, valid = normalise_rows(as_matrix(X, self.input_dim))
        residual = self._project(Xn[valid])
        codes = np.full((Xn.shape[0], self.levels), NO_CODE, dtype=np.int32)
        energies = [np.einsum("ij,ij->i", residual, residual)]
        for level, C in enumerate(self.centroids):
            labels, dist = nearest_centroid(residual, C)
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
        return _content_version(self.params(), self._arrays())

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
        Xn, valid = normalise_rows(as_matrix(X, self.dim))
        if not valid.any():
            raise ValueError("SimHash.fit needs at least one non-zero vector")
        self.center = Xn[valid].mean(axis=0).astype(np.float32)
        self.fit_items = int(valid.sum())
        return self

    def signs(self, X: np.ndarray) -> np.ndarray:
        """The hash bits as bool [n, bits] (bit i: the row lies on the positive side of hyperplane i)."""
        Xn, _ = normalise_rows(as_matrix(X, self.dim))
        return ((Xn - self.center) @ self.hyperplanes.T) > 0

    def encode(self, X: np.ndarray) -> np.ndarray:
        """int64 [n]: bit i of the code is ``1[r_i . (x/|x| - centre) > 0]``; -1 for rows without a vector."""
        _, valid = normalise_rows(as_matrix(X, self.dim))
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
        return _content_version(self.params(), self._arrays())

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


def codebook_sizes(q: Quantizer) -> list[int]:
    """Codes available per level: the fitted ``level_sizes`` of residual k-means, ``2^bits`` for SimHash."""
    return q.level_sizes if isinstance(q, ResidualKMeans) else [1 << q.bits]

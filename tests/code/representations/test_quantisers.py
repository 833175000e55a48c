"""The semantic-ID quantisers (components/representations/quantisers.py) and k-means
(components/representations/kmeans.py): residual k-means, SimHash, codebooks saved and loaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.representations.kmeans import kmeans
from components.representations.quantisers import NO_CODE, ResidualKMeans, SimHash, load_quantizer


def clustered_vectors(n_clusters: int, per_cluster: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points around random directions (well separated after L2 normalisation when noise is small)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    X = centres[labels] + noise * rng.normal(size=(labels.size, dim))
    return X.astype(np.float32), labels


# ---- residual k-means --------------------------------------------------------------------------------
def test_well_separated_clusters_get_distinct_level1_codes() -> None:
    X, truth = clustered_vectors(8, 50, 32, noise=0.02, seed=0)
    rq = ResidualKMeans(levels=2, codes=8, pca_dim=16, seed=0).fit(X)
    codes = rq.encode(X)
    assert codes.shape == (400, 2) and codes.dtype == np.int32
    # Each true cluster maps to exactly one level-1 code, and no two clusters share one.
    per_cluster = [np.unique(codes[truth == c, 0]) for c in range(8)]
    assert all(u.size == 1 for u in per_cluster)
    assert len({int(u[0]) for u in per_cluster}) == 8


def test_residual_levels_reduce_reconstruction_error_level_by_level() -> None:
    X = np.random.default_rng(1).normal(size=(2000, 24)).astype(np.float32)
    rq = ResidualKMeans(levels=3, codes=16, pca_dim=12, seed=3).fit(X)
    err = rq.quantization_error(X)
    assert err.shape == (4,)
    assert np.all(np.diff(err) < 0), err
    assert err[3] < 0.6 * err[0]
    # decode() agrees with encode(): the error after all levels is |projection - decoded code|^2.
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    projected = (Xn - rq.mean) @ rq.components.T
    recon = rq.decode(rq.encode(X))
    assert np.mean(np.sum((projected - recon) ** 2, axis=1)) == pytest.approx(err[3], rel=1e-4)
    assert rq.components.shape == (12, 24)
    # PCA axes are orthonormal.
    np.testing.assert_allclose(rq.components @ rq.components.T, np.eye(12), atol=1e-5)


def test_fit_is_deterministic_for_a_seed_and_the_version_tracks_the_codebook() -> None:
    X, _ = clustered_vectors(20, 30, 16, noise=0.3, seed=2)
    a = ResidualKMeans(levels=2, codes=10, pca_dim=8, seed=5).fit(X)
    b = ResidualKMeans(levels=2, codes=10, pca_dim=8, seed=5).fit(X)
    c = ResidualKMeans(levels=2, codes=10, pca_dim=8, seed=6).fit(X)
    for ca, cb in zip(a.centroids, b.centroids):
        np.testing.assert_array_equal(ca, cb)
    np.testing.assert_array_equal(a.encode(X), b.encode(X))
    assert a.version == b.version and len(a.version) == 16
    assert c.version != a.version
    b.centroids[1] = b.centroids[1].copy()
    b.centroids[1][0, 0] += 1e-3
    assert b.version != a.version


def test_save_load_round_trips_exactly(tmp_path: Path) -> None:
    X, _ = clustered_vectors(10, 40, 16, noise=0.3, seed=3)
    rq = ResidualKMeans(levels=3, codes=12, pca_dim=8, seed=1).fit(X)
    rq.save(tmp_path / "cb")
    back = ResidualKMeans.load(tmp_path / "cb")
    assert back.version == rq.version
    assert (back.levels, back.codes, back.pca_dim, back.seed) == (3, 12, 8, 1)
    np.testing.assert_array_equal(back.mean, rq.mean)
    np.testing.assert_array_equal(back.components, rq.components)
    for a, b in zip(back.centroids, rq.centroids):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.encode(X), rq.encode(X))
    assert isinstance(load_quantizer(tmp_path / "cb"), ResidualKMeans)
    # A codebook whose arrays no longer match its recorded version is refused.
    meta = json.loads((tmp_path / "cb" / "meta.json").read_text())
    meta["version"] = "0" * 16
    (tmp_path / "cb" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="corrupt"):
        ResidualKMeans.load(tmp_path / "cb")
    with pytest.raises(FileNotFoundError, match="no semantic-ID codebook"):
        ResidualKMeans.load(tmp_path / "missing")


def test_new_items_are_coded_by_the_fitted_codebook_without_refit() -> None:
    X, _ = clustered_vectors(6, 60, 16, noise=0.2, seed=4)
    rq = ResidualKMeans(levels=2, codes=6, pca_dim=8, seed=0).fit(X)
    version, centroids = rq.version, [c.copy() for c in rq.centroids]
    new = np.random.default_rng(9).normal(size=(50, 16)).astype(np.float32)
    codes = rq.encode(new)
    assert rq.version == version
    for a, b in zip(rq.centroids, centroids):
        np.testing.assert_array_equal(a, b)
    # Level 1 is the nearest level-1 centroid of the projected vector (brute force).
    Xn = new / np.linalg.norm(new, axis=1, keepdims=True)
    z = (Xn - rq.mean) @ rq.components.T
    d = ((z[:, None, :] - rq.centroids[0][None]) ** 2).sum(-1)
    np.testing.assert_array_equal(codes[:, 0], d.argmin(1))


def test_rows_without_a_vector_get_minus_one_at_every_level() -> None:
    X, _ = clustered_vectors(4, 30, 8, noise=0.2, seed=5)
    X[[3, 17]] = 0.0
    rq = ResidualKMeans(levels=3, codes=4, pca_dim=4, seed=0).fit(X)  # zero rows are left out of the fit
    assert rq.fit_items == 118
    codes = rq.encode(X)
    np.testing.assert_array_equal(codes[[3, 17]], np.full((2, 3), NO_CODE))
    assert (np.delete(codes, [3, 17], axis=0) >= 0).all()
    with pytest.raises(ValueError, match="dimensions"):
        rq.encode(np.ones((2, 9), dtype=np.float32))


def test_fewer_fit_vectors_than_codes_caps_the_codebook() -> None:
    X, _ = clustered_vectors(3, 4, 8, noise=0.1, seed=6)
    rq = ResidualKMeans(levels=2, codes=256, pca_dim=64, seed=0).fit(X)
    assert rq.level_sizes == [12, 12]
    assert rq.components.shape == (8, 8)  # PCA capped at the input dimension
    assert len(np.unique(rq.encode(X)[:, 0])) == 12  # every fit vector is its own centroid


def test_kmeans_handles_duplicate_points() -> None:
    X = np.repeat(np.eye(5, dtype=np.float32), 20, axis=0)  # 5 distinct points, 8 clusters asked
    C, labels, _ = kmeans(X, 8, seed=0)
    assert C.shape == (8, 5) and np.isfinite(C).all()
    np.testing.assert_allclose(C[labels], X)  # every point sits on its centroid
    with pytest.raises(ValueError, match="k <= points"):
        kmeans(X[:3], 4, seed=0)


# ---- SimHash -----------------------------------------------------------------------------------------
def test_simhash_nearby_vectors_share_more_bits_than_random_ones() -> None:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(500, 64)).astype(np.float32)
    near = X + 0.1 * rng.normal(size=X.shape).astype(np.float32)
    other = rng.normal(size=X.shape).astype(np.float32)
    sh = SimHash(64, bits=48, seed=1)
    agree_near = (sh.signs(X) == sh.signs(near)).mean()
    agree_random = (sh.signs(X) == sh.signs(other)).mean()
    assert agree_near > 0.9
    assert abs(agree_random - 0.5) < 0.03  # 1 - angle/pi with angle ~ pi/2 for random vectors
    # The code is the bits read as an integer (bit i = hyperplane i).
    codes = sh.encode(X)
    assert codes.dtype == np.int64 and (codes >= 0).all() and (codes < 2**48).all()
    bits = ((codes[:, None] >> np.arange(48)) & 1).astype(bool)
    np.testing.assert_array_equal(bits, sh.signs(X))


def test_simhash_fit_centres_zero_rows_and_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    X = np.abs(rng.normal(size=(300, 32))).astype(np.float32)  # one orthant, like ReLU image features
    X[0] = 0.0
    plain, centred = SimHash(32, bits=32, seed=2), SimHash(32, bits=32, seed=2).fit(X)
    # Through the origin most hyperplanes put nearly all positive vectors on one side (a bit that is
    # almost constant carries no information); through the centre each bit splits them about evenly.
    imbalance_plain = np.abs(plain.signs(X[1:]).mean(axis=0) - 0.5).mean()
    imbalance_centred = np.abs(centred.signs(X[1:]).mean(axis=0) - 0.5).mean()
    assert imbalance_plain > 0.2 and imbalance_centred < 0.05
    assert centred.encode(X)[0] == NO_CODE
    centred.save(tmp_path / "sh")
    back = load_quantizer(tmp_path / "sh")
    assert isinstance(back, SimHash) and back.version == centred.version
    np.testing.assert_array_equal(back.encode(X), centred.encode(X))
    with pytest.raises(ValueError, match="bits"):
        SimHash(32, bits=64)


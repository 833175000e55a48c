"""SEE similarities (components/representations/similarity.py): the vectorised gathers, masked means and cosines against
a brute-force per-row computation, and the sequence handling of a point-in-time training set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest

from components.representations.similarity import (
    SEQUENCE_IDS,
    SEQUENCE_LENGTH,
    gather_rows,
    interest_similarity,
    mean_vectors,
    rowwise_cosine,
    sequence_matrix,
    unique_sequences,
)


@dataclass
class Store:
    """The three arrays of an AdVectors store."""

    ad_ids: np.ndarray
    vectors: np.ndarray
    has_input: np.ndarray


def _store(rng: np.random.Generator, n: int = 50, d: int = 8) -> Store:
    ids = np.sort(rng.choice(np.arange(1000, 5000), size=n, replace=False)).astype(np.int64)
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    has_input = rng.random(n) > 0.2
    vectors[~has_input] = 0.0  # the store's fallback for ads without input
    return Store(ids, vectors, has_input)


def _brute_force(seq_lists: list[list[int] | None], lengths: list[int], ad_ids: np.ndarray, store: Store,
                 last_n: int) -> np.ndarray:
    """Per-row Python reference for the text/visual SEE similarity."""
    index = {int(a): i for i, a in enumerate(store.ad_ids)}
    out = np.full(len(ad_ids), np.nan)
    for r, (seq, length, ad) in enumerate(zip(seq_lists, lengths, ad_ids)):
        if seq is None or int(ad) not in index or not store.has_input[index[int(ad)]]:
            continue
        used = [index[a] for a in seq[:min(last_n, length)] if a in index and store.has_input[index[a]]]
        if not used:
            continue
        u = store.vectors[used].mean(axis=0)
        v = store.vectors[index[int(ad)]]
        out[r] = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
    return out


def _table(seq_lists: list[list[int] | None], lengths: list[int], ad_ids: np.ndarray) -> pa.Table:
    return pa.table({
        "ad_id": pa.array(ad_ids, pa.int64()),
        SEQUENCE_IDS: pa.array(seq_lists, pa.list_(pa.int64())),
        SEQUENCE_LENGTH: pa.array([None if s is None else n for s, n in zip(seq_lists, lengths)], pa.int32()),
    })


@pytest.mark.parametrize("last_n", [1, 3, 20])
def test_interest_similarity_matches_a_per_row_reference(last_n: int) -> None:
    rng = np.random.default_rng(last_n)
    store = _store(rng)
    L, rows = 6, 400
    known = store.ad_ids.tolist()
    seq_lists: list[list[int] | None] = []
    lengths: list[int] = []
    for r in range(rows):
        if r % 7 == 0:
            seq_lists.append(None)  # no sequence joined (user never clicked)
            lengths.append(0)
            continue
        n = int(rng.integers(1, L + 1))
        # Mostly known ads, some unknown ids; padded with -1 to L as the feature view writes them.
        real = [int(rng.choice(known)) if rng.random() > 0.1 else 999_999 for _ in range(n)]
        seq_lists.append(real + [-1] * (L - n))
        lengths.append(n)
    # Repeated sequences are the common case (one served row per user and day): duplicate some rows.
    seq_lists += seq_lists[:100]
    lengths += lengths[:100]
    ad_ids = np.array([int(rng.choice(known)) if rng.random() > 0.05 else 42 for _ in seq_lists], np.int64)

    table = _table(seq_lists, lengths, ad_ids)
    sims, stats = interest_similarity(sequence_matrix(table, last_n), ad_ids, store)
    expected = _brute_force(seq_lists, lengths, ad_ids, store, last_n)

    assert sims.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(sims), np.isnan(expected))
    np.testing.assert_allclose(sims[~np.isnan(sims)], expected[~np.isnan(expected)], atol=1e-5)
    assert np.isfinite(sims).sum() > 200  # the reference is not trivially all-null
    assert stats["distinct_sequences"] < len(seq_lists)  # duplicates were collapsed


def test_sequence_matrix_respects_length_nulls_and_last_n() -> None:
    table = _table([[5, 6, 7, -1], None, [9, -1, -1, -1]], [3, 0, 1], np.array([1, 2, 3]))
    m = sequence_matrix(table, last_n=2)
    np.testing.assert_array_equal(m, [[5, 6], [-1, -1], [9, -1]])
    # A length shorter than the real entries (defensive): entries past it are padding.
    short = table.set_column(2, SEQUENCE_LENGTH, pa.array([1, None, 1], pa.int32()))
    np.testing.assert_array_equal(sequence_matrix(short, last_n=5), [[5, -1, -1, -1], [-1] * 4, [9, -1, -1, -1]])


def test_sequence_matrix_handles_ragged_lists() -> None:
    table = pa.table({SEQUENCE_IDS: pa.array([[5, 6], [7], None, []], pa.list_(pa.int64()))})
    np.testing.assert_array_equal(sequence_matrix(table, last_n=3), [[5, 6], [7, -1], [-1, -1], [-1, -1]])


def test_sequence_matrix_needs_the_joined_sequence() -> None:
    with pytest.raises(ValueError, match=SEQUENCE_IDS):
        sequence_matrix(pa.table({"ad_id": [1]}), last_n=3)


def test_unique_sequences_inverse_rebuilds_the_rows() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(-1, 30, size=(40, 5))
    seq = base[rng.integers(0, 40, size=1000)]
    uniq, inverse = unique_sequences(seq)
    assert uniq.shape[0] == np.unique(seq, axis=0).shape[0]
    np.testing.assert_array_equal(uniq[inverse], seq)


def test_mean_vectors_skip_ads_without_input_and_undefined_rows() -> None:
    store = Store(np.array([1, 2, 3], np.int64),
                  np.array([[1, 0], [0, 1], [0, 0]], np.float32), np.array([True, True, False]))
    means, defined = mean_vectors(np.array([[1, 2], [3, -1], [2, 3], [-1, -1]], np.int64), store)
    np.testing.assert_allclose(means, [[0.5, 0.5], [0, 0], [0, 1], [0, 0]])
    np.testing.assert_array_equal(defined, [True, False, True, False])


def test_gather_rows_and_cosine_fallbacks() -> None:
    store = Store(np.array([10, 20], np.int64), np.array([[3, 4], [0, 0]], np.float32), np.array([True, False]))
    pos, ok = gather_rows(store, np.array([20, 10, 15, 99]))
    np.testing.assert_array_equal(ok, [False, True, False, False])
    assert pos[1] == 0
    left = np.array([[1, 0], [0, 0]], np.float32)
    right = np.array([[1, 1], [-1, 0]], np.float32)
    sims = rowwise_cosine(left, np.array([0, 0, 1]), right, np.array([0, 1, 0]), np.array([True, True, True]))
    np.testing.assert_allclose(sims[:2], [np.sqrt(0.5), -1.0], rtol=1e-6)
    assert np.isnan(sims[2])  # zero vector: undefined, not 0

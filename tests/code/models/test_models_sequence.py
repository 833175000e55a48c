"""TIM, DIN and mean pooling: the formulas on hand examples, masking, and wiring into the tables."""

from __future__ import annotations

import math

import pytest
import torch

from models.embeddings import MultiEmbedding
from models.sequence import DINAttention, MeanPooling, TemporalInterest
from models.spec import CategoricalField, FeatureSpec, SequenceField


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_tim_matches_its_formula_on_a_hand_example() -> None:
    items = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [7.0, 7.0]]])  # e_i; the third is padding
    temporal = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [3.0, 3.0]]])  # p(f_i)
    target = torch.tensor([[1.0, 1.0]])  # v_t
    target_temporal = torch.tensor([[0.0, 1.0]])  # p(0)
    mask = torch.tensor([[True, True, False]])
    u = TemporalInterest()(items, target, mask, temporal, target_temporal)
    # ẽ = [1, 0], [1, 2]; ṽ = [1, 2]; scores <ẽ_i, ṽ>/√2 = 1/√2, 5/√2
    a2 = 1.0 / (1.0 + math.exp(-(5.0 - 1.0) / math.sqrt(2.0)))
    a1 = 1.0 - a2
    expected = torch.tensor([[(a1 * 1 + a2 * 1) * 1.0, (a1 * 0 + a2 * 2) * 2.0]])
    assert torch.allclose(u, expected, atol=1e-6)


def test_din_and_mean_on_hand_examples() -> None:
    items = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    target = torch.tensor([[1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    a1 = 1.0 / (1.0 + math.exp(-(2.0 - 0.0) / math.sqrt(2.0)))
    din = DINAttention()(items, target, mask)
    assert torch.allclose(din, torch.tensor([[2.0 * a1, 1.0 - a1]]), atol=1e-6)
    assert torch.allclose(MeanPooling()(items, target, mask), torch.tensor([[1.0, 0.5]]))


def test_padding_is_ignored_and_empty_sequences_give_zero() -> None:
    g = torch.Generator().manual_seed(1)
    items, target = torch.randn(4, 5, 8, generator=g), torch.randn(4, 8, generator=g)
    temporal = torch.randn(4, 5, 8, generator=g)
    mask = torch.tensor([[True] * 3 + [False] * 2] * 3 + [[False] * 5])
    for encoder in (TemporalInterest(), DINAttention(), MeanPooling()):
        out = encoder(items, target, mask, temporal, target)
        changed = items.clone()
        changed[:, 3:] = 100.0  # only padded positions change
        again = encoder(changed, target, mask, temporal, target)
        assert torch.allclose(out, again)
        assert torch.equal(out[3], torch.zeros(8))  # no real behaviour
        assert torch.isfinite(out).all()


def test_tables_feed_tim_with_positions_and_gaps() -> None:
    spec = FeatureSpec(
        categorical=(CategoricalField("ad_id", 10, "ad"), CategoricalField("category", 4, "ad")),
        sequence=SequenceField("ad_id", "category", length=3, n_gap_buckets=5),
    )
    emb = MultiEmbedding(spec, [("t", 4)], sequence_encoder="tim", tim_temporal="both")
    batch = {
        "cat": torch.tensor([[2, 1]]),
        "seq_items": torch.tensor([[3, 5, 0]]),
        "seq_cats": torch.tensor([[1, 2, 0]]),
        "seq_gaps": torch.tensor([[1, 4, 0]]),
    }
    x = emb(batch)[0][0]  # [B, F, w]: ad_id, category, sequence
    assert x.shape == (1, 3, 4)
    w, temporal = emb.table("t"), emb.temporal[0][0].detach()  # temporal rows: positions 0..3, then gaps 0..4
    e = torch.stack([w[3] + w[10 + 1], w[5] + w[10 + 2]])
    p = torch.stack([temporal[1] + temporal[4 + 1], temporal[2] + temporal[4 + 4]])  # newest has position 1
    v = w[2] + w[10 + 1]
    p0 = temporal[0] + temporal[4 + 0]
    e_t, v_t = e + p, v + p0
    alpha = torch.softmax(e_t @ v_t / 2.0, dim=0)
    expected = (alpha.unsqueeze(1) * (e_t * v_t)).sum(0)
    assert torch.allclose(x[0, 2], expected, atol=1e-6)
    # With "position" only, the gap rows are not part of the table.
    only_position = MultiEmbedding(spec, [("t", 4)], sequence_encoder="tim", tim_temporal="position")
    assert only_position.temporal[0].shape == (1, 4, 4)
    assert MultiEmbedding(spec, [("t", 4)], sequence_encoder=None).num_fields == 2

"""Losses: RankNet equals a brute-force double loop, BCE fallback, multi-task sum, de-correlation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from models.losses import combined_pair_loss, expert_decorrelation, multitask_loss, pairwise_ranking_loss


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@settings(max_examples=40, deadline=None)
@given(
    scores=st.lists(st.floats(-8, 8, allow_nan=False), min_size=2, max_size=30),
    data=st.data(),
)
def test_pairwise_loss_equals_double_loop(scores: list[float], data: st.DataObject) -> None:
    labels = data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=len(scores), max_size=len(scores)))
    pos = [s for s, y in zip(scores, labels) if y == 1.0]
    neg = [s for s, y in zip(scores, labels) if y == 0.0]
    got = pairwise_ranking_loss(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels))
    if not pos or not neg:
        assert float(got) == 0.0
        return
    brute = 0.0
    for zi in pos:
        for zj in neg:
            brute += -math.log(1.0 / (1.0 + math.exp(-(zi - zj))))
    assert float(got) == pytest.approx(brute / (len(pos) * len(neg)), rel=1e-5, abs=1e-6)


def test_combined_loss_mixes_bce_and_pairs_and_falls_back_to_bce() -> None:
    z = torch.tensor([2.0, -1.0, 0.5, 0.0])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    w = torch.tensor([0.5, 1.0, 1.0, 1.0])
    bce_w = F.binary_cross_entropy_with_logits(z, y, weight=w)
    expected = 0.7 * bce_w + 0.3 * pairwise_ranking_loss(z, y)
    assert float(combined_pair_loss(z, y, w, 0.7)) == pytest.approx(float(expected), rel=1e-6)
    # No positive in the batch: the pairwise term would be empty, so BCE alone.
    y0 = torch.zeros(4)
    assert float(combined_pair_loss(z, y0, None, 0.7)) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(z, y0)), rel=1e-6
    )
    y1 = torch.ones(4)
    assert float(combined_pair_loss(z, y1, w, 0.2)) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(z, y1, weight=w)), rel=1e-6
    )
    with pytest.raises(ValueError, match="alpha must be in"):
        combined_pair_loss(z, y, None, 1.5)


def test_pairwise_gradient_reaches_negatives() -> None:
    # The point of the pairwise term: a negative scored above a positive gets a margin-dependent push down.
    z = torch.tensor([0.0, 3.0, -3.0], requires_grad=True)
    pairwise_ranking_loss(z, torch.tensor([1.0, 0.0, 0.0])).backward()
    assert z.grad is not None
    assert z.grad[0] < 0 and z.grad[1] > z.grad[2] > 0


def test_multitask_loss_weights_tasks() -> None:
    logits = {"click": torch.tensor([1.0, -1.0, 0.3]), "conversion": torch.tensor([0.2, 0.1, -2.0])}
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    weights = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.4, 1.0]])
    total, per_task = multitask_loss(
        logits, labels, weights, ("click", "conversion"), {"click": 0.7, "conversion": 0.5}, {"conversion": 3.0}
    )
    click = combined_pair_loss(logits["click"], labels[:, 0], weights[:, 0], 0.7)
    conversion = combined_pair_loss(logits["conversion"], labels[:, 1], weights[:, 1], 0.5)
    assert float(per_task["click"]) == pytest.approx(float(click))
    assert float(total) == pytest.approx(float(click + 3.0 * conversion))
    with pytest.raises(KeyError, match="no alpha for tasks \\['conversion'\\]"):
        multitask_loss(logits, labels, None, ("click", "conversion"), {"click": 0.7})
    with pytest.raises(ValueError, match="labels must be"):
        multitask_loss(logits, labels[:, :1], None, ("click", "conversion"), {"click": 1.0, "conversion": 1.0})


def test_expert_decorrelation() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 4, generator=g)
    independent = expert_decorrelation([x, torch.randn(4096, 4, generator=g)])
    same = expert_decorrelation([x, x])
    # Identical experts: diagonal correlations are 1, the off-diagonal ones near 0 -> about 1/4.
    assert float(same) == pytest.approx(0.25, abs=0.03)
    assert float(independent) < 0.03
    assert float(expert_decorrelation([x])) == 0.0
    # It is differentiable, so it can be added to the loss.
    a = torch.randn(64, 3, requires_grad=True)
    expert_decorrelation([a, a * 2 + 1]).backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()

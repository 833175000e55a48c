"""Experts: GwPFM and DCNv2 match their formulas; bank members are independent; outputs end in ReLU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.experts import DCNv2Experts, GwPFMExperts, MLPExperts, build_expert_bank


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_gwpfm_interaction_equals_the_pair_sum() -> None:
    torch.manual_seed(0)
    groups = [0, 1, 1, 2, 0]
    n_fields, n_groups, d = 5, 3, 4
    ex = GwPFMExperts(2, groups, d, hidden=(6,))
    with torch.no_grad():
        ex.pair_weight.copy_(torch.rand(2, 3, 3) + 0.5)
    x = torch.randn(2, 7, n_fields, n_groups * d)
    got = ex.interaction(x)
    v = x.view(2, 7, n_fields, n_groups, d)
    for e in range(2):
        brute = torch.zeros(7, d)
        for i in range(n_fields):
            for j in range(i + 1, n_fields):
                gi, gj = groups[i], groups[j]
                r = ex.pair_weight[e, min(gi, gj), max(gi, gj)]
                brute += r * v[e, :, i, gj] * v[e, :, j, gi]
        assert torch.allclose(got[e], brute.detach(), atol=1e-5)


def test_dcnv2_cross_layers_follow_the_formula() -> None:
    torch.manual_seed(0)
    ex = DCNv2Experts(1, n_fields=3, width=2, hidden=(5,), cross_layers=2)
    x = torch.randn(1, 4, 3, 2)
    x0 = x.flatten(2)[0]
    xl = x0
    for layer in ex.cross:
        xl = x0 * (xl @ layer.weight[0] + layer.bias[0]) + xl
    mlp = ex.mlp.layers[0]
    expected = torch.relu(xl @ mlp.weight[0] + mlp.bias[0])
    assert torch.allclose(ex(x)[0], expected, atol=1e-5)
    assert ex.first_cross_weight().shape == (1, 6, 6)


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(["mlp", "dcnv2", "gwpfm"]), n=st.integers(1, 4), n_fields=st.integers(1, 5))
def test_bank_members_are_independent_and_end_in_relu(kind: str, n: int, n_fields: int) -> None:
    groups = [i % 2 for i in range(n_fields)]
    width = 6 if kind != "gwpfm" else 2 * 3  # GwPFM: 2 groups x 3
    bank = build_expert_bank(kind, n, n_fields, width, groups, hidden=(8, 5))
    x = torch.randn(n, 9, n_fields, width, requires_grad=True)
    out = bank(x)
    assert out.shape == (n, 9, 5)
    assert (out >= 0).all()  # the non-linearity after every expert
    # Expert 0's output depends only on its own input slice and its own weights.
    out[0].sum().backward()
    assert x.grad is not None
    if n > 1:
        assert torch.count_nonzero(x.grad[1:]) == 0
        for p in bank.parameters():
            if p.grad is not None and p.dim() >= 1 and p.shape[0] == n:
                assert torch.count_nonzero(p.grad[1:]) == 0


def test_build_expert_bank_errors() -> None:
    with pytest.raises(ValueError, match="unknown expert kind 'moe'"):
        build_expert_bank("moe", 1, 2, 4, [0, 0], (4,))
    with pytest.raises(ValueError, match="GwPFM table width 5 is not a multiple of its 2 field groups"):
        build_expert_bank("gwpfm", 1, 2, 5, [0, 1], (4,))
    assert isinstance(build_expert_bank("mlp", 2, 2, 4, [0, 0], (4,)), MLPExperts)

"""Multi-task layers: STEM's all-forward task-specific-backward gates, STEM-AL, gate supports."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import RankerConfig
from models.multitask import GatedMixture, build_plan
from models.ranker import Ranker
from models.spec import CategoricalField, FeatureSpec, NumericField, SequenceField
from models.synthetic import random_batch


pytestmark = pytest.mark.usefixtures("torch_one_thread")

# Wide-ish init so the tiny ReLU layers are not dead on a 16-row batch (a dead tower would zero every gradient).
SMALL = {
    "embedding_dim": 4,
    "expert_hidden": (8, 6),
    "gate_hidden": (5,),
    "tower_hidden": (8,),
    "embedding_init_std": 0.5,
}


def _spec(tasks: tuple[str, ...]) -> FeatureSpec:
    return FeatureSpec(
        categorical=(
            CategoricalField("user_id", 12, "user"),
            CategoricalField("ad_id", 9, "ad"),
            CategoricalField("category", 4, "ad"),
        ),
        numeric=(NumericField("ctr", 7, "ad"),),
        sequence=SequenceField("ad_id", "category", length=3, n_gap_buckets=4),
        tasks=tasks,
    )


def _grads_by_table(model: Ranker) -> torch.Tensor:
    """|grad| summed per table (all STEM tables share one width, hence one stacked matrix)."""
    weight = model.embedding.weights[0]
    n_tables = len(model.embedding.groups[0].tables)
    grad = weight.grad if weight.grad is not None else torch.zeros_like(weight)
    per_table = grad.view(n_tables, model.embedding.rows, -1).abs().sum(dim=(1, 2))
    temporal = model.embedding.temporal[0].grad
    return per_table + (temporal.abs().sum(dim=(1, 2)) if temporal is not None else 0)


@settings(max_examples=10, deadline=None)
@given(
    n_tasks=st.integers(2, 4),
    per_task=st.integers(1, 2),
    shared=st.integers(0, 2),
    expert=st.sampled_from(["mlp", "dcnv2", "gwpfm"]),
)
def test_stem_task_loss_never_reaches_other_tasks_tables_or_experts(
    n_tasks: int, per_task: int, shared: int, expert: str
) -> None:
    tasks = tuple(f"task{i}" for i in range(n_tasks))
    torch.manual_seed(0)
    config = RankerConfig(arch="stem", experts_per_task=per_task, num_shared_experts=shared, expert=expert, **SMALL)
    model = Ranker(_spec(tasks), config)
    batch = random_batch(model.spec, 16, seed=1)
    for t, task in enumerate(tasks):
        model.zero_grad(set_to_none=True)
        model(batch)[task].sum().backward()
        per_table = _grads_by_table(model)
        for u in range(n_tasks):
            assert (per_table[u] > 0) == (u == t), f"task {task}: table of task {u} grad {per_table[u]}"
        if shared:
            assert per_table[n_tasks] > 0  # the shared table learns from every task
        owners = [slot.table for slot in model.plan.experts]
        for p in model.expert_banks[0].parameters():
            if p.grad is None:
                continue
            for e, owner in enumerate(owners):
                if owner < n_tasks and owner != t:
                    assert torch.count_nonzero(p.grad[e]) == 0
        for module in (model.mixer.mixture.gates, model.towers):
            for p in module.parameters():
                others = [u for u in range(n_tasks) if u != t]
                assert p.grad is None or torch.count_nonzero(p.grad[others]) == 0

    # ... while the forward does use the other tasks' experts: change task 1's table, task 0's logit moves.
    with torch.no_grad():
        before = model(batch)[tasks[0]].clone()
        n_tables = len(model.plan.tables)
        model.embedding.weights[0].view(n_tables, model.embedding.rows, -1)[1].add_(0.5)
        after = model(batch)[tasks[0]]
    assert not torch.allclose(before, after)


def test_stem_al_main_task_does_not_update_auxiliary_tables() -> None:
    tasks = ("conversion", "click", "like")
    torch.manual_seed(0)
    model = Ranker(_spec(tasks), RankerConfig(arch="stem_al", main_task="conversion", **SMALL))
    batch = random_batch(model.spec, 16, seed=2)
    model(batch)["conversion"].sum().backward()
    per_table = _grads_by_table(model)
    assert per_table[0] > 0 and per_table[1] == 0 and per_table[2] == 0
    model.zero_grad(set_to_none=True)
    out, aux = model.forward_with_aux(batch)
    out["click"].sum().backward()
    per_table = _grads_by_table(model)
    assert per_table[1] > 0 and per_table[0] == 0 and per_table[2] == 0
    # An auxiliary tower sees only its own expert; the main gate sees every expert.
    assert torch.equal(aux["gates"]["click"][0], torch.tensor([0.0, 1.0, 0.0]))
    assert (aux["gates"]["conversion"] > 0).all()
    with torch.no_grad():  # knowledge flows forward from the auxiliaries to the main task
        before = model(batch)["conversion"].clone()
        model.embedding.weights[0].view(3, model.embedding.rows, -1)[2].add_(0.5)
        assert not torch.allclose(before, model(batch)["conversion"])


def test_gates_sum_to_one_over_allowed_experts() -> None:
    torch.manual_seed(0)
    spec = _spec(("click", "conversion"))
    batch = random_batch(spec, 8)
    mmoe = Ranker(spec, RankerConfig(arch="mmoe", num_shared_experts=3, **SMALL))
    _, aux = mmoe.forward_with_aux(batch)
    for gates in aux["gates"].values():
        assert gates.shape == (8, 3) and torch.allclose(gates.sum(-1), torch.ones(8))
    ple = Ranker(spec, RankerConfig(arch="ple", experts_per_task=1, num_shared_experts=2, ple_levels=2, **SMALL))
    _, aux = ple.forward_with_aux(batch)
    # experts: click/0, conversion/0, shared/0, shared/1 -> click's gate never weighs conversion's expert
    assert torch.count_nonzero(aux["gates"]["click"][:, 1]) == 0
    assert torch.count_nonzero(aux["gates"]["conversion"][:, 0]) == 0
    assert "level1/0" in aux["expert_outputs"]


def test_gated_mixture_detached_experts_get_no_gradient() -> None:
    allowed = torch.tensor([[True, True, False]])
    detached = torch.tensor([[False, True, False]])
    mix = GatedMixture(allowed, detached, gate_in=4, gate_hidden=())
    experts = torch.randn(3, 5, 2, requires_grad=True)
    mixed, weights = mix(torch.randn(5, 4), experts)
    assert torch.equal(weights[0, :, 2], torch.zeros(5))
    mixed.sum().backward()
    assert experts.grad is not None
    assert torch.count_nonzero(experts.grad[0]) > 0
    assert torch.count_nonzero(experts.grad[1:]) == 0


def test_plans() -> None:
    plan = build_plan(("a", "b"), RankerConfig(arch="ame", ame_widths=(8, 16)), n_field_groups=3)
    assert plan.tables == (("ame0_w8", 8), ("ame1_w16", 16))
    plan = build_plan(("a", "b"), RankerConfig(arch="stem", expert="gwpfm", num_shared_experts=2), 3)
    assert plan.tables == (("task:a", 48), ("task:b", 48), ("shared", 48))
    assert [e.name for e in plan.experts] == ["task:a/0", "task:b/0", "shared/0", "shared/1"]
    plan = build_plan(("a",), RankerConfig(arch="multi_embedding", num_tables=3, expert=("dcnv2", "mlp")), 3)
    assert [e.kind for e in plan.experts] == ["dcnv2", "mlp", "dcnv2"]
    assert build_plan(("a",), RankerConfig(arch="dcnv2"), 3).experts[0].kind == "dcnv2"


def test_cascade_outputs_the_product_and_keeps_stem_isolation() -> None:
    """ESMM-style cascade: sigmoid(conversion logit) = p(click) * p(conv | click); with the parent detached,
    conversion's loss still reaches no click table, and without detaching it does."""
    from models.ranker import cascade_logit

    a, b = torch.randn(64) * 8, torch.randn(64) * 8
    assert torch.allclose(torch.sigmoid(cascade_logit(a, b)), torch.sigmoid(a) * torch.sigmoid(b), atol=1e-6)
    tasks = ("click", "conversion")
    torch.manual_seed(0)
    batch = None
    for detach in (True, False):
        config = RankerConfig(arch="stem", cascade={"conversion": "click"}, cascade_detach_parent=detach, **SMALL)
        model = Ranker(_spec(tasks), config)
        batch = random_batch(model.spec, 16, seed=1) if batch is None else batch
        out = model(batch)
        assert (out["conversion"] < out["click"]).all()  # p(conv) = p(click) * p(conv|click) < p(click)
        model.zero_grad(set_to_none=True)
        out["conversion"].sum().backward()
        per_table = _grads_by_table(model)
        assert per_table[1] > 0 and ((per_table[0] == 0) == detach), (detach, per_table)
    with pytest.raises(ValueError, match="cascade names tasks"):
        Ranker(_spec(tasks), RankerConfig(arch="stem", cascade={"buy": "click"}, **SMALL))

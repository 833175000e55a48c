"""The assembled Ranker: shapes for any architecture / tasks / tables, inspection helpers, and learning."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import ARCHS, RankerConfig
from models.losses import multitask_loss
from models.ranker import Ranker
from models.spec import CategoricalField, FeatureSpec, NumericField, SequenceField
from models.synthetic import random_batch


pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = {"embedding_dim": 4, "expert_hidden": (8, 6), "gate_hidden": (5,), "tower_hidden": (8,), "ame_widths": (4, 8)}


def _spec(tasks: tuple[str, ...], sequence: bool = True, numeric: bool = True) -> FeatureSpec:
    return FeatureSpec(
        categorical=(
            CategoricalField("user_id", 20, "user"),
            CategoricalField("ad_id", 15, "ad"),
            CategoricalField("category", 4, "ad"),
            CategoricalField("slot", 3, "context"),
        ),
        numeric=(NumericField("ctr", 9, "ad"),) if numeric else (),
        sequence=SequenceField("ad_id", "category", length=4, n_gap_buckets=5) if sequence else None,
        tasks=tasks,
    )


@settings(max_examples=25, deadline=None)
@given(
    arch=st.sampled_from(ARCHS),
    n_tasks=st.integers(1, 3),
    num_tables=st.integers(1, 3),
    shared=st.integers(1, 3),
    per_task=st.integers(1, 2),
    expert=st.sampled_from(["mlp", "dcnv2", "gwpfm", ("gwpfm", "mlp")]),
    sequence=st.sampled_from(["tim", "din", "mean", None]),
    has_numeric=st.booleans(),
)
def test_any_architecture_gives_per_task_logits(
    arch: str,
    n_tasks: int,
    num_tables: int,
    shared: int,
    per_task: int,
    expert: str | tuple[str, ...],
    sequence: str | None,
    has_numeric: bool,
) -> None:
    tasks = tuple(f"t{i}" for i in range(n_tasks))
    config = RankerConfig(
        arch=arch,
        num_tables=num_tables,
        num_shared_experts=shared,
        experts_per_task=per_task,
        expert=expert,
        sequence_encoder=sequence,
        **SMALL,
    )
    model = Ranker(_spec(tasks, numeric=has_numeric), config)
    batch = random_batch(model.spec, 7)
    model.check_batch(batch)
    logits, aux = model.forward_with_aux(batch)
    assert list(logits) == list(tasks)
    assert all(v.shape == (7,) and v.dtype == torch.float32 for v in logits.values())
    n_experts = len(model.plan.experts)
    for name, out in aux["expert_outputs"].items():
        assert out.shape == (7, 6), name
    for gates in aux["gates"].values():
        assert gates.shape[0] == 7 and gates.shape[1] in (n_experts, 1)
        assert torch.allclose(gates.sum(-1), torch.ones(7), atol=1e-5)
    expected_tables = {
        "stem": n_tasks + 1,
        "stem_al": n_tasks,
        "ame": 2,
        "multi_embedding": num_tables,
    }.get(arch, 1)
    assert len(model.embedding_tables()) == expected_tables
    sum(v.sum() for v in logits.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_tables_and_field_slices_for_the_collapse_analysis() -> None:
    model = Ranker(_spec(("click", "conversion")), RankerConfig(arch="stem", **SMALL))
    tables = model.embedding_tables()
    assert list(tables) == ["task:click", "task:conversion", "shared"]
    slices = model.field_slices()["shared"]
    assert slices["user_id"] == (0, 20) and slices["ad_id"] == (20, 35) and slices["category"] == (35, 39)
    assert slices["ctr@base2"][0] == 42  # after slot (39, 42)
    users, items = model.user_item_embeddings("task:click")
    assert users.shape == (20, 4) and items.shape == (15, 4)
    assert torch.equal(items, tables["task:click"][20:35])
    with pytest.raises(KeyError, match="no table 'nope'"):
        model.user_item_embeddings("nope")
    # Tables are the live weights: a step on the model shows in the next call.
    with torch.no_grad():
        model.embedding.weights[0].add_(1.0)
    assert torch.equal(model.embedding_tables()["task:click"], tables["task:click"])


def test_sparse_embeddings_train_with_a_row_wise_optimiser() -> None:
    # Seeded: with an unlucky initialisation of this tiny model every ReLU of the batch can be dead, no
    # embedding row gets a gradient and nothing moves (seen when other tests left the global RNG elsewhere).
    torch.manual_seed(0)
    spec = _spec(("click",), sequence=False, numeric=False)
    model = Ranker(spec, RankerConfig(arch="dcnv2", sparse_embeddings=True, **SMALL))
    batch = random_batch(spec, 32)
    before = model.embedding_tables()["shared"].clone()
    sparse_opt = torch.optim.SparseAdam(model.embedding_parameters(), lr=0.1)
    dense_opt = torch.optim.Adam(model.dense_parameters(), lr=0.01)
    loss, _ = multitask_loss(model(batch), batch["labels"], batch["weights"], ("click",), {"click": 0.5})
    loss.backward()
    assert model.embedding.weights[0].grad.is_sparse
    sparse_opt.step()
    dense_opt.step()
    after = model.embedding_tables()["shared"]
    touched = torch.zeros(after.shape[0], dtype=torch.bool)
    touched[(batch["cat"] + model.embedding.cat_offsets).flatten()] = True
    changed = (after != before).any(dim=1)
    assert torch.equal(changed, touched)  # only the rows the batch read moved


def test_bf16_autocast_gives_float32_logits() -> None:
    spec = _spec(("click", "conversion"))
    model = Ranker(spec, RankerConfig(arch="stem", **SMALL))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(random_batch(spec, 8))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in out.values())


def _separable_batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Click iff the user is even; conversion iff the ad id is small and the slot is 0 (learnable from ids)."""
    spec = _spec(("click", "conversion"))
    batch = random_batch(spec, n, seed=seed)
    click = (batch["cat"][:, 0] % 2 == 0).float()
    conversion = ((batch["cat"][:, 1] < 5) & (batch["cat"][:, 3] == 0)).float()
    batch["labels"] = torch.stack([click, conversion], dim=1)
    return batch


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_goes_down_on_a_separable_problem(arch: str) -> None:
    torch.manual_seed(0)
    spec = _spec(("click", "conversion"))
    model = Ranker(spec, RankerConfig(arch=arch, num_tables=2, num_shared_experts=2, **SMALL))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    batch = _separable_batch(256, seed=3)
    alphas = {"click": 0.7, "conversion": 0.7}
    losses = []
    for _ in range(40):
        optimiser.zero_grad()
        loss, _ = multitask_loss(model(batch), batch["labels"], batch["weights"], spec.tasks, alphas)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"{arch}: {losses[0]:.3f} -> {losses[-1]:.3f}"

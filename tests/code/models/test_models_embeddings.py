"""MNSE token layout and the fused multi-table lookup."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.embeddings import MNSECodec, MNSEEmbedding, MultiEmbedding, mnse_num_digits
from models.spec import CategoricalField, FeatureSpec, NumericField


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_mnse_digits_and_token_rows_index_by_position_and_digit() -> None:
    assert [mnse_num_digits(8, 2), mnse_num_digits(9, 2), mnse_num_digits(10, 10), mnse_num_digits(1, 3)] == [
        3,
        4,
        1,
        1,
    ]
    codec = MNSECodec((8,), bases=(2,))
    # 5 = 101b (least significant first: 1, 0, 1) -> rows 2k + digit = 1, 2, 5
    assert codec.token_rows(torch.tensor([[5]])).tolist() == [[[1, 2, 5]]]
    # 6 = 110b -> 0, 1, 1 -> rows 0, 3, 5
    assert codec.token_rows(torch.tensor([[6]])).tolist() == [[[0, 3, 5]]]
    # The same digit at different positions is a different token (1 = 001b, 2 = 010b).
    assert codec.token_rows(torch.tensor([[1]])).tolist() == [[[1, 2, 4]]]
    assert codec.token_rows(torch.tensor([[2]])).tolist() == [[[0, 3, 4]]]
    # Every (position, digit) pair of every value has its own row inside [0, b*K).
    rows = codec.token_rows(torch.arange(8).view(8, 1)).view(8, 3)
    for k in range(3):
        assert set(rows[:, k].tolist()) == {2 * k, 2 * k + 1}


def test_mnse_two_bases_blocks_do_not_overlap() -> None:
    codec = MNSECodec((100,), bases=(3, 10))  # K_3 = 5 (3^5 = 243), K_10 = 2
    assert codec.positions == 7 and codec.num_rows == 3 * 5 + 10 * 2
    rows = codec.token_rows(torch.tensor([[42]]))[0, 0].tolist()
    # 42 = 1120 in base 3 (LSB first 0, 2, 1, 1, 0); 42 in base 10 (2, 4); the base-10 block starts at 15.
    assert rows == [0, 3 * 1 + 2, 3 * 2 + 1, 3 * 3 + 1, 3 * 4 + 0, 15 + 2, 15 + 10 + 4]


@settings(max_examples=30, deadline=None)
@given(n_buckets=st.integers(20, 5000))
def test_adjacent_integers_share_most_tokens(n_buckets: int) -> None:
    codec = MNSECodec((n_buckets,), bases=(2, 3, 10))
    values = torch.arange(n_buckets).view(-1, 1)
    rows = codec.token_rows(values)[:, 0]  # [n, P]
    shared = (rows[1:] == rows[:-1]).float().mean(dim=1)  # share of tokens v and v+1 have in common
    assert float(shared.mean()) > 0.5  # most tokens are shared on average
    far = (rows[: n_buckets // 2] == rows[n_buckets - n_buckets // 2 :]).float().mean()
    assert float(shared.mean()) > float(far)  # and more than between far-apart values


def test_mnse_embedding_is_the_sum_of_position_digit_rows() -> None:
    torch.manual_seed(0)
    mnse = MNSEEmbedding((12, 3), dim=4, bases=(2, 10), combine="concat")
    out = mnse(torch.tensor([[11, 2]]))
    assert out.shape == (1, 4, 4)  # 2 fields x 2 bases
    table = mnse.table.weight
    # field 0: 11 = 1011b, LSB first 1, 1, 0, 1 (K_2 = 4) -> rows 1, 3, 4, 7;
    # base 10: K_10 = 2, digits 1, 1, block at 8 -> rows 8 + 1, 8 + 10 + 1
    assert torch.allclose(out[0, 0], table[[1, 3, 4, 7]].sum(0))
    assert torch.allclose(out[0, 1], table[[9, 19]].sum(0))
    # field 1 (3 buckets: K_2 = 2, K_10 = 1) starts after field 0's 8 + 20 rows; the padded positions
    # (up to field 0's K) are left out of its sum. 2 = 10b -> rows 0, 3 ; base 10 -> 4 + 2
    assert torch.allclose(out[0, 2], table[[28 + 0, 28 + 3]].sum(0))
    assert torch.allclose(out[0, 3], table[28 + 4 + 2])
    summed = MNSEEmbedding((12,), dim=4, bases=(2, 10), combine="sum")
    summed.table.weight.data.copy_(table[:28])
    assert torch.allclose(summed(torch.tensor([[11]]))[0, 0], out[0, 0] + out[0, 1])


def _spec() -> FeatureSpec:
    return FeatureSpec(
        categorical=(CategoricalField("user_id", 30, "user"), CategoricalField("ad_id", 20, "ad")),
        numeric=(NumericField("ctr", 10, "ad"),),
    )


def test_fused_lookup_equals_per_field_rows() -> None:
    spec = _spec()
    emb = MultiEmbedding(spec, [("a", 4), ("b", 8), ("c", 4)], mnse_bases=(2, 10), sequence_encoder=None)
    assert [(g.width, g.tables) for g in emb.groups] == [(4, (0, 2)), (8, (1,))]
    batch = {"cat": torch.tensor([[3, 7], [29, 0]]), "num": torch.tensor([[9], [0]])}
    grouped = emb(batch)
    assert grouped[0].shape == (2, 2, 4, 4) and grouped[1].shape == (1, 2, 4, 8)  # 2 cat + 1 num x 2 bases
    slices = emb.field_slices()
    assert slices["user_id"] == (0, 30) and slices["ad_id"] == (30, 50)
    assert slices["ctr@base2"] == (50, 58) and slices["ctr@base10"] == (58, 68) and emb.rows == 68
    for name, (g, j) in (("a", (0, 0)), ("b", (1, 0)), ("c", (0, 1))):
        w = emb.table(name)
        assert w.shape[0] == 68
        x = grouped[g][j]
        assert torch.equal(x[0, 0], w[3]) and torch.equal(x[1, 0], w[29])
        assert torch.equal(x[0, 1], w[30 + 7]) and torch.equal(x[1, 1], w[30])
        # 9 = 1001b -> rows 1, 2, 4, 7 of the base-2 block; base 10 -> row 9 of its block
        assert torch.allclose(x[0, 2], w[[50 + 1, 50 + 2, 50 + 4, 50 + 7]].sum(0))
        assert torch.allclose(x[0, 3], w[58 + 9])
    # Tables are independent parameters even when stacked in one matrix.
    assert not torch.equal(emb.table("a"), emb.table("c"))


def test_check_ids_names_the_bad_column() -> None:
    emb = MultiEmbedding(_spec(), [("a", 4)], sequence_encoder=None)
    emb.check_ids({"cat": torch.tensor([[29, 19]]), "num": torch.tensor([[9]])})
    with pytest.raises(ValueError, match="batch\\['cat'\\] column 1 has ids outside \\[0, 20\\)"):
        emb.check_ids({"cat": torch.tensor([[0, 20]]), "num": torch.tensor([[0]])})
    with pytest.raises(ValueError, match="batch\\['num'\\] column 0"):
        emb.check_ids({"cat": torch.tensor([[0, 0]]), "num": torch.tensor([[10]])})


@settings(max_examples=15, deadline=None)
@given(
    widths=st.lists(st.sampled_from([2, 4, 8]), min_size=1, max_size=5),
    n_cat=st.integers(1, 4),
    n_num=st.integers(0, 3),
    combine=st.sampled_from(["concat", "sum"]),
)
def test_multi_embedding_shapes(widths: list[int], n_cat: int, n_num: int, combine: str) -> None:
    spec = FeatureSpec(
        categorical=tuple(CategoricalField(f"c{i}", 5 + i) for i in range(n_cat)),
        numeric=tuple(NumericField(f"n{i}", 3 + 7 * i) for i in range(n_num)),
    )
    emb = MultiEmbedding(spec, [(f"t{i}", w) for i, w in enumerate(widths)], (2, 3, 10), combine, None)
    batch = {"cat": torch.zeros(6, n_cat, dtype=torch.long), "num": torch.ones(6, n_num, dtype=torch.long)}
    grouped = emb(batch)
    n_fields = n_cat + n_num * (3 if combine == "concat" else 1)
    assert emb.num_fields == n_fields
    assert sorted((g.shape[0], g.shape[-1]) for g in grouped) == sorted(
        (widths.count(w), w) for w in dict.fromkeys(widths)
    )
    for x in grouped:
        assert x.shape[1:3] == (6, n_fields)
    slices = sorted(emb.field_slices().values())
    assert slices[0][0] == 0 and slices[-1][1] == emb.rows
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))  # contiguous, no overlap


@pytest.mark.parametrize("combine", ["concat", "sum"])
@pytest.mark.parametrize("n", [6, 128])  # 6 x 3 (sample, field) pairs < 312 buckets: the bag; 128 x 3: the value table
def test_pooled_lookup_equals_gathering_tokens_then_pooling(combine: str, n: int) -> None:
    """The forward pools the MNSE tokens as it reads them (``MNSECodec.embed``: an ``F.embedding_bag``, or
    a pooled table of every bucket when that is smaller); it must give the outputs and the gradients of the
    plain form (gather every token row of ``_row_ids``, then ``MNSECodec.pool``)."""
    from models.spec import SequenceField

    torch.manual_seed(0)
    spec = FeatureSpec(
        categorical=(CategoricalField("user_id", 30, "user"), CategoricalField("ad_id", 20, "ad"),
                     CategoricalField("category", 5, "ad")),
        numeric=(NumericField("ctr", 10, "ad"), NumericField("views", 300, "user"), NumericField("tiny", 2, "user")),
        sequence=SequenceField("ad_id", "category", length=3, n_gap_buckets=4),
    )
    emb = MultiEmbedding(spec, [("a", 4), ("b", 4), ("c", 8)], mnse_bases=(2, 3, 10), mnse_combine=combine,
                         sequence_encoder="mean")
    batch = {"cat": torch.stack([torch.randint(0, v, (n,)) for v in (30, 20, 5)], 1),
             "num": torch.stack([torch.randint(0, v, (n,)) for v in (10, 300, 2)], 1),
             "seq_items": torch.randint(0, 20, (n, 3)), "seq_cats": torch.randint(0, 5, (n, 3)),
             "seq_gaps": torch.tensor([[1, 2, 0]] * n)}
    got = emb(batch)
    ids = emb._row_ids(batch)
    n_cat, n_tok = 3, 3 * emb.mnse.positions
    for gi, group in enumerate(emb.groups):
        w = emb.weights[gi]
        rows = getattr(emb, f"table_offsets_{gi}").view(-1, 1, 1) + ids.unsqueeze(0)
        tokens = w[rows]  # [G, B, N, w]
        mnse = emb.mnse.pool(tokens[:, :, n_cat:n_cat + n_tok].unflatten(2, (3, emb.mnse.positions)))
        n_out = 3 * (3 if combine == "concat" else 1)
        assert got[gi].shape == (len(group.tables), n, n_cat + n_out + 1, group.width)
        assert torch.allclose(got[gi][:, :, :n_cat], tokens[:, :, :n_cat])
        assert torch.allclose(got[gi][:, :, n_cat:n_cat + n_out], mnse, atol=1e-6)
        # gradients: the bag's backward scatters into the same rows with the same weights as the pool's
        upstream = torch.randn_like(mnse)
        (grad_bag,) = torch.autograd.grad((got[gi][:, :, n_cat:n_cat + n_out] * upstream).sum(), w,
                                          retain_graph=True)
        (grad_ref,) = torch.autograd.grad((mnse * upstream).sum(), w)
        assert torch.allclose(grad_bag, grad_ref, rtol=1e-5, atol=1e-5), float((grad_bag - grad_ref).abs().max())

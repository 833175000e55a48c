"""The analysis tools of issue 5: information abundance and collapse reports (validation/collapse.py),
contradictory preference analysis and expert correlation (validation/entanglement.py), ``adsrec analyze``.

The measure is checked on matrices whose answer is known (Gaussian: IA near d; rank 1: IA = 1), the row
selection on planted unseen rows, and the entanglement analysis on a small simulated marketplace whose
click and conversion tastes conflict (preference_correlation -0.5, as tests/model/test_model_behaviour.py):
a shared-table MMoE separates nothing by construction, STEM's task tables do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# A smaller cousin of tests/model/test_model_behaviour.py's marketplace: same tastes and models, 3 days (58k
# impressions, 5.7k clicks, 2.2k conversions), simulated in about a second.
from tests.model.test_model_behaviour import COMMON, SIMULATOR  # noqa: E402

DAYS = 3
TRAIN: dict[str, Any] = {"epochs": 1, "batch_size": 512, "lr": 3e-3, "patience": 0, "log_every": 0, "seed": 0}


# ----- information abundance on known matrices -----------------------------------------------------------
def test_gaussian_matrix_has_ia_close_to_d() -> None:
    """5000 x 16 standard normal: measured IA 15.20 / 15.30 / 15.29 (seeds 0-2), so > 0.9 d holds with room;
    the finite sample keeps it under d."""
    from validation.information_abundance import information_abundance

    for seed in range(3):
        x = np.random.default_rng(seed).normal(size=(5000, 16))
        ia = information_abundance(x)
        assert 0.9 * 16 < ia <= 16.0, ia


def test_rank_one_matrix_has_ia_one() -> None:
    """Rows on one line, of any length and either sign, normalise to ±u: IA = 1 (zero rows are dropped)."""
    from validation.information_abundance import information_abundance, normalised_spectrum

    u = np.random.default_rng(0).normal(size=16)
    x = np.outer(np.r_[np.arange(1, 50), -np.arange(1, 20), 0.0], u)
    assert abs(information_abundance(x) - 1.0) < 1e-5
    spectrum = normalised_spectrum(x)
    assert spectrum[0] == 1.0 and spectrum[1:].max() < 1e-7
    # Rank 3 with orthogonal equal-energy directions: IA = 3.
    basis = np.eye(16)[:3]
    assert abs(information_abundance(np.tile(basis, (10, 1))) - 3.0) < 1e-9


def test_information_abundance_rejects_bad_input() -> None:
    from validation.information_abundance import information_abundance

    with pytest.raises(ValueError, match="2-D"):
        information_abundance(np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        information_abundance(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="no usable rows"):
        information_abundance(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="weights have"):
        information_abundance(np.ones((4, 3)), weights=np.ones(3))


def test_weighted_sample_is_proportional_and_skips_zero_weights() -> None:
    from validation.information_abundance import usable_rows, weighted_sample

    w = np.array([0.0, 1.0, 1.0, 8.0, 0.0, 2.0])
    hits = np.zeros(len(w))
    for seed in range(2000):
        pick = weighted_sample(w, 1, seed)
        hits[pick] += 1
    assert hits[0] == 0 and hits[4] == 0
    share = hits / hits.sum()
    np.testing.assert_allclose(share, w / w.sum(), atol=0.03)
    two = weighted_sample(w, 4, seed=3)
    assert len(set(two.tolist())) == 4 and not {0, 4} & set(two.tolist())
    with pytest.raises(ValueError, match="positive weight"):
        weighted_sample(w, 5)
    # usable_rows: max_rows rows, all of unit norm, only from rows with weight.
    x = np.random.default_rng(1).normal(size=(6, 4))
    rows = usable_rows(x, max_rows=3, weights=w)
    assert rows.shape == (3, 4)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0)


def test_unseen_rows_are_excluded_by_weights() -> None:
    """40 trained rows on a 2-dimensional subspace + 2000 random never-seen rows: unweighted, the unseen
    rows hide the collapse (IA near d); with counts only the trained rows count (IA <= 2)."""
    from validation.information_abundance import information_abundance

    rng = np.random.default_rng(0)
    trained = rng.normal(size=(40, 2)) @ rng.normal(size=(2, 16))
    unseen = rng.normal(size=(2000, 16))
    x = np.vstack([trained, unseen])
    counts = np.r_[rng.integers(1, 100, size=40), np.zeros(2000)]
    assert information_abundance(x) > 12
    assert information_abundance(x, weights=counts) <= 2.0 + 1e-9
    assert information_abundance(x, max_rows=10, weights=counts) <= 2.0 + 1e-9


# ----- collapse reports on a ranker ------------------------------------------------------------------------
def _tiny_spec() -> Any:
    from models.spec import CategoricalField, FeatureSpec, NumericField, SequenceField

    return FeatureSpec(
        categorical=(CategoricalField("user_id", 300, "user"), CategoricalField("ad_id", 200, "ad"),
                     CategoricalField("ad_profile__master_category", 6, "ad"), CategoricalField("one", 1, "context")),
        numeric=(NumericField("ad_profile__bid", 20, "ad"), NumericField("user_stats__click_1d", 7, "user")),
        sequence=SequenceField("ad_id", "ad_profile__master_category", length=4, n_gap_buckets=5),
    )


def _tiny_batch(spec: Any, n: int = 500, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    gaps = rng.integers(0, 5, size=(n, 4))
    return {
        "cat": np.stack([rng.integers(1, 50, n), rng.integers(0, 200, n), rng.integers(0, 6, n), np.zeros(n, int)], 1),
        "num": np.stack([rng.integers(0, 20, n), rng.integers(0, 7, n)], 1),
        "seq_items": np.where(gaps > 0, rng.integers(1, 200, (n, 4)), 0),
        "seq_cats": np.where(gaps > 0, rng.integers(1, 6, (n, 4)), 0),
        "seq_gaps": gaps,
    }


def test_id_counts_follow_the_embedding_layout(torch_one_thread: None) -> None:
    """Counts agree with the rows the model's own lookup reads (MultiEmbedding._row_ids): categorical,
    sequence reads of the item / category fields, and MNSE token rows."""
    import torch

    from models.config import RankerConfig
    from models.ranker import Ranker
    from validation.collapse import id_counts_from_batch

    spec = _tiny_spec()
    model = Ranker(spec, RankerConfig(arch="mmoe", embedding_dim=4, expert_hidden=(8,), gate_hidden=(4,),
                                      tower_hidden=(4,), sequence_encoder="mean"))
    batch = _tiny_batch(spec)
    counts = id_counts_from_batch(model, batch)
    slices = model.field_slices()["shared"]
    assert set(counts) == set(slices)
    for name, (start, stop) in slices.items():
        assert counts[name].shape == (stop - start,), name
    # Every read of the lookup, counted by row, against the counts laid out at their slices.
    emb = model.embedding
    ids = emb._row_ids({k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
    n_cat, tok = len(spec.categorical), len(spec.numeric) * emb.mnse.positions
    seq_real = np.concatenate([batch["seq_gaps"] > 0] * 2, axis=1)
    # MNSE positions past a field's own K_b are masked padding (not reads): keep the pooled ones.
    pooled = (emb.mnse.pool_matrix.sum(-1) > 0).numpy().reshape(-1)  # [n_num * P]
    read = np.concatenate([ids[:, :n_cat].ravel(), ids[:, n_cat:n_cat + tok][:, pooled].ravel(),
                           ids[:, n_cat + tok:][seq_real]])
    expected = np.bincount(read, minlength=emb.rows)
    laid_out = np.zeros(emb.rows, dtype=np.int64)
    for name, (start, stop) in slices.items():
        laid_out[start:stop] = counts[name]
    np.testing.assert_array_equal(laid_out, expected)
    without_seq = id_counts_from_batch(model, batch, include_sequence=False)
    assert without_seq["ad_id"].sum() == len(batch["cat"])
    with pytest.raises(ValueError, match="outside"):
        id_counts_from_batch(model, {**batch, "cat": batch["cat"] + 500})


def test_collapse_report_uses_read_rows_and_skips_tiny_fields(tmp_path: Path, torch_one_thread: None) -> None:
    """Plant a collapse in the user_id rows that the batch reads (ids 1..49, rank 1) of the shared table:
    the weighted report sees IA = 1, the unweighted one is fooled by the 250 untouched random rows."""
    import torch

    from models.config import RankerConfig
    from models.ranker import Ranker
    from validation.collapse import collapse_report, id_counts_from_batch

    spec = _tiny_spec()
    model = Ranker(spec, RankerConfig(arch="stem", embedding_dim=8, expert_hidden=(8,), gate_hidden=(4,),
                                      tower_hidden=(4,), sequence_encoder=None))
    start, _ = model.field_slices()["shared"]["user_id"]
    direction = torch.randn(8)
    with torch.no_grad():
        rows = model.embedding.table("shared")  # a view of the parameter
        rows[start + 1:start + 50] = (torch.rand(49, 1) + 0.1) * direction
    counts = id_counts_from_batch(model, _tiny_batch(spec))
    weighted = collapse_report(model, id_counts=counts, max_rows=1000)
    unweighted = collapse_report(model, max_rows=1000)
    assert weighted.field("shared", "user_id").ia == pytest.approx(1.0, abs=1e-5)
    assert weighted.field("shared", "user_id").used_rows == 49
    assert unweighted.field("shared", "user_id").ia > 4.0  # measured 5.39: the 250 random rows hide it
    # A 1-row field cannot be measured; it is listed, for every table.
    assert {(t, f) for t, f, _ in weighted.skipped} == {(t, "one") for t in ("task:click", "task:conversion", "shared")}
    assert set(weighted.per_table) == {"task:click", "task:conversion", "shared"}
    assert 0 < weighted.mean_ia_ratio < 1
    assert weighted.mean_ia_ratio == pytest.approx(np.mean(list(weighted.per_table.values())))
    # Bootstrap resamples of each field's used rows (the collapse gate's interval): the planted rank-1 rows
    # stay rank 1 in every resample; the headline gets a standard error.
    boot = collapse_report(model, id_counts=counts, max_rows=1000, resamples=20)
    assert boot.field("shared", "user_id").ia_resamples == pytest.approx(np.ones(20), abs=1e-5)
    assert weighted.mean_ia_ratio_se is None and 0 < boot.mean_ia_ratio_se < 0.1
    assert boot.mean_ia_ratio == weighted.mean_ia_ratio and "bootstrap s.e." in boot.to_text()
    summary = json.loads(json.dumps(weighted.to_dict()))
    assert summary["weighted"] is True and summary["mean_ia_ratio"] == pytest.approx(weighted.mean_ia_ratio)
    text = weighted.to_text()
    assert "user_id" in text and "overall mean IA/d" in text and "skipped: one" in text
    png = weighted.plot(tmp_path / "spectra.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="entries"):
        collapse_report(model, id_counts={"user_id": np.ones(3)})


def test_interaction_map_on_dcnv2(tmp_path: Path, torch_one_thread: None) -> None:
    import torch

    from models.config import RankerConfig
    from models.ranker import Ranker
    from validation.interaction_collapse import interaction_collapse_map, plot_interaction_map

    spec = _tiny_spec()
    model = Ranker(spec, RankerConfig(arch="dcnv2", embedding_dim=8, expert_hidden=(8,), tower_hidden=(4,),
                                      mnse_bases=(2, 10), sequence_encoder="mean"))
    imap = interaction_collapse_map(model)
    fields = ["user_id", "ad_id", "ad_profile__master_category", "one", "ad_profile__bid@base2",
              "ad_profile__bid@base10", "user_stats__click_1d@base2", "user_stats__click_1d@base10"]
    assert imap.fields == fields and imap.ia.shape == (8, 8) and imap.expert == "shared/0"
    assert np.all((imap.ia >= 1 - 1e-9) & (imap.ia <= 8 + 1e-9))
    assert np.allclose(imap.ia[3], 1.0)  # a 1-row field projects to one row: IA 1 whoever sees it
    # Zero the block W[user_id -> ad_id] but one rank-1 direction: that entry collapses to 1.
    bank = model.expert_banks[0]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = bank.cross[0].weight  # [1, F*w, F*w], x W
        w[0, 0:8, 8:16] = torch.outer(torch.randn(8, generator=gen), torch.randn(8, generator=gen))
    # float32 rows: the second singular value is rounding noise of order 1e-5, not exactly 0
    assert interaction_collapse_map(model).ia[0, 1] == pytest.approx(1.0, abs=1e-4)
    png = plot_interaction_map(imap, tmp_path / "map.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    mmoe = Ranker(spec, RankerConfig(arch="mmoe", embedding_dim=8, expert_hidden=(8,), sequence_encoder=None))
    with pytest.raises(ValueError, match="needs a DCNv2 expert"):
        interaction_collapse_map(mmoe)
    with pytest.raises(ValueError, match="no DCNv2 expert named"):
        interaction_collapse_map(model, expert="task:click/0")


# ----- contradictory pairs, by hand --------------------------------------------------------------------------
def _rows(users: list[int], ads: list[int], a: list[int], b: list[int], n: int = 10) -> Any:
    from validation.conflicting_pairs import InteractionRows

    labels = {"click": np.array(a, bool), "conversion": np.array(b, bool)}
    return InteractionRows(np.array(users), np.array(ads), labels, n_users=n, n_ads=n)


def test_label_pairs_dedup_frequency_and_funnel() -> None:
    from validation.conflicting_pairs import contradictory_pairs

    #            user  ad  click conv
    impressions = [(1, 1, 1, 0), (1, 1, 1, 0),  # C_click, twice: one pair
                   (1, 2, 0, 1),                # C_conversion
                   (2, 1, 1, 0), (2, 1, 0, 1),  # both: ambiguous, dropped
                   (2, 2, 0, 0),
                   (3, 3, 1, 0)]                # user 3 / ad 3 seen once: not frequent
    u, a, c, v = (list(col) for col in zip(*impressions))
    pairs = contradictory_pairs(_rows(u, a, c, v), "click", "conversion", min_count=2)
    assert pairs.selection == "labels" and pairs.ambiguous == 1
    assert pairs.pairs_a.tolist() == [[1, 1]] and pairs.pairs_b.tolist() == [[1, 2]]
    # A funnel: conversion only with a click. The mirror set becomes "converted".
    funnel = [(1, 1, 1, 0), (1, 2, 1, 1), (2, 1, 1, 0), (2, 2, 0, 0), (2, 2, 1, 1)]
    u, a, c, v = (list(col) for col in zip(*funnel))
    pairs = contradictory_pairs(_rows(u, a, c, v), "click", "conversion", min_count=2)
    assert pairs.selection == "labels-nested"
    assert pairs.pairs_a.tolist() == [[1, 1], [2, 1]] and pairs.pairs_b.tolist() == [[1, 2], [2, 2]]
    capped = contradictory_pairs(_rows(u, a, c, v), "click", "conversion", min_count=2, max_pairs=2)
    assert len(capped.pairs_a) == 1 and len(capped.pairs_b) == 1


def test_single_shared_table_separates_nothing(torch_one_thread: None) -> None:
    """Any pairs, any weights: one table used for both tasks gives separation exactly 0, while two task
    tables planted to disagree give a positive one."""
    import torch

    from models.config import RankerConfig
    from models.ranker import Ranker
    from validation.conflicting_pairs import ConflictingPairs
    from validation.entanglement import pair_separation

    spec = _tiny_spec()
    rng = np.random.default_rng(0)
    # Distinct users per pair, so planting one pair never moves another's user.
    users = rng.permutation(np.arange(1, 300))
    pairs_a = np.stack([users[:150], rng.integers(1, 200, 150)], 1)
    pairs_b = np.stack([users[150:250], rng.integers(1, 200, 100)], 1)
    conflict = ConflictingPairs("click", "conversion", pairs_a, pairs_b, "labels")
    shared = Ranker(spec, RankerConfig(arch="shared_bottom", embedding_dim=8, expert_hidden=(8,),
                                       sequence_encoder=None))
    result = pair_separation(shared, conflict)
    assert result.separation == 0.0 and result.separation_task is None
    stem = Ranker(spec, RankerConfig(arch="stem", embedding_dim=8, expert_hidden=(8,), gate_hidden=(4,),
                                     tower_hidden=(4,), sequence_encoder=None))
    result = pair_separation(stem, conflict)
    assert result.separation_shared == 0.0
    # Plant: in click's table, C_click's users sit on their ads; in conversion's table, C_conversion's do.
    (us, _), (as_, _) = (stem.field_slices()["shared"][f] for f in ("user_id", "ad_id"))
    with torch.no_grad():
        for table, pairs in (("task:click", conflict.pairs_a), ("task:conversion", conflict.pairs_b)):
            w = stem.embedding.table(table)
            w[us + pairs[:, 0]] = w[as_ + pairs[:, 1]]
    planted = pair_separation(stem, conflict)
    assert planted.separation_task is not None and planted.separation_task > 0.2
    assert planted.separation == planted.separation_task


# ----- the simulated marketplace -----------------------------------------------------------------------------
@dataclass
class Trained:
    table: Any
    encoders: Any
    stem: Any  # components.training.artefact.TrainResult
    mmoe: Any


@pytest.fixture(scope="module")
def trained(shared_data: Path, tmp_path_factory: pytest.TempPathFactory, torch_one_thread: None) -> Trained:
    from components.config import load_settings
    from components.training.encoders import FeatureEncoders
    from components.experiments.data import simulator_feature_table
    from components.sources.simulator import simulate
    from components.training.loop import train_ranker
    from components.training.train_config import TrainConfig
    from models.config import RankerConfig

    settings = load_settings(environ={}, overrides={
        "home": str(tmp_path_factory.mktemp("analysis-home")),
        "pipeline": {"shared_data": str(shared_data)},
        "simulator": SIMULATOR,
    }).resolved()
    table = simulator_feature_table(simulate(settings, days=DAYS))
    encoders = FeatureEncoders.fit(table)

    def train(**arch: Any) -> Any:
        return train_ranker(None, table, None, RankerConfig(**arch, **COMMON), TrainConfig(**TRAIN),
                            encoders=encoders)

    return Trained(table, encoders, train(arch="stem", num_shared_experts=1), train(arch="mmoe", num_shared_experts=3))


def test_stem_task_tables_separate_and_mmoe_cannot(trained: Trained) -> None:
    """Measured (1 epoch, seed 0): STEM separation 0.192 (click table gap +0.047, conversion table -0.338;
    seed 1: 0.159), MMoE exactly 0. The labels are a funnel (no conversion without a click)."""
    from validation.entanglement import entanglement_report

    stem = entanglement_report(trained.stem.model, trained.table, trained.encoders)
    mmoe = entanglement_report(trained.mmoe.model, trained.table, trained.encoders)
    for report in (stem, mmoe):
        (pair,) = report.pairs
        assert (pair.task_a, pair.task_b, pair.selection) == ("click", "conversion", "labels-nested")
        assert pair.n_a > 1000 and pair.n_b > 500
        for t in pair.tables.values():  # normalised: mean over both sets is 1
            both = np.concatenate([t.dist_a, t.dist_b])
            assert both.mean() == pytest.approx(1.0)
    print(f"separation: STEM {stem.pairs[0].separation:.4f}, MMoE {mmoe.pairs[0].separation:.4f}")
    assert abs(mmoe.pairs[0].separation) < 1e-6 and not mmoe.has_task_tables
    assert stem.has_task_tables and stem.pairs[0].separation > 0.05
    assert stem.pairs[0].separation_shared == 0.0
    # The separation's standard error (clustered by user and ad) is small next to STEM's separation.
    assert 0 < stem.pairs[0].separation_se < stem.pairs[0].separation / 3
    assert mmoe.pairs[0].separation_se is None  # no task tables: 0 by construction, nothing to estimate
    # The table had every feature column, so the expert correlation was computed on a sample of it.
    assert 0.0 <= stem.expert_mean_abs_r <= 1.0 and len(stem.expert_names) == 3
    summary = json.loads(json.dumps(stem.to_dict()))
    assert summary["has_task_tables"] and summary["pairs"][0]["separation"] == pytest.approx(stem.pairs[0].separation)
    assert summary["pairs"][0]["separation_se"] == pytest.approx(stem.pairs[0].separation_se)
    assert "separation" in stem.to_text()
    # The gate's path: an encoded batch (ids already rows) selects the same pairs as the raw table.
    batch = trained.encoders.encode(trained.table, with_labels=True)
    from_batch = entanglement_report(trained.stem.model, batch, expert_rows=1000)
    assert from_batch.pairs[0].separation == stem.pairs[0].separation
    assert from_batch.expert_mean_abs_r is not None


def test_unknown_ids_are_dropped_not_mapped_to_row_zero(trained: Trained) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from validation.conflicting_pairs import interaction_rows

    table = trained.table.slice(0, 1000)
    strangers = table.set_column(table.column_names.index("user_id"), "user_id",
                                 pc.add(table["user_id"], pa.scalar(10**9, table["user_id"].type)))
    both = pa.concat_tables([table, strangers])
    data = interaction_rows(trained.stem.model, both, trained.encoders, ("click", "conversion"))
    assert data.dropped_unknown >= 1000 and (data.users > 0).all() and (data.ads > 0).all()
    assert len(data.users) == 2000 - data.dropped_unknown
    with pytest.raises(ValueError, match="FeatureEncoders"):
        interaction_rows(trained.stem.model, both, None, ("click", "conversion"))


def test_reference_rule(trained: Trained) -> None:
    """Identical references cannot disagree (far under one, close under the other); two different ones
    give pairs that obey the 60th / 40th percentile rule."""
    from validation.conflicting_pairs import frequent_mask, interaction_rows, pair_distances, reference_pairs

    data = interaction_rows(trained.stem.model, trained.table, trained.encoders, ("click", "conversion"))
    same = reference_pairs(data, "click", "conversion", {"click": trained.mmoe.model, "conversion": trained.mmoe.model})
    assert len(same.pairs_a) == 0 and len(same.pairs_b) == 0
    refs = {"click": trained.mmoe.model, "conversion": trained.stem.model}
    pairs = reference_pairs(data, "click", "conversion", refs, max_pairs=10**6)
    assert len(pairs.pairs_a) > 100 and len(pairs.pairs_b) > 100
    freq = frequent_mask(data, 5)
    keys = np.unique(data.users[freq] * data.n_ads + data.ads[freq])
    every = np.stack([keys // data.n_ads, keys % data.n_ads], 1)

    def dist(ref: Any, table: str, p: np.ndarray) -> np.ndarray:
        u, a = ref.user_item_embeddings(table)
        return pair_distances(u.numpy().astype(np.float64), a.numpy().astype(np.float64), p)

    d_click, d_conv = dist(refs["click"], "shared", every), dist(refs["conversion"], "task:conversion", every)
    assert (dist(refs["click"], "shared", pairs.pairs_b) > np.percentile(d_click, 60)).all()
    assert (dist(refs["conversion"], "task:conversion", pairs.pairs_b) <= np.percentile(d_conv, 40)).all()
    assert (dist(refs["conversion"], "task:conversion", pairs.pairs_a) > np.percentile(d_conv, 60)).all()


def test_expert_correlation(trained: Trained) -> None:
    """In [0, 1] on a trained model; exactly 1 for two experts with identical weights."""
    import copy

    import torch

    from validation.expert_correlation import expert_correlation

    batch = trained.encoders.encode(trained.table.slice(0, 3000), with_labels=False)
    mean_abs, matrix = expert_correlation(trained.mmoe.model, batch, max_rows=2000)
    assert 0.0 <= mean_abs <= 1.0 and matrix.shape == (3, 3)
    np.testing.assert_allclose(matrix, matrix.T)
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    twins = copy.deepcopy(trained.mmoe.model)
    with torch.no_grad():
        for p in twins.expert_banks[0].parameters():  # [n_experts, ...]: expert 1 := expert 0
            p[1] = p[0]
    _, matrix = expert_correlation(twins, batch, max_rows=2000)
    assert matrix[0, 1] == pytest.approx(1.0)


def test_cli_analyze(trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``adsrec analyze collapse|entanglement`` on a saved model, defaults resolved from the home."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from flows.cli.main import app

    home = tmp_path / "home"
    trained.stem.save(home / "models" / "2026-01-03")
    (home / "training" / "2026-01-03").mkdir(parents=True)
    pq.write_table(trained.table, home / "training" / "2026-01-03" / "train.parquet")
    monkeypatch.setenv("ADSREC_HOME", str(home))
    runner = CliRunner()
    result = runner.invoke(app, ["analyze", "collapse"])
    assert result.exit_code == 0, result.output
    assert "overall mean IA/d" in result.output and "interaction collapse map: skipped" in result.output
    out = home / "analysis" / "2026-01-03"
    assert json.loads((out / "collapse.json").read_text())["weighted"] is True
    assert (out / "collapse_spectra.png").is_file()
    result = runner.invoke(app, ["analyze", "entanglement", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "click vs conversion" in result.output and (tmp_path / "out" / "entanglement.png").is_file()
    report = json.loads((tmp_path / "out" / "entanglement.json").read_text())
    assert report["pairs"][0]["separation"] > 0
    result = runner.invoke(app, ["analyze", "collapse", "--model-dir", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "not a saved ranker" in result.output

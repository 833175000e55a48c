"""Smoke test of experiment 2 (components/experiments/entanglement.py) at its small size, and of the real
data loaders it adds to components/experiments/data.py (Taobao, MovieLens-100k)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tests.experiments.conftest import run_small


def test_entanglement_small_run_has_every_model_and_the_separation_by_construction(settings, tmp_path: Path,
                                                                                     shared_data: Path) -> None:
    from components.experiments.entanglement import ORDER

    result, lines = run_small("entanglement", settings, tmp_path / "plots")
    assert [r["model"] for r in result.rows] == list(ORDER)  # the small size runs the simulator only
    assert result.verdict in ("reproduced", "partly", "not reproduced")
    assert all(p.is_file() and p.stat().st_size > 10_000 for p in result.plots)
    per_seed = result.data["simulator"]["per_seed"]
    for model, runs in per_seed.items():
        assert 0.5 < runs[0]["click_auc"] < 1.0, (model, runs[0])
        assert 0.5 < runs[0]["click_gauc"] < 1.0 and math.isfinite(runs[0]["post_click_conversion_auc"])
    # one table for both tasks cannot separate the conflicting pairs; task tables / separate models can
    for model in ("shared-bottom", "MMoE", "PLE", "AME"):
        assert per_seed[model][0]["separation"] == 0.0
    assert per_seed["STEM"][0]["separation"] != 0.0 and per_seed["single-task"][0]["separation"] != 0.0
    assert math.isnan(per_seed["shared-bottom"][0]["expert_abs_r"])  # one expert
    assert 0.0 < per_seed["MMoE"][0]["expert_abs_r"] < 1.0
    assert len({runs[0]["click_auc"] for runs in per_seed.values()}) == len(ORDER)  # the variants differ
    assert {c["task"] for c in result.data["cases"]} == {"click", "conversion"}
    for case in result.data["cases"]:  # the model tested for negative transfer is chosen on validation
        valid = {m: per_seed[m][0][f"valid_{case['task']}_auc"] for m in ("shared-bottom", "MMoE", "PLE")}
        assert case["worst_shared"] == min(valid, key=lambda m: valid[m])
        gain = case["worst_shared_gain"]
        assert math.isclose(gain["mean"], case["worst_shared_auc"] - case["single"], abs_tol=1e-9)
        assert case["negative_transfer"] == (gain["verdict"] == "below 0")
    assert all(r["Δ task A AUC vs single-task"].count("[") == 1 for r in result.rows if r["model"] != "single-task")
    assert len(lines) == len(ORDER) + 1


def test_real_markets_split_by_time_and_join_the_attributes(settings, shared_data: Path) -> None:
    import pyarrow as pa

    from components.experiments.data import movielens_market, taobao_market

    def micros(col):
        return col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()

    tb = taobao_market(settings, negatives_per_positive=1, max_train_rows=30_000)
    ml = movielens_market(settings, negatives_per_positive=1, test_share=0.1, max_train_rows=30_000)
    for market, attrs in ((tb, ("ad_profile__category", "ad_profile__advertiser_id")),
                          (ml, ("ad_profile__genre", "user_profile__occupation", "ad_profile__release_year"))):
        assert market.train.num_rows == 30_000 and market.test.num_rows > 1000 and market.valid.num_rows > 1000
        assert micros(market.train["event_time"]).max() <= micros(market.valid["event_time"]).min()
        assert micros(market.valid["event_time"]).max() <= micros(market.test["event_time"]).min()
        assert market.encoders.tasks == ["click", "conversion"]
        assert not {"cart", "fav"} & set(market.train.column_names)  # unused labels never become features
        features = set(market.encoders.feature_columns)
        assert set(attrs) <= features and "conversion" not in features
        assert market.test_batch["labels"].shape == (market.test.num_rows, 2)
        assert market.labels["conversion"].sum() > 0 and np.all(market.labels["conversion"] <= market.labels["click"])

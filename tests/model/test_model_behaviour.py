"""Model behaviour on the simulator: the claims of issue 4 measured on one fixed marketplace.

The other model tests check mechanics (shapes, gradient isolation, losses against brute force). This
module checks what the ranker *learns* on data whose generating model is known (docs/simulator.md):

1. STEM (task tables + a shared table, all-forward task-specific-backward gates) against a shared-embedding
   MMoE of the same width, experts, gates, towers and epochs, 3 seeds each, test AUC per task;
2. repeated-exposure IPW (components/training/propensity.py) against no IPW: first-exposure calibration on the
   test day;
3. a floor on quality: the STEM model beats a per-ad popularity baseline and reaches a stated share of
   the oracle AUC (the AUC of the true probabilities).

One marketplace is simulated per module; the training table is the impressions joined with the raw ad
and user attributes (the profile columns the feature pipeline also serves), days 1-5 train and day 6
is the test day, which no model sees while training (no early stopping on it, the last epoch is kept).
Measured numbers and the choice of config are in docs/evaluation.md, "Model behaviour tests".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

TASKS = ("click", "conversion")
SEEDS = (0, 1, 2)
DAYS = 6

# The fixed marketplace and the small models, shared with the experiments (components/experiments/data.py
# says why each knob differs from the default). STEM: 2 task experts + 1 shared expert, 3 tables of width
# 8; MMoE: 3 shared experts on 1 table of width 8. Same expert MLP, gate, tower; numeric fields MNSE-summed.
from components.experiments.data import CONFLICT_MODEL as COMMON  # noqa: E402
from components.experiments.data import CONFLICT_SIMULATOR as SIMULATOR  # noqa: E402

STEM: dict[str, Any] = {"arch": "stem", "num_shared_experts": 1, "experts_per_task": 1, **COMMON}
MMOE: dict[str, Any] = {"arch": "mmoe", "num_shared_experts": 3, **COMMON}
TRAIN: dict[str, Any] = {"epochs": 3, "batch_size": 512, "lr": 3e-3, "patience": 0, "log_every": 0}


@dataclass
class Marketplace:
    """The simulated data, split and encoded once for the module."""

    train: Any  # pyarrow.Table, days 1-5
    test: Any  # pyarrow.Table, day 6
    encoders: Any  # components.training.encoders.FeatureEncoders fitted on train
    test_batch: dict[str, Any]
    labels: dict[str, np.ndarray]  # test-day labels per task
    truth: dict[str, np.ndarray]  # test-day true probabilities per task
    first_exposure: np.ndarray  # test-day rows with exposure_index == 1


@pytest.fixture(scope="module")
def market(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Marketplace:
    import pyarrow.compute as pc

    from components.config import load_settings
    from components.training.encoders import FeatureEncoders, time_split
    from components.experiments.data import simulator_feature_table
    from components.sources.simulator import simulate

    settings = load_settings(environ={}, overrides={
        "home": str(tmp_path_factory.mktemp("behaviour-home")),
        "pipeline": {"shared_data": str(shared_data)},
        "simulator": SIMULATOR,
    }).resolved()
    out = simulate(settings, days=DAYS)
    table = simulator_feature_table(out)
    truth = out["truth_impressions"]
    assert table.num_rows == truth.num_rows and table["request_id"].equals(truth["request_id"])
    train, test = time_split(table)
    test_truth = truth.slice(train.num_rows)  # impressions are in time order, so the test day is the tail
    assert test_truth["request_id"].equals(test["request_id"])
    encoders = FeatureEncoders.fit(train)
    assert not pc.any(pc.is_null(train["ad_profile__sub_category"])).as_py()
    return Marketplace(
        train=train,
        test=test,
        encoders=encoders,
        test_batch=encoders.encode(test, with_labels=True),
        labels={t: test[t].to_numpy().astype(np.float64) for t in TASKS},
        truth={t: test_truth[f"p_{t}"].to_numpy() for t in TASKS},
        first_exposure=test["exposure_index"].to_numpy() == 1,
    )


def _train(market: Marketplace, model: dict[str, Any], seed: int,
           weights: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Train on days 1-5 for a fixed number of epochs (no validation, the last epoch is kept) and
    return the test day's probabilities per task."""
    from components.training.device import predict
    from components.training.loop import train_ranker
    from components.training.train_config import TrainConfig
    from models.config import RankerConfig

    result = train_ranker(None, market.train, None, RankerConfig(**model),
                          TrainConfig(**TRAIN, seed=seed, ipw=weights is not None),
                          encoders=market.encoders, train_weights=weights)
    return predict(result.model, market.test_batch, TASKS)


@pytest.fixture(scope="module")
def stem_scores(market: Marketplace, torch_one_thread: None) -> list[dict[str, np.ndarray]]:
    return [_train(market, STEM, seed) for seed in SEEDS]


@pytest.fixture(scope="module")
def mmoe_scores(market: Marketplace, torch_one_thread: None) -> list[dict[str, np.ndarray]]:
    return [_train(market, MMOE, seed) for seed in SEEDS]


def _mean_auc(market: Marketplace, runs: list[dict[str, np.ndarray]], task: str) -> float:
    from components.training.metrics import auc

    return float(np.mean([auc(run[task], market.labels[task]) for run in runs]))


def test_marketplace_has_the_planted_effects(market: Marketplace) -> None:
    """The config is what the claims need: enough positives of each task on the test day, and tasks
    whose true probabilities rank differently (the entanglement)."""
    from components.training.metrics import auc

    assert market.train.num_rows > 80_000 and market.test.num_rows > 15_000
    assert market.labels["click"].sum() > 1000 and market.labels["conversion"].sum() > 500
    # p(conversion | click) ranks against click taste: conversion's oracle ordering is not click's.
    p_conv_given_click = market.truth["conversion"] / market.truth["click"]
    clicked = market.labels["click"] == 1
    assert auc(p_conv_given_click[clicked], market.labels["conversion"][clicked]) > 0.65
    assert np.corrcoef(np.log(market.truth["click"]), np.log(p_conv_given_click))[0, 1] < 0.0


def test_stem_beats_shared_embedding_mmoe_on_click(market: Marketplace, stem_scores, mmoe_scores) -> None:
    """Mean test-day AUC over seeds 0-2, measured on this config (2 cores, torch CPU, one thread):

    | model | click | conversion |
    |---|---|---|
    | STEM (3 tables, 2 task experts + 1 shared) | 0.6708 | 0.6159 |
    | MMoE (1 shared table, 3 experts) | 0.6623 | 0.6242 |

    Oracle AUC on the same rows: click 0.8451, conversion 0.8180."""
    stem, mmoe = _mean_auc(market, stem_scores, "click"), _mean_auc(market, mmoe_scores, "click")
    print(f"click AUC, mean of seeds: STEM {stem:.4f}, MMoE {mmoe:.4f}")
    assert stem > mmoe, f"click AUC: STEM {stem:.4f} vs MMoE {mmoe:.4f}"


@pytest.mark.xfail(strict=False, reason=(
    "the claim does not hold on this config: mean conversion AUC over seeds 0-2 is STEM 0.6159 vs MMoE "
    "0.6242 (click: STEM 0.6708 vs 0.6623). Measured before the prior-bias init, MMoE led on every seed "
    "and in every variant tried: 6 epochs, preference_correlation 0, alpha 1, width 16, init std 0.01, an "
    "ESMM cascade p(conv) = p(click) p(conv|click) on both models (0.6135 vs 0.6162), 200 users with 20 "
    "sessions a day (0.6339 vs 0.6394). STEM's conversion table learns from conversion positives only; "
    "see docs/evaluation.md, Model behaviour tests"))
def test_stem_beats_shared_embedding_mmoe_on_conversion(market: Marketplace, stem_scores, mmoe_scores) -> None:
    stem, mmoe = _mean_auc(market, stem_scores, "conversion"), _mean_auc(market, mmoe_scores, "conversion")
    print(f"conversion AUC, mean of seeds: STEM {stem:.4f}, MMoE {mmoe:.4f}")
    assert stem > mmoe, f"conversion AUC: STEM {stem:.4f} vs MMoE {mmoe:.4f}"


def test_stem_ranks_post_click_conversion_better_than_mmoe(market: Marketplace, stem_scores, mmoe_scores) -> None:
    """Where the tastes conflict: among clicked test impressions, conversion AUC (the p(conv | click)
    ordering). Measured (seeds 0-2): STEM 0.5118 mean (every seed above 0.50), MMoE 0.4758 (every seed
    below 0.48, i.e. worse than random: its shared table ranks by click taste, which the simulator makes
    anti-correlated with conversion taste). This is the entanglement STEM removes, even though MMoE wins
    the unconditional conversion AUC (test above), which is mostly the click signal."""
    from components.training.metrics import auc

    clicked = market.labels["click"] == 1
    stem = [auc(r["conversion"][clicked], market.labels["conversion"][clicked]) for r in stem_scores]
    mmoe = [auc(r["conversion"][clicked], market.labels["conversion"][clicked]) for r in mmoe_scores]
    print(f"post-click conversion AUC: STEM {np.round(stem, 4)}, MMoE {np.round(mmoe, 4)}")
    assert np.mean(stem) > np.mean(mmoe) + 0.01, (stem, mmoe)


@pytest.fixture(scope="module")
def ipw_weights(market: Marketplace) -> dict[str, np.ndarray]:
    """Repeated-exposure IPW weights of the training rows, fitted on the training days' log."""
    from components.training.propensity import ExposurePropensity

    propensity = ExposurePropensity().fit(market.train)
    return {t: propensity.weights(market.train, t) for t in TASKS}


@pytest.fixture(scope="module")
def ipw_scores(market: Marketplace, ipw_weights, torch_one_thread: None) -> list[dict[str, np.ndarray]]:
    return [_train(market, STEM, seed, ipw_weights) for seed in SEEDS]


def _first_exposure_calibration(market: Marketplace, runs: list[dict[str, np.ndarray]]) -> np.ndarray:
    from components.training.metrics import calibration

    first = market.first_exposure
    return np.array([calibration(run["click"][first], market.labels["click"][first]) for run in runs])


def test_ipw_lowers_first_exposure_predictions(market: Marketplace, ipw_weights, stem_scores, ipw_scores) -> None:
    """The mechanism: retargeted positives are down-weighted, so on every seed the IPW model predicts a
    lower click rate on first exposures than the same seed without weights."""
    reweighted = int((ipw_weights["click"] < 1).sum())
    assert reweighted > 1000, reweighted  # the retargeting policy re-showed many clicked ads
    assert float(ipw_weights["click"].min()) >= 0.1 - 1e-6
    plain = _first_exposure_calibration(market, stem_scores)
    ipw = _first_exposure_calibration(market, ipw_scores)
    print(f"first-exposure click calibration: no IPW {np.round(plain, 3)}, IPW {np.round(ipw, 3)}")
    assert (ipw < plain).all(), (plain, ipw)


def test_ipw_brings_first_exposure_calibration_closer_to_one(market: Marketplace, stem_scores, ipw_scores) -> None:
    """Mean over seeds of |calibration - 1| on the test day's first exposures (exposure_index == 1).

    Measured (seeds 0-2): without IPW 1.079 / 1.106 / 1.362, with IPW 0.953 / 0.932 / 1.099; mean
    |calibration - 1| 0.182 without and 0.071 with. This held only after the towers' output biases started
    at the task's (weighted) positive rate (TrainConfig.prior_bias): before, the seed-to-seed spread of
    calibration after 3 epochs from a p = 0.5 start was larger than IPW's shift (0.189 vs 0.207)."""
    plain = _first_exposure_calibration(market, stem_scores)
    ipw = _first_exposure_calibration(market, ipw_scores)
    gap_plain, gap_ipw = float(np.mean(np.abs(plain - 1))), float(np.mean(np.abs(ipw - 1)))
    print(f"mean |calibration - 1|: no IPW {gap_plain:.3f}, IPW {gap_ipw:.3f}")
    assert gap_ipw < gap_plain, f"first-exposure click calibration: IPW {ipw} vs none {plain}"


def test_stem_beats_popularity_and_reaches_a_share_of_the_oracle(market: Marketplace, stem_scores) -> None:
    """Seed-0 STEM on the test day against (a) each ad's smoothed positive rate over the training days and
    (b) the oracle AUC of the true probabilities. Measured: click STEM 0.6721, popularity 0.5787, oracle
    0.8451 (ratio 0.80); conversion STEM 0.6170, popularity 0.5588, oracle 0.8180 (ratio 0.75)."""
    from components.training.metrics import auc

    train_ads = market.train["ad_id"].to_numpy()
    ads, codes = np.unique(train_ads, return_inverse=True)
    shown = np.bincount(codes).astype(np.float64)
    test_codes = np.searchsorted(ads, market.test["ad_id"].to_numpy()).clip(0, len(ads) - 1)
    known = ads[test_codes] == market.test["ad_id"].to_numpy()
    for task in TASKS:
        positives = market.train[task].to_numpy().astype(np.float64)
        prior = float(positives.mean())
        # Each ad's rate, smoothed with 20 pseudo-impressions at the global rate.
        rate = (np.bincount(codes, weights=positives) + 20 * prior) / (shown + 20)
        popularity = np.where(known, rate[test_codes], prior)
        model_auc = auc(stem_scores[0][task], market.labels[task])
        popularity_auc = auc(popularity, market.labels[task])
        oracle = auc(market.truth[task], market.labels[task])
        print(f"{task}: STEM {model_auc:.4f}, popularity {popularity_auc:.4f}, oracle {oracle:.4f}")
        assert model_auc > popularity_auc + 0.02, (task, model_auc, popularity_auc)
        assert model_auc / oracle > 0.72, (task, model_auc, oracle)
    assert auc(stem_scores[0]["click"], market.labels["click"]) > 0.6

"""Smoke test of experiment 3 (components/experiments/temporal.py) at its small size.

The small pipeline marketplace (a few hundred users and ads, 3 days through deliver / ingest / features /
representations / training set) lives in a home shared by the experiment smoke tests of one pytest
session, so the slow representations step runs once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.experiments.conftest import run_small


def test_temporal_small_run_compares_every_encoder(pipeline_settings, tmp_path: Path) -> None:
    from components.experiments.temporal import VARIANTS

    result, lines = run_small("temporal", pipeline_settings, tmp_path / "plots")
    assert [r["sequence encoder"] for r in result.rows] == [v for v, _ in VARIANTS]
    assert result.verdict in ("reproduced", "partly", "not reproduced")
    assert result.plots and all(p.is_file() for p in result.plots)
    per = result.data["per_seed"]
    aucs = [per[v]["click_auc"][0] for v, _ in VARIANTS]
    assert all(0.5 < a < 1.0 for a in aucs), aucs
    assert len(set(np.round(aucs, 6))) > 1  # the encoders are really different models
    # the learned-vs-planted correlation is computed for TIM only, over real cells
    assert result.data["cells"] >= 3 and np.isfinite(per["tim"]["tim_r_cells"][0])
    assert "tim_r_cells" not in per["din"]
    gains = result.data["tim_gains"]  # TIM against every other encoder: paired, with an interval over users
    assert set(gains) == {"none", "mean", "din"}
    assert abs(gains["din"]["mean"] - (per["tim"]["click_auc"][0] - per["din"]["click_auc"][0])) < 1e-9
    assert gains["din"]["interval"]["low"] < gains["din"]["interval"]["high"]
    # the section says which temporal effect was planted
    assert ("Planted temporal effect (default strength): temporal_boost 1.2, temporal_decay_hours 12.0, "
            "temporal_user_share 1.0, rounds_per_day 6.") in result.notes


def test_strong_strength_plants_a_stronger_effect_in_its_own_market(pipeline_settings, tmp_path: Path,
                                                                     monkeypatch) -> None:
    """``--option strength=strong``: the pipeline market gets the strong knobs (and so its own home), and on
    that market removing the temporal term costs the oracle far more click AUC than at the default."""
    from components.experiments import data as D
    from components.experiments.base import ExperimentContext
    from components.experiments.temporal import EXPERIMENT, STRENGTHS
    from components.sources.simulator import simulate
    from components.training.metrics import auc

    asked: dict = {}

    class Built(Exception):
        pass

    def pipeline_market(settings, **kwargs):
        asked.update(kwargs)
        raise Built

    monkeypatch.setattr(D, "pipeline_market", pipeline_market)
    ctx = ExperimentContext(name="temporal", settings=pipeline_settings, seeds=(0,), size="small",
                            plot_dir=tmp_path, mlflow=False, options={"strength": "strong"})
    with pytest.raises(Built):
        EXPERIMENT(ctx)
    assert asked["simulator"] == {**D.PIPELINE_SIMULATOR_SMALL, **STRENGTHS["strong"]}
    assert D.pipeline_settings(pipeline_settings, asked["simulator"]).home != D.pipeline_settings(
        pipeline_settings, D.PIPELINE_SIMULATOR_SMALL).home
    with pytest.raises(ValueError, match="strength must be one of default, strong"):
        EXPERIMENT(ExperimentContext(name="temporal", settings=pipeline_settings, options={"strength": "huge"}))

    def oracle_loss(knobs: dict) -> float:
        """Test-day oracle click AUC minus that of the oracle without its temporal term."""
        s = pipeline_settings.model_copy(update={"simulator": pipeline_settings.simulator.model_copy(
            update={**D.PIPELINE_SIMULATOR_SMALL, **knobs})})
        out = simulate(s, days=D.PIPELINE_DAYS_SMALL)
        truth, y = out["truth_impressions"], out["impressions"]["click"].to_numpy()
        last = truth["event_time"].to_numpy().astype("datetime64[D]")
        last = last == last.max()
        logit, boost = truth["click_logit"].to_numpy()[last], truth["temporal_boost"].to_numpy()[last]
        return auc(1 / (1 + np.exp(-logit)), y[last]) - auc(1 / (1 + np.exp(-(logit - boost))), y[last])

    default, strong = oracle_loss(STRENGTHS["default"]), oracle_loss(STRENGTHS["strong"])
    assert 0 < default and strong > max(0.015, 2.5 * default), (default, strong)

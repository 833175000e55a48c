"""Smoke test of experiment 3 (components/experiments/temporal.py) at its small size.

The small pipeline marketplace (a few hundred users and ads, 3 days through deliver / ingest / features /
representations / training set) lives in a home shared by the experiment smoke tests of one pytest
session, so the slow representations step runs once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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

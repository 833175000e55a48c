"""Smoke test of experiment 3 (components/experiments/temporal.py) at its small size.

The small pipeline marketplace (a few hundred users and ads, 3 days through deliver / ingest / features /
representations / training set) lives in a home shared by the experiment smoke tests of one pytest
session, so the slow representations step runs once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def pipeline_settings(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    from components.config import load_settings

    # One home for the session: the pipeline's day-steps skip what an earlier test already built.
    home = tmp_path_factory.getbasetemp() / "experiments-pipeline-home"
    return load_settings(environ={}, overrides={"home": str(home), "pipeline": {"shared_data": str(shared_data)}}).resolved()


def test_temporal_small_run_compares_every_encoder(pipeline_settings, tmp_path: Path) -> None:
    from components.experiments import get
    from components.experiments.base import ExperimentContext
    from components.experiments.temporal import VARIANTS

    ctx = ExperimentContext(name="temporal", settings=pipeline_settings, seeds=(0,), size="small",
                            plot_dir=tmp_path / "plots", mlflow=False, progress=lambda _line: None)
    result = get("temporal")(ctx)
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

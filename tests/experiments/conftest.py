"""Shared pieces of the experiment smoke tests: each runs one experiment at its small size, one seed, no
MLflow, and checks its table, verdict and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def run_small(name: str, settings: Any, plot_dir: Path) -> tuple[Any, list[str]]:
    """Run experiment ``name`` at its small size with seed 0; returns (its result, its progress lines),
    after checking what every experiment must give: a verdict and non-empty plot files."""
    from components.experiments import get
    from components.experiments.base import ExperimentContext

    lines: list[str] = []
    ctx = ExperimentContext(name=name, settings=settings, seeds=(0,), size="small", plot_dir=plot_dir,
                            mlflow=False, progress=lines.append)
    result = get(name)(ctx)
    assert result.verdict in ("reproduced", "partly", "not reproduced")
    assert result.plots and all(p.is_file() and p.stat().st_size > 0 for p in result.plots)
    return result, lines


@pytest.fixture(scope="module")
def pipeline_settings(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    """Settings with a home shared by the module (the pipeline-backed experiments build their days once)."""
    from components.config import load_settings

    home = tmp_path_factory.getbasetemp() / "experiments-pipeline-home"
    return load_settings(environ={}, overrides={"home": str(home), "pipeline": {"shared_data": str(shared_data)}}).resolved()

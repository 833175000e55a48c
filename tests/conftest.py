"""Shared fixtures. Every test gets its own ADSREC_HOME under tmp_path; nothing touches ./.adsrec.

The suite is in layers, one folder each, and every test is marked with its folder's layer (see README):
``code`` (units, mirroring components/' stage folders; ``pytest tests/code`` is the inner loop), ``data``
(ingestion, sources and point-in-time contracts on real and simulated data), ``model`` (trained-model
behaviour), ``e2e`` (whole flows and the CLI) and ``experiments`` (the registered experiments).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# OpenMP threads that busy-wait for each other make small torch ops 10x slower whenever the 2 cores are
# shared (measured on LightGCN: 3.5 s passive vs 27-47 s default). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


LAYERS = ("code", "data", "model", "e2e", "experiments")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with the layer its folder names, so ``-m "not e2e"`` and the like select by layer."""
    for item in items:
        parts = Path(str(item.path)).resolve().relative_to(REPO / "tests").parts
        if parts and parts[0] in LAYERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(scope="session", autouse=True)
def _quiet_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Offline, telemetry-free, and every tool's state in a temporary folder."""
    base = tmp_path_factory.mktemp("session-env")
    os.environ.setdefault("PREFECT_HOME", str(base / "prefect"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    for key in [k for k in os.environ if k.startswith("ADSREC_")]:
        del os.environ[key]


@pytest.fixture()
def settings(tmp_path: Path):
    """Default settings with an empty ADSREC_HOME of its own and the real shared data folder."""
    from components.config import load_settings

    return load_settings(
        environ={}, overrides={"home": str(tmp_path / "home"), "pipeline": {"shared_data": str(SHARED_DATA)}}
    ).resolved()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip with the reason when it is not beside the repo."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it lives in ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def torch_one_thread():
    """One intra-op torch thread for modules of tiny-tensor tests: thread hand-offs cost more than the
    maths, and a shared 2-core box made them up to 30x slower. Restores the setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

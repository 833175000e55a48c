"""Process environment for running flows locally: every tool's state under ADSREC_HOME.

Called by the CLI (and tests) before Prefect, MLflow or Hugging Face are imported, because those read
their settings from the environment at import time. Values the user already set win.
"""

from __future__ import annotations

import os

from components.config import Settings


def configure_environment(settings: Settings) -> dict[str, str]:
    """Point Prefect's local state at ``<home>/prefect``, keep everything offline and telemetry-free.

    Returns the variables it set. Creates ``<home>`` and ``<home>/prefect`` (this is the first write of a
    run, never an import side effect).
    """
    home = settings.home
    defaults = {
        "ADSREC_HOME": str(home),
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The ephemeral server takes 12-22 s to start here; Prefect's default timeout is 20 s.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        # Busy-waiting OpenMP threads slow small torch ops ~10x on a shared 2-core box (tests/conftest.py).
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    applied: dict[str, str] = {}
    for key, value in defaults.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    return applied

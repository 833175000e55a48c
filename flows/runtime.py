"""Process environment for running flows locally: every tool's state under ADSREC_HOME.

Called by the CLI (and tests) before Prefect, MLflow or Hugging Face are imported, because those read
their settings from the environment at import time. Values the user already set win.
"""

from __future__ import annotations

import os

from components.config import Settings


def configure_environment(settings: Settings) -> dict[str, str]:
    """Point Prefect's local state at ``<home>/prefect``, keep everything offline and telemetry-free.

    Returns the variables it set. Sets the process umask to ``settings.home_umask`` (027 by default: what
    it writes is group-readable, docs/state.md) and creates ``<home>`` and ``<home>/prefect`` (this is the
    first write of a run, never an import side effect).
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
    os.umask(settings.umask)
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    return applied


def ensure_prefect_database() -> None:
    """Create or upgrade the local Prefect database once, under a file lock in ``$PREFECT_HOME``.

    Why: a flow run without ``PREFECT_API_URL`` starts Prefect's ephemeral server, which migrates its
    SQLite database on start. Two commands started at once on a fresh home both ran those migrations and
    one failed ("duplicate column name", logged as an ERROR). Here the first command migrates under an
    exclusive ``flock`` and leaves a marker for this Prefect version; the others wait on the lock, find the
    marker and go on, and every ephemeral server then finds the database at head (nothing to migrate).
    Nothing to do with a Prefect server (``PREFECT_API_URL``) or a non-SQLite database."""
    from components.storage import file_lock

    if os.environ.get("PREFECT_API_URL"):
        return
    import prefect
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    url = url.get_secret_value() if url is not None else ""
    if not url.startswith("sqlite"):
        return
    home = get_current_settings().home
    home.mkdir(parents=True, exist_ok=True)
    marker = home / f".adsrec-db-migrated-{prefect.__version__}"
    if marker.exists():
        return
    with file_lock(home / ".adsrec-db-migrate.lock"):  # released also when the process dies
        if marker.exists():
            return
        import asyncio

        from prefect.server.database import provide_database_interface

        asyncio.run(provide_database_interface().create_db())  # what the ephemeral server runs on start
        marker.touch()

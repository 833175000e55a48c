"""Feast glue: the adsrec feature repository pointed at any state folder.

``feature_repo/feature_store.yaml`` serves the CLI against the default ``./.adsrec``. feast 0.67 expands
environment variables in that file with ``os.path.expandvars`` (an unset variable stays literal text,
there is no default syntax), so the platform does not rely on it: it builds the same ``RepoConfig`` in
code with absolute paths under ``settings.feast_dir`` and applies the definitions of
``feature_repo/adsrec_views.py`` (the module ``repo.py`` uses too), so one definition serves both.
It also writes that config to ``<feast_dir>/feature_store.yaml`` so the CLI can be pointed at any home:
``ADSREC_HOME=<home> FEAST_FS_YAML_FILE_PATH=<home>/feast/feature_store.yaml feast apply`` from feature_repo/.

Feast is imported lazily (about 6 s): nothing here imports it at module level.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from components.config import Settings

FEATURE_REPO = Path(__file__).resolve().parents[2] / "feature_repo"
_VIEWS_MODULE = "adsrec_feature_repo_views"


def views_module() -> ModuleType:
    """``feature_repo/adsrec_views.py``, loaded by path (the feature repo is not a package)."""
    module = sys.modules.get(_VIEWS_MODULE)
    if module is None:
        spec = importlib.util.spec_from_file_location(_VIEWS_MODULE, FEATURE_REPO / "adsrec_views.py")
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the feature definitions from {FEATURE_REPO / 'adsrec_views.py'}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_VIEWS_MODULE] = module  # dataclasses resolve their module through sys.modules
        spec.loader.exec_module(module)
    return module


def view_specs(settings: "Settings") -> list[Any]:
    """Every view built under ``settings.home`` (fields read from the built parquet), with the configured
    TTL: the core views of the ``training`` service and the representation views built so far."""
    return views_module().view_specs(settings.home, settings.features.ttl_days, representations=True)


def repo_config_dict(settings: "Settings") -> dict[str, Any]:
    """feature_store.yaml's content with absolute paths under ``settings.feast_dir``."""
    feast_dir = settings.feast_dir.expanduser().resolve()
    return {
        "project": views_module().PROJECT,
        "registry": {"registry_type": "file", "path": str(feast_dir / "registry.db"), "cache_ttl_seconds": 60},
        "provider": "local",
        "offline_store": {"type": "duckdb"},
        "online_store": {"type": "sqlite", "path": str(feast_dir / "online_store.db")},
        "entity_key_serialization_version": 3,
    }


def repo_config(settings: "Settings") -> "RepoConfig":
    from feast.repo_config import RepoConfig

    config = RepoConfig(**repo_config_dict(settings))
    config.repo_path = FEATURE_REPO
    return config


def feature_store(settings: "Settings", apply: bool = True) -> "FeatureStore":
    """A ``FeatureStore`` on ``settings.home``; with ``apply``, (re-)register the views first so the registry
    matches the parquet that is there now (about 0.5 s once Feast is imported)."""
    import yaml
    from feast import FeatureStore

    feast_dir = settings.feast_dir.expanduser().resolve()
    feast_dir.mkdir(parents=True, exist_ok=True)
    (feast_dir / "feature_store.yaml").write_text(yaml.safe_dump(repo_config_dict(settings), sort_keys=False))
    store = FeatureStore(repo_path=str(FEATURE_REPO), config=repo_config(settings))
    if apply:
        import logging

        objects = views_module().feast_objects(view_specs(settings))
        # Feast validates a FileSource path with a plain existence check, which a partition glob never
        # passes, and logs a warning for each view; the reads themselves handle globs.
        source_log = logging.getLogger("feast.infra.offline_stores.file_source")
        level = source_log.level
        source_log.setLevel(logging.ERROR)
        try:
            store.apply(list(objects.values()))
        finally:
            source_log.setLevel(level)
    return store

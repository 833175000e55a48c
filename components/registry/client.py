"""The MLflow client of the ranker's registry (DESIGN.md section 9; docs/registry.md): where MLflow keeps
things and how to reach it.

Holds the names the registry modules share (aliases, version tags, artifacts), its errors,
:func:`mlflow_client` (an ``MlflowClient`` with MLflow's fluent API pointed at
``settings.mlflow_tracking_uri`` for the duration of a block), the experiment's artifact root, and
creating the experiment and the registered model on first use. What is logged per run is in
components/registry/run_logging.py, registering a version in components/registry/register.py, the
aliases (champion, challenger, previous) and reading versions back in components/registry/aliases.py,
the logged pyfunc model in components/registry/packaged.py.

Never relies on the process-wide MLflow URI: every call points MLflow at ``settings.mlflow_tracking_uri``
for its own duration (and restores what was there), so two settings objects in one process use two
registries.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import Settings

if TYPE_CHECKING:
    import mlflow

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS = "previous"
GATES_PASSED_TAG = "gates_passed"
GATES_ARTIFACT = "gates.json"

_URI_LOCK = threading.RLock()
LOCK_WAIT_S = 5.0  # how long the registry database may stay locked by another process before a command gives up
_SQLITE_TROUBLE = ("file is not a database", "database disk image is malformed", "database is locked",
                   "unable to open database", "disk i/o error", "no such table")


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (no such version, nothing to roll back to, ...)."""


class PromotionError(RegistryError):
    """A promotion was refused (failed gates without ``force`` and a reason)."""


# ----- where MLflow keeps things ---------------------------------------------------------------------------
def artifact_root_uri(settings: Settings) -> str | None:
    """The experiment's artifact location as a URI: a plain path becomes an absolute ``file://`` URI, a
    relative one under ``home`` (MLflow would otherwise resolve it against the working directory).
    None when the tracking URI is an MLflow server and ``registry.artifact_location`` is unset: the
    server's artifact store decides (a local folder of this machine would be unreadable elsewhere)."""
    if settings.registry.artifact_location is None and re.match(r"^(https?|databricks)", settings.mlflow_tracking_uri):
        return None
    loc = settings.mlflow_artifact_location
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", loc):  # a URI (s3://, file:/, mlflow-artifacts:/)
        return loc
    path = Path(loc).expanduser()
    return (path if path.is_absolute() else settings.home / path).resolve().as_uri()


def local_sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI, None for any other URI."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


# Where MLflow's SQLite store keeps artifact locations: absolute URIs, fixed when each row was written.
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"), ("model_versions", "source"),
                     ("model_versions", "storage_location"))


def follow_home(settings: Settings) -> int:
    """Re-point a copied or moved home's MLflow store at its own artifacts; returns the rows rewritten.

    Why a SQL UPDATE: MLflow stores every artifact location as an absolute URI (the experiment's
    ``artifact_location``, each run's ``artifact_uri``, each logged model's and model version's location),
    resolves a relative one against the working directory, and has no API to change an experiment's
    location. So a copy of ``<home>`` would read and write the original home's artifacts. When the
    experiment's stored location is the configured home-relative location of *another* folder (same
    suffix below the home, e.g. ``/mlflow/artifacts``), every location under that old root is rewritten to
    the same path under this home, in one transaction, before MLflow opens the database. Nothing happens for
    a server, a store outside the home, a location set to an absolute path or URI elsewhere, or a store
    already pointing here (the common case: one indexed query)."""
    import sqlite3

    db = local_sqlite_path(settings.mlflow_tracking_uri)
    new_root = artifact_root_uri(settings)
    home_uri = settings.home.resolve().as_uri()
    if db is None or not db.is_file() or new_root is None or not new_root.startswith(home_uri + "/"):
        return 0
    suffix = new_root[len(home_uri):]
    con = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return 0
        row = con.execute("SELECT artifact_location FROM experiments WHERE name = ?",
                          (settings.registry.experiment,)).fetchone()
        old_root = row[0] if row else None
        if not old_root or old_root == new_root or not old_root.endswith(suffix) or not old_root.startswith("file:"):
            return 0
        con.execute("BEGIN IMMEDIATE")  # two commands opening the copy at once: one rewrites, one finds it done
        changed = 0
        for table, column in _LOCATION_COLUMNS:
            if table in tables and column in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}:
                changed += con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                    (new_root, len(old_root) + 1, old_root, len(old_root) + 1, old_root + "/")).rowcount
        con.execute("COMMIT")
        return changed
    finally:
        con.close()


def store_exists(settings: Settings) -> bool:
    """False only for a local SQLite store whose file does not exist yet (nothing registered)."""
    path = local_sqlite_path(settings.mlflow_tracking_uri)
    return path is None or path.is_file()


def require_store(settings: Settings) -> None:
    """Raise ``RegistryError`` when :func:`store_exists` is false (nothing can be read or changed), or when
    the store cannot be read (:func:`check_store_opens`)."""
    if not store_exists(settings):
        raise RegistryError(f"no MLflow registry at {settings.mlflow_tracking_uri}: nothing registered yet")
    check_store_opens(settings)


def store_problem(path: Path, exc: BaseException) -> str:
    """One line naming the registry database ``path``, what is wrong with it and what to do."""
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
    if "locked" in text.lower():
        return (f"the registry database {path} is locked by another process ({text}): wait for that command to "
                "finish, or stop it, and retry")
    return (f"the registry database {path} is unreadable ({text}): restore it from a backup, or move it aside "
            "to start an empty registry (its versions are then lost); `adsrec doctor` checks the rest of the home")


def check_store_opens(settings: Settings) -> None:
    """Raise ``RegistryError`` (one line, :func:`store_problem`) when the local SQLite registry exists but
    cannot be read: not a database, corrupt, or locked for longer than ``LOCK_WAIT_S``. Reads only the
    schema table; any other store passes."""
    import sqlite3

    path = local_sqlite_path(settings.mlflow_tracking_uri)
    if path is None or not path.is_file():
        return
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=LOCK_WAIT_S)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise RegistryError(store_problem(path, exc)) from None


def _is_store_failure(exc: BaseException) -> bool:
    """A SQLAlchemy database error, or MLflow's wrapping of one, that says the SQLite file is bad or locked."""
    wrapped = type(exc).__module__.startswith("sqlalchemy") or type(exc).__name__ == "MlflowException"
    return wrapped and any(t in str(exc).lower() for t in _SQLITE_TROUBLE)


@contextlib.contextmanager
def mlflow_client(settings: Settings) -> Iterator["mlflow.MlflowClient"]:
    """An ``MlflowClient`` on the settings' tracking and registry URI, with MLflow's fluent API (runs,
    ``log_model``, ``register_model``, ``pyfunc.load_model``) pointed at the same URI for the duration of
    the block; the previous URIs and ``MLFLOW_*`` environment variables are restored afterwards.
    Blocks in different threads are serialised (the fluent URI is process-wide).

    A local SQLite registry that is corrupt or locked raises ``RegistryError`` with one line naming the
    file and what to do (:func:`check_store_opens` before the block, and any database failure inside it)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    uri = settings.mlflow_tracking_uri
    sqlite = local_sqlite_path(uri)
    if sqlite is not None:
        sqlite.parent.mkdir(parents=True, exist_ok=True)
        check_store_opens(settings)  # a corrupt or locked database: one line, before anything touches it
        follow_home(settings)
    with _URI_LOCK:
        saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                                                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")}
        # Copying a few local files needs no tqdm bars on stderr (a user's own setting wins).
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # mlflow has no public getter for "what was explicitly set" (get_* return resolved defaults).
        saved_tracking = getattr(tracking_utils, "_tracking_uri", None)
        saved_registry = getattr(registry_utils, "_registry_uri", None)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        except Exception as exc:
            if sqlite is not None and _is_store_failure(exc):
                raise RegistryError(store_problem(sqlite, exc)) from None
            raise
        finally:
            mlflow.set_tracking_uri(saved_tracking)  # type: ignore[arg-type]
            mlflow.set_registry_uri(saved_registry)  # type: ignore[arg-type]
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def ensure_experiment(client: "mlflow.MlflowClient", settings: Settings) -> str:
    """The id of ``registry.experiment``, created (with the artifact root) when it does not exist yet."""
    from mlflow.exceptions import MlflowException

    name = settings.registry.experiment
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = artifact_root_uri(settings)
        if location is not None and location.startswith("file://"):
            Path(location[len("file://"):]).mkdir(parents=True, exist_ok=True)
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise RegistryError(f"MLflow experiment {name!r} is deleted: restore it or set registry.experiment")
    return str(exp.experiment_id)


def ensure_registered_model(client: "mlflow.MlflowClient", name: str) -> None:
    """Create the registered model ``name`` unless it exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name, description="The adsrec multi-task ranker: one version per trained model (docs/registry.md).")
        except MlflowException:
            client.get_registered_model(name)  # created meanwhile; anything else raises here


def version_by_alias(client: "mlflow.MlflowClient", name: str, alias: str) -> Any | None:
    """The ``ModelVersion`` of ``name`` holding ``alias``, None when no version holds it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise

"""What the registry checks before it points an alias at a version (issue 14; docs/registry.md, "Checks"):
a version's logged model must still be there.

:func:`artifacts_problem` looks for the version's ``MLmodel`` file and its ranker folder (``model.pt``,
``spec.json``) through MLflow's artifact repository (any store: a local folder, S3, an MLflow server),
without loading the model; promote, rollback and ``load_champion`` refuse a version it finds a problem
with, and ``adsrec models`` and ``adsrec doctor`` mark it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mlflow

RANKER_FILES = ("model.pt", "spec.json")


def _where(uri: str) -> str:
    """A local path for a ``file:`` URI (what a user can look at), the URI otherwise."""
    if uri.startswith("file:"):
        from mlflow.utils.file_utils import local_file_uri_to_path

        return local_file_uri_to_path(uri)
    return uri


def artifacts_problem(client: "mlflow.MlflowClient", name: str, version: int | str) -> str | None:
    """None when ``version``'s logged model has its ``MLmodel`` file and ranker folder; otherwise one
    phrase saying what is missing where ("artifacts are missing under <path> (no MLmodel file)"), to be
    prefixed with the version. Lists folders only: a few milliseconds on a local store."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from components.registry.packaged import RANKER_ARTIFACT

    try:
        uri = client.get_model_version_download_uri(name, str(version))
    except Exception as exc:  # noqa: BLE001 - any failure to resolve is the problem reported
        return f"artifact location cannot be resolved ({' '.join(str(exc).split())[:160]})"
    where = _where(uri)
    try:
        repo = get_artifact_repository(uri)
        top = {Path(f.path).name for f in repo.list_artifacts()}
        if "MLmodel" not in top:
            return f"artifacts are missing under {where} (no MLmodel file)"
        ranker = {Path(f.path).name for f in repo.list_artifacts(f"artifacts/{RANKER_ARTIFACT}")}
    except Exception as exc:  # noqa: BLE001 - an unreachable or unreadable store is the problem reported
        return f"artifacts under {where} cannot be listed ({' '.join(str(exc).split())[:160]})"
    missing = [f for f in RANKER_FILES if f not in ranker]
    if missing:
        return f"artifacts are missing under {where} (no {', '.join(missing)} in artifacts/{RANKER_ARTIFACT})"
    if uri.startswith("file:"):
        unreadable = [f for f in ("MLmodel", *(f"artifacts/{RANKER_ARTIFACT}/{r}" for r in RANKER_FILES))
                      if not _readable(Path(where) / f)]
        if unreadable:
            return f"artifacts under {where} are not readable by this user ({', '.join(unreadable)})"
    return None


def _readable(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.read(1)
        return True
    except OSError:
        return False


def refusal(name: str, version: int | str, problem: str, action: str) -> str:
    """The one line a refused promote/rollback/load prints: ``<name> version V's <problem>: <action>; ...``."""
    return f"{name} version {version}'s {problem}: {action}; re-register it (re-run its day) or pick another version"


def version_problems(client: "mlflow.MlflowClient", name: str, versions: list[Any]) -> dict[int, str]:
    """``{version: problem}`` for the ``ModelVersion`` objects whose artifacts are not all there."""
    out: dict[int, str] = {}
    for mv in versions:
        problem = artifacts_problem(client, name, mv.version)
        if problem is not None:
            out[int(mv.version)] = problem
    return out

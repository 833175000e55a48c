"""The registry's part of ``adsrec doctor`` (components/doctor.py): the database opens, every version's
logged model is there (components/registry/checks.py), every alias points at an existing version whose
model is there, and no run is left ``RUNNING`` by a killed process. Reads only.

Each check is a row ``(area, subject, ok, detail, repair)``.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from components.registry.checks import version_problems
from components.registry.client import RegistryError, check_store_opens, mlflow_client, store_exists

if TYPE_CHECKING:
    import mlflow

    from components.config import Settings

AREA = "registry"
Row = tuple[str, str, bool, str, str]


def registry_checks(settings: "Settings") -> list[Row]:
    """The registry rows of the doctor's table."""
    from mlflow.exceptions import MlflowException

    uri, name = settings.mlflow_tracking_uri, settings.registry.model_name
    if not store_exists(settings):
        return [(AREA, uri, True, "no registry yet (nothing registered)", "")]
    try:
        check_store_opens(settings)
        with mlflow_client(settings) as client:
            try:
                aliases = dict(client.get_registered_model(name).aliases or {})
            except MlflowException:
                return [(AREA, uri, True, f"database opens; no model {name!r} registered yet", "")]
            versions = client.search_model_versions(f"name = '{name}'")
            rows = [(AREA, uri, True, f"database opens; {len(versions)} versions of {name}", "")]
            rows += _version_rows(client, name, versions, aliases)
            rows += _running_rows(client, settings)
    except RegistryError as exc:
        return [(AREA, uri, False, str(exc), "restore mlflow.db from a backup, or wait for the lock's holder")]
    return rows


def _version_rows(client: "mlflow.MlflowClient", name: str, versions: list[Any],
                  aliases: dict[str, Any]) -> list[Row]:
    problems = version_problems(client, name, versions)
    known = {int(mv.version) for mv in versions}
    rows: list[Row] = [(AREA, f"{name} version {v}", False, problem,
                        "re-register it (re-run its day with --force); promote and rollback refuse it")
                       for v, problem in sorted(problems.items())]
    if versions and not problems:
        rows.append((AREA, f"{name} versions", True, f"artifacts of all {len(versions)} versions present", ""))
    for alias, version in sorted(aliases.items()):
        v = int(version)
        if v not in known:
            rows.append((AREA, f"alias {alias}", False, f"points at version {v}, which does not exist",
                         "point it at a version with artifacts (adsrec promote --version V) or delete the alias"))
        elif v in problems:
            rows.append((AREA, f"alias {alias}", False, f"points at version {v}, whose artifacts are missing",
                         "adsrec rollback, or adsrec promote --version V (a version with artifacts)"))
        else:
            rows.append((AREA, f"alias {alias}", True, f"version {v}", ""))
    return rows


def _running_rows(client: "mlflow.MlflowClient", settings: "Settings") -> list[Row]:
    """Runs still ``RUNNING``: left by a killed process unless a command is running now."""
    exp = client.get_experiment_by_name(settings.registry.experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
    rows: list[Row] = []
    for run in runs:
        started = dt.datetime.fromtimestamp(run.info.start_time / 1000, tz=dt.timezone.utc)
        rows.append((AREA, f"run {run.info.run_id}", False,
                     f"{run.info.run_name or 'run'} RUNNING since {started:%Y-%m-%d %H:%M} UTC: left by a killed "
                     "process unless a command runs now",
                     "mark it KILLED (MlflowClient().set_terminated(run_id, 'KILLED')) once no command runs"))
    if not runs:
        rows.append((AREA, f"experiment {settings.registry.experiment}", True, "no run left RUNNING", ""))
    return rows

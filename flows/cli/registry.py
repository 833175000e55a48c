"""``adsrec promote``, ``adsrec rollback`` and ``adsrec models``: the model registry from the command line
(components/registry/client.py does the work; docs/registry.md explains the rules).

Registered on the main app by ``flows/cli/main.py``; importing this module loads only typer.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Optional

import typer

from flows.cli.common import prepare_settings


def _call(fn: Callable[[], Any]) -> Any:
    """Run a registry call; its refusals and lookup failures become a red message and exit code 1."""
    from components.registry.client import RegistryError

    try:
        return fn()
    except (RegistryError, ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


def promote(
    version: Annotated[int, typer.Option("--version", "-v", min=1, help="the registered version to make champion")],
    force: Annotated[bool, typer.Option(help="promote even though its quality gates failed (needs --reason)")] = False,
    reason: Annotated[Optional[str], typer.Option(help="why; required with --force, recorded on the version")] = None,
) -> None:
    """Make a registered version the champion (the old champion becomes 'previous')."""
    from components.registry.aliases import promote as promote_version

    settings = prepare_settings()
    out = _call(lambda: promote_version(settings, version, force=force, reason=reason))
    if not out["changed"]:
        typer.echo(f"{out['model']} version {version} already is the champion; nothing changed")
        return
    forced = f" (FORCED: {out['reason']})" if out["forced"] else ""
    prev = f", previous: version {out['previous']}" if out["previous"] is not None else ""
    typer.secho(f"{out['model']}: champion is now version {out['champion']}{forced}{prev}", fg="green")


def rollback() -> None:
    """Make the previous champion the champion again (undoes the last promotion)."""
    from components.registry.aliases import rollback as rollback_champion

    settings = prepare_settings()
    out = _call(lambda: rollback_champion(settings))
    prev = f"version {out['previous']}" if out["previous"] is not None else "none"
    typer.secho(f"{out['model']}: rolled back version {out['rolled_back']}; champion is now version "
                f"{out['champion']}, previous: {prev}", fg="green")


def models() -> None:
    """The registered versions: aliases, gates, per-task AUC, data window, creation time, artifacts present."""
    from components.registry.aliases import list_versions, versions_table

    settings = prepare_settings()
    versions = _call(lambda: list_versions(settings))
    if not versions:
        typer.echo(f"no versions of {settings.registry.model_name} registered yet "
                   f"(registry: {settings.mlflow_tracking_uri})")
        return
    typer.echo(f"{settings.registry.model_name} ({settings.mlflow_tracking_uri})")
    typer.echo(versions_table(versions))
    for v in versions:
        if v.artifacts_problem:
            typer.secho(f"version {v.version}: {v.artifacts_problem} (promote and rollback refuse it)", fg="yellow")


def register(app: typer.Typer) -> None:
    """Add the registry commands to ``app``."""
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("models")(models)

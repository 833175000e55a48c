"""``adsrec up``, ``adsrec down`` and ``adsrec services``: the local Prefect UI, MLflow UI, GX Data Docs
and deployment server (flows/services.py does the work; docs/deployments.md explains them).

Registered on the main app by ``flows/cli/main.py``; importing this module loads only typer.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.common import prepare_settings


def up(
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="also start the MLflow UI")] = True,
    data_docs: Annotated[bool, typer.Option("--data-docs/--no-data-docs",
                                            help="also serve the Great Expectations Data Docs")] = True,
    serve: Annotated[bool, typer.Option("--serve/--no-serve",
                                        help="also start the scoring service (adsrec serve)")] = True,
    foreground: Annotated[bool, typer.Option("--foreground", help="stay attached; Ctrl-C stops everything")] = False,
    timeout: Annotated[float, typer.Option(min=10, help="seconds to wait for each service to answer")] = 180.0,
) -> None:
    """Start the Prefect server (UI) on 127.0.0.1, the MLflow UI, a server for the Great Expectations
    Data Docs and the deployment server (daily on its schedule, backfill, promote, rollback), in the
    background; adsrec down stops them."""
    from flows import services

    settings = prepare_settings()
    try:
        statuses = services.up(settings, mlflow=mlflow, data_docs=data_docs, timeout=timeout,
                               echo=typer.echo, serve=serve)
    except services.ServiceError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo("")
    typer.echo(services.describe(statuses))
    links = services.urls(settings)
    if not mlflow:
        links.pop("MLflow UI")
    if not data_docs:
        links.pop("Data Docs")
    if not serve:
        links.pop("Scoring")
    typer.echo("")
    for what, url in links.items():
        typer.echo(f"{what + ':':<13} {url}")
    typer.echo(f"\nlogs and PID files: {services.services_dir(settings)}")
    if not foreground:
        typer.echo("stop with: adsrec down")
        return
    typer.echo("running in the foreground; Ctrl-C (or SIGTERM) stops every service")
    import signal

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        services.watch(settings, echo=typer.echo)
    except KeyboardInterrupt:
        typer.echo("")
    finally:
        services.down(settings, echo=typer.echo)


def down(
    grace: Annotated[float, typer.Option(min=0, help="seconds between SIGTERM and SIGKILL")] = 20.0,
) -> None:
    """Stop what adsrec up started (deployment server, Data Docs, MLflow UI, Prefect server); safe when
    nothing runs."""
    from flows import services

    services.down(prepare_settings(), grace=grace, echo=typer.echo)


def services_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """What adsrec up started and whether it answers."""
    from flows import services

    statuses = services.status(prepare_settings())
    typer.echo(services.as_json(statuses) if json_out else services.describe(statuses))


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("services")(services_cmd)

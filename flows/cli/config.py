"""``adsrec config``: the resolved configuration (defaults <- YAML <- environment) with every field's
description, or as plain YAML with ``--yaml``. Registered on the main app by ``flows/cli/main.py``."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.common import load_settings_or_exit


def show_config(
    as_yaml: Annotated[bool, typer.Option("--yaml", help="only the values, as YAML (a config file to edit)")] = False,
) -> None:
    """Print the resolved configuration: every value (paths resolved: the MLflow URI, the Data Docs
    folder, ...) and what each field means. A bad key or value in the config file exits 2 naming it."""
    settings = load_settings_or_exit()
    if as_yaml:
        import yaml

        typer.echo(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
        return
    from components.config import render_settings

    typer.echo(render_settings(settings), nl=False)


def register(app: typer.Typer) -> None:
    """Add ``config`` to the main ``adsrec`` app."""
    app.command("config")(show_config)

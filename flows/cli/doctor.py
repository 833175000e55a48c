"""``adsrec doctor``: check a home end to end (components/doctor.py) and print what is wrong and what
would repair it; exit 1 when anything is. Registered on the main app by ``flows/cli/main.py``; importing
this module loads only typer.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.common import load_settings_or_exit


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="print the checks as JSON")] = False,
) -> None:
    """Check the home: partitions, manifests, vector stores, online store, registry versions and aliases."""
    import json

    from components.doctor import checks_table, run_checks

    settings = load_settings_or_exit()
    checks = run_checks(settings)
    problems = [c for c in checks if not c.ok]
    if as_json:
        typer.echo(json.dumps({"home": str(settings.home), "ok": not problems,
                               "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        typer.echo(f"adsrec doctor: {settings.home}")
        typer.echo(checks_table(checks))
        if problems:
            typer.secho(f"{len(problems)} problem(s) found; nothing was changed", fg="red", err=True)
        else:
            typer.secho("no problem found", fg="green")
    if problems:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``adsrec doctor`` to ``app``."""
    app.command("doctor")(doctor)

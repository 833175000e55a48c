"""What every ``adsrec`` command shares: loading the settings (a bad config exits 2 with one line),
preparing the process for a flow, running a flow so that any failure is one line and exit 1, and
printing a run summary. Imports no command module; loads only typer at import.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from components.config import Settings

DateOpt = Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="a UTC day, YYYY-MM-DD")]



def new_app(name: str, help: str, completion: bool = False) -> typer.Typer:
    """A Typer app as every ``adsrec`` app is made: help when called bare, plain tracebacks off (errors are
    one line), shell completion only on the main app."""
    return typer.Typer(name=name, help=help, no_args_is_help=True, add_completion=completion,
                       pretty_exceptions_enable=False)

def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(text.split())


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` in red on stderr and return the ``typer.Exit(code)`` to raise."""
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(code)


def load_settings_or_exit() -> "Settings":
    """The resolved settings (defaults <- YAML <- environment); a bad or missing config file exits 2
    with one line naming the problem."""
    from components.config import load_settings

    try:
        return load_settings().resolved()
    except (ValueError, FileNotFoundError) as exc:
        raise fail(one_line(str(exc)), 2) from None


def prepare_settings() -> "Settings":
    """:func:`load_settings_or_exit`, then point this process's tools (Prefect, MLflow, Hugging Face)
    at the home; while ``adsrec up`` runs for this home, runs report to its Prefect server."""
    from flows.runtime import configure_environment
    from flows.services import running_prefect_api_url

    settings = load_settings_or_exit()
    os.environ["ADSREC_HOME"] = str(settings.home)
    configure_environment(settings)
    # While `adsrec up` runs for this home, runs report to its server (seen in the UI, training slot honoured).
    if "PREFECT_API_URL" not in os.environ and (api_url := running_prefect_api_url(settings)):
        os.environ["PREFECT_API_URL"] = api_url
    return settings


def check_or_exit(check: Callable[[], Any]) -> Any:
    """Run an argument check (flows/cli/dates.py); its ``ValueError`` exits 2 with one line."""
    try:
        return check()
    except ValueError as exc:
        raise fail(one_line(str(exc)), 2) from None


def run_flow(flow_call: Callable[[], str]) -> str:
    """Run a flow; any failure exits 1 with ONE line on stderr. Data errors (``ValueError``, e.g. a
    failed ingest day, whose message names the file, the reason, the counts and the JSON report; a
    missing file) print their message; anything else its type too (Prefect's log above has the
    traceback, and the run summary under <home>/runs/ the error). The local Prefect database is migrated
    first, once, under a lock (flows/runtime.py), so two commands on a fresh home do not both migrate it."""
    from flows.runtime import ensure_prefect_database

    try:
        ensure_prefect_database()
        return flow_call()
    except (ValueError, FileNotFoundError) as exc:
        raise fail(one_line(str(exc))) from None
    except Exception as exc:  # noqa: BLE001 - the command must fail with a readable line, not a traceback
        raise fail(f"{type(exc).__name__}: {one_line(str(exc))}") from None


def print_run(summary_path: str) -> None:
    """Print the run summary written at ``summary_path`` and where it is."""
    import json

    from flows.report import render_summary

    typer.echo("")
    typer.echo(render_summary(json.loads(Path(summary_path).read_text())))
    typer.echo(f"\nrun summary: {summary_path}")

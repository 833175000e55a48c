"""The ``adsrec`` command line. Every command runs its Prefect flow locally (ephemeral API, no server).

Kept light at import: Prefect, pandas, Feast and friends load only inside commands, so
``adsrec --help`` answers at once.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from components.config import Settings

app = typer.Typer(
    name="adsrec",
    help="Raw ad impression logs to a quality-checked, registered multi-task ranking model, every day.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DateOpt = Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="a UTC day, YYYY-MM-DD")]


@app.callback()
def _global(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file")] = None,
    home: Annotated[Optional[Path], typer.Option("--home", help="state folder (default $ADSREC_HOME or ./.adsrec)")] = None,
) -> None:
    if config is not None:
        os.environ["ADSREC_CONFIG"] = str(config.expanduser().resolve())
    if home is not None:
        os.environ["ADSREC_HOME"] = str(home.expanduser().resolve())


def _settings() -> "Settings":
    from components.config import load_settings
    from flows.runtime import configure_environment

    try:
        settings = load_settings().resolved()
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    os.environ["ADSREC_HOME"] = str(settings.home)
    configure_environment(settings)
    from flows.services import running_prefect_api_url

    # While `adsrec up` runs for this home, runs report to its server (seen in the UI, training slot honoured).
    if "PREFECT_API_URL" not in os.environ and (api_url := running_prefect_api_url(settings)):
        os.environ["PREFECT_API_URL"] = api_url
    return settings


def _print_run(summary_path: str) -> None:
    import json

    from flows.report import render_summary

    typer.echo("")
    typer.echo(render_summary(json.loads(Path(summary_path).read_text())))
    typer.echo(f"\nrun summary: {summary_path}")


def _run(flow_call) -> str:  # noqa: ANN001 - a zero-arg callable running a flow
    """Run a flow; any failure exits 1 with ONE line on stderr. Data errors (``ValueError``, e.g. a
    failed ingest day, whose message names the file, the reason, the counts and the JSON report; a
    missing file) print their message; anything else its type too (Prefect's log above has the
    traceback, and the run summary under <home>/runs/ the error)."""
    try:
        return flow_call()
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {_one_line(str(exc))}", fg="red", err=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # noqa: BLE001 - the command must fail with a readable line, not a traceback
        typer.secho(f"error: {type(exc).__name__}: {_one_line(str(exc))}", fg="red", err=True)
        raise typer.Exit(1) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


@app.command()
def demo(
    days: Annotated[Optional[int], typer.Option(help="days in the window (default pipeline.demo_days)")] = None,
    restart: Annotated[bool, typer.Option(help="train on the first window again instead of the next day")] = False,
) -> None:
    """The main job on the embedded default: the daily retrain on the demo marketplace. The first run
    simulates and ingests the first window, trains, runs the quality gates and registers version 1 (its
    champion); each later run moves the window one day on and compares the new model with the champion."""
    from components.runs import StageManifest
    from components.steps import demo_window

    settings = _settings()
    n_days = days or settings.pipeline.demo_days
    window = demo_window(settings, n_days, restart=restart)
    run_date = window[-1]
    previous = StageManifest(settings, "register").days()
    if previous and not restart:
        typer.echo(f"continuing the demo: the previous run registered a model for {previous[-1]}")
    typer.echo(f"adsrec demo: source={settings.pipeline.source}, {window[0]} .. {run_date}, home={settings.home}")
    # The demo's training window is the demo window.
    os.environ["ADSREC_PIPELINE__TRAINING_DAYS"] = str(len(window))
    from flows.daily import daily

    _print_run(_run(lambda: daily(run_date=run_date)))
    from components.config import PROJECT_ROOT

    if settings.home == (PROJECT_ROOT / ".adsrec").resolve():
        typer.echo("\nFeast repository: cd feature_repo && feast apply && feast feature-views list")
    else:
        typer.echo(f"\nFeast repository: cd feature_repo && FEAST_FS_YAML_FILE_PATH={settings.feast_dir}/"
                   "feature_store.yaml feast feature-views list")
    typer.echo("Run `make demo` again to retrain on the next day and compare with the champion.")


@app.command("daily")
def daily_cmd(
    run_date: Annotated[Optional[dt.datetime], typer.Option("--run-date", formats=["%Y-%m-%d"],
                                                            help="default: yesterday (UTC)")] = None,
    force: Annotated[bool, typer.Option(help="re-run days even when their inputs did not change")] = False,
) -> None:
    """The daily pipeline for one run date (brings the training window up to date first)."""
    _settings()
    from flows.daily import daily

    _print_run(_run(lambda: daily(run_date=run_date.date() if run_date else None, force=force)))


@app.command()
def ingest(date: DateOpt, force: bool = False) -> None:
    """Deliver and ingest one day (valid rows land, rejects go to quarantine with a reason)."""
    _settings()
    from flows.pipeline import ingest_day

    _print_run(_run(lambda: ingest_day(run_date=date.date(), force=force)))


@app.command()
def features(date: DateOpt, force: bool = False) -> None:
    """Build one day's feature partitions from the offline store."""
    _settings()
    from flows.pipeline import build_features

    _print_run(_run(lambda: build_features(run_date=date.date(), force=force)))


@app.command("refresh-embeddings")
def refresh_embeddings_cmd(date: DateOpt, force: bool = False) -> None:
    """Refresh one day's pre-trained representations (text, visual, semantic IDs, graph, interests)."""
    _settings()
    from flows.pipeline import refresh_embeddings

    _print_run(_run(lambda: refresh_embeddings(run_date=date.date(), force=force)))


@app.command()
def backfill(
    start_date: DateOpt,
    end_date: DateOpt,
    concurrency: Annotated[int, typer.Option(min=1, max=8, help="days processed at once")] = 2,
    representations: Annotated[bool, typer.Option(help="also refresh the pre-trained representations")] = True,
    force: bool = False,
) -> None:
    """Deliver, ingest and build features for every day from start to end date (inclusive); days whose
    inputs did not change are skipped, so a repeated call changes nothing."""
    _settings()
    from flows.pipeline import backfill as backfill_flow

    _print_run(_run(lambda: backfill_flow(start_date=start_date.date(), end_date=end_date.date(),
                                          concurrency=concurrency, representations=representations,
                                          force=force)))


@app.command("config")
def show_config() -> None:
    """Print the resolved configuration (defaults <- YAML <- environment) as YAML."""
    import yaml

    from components.config import load_settings

    try:
        s = load_settings().resolved()
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False))


@app.command()
def runs(n: Annotated[int, typer.Option(help="how many")] = 5) -> None:
    """Show the latest run summaries."""
    from components.config import load_settings
    from components.runs import latest_summaries
    from flows.report import render_summary

    for s in latest_summaries(load_settings().resolved(), n):
        typer.echo(render_summary(s) + "\n")


# promote, rollback, models (flows/registry_cli.py; light at import)
from flows.registry_cli import register as _register_registry_commands  # noqa: E402

_register_registry_commands(app)

# adsrec analyze collapse|entanglement (flows/analyze_cli.py; light at import)
from flows.analyze_cli import analyze_app as _analyze_app  # noqa: E402

app.add_typer(_analyze_app, name="analyze")

# materialize, score (flows/serving_cli.py; light at import)
from flows.serving_cli import register as _register_serving_commands  # noqa: E402

_register_serving_commands(app)

# up, down, services (flows/services_cli.py; light at import)
from flows.services_cli import register as _register_services_commands  # noqa: E402

_register_services_commands(app)

# experiment NAME, experiment --list (flows/experiment_cli.py; light at import)
from flows.experiment_cli import register as _register_experiment_commands  # noqa: E402

_register_experiment_commands(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""``adsrec demo``, ``daily``, ``ingest``, ``features``, ``refresh-embeddings``, ``backfill`` and ``runs``:
the pipeline's flows from the command line (flows/pipeline.py, flows/daily.py run them).

Each command loads the config and checks its dates before Prefect is imported, so a bad config or date
fails at once with one line (exit 2). Registered on the main app by ``flows/cli/main.py``.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Annotated, Any, Optional

import typer

from flows.cli.common import (
    DateOpt,
    check_or_exit,
    load_settings_or_exit,
    prepare_settings,
    print_run,
    run_flow,
)
from flows.cli.dates import validate_date_range, validate_run_date, yesterday


def demo(
    days: Annotated[Optional[int], typer.Option(help="days in the window (default pipeline.demo_days)")] = None,
    restart: Annotated[bool, typer.Option(help="train on the first window again instead of the next day")] = False,
) -> None:
    """The main job on the embedded default: the daily retrain on the demo marketplace. The first run
    simulates and ingests the first window, trains, runs the quality gates and registers version 1 (its
    champion); each later run moves the window one day on and compares the new model with the champion."""
    from components.runs import StageManifest
    from components.steps import demo_window

    settings = prepare_settings()
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

    print_run(run_flow(lambda: daily(run_date=run_date)))
    from components.config import PROJECT_ROOT

    if settings.home == (PROJECT_ROOT / ".adsrec").resolve():
        typer.echo("\nFeast repository: cd feature_repo && feast apply && feast feature-views list")
    else:
        typer.echo(f"\nFeast repository: cd feature_repo && FEAST_FS_YAML_FILE_PATH={settings.feast_dir}/"
                   "feature_store.yaml feast feature-views list")
    typer.echo(next_demo_hint(settings))


def next_demo_hint(settings: Any) -> str:
    """What another ``make demo`` does: compare with the champion when there is one; otherwise say that
    none serves and how to make one (a failed gate's own lines above say which key to change)."""
    if not settings.registry.enabled:
        return "Run `make demo` again to retrain on the next day (the registry is off: registry.enabled)."
    from components.registry.aliases import champion

    try:
        current = champion(settings)
    except Exception as exc:  # a registry we cannot read: say so instead of guessing
        return f"Run `make demo` again to retrain on the next day (the registry could not be read: {exc})."
    if current is None:
        return ("Run `make demo` again to retrain on the next day. No champion yet: no version passed its gates, "
                "so none serves; `adsrec promote --version V --force --reason \"...\"` overrides them.")
    return (f"Run `make demo` again to retrain on the next day and compare the new model with the champion "
            f"(version {current.version}).")


def daily_cmd(
    run_date: Annotated[Optional[dt.datetime], typer.Option("--run-date", formats=["%Y-%m-%d"],
                                                            help="default: yesterday (UTC)")] = None,
    force: Annotated[bool, typer.Option(help="re-run days even when their inputs did not change")] = False,
) -> None:
    """The daily pipeline for one run date (brings the training window up to date first)."""
    settings = prepare_settings()
    day = run_date.date() if run_date else None
    check_or_exit(lambda: validate_run_date(settings, day or yesterday()))
    from flows.daily import daily

    print_run(run_flow(lambda: daily(run_date=day, force=force)))


def ingest(date: DateOpt, force: bool = False) -> None:
    """Deliver and ingest one day (valid rows land, rejects go to quarantine with a reason)."""
    settings = prepare_settings()
    check_or_exit(lambda: validate_run_date(settings, date.date()))
    from flows.pipeline import ingest_day

    print_run(run_flow(lambda: ingest_day(run_date=date.date(), force=force)))


def features(date: DateOpt, force: bool = False) -> None:
    """Build one day's feature partitions from the offline store."""
    settings = prepare_settings()
    check_or_exit(lambda: validate_run_date(settings, date.date()))
    from flows.pipeline import build_features

    print_run(run_flow(lambda: build_features(run_date=date.date(), force=force)))


def refresh_embeddings_cmd(date: DateOpt, force: bool = False) -> None:
    """Refresh one day's pre-trained representations (text, visual, semantic IDs, graph, interests)."""
    settings = prepare_settings()
    check_or_exit(lambda: validate_run_date(settings, date.date()))
    from flows.pipeline import refresh_embeddings

    print_run(run_flow(lambda: refresh_embeddings(run_date=date.date(), force=force)))


def backfill(
    start_date: DateOpt,
    end_date: DateOpt,
    concurrency: Annotated[int, typer.Option(min=1, max=8, help="days processed at once")] = 2,
    representations: Annotated[bool, typer.Option(help="also refresh the pre-trained representations")] = True,
    force: bool = False,
) -> None:
    """Deliver, ingest and build features for every day from start to end date (inclusive); days whose
    inputs did not change are skipped, so a repeated call changes nothing. A progress bar with an ETA
    counts the days' steps in a terminal (or with ADSREC_PROGRESS=1)."""
    settings = prepare_settings()
    check_or_exit(lambda: validate_date_range(settings, start_date.date(), end_date.date()))
    from flows.pipeline import backfill as backfill_flow

    print_run(run_flow(lambda: backfill_flow(start_date=start_date.date(), end_date=end_date.date(),
                                             concurrency=concurrency, representations=representations,
                                             force=force)))


def runs(n: Annotated[int, typer.Option(help="how many")] = 5) -> None:
    """Show the latest run summaries."""
    from components.runs import latest_summaries
    from flows.report import render_summary

    for s in latest_summaries(load_settings_or_exit(), n):
        typer.echo(render_summary(s) + "\n")


def register(app: typer.Typer) -> None:
    """Add the pipeline commands to the main ``adsrec`` app."""
    app.command()(demo)
    app.command("daily")(daily_cmd)
    app.command()(ingest)
    app.command()(features)
    app.command("refresh-embeddings")(refresh_embeddings_cmd)
    app.command()(backfill)
    app.command()(runs)

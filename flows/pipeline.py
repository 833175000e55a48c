"""Prefect flows of the daily pipeline's day-steps: ingest one day, build one day's features, refresh one
day's representations, backfill a range of days. Thin: parameters, ordering, summaries.

Every flow takes flat, typed parameters (dates render as date pickers in the Prefect UI) and reads the
rest of its configuration from ``load_settings`` (``ADSREC_HOME``, ``ADSREC_CONFIG``, ``ADSREC_*``).
The work itself is in ``components.steps`` (called by the tasks of ``flows/stages.py``); each day-step
is idempotent, so re-running a flow for the same dates changes nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from components import steps
from components.runs import RunSummary
from flows.stages import (deliver_task, features_task, ingest_task, record_stage, representations_task, run_days)
from flows.summaries import finish_run, flow_settings, summarised


def one_day_stage(flow_name: str, stage: str, stage_task: Any, run_date: dt.date, force: bool,
                   config_file: str | None) -> str:
    """A flow that runs one day-step for one day, with its run summary."""
    settings = flow_settings(config_file)
    summary = RunSummary(flow_name, {"run_date": run_date, "force": force})
    with summarised(settings, summary):
        record_stage(summary, stage, run_date, stage_task(settings, run_date, force))
    return finish_run(summary, settings)


@flow(name="ingest-day", task_runner=ThreadPoolTaskRunner(max_workers=8))
def ingest_day(run_date: dt.date, force: bool = False, config_file: str | None = None) -> str:
    """Deliver and ingest one day: validated rows land in the offline store, rejects in quarantine."""
    settings = flow_settings(config_file)
    summary = RunSummary("ingest_day", {"run_date": run_date, "force": force})
    with summarised(settings, summary):
        record_stage(summary, "deliver", run_date, deliver_task(settings, run_date, force))
        record_stage(summary, "ingest", run_date, ingest_task(settings, run_date, force))
    return finish_run(summary, settings)


@flow(name="build-features", task_runner=ThreadPoolTaskRunner(max_workers=8))
def build_features(run_date: dt.date, force: bool = False, config_file: str | None = None) -> str:
    """Compute one day's feature partitions (rolling stats, behaviour sequences, profiles)."""
    return one_day_stage("build_features", "features", features_task, run_date, force, config_file)


@flow(name="refresh-embeddings", task_runner=ThreadPoolTaskRunner(max_workers=8))
def refresh_embeddings(run_date: dt.date, force: bool = False, config_file: str | None = None) -> str:
    """Refresh the pre-trained representations of one day: text and visual vectors of new or changed
    ads, visual semantic IDs, the LightGCN graph, user interest vectors (after the day's features)."""
    return one_day_stage("refresh_embeddings", "representations", representations_task, run_date, force,
                          config_file)


@flow(name="backfill", task_runner=ThreadPoolTaskRunner(max_workers=8))
def backfill(start_date: dt.date, end_date: dt.date, concurrency: int = 2, representations: bool = True,
             force: bool = False, config_file: str | None = None) -> str:
    """Deliver, ingest and build features (and, with ``representations``, refresh the pre-trained
    representations) for every day from start_date to end_date (inclusive).

    Idempotent: days whose inputs did not change are skipped, so a second identical call changes
    nothing. ``concurrency`` bounds how many days are processed at once (at most 8).
    """
    settings = flow_settings(config_file)
    days = steps.date_range(start_date, end_date)
    summary = RunSummary("backfill", {"start_date": start_date, "end_date": end_date,
                                      "concurrency": concurrency, "representations": representations,
                                      "force": force})
    with summarised(settings, summary):
        run_days(settings, days, max(1, min(concurrency, 8)), force, summary, representations)
    return finish_run(summary, settings)

"""The daily retrain flow: ingest -> features -> representations -> training set -> train -> evaluate
against the champion on the newest day -> quality gates -> register in MLflow -> (by config) promote ->
materialise the online store.

Each step is idempotent (components.steps, components.registry.gate_and_register), so a re-run after a failure continues from
the first step whose inputs changed or whose output is missing; earlier outputs are left intact. I/O steps
(deliver, ingest, registration) retry.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from components import steps
from components.config import Settings
from components.runs import RunSummary
from flows.stages import record_stage, run_days, train_task, training_set_task
from flows.summaries import finish_run, flow_settings, summarised


@task(name="gates-and-register", task_run_name="gates-and-register-{end_day}", cache_policy=NO_CACHE,
      retries=1, retry_delay_seconds=5)
def gates_task(settings: Settings, end_day: dt.date, train_result: dict[str, Any], training_set_path: str,
               days: list[dt.date], force: bool = False) -> dict[str, Any]:
    from components.registry.gate_and_register import assess_and_register

    logger = get_run_logger()
    from flows.services import data_docs_url, mlflow_url, prefect_ui_url

    result = assess_and_register(settings, end_day, train_result, training_set_path, days, force=force)
    result["ui"] = {"mlflow": mlflow_url(settings), "prefect": prefect_ui_url(settings),  # for the summary
                    "data_docs": data_docs_url(settings)}
    logger.info(f"quality gates for {end_day}:\n{result['gate_table']}")
    reg = result.get("registered")
    if reg:
        aliases = ", ".join(reg.get("aliases") or []) or "no alias"
        logger.info(f"registered {reg['name']} version {reg['version']} ({aliases})"
                    + (", promoted to champion" if result.get("promoted") else ""))
    from flows.artifacts import publish_gate_artifacts, publish_quietly

    # In the Prefect UI now, even if a later step fails: the summary markdown, the metrics and gate tables.
    publish_quietly(publish_gate_artifacts, result, settings, "daily")
    return result


@task(name="materialize", task_run_name="materialize-{end_day}", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=2)
def materialize_task(settings: Settings, end_day: dt.date) -> dict[str, Any]:
    from components.serving.online_store import materialize_online

    result = materialize_online(settings, end_day)
    get_run_logger().info(f"online store: feature values as of {result.get('as_of')} "
                          f"({result.get('seconds', 0):.1f} s)")
    return result


@flow(name="daily", task_runner=ThreadPoolTaskRunner(max_workers=8))
def daily(run_date: dt.date | None = None, force: bool = False, config_file: str | None = None) -> str:
    """The daily retrain for ``run_date`` (default: yesterday, UTC): bring every day of the training
    window up to date (deliver, ingest, features, representations; unchanged days are skipped), build the
    point-in-time training set, train the configured ranker on all but the newest day, evaluate it there
    next to the champion and (on the simulator) the oracle, run the quality gates, register the version
    (``challenger`` when every gate passes), apply ``registry.auto_promote``, and load the run date's
    feature values into the Feast online store for ``adsrec score``."""
    settings = flow_settings(config_file)
    run_date = run_date or (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1))
    days = steps.training_window(settings, run_date)
    summary = RunSummary("daily", {"run_date": run_date, "force": force})
    with summarised(settings, summary):
        run_days(settings, days, settings.pipeline.backfill_concurrency, force, summary)
        built = training_set_task(settings, run_date, len(days))
        record_stage(summary, "training_set", run_date, built)
        if settings.training.enabled:
            trained = train_task(settings, run_date, built["path"], force)
            record_stage(summary, "train", run_date, trained)
            gated = gates_task(settings, run_date, trained, built["path"], days, force)
            record_stage(summary, "gates", run_date, gated)
        # Serving reads the newest features from Feast's online store (adsrec score).
        record_stage(summary, "materialize", run_date, materialize_task(settings, run_date))
    return finish_run(summary, settings)

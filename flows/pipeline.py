"""Prefect flows of the daily pipeline. Thin: parameters, ordering, retries, summaries.

Every flow takes flat, typed parameters (dates render as date pickers in the Prefect UI) and reads the
rest of its configuration from ``load_settings`` (``ADSREC_HOME``, ``ADSREC_CONFIG``, ``ADSREC_*``).
The work itself is in ``components.steps``; each day-step is idempotent, so re-running a flow for the
same dates changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from components import steps
from components.config import Settings, load_settings
from components.representations.refresh import representations_summary
from components.runs import RunSummary
from flows.report import fmt_share


def _settings(config_file: str | None) -> Settings:
    return load_settings(config_file).resolved()


def _describe(stage: str, day: dt.date, result: dict[str, Any]) -> str:
    if result.get("skipped"):
        return f"{stage} {day}: unchanged inputs, skipped"
    if stage == "deliver":
        rows = result.get("rows", {})
        return f"deliver {day}: " + ", ".join(f"{t} {n:,}" for t, n in rows.items())
    if stage == "ingest":
        tables = result.get("tables", {})
        parts = [
            f"{t} {r.get('rows_landed', 0):,} landed / {r.get('rows_quarantined', 0):,} quarantined"
            for t, r in tables.items()
        ]
        return f"ingest {day}: " + "; ".join(parts)
    if stage == "features":
        return f"features {day}: " + ", ".join(f"{v} {n:,}" for v, n in result.get("rows", {}).items())
    if stage == "representations":
        r = representations_summary(result)
        return (f"representations {day}: encoded text {r['text_encoded']}, images {r['visual_encoded']}; "
                f"codebook usage {fmt_share(r['codebook_usage'])}, collision rate {fmt_share(r['collision_rate'])}; "
                f"graph edges {r['graph_edges']}")
    return f"{stage} {day}: done"


def retry_on_io_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry I/O failures only. A data error (a ``ValueError`` such as
    ``IngestDayFailed``, a missing raw file) fails the same way on every try, so it is not retried."""
    try:
        state.result()
    except (FileNotFoundError, ValueError):
        return False
    except OSError:
        return True
    except Exception as exc:  # noqa: BLE001 - DuckDB reports I/O as duckdb.IOException
        return type(exc).__name__ in ("IOException", "TimeoutError")
    return False


def _stage_task(stage: str):
    """One Prefect task per stage; I/O stages retry I/O errors (never data errors)."""
    fn = {"deliver": steps.deliver_day, "ingest": steps.ingest, "features": steps.features,
          "representations": steps.representations}[stage]

    @task(name=stage, retries=2 if stage in ("deliver", "ingest") else 0, retry_delay_seconds=2,
          retry_condition_fn=retry_on_io_error, task_run_name=f"{stage}-{{day}}", cache_policy=NO_CACHE)
    def run(settings: Settings, day: dt.date, force: bool = False) -> dict[str, Any]:
        import time

        t0 = time.perf_counter()
        result = fn(settings, day, force=force)
        result["seconds"] = round(time.perf_counter() - t0, 3)
        get_run_logger().info(_describe(stage, day, result) + f" ({result['seconds']:.1f} s)")
        return result

    return run


deliver_task = _stage_task("deliver")
ingest_task = _stage_task("ingest")
features_task = _stage_task("features")
representations_task = _stage_task("representations")


@task(name="training-set", task_run_name="training-set-{end_day}", cache_policy=NO_CACHE)
def training_set_task(settings: Settings, end_day: dt.date, days: int) -> dict[str, Any]:
    import time

    t0 = time.perf_counter()
    result = steps.training_set(settings, end_day, days)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    get_run_logger().info(f"training set for {days} days to {end_day}: {result['path']} ({result['seconds']:.1f} s)")
    return result


@task(name="train", task_run_name="train-{end_day}", cache_policy=NO_CACHE)
def train_task(settings: Settings, end_day: dt.date, training_set_path: str, force: bool = False) -> dict[str, Any]:
    import time

    logger = get_run_logger()

    def progress(event: dict[str, Any]) -> None:
        if event.get("event") == "epoch":
            auc = {t: round(a, 4) for t, a in (event.get("valid_auc") or {}).items()}
            logger.info(f"epoch {event['epoch']}: train loss {event['train_loss']:.4f}, validation AUC {auc}, "
                        f"{event['samples_per_s']:,.0f} samples/s")
        else:
            logger.info(f"epoch {event['epoch']} step {event['step']}: loss {event['loss']:.4f}, "
                        f"{event['samples_per_s']:,.0f} samples/s")

    from flows.concurrency import training_slot

    t0 = time.perf_counter()
    # One training run at a time on this Prefect API (a backfill and the schedule share the GPU and store).
    with training_slot(settings):
        result = steps.train(settings, end_day, training_set_path, force=force, progress=progress)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    tr = result.get("training", {})
    done = "unchanged, skipped" if result.get("skipped") else f"{result['seconds']:.1f} s"
    logger.info(
        f"trained {result.get('arch')} to {end_day}: {tr.get('epochs')} epochs, "
        f"{tr.get('samples_per_s', 0):,.0f} samples/s; validation AUC {tr.get('valid_auc')} ({done})"
    )
    return result


def _record(summary: RunSummary, stage: str, day: dt.date | None, result: dict[str, Any]) -> None:
    rec: dict[str, Any] = {"stage": stage, "day": day, "seconds": result.get("seconds"),
                           "skipped": bool(result.get("skipped"))}
    if stage == "deliver":
        rec["rows"] = result.get("rows")
    elif stage == "ingest":
        rec["tables"] = {
            t: {k: r.get(k) for k in ("rows_in", "rows_landed", "rows_quarantined", "reasons")}
            for t, r in result.get("tables", {}).items()
        }
        rec["expectations_passed"] = result.get("expectations_passed")
    elif stage == "features":
        rec["rows"] = result.get("rows")
    elif stage == "representations":
        rec.update(representations_summary(result))
    else:
        rec.update({k: v for k, v in result.items() if k != "seconds"})
    summary.add(rec)


def _run_days(settings: Settings, days: list[dt.date], concurrency: int, force: bool,
              summary: RunSummary, representations: bool = True) -> None:
    """Deliver in date order, then ingest and build features in waves of ``concurrency`` days.

    Features of day D read the rolling window up to D, so a wave's features start only after every
    earlier day and the wave's own days are ingested. Representations (optional) follow, one day at a
    time in date order.
    """
    for day in days:
        _record(summary, "deliver", day, deliver_task(settings, day, force))
    for i in range(0, len(days), concurrency):
        wave = days[i : i + concurrency]
        ingested = [ingest_task.submit(settings, d, force) for d in wave]
        for d, fut in zip(wave, ingested):
            _record(summary, "ingest", d, fut.result())
        built = [features_task.submit(settings, d, force) for d in wave]
        for d, fut in zip(wave, built):
            _record(summary, "features", d, fut.result())
    if representations:
        # In date order: the graph of day D warm-starts from D-1, and the vector stores are shared.
        for day in days:
            _record(summary, "representations", day, representations_task(settings, day, force))


def _link_data_docs(summary: RunSummary, settings: Settings) -> dict[str, Any] | None:
    """Give every ingest record of the run the Data Docs link (the days' GX results are there); None
    when the run ingested nothing."""
    ingests = [st for st in summary.stages if st.get("stage") == "ingest"]
    if not ingests:
        return None
    from flows.services import data_docs_url
    from validation.gx_project import data_docs_index

    index = data_docs_index(settings.gx_dir)
    docs = {"index": str(index), "exists": index.is_file(), "url": data_docs_url(settings)}
    for st in ingests:
        st["data_docs"] = docs
    return docs


def _finish(summary: RunSummary, settings: Settings) -> str:
    from flows.report import render_summary

    summary.status = "completed"
    docs = _link_data_docs(summary, settings)
    path = summary.write(settings)
    text = render_summary(summary.to_dict())
    try:
        create_markdown_artifact(markdown=f"```\n{text}\n```", key=summary.flow.replace("_", "-"),
                                 description=f"adsrec {summary.flow} summary")
        if docs and docs["exists"]:
            create_link_artifact(link=docs["url"], link_text="Great Expectations Data Docs",
                                 key=f"{summary.flow.replace('_', '-')}-data-docs",
                                 description=f"the ingested days' validation results (`adsrec up` serves them); "
                                             f"file: {docs['index']}")
    except Exception:  # artifacts need an API; a summary must never fail a finished run
        pass
    get_run_logger().info(f"run summary written to {path}")
    return str(path)


@contextmanager
def _summarised(settings: Settings, summary: RunSummary) -> Iterator[RunSummary]:
    """A failing run still leaves its summary (what finished, and the error) under runs/."""
    try:
        yield summary
    except BaseException as exc:
        summary.status = "failed"
        summary.error = f"{type(exc).__name__}: {exc}"
        summary.write(settings)
        raise


def _one_day_stage(flow_name: str, stage: str, stage_task: Any, run_date: dt.date, force: bool,
                   config_file: str | None) -> str:
    """A flow that runs one day-step for one day, with its run summary."""
    settings = _settings(config_file)
    summary = RunSummary(flow_name, {"run_date": run_date, "force": force})
    with _summarised(settings, summary):
        _record(summary, stage, run_date, stage_task(settings, run_date, force))
    return _finish(summary, settings)


@flow(name="ingest-day", task_runner=ThreadPoolTaskRunner(max_workers=8))
def ingest_day(run_date: dt.date, force: bool = False, config_file: str | None = None) -> str:
    """Deliver and ingest one day: validated rows land in the offline store, rejects in quarantine."""
    settings = _settings(config_file)
    summary = RunSummary("ingest_day", {"run_date": run_date, "force": force})
    with _summarised(settings, summary):
        _record(summary, "deliver", run_date, deliver_task(settings, run_date, force))
        _record(summary, "ingest", run_date, ingest_task(settings, run_date, force))
    return _finish(summary, settings)


@flow(name="build-features", task_runner=ThreadPoolTaskRunner(max_workers=8))
def build_features(run_date: dt.date, force: bool = False, config_file: str | None = None) -> str:
    """Compute one day's feature partitions (rolling stats, behaviour sequences, profiles)."""
    return _one_day_stage("build_features", "features", features_task, run_date, force, config_file)


@flow(name="refresh-embeddings", task_runner=ThreadPoolTaskRunner(max_workers=8))
def refresh_embeddings(run_date: dt.date, force: bool = False, config_file: str | None = None) -> str:
    """Refresh the pre-trained representations of one day: text and visual vectors of new or changed
    ads, visual semantic IDs, the LightGCN graph, user interest vectors (after the day's features)."""
    return _one_day_stage("refresh_embeddings", "representations", representations_task, run_date, force,
                          config_file)


@flow(name="backfill", task_runner=ThreadPoolTaskRunner(max_workers=8))
def backfill(start_date: dt.date, end_date: dt.date, concurrency: int = 2, representations: bool = True,
             force: bool = False, config_file: str | None = None) -> str:
    """Deliver, ingest and build features (and, with ``representations``, refresh the pre-trained
    representations) for every day from start_date to end_date (inclusive).

    Idempotent: days whose inputs did not change are skipped, so a second identical call changes
    nothing. ``concurrency`` bounds how many days are processed at once (at most 8).
    """
    settings = _settings(config_file)
    days = steps.date_range(start_date, end_date)
    summary = RunSummary("backfill", {"start_date": start_date, "end_date": end_date,
                                      "concurrency": concurrency, "representations": representations,
                                      "force": force})
    with _summarised(settings, summary):
        _run_days(settings, days, max(1, min(concurrency, 8)), force, summary, representations)
    return _finish(summary, settings)

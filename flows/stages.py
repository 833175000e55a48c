"""The Prefect tasks of the pipeline's steps and the runner that brings a list of days up to date.

One task per day-step (deliver, ingest, features, representations; I/O steps retry I/O errors only),
the training-set and train tasks, :func:`record_stage` (what a run summary keeps of a step's result)
and :func:`run_days` (deliver, then ingest and features in waves, then representations, under a
progress bar). Shared by the flows of ``flows/pipeline.py`` and ``flows/daily.py``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components import steps
from components.config import Settings
from components.progress import progress_bar
from components.representations.refresh import representations_summary
from components.runs import RunSummary
from flows.report import fmt_share


def describe_stage(stage: str, day: dt.date, result: dict[str, Any]) -> str:
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


def stage_task(stage: str):
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
        get_run_logger().info(describe_stage(stage, day, result) + f" ({result['seconds']:.1f} s)")
        return result

    return run


deliver_task = stage_task("deliver")
ingest_task = stage_task("ingest")
features_task = stage_task("features")
representations_task = stage_task("representations")


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


def record_stage(summary: RunSummary, stage: str, day: dt.date | None, result: dict[str, Any]) -> None:
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


def run_days(settings: Settings, days: list[dt.date], concurrency: int, force: bool,
             summary: RunSummary, representations: bool = True) -> None:
    """Deliver in date order, then ingest and build features in waves of ``concurrency`` days.

    Features of day D read the rolling window up to D, so a wave's features start only after every
    earlier day and the wave's own days are ingested. Representations (optional) follow, one day at a
    time in date order. A progress bar with an ETA counts the day-steps (components/progress.py: on a
    terminal or with ``ADSREC_PROGRESS=1``).
    """
    per_day = 4 if representations else 3
    with progress_bar(len(days) * per_day, f"{len(days)} day(s) {days[0]}..{days[-1]}" if days else "days",
                      unit="step") as bar:

        def done(stage: str, day: dt.date, result: dict[str, Any]) -> None:
            record_stage(summary, stage, day, result)
            bar.set_postfix_str(f"{stage} {day}")
            bar.update(1)

        for day in days:
            done("deliver", day, deliver_task(settings, day, force))
        for i in range(0, len(days), concurrency):
            wave = days[i : i + concurrency]
            ingested = [ingest_task.submit(settings, d, force) for d in wave]
            for d, fut in zip(wave, ingested):
                done("ingest", d, fut.result())
            built = [features_task.submit(settings, d, force) for d in wave]
            for d, fut in zip(wave, built):
                done("features", d, fut.result())
        if representations:
            # In date order: the graph of day D warm-starts from D-1, and the vector stores are shared.
            for day in days:
                done("representations", day, representations_task(settings, day, force))

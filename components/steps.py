"""The daily pipeline's steps as plain functions (no Prefect): what a flow task calls.

Each day-step is idempotent: it fingerprints its inputs and configuration, skips when the day's last
run had the same fingerprint (changing nothing on disk), and otherwise replaces that day's outputs.
``force=True`` runs it regardless. ``ingest`` and ``features`` never skip a day without its commit
marker (components/store/days.py): a run killed half-way through the day is re-done.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.config import Settings
from components.faults import declare, fault_point
from components.runs import StageManifest, files_under, fingerprint_files
from components.schemas import TABLES, day_dir

declare("representations.before_manifest")


def window_days(end_day: dt.date, days: int) -> list[dt.date]:
    """The ``days`` days ending with ``end_day``, oldest first."""
    return [end_day - dt.timedelta(days=i) for i in range(days - 1, -1, -1)]


def date_range(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise ValueError(f"end date {end} is before start date {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def training_window(settings: Settings, end_day: dt.date) -> list[dt.date]:
    """The days of the training window ending ``end_day``, clipped to the days the source has."""
    first, last = _source(settings).available_days()
    if not first <= end_day <= last:
        raise ValueError(f"source {settings.pipeline.source!r} has data from {first} to {last}; "
                         f"{end_day} is outside it")
    return [d for d in window_days(end_day, settings.pipeline.training_days) if d >= first]


def demo_window(settings: Settings, days: int, restart: bool = False) -> list[dt.date]:
    """The demo's window: the first ``days`` days the source has; once a demo has registered a model
    (``manifests/register``), the ``days`` days ending the day after the newest registered one, so each
    ``make demo`` retrains on the next day against the previous model as champion. ``restart``: the
    first window again. The source's last day is the limit."""
    from components.runs import StageManifest

    first, last = _source(settings).available_days()
    end = min(last, first + dt.timedelta(days=days - 1))
    registered = [] if restart else StageManifest(settings, "register").days()
    if registered:
        end = min(last, max(end, registered[-1] + dt.timedelta(days=1)))
    return date_range(max(first, end - dt.timedelta(days=days - 1)), end)


def _landed_up_to(settings: Settings, table: str, day: dt.date) -> list[Path]:
    """Every landed file of ``table`` in day partitions up to and including ``day``."""
    from components.store.sql import day_partitions

    return [p for _, part in day_partitions(settings.offline_dir / table, end=day) for p in files_under(part)]


def _committed(root: Path, day: dt.date) -> bool:
    """Whether ``day`` of the store ``root`` has its commit marker (or the store has none yet); logs a
    half-written day that the step is about to re-do."""
    from components.store.days import is_committed
    from components.store.sql import half_written_message

    if is_committed(root, day):
        return True
    import logging

    logging.getLogger(__name__).warning("%s; re-doing it", half_written_message(root, day))
    return False


def _source(settings: Settings):
    from components.sources import get_source

    return get_source(settings)


def deliver_day(settings: Settings, day: dt.date, force: bool = False) -> dict[str, Any]:
    """Have the configured source drop the day's raw files into the landing zone."""
    source = _source(settings)
    first, last = source.available_days()
    if not first <= day <= last:
        raise ValueError(f"source {source.name!r} has data from {first} to {last}; {day} is outside it")
    manifest = StageManifest(settings, f"deliver-{source.name}")
    config = {
        "source": source.name,
        "simulator": settings.simulator.model_dump(mode="json") if source.name == "simulator" else None,
        # the files source: its mapping and its input files' identity, so a changed log re-delivers
        "inputs": source.input_fingerprint() if hasattr(source, "input_fingerprint") else None,
    }
    raw_root = settings.raw_dir / source.name
    raw_files = [p for t in TABLES for p in files_under(day_dir(raw_root, t, day))]
    if (not force and raw_files and manifest.is_current(day, fingerprint_files(raw_files, config))
            and _committed(raw_root, day)):
        return {**manifest.read(day)["result"], "skipped": True}  # type: ignore[index]
    rows = source.deliver(day)
    raw_files = [p for t in TABLES for p in files_under(day_dir(raw_root, t, day))]
    result = {"skipped": False, "rows": rows}
    manifest.record(day, fingerprint_files(raw_files, config), result)
    return result


def ingest(settings: Settings, day: dt.date, force: bool = False) -> dict[str, Any]:
    """Validate the day's raw files and land them in the offline store (quarantining rejects).

    Raises ``components.ingest.report.IngestDayFailed`` (a ``ValueError``: a data error, never retried) with a
    one-line message when the day fails (docs/ingestion.md, 'When a day fails'); a failed day is never
    recorded as done, so the next run ingests it again."""
    from components.ingest.day import ingest_day
    from components.store.days import require_day

    source = _source(settings)
    raw_root = settings.raw_dir / source.name
    require_day(raw_root, day, f"`adsrec deliver --date {day}` again")  # a delivery cut short: not half a day
    raw_files = [p for t in TABLES for p in files_under(day_dir(raw_root, t, day))]
    if not raw_files:
        raise FileNotFoundError(
            f"no raw files for {day} under {raw_root}/<table>/date={day.isoformat()}/; deliver the day first"
        )
    config = {"tasks": list(source.tasks), "ingest": settings.ingest.model_dump(mode="json")}
    fp = fingerprint_files(raw_files, config)
    manifest = StageManifest(settings, "ingest")
    if not force and manifest.is_current(day, fp) and _committed(settings.offline_dir, day):
        return {**manifest.read(day)["result"], "skipped": True}  # type: ignore[index]
    report = ingest_day(settings, source.name, day, source.tasks)
    if report.failed:
        from components.ingest.report import IngestDayFailed

        if not report.kept_previous:  # the day's partitions now hold this delivery: never skip it as done
            manifest.forget(day)
        raise IngestDayFailed(report)
    result = report.to_dict()
    manifest.record(day, fp, result)
    return {"skipped": False, **result}


def features(settings: Settings, day: dt.date, force: bool = False) -> dict[str, Any]:
    """Compute the day's feature partitions from the offline store (looks back over the rolling windows)."""
    from components.store.days import require_day
    from components.store.features import build_features, impressions_landed, lookback_days

    source = _source(settings)
    require_day(settings.offline_dir, day, f"`adsrec ingest --date {day}` again")
    lookback = lookback_days(settings) + 1  # the build reads days [day - lookback_days, day]
    inputs = [p for d in window_days(day, lookback) for p in files_under(day_dir(settings.offline_dir, "impressions", d))]
    if not impressions_landed(settings, day):
        raise FileNotFoundError(f"no ingested impressions for {day}; ingest the day first")
    # Ads and users landed on any earlier day are profile inputs too (latest row per id wins).
    inputs += _landed_up_to(settings, "ads", day) + _landed_up_to(settings, "users", day)
    config = {"tasks": list(source.tasks), "features": settings.features.model_dump(mode="json"),
              "sequence_task": settings.representations.behaviour_task}
    fp = fingerprint_files(inputs, config)
    manifest = StageManifest(settings, "features")
    if not force and manifest.is_current(day, fp) and _committed(settings.features_dir, day):
        return {**manifest.read(day)["result"], "skipped": True}  # type: ignore[index]
    rows = build_features(settings, day, source.tasks)
    result = {"rows": rows}
    manifest.record(day, fp, result)
    return {"skipped": False, **result}


def training_set(settings: Settings, end_day: dt.date, days: int | None = None) -> dict[str, Any]:
    """Point-in-time training set for the window ending ``end_day``."""
    from components.training.training_set import build_training_set, training_set_meta

    source = _source(settings)
    n = days or settings.pipeline.training_days
    path = build_training_set(settings, end_day, n, source.tasks)
    meta = training_set_meta(path)
    return {"path": str(path), "days": n, "meta": meta}


def representations(settings: Settings, day: dt.date, force: bool = False) -> dict[str, Any]:
    """Refresh pre-trained representations as of ``day``: text and visual vectors of new or changed ads,
    visual semantic IDs, the LightGCN graph over the click window, user interest vectors; written as
    feature-view partitions of the day."""
    from components.store.features import impressions_landed
    from components.representations.refresh import refresh_representations

    # The click window (plus one partition of late events), the day's behaviour sequences (interest
    # vectors) and the graph it warm-starts from.
    inputs = [p for d in window_days(day, settings.representations.graph_window_days + 1)
              for p in files_under(day_dir(settings.offline_dir, "impressions", d))]
    inputs += files_under(day_dir(settings.features_dir, "user_sequence", day))
    inputs += [p for d in window_days(day - dt.timedelta(days=1), settings.representations.graph_window_days)
               for p in files_under(settings.embeddings_dir / "graph" / f"date={d.isoformat()}")]
    if not impressions_landed(settings, day):
        raise FileNotFoundError(f"no ingested impressions for {day}; ingest the day first")
    inputs += _landed_up_to(settings, "ads", day)
    config = {"representations": settings.representations.model_dump(mode="json"),
              "features": settings.features.model_dump(mode="json")}
    fp = fingerprint_files(inputs, config)
    manifest = StageManifest(settings, "representations")
    if not force and manifest.is_current(day, fp):
        return {**manifest.read(day)["result"], "skipped": True}  # type: ignore[index]
    import sys

    manifest.forget(day)  # a run cut short (even a forced re-run of a done day) is re-done, never skipped
    # Encoding the first day's catalogue takes a minute on 2 cores: show bars when a person is watching.
    report = refresh_representations(settings, day, progress=sys.stderr.isatty())
    report["stage_seconds"] = report.pop("seconds", {})  # "seconds" is the step's wall time in summaries
    fault_point("representations.before_manifest")
    manifest.record(day, fp, report)
    return {**report, "skipped": False}


def train(settings: Settings, end_day: dt.date, training_set_path: str, force: bool = False,
          progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train and evaluate the configured ranker on the window's training set (skipped when neither
    the training set nor the training configuration changed), inside the model's MLflow run
    (components/registry/training_run.py; the result's ``mlflow_run``) when the registry is enabled."""
    from components.registry.training_run import tracked_training
    from components.training.train_day import train_and_evaluate

    source = _source(settings)
    path = Path(training_set_path)
    config = {"training": settings.training.model_dump(mode="json"), "tasks": list(source.tasks)}
    fp = fingerprint_files([path], config)
    manifest = StageManifest(settings, "train")
    if not force and manifest.is_current(end_day, fp):
        return {**manifest.read(end_day)["result"], "skipped": True}  # type: ignore[index]
    # The model's MLflow run opens now (not for a skipped step): it logs the epochs as they end and is
    # ended by the registration, or FAILED here when training fails.
    with tracked_training(settings, end_day, path) as run:
        result = train_and_evaluate(settings, end_day, path, tuple(source.tasks), progress=progress, run=run)
    manifest.record(end_day, fp, result)
    return {**result, "skipped": False}

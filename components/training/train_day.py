"""Train the configured ranker on a point-in-time training set and evaluate it on an untouched newest day.

The daily run's model step. The window splits three ways by UTC day (components/training/encoders.py
``window_split``): the newest ``training.test_days`` days test, the ``training.valid_days`` days before
them validate, the rest train. Fit the repeated-exposure propensity on the window's impressions (IPW
weights for positives on repeated exposures; the propensity's history label is ``training.ipw_task``,
default the first task; skipped with a message when the window has no repeated exposure or the task no
positive), train with early stopping on the validation days (a window of few rows trains on smaller
batches: :func:`small_data`, ``training.min_steps_per_epoch``), then score the test days, which neither
training nor early stopping saw: every task's AUC with its bootstrap interval over users, the slices and,
on the simulator, the oracle AUC. A task without a positive among the training rows fails the step with a
message naming it. The model and its evaluation are saved under ``<home>/models/<end day>/``;
components/registry/gate_and_register.py then gates and registers it (docs/gates.md).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.config import Settings

log = logging.getLogger(__name__)

MIN_BATCH = 64  # the small-data rule never trains on batches smaller than this


def ipw_skip_reason(impressions: Any, task: str) -> str | None:
    """Why repeated-exposure IPW cannot apply to ``impressions``, or None when it can: no repeated
    exposure in the log (every ``exposure_index`` is 1: nothing to re-weight), or no positive of
    ``task`` (the propensity's history label: the re-exposure policy reacts to its positives)."""
    import pyarrow.compute as pc

    if impressions.num_rows == 0:
        return "the window has no impressions"
    top = pc.max(impressions.column("exposure_index")).as_py()
    if top is None or top <= 1:
        return (f"no repeated exposures in the window's {impressions.num_rows:,} impressions (every "
                "exposure_index is 1)")
    positives = pc.sum(impressions.column(task)).as_py() or 0
    if positives == 0:
        return (f"task {task!r} (training.ipw_task) has no positives in the window's {impressions.num_rows:,} "
                "impressions")
    return None


def _check_positives(train: Any, held_out: Any, tasks: tuple[str, ...], path: Path) -> None:
    """A task without a positive in the training rows cannot be learned: fail naming it and the counts.
    A task without a positive in ``held_out`` (the test rows) is a warning: its AUC is undefined there."""
    import pyarrow.compute as pc

    counts = {t: int(pc.sum(train.column(t)).as_py() or 0) for t in tasks}
    empty = [t for t, c in counts.items() if c == 0]
    if empty:
        raise ValueError(
            f"task(s) {empty} have no positive in the {train.num_rows:,} training rows of {path} (positives per "
            f"task: {counts}; {held_out.num_rows:,} rows held out for the test): use a longer window "
            "(pipeline.training_days) or leave the task out (Settings.tasks / files.tasks)"
        )
    for t in tasks:
        if int(pc.sum(held_out.column(t)).as_py() or 0) == 0:
            log.warning("task %s has no positive in the %d test rows of %s: its AUC is undefined", t,
                        held_out.num_rows, path)


def ipw_weights(settings: Settings, train: Any, tasks: tuple[str, ...], first: dt.date,
                end_day: dt.date, fit_end: dt.date | None = None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Per-task inverse propensity weights of the training rows (None when IPW is off or skipped), the
    propensity fitted on the impressions of days ``first``..``fit_end`` (default ``end_day``, the run's
    day, which the log lines name), and what the summary says about them: enabled, the task, why it was
    skipped or the weights' summary."""
    from components.store.features import pick_task
    from components.store.offline import read_offline
    from components.training.propensity import ExposurePropensity

    cfg = settings.training
    ipw: dict[str, Any] = {"enabled": cfg.ipw}
    if not cfg.ipw:
        return None, ipw
    task = pick_task(cfg.ipw_task, tasks, "training.ipw_task")
    impressions = read_offline(settings, "impressions", first, fit_end or end_day,
                               columns=["user_id", "ad_id", "event_time", "exposure_index", task])
    ipw["task"] = task
    reason = ipw_skip_reason(impressions, task)
    propensity = None
    if reason is None:
        try:
            propensity = ExposurePropensity(label=task).fit(impressions)
        except ValueError as exc:  # e.g. a window shorter than the propensity's horizon
            reason = str(exc)
    if propensity is None:
        ipw["skipped"] = reason
        log.info("IPW skipped for %s: %s; every row has weight 1", end_day, reason)
        return None, ipw
    ipw["summary"] = propensity.weight_summary()
    return {t: propensity.weights(train, t, cfg.ipw_w_min) for t in tasks}, ipw


def small_data(train: Any, batch_size: int, min_steps: int) -> dict[str, Any] | None:
    """The small-data rule of the daily step: when ``train``'s rows give fewer than ``min_steps``
    optimiser steps per epoch at ``batch_size``, the batch that gives ``min_steps`` (never below
    ``MIN_BATCH`` rows); None when the rule does not apply (enough rows, a configured batch already that
    small, or ``min_steps`` 0). With 2 epochs of 7 steps (MovieLens' 7-day window at batch 2048) the model early
    stopping judges has barely left its initial weights (docs/training.md, "Real logs and small data").

    Returns what the summary shows: ``rows``, ``users``, ``ads`` (distinct in the training rows) and the
    rows per user and per ad, ``batch_size`` (configured), ``steps_per_epoch`` at it, ``used_batch_size``,
    ``used_steps_per_epoch`` and ``text`` ("small data: ...")."""
    import pyarrow.compute as pc

    rows = train.num_rows
    steps = math.ceil(rows / batch_size) if rows else 0
    if min_steps <= 0 or rows == 0 or steps >= min_steps:
        return None
    used = max(MIN_BATCH, rows // min_steps)
    if used >= batch_size:  # the configured batch is already that small
        return None
    users = int(pc.count_distinct(train.column("user_id")).as_py())
    ads = int(pc.count_distinct(train.column("ad_id")).as_py())
    out = {"rows": rows, "users": users, "ads": ads, "rows_per_user": round(rows / max(users, 1), 1),
           "rows_per_ad": round(rows / max(ads, 1), 1), "batch_size": batch_size, "steps_per_epoch": steps,
           "used_batch_size": used, "used_steps_per_epoch": math.ceil(rows / used), "min_steps": min_steps}
    out["text"] = (
        f"small data: {rows:,} training rows ({users:,} users, {out['rows_per_user']:g} rows each; {ads:,} ads, "
        f"{out['rows_per_ad']:g} rows each) give {steps} optimiser step(s) per epoch at batch_size {batch_size}: "
        f"trained at batch_size {used} ({out['used_steps_per_epoch']} steps per epoch, "
        f"training.min_steps_per_epoch {min_steps})")
    return out


def split_days(table: Any) -> list[str]:
    """The UTC days (ISO strings) the rows of ``table`` fall on, oldest first."""
    import pyarrow.compute as pc

    return sorted({d.isoformat() for d in pc.unique(pc.cast(table.column("event_time"), "date32")).to_pylist()})


def evaluate_on_test(settings: Settings, result: Any, test: Any, tasks: tuple[str, ...], arch: str,
                     end_day: dt.date) -> tuple[Any, Any]:
    """Score the test rows with the trained model and evaluate them: per task metrics, slices, the AUC's
    bootstrap interval over users and, on the simulator, the oracle. Returns (EvalReport, OracleReport or None)."""
    from components.store.offline import read_offline
    from components.training.device import predict
    from components.training.evaluation import evaluate
    from components.training.intervals import DEFAULT_BOOTSTRAP
    from components.training.oracle import oracle_auc

    scores = predict(result.model, result.encoders.encode(test, with_labels=False), tasks,
                     batch_size=result.train_config.eval_batch_size)
    ads = read_offline(settings, "ads", None, end_day, columns=["ad_id", "created_at"], latest=True)
    report = evaluate(scores, test, tasks, ads=ads, n_boot=DEFAULT_BOOTSTRAP)
    oracle = None
    if settings.pipeline.source == "simulator":
        try:
            oracle = oracle_auc(settings, test, tasks, models={arch: scores})
            report = report.with_oracle(oracle)
        except (FileNotFoundError, ValueError) as exc:  # ground truth missing: report without it
            log.warning("no oracle AUC: %s", exc)
    return report, oracle


NARROW_COLUMNS = ("user_id", "ad_id", "event_time", "exposure_index")  # the propensity's and the summary's


def read_split(settings: Settings, training_set: Path, tasks: tuple[str, ...]) -> tuple[Any, Any, Any, Any]:
    """The training set split by day (components/training/encoders.py ``window_split``): (the training rows
    for the trainer, their table for the checks, IPW and summary, the validation rows, the test rows). In
    memory the first two are one table; when the set streams (``training.train.data_path``,
    ``memory_budget_mb``: components/training/stream.py) the trainer gets ``ParquetRows`` and the table
    holds only the labels and ``NARROW_COLUMNS`` (~34 bytes a row); the held-out days are read whole."""
    from components.training.encoders import read_training_set, window_split
    from components.training.stream import split_on_disk, streams
    from components.training.train_config import TrainConfig

    cfg = settings.training

    def split(table: Any) -> Any:
        return window_split(table, cfg.valid_days, cfg.test_days)

    if streams(TrainConfig.from_dict(cfg.train.to_dict()), training_set):
        rows, (valid, test) = split_on_disk(training_set, split)
        return rows, rows.table([*NARROW_COLUMNS, *tasks]), valid, test
    train, valid, test = split(read_training_set(training_set))
    return train, train, valid, test


def train_and_evaluate(settings: Settings, end_day: dt.date, training_set: Path, tasks: tuple[str, ...],
                       progress: Callable[[dict[str, Any]], None] | None = None, run: Any = None) -> dict[str, Any]:
    """Train on ``training_set``'s train days, early-stop on its validation days, evaluate on its test
    days (the newest), save the model.

    Returns a JSON-able summary: rows and days of the split (``rows``/``days``: train, valid, test),
    training (epochs, samples/s, seconds), per-task metrics on the test days overall and per slice with
    the AUC's interval, the oracle comparison on the simulator, the IPW weight distribution, ``small_data``
    (:func:`small_data`'s note when the rule lowered the batch, else None), the model folder. ``progress`` receives the trainer's step and epoch events.
    ``run`` (components/registry/training_run.py ``TrainingRun``, or None): the MLflow run that logs those
    events as they happen; the summary's ``mlflow_run`` says which run and what it logged (None without).
    """
    import pyarrow.compute as pc

    from components.storage import write_json_atomic
    from components.training.loop import train_ranker
    from components.training.train_config import TrainConfig

    cfg = settings.training
    started = time.perf_counter()
    data, train, valid, test = read_split(settings, training_set, tasks)  # train: the rows' narrow columns
    first = pc.min(train.column("event_time")).as_py().date()  # the oldest day trains

    _check_positives(train, test, tasks, training_set)
    # The propensity sees the training days only: fitting it on the validation and test days would leak
    # their exposures and labels into the training weights.
    train_end = pc.max(train.column("event_time")).as_py().date() if train.num_rows else end_day
    weights, ipw = ipw_weights(settings, train, tasks, first, end_day, fit_end=train_end)
    if valid.num_rows == 0:
        log.warning("the %d validation day(s) before the test day(s) of %s have no rows: no early stopping, the "
                    "last epoch is kept", cfg.valid_days, training_set)

    out_dir = settings.models_dir / end_day.isoformat()
    small = small_data(train, cfg.train.batch_size, cfg.min_steps_per_epoch)
    if small is not None:
        log.info("%s", small["text"])
    train_cfg = TrainConfig.from_dict({**cfg.train.to_dict(),
                                       "checkpoint_dir": cfg.train.checkpoint_dir or str(out_dir / "checkpoints"),
                                       "ipw": weights is not None,
                                       **({"batch_size": small["used_batch_size"]} if small else {})})
    ranker_cfg = cfg.ranker.to_ranker_config()
    result = train_ranker(settings, data, valid if valid.num_rows else None, ranker_cfg, train_cfg,
                          train_weights=weights, callback=progress if run is None else run.listener(progress))
    report, oracle = evaluate_on_test(settings, result, test, tasks, ranker_cfg.arch, end_day)

    result.save(out_dir)
    summary = {
        "end_day": end_day,
        "model_dir": str(out_dir),
        "arch": ranker_cfg.arch,
        "rows": {"train": train.num_rows, "valid": valid.num_rows, "test": test.num_rows},
        "days": {"train": split_days(train), "valid": split_days(valid), "test": split_days(test)},
        "training": result.summary(),
        "evaluation": report.to_dict(),
        "evaluation_text": report.to_text(),
        "oracle": oracle.to_dict() if oracle is not None else None,
        "ipw": ipw,
        "small_data": small,
        "mlflow_run": run.to_dict() if run is not None else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json_atomic(out_dir / "evaluation.json", summary)
    return summary

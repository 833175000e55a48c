"""The MLflow run of one trained model, open from the start of training to the end of its registration
(docs/registry.md, "The run spans training").

:func:`tracked_training` opens the run when training starts (``registry.enabled`` false: no run): its
tags say it is not registered yet, its input is the training set. The :class:`TrainingRun` it yields
logs the trainer's progress events into the run as they happen (the epoch curves, step = epoch, and the
step losses, step = the optimiser step), so the MLflow UI shows a run in progress. A failed training
ends the run ``FAILED`` (``KILLED`` on an interrupt) with the reason in the ``last_failure`` tag.
Registration (components/registry/register.py ``register_model(..., training_run=...)``) re-opens the
run by its id, logs the rest without the curves already there, and ends it; :func:`end_unregistered`
ends a run whose model is not registered.

No global active run is kept: the callback writes with an ``MlflowClient`` and the run id, so it is
safe in a Prefect task's thread. Logging never fails training: the first MLflow error while logging
is a warning, live logging stops, and the registration logs the remaining epochs from ``history.json``.

Orphans (issue 14, docs/reliability/registration.md): every run of a day is tagged ``end_day`` and
``adsrec.process`` (``<host>:<pid>``). A process killed with its run open leaves it ``RUNNING``;
:func:`close_orphan_runs`, called whenever a run of that day starts or a registration of it adopts an
existing version, ends such runs ``KILLED`` with the reason in ``last_failure``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import Settings
from components.faults import declare, fault_point
from components.registry.run_logging import epoch_values, finite_or_none, metric_key

log = logging.getLogger(__name__)

REGISTERED_TAG = "registered"  # "false" while training and for a model never registered, else "true"
FAILURE_TAG = "last_failure"  # "<stage>: <error type>: <message>" of the last failure
NOT_REGISTERED_TAG = "not_registered"  # why a finished run's model was not registered
END_DAY_TAG = "end_day"  # the day the run's model is trained for
PROCESS_TAG = "adsrec.process"  # "<host>:<pid>" of the process that opened the run

declare("train.after_run_start")

Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainingRun:
    """One open training run: its id and what has been logged live (``epochs_logged``: the last epoch
    whose curves are in the run; ``live``: false after a logging error)."""

    run_id: str
    experiment_id: str
    client: Any = field(repr=False)
    epochs_logged: int = 0
    live: bool = True

    def listener(self, progress: Progress | None = None) -> Progress:
        """The trainer's callback: ``progress`` (e.g. the flow's log lines) first, then :meth:`log_event`."""
        def on_event(event: dict[str, Any]) -> None:
            if progress is not None:
                progress(event)
            self.log_event(event)

        return on_event

    def log_event(self, event: Mapping[str, Any]) -> None:
        """Log one progress event now: an ``epoch`` event's :func:`epoch_values` at step = epoch, a
        ``step`` event's ``step/loss`` and ``step/samples_per_s`` at step = the optimiser step."""
        if not self.live:
            return
        from mlflow.entities import Metric

        is_epoch = event.get("event") == "epoch"
        if is_epoch:
            values, step = epoch_values(event), int(event["epoch"])
        else:
            values = {metric_key(f"step/{k}"): v for k in ("loss", "samples_per_s")
                      if (v := finite_or_none(event.get(k))) is not None}
            step = int(event.get("step", 0))
        now = int(time.time() * 1000)
        try:
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])
        except Exception as exc:  # noqa: BLE001 - logging must never make training fail
            self.live = False
            log.warning("MLflow run %s: logging a %s event failed (%s: %s); training goes on without live "
                        "metrics, the registration logs the epochs after %d from history.json", self.run_id,
                        event.get("event"), type(exc).__name__, exc, self.epochs_logged)
            return
        if is_epoch:
            self.epochs_logged = step

    def to_dict(self) -> dict[str, Any]:
        """What the train step's result keeps (``mlflow_run``) for the registration."""
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "epochs_logged": self.epochs_logged,
                "live": self.live}


def start_training_run(settings: Settings, end_day: dt.date, training_set: str | Path) -> TrainingRun | None:
    """Create the run of the model trained for ``end_day`` (named ``<model name>-<end day>``, tagged
    ``registered=false``, ``end_day`` and ``training_set``) with the training set as its input dataset.
    None when ``registry.enabled`` is false, or (with a warning) when MLflow cannot create the run."""
    if not settings.registry.enabled:
        return None
    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from components.registry.client import ensure_experiment, mlflow_client
    from components.registry.signature import training_dataset

    try:
        with mlflow_client(settings) as client:
            experiment_id = ensure_experiment(client, settings)
            run = client.create_run(experiment_id, run_name=f"{settings.registry.model_name}-{end_day.isoformat()}",
                                    tags={REGISTERED_TAG: "false", **day_run_tags(end_day),
                                          "training_set": str(training_set)})
            fault_point("train.after_run_start")
            close_orphan_runs(client, experiment_id, end_day, keep=run.info.run_id,
                              started_before=run.info.start_time)
            dataset = Dataset(**training_dataset(training_set).to_dict())
            client.log_inputs(run.info.run_id, datasets=[DatasetInput(
                dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])])
    except Exception as exc:  # noqa: BLE001 - an unreachable tracking store must not stop training
        log.warning("no MLflow run for the training of %s: %s: %s", end_day, type(exc).__name__, exc)
        return None
    uri = settings.mlflow_tracking_uri
    log.info("MLflow run %s tracks the training of %s", run.info.run_id, end_day)
    return TrainingRun(run.info.run_id, experiment_id, mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri))


def day_run_tags(end_day: dt.date) -> dict[str, str]:
    """The tags that make a run of ``end_day`` findable as an orphan: the day and this process."""
    return {END_DAY_TAG: end_day.isoformat(), PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}"}


def process_gone(tag: str | None) -> bool | None:
    """Whether the process of a ``adsrec.process`` tag has ended: True/False on this host, None when the
    tag is absent or names another host (unknowable from here)."""
    host, _, pid = (tag or "").rpartition(":")
    if not pid.isdigit() or host != socket.gethostname():
        return None
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def close_orphan_runs(client: Any, experiment_id: str, end_day: dt.date, *, keep: str | None = None,
                      started_before: int | None = None) -> list[str]:
    """End ``KILLED`` every ``RUNNING`` run of ``end_day`` in the experiment (but ``keep``) whose process
    is gone (same host, pid no longer running) or, when that cannot be known (another host, no process
    tag), that started before ``started_before`` (ms; None: now); the reason goes to ``last_failure``.
    A run whose process still runs is left alone. Returns the ids closed."""
    from mlflow.exceptions import MlflowException

    try:
        runs = client.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                                  f"tags.{END_DAY_TAG} = '{end_day.isoformat()}'")
    except (MlflowException, OSError) as exc:  # never a reason for training or registration to fail
        log.warning("could not look for orphan MLflow runs of %s: %s", end_day, exc)
        return []
    cutoff = started_before if started_before is not None else int(time.time() * 1000)
    closed = []
    for r in runs:
        gone = process_gone(r.data.tags.get(PROCESS_TAG))
        if r.info.run_id == keep or gone is False or (gone is None and r.info.start_time >= cutoff):
            continue
        why = "its process is gone" if gone else "it is older than the run that replaces it"
        client.set_tag(r.info.run_id, FAILURE_TAG, f"orphan: left RUNNING by a process that died ({why}); "
                       f"closed by a later run of {end_day} ({keep or 'a registration'})")
        client.set_terminated(r.info.run_id, "KILLED")
        closed.append(r.info.run_id)
    if closed:
        log.warning("closed %d orphan MLflow run(s) of %s as KILLED: %s", len(closed), end_day, ", ".join(closed))
    return closed


def end_unregistered(settings: Settings, training_run: Mapping[str, Any] | None, reason: str, *,
                     failed: bool) -> None:
    """End the run of a model that is not registered: ``FAILED`` with ``reason`` in ``last_failure``
    (``failed``), else ``FINISHED`` with it in ``not_registered``; ``registered`` stays ``false``.
    Nothing without a run or for a registered one; an MLflow error is a warning (the run stays as it was)."""
    run_id = (training_run or {}).get("run_id")
    if not run_id or not settings.registry.enabled:
        return
    from mlflow.exceptions import MlflowException

    from components.registry.client import mlflow_client

    try:
        with mlflow_client(settings) as client:
            if client.get_run(run_id).data.tags.get(REGISTERED_TAG) == "true":
                return  # its model is registered: a later failure (e.g. promotion) is not the run's
            client.set_tag(run_id, FAILURE_TAG if failed else NOT_REGISTERED_TAG, reason[:4000])
            client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
    except (MlflowException, OSError) as exc:
        log.warning("MLflow run %s could not be ended (%s): %s", run_id, reason, exc)


def failure_reason(stage: str, exc: BaseException) -> str:
    return f"{stage}: {type(exc).__name__}: {exc}"


@contextlib.contextmanager
def ended_on_failure(settings: Settings, training_run: Mapping[str, Any] | None, stage: str) -> Iterator[None]:
    """An exception in the block ends ``training_run`` ``FAILED`` with ``"<stage>: <error>"`` in
    ``last_failure`` (:func:`end_unregistered`; an interrupt then ``KILLED``) and propagates."""
    try:
        yield
    except BaseException as exc:
        end_unregistered(settings, training_run, failure_reason(stage, exc), failed=True)
        if training_run and isinstance(exc, (KeyboardInterrupt, SystemExit)):
            from components.registry.client import mlflow_client

            with contextlib.suppress(Exception), mlflow_client(settings) as client:
                client.set_terminated(training_run["run_id"], "KILLED")
        raise


@contextlib.contextmanager
def tracked_training(settings: Settings, end_day: dt.date, training_set: str | Path) -> Iterator[TrainingRun | None]:
    """The block that trains, inside its MLflow run (:func:`start_training_run`; None without one). An
    exception ends the run ``FAILED`` (:func:`ended_on_failure`) and propagates; a training that ends
    normally leaves the run open for its registration.

    Example::

        with tracked_training(settings, day, path) as run:
            summary = train_and_evaluate(settings, day, path, tasks, run=run)
    """
    run = start_training_run(settings, end_day, training_set)
    with ended_on_failure(settings, run.to_dict() if run is not None else None, "training"):
        yield run

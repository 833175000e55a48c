"""Registering one trained ranker: one MLflow run and one new version of ``registry.model_name``
(docs/registry.md).

:func:`register_model` runs the steps in order: check the gate results and the data window, read the
saved ranker folder, stage the files the packaged model needs (and score the sample rows with it), open
the run (or re-open the one opened when training started: components/registry/training_run.py) and log
everything (components/registry/run_logging.py), log the pyfunc model
(components/registry/packaged.py), register it as a version with its tags and description, and alias it
``challenger`` only when every gate passed.

It is idempotent (issue 14, docs/reliability/registration.md): before creating anything it computes the
registration's fingerprint (components/registry/idempotence.py), looks for a version tagged with it and,
when there is one, adopts it (finishes its description, run tag and challenger alias) instead of
registering the same model again; a retry or a re-run after a kill never makes a second version. It
also ends ``KILLED`` the runs of the same day that a dead process left ``RUNNING``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import Settings
from components.registry.client import (GATES_PASSED_TAG, RegistryError, ensure_experiment,
                                        ensure_registered_model, mlflow_client)
from components.faults import declare, fault_point
from components.registry.idempotence import (FINGERPRINT_TAG, adopt_version, challenger_rule,
                                             registered_with, registration_fingerprint)
from components.registry.run_logging import (ModelFolder, code_revision, finite_or_none, log_run_contents,
                                             metric_key, pip_requirements, read_model_folder,
                                             training_curves_plot)
from components.registry.training_run import REGISTERED_TAG, close_orphan_runs, day_run_tags

if TYPE_CHECKING:
    import mlflow
    import pyarrow as pa

    from components.registry.packaged import PackagedRanker

log = logging.getLogger(__name__)

MODEL_NAME_IN_RUN = "model"
SAMPLE_ARTIFACT = "scoring_sample.parquet"
SAMPLE_SCORES_ARTIFACT = "scoring_sample_scores.parquet"
SAMPLE_MAX_ROWS = 4096
MAX_TAG_LENGTH = 5000  # below MLflow's run-tag limit (8000)

declare("register.before_version", "register.after_version")


@dataclass(frozen=True)
class RegisteredVersion:
    """What :func:`register_model` created."""

    name: str
    version: int
    run_id: str
    model_uri: str  # models:/<name>/<version>
    logged_model_uri: str  # models:/m-<id>, the MLflow 3 logged model
    gates_passed: bool
    aliases: tuple[str, ...]  # aliases set by the registration: ("challenger",) or ()
    experiment_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id, "model_uri": self.model_uri,
                "logged_model_uri": self.logged_model_uri, "gates_passed": self.gates_passed,
                "aliases": list(self.aliases), "experiment_id": self.experiment_id}


@dataclass(frozen=True)
class StagedModel:
    """The packaged ranker's files in a temporary folder, loaded, plus what was made with it: the
    training-curve plot and the scoring-sample files (empty without sample rows)."""

    path: Path
    scorer: "PackagedRanker"
    curves: Path | None
    sample_files: tuple[Path, ...]
    sample: "pa.Table | None" = None


# ----- checks and staging -------------------------------------------------------------------------------------
def normalise_gates(gates: Iterable[Any]) -> list[dict[str, Any]]:
    """Gate results as plain dicts ``{name, value, threshold, passed, details}`` (accepts dicts or objects
    with ``to_dict``, e.g. ``validation.gates.GateResult``). Raises ``ValueError`` for a gate without a
    name or a boolean ``passed``, or for two gates with one name."""
    out: list[dict[str, Any]] = []
    for g in gates:
        d = dict(g.to_dict() if hasattr(g, "to_dict") else g)
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"gate result without a name: {d}")
        if not isinstance(d.get("passed"), bool):
            raise ValueError(f"gate {name!r}: 'passed' must be true or false, got {d.get('passed')!r}")
        out.append({"name": name, "value": d.get("value"), "threshold": d.get("threshold"),
                    "passed": d["passed"], "details": d.get("details") or {}})
    names = [g["name"] for g in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"gates {dupes} appear more than once")
    return out


def check_window(data_window: tuple[dt.date, dt.date]) -> tuple[dt.date, dt.date]:
    """``(first day, last day)`` as dates; raises ``ValueError`` unless two dates, first <= last."""
    try:
        start, end = data_window
    except (TypeError, ValueError):
        raise ValueError(f"data_window must be a (first day, last day) pair, got {data_window!r}") from None
    start, end = (d.date() if isinstance(d, dt.datetime) else d for d in (start, end))
    if not (isinstance(start, dt.date) and isinstance(end, dt.date)) or start > end:
        raise ValueError(f"data_window must be two dates, first <= last; got {data_window!r}")
    return start, end


def _stage_model_dir(model_dir: Path, into: Path) -> Path:
    """Copy the files the packaged ranker needs (not checkpoints) into ``into``."""
    from components.registry.packaged import OPTIONAL_FILES, REQUIRED_FILES

    missing = [n for n in REQUIRED_FILES if not (model_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{model_dir} is not a saved ranker that can score rows: missing {', '.join(missing)}")
    into.mkdir(parents=True)
    for name in REQUIRED_FILES + OPTIONAL_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, into / name)
    return into


def gate_verdict(gate_rows: list[dict[str, Any]]) -> tuple[bool, list[str]]:
    """(passed: at least one gate and every gate passed, the names of the failed gates)."""
    return bool(gate_rows) and all(g["passed"] for g in gate_rows), [g["name"] for g in gate_rows if not g["passed"]]


def existing_plots(plots: Iterable[str | Path | None]) -> list[Path]:
    """``plots`` as paths (None left out); raises ``FileNotFoundError`` naming any that is not a file."""
    plot_paths = [Path(p) for p in plots if p is not None]
    absent = [str(p) for p in plot_paths if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"plots not found: {', '.join(absent)}")
    return plot_paths


def stage_model(tmp: Path, folder: ModelFolder, sample_rows: "pa.Table | None") -> StagedModel:
    """Copy the packaged ranker's files under ``tmp``, load them, score the sample rows (at most
    ``SAMPLE_MAX_ROWS``) into ``SAMPLE_ARTIFACT`` / ``SAMPLE_SCORES_ARTIFACT`` and draw the training curves."""
    import pyarrow.parquet as pq

    from components.registry.packaged import RANKER_ARTIFACT, PackagedRanker

    staged = _stage_model_dir(folder.path, tmp / RANKER_ARTIFACT)
    scorer = PackagedRanker().load(staged)
    sample_files: tuple[Path, ...] = ()
    sample = None
    if sample_rows is not None:
        sample = sample_rows.slice(0, SAMPLE_MAX_ROWS)
        pq.write_table(sample, tmp / SAMPLE_ARTIFACT)
        scores = scorer.score_table(sample)
        scores.to_parquet(tmp / SAMPLE_SCORES_ARTIFACT, index=False)
        sample_files = (tmp / SAMPLE_ARTIFACT, tmp / SAMPLE_SCORES_ARTIFACT)
    curves = training_curves_plot(folder.history, tmp / "training_curves.png")
    return StagedModel(path=staged, scorer=scorer, curves=curves, sample_files=sample_files, sample=sample)


# ----- tags and description ------------------------------------------------------------------------------------
def version_tags(gate_rows: list[dict[str, Any]], tasks: Iterable[str], arch: str,
                 start: dt.date, end: dt.date) -> dict[str, str]:
    """The tags the run and the version share: the gate verdict (overall, failed gates, one
    ``gate.<name>.passed`` per gate), tasks, architecture, code revision and the data window."""
    passed, failed = gate_verdict(gate_rows)
    revision, dirty = code_revision()
    return {
        GATES_PASSED_TAG: str(passed).lower(),
        "failed_gates": ",".join(failed),
        "tasks": ",".join(tasks),
        "arch": arch,
        "code_revision": revision,
        "code_dirty": "unknown" if dirty is None else str(dirty).lower(),
        "data_window_start": start.isoformat(),
        "data_window_end": end.isoformat(),
        **{metric_key(f"gate.{g['name']}.passed"): str(g["passed"]).lower() for g in gate_rows},
    }


def run_tags(common_tags: Mapping[str, str], start: dt.date, end: dt.date,
             feature_views: Mapping[str, Any] | None, model_dir: Path) -> dict[str, str]:
    """The run's tags: :func:`version_tags` plus the window as one string, the feature views as JSON
    (cut to ``MAX_TAG_LENGTH``; the whole is ``feature_views.json``) and the model folder."""
    fv_json = json.dumps(feature_views or {}, default=str, sort_keys=True)
    return {**common_tags, "data_window": f"{start.isoformat()}..{end.isoformat()}",
            "feature_views": fv_json if len(fv_json) <= MAX_TAG_LENGTH else fv_json[:MAX_TAG_LENGTH - 30]
            + "...(see feature_views.json)", "model_dir": str(model_dir)}


def version_description(summary: Mapping[str, Any], arch: str, start: dt.date, end: dt.date,
                        gate_rows: list[dict[str, Any]]) -> str:
    """One line for the registry UI: architecture, window, AUC per task and the gate verdict."""
    passed, failed = gate_verdict(gate_rows)
    aucs = ", ".join(f"{t} AUC {m['auc']:.4f}" for t, m in
                     ((summary.get("evaluation") or {}).get("overall") or {}).items()
                     if finite_or_none(m.get("auc")) is not None)
    return (f"{arch} trained on {start}..{end}; {aucs or 'no AUC'}; gates "
            + ("passed" if passed else f"FAILED ({', '.join(failed) or 'none evaluated'})"))


# ----- the model and the version -----------------------------------------------------------------------------
def run_to_open(model_name: str, experiment_id: str, end: dt.date,
                training_run: Mapping[str, Any] | None) -> tuple[dict[str, Any], int]:
    """(``mlflow.start_run``'s arguments, the last epoch whose curves the run already has): the training
    run by its id when there is one (components/registry/training_run.py), else a new run
    ``<model name>-<end day>`` in the experiment."""
    run_id = (training_run or {}).get("run_id")
    if run_id:
        return {"run_id": str(run_id)}, int((training_run or {}).get("epochs_logged") or 0)
    return {"experiment_id": experiment_id, "run_name": f"{model_name}-{end.isoformat()}",
            "tags": day_run_tags(end)}, 0


def log_packaged_model(tmp: Path, staged: StagedModel) -> "mlflow.models.model.ModelInfo":
    """Log the staged ranker into the active run as a pyfunc "from code" (components/registry/packaged.py)
    with pinned requirements, the code it imports (``code_paths``) and a signature; with a scoring sample,
    the signature has inputs and the first rows are the input example (components/registry/signature.py).
    Returns MLflow's ``ModelInfo``."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from components.config import PROJECT_ROOT
    from components.registry.packaged import RANKER_ARTIFACT, write_model_code
    from components.registry.signature import input_example, input_schema, input_types, stage_code

    tasks = staged.scorer.tasks
    inputs = example = None
    types: dict[str, str] = {}
    if staged.sample is not None:
        inputs = input_schema(staged.sample, staged.scorer.feature_columns)
        example = input_example(staged.sample, inputs.input_names())
        types = input_types(staged.sample, inputs.input_names())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=str(write_model_code(tmp / "adsrec_ranker.py")),
            artifacts={RANKER_ARTIFACT: str(staged.path)},
            code_paths=stage_code(PROJECT_ROOT, tmp / "code"),
            pip_requirements=pip_requirements(),
            signature=ModelSignature(inputs=inputs, outputs=Schema(
                [ColSpec("float", f"p_{t}") for t in tasks])),
            input_example=example,
            metadata={"tasks": list(tasks), "outputs": [f"p_{t}" for t in tasks],
                      "feature_columns": staged.scorer.feature_columns, "input_types": types},
        )


def find_and_adopt(settings: Settings, fingerprint: str, end: dt.date, description: str, passed: bool,
                   training_run: Mapping[str, Any] | None) -> RegisteredVersion | None:
    """The registration's first registry step: end the orphan runs of ``end`` (components/registry/
    training_run.py), then look for a version with ``fingerprint`` and adopt it
    (components/registry/idempotence.py). Returns it, or None when the model is not registered yet."""
    cfg = settings.registry
    current_run = (training_run or {}).get("run_id")
    with mlflow_client(settings) as client:
        experiment_id = ensure_experiment(client, settings)
        ensure_registered_model(client, cfg.model_name)
        close_orphan_runs(client, experiment_id, end, keep=current_run)
        mv = registered_with(client, cfg.model_name, fingerprint)
        if mv is None:
            return None
        aliases, logged_uri = adopt_version(client, mv, description, passed, current_run)
    version = int(mv.version)
    return RegisteredVersion(name=cfg.model_name, version=version, run_id=str(mv.run_id),
                             model_uri=f"models:/{cfg.model_name}/{version}", logged_model_uri=logged_uri,
                             gates_passed=passed, aliases=aliases, experiment_id=experiment_id)


def register_model(
    settings: Settings,
    model_dir: str | Path,
    summary: Mapping[str, Any],
    gates: Iterable[Any],
    plots: Iterable[str | Path] = (),
    *,
    data_window: tuple[dt.date, dt.date],
    feature_views: Mapping[str, Any] | None = None,
    sample_rows: "pa.Table | None" = None,
    training_set: str | Path | None = None,
    training_run: Mapping[str, Any] | None = None,
) -> RegisteredVersion:
    """Log one trained model to MLflow and register it as a new version of ``registry.model_name``, or
    adopt the version that already holds it (:func:`find_and_adopt`).

    Args:
        settings: resolved settings (tracking URI, experiment, model name; logged as the run's config).
        model_dir: the folder ``TrainResult.save`` wrote (weights, encoders, spec, configs, history, evaluation).
        summary: the train step's JSON-able result (components/training/train_day.py ``train_and_evaluate``).
        gates: gate results ``{name, value, threshold, passed, details}`` (dicts or ``GateResult``); the
            version is aliased ``challenger`` only when there is at least one gate and all passed.
        plots: image files logged under ``plots/`` (a training-curve plot is added from ``history.json``).
        data_window: first and last day of the data the model was trained and evaluated on.
        feature_views: feature-view name -> version/fingerprint (a run tag as JSON and ``feature_views.json``).
        sample_rows: rows to score (e.g. 256 validation rows), logged as ``scoring_sample.parquet`` with
            this process's scores (``scoring_sample_scores.parquet``, ``p_<task>``, same order) so a later
            process can check it reproduces them; at most ``SAMPLE_MAX_ROWS``; the signature's inputs.
        training_set: the training set's parquet path, logged as the run's input dataset (by reference).
        training_run: the train step's ``mlflow_run`` (components/registry/training_run.py), re-opened
            (its live curves and input not logged again). None: a new run (curves from history).

    Returns the version number, run id, ``models:/<name>/<version>`` URI and the aliases it set.
    """
    import mlflow

    cfg = settings.registry
    if not cfg.enabled:
        raise RegistryError("registry.enabled is false: not registering the model")
    gate_rows = normalise_gates(gates)
    passed, failed = gate_verdict(gate_rows)
    start, end = check_window(data_window)
    folder = read_model_folder(Path(model_dir), summary)
    plot_paths = existing_plots(plots)
    arch = str(folder.ranker_config.get("arch", summary.get("arch", "unknown")))
    fingerprint = registration_fingerprint(folder.path, start, end, feature_views, training_set, gate_rows,
                                           code_revision()[0])
    description = version_description(summary, arch, start, end, gate_rows)
    if (adopted := find_and_adopt(settings, fingerprint, end, description, passed, training_run)) is not None:
        return adopted

    with tempfile.TemporaryDirectory(prefix="adsrec-register-") as tmp_name:
        tmp = Path(tmp_name)
        staged = stage_model(tmp, folder, sample_rows)
        common_tags = {**version_tags(gate_rows, staged.scorer.tasks, arch, start, end),
                       FINGERPRINT_TAG: fingerprint}
        with mlflow_client(settings) as client:
            experiment_id = ensure_experiment(client, settings)
            run_args, epochs_logged = run_to_open(cfg.model_name, experiment_id, end, training_run)
            with mlflow.start_run(**run_args, nested=mlflow.active_run() is not None) as run:
                run_id = run.info.run_id
                log_run_contents(client, run_id, settings, folder, summary, gate_rows,
                                 tags=run_tags(common_tags, start, end, feature_views, folder.path),
                                 feature_views=feature_views,
                                 plots=[*plot_paths, *([staged.curves] if staged.curves else [])],
                                 sample_files=staged.sample_files, epochs_logged=epochs_logged,
                                 training_set=training_set if "run_id" not in run_args else None)
                info = log_packaged_model(tmp, staged)
                fault_point("register.before_version")
                mv = mlflow.register_model(info.model_uri, cfg.model_name,
                                           tags={**common_tags, "run_id": run_id})
                fault_point("register.after_version")
                mlflow.set_tag(REGISTERED_TAG, "true")
            client.update_model_version(cfg.model_name, str(version := int(mv.version)), description=description)
            aliases = challenger_rule(client, cfg.model_name, version, passed)
    log.info("registered %s version %d (run %s); gates %s", cfg.model_name, version, run_id,
             "passed: aliased challenger" if passed else f"failed: {failed or 'none evaluated'}")
    return RegisteredVersion(name=cfg.model_name, version=version, run_id=run_id,
                             model_uri=f"models:/{cfg.model_name}/{version}", logged_model_uri=info.model_uri,
                             gates_passed=passed, aliases=aliases, experiment_id=experiment_id)

"""The daily run's last steps: compare with the champion on the test day (the newest, untouched by
training and early stopping), with the paired bootstrap interval of every task's AUC difference; run the
quality gates, register the version in MLflow and (by config) promote it.

``assess_and_register`` is what ``flows/daily.py`` calls after training. It is idempotent like the other
steps: the same model, gate configuration and champion give the same verdict, so a re-run finds the
version it registered before (``manifests/register/<day>.json``) instead of registering a duplicate;
without that manifest (a kill after the version was created, a retry) the registration itself adopts
the version with the same fingerprint (components/registry/idempotence.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import Settings
from components.faults import declare, fault_point

log = logging.getLogger(__name__)
declare("gates.after_verdict", "gates.before_manifest")

SAMPLE_ROWS = 256  # validation rows logged with their scores, to check a reloaded model reproduces them
EXPERT_ROWS = 4096  # validation rows for the inter-expert correlation


def _task_metrics(evaluation: dict[str, Any], tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    overall = evaluation.get("overall", {})
    return {t: dict(overall.get(t, {})) for t in tasks}


def new_model_metrics(evaluation: dict[str, Any], tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The new model's metrics per task on the test day, each with ``auc_interval`` (its bootstrap
    interval over users) when the evaluation has one."""
    intervals = evaluation.get("auc_interval") or {}
    return {t: {**m, **({"auc_interval": intervals[t]} if t in intervals else {})}
            for t, m in _task_metrics(evaluation, tasks).items()}


def champion_on(settings: Settings, test: Any, tasks: Sequence[str],
                new_scores: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Score the test day's rows with the registry's champion and evaluate it there: the champion's
    metrics on exactly the rows the new model is judged on. With ``new_scores`` (the new model's
    probabilities on the same rows), ``auc_difference`` holds per task the new model's AUC minus the
    champion's with its paired bootstrap interval over users (the same resamples score both). None when
    there is no champion."""
    from components.registry.aliases import champion, load_champion
    from components.registry.client import RegistryError
    from components.training.evaluation import evaluate
    from components.training.intervals import auc_difference_interval

    info = champion(settings)
    if info is None:
        return None
    try:
        packaged = load_champion(settings).unwrap_python_model()
    except RegistryError as exc:
        log.warning("champion v%s cannot be loaded: %s", info.version, exc)
        return None
    scores = packaged.score_table(test)
    common = [t for t in tasks if f"p_{t}" in scores.columns]
    champ_scores = {t: scores[f"p_{t}"].to_numpy() for t in common}
    report = evaluate(champ_scores, test, tuple(common))
    users = test.column("user_id").to_numpy(zero_copy_only=False) if "user_id" in test.column_names else None
    differences = {t: auc_difference_interval(test.column(t).to_numpy(zero_copy_only=False), new_scores[t],
                                              champ_scores[t], groups=users).to_dict()
                   for t in common if new_scores is not None and t in new_scores}
    ia = info.metrics.get("gate/collapse")
    return {"version": info.version, "metrics": _task_metrics(report.to_dict(), common),
            "auc_difference": differences, "collapse_ia_ratio": ia,
            "data_window": [str(d) for d in info.data_window or ()]}


@dataclass(frozen=True)
class ModelAnalysis:
    """The collapse and entanglement analyses of a trained model (what the gates judge and the plots
    draw) and the seconds each took."""

    collapse: Any
    entangled: Any | None
    expert_corr: float | None
    seconds: dict[str, float]


def analyse_model(settings: Settings, trained: Any, train: Any, valid: Any, tasks: Sequence[str]) -> ModelAnalysis:
    """Dimensional collapse of the embedding tables (ids counted on the training rows) and, on up to
    ``EXPERT_ROWS`` validation rows, the entanglement of the task pairs (two tasks or more) or, with one
    task, only the correlation of the experts."""
    from validation.collapse import collapse_report, id_counts_from_batch
    from validation.entanglement import entanglement_report
    from validation.expert_correlation import expert_correlation

    cfg = settings.gates
    t0 = time.perf_counter()
    counts = id_counts_from_batch(trained.model, trained.encoders.encode(train, with_labels=False))
    collapse = collapse_report(trained.model, id_counts=counts, max_rows=cfg.ia_max_rows, resamples=cfg.ia_resamples)
    t_collapse = time.perf_counter() - t0
    t0 = time.perf_counter()
    sample = valid.slice(0, min(EXPERT_ROWS, valid.num_rows))
    sample_batch = trained.encoders.encode(sample, with_labels=False)
    entangled = expert_corr = None
    if len(tasks) >= 2:
        entangled = entanglement_report(trained, train, tasks=tasks, max_pairs=cfg.entanglement_max_pairs,
                                        batch=sample_batch)
        expert_corr = entangled.expert_mean_abs_r
    elif sample.num_rows >= 2:  # one task: no pair to analyse, the experts can still be redundant
        expert_corr, _ = expert_correlation(trained.model, sample_batch)
    t_entangle = time.perf_counter() - t0
    return ModelAnalysis(collapse=collapse, entangled=entangled, expert_corr=expert_corr,
                         seconds={"collapse": round(t_collapse, 3), "entanglement": round(t_entangle, 3)})


def run_gates(settings: Settings, days: Sequence[dt.date], trained: Any, train: Any, analysis: ModelAnalysis,
              metrics: dict[str, dict[str, Any]], champ: dict[str, Any] | None) -> list[Any]:
    """The four gates in order: data (the window's ingestion), collapse, entanglement, model (against the
    champion's metrics on the same rows, and the paired AUC difference intervals, when there is one)."""
    from components.runs import StageManifest
    from validation.gates import collapse_gate, data_gate, entanglement_gate, model_gate

    cfg = settings.gates
    collapse, entangled, expert_corr = analysis.collapse, analysis.entangled, analysis.expert_corr
    gates = [
        data_gate({day: StageManifest(settings, "ingest").read(day) for day in days}, cfg.max_quarantine_rate),
        collapse_gate(cfg, trained.model, None, champion_value=(champ or {}).get("collapse_ia_ratio"),
                      report=collapse),
        entanglement_gate(cfg, trained.model, train, report=entangled, expert_corr=expert_corr),
        model_gate(metrics, (champ or {}).get("metrics"), cfg.auc_tolerance, tuple(cfg.calibration_band),
                   differences=(champ or {}).get("auc_difference")),
    ]
    return gates


def baselines_and_gate(settings: Settings, trained: Any, train: Any, test: Any, tasks: Sequence[str],
                       gates: list[Any]) -> dict[str, dict[str, Any]]:
    """The trivial baselines of the training days scored on the test day (the newest) next to the model
    (components/training/baselines.py); appends the baseline gate to ``gates``, so a model that learned
    nothing is never made challenger. Returns the comparison (per task: each baseline's AUC, the best,
    the model's lead with its interval)."""
    from components.training.baselines import baseline_comparison
    from validation.baseline_gate import baseline_gate

    comparison = baseline_comparison(trained.score(test), train, test, tasks)
    gates.append(baseline_gate(comparison, settings.gates.baseline_margin,
                                settings.gates.baseline_inconclusive))
    return comparison


def analysis_plots(analysis: ModelAnalysis, analysis_dir: Path) -> list[Path]:
    """The collapse spectra and (with two tasks or more) the entanglement distances, as PNGs."""
    plots = [analysis.collapse.plot(analysis_dir / "collapse_spectra.png")]
    if analysis.entangled is not None:
        plots.append(analysis.entangled.plot(analysis_dir / "entanglement_distances.png"))
    return plots


def training_run_of(train_result: Mapping[str, Any]) -> dict[str, Any] | None:
    """The MLflow run the train step opened (components/registry/training_run.py), for the registration to
    re-open and end; None without one, and for a skipped train step (its run ended with its own
    registration or failure: a re-run must not re-open it)."""
    return None if train_result.get("skipped") else train_result.get("mlflow_run")


def register_and_promote(settings: Settings, model_dir: Path, train_result: dict[str, Any], gates: list[Any],
                         plots: list[Path], training_set_path: str | Path, days: Sequence[dt.date],
                         valid: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Register the model with its gates, plots, data window, feature views (the training set's
    ``meta.json``) and ``SAMPLE_ROWS`` validation rows, then apply ``registry.auto_promote``.
    Returns (the registered version as a dict, the promotion or None)."""
    from components.registry.aliases import maybe_auto_promote
    from components.registry.register import register_model

    from components.training.training_set import training_set_meta

    meta = training_set_meta(training_set_path)  # a parquet without its meta.json: a build cut short
    version = register_model(
        settings, model_dir, train_result, gates, plots,
        data_window=(min(days), max(days)), feature_views=meta.get("feature_views"),
        sample_rows=valid.slice(0, min(SAMPLE_ROWS, valid.num_rows)), training_set=training_set_path,
        training_run=training_run_of(train_result),
    )
    return version.to_dict(), maybe_auto_promote(settings, version)


def assess_and_register(settings: Settings, end_day: dt.date, train_result: dict[str, Any],
                        training_set_path: str | Path, days: Sequence[dt.date], force: bool = False
                        ) -> dict[str, Any]:
    """Gates and registration for the model the train step saved in ``train_result["model_dir"]``.

    Returns a JSON-able summary: ``gates`` (list of gate dicts), ``gates_passed``, ``champion`` (its
    version and metrics on the test day, the paired AUC difference intervals, or None), ``metrics`` (the
    new model's on the test day, each task's AUC with its interval), ``baselines``, ``oracle`` and
    ``ceilings`` (the simulator's oracle and partial oracles' AUCs, or None), ``registered``
    (version, run id, aliases) and ``promoted`` (or None), ``plots``, ``seconds``. The training's MLflow
    run (``train_result["mlflow_run"]``) is re-opened by the registration and ended there; it ends
    ``FAILED`` when the gates or the registration fail, ``FINISHED`` unregistered when skipped.
    """
    from components.registry.training_run import end_unregistered, ended_on_failure
    from components.runs import StageManifest, fingerprint_files

    model_dir = Path(train_result["model_dir"])
    # Not the champion: auto-promotion makes this very version the champion, and a re-run must still
    # find it registered rather than register it again.
    manifest = StageManifest(settings, "register")
    fp = fingerprint_files([model_dir / "model.pt", Path(training_set_path)],
                           {"gates": settings.gates.model_dump(mode="json"),
                            "registry": settings.registry.model_dump(mode="json")})
    if not force and manifest.is_current(end_day, fp):
        done = manifest.read(end_day)["result"]  # type: ignore[index]
        end_unregistered(settings, training_run_of(train_result), "this model and gate configuration were "
                         f"registered before: {(done.get('registered') or {}).get('model_uri')}", failed=False)
        return {**done, "skipped": True}
    with ended_on_failure(settings, training_run_of(train_result), "gates and registration"):
        result = _assess(settings, end_day, train_result, training_set_path, days, model_dir)
    fault_point("gates.before_manifest")  # registered and (by config) promoted, the step's manifest not yet
    manifest.record(end_day, fp, result)
    return {**result, "skipped": False}


def _assess(settings: Settings, end_day: dt.date, train_result: dict[str, Any], training_set_path: str | Path,
            days: Sequence[dt.date], model_dir: Path) -> dict[str, Any]:
    """:func:`assess_and_register` after its skip check: the gates, the registration and the result."""
    from components.training.encoders import read_training_set, window_split
    from components.training.artefact import load_trained
    from components.storage import write_json_atomic
    from validation.gates import all_passed, gate_table

    started = time.perf_counter()
    registry_on = settings.registry.enabled
    trained = load_trained(model_dir)
    tasks = trained.tasks
    table = read_training_set(training_set_path)
    train, valid, test = window_split(table, settings.training.valid_days, settings.training.test_days)

    champ = champion_on(settings, test, tasks, trained.score(test)) if registry_on else None
    metrics = new_model_metrics(train_result.get("evaluation", {}), tasks)

    analysis_dir = model_dir / "analysis"
    analysis_dir.mkdir(parents=True, exist_ok=True)
    held_out = valid if valid.num_rows else test  # the gates' analyses judge validation rows when there are any
    analysis = analyse_model(settings, trained, train, held_out, tasks)
    gates = run_gates(settings, days, trained, train, analysis, metrics, champ)
    baselines = baselines_and_gate(settings, trained, train, test, tasks, gates)  # on the reported day
    plots = analysis_plots(analysis, analysis_dir)
    passed = all_passed(gates)
    gate_dicts = [g.to_dict() for g in gates]
    write_json_atomic(analysis_dir / "gates.json", {"gates": gate_dicts, "passed": passed})
    fault_point("gates.after_verdict")  # gates.json written, nothing registered
    log.info("gates for %s:\n%s", end_day, "\n".join(filter(None, [gate_table(gates), *(g.explain() for g in gates)])))

    registered = promoted = None
    if registry_on:
        registered, promoted = register_and_promote(settings, model_dir, train_result, gates, plots,
                                                    training_set_path, days, held_out)

    result = {
        "end_day": end_day,
        "gates": gate_dicts,
        "gates_passed": passed,
        "gate_table": gate_table(gates),
        "metrics": metrics,
        "oracle": (train_result.get("oracle") or {}).get("oracle"),
        "ceilings": (train_result.get("oracle") or {}).get("ceilings"),
        "baselines": baselines,
        "champion": champ,
        "registered": registered,
        "promoted": promoted,
        "plots": [str(p) for p in plots],
        "analysis_seconds": analysis.seconds,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return result

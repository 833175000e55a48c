"""What one registry run logs to MLflow: tags, params, metrics, per-epoch curves and artifacts of one
trained ranker (docs/registry.md, "What a registration logs").

:func:`read_model_folder` reads a saved ranker folder (configs, training history, evaluation);
:func:`run_params` and :func:`run_metrics` flatten the configuration and the train step's summary into
MLflow params and metrics; :func:`log_run_contents` logs all of it, the gate results, plots and the
scoring sample into the active run. components/registry/register.py opens the run and registers the
version.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import PROJECT_ROOT, Settings
from components.registry.client import GATES_ARTIFACT

if TYPE_CHECKING:
    import mlflow

EVALUATION_ARTIFACT = "evaluation.json"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
SETTINGS_SECTIONS_AS_PARAMS = ("pipeline", "features", "training", "gates", "registry")


@dataclass(frozen=True)
class ModelFolder:
    """What a run logs from a saved ranker folder (``TrainResult.save``): its configs, the per-epoch
    ``history`` and the evaluation document (``evaluation.json``, else the train step's summary)."""

    path: Path
    ranker_config: dict[str, Any]
    train_config: dict[str, Any]
    history: list[Any]
    evaluation: Any


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def read_model_folder(model_dir: Path, summary: Mapping[str, Any]) -> ModelFolder:
    """The :class:`ModelFolder` of ``model_dir`` (absent files read as empty)."""
    history_doc = _read_json(model_dir / "history.json") or {}
    return ModelFolder(
        path=model_dir,
        ranker_config=_read_json(model_dir / "ranker_config.json") or {},
        train_config=_read_json(model_dir / "train_config.json") or {},
        history=history_doc.get("history", []) if isinstance(history_doc, dict) else [],
        evaluation=_read_json(model_dir / "evaluation.json") or dict(summary),
    )


def code_revision(root: Path = PROJECT_ROOT) -> tuple[str, bool | None]:
    """(``git rev-parse HEAD`` of the project, whether the work tree differs from it); ("unknown", None)
    outside a git checkout. Read-only: ``--no-optional-locks`` keeps ``git status`` from touching the index."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "--no-optional-locks", "-C", str(root), "status", "--porcelain"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return (head or "unknown"), bool(status.strip())


def metric_key(name: str) -> str:
    """A string MLflow accepts as a metric/param/tag name (letters, digits, ``_-. /:``)."""
    return re.sub(r"[^\w\-. /:]", "_", str(name)).strip("/") or "_"


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
        return
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > MAX_PARAM_LENGTH:
        text = text[: MAX_PARAM_LENGTH - 13] + "...(truncated)"
    out[metric_key(prefix)[:250]] = text


def run_params(settings: Settings, ranker_config: Mapping[str, Any], train_config: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params: ``ranker.*``, ``train.*`` and ``settings.<section>.*`` for the sections that shape a
    model (plus ``settings.simulator.*`` on the simulator), flattened, values JSON, cut to 6000 chars."""
    out: dict[str, str] = {}
    _flatten("ranker", dict(ranker_config), out)
    _flatten("train", dict(train_config), out)
    dumped = settings.model_dump(mode="json")
    sections = list(SETTINGS_SECTIONS_AS_PARAMS)
    sections.append("simulator" if settings.pipeline.source == "simulator" else "sources")
    for section in sections:
        _flatten(f"settings.{section}", dumped[section], out)
    return out


def run_metrics(summary: Mapping[str, Any], gates: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Flat metrics of one trained model from the train step's summary (components/training/train_day.py) and the gates:
    ``<task>/<auc|gauc|logloss|calibration|positive_rate|mean_prediction>``, ``<task>/oracle_auc``,
    ``<task>/auc_ratio_to_oracle``, ``<task>/auc_low`` and ``<task>/auc_high`` (the AUC's bootstrap
    interval over users, when the evaluation has one), ``slice/<slice>/<task>/<metric>``, ``training/<...>``, ``rows/<...>``,
    ``gate/<name>`` (its value) and ``gate/<name>/passed`` (1 or 0). Non-finite values are left out."""
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        v = finite_or_none(value)
        if v is not None:
            out[metric_key(key)] = v

    evaluation = summary.get("evaluation") or {}
    per_task_names = ("auc", "gauc", "logloss", "calibration", "positive_rate", "mean_prediction", "rows")
    for task, m in (evaluation.get("overall") or {}).items():
        for name in per_task_names:
            put(f"{task}/{name}", m.get(name))
    for slice_name, per in (evaluation.get("slices") or {}).items():
        for task, m in per.items():
            for name in ("auc", "gauc", "calibration", "rows"):
                put(f"slice/{slice_name}/{task}/{name}", m.get(name))
    for task, interval in (evaluation.get("auc_interval") or {}).items():  # the AUC's bootstrap interval
        put(f"{task}/auc_low", (interval or {}).get("low"))
        put(f"{task}/auc_high", (interval or {}).get("high"))
    oracle = evaluation.get("oracle_auc") or ((summary.get("oracle") or {}).get("oracle") or {})
    for task, v in oracle.items():
        put(f"{task}/oracle_auc", v)
    ratios = evaluation.get("auc_ratio_to_oracle") or {}
    if not ratios and summary.get("oracle") and summary.get("arch"):
        ratios = (summary["oracle"].get("ratio") or {}).get(summary["arch"], {})
    for task, v in ratios.items():
        put(f"{task}/auc_ratio_to_oracle", v)
    training = summary.get("training") or {}
    for name in ("samples_per_s", "seconds", "epochs", "best_epoch", "best_metric", "steps", "final_train_loss"):
        put(f"training/{name}", training.get(name))
    for name, v in (summary.get("rows") or {}).items():
        put(f"rows/{name}", v)
    for g in gates:
        put(f"gate/{g['name']}", g.get("value"))
        out[metric_key(f"gate/{g['name']}/passed")] = 1.0 if g["passed"] else 0.0
    return out


def epoch_values(record: Mapping[str, Any]) -> dict[str, float]:
    """One epoch's curve points (a ``history.json`` record or the trainer's ``epoch`` event):
    ``epoch/train_loss``, ``epoch/train_loss/<task>``, ``epoch/valid_auc/<task>``,
    ``epoch/valid_logloss/<task>``, ``epoch/samples_per_s``; non-finite values left out."""
    values: dict[str, Any] = {"epoch/train_loss": record.get("train_loss"),
                              "epoch/samples_per_s": record.get("samples_per_s")}
    for name in ("train_loss", "valid_auc", "valid_logloss"):
        per_task = record.get("train_loss_per_task" if name == "train_loss" else name) or {}
        values.update({f"epoch/{name}/{t}": v for t, v in per_task.items()})
    return {metric_key(k): v for k, value in values.items() if (v := finite_or_none(value)) is not None}


def epoch_metrics(history: Sequence[Mapping[str, Any]], after_epoch: int = 0) -> list[Any]:
    """Per-epoch curves (step = epoch, :func:`epoch_values`) of the epochs after ``after_epoch`` (those the
    training run did not log live: components/registry/training_run.py)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    out = []
    for i, rec in enumerate(history):
        step = int(rec.get("epoch", i + 1))
        if step > after_epoch:
            out.extend(Metric(k, v, now, step) for k, v in epoch_values(rec).items())
    return out


def training_curves_plot(history: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Training loss and validation AUC per task against the epoch, as a PNG (None without history)."""
    if not history:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [int(r.get("epoch", i + 1)) for i, r in enumerate(history)]
    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    ax_loss, ax_auc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r.get("train_loss") for r in history], marker="o", label="total")
    for task in (history[0].get("train_loss_per_task") or {}):
        ax_loss.plot(epochs, [(r.get("train_loss_per_task") or {}).get(task) for r in history], marker=".", label=task)
    ax_loss.set(title="training loss", xlabel="epoch")
    ax_loss.legend()
    for task in (history[0].get("valid_auc") or {}):
        ax_auc.plot(epochs, [(r.get("valid_auc") or {}).get(task) for r in history], marker="o", label=task)
    ax_auc.set(title="validation AUC", xlabel="epoch")
    if history[0].get("valid_auc"):
        ax_auc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def pip_requirements() -> list[str]:
    """Exact pins of what loading the pyfunc needs, from the running environment (torch's ``+cpu`` local
    label dropped). The ``adsrec`` code the model needs travels with it (``code_paths``, register.py)."""
    from importlib.metadata import version

    return [f"{dist}=={version(dist).split('+')[0]}"
            for dist in ("mlflow", "torch", "numpy", "pandas", "pyarrow")]


def log_run_contents(client: "mlflow.MlflowClient", run_id: str, settings: Settings, folder: ModelFolder,
                     summary: Mapping[str, Any], gate_rows: Sequence[Mapping[str, Any]], *,
                     tags: Mapping[str, str], feature_views: Mapping[str, Any] | None,
                     plots: Iterable[Path], sample_files: Iterable[Path] = (), epochs_logged: int = 0,
                     training_set: str | Path | None = None) -> None:
    """Log into the active run ``run_id``: ``tags``, :func:`run_params`, :func:`run_metrics` and the
    per-epoch curves after epoch ``epochs_logged`` (those the training run logged live are not logged
    twice), the settings and configs (``config/``), ``feature_views.json``, the gate results,
    the evaluation (and ``evaluation.txt`` when the summary has one), ``plots`` under ``plots/`` and the
    scoring-sample files; with ``training_set``, the training set as the run's input dataset."""
    import mlflow
    from mlflow.entities import Metric

    mlflow.set_tags(dict(tags))
    mlflow.log_params(run_params(settings, folder.ranker_config, folder.train_config))
    now_ms = int(dt.datetime.now().timestamp() * 1000)
    client.log_batch(run_id, metrics=[
        *(Metric(k, v, now_ms, 0) for k, v in run_metrics(summary, gate_rows).items()),
        *epoch_metrics(folder.history, after_epoch=epochs_logged),
    ])
    mlflow.log_dict(settings.model_dump(mode="json"), "config/settings.json")
    mlflow.log_dict(dict(folder.ranker_config), "config/ranker_config.json")
    mlflow.log_dict(dict(folder.train_config), "config/train_config.json")
    mlflow.log_text(json.dumps(feature_views or {}, indent=1, default=str), "feature_views.json")
    mlflow.log_text(json.dumps(list(gate_rows), indent=1, default=str), GATES_ARTIFACT)
    mlflow.log_text(json.dumps(folder.evaluation, indent=1, default=str), EVALUATION_ARTIFACT)
    if summary.get("evaluation_text"):
        mlflow.log_text(str(summary["evaluation_text"]), "evaluation.txt")
    for p in plots:
        mlflow.log_artifact(str(p), "plots")
    for p in sample_files:
        mlflow.log_artifact(str(p))
    if training_set is not None:
        from components.registry.signature import training_dataset

        mlflow.log_input(training_dataset(training_set), context="training")

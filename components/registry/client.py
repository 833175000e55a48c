"""The MLflow model registry of the ranker (DESIGN.md section 9; docs/registry.md).

Every trained model becomes one MLflow run and one version of the registered model
``settings.registry.model_name`` (default ``adsrec-ranker``):

- :func:`register_model` logs the resolved configuration (params, and the whole settings as JSON), the data
  window, feature-view versions, code revision, metrics (per task overall and per slice, oracle AUC,
  training speed, per-epoch curves), the gate results, plots, the evaluation, a scoring sample with the
  scores computed at training time, and the model itself as a self-contained MLflow pyfunc
  (components/registry/packaged.py). It registers a new version and aliases it ``challenger`` only when every gate
  passed;
- :func:`promote` moves ``champion`` to a version (refusing one whose gates failed unless forced with a
  reason, which is recorded) and ``previous`` to the old champion; :func:`rollback` undoes the last
  promotion. The chain of champions is kept as a registered-model tag (``champion_history``);
- :func:`champion`, :func:`list_versions` and :func:`load_champion` read it back.

Never relies on the process-wide MLflow URI: every call points MLflow at ``settings.mlflow_tracking_uri``
for its own duration (and restores what was there), so two settings objects in one process use two
registries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    import mlflow
    import pyarrow as pa

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS = "previous"
GATES_PASSED_TAG = "gates_passed"
HISTORY_TAG = "champion_history"  # registered-model tag: JSON list, oldest first, the last is the champion
HISTORY_LIMIT = 100
MODEL_NAME_IN_RUN = "model"
GATES_ARTIFACT = "gates.json"
EVALUATION_ARTIFACT = "evaluation.json"
SAMPLE_ARTIFACT = "scoring_sample.parquet"
SAMPLE_SCORES_ARTIFACT = "scoring_sample_scores.parquet"
SAMPLE_MAX_ROWS = 4096
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
MAX_TAG_LENGTH = 5000  # below MLflow's run-tag limit (8000)
SETTINGS_SECTIONS_AS_PARAMS = ("pipeline", "features", "training", "gates", "registry")

_URI_LOCK = threading.RLock()


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (no such version, nothing to roll back to, ...)."""


class PromotionError(RegistryError):
    """A promotion was refused (failed gates without ``force`` and a reason)."""


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
class VersionInfo:
    """One registered version as the registry holds it.

    ``metrics`` are the run's metrics (``"<task>/auc"``, ``"<task>/gauc"``, ``"<task>/logloss"``,
    ``"<task>/calibration"``, ``"training/samples_per_s"``, ``"gate/<name>"``, ...); :meth:`task_metrics`
    regroups the per-task ones as ``{task: {"auc": ..., ...}}``, the shape ``validation.gates.model_gate``
    takes for the champion. ``gates``: the full gate results (``name, value, threshold, passed, details``)
    from :func:`champion`, only ``name`` and ``passed`` (from the version tags) from :func:`list_versions`.
    """

    name: str
    version: int
    run_id: str | None
    aliases: tuple[str, ...]
    gates_passed: bool
    gates: tuple[dict[str, Any], ...]
    metrics: dict[str, float]
    tags: dict[str, str]
    created: dt.datetime
    data_window: tuple[dt.date, dt.date] | None
    tasks: tuple[str, ...] = ()
    model_uri: str = ""
    failed_gates: tuple[str, ...] = field(default=())

    def task_metrics(self) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` from the ``<task>/<metric>`` run metrics."""
        out: dict[str, dict[str, float]] = {t: {} for t in self.tasks}
        for key, value in self.metrics.items():
            task, _, metric = key.partition("/")
            if task in out and metric and "/" not in metric:
                out[task][metric] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id, "aliases": list(self.aliases),
                "gates_passed": self.gates_passed, "failed_gates": list(self.failed_gates),
                "gates": list(self.gates), "metrics": self.metrics, "tasks": list(self.tasks),
                "created": self.created.isoformat(), "model_uri": self.model_uri,
                "data_window": [d.isoformat() for d in self.data_window] if self.data_window else None}


# ----- where MLflow keeps things ---------------------------------------------------------------------------
def artifact_root_uri(settings: Settings) -> str | None:
    """The experiment's artifact location as a URI: a plain path becomes an absolute ``file://`` URI, a
    relative one under ``home`` (MLflow would otherwise resolve it against the working directory).
    None when the tracking URI is an MLflow server and ``registry.artifact_location`` is unset: the
    server's artifact store decides (a local folder of this machine would be unreadable elsewhere)."""
    if settings.registry.artifact_location is None and re.match(r"^(https?|databricks)", settings.mlflow_tracking_uri):
        return None
    loc = settings.mlflow_artifact_location
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", loc):  # a URI (s3://, file:/, mlflow-artifacts:/)
        return loc
    path = Path(loc).expanduser()
    return (path if path.is_absolute() else settings.home / path).resolve().as_uri()


def _local_sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _store_exists(settings: Settings) -> bool:
    """False only for a local SQLite store whose file does not exist yet (nothing registered)."""
    path = _local_sqlite_path(settings.mlflow_tracking_uri)
    return path is None or path.is_file()


@contextlib.contextmanager
def mlflow_client(settings: Settings) -> Iterator["mlflow.MlflowClient"]:
    """An ``MlflowClient`` on the settings' tracking and registry URI, with MLflow's fluent API (runs,
    ``log_model``, ``register_model``, ``pyfunc.load_model``) pointed at the same URI for the duration of
    the block; the previous URIs and ``MLFLOW_*`` environment variables are restored afterwards.
    Blocks in different threads are serialised (the fluent URI is process-wide)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    uri = settings.mlflow_tracking_uri
    sqlite = _local_sqlite_path(uri)
    if sqlite is not None:
        sqlite.parent.mkdir(parents=True, exist_ok=True)
    with _URI_LOCK:
        saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                                                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")}
        # Copying a few local files needs no tqdm bars on stderr (a user's own setting wins).
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # mlflow has no public getter for "what was explicitly set" (get_* return resolved defaults).
        saved_tracking = getattr(tracking_utils, "_tracking_uri", None)
        saved_registry = getattr(registry_utils, "_registry_uri", None)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        finally:
            mlflow.set_tracking_uri(saved_tracking)  # type: ignore[arg-type]
            mlflow.set_registry_uri(saved_registry)  # type: ignore[arg-type]
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _ensure_experiment(client: "mlflow.MlflowClient", settings: Settings) -> str:
    from mlflow.exceptions import MlflowException

    name = settings.registry.experiment
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = artifact_root_uri(settings)
        if location is not None and location.startswith("file://"):
            Path(location[len("file://"):]).mkdir(parents=True, exist_ok=True)
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise RegistryError(f"MLflow experiment {name!r} is deleted: restore it or set registry.experiment")
    return str(exp.experiment_id)


def _ensure_registered_model(client: "mlflow.MlflowClient", name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name, description="The adsrec multi-task ranker: one version per trained model (docs/registry.md).")
        except MlflowException:
            client.get_registered_model(name)  # created meanwhile; anything else raises here


# ----- what gets logged --------------------------------------------------------------------------------------
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


def _key(name: str) -> str:
    """A string MLflow accepts as a metric/param/tag name (letters, digits, ``_-. /:``)."""
    return re.sub(r"[^\w\-. /:]", "_", str(name)).strip("/") or "_"


def _finite(value: Any) -> float | None:
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
    out[_key(prefix)[:250]] = text


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
    ``<task>/auc_ratio_to_oracle``, ``slice/<slice>/<task>/<metric>``, ``training/<...>``, ``rows/<...>``,
    ``gate/<name>`` (its value) and ``gate/<name>/passed`` (1 or 0). Non-finite values are left out."""
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        v = _finite(value)
        if v is not None:
            out[_key(key)] = v

    evaluation = summary.get("evaluation") or {}
    per_task_names = ("auc", "gauc", "logloss", "calibration", "positive_rate", "mean_prediction", "rows")
    for task, m in (evaluation.get("overall") or {}).items():
        for name in per_task_names:
            put(f"{task}/{name}", m.get(name))
    for slice_name, per in (evaluation.get("slices") or {}).items():
        for task, m in per.items():
            for name in ("auc", "gauc", "calibration", "rows"):
                put(f"slice/{slice_name}/{task}/{name}", m.get(name))
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
        out[_key(f"gate/{g['name']}/passed")] = 1.0 if g["passed"] else 0.0
    return out


def _epoch_metrics(history: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Per-epoch curves (step = epoch): ``epoch/train_loss``, ``epoch/train_loss/<task>``,
    ``epoch/valid_auc/<task>``, ``epoch/samples_per_s``."""
    import time

    from mlflow.entities import Metric
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    now = int(time.time() * 1000)
    out = []
    for i, rec in enumerate(history):
        step = int(rec.get("epoch", i + 1))
        values: dict[str, Any] = {"epoch/train_loss": rec.get("train_loss"),
                                  "epoch/samples_per_s": rec.get("samples_per_s")}
        values.update({f"epoch/train_loss/{t}": v for t, v in (rec.get("train_loss_per_task") or {}).items()})
        values.update({f"epoch/valid_auc/{t}": v for t, v in (rec.get("valid_auc") or {}).items()})
        for key, value in values.items():
            v = _finite(value)
            if v is not None:
                out.append(Metric(_key(key), v, now, step))
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
    label dropped). The ``adsrec`` package itself must be installed where the model is loaded."""
    from importlib.metadata import version

    return [f"{dist}=={version(dist).split('+')[0]}"
            for dist in ("mlflow", "torch", "numpy", "pandas", "pyarrow")]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _window(data_window: tuple[dt.date, dt.date]) -> tuple[dt.date, dt.date]:
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


# ----- register ----------------------------------------------------------------------------------------------
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
) -> RegisteredVersion:
    """Log one trained model to MLflow and register it as a new version of ``registry.model_name``.

    Args:
        settings: resolved settings (tracking URI, experiment, model name; logged as the run's config).
        model_dir: the folder ``TrainResult.save`` wrote (``model.pt``, ``encoders.json``, ``spec.json``,
            ``ranker_config.json``, ``train_config.json``, ``history.json``; ``evaluation.json`` if present).
        summary: the train step's JSON-able result (components/training/train_day.py ``train_and_evaluate``).
        gates: gate results ``{name, value, threshold, passed, details}`` (dicts or ``GateResult``).
            The version is aliased ``challenger`` only when there is at least one gate and all passed.
        plots: image files logged under ``plots/`` (a training-curve plot is added from ``history.json``).
        data_window: first and last day of the data the model was trained and evaluated on.
        feature_views: feature-view name -> version/fingerprint (a run tag as JSON and ``feature_views.json``).
        sample_rows: rows to score (e.g. 256 of the validation day, with the feature columns); logged as
            ``scoring_sample.parquet`` with this process's scores as ``scoring_sample_scores.parquet``
            (columns ``p_<task>``, same row order), so a later process can check it reproduces them.
            At most ``SAMPLE_MAX_ROWS`` rows are kept.

    Returns:
        The version number, run id, ``models:/<name>/<version>`` URI and the aliases it set.
    """
    import mlflow
    import pyarrow.parquet as pq
    from mlflow.entities import Metric
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from components.registry.packaged import RANKER_ARTIFACT, PackagedRanker, write_model_code

    cfg = settings.registry
    if not cfg.enabled:
        raise RegistryError("registry.enabled is false: not registering the model")
    model_dir = Path(model_dir)
    gate_rows = normalise_gates(gates)
    passed = bool(gate_rows) and all(g["passed"] for g in gate_rows)
    failed = [g["name"] for g in gate_rows if not g["passed"]]
    start, end = _window(data_window)
    revision, dirty = code_revision()
    ranker_config = _read_json(model_dir / "ranker_config.json") or {}
    train_config = _read_json(model_dir / "train_config.json") or {}
    history_doc = _read_json(model_dir / "history.json") or {}
    history = history_doc.get("history", []) if isinstance(history_doc, dict) else []
    evaluation_doc = _read_json(model_dir / "evaluation.json") or dict(summary)
    plot_paths = [Path(p) for p in plots if p is not None]
    absent = [str(p) for p in plot_paths if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"plots not found: {', '.join(absent)}")

    with tempfile.TemporaryDirectory(prefix="adsrec-register-") as tmp_name:
        tmp = Path(tmp_name)
        staged = _stage_model_dir(model_dir, tmp / RANKER_ARTIFACT)
        scorer = PackagedRanker().load(staged)
        tasks = scorer.tasks
        if sample_rows is not None:
            sample = sample_rows.slice(0, SAMPLE_MAX_ROWS)
            pq.write_table(sample, tmp / SAMPLE_ARTIFACT)
            scores = scorer.score_table(sample)
            scores.to_parquet(tmp / SAMPLE_SCORES_ARTIFACT, index=False)
        curves = training_curves_plot(history, tmp / "training_curves.png")

        window_tags = {"data_window_start": start.isoformat(), "data_window_end": end.isoformat()}
        gate_tags = {_key(f"gate.{g['name']}.passed"): str(g["passed"]).lower() for g in gate_rows}
        common_tags = {
            GATES_PASSED_TAG: str(passed).lower(),
            "failed_gates": ",".join(failed),
            "tasks": ",".join(tasks),
            "arch": str(ranker_config.get("arch", summary.get("arch", "unknown"))),
            "code_revision": revision,
            "code_dirty": "unknown" if dirty is None else str(dirty).lower(),
            **window_tags,
            **gate_tags,
        }
        fv_json = json.dumps(feature_views or {}, default=str, sort_keys=True)
        run_tags = {**common_tags, "data_window": f"{start.isoformat()}..{end.isoformat()}",
                    "feature_views": fv_json if len(fv_json) <= MAX_TAG_LENGTH else fv_json[:MAX_TAG_LENGTH - 30]
                    + "...(see feature_views.json)", "model_dir": str(model_dir)}

        with mlflow_client(settings) as client:
            experiment_id = _ensure_experiment(client, settings)
            _ensure_registered_model(client, cfg.model_name)
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"{cfg.model_name}-{end.isoformat()}",
                                  nested=mlflow.active_run() is not None) as run:
                run_id = run.info.run_id
                mlflow.set_tags(run_tags)
                mlflow.log_params(run_params(settings, ranker_config, train_config))
                now_ms = int(dt.datetime.now().timestamp() * 1000)
                client.log_batch(run_id, metrics=[
                    *(Metric(k, v, now_ms, 0) for k, v in run_metrics(summary, gate_rows).items()),
                    *_epoch_metrics(history),
                ])
                mlflow.log_dict(settings.model_dump(mode="json"), "config/settings.json")
                mlflow.log_dict(dict(ranker_config), "config/ranker_config.json")
                mlflow.log_dict(dict(train_config), "config/train_config.json")
                mlflow.log_text(json.dumps(feature_views or {}, indent=1, default=str), "feature_views.json")
                mlflow.log_text(json.dumps(gate_rows, indent=1, default=str), GATES_ARTIFACT)
                mlflow.log_text(json.dumps(evaluation_doc, indent=1, default=str), EVALUATION_ARTIFACT)
                if summary.get("evaluation_text"):
                    mlflow.log_text(str(summary["evaluation_text"]), "evaluation.txt")
                for p in [*plot_paths, *([curves] if curves else [])]:
                    mlflow.log_artifact(str(p), "plots")
                if sample_rows is not None:
                    mlflow.log_artifact(str(tmp / SAMPLE_ARTIFACT))
                    mlflow.log_artifact(str(tmp / SAMPLE_SCORES_ARTIFACT))
                with warnings.catch_warnings():
                    # No input_example on purpose: list and timestamp columns do not survive MLflow's JSON
                    # example; the scoring sample is logged as parquet instead (SAMPLE_ARTIFACT).
                    warnings.filterwarnings("ignore", message=".*input example was not provided.*")
                    info = mlflow.pyfunc.log_model(
                        name=MODEL_NAME_IN_RUN,
                        python_model=str(write_model_code(tmp / "adsrec_ranker.py")),
                        artifacts={RANKER_ARTIFACT: str(staged)},
                        pip_requirements=pip_requirements(),
                        # Outputs only: the input is the training set's columns (lists, timestamps, nullable
                        # ints), which MLflow's input schema enforcement would coerce; the encoders check it.
                        signature=ModelSignature(inputs=None, outputs=Schema(
                            [ColSpec("float", f"p_{t}") for t in tasks])),
                        metadata={"tasks": list(tasks), "outputs": [f"p_{t}" for t in tasks],
                                  "feature_columns": scorer.feature_columns},
                    )
                mv = mlflow.register_model(info.model_uri, cfg.model_name,
                                           tags={**common_tags, "run_id": run_id})
            version = int(mv.version)
            aucs = ", ".join(f"{t} AUC {m['auc']:.4f}" for t, m in
                             ((summary.get("evaluation") or {}).get("overall") or {}).items()
                             if _finite(m.get("auc")) is not None)
            client.update_model_version(cfg.model_name, str(version), description=(
                f"{common_tags['arch']} trained on {start}..{end}; {aucs or 'no AUC'}; gates "
                + ("passed" if passed else f"FAILED ({', '.join(failed) or 'none evaluated'})")))
            aliases: tuple[str, ...] = ()
            if passed:
                client.set_registered_model_alias(cfg.model_name, CHALLENGER, str(version))
                aliases = (CHALLENGER,)
    log.info("registered %s version %d (run %s); gates %s", cfg.model_name, version, run_id,
             "passed: aliased challenger" if passed else f"failed: {failed or 'none evaluated'}")
    return RegisteredVersion(name=cfg.model_name, version=version, run_id=run_id,
                             model_uri=f"models:/{cfg.model_name}/{version}", logged_model_uri=info.model_uri,
                             gates_passed=passed, aliases=aliases, experiment_id=experiment_id)


# ----- read back ---------------------------------------------------------------------------------------------
def _version_info(client: "mlflow.MlflowClient", mv: Any, full_gates: bool,
                  aliases: Mapping[str, Any] | None = None) -> VersionInfo:
    """``aliases``: the registered model's alias -> version map (version searches leave aliases out)."""
    tags = dict(mv.tags or {})
    held = (mv.aliases or ()) if aliases is None else [a for a, v in aliases.items() if int(v) == int(mv.version)]
    run_id = mv.run_id or tags.get("run_id")
    metrics: dict[str, float] = {}
    gates: list[dict[str, Any]] = []
    if run_id:
        try:
            metrics = dict(client.get_run(run_id).data.metrics)
        except Exception as exc:  # noqa: BLE001 - a deleted run leaves the version readable
            log.warning("run %s of %s version %s is unreadable: %s", run_id, mv.name, mv.version, exc)
        if full_gates:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    gates = json.loads(Path(client.download_artifacts(run_id, GATES_ARTIFACT, tmp)).read_text())
                except Exception as exc:  # noqa: BLE001
                    log.warning("no %s in run %s: %s", GATES_ARTIFACT, run_id, exc)
    if not gates:
        prefix, suffix = "gate.", ".passed"
        gates = [{"name": k[len(prefix):-len(suffix)], "passed": v == "true"}
                 for k, v in sorted(tags.items()) if k.startswith(prefix) and k.endswith(suffix)]
    window = None
    if tags.get("data_window_start") and tags.get("data_window_end"):
        window = (dt.date.fromisoformat(tags["data_window_start"]), dt.date.fromisoformat(tags["data_window_end"]))
    return VersionInfo(
        name=mv.name, version=int(mv.version), run_id=run_id, aliases=tuple(sorted(held)),
        gates_passed=tags.get(GATES_PASSED_TAG) == "true", gates=tuple(gates), metrics=metrics, tags=tags,
        created=dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=dt.timezone.utc),
        data_window=window, tasks=tuple(t for t in tags.get("tasks", "").split(",") if t),
        model_uri=f"models:/{mv.name}/{mv.version}",
        failed_gates=tuple(t for t in tags.get("failed_gates", "").split(",") if t),
    )


def _by_alias(client: "mlflow.MlflowClient", name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def version_info(settings: Settings, version: int | None = None, alias: str | None = None) -> VersionInfo | None:
    """One version by number or alias (with its full gate results), None when there is none."""
    from mlflow.exceptions import MlflowException

    if (version is None) == (alias is None):
        raise ValueError("give exactly one of version and alias")
    if not _store_exists(settings):
        return None
    name = settings.registry.model_name
    with mlflow_client(settings) as client:
        if alias is not None:
            mv = _by_alias(client, name, alias)
        else:
            try:
                mv = client.get_model_version(name, str(version))
            except MlflowException:
                mv = None
        return None if mv is None else _version_info(client, mv, full_gates=True)


def champion(settings: Settings) -> VersionInfo | None:
    """The version aliased ``champion`` (run metrics, full gate results), or None when there is none."""
    return version_info(settings, alias=CHAMPION)


def list_versions(settings: Settings) -> list[VersionInfo]:
    """Every version of ``registry.model_name``, newest first (gates from the version tags)."""
    if not _store_exists(settings):
        return []
    name = settings.registry.model_name
    from mlflow.exceptions import MlflowException

    with mlflow_client(settings) as client:
        try:
            aliases = dict(client.get_registered_model(name).aliases or {})
        except MlflowException:
            return []  # no such registered model yet
        found = client.search_model_versions(f"name = '{name}'")
        infos = [_version_info(client, mv, full_gates=False, aliases=aliases) for mv in found]
    return sorted(infos, key=lambda v: v.version, reverse=True)


def load_champion(settings: Settings, alias: str = CHAMPION) -> Any:
    """The ``mlflow.pyfunc.PyFuncModel`` of ``models:/<model_name>@<alias>``: ``.predict(rows)`` gives the
    ``p_<task>`` DataFrame; ``.unwrap_python_model()`` is the :class:`components.registry.packaged.PackagedRanker`
    (``.score_table(pyarrow_table)`` skips the pandas round trip). Raises ``RegistryError`` when no
    version has the alias."""
    import mlflow

    name = settings.registry.model_name
    if not _store_exists(settings):
        raise RegistryError(f"no MLflow registry at {settings.mlflow_tracking_uri}: nothing registered yet")
    with mlflow_client(settings) as client:
        if _by_alias(client, name, alias) is None:
            raise RegistryError(f"no version of {name!r} has the alias {alias!r}"
                                + (" (promote one: adsrec promote --version V)" if alias == CHAMPION else ""))
        return mlflow.pyfunc.load_model(f"models:/{name}@{alias}")


# ----- promote / rollback ------------------------------------------------------------------------------------
def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER") or "unknown"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _history(client: "mlflow.MlflowClient", name: str) -> list[dict[str, Any]]:
    raw = (client.get_registered_model(name).tags or {}).get(HISTORY_TAG)
    try:
        hist = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        log.warning("registered model %s: unreadable %s tag, starting a new history", name, HISTORY_TAG)
        hist = []
    return [h for h in hist if isinstance(h, dict) and "version" in h]


def _save_history(client: "mlflow.MlflowClient", name: str, history: list[dict[str, Any]]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_LIMIT:]))


def _set_or_clear_alias(client: "mlflow.MlflowClient", name: str, alias: str, version: int | None) -> None:
    if version is None:
        if _by_alias(client, name, alias) is not None:
            client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, str(version))


def promote(settings: Settings, version: int, force: bool = False, reason: str | None = None,
            *, by: str | None = None) -> dict[str, Any]:
    """Make ``version`` the ``champion``; the old champion becomes ``previous``.

    Refuses (``PromotionError`` naming the failed gates) a version whose ``gates_passed`` tag is not
    "true", unless ``force`` with a non-empty ``reason``; a forced promotion records
    ``forced_promotion_reason`` on the version. Every promotion records ``promoted_by``/``promoted_at``
    tags and appends to the registered model's ``champion_history``. Promoting the current champion
    changes nothing. Returns ``{model, champion, previous, forced, reason, by, at, changed}``.
    """
    from mlflow.exceptions import MlflowException

    name = settings.registry.model_name
    if not _store_exists(settings):
        raise RegistryError(f"no MLflow registry at {settings.mlflow_tracking_uri}: nothing registered yet")
    reason = (reason or "").strip() or None
    by = by or _who()
    with mlflow_client(settings) as client:
        try:
            mv = client.get_model_version(name, str(int(version)))
        except MlflowException:
            raise RegistryError(f"{name!r} has no version {version}") from None
        tags = dict(mv.tags or {})
        gates_ok = tags.get(GATES_PASSED_TAG) == "true"
        if not gates_ok:
            failed = tags.get("failed_gates") or "no gates were evaluated"
            why = f"{name} version {version} failed its gates ({failed})"
            if not force:
                raise PromotionError(f"{why}: refusing to promote it; use --force with --reason to override")
            if reason is None:
                raise PromotionError(f"{why}: a forced promotion needs a non-empty --reason")
        current = _by_alias(client, name, CHAMPION)
        current_v = int(current.version) if current is not None else None
        at = _now()
        result = {"model": name, "champion": int(version), "forced": bool(force and not gates_ok),
                  "reason": reason, "by": by, "at": at, "changed": current_v != int(version)}
        if current_v == int(version):
            prev = _by_alias(client, name, PREVIOUS)
            result["previous"] = int(prev.version) if prev is not None else None
            return result
        history = _history(client, name)
        if current_v is not None and (not history or int(history[-1]["version"]) != current_v):
            history.append({"version": current_v, "at": None, "by": None, "note": "champion found without history"})
        history.append({"version": int(version), "at": at, "by": by, "forced": result["forced"], "reason": reason})
        client.set_registered_model_alias(name, CHAMPION, str(version))
        _set_or_clear_alias(client, name, PREVIOUS, current_v)
        challenger = _by_alias(client, name, CHALLENGER)
        if challenger is not None and int(challenger.version) == int(version):
            client.delete_registered_model_alias(name, CHALLENGER)
        client.set_model_version_tag(name, str(version), "promoted_by", by)
        client.set_model_version_tag(name, str(version), "promoted_at", at)
        if result["forced"]:
            client.set_model_version_tag(name, str(version), "forced_promotion_reason", reason or "")
        elif reason:
            client.set_model_version_tag(name, str(version), "promotion_reason", reason)
        _save_history(client, name, history)
    result["previous"] = current_v
    log.info("%s: champion %s -> %s%s", name, current_v, version, " (forced)" if result["forced"] else "")
    return result


def rollback(settings: Settings, *, by: str | None = None) -> dict[str, Any]:
    """Undo the last promotion: ``champion`` <- ``previous``, and ``previous`` <- the champion before that
    in the history (or removed when there is none). Raises ``RegistryError`` when there is no champion or
    no ``previous`` to roll back to. Returns ``{model, champion, previous, rolled_back, by, at}``."""
    name = settings.registry.model_name
    if not _store_exists(settings):
        raise RegistryError(f"no MLflow registry at {settings.mlflow_tracking_uri}: nothing registered yet")
    by = by or _who()
    with mlflow_client(settings) as client:
        current = _by_alias(client, name, CHAMPION)
        if current is None:
            raise RegistryError(f"{name!r} has no champion: nothing to roll back")
        prev = _by_alias(client, name, PREVIOUS)
        if prev is None:
            raise RegistryError(f"{name!r} has no previous champion (alias {PREVIOUS!r}): nothing to roll back to")
        current_v, prev_v = int(current.version), int(prev.version)
        history = _history(client, name)
        # The history is the chain of champions, newest last; make it agree with the aliases, then pop.
        if not history or int(history[-1]["version"]) != current_v:
            history.append({"version": current_v, "at": None, "by": None, "note": "champion found without history"})
        history.pop()
        if not history or int(history[-1]["version"]) != prev_v:
            history.append({"version": prev_v, "at": None, "by": None, "note": "previous found without history"})
        before = int(history[-2]["version"]) if len(history) >= 2 else None
        at = _now()
        client.set_registered_model_alias(name, CHAMPION, str(prev_v))
        _set_or_clear_alias(client, name, PREVIOUS, before)
        client.set_model_version_tag(name, str(current_v), "rolled_back_at", at)
        client.set_model_version_tag(name, str(current_v), "rolled_back_by", by)
        _save_history(client, name, history)
    log.info("%s: rolled back champion %d -> %d", name, current_v, prev_v)
    return {"model": name, "champion": prev_v, "previous": before, "rolled_back": current_v, "by": by, "at": at}


def maybe_auto_promote(settings: Settings, registered: RegisteredVersion) -> dict[str, Any] | None:
    """Apply ``registry.auto_promote`` to a just-registered version whose gates passed: "always" promotes
    it, "if_no_champion" only when there is no champion yet, "never" does nothing. Returns
    :func:`promote`'s result, or None when nothing was promoted."""
    mode = settings.registry.auto_promote
    if not registered.gates_passed or mode == "never":
        return None
    if mode == "if_no_champion" and champion(settings) is not None:
        return None
    return promote(settings, registered.version, reason=f"auto_promote={mode}", by=f"adsrec (auto_promote={mode})")


# ----- display -----------------------------------------------------------------------------------------------
def versions_table(versions: Sequence[VersionInfo]) -> str:
    """A fixed-width table: version, aliases, gates, AUC per task, data window, created (UTC)."""
    tasks: list[str] = []
    for v in versions:
        tasks += [t for t in v.tasks if t not in tasks]
    head = ["version", "aliases", "gates"] + [f"{t} AUC" for t in tasks] + ["window", "created (UTC)"]
    rows = [head]
    for v in versions:
        gates = "passed" if v.gates_passed else "FAILED: " + (",".join(v.failed_gates) or "none evaluated")
        aucs = [f"{v.metrics[f'{t}/auc']:.4f}" if f"{t}/auc" in v.metrics else "-" for t in tasks]
        window = f"{v.data_window[0]}..{v.data_window[1]}" if v.data_window else "-"
        rows.append([str(v.version), ",".join(v.aliases) or "-", gates, *aucs, window,
                     v.created.strftime("%Y-%m-%d %H:%M")])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

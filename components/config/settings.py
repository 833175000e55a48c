"""The whole configuration, :class:`Settings`: one field per section, the source's task names, and the
state layout under ``home`` (every folder a step writes to, derived; docs/state.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from components.config.deploy import DeployConfig, ServingConfig
from components.config.pipeline import FeatureConfig, IngestConfig, PipelineConfig
from components.config.release import GatesConfig, RegistryConfig
from components.config.representations import RepresentationConfig
from components.config.section import Section
from components.config.sources import BUILTIN_SOURCE_TASKS, FilesSourceConfig, RealSourcesConfig, SimulatorConfig
from components.config.training import TrainingConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HOME = Path(".adsrec")


class Settings(Section):
    """Every setting of the platform, by section; the paths below ``home`` derive from it."""

    home: Path = Field(DEFAULT_HOME, description="the state folder: everything adsrec writes lives under it")
    home_umask: str = Field("027", description="the umask (octal) adsrec commands write the home with: 027 "
                                               "makes folders and files group-readable, 077 private, 022 "
                                               "world-readable (docs/state.md)")
    pipeline: PipelineConfig = Field(PipelineConfig(), description="the source, dates and window sizes")
    simulator: SimulatorConfig = Field(SimulatorConfig(), description="the demo marketplace")
    ingest: IngestConfig = Field(IngestConfig(), description="validated ingestion")
    features: FeatureConfig = Field(FeatureConfig(), description="feature views and training sets")
    sources: RealSourcesConfig = Field(RealSourcesConfig(), description="the Taobao and MovieLens adapters")
    files: FilesSourceConfig = Field(FilesSourceConfig(), description="the files source: your own logs")
    representations: RepresentationConfig = Field(
        RepresentationConfig(), description="pre-trained text, visual and graph representations")
    training: TrainingConfig = Field(TrainingConfig(), description="the ranker the daily run trains")
    gates: GatesConfig = Field(GatesConfig(), description="the quality gates a new model must pass")
    registry: RegistryConfig = Field(RegistryConfig(), description="MLflow tracking and model registry")
    deploy: DeployConfig = Field(DeployConfig(), description="adsrec up: the local services and deployments")
    serving: ServingConfig = Field(ServingConfig(), description="adsrec serve: the HTTP scoring service")

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

    @field_validator("home_umask", mode="before")
    @classmethod
    def _octal_umask(cls, value: object) -> str:
        if not isinstance(value, str):  # YAML reads 027 as the number 23 and 27 as 27: only text is unambiguous
            raise ValueError(f"home_umask {value!r} must be quoted octal text, e.g. home_umask: '027'")
        text = str(value).strip().lower().removeprefix("0o")
        if not text or len(text) > 4 or any(c not in "01234567" for c in text):
            raise ValueError(f"home_umask {value!r} is not an octal umask such as '027' or '0o022'")
        return text.rjust(3, "0")

    @property
    def umask(self) -> int:
        """home_umask as a number (``os.umask``)."""
        return int(self.home_umask, 8)

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
        """Rows ingestion rejected, with their reason, per table and day, and the ingest reports."""
        return self.home / "quarantine"

    @property
    def features_dir(self) -> Path:
        """Feature view partitions (stats, click sequences), read by Feast."""
        return self.home / "features"

    @property
    def training_dir(self) -> Path:
        """Point-in-time training sets, one folder per window end day."""
        return self.home / "training"

    @property
    def feast_dir(self) -> Path:
        """The Feast registry, online store and its feature_store.yaml."""
        return self.home / "feast"

    @property
    def feast_yaml(self) -> Path:
        """The Feast configuration the store step writes for this home (point ``feast`` at it)."""
        return self.feast_dir / "feature_store.yaml"

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
        """The default MLflow store: its SQLite database and artifact folder."""
        return self.home / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        """registry.tracking_uri, or SQLite under mlflow_dir."""
        return self.registry.tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def mlflow_artifact_location(self) -> str:
        """registry.artifact_location, or the artifacts folder under mlflow_dir."""
        return self.registry.artifact_location or str(self.mlflow_dir / "artifacts")

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME: the local Prefect server's database and settings."""
        return self.home / "prefect"

    @property
    def runs_dir(self) -> Path:
        """Run summaries (JSON), one per flow run."""
        return self.home / "runs"

    @property
    def truth_dir(self) -> Path:
        """Simulator ground truth (true probabilities, latent preferences): never read as features."""
        return self.home / "truth"

    @property
    def shared_data(self) -> Path:
        """pipeline.shared_data, made absolute by resolved()."""
        return self.pipeline.shared_data

    def resolved(self) -> "Settings":
        """Absolute paths, so steps may run from any working directory."""
        out = self.model_copy(deep=True)
        out.home = self.home.expanduser().resolve()
        shared = self.pipeline.shared_data.expanduser()
        # A relative data folder is relative to the project root (DESIGN.md: ../shared/data beside the repo).
        out.pipeline.shared_data = (shared if shared.is_absolute() else PROJECT_ROOT / shared).resolve()
        return out

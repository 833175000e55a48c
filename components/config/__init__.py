"""One typed configuration for the whole platform.

Precedence, lowest to highest: the defaults below, a YAML file (``--config`` or ``ADSREC_CONFIG``), then
environment variables ``ADSREC_<SECTION>__<FIELD>`` (e.g. ``ADSREC_SIMULATOR__N_USERS=500``), and
``ADSREC_HOME`` for the state folder. All state lives under ``home``; nothing is written anywhere else
and nothing is written at import time: folders are created by the steps that write into them.

Modules, by concern: ``settings`` (:class:`Settings`, the state layout), ``loading`` (:func:`load_settings`,
:class:`ConfigError`), ``describe`` (what ``adsrec config`` prints), and the sections: ``sources``
(simulator, real-log adapters, files source), ``pipeline`` (pipeline, ingest, features),
``representations``, ``training`` (the typed ranker and trainer), ``release`` (gates, registry),
``deploy``. This package re-exports their public names: import them from ``components.config``.
"""

from components.config.deploy import DeployConfig, ServingConfig
from components.config.describe import SettingRow, describe_settings, render_settings
from components.config.loading import ENV_PREFIX, ConfigError, load_settings
from components.config.pipeline import FeatureConfig, IngestConfig, PipelineConfig
from components.config.release import GatesConfig, RegistryConfig
from components.config.representations import RepresentationConfig
from components.config.section import Section
from components.config.settings import DEFAULT_HOME, PROJECT_ROOT, Settings
from components.config.sources import (
    BUILTIN_SOURCE_TASKS,
    FilesSourceConfig,
    FileTableConfig,
    NegativeSamplingConfig,
    RealSourcesConfig,
    SimulatorConfig,
)
from components.config.training import (
    ExpertKind,
    MeCombine,
    MnseCombine,
    RankerArch,
    RankerSettings,
    SequenceEncoderKind,
    TimTemporal,
    TrainerSettings,
    TrainingConfig,
)

__all__ = [
    "BUILTIN_SOURCE_TASKS", "DEFAULT_HOME", "ENV_PREFIX", "PROJECT_ROOT",
    "ConfigError", "DeployConfig", "ExpertKind", "FeatureConfig", "FileTableConfig", "FilesSourceConfig",
    "GatesConfig", "IngestConfig", "MeCombine", "MnseCombine", "NegativeSamplingConfig", "PipelineConfig",
    "RankerArch", "RankerSettings", "RealSourcesConfig", "RegistryConfig", "RepresentationConfig", "Section",
    "ServingConfig",
    "SequenceEncoderKind", "SettingRow", "Settings", "SimulatorConfig", "TimTemporal", "TrainerSettings",
    "TrainingConfig", "describe_settings", "load_settings", "render_settings",
]

"""What ``adsrec config`` prints: every setting with its resolved value and description, and the paths
and URIs derived from them (the state folders, the MLflow tracking URI and artifact location, the Data
Docs page, the Feast yaml), as rows (:func:`describe_settings`) or as commented YAML (:func:`render_settings`)."""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel

from components.config.settings import Settings

# The derived values, in print order: Settings properties (described by their docstrings).
DERIVED_PROPERTIES = (
    "tasks", "shared_data", "raw_dir", "offline_dir", "quarantine_dir", "features_dir", "training_dir",
    "feast_dir", "feast_yaml", "embeddings_dir", "models_dir", "gx_dir", "mlflow_dir", "mlflow_tracking_uri",
    "mlflow_artifact_location", "prefect_home", "runs_dir", "truth_dir",
)
DATA_DOCS_KEY = "data_docs_index"


class SettingRow(NamedTuple):
    """One printed line: ``key`` dotted (``training.ranker.arch``; a derived value by its name), ``value``
    JSON-ready (None for a section), ``kind``: a ``section``, a ``value`` you can set, or a ``derived``
    value computed from them."""

    key: str
    value: Any
    description: str
    kind: Literal["section", "value", "derived"]


def _field_rows(model: BaseModel, dumped: dict[str, Any], prefix: str) -> Iterator[SettingRow]:
    for name, field in type(model).model_fields.items():
        key, value = f"{prefix}{name}", getattr(model, name)
        if isinstance(value, BaseModel):
            yield SettingRow(key, None, field.description or "", "section")
            yield from _field_rows(value, dumped[name], key + ".")
        else:
            yield SettingRow(key, dumped[name], field.description or "", "value")


def _derived_rows(settings: Settings) -> Iterator[SettingRow]:
    from validation.gx_project import data_docs_index

    for name in DERIVED_PROPERTIES:
        value = getattr(settings, name)
        doc = inspect.getdoc(getattr(Settings, name)) or ""
        value = list(value) if isinstance(value, tuple) else str(value)
        yield SettingRow(name, value, " ".join(doc.replace("``", "").split()), "derived")
    yield SettingRow(DATA_DOCS_KEY, str(data_docs_index(settings.gx_dir)),
                     "the Great Expectations Data Docs page, rebuilt by every ingest (adsrec up serves it on "
                     "deploy.data_docs_port)", "derived")


def describe_settings(settings: Settings) -> list[SettingRow]:
    """Every setting (sections first-to-last, as in :class:`Settings`) with its value and description,
    then the derived paths and URIs. Pass ``load_settings().resolved()`` for absolute paths."""
    return [*_field_rows(settings, settings.model_dump(mode="json"), ""), *_derived_rows(settings)]


def _yaml_value(value: Any) -> str:
    """``value`` as one line of YAML (flow style; JSON quoting for multi-line text)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True).strip()
    text = text.removesuffix("\n...").strip()
    return json.dumps(value) if "\n" in text else text


def render_settings(settings: Settings) -> str:
    """The settings as YAML, each key with its description as a comment (loadable again as a config
    file), then the derived paths and URIs as comment lines."""
    lines = ["# adsrec configuration: defaults <- YAML file (--config / ADSREC_CONFIG) <- ADSREC_* environment"]
    derived = []
    for row in describe_settings(settings):
        if row.kind == "derived":
            derived.append(f"#   {row.key}: {_yaml_value(row.value)}  # {row.description}")
            continue
        indent = "  " * row.key.count(".")
        name = row.key.rsplit(".", 1)[-1]
        value = "" if row.kind == "section" else f" {_yaml_value(row.value)}"
        comment = f"  # {row.description}" if row.description else ""
        lines.append(f"{indent}{name}:{value}{comment}")
    lines.append("# derived from the settings above (not keys to set):")
    return "\n".join([*lines, *derived])

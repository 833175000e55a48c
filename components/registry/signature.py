"""What the logged pyfunc says about itself (docs/registry.md, "The model's signature, example, code and
dataset"): an MLflow input signature and input example built from the scoring sample, the project code
the wrapper imports (``code_paths``), and the training set as the run's input dataset.

Signature types follow what MLflow's schema enforcement accepts and what the encoders read back:
float columns are ``double``, text is ``string``, list columns are ``Array(long|double|string)`` (click
times ``Array(Any)``: MLflow's JSON parsing turns ``Array(datetime)`` into integers) and optional (a user with no history sends null). Integer columns and ``event_time`` are declared ``Any``
(their arrow types are in the model's metadata, ``input_types``): MLflow refuses int64 for ``double`` and
float for ``long``, and an integer column with a missing value (an unknown user's profile) reaches pandas
as float; its ``datetime`` enforcement rejects timezone-aware values, and the training set and Feast rows
are UTC-aware (the wrapper parses ``event_time``: components/registry/packaged.py ``rows_to_table``). Feature columns the encoders must have are
required; the sequence columns and ``event_time`` are optional (the encoders use them when present).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mlflow
    import pandas as pd
    import pyarrow as pa

from components.registry.packaged import TIME_COLUMN

EXAMPLE_ROWS = 5
# The packages and modules the wrapper imports when MLflow loads it (components/registry/packaged.py,
# components.training.artefact.load_trained and the encoders); tests/code/registry checks a process
# without this repository on sys.path loads the model from these alone.
CODE_MODULES = ("components/__init__.py", "components/registry/__init__.py", "components/registry/packaged.py",
                "components/training/__init__.py", "components/training/artefact.py",
                "components/training/device.py", "components/training/encoders.py",
                "components/training/field_encoders.py", "components/training/train_config.py")
CODE_PACKAGES = ("models",)


def _mlflow_type(name: str, typ: "pa.DataType") -> Any:
    import pyarrow as pa
    from mlflow.types.schema import AnyType, Array, DataType

    if name == TIME_COLUMN or pa.types.is_timestamp(typ) or pa.types.is_integer(typ):
        return AnyType()
    if pa.types.is_floating(typ):
        return DataType.double
    if pa.types.is_boolean(typ):
        return DataType.boolean
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_dictionary(typ):
        return DataType.string
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        inner = typ.value_type
        if pa.types.is_timestamp(inner):  # Array(datetime) from JSON comes back as int64 (MLflow 3.17)
            return Array(AnyType())
        if pa.types.is_integer(inner):
            return Array(DataType.long)
        if pa.types.is_floating(inner):
            return Array(DataType.double)
        if pa.types.is_string(inner) or pa.types.is_large_string(inner):
            return Array(DataType.string)
    raise TypeError(f"column {name!r} has type {typ}, which the model signature cannot describe")


def input_schema(sample: "pa.Table", feature_columns: list[str]) -> "mlflow.types.Schema":
    """The model's input schema: every feature column (plus ``event_time`` when the sample has it), typed
    from ``sample``; list columns and ``event_time`` optional. Raises ``KeyError`` naming feature columns
    the sample lacks."""
    import pyarrow as pa
    from mlflow.types import ColSpec, Schema

    missing = [c for c in feature_columns if c not in sample.column_names]
    if missing:
        raise KeyError(f"the scoring sample lacks the model's feature columns {missing}")
    names = list(feature_columns) + ([TIME_COLUMN] if TIME_COLUMN in sample.column_names
                                     and TIME_COLUMN not in feature_columns else [])
    specs = []
    for name in names:
        typ = sample.schema.field(name).type
        optional = name == TIME_COLUMN or pa.types.is_list(typ) or pa.types.is_large_list(typ)
        specs.append(ColSpec(_mlflow_type(name, typ), name, required=not optional))
    return Schema(specs)


def input_types(sample: "pa.Table", columns: list[str]) -> dict[str, str]:
    """``{column: arrow type}`` of ``columns`` (the model metadata's ``input_types``)."""
    return {c: str(sample.schema.field(c).type) for c in columns}


def input_example(sample: "pa.Table", columns: list[str], rows: int = EXAMPLE_ROWS) -> "pd.DataFrame":
    """The first ``rows`` rows of ``sample``'s ``columns`` in a JSON-safe form: timestamps as ISO-8601
    UTC strings (list items too), lists as Python lists, nulls as None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    part = sample.select(columns).slice(0, rows)
    out = {}
    for name in columns:
        col = part.column(name).combine_chunks()
        if pa.types.is_timestamp(col.type):
            col = pc.strftime(col.cast(pa.timestamp("us", tz="UTC")), format="%Y-%m-%dT%H:%M:%S")
        elif pa.types.is_list(col.type) and pa.types.is_timestamp(col.type.value_type):
            items = pc.strftime(pc.list_flatten(col).cast(pa.timestamp("us", tz="UTC")),
                                format="%Y-%m-%dT%H:%M:%S")
            col = pa.ListArray.from_arrays(col.offsets, items, mask=col.is_null())
        out[name] = col.to_pylist()
    import pandas as pd

    return pd.DataFrame(out)


def stage_code(repo_root: Path, into: Path) -> list[str]:
    """Copy :data:`CODE_PACKAGES` (without caches) and :data:`CODE_MODULES` under ``into`` (keeping their
    package layout) and return the top-level folders to pass as ``code_paths``."""
    for package in CODE_PACKAGES:
        shutil.copytree(repo_root / package, into / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for module in CODE_MODULES:
        (into / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo_root / module, into / module)
    return sorted({str(into / Path(p).parts[0]) for p in (*CODE_PACKAGES, *CODE_MODULES)})


def training_dataset(path: str | Path, name: str = "training_set") -> "mlflow.data.dataset.Dataset":
    """The training set as an MLflow dataset by reference (not loaded): its path as the source, its
    parquet schema, and a digest of its row count, schema and file sizes. Raises ``FileNotFoundError``."""
    import pyarrow.dataset as ds
    from mlflow.data.filesystem_dataset_source import FileSystemDatasetSource  # noqa: F401 (registers sources)
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training set {path} not found")
    data = ds.dataset(str(path), format="parquet")
    files = sorted(data.files)
    digest = hashlib.sha256("|".join([str(data.count_rows()), str(data.schema),
                                      *(f"{Path(f).name}:{Path(f).stat().st_size}" for f in files)]).encode())
    return MetaDataset(source=resolve_dataset_source(str(path.resolve())), name=name,
                       digest=digest.hexdigest()[:16])

"""The ranker as an MLflow ``pyfunc`` model: what the registry logs and what serving loads by alias.

:class:`PackagedRanker` wraps a saved ranker folder (what ``components.training.artefact.TrainResult.save`` writes:
``model.pt``, ``spec.json``, ``ranker_config.json``, ``encoders.json``, ...) that MLflow stores as the
model's artifact ``ranker``. Loading it needs only this package's model and encoder code (``models/``,
``components/training/encoders.py`` and ``components.training.artefact.load_trained``), torch, pyarrow, numpy and pandas: no
Prefect, Feast or training-set code, no pickled torch module (the weights are a ``state_dict``, the
architecture is rebuilt from ``spec.json`` + ``ranker_config.json``), and nothing pickled: the model is
logged "from code" (:data:`MODEL_CODE`, a three-line script naming :class:`PackagedRanker`).

Input: rows with the training set's feature columns (a Feast-served feature row has them), as a pandas
DataFrame, a pyarrow Table, a dict of columns or a list of row dicts; extra columns (labels, ids) are
ignored, missing feature columns raise ``KeyError`` naming them (through MLflow, the signature's
``MlflowException``; components/registry/signature.py). Output: a DataFrame with one float32
probability column per task, ``p_<task>`` (``p_click``, ``p_conversion``, ...), one row per input row.

Example (a fresh process; the registry URI comes from ``MLFLOW_TRACKING_URI``)::

    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/adsrec-ranker@champion")
    probs = model.predict(pd.read_parquet("rows.parquet"))   # columns p_click, p_conversion
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd  # resolved at class creation: MLflow reads predict's type hints
from mlflow.pyfunc import PythonModel

if TYPE_CHECKING:
    import pyarrow as pa

    from components.training.artefact import TrainedModel

RANKER_ARTIFACT = "ranker"
TIME_COLUMN = "event_time"
# The files of a saved ranker folder that go into the logged model (checkpoints and the like stay behind).
REQUIRED_FILES = ("model.pt", "spec.json", "ranker_config.json", "encoders.json")
OPTIONAL_FILES = ("train_config.json", "history.json", "evaluation.json")
# MLflow "models from code": this script is stored with the logged model and run when it is loaded, so
# nothing is pickled; it only names the class, which comes from the code stored with the model
# (components/registry/signature.py ``stage_code``) or the installed adsrec package.
MODEL_CODE = '''"""The adsrec ranker as an MLflow pyfunc (models from code; see components/registry/packaged.py)."""
import mlflow

from components.registry.packaged import PackagedRanker

mlflow.models.set_model(PackagedRanker())
'''


def write_model_code(path: str | Path) -> Path:
    """Write :data:`MODEL_CODE` to ``path`` (what ``mlflow.pyfunc.log_model(python_model=path)`` takes)."""
    path = Path(path)
    path.write_text(MODEL_CODE)
    return path


def probability_column(task: str) -> str:
    """The output column of ``task``: ``p_<task>``."""
    return f"p_{task}"


def rows_to_table(rows: Any) -> "pa.Table":
    """A pyarrow Table from a pandas DataFrame, a pyarrow Table, a dict of columns or a list of row dicts.

    An ``event_time`` column of strings or objects is parsed as ISO-8601 (naive means UTC).
    pandas NaN becomes null (so an integer id column that pandas had to hold as float still looks up the
    right vocabulary entry: the encoders cast it back to int64)."""
    import pyarrow as pa

    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows])
    if isinstance(rows, pd.DataFrame):
        if TIME_COLUMN in rows.columns and not pd.api.types.is_datetime64_any_dtype(rows[TIME_COLUMN]):
            # ISO-8601 strings (the JSON input example, a REST request) or Timestamp objects: UTC
            rows = rows.assign(**{TIME_COLUMN: pd.to_datetime(rows[TIME_COLUMN], utc=True, format="ISO8601")})
        return _with_time_lists(rows)
    if isinstance(rows, dict):
        return pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    if isinstance(rows, list) and all(isinstance(r, dict) for r in rows):
        return pa.Table.from_pylist(rows)
    raise TypeError(
        f"cannot score a {type(rows).__name__}: pass a pandas DataFrame, a pyarrow Table, "
        "a dict of columns or a list of row dicts"
    )


def _with_time_lists(frame: pd.DataFrame) -> "pa.Table":
    """``frame`` as a Table, its click-time list column rebuilt as ``list<timestamp[us, UTC]>`` from what
    MLflow's schema enforcement leaves (arrays of mixed datetime64 units) or JSON sends (ISO strings)."""
    import numpy as np
    import pyarrow as pa

    from components.training.encoders import SEQUENCE_TIMES

    if SEQUENCE_TIMES not in frame.columns or frame[SEQUENCE_TIMES].dtype != object:
        return pa.Table.from_pandas(frame, preserve_index=False)
    lists = frame[SEQUENCE_TIMES].to_numpy()
    present = np.array([x is not None and not (isinstance(x, float) and np.isnan(x)) for x in lists], dtype=bool)
    lengths = np.array([len(x) if ok else 0 for x, ok in zip(lists, present)], dtype=np.int32)
    flat = np.concatenate([np.asarray(x) for x in lists[present]] or [np.array([], dtype="datetime64[us]")])
    if flat.dtype.kind == "M":  # naive datetimes (any unit) are UTC
        values = pa.array(flat.astype("datetime64[us]")).cast(pa.timestamp("us", tz="UTC"))
    else:
        values = pa.array(pd.to_datetime(pd.Series(flat, dtype=object), utc=True, format="ISO8601"),
                          pa.timestamp("us", tz="UTC"))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    table = pa.Table.from_pandas(frame.drop(columns=[SEQUENCE_TIMES]), preserve_index=False)
    column = pa.ListArray.from_arrays(offsets, values, mask=pa.array(~present))
    return table.add_column(list(frame.columns).index(SEQUENCE_TIMES), SEQUENCE_TIMES, column)


class PackagedRanker(PythonModel):
    """The MLflow pyfunc of a trained ranker (see the module docstring). Holds no state when pickled;
    :meth:`load_context` rebuilds the ranker from the ``ranker`` artifact folder."""

    def __init__(self) -> None:
        self._trained: TrainedModel | None = None

    def load_context(self, context: Any) -> None:
        self.load(context.artifacts[RANKER_ARTIFACT])

    def load(self, directory: str | Path) -> "PackagedRanker":
        """Load the ranker from a saved ranker folder (also usable without MLflow)."""
        from components.training.artefact import load_trained

        trained = load_trained(directory)
        if trained.encoders is None:
            raise FileNotFoundError(f"{directory} has no encoders.json: the packaged ranker cannot score rows")
        self._trained = trained
        return self

    @property
    def trained(self) -> "TrainedModel":
        if self._trained is None:
            raise RuntimeError("the packaged ranker is not loaded: call load() or load it through MLflow")
        return self._trained

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.trained.tasks

    @property
    def feature_columns(self) -> list[str]:
        """The input columns the encoders read."""
        assert self.trained.encoders is not None
        return list(self.trained.encoders.feature_columns)

    def score_table(self, table: "pa.Table", batch_size: int = 65536) -> pd.DataFrame:
        """Probabilities for every row of a pyarrow Table: DataFrame [N rows, one ``p_<task>`` column per
        task], float32."""
        probs = self.trained.score(table, batch_size=batch_size)
        return pd.DataFrame({probability_column(t): probs[t] for t in self.tasks})

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """MLflow's entry point: ``model_input`` rows -> DataFrame of ``p_<task>`` columns. A DataFrame is
        the documented input; a pyarrow Table, a dict of columns or a list of row dicts also work (see
        :func:`rows_to_table`). ``params={"batch_size": n}`` sets rows per forward pass."""
        batch_size = int((params or {}).get("batch_size", 65536))
        return self.score_table(rows_to_table(model_input), batch_size=batch_size)

"""Scoring serving requests: online feature rows (components/serving/online_rows.py) plus one ``p_<task>``
column per task, from a ``components.training.artefact.TrainedModel`` (``.score(table)``) or an MLflow
pyfunc (``.predict(DataFrame)``, e.g. ``components.registry.aliases.load_champion``); docs/serving.md.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from components.serving.online_rows import model_input, online_feature_rows, serving_summary, with_serving_summary

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings


def probabilities(scorer: Any, rows: "pa.Table") -> dict[str, np.ndarray]:
    """``{p_<task>: float32 [N]}`` from a TrainedModel (``.score(table)``) or an MLflow pyfunc
    (``.predict(DataFrame)`` -> DataFrame of ``p_<task>`` columns)."""
    inputs = model_input(rows)
    encoders = getattr(scorer, "encoders", None)
    if hasattr(scorer, "score") and encoders is not None:
        have = set(inputs.column_names)
        missing = [c for c in encoders.feature_columns if c not in have]
        if missing:
            raise KeyError(
                f"the model reads columns the online rows do not have: {missing} (were the representations "
                "refreshed for this home, and is no representations switch (text, visual, graph, see, "
                "semantic_ids) off that was on when the model was trained? the model was trained with them)"
            )
        probs = scorer.score(inputs)
        return {f"p_{task}": np.asarray(p, dtype=np.float32) for task, p in probs.items()}
    if hasattr(scorer, "predict"):
        out = scorer.predict(inputs.to_pandas())
        cols = [c for c in getattr(out, "columns", []) if str(c).startswith("p_")]
        if not cols:
            raise ValueError(f"the pyfunc model returned no p_<task> columns (got {list(getattr(out, 'columns', []))})")
        if len(out) != inputs.num_rows:
            raise ValueError(f"the pyfunc model returned {len(out)} rows for {inputs.num_rows} requests")
        return {str(c): out[c].to_numpy(dtype=np.float32) for c in cols}
    raise TypeError(
        f"cannot score with a {type(scorer).__name__}: pass a components.training.artefact.TrainedModel or an MLflow "
        "pyfunc model (components.registry.aliases.load_champion)"
    )


def score_requests(settings: "Settings", requests: "pa.Table", scorer: Any,
                   *, now: dt.datetime | None = None, **sources: Any) -> "pa.Table":
    """:func:`online_feature_rows` of ``requests`` plus one float32 ``p_<task>`` column per task.

    ``scorer``: a ``components.training.artefact.TrainedModel`` (``load_trained(dir)``) or an MLflow pyfunc model
    (``components.registry.aliases.load_champion(settings)``). The scorer sees the rows without the
    ``user_known`` / ``ad_known`` flags. The summary in the schema metadata gains ``seconds_scoring``.
    ``sources`` go to :func:`online_feature_rows` (``reader``, ``similarity``: what a service holds warm)."""
    import pyarrow as pa

    rows = online_feature_rows(settings, requests, now=now, **sources)
    t = time.perf_counter()
    probs = probabilities(scorer, rows) if rows.num_rows else {}
    summary = serving_summary(rows)
    for name, values in probs.items():
        rows = rows.append_column(name, pa.array(values, pa.float32()))
    summary["seconds_scoring"] = round(time.perf_counter() - t, 4)
    return with_serving_summary(rows, summary)

"""A gradient-boosted-trees baseline (LightGBM) on the ranker's own columns, for the experiments.

The columns are the ones :class:`~components.training.encoders.FeatureEncoders` made features of when
fitted on the training rows (so the trees and the ranker see the same fields): each numeric field as it is
in the table (float; null -> NaN, LightGBM's missing value), each categorical field as its vocabulary code
(0 = unknown or rare, 1 + frequency rank otherwise) declared categorical. The behaviour sequence's list
columns are left out (trees take no lists; its length is a numeric field). One binary model per task,
early-stopped on the validation rows' AUC, with the training rows' IPW weights when given.

LightGBM is imported inside the functions (``pip install lightgbm``, pinned in requirements.txt).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from components.training.encoders import FeatureEncoders

# Conventional settings for a CTR baseline, not tuned on any test day: shallow-ish trees, row and column
# subsampling, a little L2; early stopping picks the number of rounds on the validation rows.
PARAMS: dict[str, Any] = {
    "objective": "binary", "metric": "auc", "learning_rate": 0.05, "num_leaves": 63, "min_data_in_leaf": 100,
    "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
    "cat_smooth": 10.0, "min_data_per_group": 50, "max_bin": 255, "verbose": -1, "deterministic": True,
    "force_row_wise": True,
}
MAX_ROUNDS = 2000
EARLY_STOP = 50


@dataclass
class GBDTResult:
    """One LightGBM booster per task, the columns they read and each one's best round."""

    models: dict[str, Any]
    columns: list[str]
    categorical: list[str]
    best_rounds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def gbdt_matrix(encoders: "FeatureEncoders", table: "pa.Table") -> np.ndarray:
    """float64 [rows, categorical + numeric fields]: vocabulary codes, then the raw numbers (NaN = null)."""
    from components.training.field_encoders import float_values

    out = np.empty((table.num_rows, len(encoders.categorical) + len(encoders.numeric)), dtype=np.float64)
    for j, enc in enumerate(encoders.categorical):
        out[:, j] = enc.encode(table.column(enc.name))
    start = len(encoders.categorical)
    for j, num in enumerate(encoders.numeric):
        values, valid = float_values(table.column(num.name))
        out[:, start + j] = np.where(valid, values, np.nan)
    return out


def train_gbdt(encoders: "FeatureEncoders", train: "pa.Table", valid: "pa.Table", tasks: Sequence[str],
               seed: int = 0, weights: Mapping[str, np.ndarray] | None = None, threads: int = 1,
               max_rounds: int = MAX_ROUNDS, params: Mapping[str, Any] | None = None) -> GBDTResult:
    """One LightGBM model per task on ``train``'s feature columns (``encoders``, fitted on ``train``),
    early-stopped on ``valid``'s AUC after ``EARLY_STOP`` rounds without a gain."""
    import time

    import lightgbm as lgb

    started = time.perf_counter()
    columns = [c.name for c in encoders.categorical] + [n.name for n in encoders.numeric]
    categorical = [c.name for c in encoders.categorical]
    x_train, x_valid = gbdt_matrix(encoders, train), gbdt_matrix(encoders, valid)
    cfg = {**PARAMS, **(params or {}), "seed": seed, "num_threads": threads}
    out = GBDTResult(models={}, columns=columns, categorical=categorical)
    for task in tasks:
        y_train = train.column(task).to_numpy(zero_copy_only=False).astype(np.float64)
        y_valid = valid.column(task).to_numpy(zero_copy_only=False).astype(np.float64)
        w = None if not weights or task not in weights else np.asarray(weights[task], dtype=np.float64)
        dtrain = lgb.Dataset(x_train, y_train, weight=w, feature_name=columns, categorical_feature=categorical,
                             free_raw_data=False)
        dvalid = lgb.Dataset(x_valid, y_valid, reference=dtrain)
        booster = lgb.train(cfg, dtrain, num_boost_round=max_rounds, valid_sets=[dvalid],
                            callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False)])
        out.models[task] = booster
        out.best_rounds[task] = int(booster.best_iteration or booster.current_iteration())
    out.seconds = time.perf_counter() - started
    return out


def gbdt_scores(result: GBDTResult, encoders: "FeatureEncoders", table: "pa.Table") -> dict[str, np.ndarray]:
    """Each task's probability for every row of ``table`` (the best round's model)."""
    x = gbdt_matrix(encoders, table)
    return {t: np.asarray(m.predict(x, num_iteration=result.best_rounds[t]), dtype=np.float64)
            for t, m in result.models.items()}

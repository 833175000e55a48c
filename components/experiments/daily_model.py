"""The daily job's model on a simulated window, for the experiments and benches (bench/interest_gain.py,
components/experiments/learning_curve.py).

:func:`build_window` runs the first ``days`` days of the configured source through the real day-steps
(deliver, ingest, features, representations: ``components.steps``, each skipping a day it already did
with the same config) and builds the window's point-in-time training set, so the features are the daily
job's. :func:`clean_split` cuts it as the daily job does (``components.training.encoders.window_split``:
train on the oldest days, early-stop on ``training.valid_days``, report the newest ``training.test_days``
untouched). :func:`train_default` trains the default config's ranker (``training.ranker`` /
``training.train``) with the daily job's repeated-exposure IPW (:func:`training_ipw_weights`), and
:func:`score` gives its probabilities on any rows.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from components.config import Settings
    from components.training.artefact import TrainResult
    from components.training.encoders import WindowSplit


def build_window(settings: "Settings", days: int, progress: Callable[[str], None] | None = None
                 ) -> tuple[list[dt.date], Path]:
    """The source's first ``days`` days through the day-steps under ``settings.home``, and the window's
    training set: (the days, the path of its ``train.parquet``). Deliver in date order (the simulator's days
    depend on earlier days), then ingest and features (the features of day D read the rolling window up to
    D), then representations in date order (the graph of day D warm-starts from D-1)."""
    from components import steps

    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    window = steps.demo_window(settings, days, restart=True)
    for day in window:
        steps.deliver_day(settings, day)
    for day in window:
        steps.ingest(settings, day)
        steps.features(settings, day)
    for day in window:
        rep = steps.representations(settings, day)
        say(f"{settings.home.name}: representations {day} {'cached' if rep.get('skipped') else 'built'}")
    out = steps.training_set(settings, window[-1], len(window))
    say(f"{settings.home.name}: {len(window)} days through the day-steps, {time.perf_counter() - started:.0f} s")
    return window, Path(out["path"])


def clean_split(settings: "Settings", table: "pa.Table") -> "WindowSplit":
    """(train, valid, test) as the daily job splits its window (``training.valid_days`` / ``test_days``);
    raises when a part is empty."""
    from components.training.encoders import window_split

    split = window_split(table, settings.training.valid_days, settings.training.test_days)
    empty = [name for name, part in zip(("train", "valid", "test"), split) if part.num_rows == 0]
    if empty:
        raise ValueError(f"the window's {table.num_rows:,} rows leave no {' / '.join(empty)} rows: it needs more "
                         f"than {settings.training.valid_days + settings.training.test_days} days")
    return split


def training_ipw_weights(settings: "Settings", train: "pa.Table", tasks: Sequence[str]
                         ) -> dict[str, "np.ndarray"] | None:
    """The daily job's repeated-exposure IPW weights of the training rows, the propensity fitted on the
    training days' impressions only (None when ``training.ipw`` is off or the log allows none)."""
    import pyarrow.compute as pc

    from components.training.train_day import ipw_weights

    first = pc.min(train.column("event_time")).as_py().date()
    last = pc.max(train.column("event_time")).as_py().date()
    weights, _info = ipw_weights(settings, train, tuple(tasks), first, last)
    return weights


def train_default(settings: "Settings", train: "pa.Table", valid: "pa.Table | None", seed: int,
                  weights: dict[str, "np.ndarray"] | None = None, epochs: int | None = None) -> "TrainResult":
    """The default config's ranker trained on ``train`` (early stopping on ``valid``) with ``seed`` and the
    given IPW weights; ``epochs`` overrides ``training.train.epochs`` (a smoke run)."""
    from components.training.loop import train_ranker
    from components.training.train_config import TrainConfig

    train_cfg = settings.training.train.to_dict()
    with tempfile.TemporaryDirectory() as checkpoints:
        cfg = TrainConfig.from_dict({**train_cfg, "seed": seed, "log_every": 0, "checkpoint_dir": checkpoints,
                                     "ipw": weights is not None, "epochs": epochs or train_cfg["epochs"]})
        return train_ranker(settings, train, valid, settings.training.ranker.to_ranker_config(), cfg,
                            train_weights=weights)


def score(result: "TrainResult", table: "pa.Table", tasks: Sequence[str]) -> dict[str, "np.ndarray"]:
    """The trained model's probability per task for every row of ``table``."""
    from components.training.device import predict

    if result.encoders is None:
        raise ValueError("the training result has no encoders to encode the rows with")
    return predict(result.model, result.encoders.encode(table, with_labels=False), tuple(tasks))

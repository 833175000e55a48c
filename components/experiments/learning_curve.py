"""Issue 12, part 5: the learning curve. The daily job's default model trained at several data depths of the
demo marketplace, against the oracle and the partial ceilings, with a LightGBM baseline.

Data: the demo marketplace (the default simulator: every planted effect - taste, entanglement,
retargeting, content, recency - at its default strength) with only its size changed, along two axes:

- ``rows``: more users at the same impressions per user (``n_users``; ``new_users_per_day`` kept at the
  default's 2 % of them), 2 sessions per user and day, 7 days;
- ``depth``: more impressions per user at the same users (``sessions_per_user_day``), 500 users, 7 days.

Every point runs through the real day-steps (deliver, ingest, features, representations, training set:
``daily_model.build_window``) in a home of its own under ``<home>/experiments/learning_curve/``, so the
features are the daily job's, and is split cleanly: days 1-5 train, day 6 early-stops, day 7 is reported
untouched (``training.valid_days`` / ``test_days``).

Models: the default ranker and trainer (``training.ranker`` / ``training.train``) with the daily job's
repeated-exposure IPW (the propensity fitted on the training days), one run per seed; and LightGBM on
the same training rows and columns (``components/experiments/gbdt.py``), early-stopped on day 6.
Per point and task: the seed-averaged AUC with its 95 % bootstrap interval over the test day's users
(``intervals.mean_auc_interval``: the same resamples for every seed), the oracle and partial-ceiling AUC
(``oracle.oracle_auc``) and AUC / oracle. The claim holds when AUC / oracle rises with data depth by more
than the noise of the two ends (``sqrt(h_first^2 + h_last^2)``, the interval half-widths in ratio units:
the test days differ, so no pairing) on both tasks along both axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.experiments.base import Experiment, ExperimentContext, ExperimentResult
from components.experiments.learning_curve_report import TASKS, verdict

NEW_USER_SHARE = 0.02  # the default simulator's 40 new users a day per 2,000


@dataclass(frozen=True)
class Point:
    """One data depth: users on day 0, sessions per user and day, days in the window, the axes it lies on
    and at most how many of the context's seeds train the ranker there (None: all)."""

    users: int
    sessions: float
    days: int
    axes: tuple[str, ...]
    max_seeds: int | None = None

    @property
    def name(self) -> str:
        return f"{self.users}u-{self.sessions:g}s-{self.days}d"

    def simulator(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {"n_users": self.users, "new_users_per_day": round(self.users * NEW_USER_SHARE),
                "sessions_per_user_day": float(self.sessions), **extra}


# Default size: 6 points, about 25k to 200k training rows (2,000 users x 2 sessions x 7 days is the default
# demo), sized to finish in about 20 minutes on 2 cores: the deepest point trains 2 seeds, not 3.
POINTS: tuple[Point, ...] = (
    Point(500, 2, 7, ("rows", "depth")), Point(1000, 2, 7, ("rows",)), Point(2000, 2, 7, ("rows",)),
    Point(500, 4, 7, ("depth",)), Point(500, 8, 7, ("depth",)), Point(500, 16, 7, ("depth",), max_seeds=2),
)
# Small size (a smoke run for the test; its numbers are not results): a tiny catalogue, 4 days.
# Its depth axis adds a day instead of sessions, so two of its points share one home's day-steps.
SMALL_POINTS: tuple[Point, ...] = (Point(150, 2, 3, ("rows", "depth")), Point(150, 2, 4, ("depth",)),
                                   Point(300, 2, 3, ("rows",)))
SMALL_SIMULATOR: dict[str, Any] = {"n_initial_ads": 120, "new_ads_per_day": 30}
SMALL_GBDT_ROUNDS = 60


def depth_stats(train: Any, tasks: tuple[str, ...] = TASKS) -> dict[str, float]:
    """Training rows, users, and impressions and positives per training user of the training rows."""
    import pyarrow.compute as pc

    users = pc.count_distinct(train.column("user_id")).as_py() or 0
    out = {"train_rows": float(train.num_rows), "train_users": float(users),
           "impressions_per_user": train.num_rows / users if users else math.nan}
    for t in tasks:
        out[f"{t}s_per_user"] = (pc.sum(train.column(t)).as_py() or 0) / users if users else math.nan
    return out


def _task_figures(y: np.ndarray, users: np.ndarray, stem: list[np.ndarray], gbdt: np.ndarray, oracle: float,
                  ceilings: dict[str, float]) -> dict[str, Any]:
    """One task's AUCs with intervals, their ratios to the oracle and the ceilings' AUCs."""
    from components.training.intervals import auc_interval, mean_auc_interval
    from components.training.metrics import auc

    out: dict[str, Any] = {"oracle": oracle, "ceilings": ceilings,
                           "stem_seeds": [auc(s, y) for s in stem]}
    for model, interval in (("stem", mean_auc_interval(y, stem, users)), ("lgbm", auc_interval(y, gbdt, users))):
        out[model] = interval.to_dict()
        out[f"{model}_ratio"] = {k: (v / oracle if v is not None else None)
                                 for k, v in interval.to_dict().items() if k in ("point", "low", "high")}
    return out


def run_point(ctx: ExperimentContext, point: Point) -> dict[str, Any]:
    """Build ``point``'s window, train the default ranker on every seed and LightGBM once, score day N."""
    import time

    from components.experiments.daily_model import (build_window, clean_split, score, train_default,
                                                    training_ipw_weights)
    from components.experiments.data import pipeline_settings
    from components.experiments.gbdt import gbdt_scores, train_gbdt
    from components.training.encoders import read_training_set
    from components.training.oracle import oracle_auc
    from components.training.train_day import split_days

    seeds = ctx.seeds[: point.max_seeds] if point.max_seeds else ctx.seeds
    if not seeds:
        raise ValueError("the learning curve needs at least one seed")
    started, cpu = time.perf_counter(), time.process_time()
    ps = pipeline_settings(ctx.settings, point.simulator(SMALL_SIMULATOR if ctx.small else {}),
                           folder="learning_curve")
    ps.home.mkdir(parents=True, exist_ok=True)
    _window, path = build_window(ps, point.days, ctx.progress)
    train, valid, test = clean_split(ps, read_training_set(path))
    weights = training_ipw_weights(ps, train, TASKS)
    built = time.perf_counter() - started
    params = {"point": point.name, "users": point.users, "sessions_per_user_day": point.sessions,
              "days": point.days, "train_rows": train.num_rows, "test_rows": test.num_rows, "ipw": weights is not None}
    stem, epochs = [], []
    for seed in seeds:
        result = train_default(ps, train, valid, seed, weights, epochs=1 if ctx.small else None)
        stem.append(score(result, test, TASKS))
        epochs.append(result.best_epoch)
        ctx.log_run(f"{point.name}/STEM/seed{seed}", {**params, "model": "STEM", "seed": seed},
                    {f"{t}_auc": _auc(test, t, stem[-1][t]) for t in TASKS})
    gbdt = train_gbdt(result.encoders, train, valid, TASKS, seed=seeds[0], weights=weights,
                      threads=_threads(), **({"max_rounds": SMALL_GBDT_ROUNDS} if ctx.small else {}))
    lgbm = gbdt_scores(gbdt, result.encoders, test)
    ctx.log_run(f"{point.name}/LightGBM", {**params, "model": "LightGBM", "seed": seeds[0], **gbdt.best_rounds},
                {f"{t}_auc": _auc(test, t, lgbm[t]) for t in TASKS})
    report = oracle_auc(ps, test, TASKS)
    if report.matched != test.num_rows:
        raise RuntimeError(f"{point.name}: only {report.matched} of {test.num_rows} test rows have ground truth")
    users = test.column("user_id").to_numpy(zero_copy_only=False)
    tasks = {t: _task_figures(test.column(t).to_numpy(zero_copy_only=False), users, [s[t] for s in stem],
                              lgbm[t], report.oracle[t], {c: report.ceilings[c][t] for c in report.ceilings})
             for t in TASKS}
    out = {"point": point.name, "users": point.users, "sessions": point.sessions, "days": point.days,
           "axes": list(point.axes), "seeds": list(seeds), "best_epochs": epochs, "gbdt_rounds": gbdt.best_rounds,
           "split_days": {k: split_days(v) for k, v in zip(("train", "valid", "test"), (train, valid, test))},
           "test_rows": test.num_rows, **depth_stats(train), "tasks": tasks,
           "build_seconds": round(built, 1), "seconds": round(time.perf_counter() - started, 1),
           "cpu_seconds": round(time.process_time() - cpu, 1)}
    ctx.progress(f"[learning_curve] {point.name}: " + "; ".join(
        f"{t} STEM {f['stem_ratio']['point']:.3f} LightGBM {f['lgbm_ratio']['point']:.3f} of the oracle"
        for t, f in tasks.items()) + f" ({out['seconds']:.0f} s, build {built:.0f} s)")
    return out


def _auc(table: Any, task: str, scores: np.ndarray) -> float:
    from components.training.metrics import auc

    return auc(scores, table.column(task).to_numpy(zero_copy_only=False))


def _threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


def run(ctx: ExperimentContext) -> ExperimentResult:
    """Every point of the grid (see the module docstring), the table, the plot and the verdict."""
    import os

    from components.experiments.learning_curve_report import COLUMNS, notes, plot, table_rows

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    records = [run_point(ctx, p) for p in (SMALL_POINTS if ctx.small else POINTS)]
    ctx.plot_dir.mkdir(parents=True, exist_ok=True)
    plots = [plot(records, ctx.plot_dir / "learning_curve.png")]
    status, finding = verdict(records)
    return ExperimentResult(name="learning_curve", title=EXPERIMENT.title, claim=EXPERIMENT.claim,
                            columns=list(COLUMNS), rows=table_rows(records), verdict=status, finding=finding,
                            plots=plots, notes=notes(records, ctx.small), data={"points": records})


EXPERIMENT = Experiment(
    name="learning_curve",
    title="Learning curve: the default model's AUC / oracle against data depth, with LightGBM",
    claim="The gap to the oracle is mostly data: the default model's AUC / oracle rises with data depth (more "
          "users, more impressions per user) toward the partial ceilings.",
    run=run,
)

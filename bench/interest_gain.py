"""The gain of the user x ad-attribute interest features (docs/features.md, "Interest views"; docs/results.md).

Builds the demo marketplace (default settings: the simulator, 7 days) through the real day-steps (deliver,
ingest, features, representations) and its 7-day point-in-time training set, then trains the default
ranker (``training.ranker`` / ``training.train`` of the default config, IPW as the daily job) with and
without the ``user_<attribute>_interest__*`` columns, one seed at a time, on a clean split: days 1-5
train, day 6 early-stops, day 7 is reported untouched (click / conversion AUC, and AUC / oracle).

    PYTHONPATH=. python -m bench.interest_gain --home /tmp/interest-home --seeds 0 1 2 --out interest.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def build_demo(home: Path) -> tuple[Any, Path]:
    """The demo's days through the day-steps (idempotent) and its training set: (settings, train.parquet)."""
    from components import steps
    from components.config import load_settings
    from components.representations.refresh import refresh_representations
    from components.training.training_set import build_training_set

    settings = load_settings(environ={}, overrides={"home": str(home)}).resolved()
    days = steps.demo_window(settings, settings.pipeline.demo_days, restart=True)
    for day in days:
        steps.deliver_day(settings, day)
        steps.ingest(settings, day)
        steps.features(settings, day)
        refresh_representations(settings, day, progress=False)
    return settings, build_training_set(settings, days[-1], days=len(days))


def split_by_day(table: Any) -> tuple[Any, Any, Any]:
    """(train: all but the last two days, valid: the day before the newest, test: the newest day)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from components.schemas import TIMESTAMP, day_window

    newest = pc.max(table.column("event_time")).as_py().date()
    test_start, _ = day_window(newest)
    valid_start, _ = day_window(newest - dt.timedelta(days=1))
    t = table.column("event_time")
    in_test = pc.greater_equal(t, pa.scalar(test_start, TIMESTAMP))
    in_valid = pc.and_(pc.greater_equal(t, pa.scalar(valid_start, TIMESTAMP)), pc.invert(in_test))
    in_train = pc.less(t, pa.scalar(valid_start, TIMESTAMP))
    return table.filter(in_train), table.filter(in_valid), table.filter(in_test)


def ipw_weights(settings: Any, train: Any, tasks: list[str]) -> dict[str, Any] | None:
    """The daily job's repeated-exposure IPW weights of the training rows (None when off or impossible)."""
    import pyarrow.compute as pc

    from components.store.offline import read_offline
    from components.training.propensity import ExposurePropensity
    from components.training.train_day import ipw_skip_reason

    if not settings.training.ipw:
        return None
    task = settings.training.ipw_task or tasks[0]
    first = pc.min(train.column("event_time")).as_py().date()
    last = pc.max(train.column("event_time")).as_py().date()
    impressions = read_offline(settings, "impressions", first, last,
                               columns=["user_id", "ad_id", "event_time", "exposure_index", task])
    if ipw_skip_reason(impressions, task) is not None:
        return None
    propensity = ExposurePropensity(label=task).fit(impressions)
    return {t: propensity.weights(train, t, settings.training.ipw_w_min) for t in tasks}


def train_and_score(settings: Any, split: tuple[Any, Any, Any], tasks: list[str], seed: int
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the default ranker on the split's train rows (early stopping on valid), score the test day:
    (the run's figures, the test scores per task)."""
    from sklearn.metrics import roc_auc_score

    from components.training.device import predict
    from components.training.loop import train_ranker
    from components.training.oracle import oracle_auc
    from components.training.train_config import TrainConfig

    train, valid, test = split
    weights = ipw_weights(settings, train, tasks)
    with tempfile.TemporaryDirectory() as checkpoints:
        cfg = TrainConfig.from_dict({**settings.training.train.to_dict(), "seed": seed, "log_every": 0,
                                     "checkpoint_dir": checkpoints, "ipw": weights is not None})
        result = train_ranker(settings, train, valid, settings.training.ranker.to_ranker_config(), cfg,
                              train_weights=weights)
    scores = predict(result.model, result.encoders.encode(test, with_labels=False), tuple(tasks))
    out = {"seed": seed, "best_epoch": result.best_epoch, "seconds": round(result.seconds, 1),
           "features": len(result.encoders.categorical) + len(result.encoders.numeric)}
    for t in tasks:
        out[f"{t}_auc"] = float(roc_auc_score(test.column(t).to_numpy(), scores[t]))
    out["oracle"] = oracle_auc(settings, test, tasks, models={"model": scores}).to_dict()
    return out, scores


def paired_differences(test: Any, tasks: list[str], scores: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Per seed and task: AUC(with) - AUC(without) on the test day, with a paired bootstrap interval over
    users (components/training/intervals.py)."""
    from components.training.intervals import auc_difference_interval

    users = test.column("user_id").to_numpy()
    out = []
    for with_scores, without_scores in zip(scores["with"], scores["without"]):
        out.append({t: auc_difference_interval(test.column(t).to_numpy(), with_scores[t], without_scores[t],
                                               groups=users).to_dict() for t in tasks})
    return out


def without_interest(table: Any) -> Any:
    """``table`` without the interest views' columns."""
    return table.drop_columns([c for c in table.column_names if "_interest__" in c and c.startswith("user_")
                               and not c.startswith(("user_text_interest", "user_visual_interest"))])


def summarise(runs: list[dict[str, Any]], tasks: list[str]) -> dict[str, Any]:
    """Mean and standard deviation (over seeds) of each task's AUC."""
    out = {}
    for t in tasks:
        values = [r[f"{t}_auc"] for r in runs]
        out[t] = {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                  "values": values}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/adsrec-interest-gain"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import pyarrow.parquet as pq
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    settings, path = build_demo(args.home)
    table = pq.read_table(path)
    tasks = list(settings.tasks)
    built = time.perf_counter() - started
    report: dict[str, Any] = {"training_set": str(path), "rows": table.num_rows, "build_seconds": round(built, 1),
                              "interest_columns": [c for c in table.column_names if c not in
                                                   without_interest(table).column_names]}
    splits = {"with": split_by_day(table), "without": split_by_day(without_interest(table))}
    report["split_rows"] = [s.num_rows for s in splits["with"]]
    runs: dict[str, list[Any]] = {"with": [], "without": []}
    scores: dict[str, list[Any]] = {"with": [], "without": []}
    for seed in args.seeds:  # one seed at a time, both arms: pairs are complete as they come
        for arm in ("with", "without"):
            run, test_scores = train_and_score(settings, splits[arm], tasks, seed)
            runs[arm].append(run)
            scores[arm].append(test_scores)
            print(arm, json.dumps({k: v for k, v in run.items() if k != "oracle"}), flush=True)
        print("difference", json.dumps(paired_differences(splits["with"][2], tasks, scores)[-1]), flush=True)
    for arm in ("with", "without"):
        report[arm] = {"runs": runs[arm], "summary": summarise(runs[arm], tasks)}
    report["paired_differences"] = paired_differences(splits["with"][2], tasks, scores)
    report["gain"] = {t: report["with"]["summary"][t]["mean"] - report["without"]["summary"][t]["mean"]
                      for t in tasks}
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps({k: report[k] for k in ("rows", "split_rows", "gain", "seconds")}, indent=1))
    for arm in ("with", "without"):
        print(arm, json.dumps(report[arm]["summary"]))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()

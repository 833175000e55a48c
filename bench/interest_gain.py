"""The gain of the user x ad-attribute interest features (docs/features.md, "Interest views"; docs/results.md).

Builds the demo marketplace (default settings: the simulator, 7 days) through the real day-steps (deliver,
ingest, features, representations) and its 7-day point-in-time training set
(components/experiments/daily_model.py, shared with the learning-curve experiment), then trains the default
ranker (``training.ranker`` / ``training.train`` of the default config, IPW as the daily job) with and
without the ``user_<attribute>_interest__*`` columns, one seed at a time, on a clean split: days 1-5
train, day 6 early-stops, day 7 is reported untouched (click / conversion AUC, and AUC / oracle).

    PYTHONPATH=. python -m bench.interest_gain --home /tmp/interest-home --seeds 0 1 2 --out interest.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any


def build_demo(home: Path) -> tuple[Any, Path]:
    """The demo's days through the day-steps (idempotent) and its training set: (settings, train.parquet)."""
    from components.config import load_settings
    from components.experiments.daily_model import build_window

    settings = load_settings(environ={}, overrides={"home": str(home)}).resolved()
    _days, path = build_window(settings, settings.pipeline.demo_days)
    return settings, path


def train_and_score(settings: Any, split: tuple[Any, Any, Any], tasks: list[str], seed: int
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the default ranker on the split's train rows (early stopping on valid), score the test day:
    (the run's figures, the test scores per task)."""
    from sklearn.metrics import roc_auc_score

    from components.experiments.daily_model import score, train_default, training_ipw_weights
    from components.training.oracle import oracle_auc

    train, valid, test = split
    result = train_default(settings, train, valid, seed, training_ipw_weights(settings, train, tasks))
    scores = score(result, test, tasks)
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
    from components.experiments.daily_model import clean_split

    splits = {"with": clean_split(settings, table), "without": clean_split(settings, without_interest(table))}
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

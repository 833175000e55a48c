"""Train the configured ranker on a point-in-time training set and evaluate it on the newest day.

The daily run's model step: hold out the window's newest ``training.valid_days`` days, fit the
repeated-exposure propensity on the window's impressions (IPW weights for positives on repeated
exposures), train with early stopping on the held-out day, evaluate per task overall and on slices, and,
on the simulator, next to the oracle AUC. The model and its evaluation are saved under
``<home>/models/<end day>/``; components/quality.py then gates and registers it (docs/gates.md).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.config import Settings

log = logging.getLogger(__name__)


def train_and_evaluate(settings: Settings, end_day: dt.date, training_set: Path, tasks: tuple[str, ...],
                       progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train on ``training_set`` (all but the newest days), evaluate on the newest days, save the model.

    Returns a JSON-able summary: training (epochs, samples/s, seconds), per-task metrics overall and
    per slice, the oracle comparison on the simulator, the IPW weight distribution, the model folder.
    ``progress`` receives the trainer's step and epoch events.
    """
    import pyarrow.compute as pc

    from components.dataset import read_training_set, time_split
    from components.evaluate import evaluate, oracle_auc
    from components.offline_store import read_offline
    from components.propensity import ExposurePropensity
    from components.storage import write_json_atomic
    from components.train import TrainConfig, train_ranker
    from models.config import RankerConfig

    cfg = settings.training
    started = time.perf_counter()
    table = read_training_set(training_set)
    train, valid = time_split(table, cfg.valid_days)
    first = pc.min(table.column("event_time")).as_py().date()

    weights = None
    ipw: dict[str, Any] = {"enabled": cfg.ipw}
    if cfg.ipw:
        impressions = read_offline(settings, "impressions", first, end_day)
        propensity = ExposurePropensity().fit(impressions)
        weights = {t: propensity.weights(train, t, cfg.ipw_w_min) for t in tasks}
        ipw["summary"] = propensity.weight_summary()

    out_dir = settings.models_dir / end_day.isoformat()
    train_cfg = TrainConfig.from_dict({"checkpoint_dir": str(out_dir / "checkpoints"), **cfg.train, "ipw": cfg.ipw})
    ranker_cfg = RankerConfig.from_dict(cfg.ranker)
    result = train_ranker(settings, train, valid, ranker_cfg, train_cfg, train_weights=weights,
                          callback=progress)

    ads = read_offline(settings, "ads", None, end_day, columns=["ad_id", "created_at"], latest=True)
    report = evaluate(result.valid_scores, valid, tasks, ads=ads)
    oracle = None
    if settings.pipeline.source == "simulator":
        try:
            oracle = oracle_auc(settings, valid, tasks, models={ranker_cfg.arch: result.valid_scores})
            report = report.with_oracle(oracle)
        except (FileNotFoundError, ValueError) as exc:  # ground truth missing: report without it
            log.warning("no oracle AUC: %s", exc)

    result.save(out_dir)
    summary = {
        "end_day": end_day,
        "model_dir": str(out_dir),
        "arch": ranker_cfg.arch,
        "rows": {"train": train.num_rows, "valid": valid.num_rows},
        "training": result.summary(),
        "evaluation": report.to_dict(),
        "evaluation_text": report.to_text(),
        "oracle": oracle.to_dict() if oracle is not None else None,
        "ipw": ipw,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json_atomic(out_dir / "evaluation.json", summary)
    return summary

"""The trainer's command line, the entry point for DDP: ``python -m components.training`` (under
``torchrun``) trains from a training-set parquet with :func:`components.training.loop.train_ranker`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("components.training.loop")


def main(argv: list[str] | None = None) -> int:
    """Train from a training-set parquet; the entry point for DDP:

    ``torchrun --nproc_per_node 2 -m components.training --training-set <home>/training/<day>/train.parquet
    --out <dir> [--ranker-config '{"arch": "stem"}'] [--train-config '{"epochs": 3}']``

    The last ``--valid-days`` days validate; the training days stream from disk when ``data_path`` (or the
    set's size against ``memory_budget_mb``) says so; rank 0 writes
    :meth:`components.training.artefact.TrainResult.save` into ``--out``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m components.training", description=main.__doc__)
    parser.add_argument("--training-set", required=True, help="train.parquet of components/training/training_set.py")
    parser.add_argument("--out", required=True, help="folder for the model, encoders and history")
    parser.add_argument("--valid-days", type=int, default=1)
    parser.add_argument("--ranker-config", default="{}", help="RankerConfig as JSON (or a JSON file)")
    parser.add_argument("--train-config", default="{}", help="TrainConfig as JSON (or a JSON file)")
    args = parser.parse_args(argv)

    def as_dict(value: str) -> dict[str, Any]:
        text = Path(value).read_text() if not value.lstrip().startswith("{") else value
        return json.loads(text)

    from components.training.encoders import read_training_set, time_split
    from components.training.loop import train_ranker
    from components.training.stream import split_on_disk, streams
    from components.training.train_config import TrainConfig
    from models.config import RankerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = TrainConfig.from_dict(as_dict(args.train_config))
    path = Path(args.training_set)
    if streams(cfg, path):  # the training rows stay on disk (docs/training.md, "Training sets larger than memory")
        train, (valid,) = split_on_disk(path, lambda table: time_split(table, args.valid_days))
    else:
        train, valid = time_split(read_training_set(path), args.valid_days)
    result = train_ranker(None, train, valid, RankerConfig.from_dict(as_dict(args.ranker_config)), cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        result.save(args.out)
        log.info("saved to %s: %s", args.out, result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

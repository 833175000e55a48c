"""What a training run leaves behind: :class:`TrainResult` (the best model, its encoders, configs and
history; :meth:`TrainResult.save` writes them to a folder) and :class:`TrainedModel`, that folder loaded
back by :func:`load_trained` to score raw rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.training.encoders import FeatureEncoders
from components.training.train_config import TrainConfig

if TYPE_CHECKING:
    from models.config import RankerConfig
    from models.spec import FeatureSpec


@dataclass
class TrainResult:
    """What a training run produced. ``model`` holds the best epoch's weights (on CPU)."""

    model: Any  # models.ranker.Ranker
    encoders: FeatureEncoders | None
    spec: "FeatureSpec"
    ranker_config: "RankerConfig"
    train_config: TrainConfig
    # per epoch: train_loss, train_loss_per_task, valid_auc, valid_logloss, seconds, samples_per_s
    history: list[dict[str, Any]]
    best_epoch: int
    best_metric: float
    samples_per_s: float  # training rows / training seconds (validation excluded), all ranks together
    seconds: float
    device: str
    world_size: int
    steps: int
    stopped_early: bool
    valid_scores: dict[str, np.ndarray] = field(default_factory=dict)  # best model's validation probabilities

    @property
    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {
            "best_epoch": self.best_epoch,
            "best_metric": self.best_metric,
            "valid_auc": self.history[self.best_epoch - 1]["valid_auc"] if self.history else {},
            "epochs": len(self.history),
            "steps": self.steps,
            "samples_per_s": self.samples_per_s,
            "seconds": self.seconds,
            "device": self.device,
            "world_size": self.world_size,
            "stopped_early": self.stopped_early,
            "final_train_loss": last.get("train_loss"),
        }

    def save(self, directory: str | Path) -> Path:
        """Weights (``model.pt``), ``encoders.json``, ``spec.json``, ``ranker_config.json``,
        ``train_config.json`` and ``history.json`` in ``directory``: what loading the model back needs."""
        import json

        import torch

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), directory / "model.pt")
        if self.encoders is not None:
            self.encoders.save(directory / "encoders.json")
        (directory / "spec.json").write_text(json.dumps(self.spec.to_dict(), indent=1))
        (directory / "ranker_config.json").write_text(json.dumps(self.ranker_config.to_dict(), indent=1))
        (directory / "train_config.json").write_text(json.dumps(self.train_config.to_dict(), indent=1))
        (directory / "history.json").write_text(json.dumps({"history": self.history, **self.summary()}, indent=1))
        return directory


@dataclass
class TrainedModel:
    """A saved ranker loaded back from the folder :meth:`TrainResult.save` wrote (weights, spec, encoders,
    configs); ``model`` is in eval mode on CPU. ``score(table)`` gives probabilities per task."""

    model: Any  # models.ranker.Ranker
    encoders: FeatureEncoders | None
    spec: "FeatureSpec"
    ranker_config: "RankerConfig"
    directory: Path

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.model.tasks)

    def score(self, table: Any, batch_size: int = 65536) -> dict[str, np.ndarray]:
        """Probabilities per task for every row of ``table`` (a pyarrow Table with the training set's
        feature columns; labels are not needed)."""
        if self.encoders is None:
            raise ValueError(f"{self.directory} has no encoders.json: it cannot score raw rows")
        from components.training.device import predict

        return predict(self.model, self.encoders.encode(table, with_labels=False), self.tasks,
                       batch_size=batch_size)


def load_trained(directory: str | Path) -> TrainedModel:
    """Load what :meth:`TrainResult.save` wrote to ``directory``."""
    import json

    import torch

    from models.config import RankerConfig
    from models.embeddings import freeze_pooled
    from models.ranker import Ranker
    from models.spec import FeatureSpec

    directory = Path(directory)
    missing = [n for n in ("model.pt", "spec.json", "ranker_config.json") if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a saved ranker: missing {', '.join(missing)}")
    spec = FeatureSpec.from_dict(json.loads((directory / "spec.json").read_text()))
    config = RankerConfig.from_dict(json.loads((directory / "ranker_config.json").read_text()))
    model = Ranker(spec, config)
    model.load_state_dict(torch.load(directory / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    freeze_pooled(model)  # a loaded ranker only scores: its pooled MNSE rows are computed once (models/embeddings.py)
    encoders = FeatureEncoders.load(directory / "encoders.json") if (directory / "encoders.json").is_file() else None
    return TrainedModel(model=model, encoders=encoders, spec=spec, ranker_config=config, directory=directory)



__all__ = ["TrainResult", "TrainedModel", "load_trained"]

"""What the analyses read from a model, as numpy: the ranker inside what they are given (a Ranker or a
TrainedModel holding one as ``.model``) and tensors as numpy arrays, without importing torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def unwrap_ranker(model: Any) -> Any:
    """A Ranker from a Ranker or anything holding one as ``.model`` (a TrainedModel)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "embedding_tables"):
        return inner
    if not hasattr(model, "embedding_tables"):
        raise TypeError(f"expected a models.ranker.Ranker (or a TrainedModel), got {type(model).__name__}")
    return model


def as_numpy(values: Any) -> np.ndarray:
    """A numpy array of a numpy array, a list or a (possibly GPU, possibly grad-tracking) torch tensor."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)

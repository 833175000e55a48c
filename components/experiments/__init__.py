"""Reproductions of the papers' claims (issue 6): one module per comparison, run by ``adsrec experiment``.

Each module defines ``EXPERIMENT`` (an :class:`~components.experiments.base.Experiment`). Nothing is
imported until an experiment is asked for, so listing them is instant::

    from components.experiments import NAMES, get
    get("ipw").title
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.experiments.base import Experiment

# In the order of issue 6 and docs/results.md, then issue 12's learning curve.
NAMES: tuple[str, ...] = ("collapse", "entanglement", "temporal", "ranking_loss", "representations", "ipw",
                          "learning_curve")


def get(name: str) -> "Experiment":
    """The experiment called ``name`` (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise KeyError(f"no experiment {name!r}; the experiments are: {', '.join(NAMES)}")
    return import_module(f"components.experiments.{name}").EXPERIMENT

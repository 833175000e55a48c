"""The plotting helpers the analyses share (validation/collapse.py, interaction_collapse.py,
entanglement.py and the experiments in components/experiments/): pyplot on a file-only backend, and
saving a figure to a PNG. matplotlib is imported on first use only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot():  # noqa: ANN202 - matplotlib.pyplot
    """pyplot, on the file-only Agg backend unless the caller (a notebook) already chose a backend."""
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (a PNG at 110 dpi; parent folders created), close it, return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

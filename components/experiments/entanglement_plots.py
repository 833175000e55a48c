"""The entanglement experiment's plots (components/experiments/entanglement.py): test AUC per model and
dataset, and the conflicting pairs' distance histograms of each model's tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from components.experiments.base import mean_std


def plot_auc(per_seed: dict[str, dict[str, list[dict[str, float]]]], order: Sequence[str],
             task_names: dict[str, tuple[str, str]], path: Any) -> Any:
    """Test AUC of every model (bars in ``order``, the first one dashed as the reference; mean ± std over
    seeds) per dataset: task A, task B, and task B among task A's positives. ``per_seed[dataset][model]``
    holds one metrics dict per seed (``click_auc``, ``conversion_auc``, ``post_click_conversion_auc``)."""
    from validation.plots import pyplot, save_figure

    plt = pyplot()
    keys = (("click_auc", 0), ("conversion_auc", 1), ("post_click_conversion_auc", None))
    fig, axes = plt.subplots(len(per_seed), len(keys), figsize=(13, 3.0 * len(per_seed)), squeeze=False)
    colours = plt.get_cmap("tab10")
    for r, (dataset, runs) in enumerate(per_seed.items()):
        names = task_names.get(dataset, ("click", "conversion"))
        for c, (key, idx) in enumerate(keys):
            ax = axes[r, c]
            stats = [mean_std([m[key] for m in runs[model]]) for model in order]
            means = np.array([s[0] for s in stats])
            ax.bar(np.arange(len(order)), np.nan_to_num(means), yerr=[s[1] for s in stats],
                   color=[colours(i) for i in range(len(order))], capsize=3)
            finite = means[np.isfinite(means)]
            if finite.size:
                lo, hi = float(finite.min()), float(finite.max())
                pad = max(0.01, (hi - lo) * 0.6)
                ax.set_ylim(lo - pad, hi + pad)
            ax.axhline(stats[0][0], color="k", lw=0.8, ls="--")
            ax.set_xticks(np.arange(len(order)), order, rotation=30, fontsize=7)
            label = f"{names[idx]} AUC" if idx is not None else f"{names[1]} AUC given {names[0]}"
            ax.set_title(f"{dataset}: {label}", fontsize=9)
    fig.suptitle("test AUC per model (mean ± std over seeds; dashed: single-task)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pairs(dataset: str, hist: dict[str, tuple[Any, Any]], names: Sequence[str], single: str, path: Any,
               bins: int = 40) -> Any:
    """Per model (``hist[model]``: the tables task A and task B read, from
    :func:`validation.entanglement.entanglement_report`), histograms of the conflicting pairs' user-ad
    distances; ``single`` names the row of the two single-task models."""
    from validation.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(len(hist), 2, figsize=(9, 2.2 * len(hist)), squeeze=False)
    for r, (model, tables) in enumerate(hist.items()):
        for c, table in enumerate(tables):
            ax = axes[r, c]
            both = np.concatenate([table.dist_a, table.dist_b])
            edges = np.linspace(0, float(np.percentile(both, 99.5)) if both.size else 1.0, bins + 1)
            for dist, label, colour in ((table.dist_a, f"{names[0]}, not {names[1]}", "tab:blue"),
                                        (table.dist_b, names[1], "tab:orange")):
                if len(dist):
                    ax.hist(dist, bins=edges, density=True, alpha=0.5, color=colour, label=f"{label} (n={len(dist)})")
                    ax.axvline(float(dist.mean()), color=colour, lw=1.5)
            owner = f"{names[c]} model's table" if model == single else f"table {table.table}"
            ax.set_title(f"{model}: {owner} (used by {names[c]}), gap {table.gap:+.3f}", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("normalised user-ad distance")
    axes[-1, 1].set_xlabel("normalised user-ad distance")
    fig.suptitle(f"{dataset}: conflicting pairs' user-ad distances (gap > 0: {names[0]}-only pairs closer; "
                 f"seed 0)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)

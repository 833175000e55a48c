"""Experiment 1, collapse and scaling: does widening one embedding table buy AUC, or do more tables?

The claim (METHODS.md "Dimensional collapse", "Multi-Embedding"): growing the width d of a single
embedding table gives flat or worse AUC (the extra dimensions collapse), while the same embedding
parameters spent on M independent tables of width d (multi-embedding, one expert per table, a
non-linearity after each interaction) give steadily better AUC and a higher information abundance.

Design, on the demo marketplace of tests/model/test_model_behaviour.py under the clean protocol (days 1-5
train, day 6 validates, day 7 tests untouched; a fixed number of epochs, the last kept, so nothing is
chosen and the validation day is only held out):

- **single embedding**: ``arch="shared_bottom"`` (a DNN: one MLP expert on one table) and
  ``arch="dcnv2"`` (cross layers + MLP on one table) with ``embedding_dim = d * k`` for ``k`` in
  1, 2, 4, 10;
- **multi-embedding**: ``arch="multi_embedding"`` with ``num_tables = M`` in 1, 2, 4, 10 tables of width
  d, each read by its own expert (``expert="mlp"``: ME-DNN; ``expert="dcnv2"``: ME-DCNv2), combined by
  learned softmax weights per task. Width k x d and M = k tables hold exactly the same number of
  embedding parameters (the x axis of the plot); the dense parts are not matched (a DCNv2 cross layer on
  one wide table grows with the square of its width, on M narrow tables linearly in M).

Measured per (variant, seed): test AUC per task, embedding and total parameters, and two collapse
numbers from :mod:`validation.collapse` on the rows the training set reads. Every AUC comparison of the
verdict (the widest against the narrowest of a family, the most tables against the widest single table)
is a paired difference with a bootstrap interval over the test day's users (:func:`~components.
experiments.base.auc_gain`); it counts only beyond the noise (the interval or the seeds' spread,
whichever is wider, excludes 0).

- ``IA/d``: :func:`validation.collapse.collapse_report`'s ``mean_ia_ratio`` (mean over tables of the
  mean over fields of IA / table width) - what the issue asks for. Low-cardinality fields (gender: a
  handful of rows) cap IA at their row count, so this number falls with width by construction;
- ``IA/D (id fields)``: for every field with at least ``MIN_ROWS_FOR_IA`` rows read (user, ad,
  campaign and advertiser ids), the IA of the field's *whole* embedding - the M tables' rows side by side,
  D = M * d wide, or the single table's D = k * d - divided by D, averaged over those fields. This is the
  like-for-like comparison at equal D and is not capped by row counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from components.experiments.base import (Difference, Experiment, ExperimentContext, ExperimentResult, auc_gain,
                                         fmt, mean_std)

if TYPE_CHECKING:
    from components.experiments.data import Market

TITLE = "Collapse and scaling: widening one embedding table against adding tables"
CLAIM = ("Widening a single embedding table (DCNv2, DNN) 1x to 10x gives flat or worse AUC; spending the same "
         "embedding parameters on 1 to 10 tables (multi-embedding) improves AUC and information abundance.")

# The marketplace of tests/model/test_model_behaviour.py (docs/evaluation.md, "Model behaviour tests"): 1,000 users,
# about 99k training and 20k test impressions, 12 categorical + 3 numeric fields.
SIMULATOR: dict[str, Any] = {
    "seed": 7, "n_users": 1000, "new_users_per_day": 10, "n_initial_ads": 500, "new_ads_per_day": 20,
    "sessions_per_user_day": 4.0, "preference_correlation": -0.5, "content_weight": 0.0,
    "preference_scale": 1.5, "conversion_base_logit": 0.5,
}
SMALL_SIMULATOR: dict[str, Any] = {**SIMULATOR, "n_users": 120, "new_users_per_day": 2, "n_initial_ads": 100,
                                   "new_ads_per_day": 5, "sessions_per_user_day": 3.0}
DAYS, SMALL_DAYS = 7, 4  # the last day tests, the one before validates, the rest train
BASE_DIM = 8  # d: the width of one multi-embedding table and of the 1x single table
SMALL_BASE_DIM = 4
SCALES = (1, 2, 4, 10)  # width multipliers k of the single table = table counts M of multi-embedding
MIN_ROWS_FOR_IA = 200  # fields with at least this many read rows enter IA/D (not capped by rows at D = 80)
COMMON: dict[str, Any] = {"expert_hidden": (64, 32), "gate_hidden": (16,), "tower_hidden": (32,),
                          "mnse_combine": "sum", "sequence_encoder": None}
TRAIN: dict[str, Any] = {"epochs": 2, "batch_size": 512, "lr": 3e-3, "patience": 0, "log_every": 0}
SMALL_TRAIN: dict[str, Any] = {**TRAIN, "epochs": 1}
FAMILIES = ("DNN", "DCNv2", "ME-DNN", "ME-DCNv2")


def variants(scales: tuple[int, ...] = SCALES, d: int = BASE_DIM) -> list[dict[str, Any]]:
    """Every (family, scale) as ``{"family", "scale", "label", "config"}``; ``config`` is RankerConfig kwargs."""
    out = []
    for family in FAMILIES:
        for k in scales:
            if family == "DNN":
                cfg, label = {"arch": "shared_bottom", "embedding_dim": d * k}, f"DNN {k}x (d={d * k})"
            elif family == "DCNv2":
                cfg, label = {"arch": "dcnv2", "embedding_dim": d * k}, f"DCNv2 {k}x (d={d * k})"
            else:
                expert = "mlp" if family == "ME-DNN" else "dcnv2"
                cfg = {"arch": "multi_embedding", "embedding_dim": d, "num_tables": k, "expert": expert,
                       "me_combine": "weighted"}
                label = f"{family} {k} table{'s' if k > 1 else ''} (d={d})"
            out.append({"family": family, "scale": k, "label": label, "config": {**COMMON, **cfg}})
    return out


def concatenated_ia_ratio(model: Any, id_counts: dict[str, np.ndarray], min_rows: int = MIN_ROWS_FOR_IA,
                          max_rows: int = 20_000, seed: int = 0) -> tuple[float, dict[str, float]]:
    """Mean over fields with >= ``min_rows`` read rows of IA(field rows of every table side by side) / D.

    D is the summed width of the model's tables; rows are the field's read rows, sampled ∝ id count as in
    :func:`validation.collapse.collapse_report`. Returns the mean and the per-field ratios.
    """
    from validation.information_abundance import information_abundance

    tables = [w.detach().float().cpu().numpy() for w in model.embedding_tables().values()]
    slices = next(iter(model.field_slices().values()))
    width = sum(t.shape[1] for t in tables)
    per_field: dict[str, float] = {}
    for name, (start, stop) in slices.items():
        counts = id_counts.get(name)
        if counts is None or int((counts > 0).sum()) < min_rows:
            continue
        whole = np.concatenate([t[start:stop] for t in tables], axis=1)
        per_field[name] = information_abundance(whole, max_rows=max_rows, weights=counts, seed=seed) / width
    return (float(np.mean(list(per_field.values()))) if per_field else float("nan")), per_field


def _train_one(market: "Market", variant: dict[str, Any], seed: int, train: dict[str, Any],
               train_batch: dict[str, Any], min_rows: int = MIN_ROWS_FOR_IA
               ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Train one variant with one seed: test AUC per task, parameters and the collapse numbers; and the
    test scores per task (for the paired intervals)."""
    from components.training.device import predict
    from components.training.loop import train_ranker
    from components.training.metrics import auc
    from components.training.train_config import TrainConfig
    from models.config import RankerConfig
    from validation.collapse import collapse_report, id_counts_from_batch

    result = train_ranker(None, market.train, None, RankerConfig(**variant["config"]),
                          TrainConfig(**train, seed=seed), encoders=market.encoders)
    model = result.model
    scores = predict(model, market.test_batch, market.tasks)
    counts = id_counts_from_batch(model, train_batch)
    report = collapse_report(model, id_counts=counts, seed=seed)
    ia_whole, _ = concatenated_ia_ratio(model, counts, min_rows=min_rows, seed=seed)
    emb_params = int(sum(w.numel() for w in model.embedding_tables().values()))
    total_params = int(sum(p.numel() for p in model.parameters()))
    out = {f"auc_{t}": auc(scores[t], market.labels[t]) for t in market.tasks}
    out.update({"ia_ratio": report.mean_ia_ratio, "ia_whole": ia_whole, "embedding_params": emb_params,
                "total_params": total_params, "train_seconds": result.seconds})
    return out, scores


def _plot(summary: dict[str, dict[str, Any]], tasks: tuple[str, ...], path: Any) -> Any:
    """AUC (click) and the two IA measures against embedding parameters, one line per family."""
    from validation.plots import pyplot, save_figure

    plt = pyplot()
    metrics = [(f"auc_{tasks[0]}", f"test AUC ({tasks[0]})"), ("ia_whole", "IA / D, id fields (whole embedding)"),
               ("ia_ratio", "mean IA / d (all fields, per table)")]
    if len(tasks) > 1:
        metrics.insert(1, (f"auc_{tasks[1]}", f"test AUC ({tasks[1]})"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.0))
    styles = {"DNN": ("tab:blue", "o", "--"), "DCNv2": ("tab:orange", "s", "--"),
              "ME-DNN": ("tab:blue", "o", "-"), "ME-DCNv2": ("tab:orange", "s", "-")}
    for ax, (key, name) in zip(axes, metrics):
        for family in FAMILIES:
            rows = [r for r in summary.values() if r["family"] == family]
            if not rows:
                continue
            rows.sort(key=lambda r: r["embedding_params"])
            x = [r["embedding_params"] for r in rows]
            y = [r[key][0] for r in rows]
            e = [r[key][1] for r in rows]
            colour, marker, line = styles[family]
            ax.errorbar(x, y, yerr=e, color=colour, marker=marker, linestyle=line, capsize=3,
                        label=family + (" (one table, wider)" if not family.startswith("ME") else " (more tables)"))
        ax.set_xscale("log")
        ax.set_xlabel("embedding parameters")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("single table widened 1x/2x/4x/10x (dashed) vs 1/2/4/10 tables (solid); mean ± std over seeds",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _verdict(summary: dict[str, dict[str, Any]], gains: dict[str, Difference], task: str,
             scales: tuple[int, ...]) -> tuple[str, str]:
    """Reproduced when, for both model families, the widest single table gains nothing over 1x beyond the
    noise (flat or worse) while the most tables beat 1 table and the widest single table beyond the noise
    on test AUC and raise IA/D beyond the seeds' spread. ``gains``: :func:`_headline_gains`."""
    lo, hi = scales[0], scales[-1]
    key = f"auc_{task}"

    def get(family: str, k: int) -> dict[str, Any]:
        return next(r for r in summary.values() if r["family"] == family and r["scale"] == k)

    parts, widen_flat, me_better, ia_better = [], [], [], []
    for single, multi in (("DNN", "ME-DNN"), ("DCNv2", "ME-DCNv2")):
        s_lo, s_hi, m_lo, m_hi = get(single, lo), get(single, hi), get(multi, lo), get(multi, hi)
        d_single, d_multi = gains[f"{single} {hi} vs {lo}"], gains[f"{multi} {hi} vs {lo}"]
        d_width = gains[f"{multi} {hi} vs {single} {hi}"]
        widen_flat.append(not d_single.above())
        me_better.append(d_multi.above() and d_width.above())
        ia_better.append(m_hi["ia_whole"][0] - s_hi["ia_whole"][0] > max(m_hi["ia_whole"][1], s_hi["ia_whole"][1]))
        parts.append(
            f"{single} {lo}x→{hi}x {task} AUC {s_lo[key][0]:.4f}→{s_hi[key][0]:.4f} ({d_single}); "
            f"{multi} {lo}→{hi} tables {m_lo[key][0]:.4f}→{m_hi[key][0]:.4f} ({d_multi}); {hi} tables − {hi}x "
            f"{d_width}; IA/D at {hi}x: one table {s_hi['ia_whole'][0]:.3f}, {hi} tables {m_hi['ia_whole'][0]:.3f}")
    score = sum(widen_flat) + sum(me_better) + sum(ia_better)
    verdict = "reproduced" if score == 6 else ("not reproduced" if sum(me_better) == 0 else "partly")
    checks = (f"widening flat or worse (gain not above 0 beyond the noise): {sum(widen_flat)}/2 families; more "
              f"tables better AUC (above 1 table and above the widest single table, beyond the noise): "
              f"{sum(me_better)}/2; more tables higher IA/D (beyond the seeds' spread): {sum(ia_better)}/2")
    return verdict, "; ".join(parts) + f". {checks}. Differences: seed mean ± std [95% interval over test users]."


def _headline_gains(market: "Market", scores: dict[str, list[dict[str, np.ndarray]]], scales: tuple[int, ...],
                    d: int, task: str) -> dict[str, Difference]:
    """Paired test-day AUC gains of ``task`` with intervals: every variant against its family's scale
    ``scales[0]`` (``"<family> <k> vs <lo>"``), and the most tables against the widest single table."""
    by = {(v["family"], v["scale"]): v["label"] for v in variants(scales, d)}
    lo, hi = scales[0], scales[-1]
    y, users = market.labels[task], market.test_users

    def gain(a: str, b: str) -> Difference:
        return auc_gain(y, [s[task] for s in scores[a]], [s[task] for s in scores[b]], users)

    out = {f"{family} {k} vs {lo}": gain(by[family, k], by[family, lo]) for family in FAMILIES for k in scales}
    for single, multi in (("DNN", "ME-DNN"), ("DCNv2", "ME-DCNv2")):
        out[f"{multi} {hi} vs {single} {hi}"] = gain(by[multi, hi], by[single, hi])
    return out


def run(ctx: ExperimentContext) -> ExperimentResult:
    """Train every variant with every seed on one marketplace, tabulate mean ± std, plot, judge the claim."""
    import torch

    from components.experiments.data import simulated_market

    sim, days, train = (SMALL_SIMULATOR, SMALL_DAYS, SMALL_TRAIN) if ctx.small else (SIMULATOR, DAYS, TRAIN)
    scales, d = SCALES, (SMALL_BASE_DIM if ctx.small else BASE_DIM)
    min_rows = 40 if ctx.small else MIN_ROWS_FOR_IA
    market = simulated_market(ctx.settings, sim, days=days)
    train_batch = market.encoders.encode_numpy(market.train, with_labels=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on 2 shared cores: thread hand-offs cost more than the maths
    runs: dict[str, list[dict[str, Any]]] = {}
    scores: dict[str, list[dict[str, np.ndarray]]] = {}
    try:
        for variant in variants(scales, d):
            for seed in ctx.seeds:
                m, test_scores = _train_one(market, variant, seed, train, train_batch, min_rows)
                runs.setdefault(variant["label"], []).append({"seed": seed, **m})
                scores.setdefault(variant["label"], []).append(test_scores)
                ctx.log_run(f"{variant['label']}/seed{seed}",
                            {"family": variant["family"], "scale": variant["scale"], **variant["config"],
                             **train, "seed": seed, "simulator": sim, "days": days},
                            {k: float(v) for k, v in m.items()})
    finally:
        torch.set_num_threads(threads)

    tasks = market.tasks
    metric_keys = [*(f"auc_{t}" for t in tasks), "ia_whole", "ia_ratio"]
    summary: dict[str, dict[str, Any]] = {}
    for variant in variants(scales, d):
        per_seed = runs[variant["label"]]
        summary[variant["label"]] = {
            "family": variant["family"], "scale": variant["scale"],
            "embedding_params": per_seed[0]["embedding_params"], "total_params": per_seed[0]["total_params"],
            **{k: mean_std([r[k] for r in per_seed]) for k in metric_keys},
        }
    gains = _headline_gains(market, scores, scales, d, tasks[0])
    gain_col = f"Δ AUC {tasks[0]} vs 1x / 1 table"
    columns = ["model", "embedding params", "total params", *(f"AUC {t}" for t in tasks), gain_col,
               "IA/D (id fields)", "mean IA/d"]
    rows = []
    for label, s in summary.items():
        row = {"model": label, "embedding params": f"{s['embedding_params']:,}", "total params": f"{s['total_params']:,}"}
        row.update({f"AUC {t}": fmt(*s[f"auc_{t}"]) for t in tasks})
        row[gain_col] = "-" if s["scale"] == scales[0] else str(gains[f"{s['family']} {s['scale']} vs {scales[0]}"])
        row["IA/D (id fields)"] = fmt(*s["ia_whole"], digits=3)
        row["mean IA/d"] = fmt(*s["ia_ratio"], digits=3)
        rows.append(row)
    ctx.plot_dir.mkdir(parents=True, exist_ok=True)
    plot = _plot(summary, tasks, ctx.plot_dir / "collapse_scaling.png")
    verdict, finding = _verdict(summary, gains, tasks[0], scales)
    notes = [
        f"Data: the demo marketplace of tests/model/test_model_behaviour.py (simulator {sim}), {days} days: "
        f"{market.split_text()}. Training: {train}; the last epoch is kept (nothing is chosen, so the "
        "validation day is only held out).",
        f"{gain_col}: the paired difference to the family's narrowest / one-table model, seed mean ± std and "
        "the 95% bootstrap interval over the test day's users (200 resamples; per seed, then averaged over the "
        "seeds on the same resamples). A difference counts when the interval or the seeds' spread, whichever "
        "is wider, excludes 0.",
        f"Models: expert MLP {COMMON['expert_hidden']}, towers {COMMON['tower_hidden']}, numeric fields "
        "MNSE-summed, no behaviour sequence. Single table: width d x k; multi-embedding: M = k tables of width "
        f"d = {d}, one expert per table, learned softmax weights per task. Embedding parameters are "
        "equal at k = M; dense parameters are not (the DCNv2 cross layers on one wide table grow with the "
        "square of its width).",
        "IA/D (id fields): per field with at least "
        f"{min_rows} rows read in training (the id fields), the information abundance of the field's "
        "whole embedding (every table's rows side by side, D = total width) over D, averaged over those fields. "
        "mean IA/d: validation.collapse's mean over tables of the mean over all fields of IA/d; fields with "
        "fewer rows than d (gender, age band, slot...) cap it, so it falls with width by construction.",
        "The headline task is click (the claim's AUC); conversion AUC is shown alongside.",
    ]
    return ExperimentResult(
        name=ctx.name, title=TITLE, claim=CLAIM, columns=columns, rows=rows, verdict=verdict, finding=finding,
        plots=[plot], notes=notes,
        data={"runs": runs, "simulator": sim, "days": days, "train": train, "base_dim": d,
              "scales": list(scales), "gains": {k: g.to_dict() for k, g in gains.items()}},
    )


EXPERIMENT = Experiment(name="collapse", title=TITLE, claim=CLAIM, run=run)

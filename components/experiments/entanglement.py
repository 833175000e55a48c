"""Experiment 2, interest entanglement: single-task models against shared-bottom, MMoE, PLE, STEM and AME
on two tasks, on the demo marketplace (click / conversion with conflicting tastes), Taobao (pv / buy) and
MovieLens-100k (rated / rated >= 4).

Every dataset is split and encoded once (components/experiments/data.py); every model of every seed
trains on the same rows with the same optimiser settings (3 epochs, no early stopping, the last epoch is
kept) and is scored on the held-out period:

- **single-task**: one shared-bottom DNN per task, each with its own embedding table (fitted on the same
  training rows with the other task's label excluded, so their vocabularies are the multi-task models');
- **shared-bottom, MMoE, PLE**: one shared embedding table (the models where negative transfer shows);
- **STEM**: a table per task plus a shared one, all-forward task-specific-backward gates;
- **AME**: shared tables of different widths, one expert per table, per-task gates.

Per model: test AUC and GAUC (per user) of each task, the post-click conversion AUC (conversion AUC on the
clicked test rows: the p(conv | click) ordering, where the simulator makes click and conversion tastes
conflict), the contradictory-pair separation of validation/entanglement.py (label-selected pairs of the
training rows: "clicked, not converted" against "converted"; 0 by construction for a model whose tasks
share one table; for the single-task pair, the click model's table against the conversion model's) and
the inter-expert correlation (mean |r| of the experts' outputs on the test rows). Plots: AUC per model and
task with seed error bars, and the conflicting-pair distance histograms of each model's tables (seed 0).

The claim is checked per dataset and task: a task shows *negative transfer* when a shared-embedding model
(shared-bottom, MMoE or PLE) is below the single-task model's mean AUC by more than the tolerance
(max(0.002, the single-task std over seeds)); on those tasks STEM and AME must be at least the single-task
mean minus the same tolerance.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from components.experiments.base import (Experiment, ExperimentContext, ExperimentResult, Verdict, fmt,
                                         mean_std)

if TYPE_CHECKING:
    from components.experiments.data import Market

TASKS: tuple[str, ...] = ("click", "conversion")
# What the two tasks are on each dataset.
TASK_NAMES: dict[str, tuple[str, str]] = {
    "simulator": ("click", "conversion"),
    "taobao": ("pv", "buy"),
    "movielens": ("rated", "rated >= 4"),
}

# The conflicting-taste marketplace (components/experiments/data.py says why each knob).
from components.experiments.data import CONFLICT_MODEL as COMMON  # noqa: E402
from components.experiments.data import CONFLICT_SIMULATOR as SIMULATOR  # noqa: E402
from components.experiments.data import CONFLICT_SIMULATOR_SMALL as SIMULATOR_SMALL  # noqa: E402

# Same widths everywhere (tests/model/test_model_behaviour.py): d = 8 per table, MLP experts (64, 32).
MODELS: dict[str, dict[str, Any]] = {
    "shared-bottom": {"arch": "shared_bottom"},
    "MMoE": {"arch": "mmoe", "num_shared_experts": 3},
    "PLE": {"arch": "ple", "num_shared_experts": 1, "experts_per_task": 1, "ple_levels": 1},
    "STEM": {"arch": "stem", "num_shared_experts": 1, "experts_per_task": 1},
    "AME": {"arch": "ame", "ame_widths": (4, 8, 16)},
}
SINGLE = "single-task"
SHARED_EMBEDDING = ("shared-bottom", "MMoE", "PLE")
DISENTANGLED = ("STEM", "AME")
ORDER = (SINGLE, *MODELS)
TRAIN: dict[str, Any] = {"epochs": 3, "batch_size": 512, "lr": 3e-3, "patience": 0, "log_every": 0}
MIN_TOL = 0.002


@dataclass(frozen=True)
class Sizes:
    """What a size runs: datasets, epochs, training rows of the real logs (the newest kept)."""

    datasets: tuple[str, ...]
    epochs: int
    sim_days: int
    simulator: dict[str, Any]
    real_train_rows: int


DEFAULT = Sizes(("simulator", "taobao", "movielens"), 3, 6, SIMULATOR, 150_000)
SMALL = Sizes(("simulator",), 1, 3, SIMULATOR_SMALL, 20_000)


def load_market(ctx: ExperimentContext, dataset: str, sizes: Sizes) -> "Market":
    """The dataset's split (see components/experiments/data.py)."""
    from components.experiments import data

    if dataset == "simulator":
        return data.simulated_market(ctx.settings, sizes.simulator, days=sizes.sim_days, tasks=TASKS)
    if dataset == "taobao":
        return data.taobao_market(ctx.settings, TASKS, max_train_rows=sizes.real_train_rows)
    if dataset == "movielens":
        return data.movielens_market(ctx.settings, TASKS, max_train_rows=sizes.real_train_rows)
    raise KeyError(f"unknown dataset {dataset!r}")


def _train(market: "Market", arch: dict[str, Any], seed: int, epochs: int, encoders: Any) -> Any:
    from components.training.loop import train_ranker
    from components.training.train_config import TrainConfig
    from models.config import RankerConfig

    cfg = TrainConfig(**{**TRAIN, "epochs": epochs}, seed=seed, ipw=False)
    return train_ranker(None, market.train, None, RankerConfig(**COMMON, **arch), cfg, encoders=encoders).model


def _scores(market: "Market", probs: dict[str, np.ndarray]) -> dict[str, float]:
    from components.training.metrics import auc, gauc

    users = market.test["user_id"].to_numpy()
    clicked = market.labels["click"] == 1
    out: dict[str, float] = {}
    for t in TASKS:
        out[f"{t}_auc"] = auc(probs[t], market.labels[t])
        out[f"{t}_gauc"] = gauc(probs[t], market.labels[t], users)
    y = market.labels["conversion"][clicked]
    out["post_click_conversion_auc"] = auc(probs["conversion"][clicked], y) if 0 < y.sum() < y.size else math.nan
    return out


def _plot_table(report: Any, prefer: str) -> Any:
    """The table of ``report``'s first pair that a task uses: its own task table, else the first shared."""
    tables = report.pairs[0].tables
    return tables.get(f"task:{prefer}") or next(iter(tables.values()))


def _run_dataset(ctx: ExperimentContext, dataset: str, sizes: Sizes) -> dict[str, Any]:
    """Train every model on every seed; per-seed metrics, seed-0 distance tables for the plot."""
    from components.training.device import predict
    from components.training.encoders import FeatureEncoders
    from validation.entanglement import entanglement_report

    market = load_market(ctx, dataset, sizes)
    ctx.progress(f"[entanglement] {dataset}: {market.train.num_rows} train rows, {market.test.num_rows} test "
                 f"rows, test positives " + ", ".join(f"{t} {int(v.sum())}" for t, v in market.labels.items()))
    single_enc = {t: FeatureEncoders.fit(market.train, tasks=[t], exclude=[o for o in TASKS if o != t])
                  for t in TASKS}
    for t, enc in single_enc.items():  # same vocabularies: the conflicting pairs are the same rows
        if [c.vocab_size for c in enc.categorical] != [c.vocab_size for c in market.encoders.categorical]:
            raise RuntimeError(f"single-task encoders of {t!r} differ from the multi-task ones")
    single_batch = {t: enc.encode(market.test, with_labels=True) for t, enc in single_enc.items()}
    per_seed: dict[str, list[dict[str, float]]] = {m: [] for m in ORDER}
    hist: dict[str, tuple[Any, Any]] = {}
    meta = {"train_rows": market.train.num_rows, "test_rows": market.test.num_rows,
            "test_positives": {t: int(v.sum()) for t, v in market.labels.items()}}
    report_kw: dict[str, Any] = {"tasks": TASKS, "min_count": 5, "max_pairs": 20_000}
    for seed in ctx.seeds:
        # single-task: one model per task
        probs, reports = {}, {}
        for t in TASKS:
            model = _train(market, {"arch": "shared_bottom"}, seed, sizes.epochs, single_enc[t])
            probs[t] = predict(model, single_batch[t], (t,))[t]
            reports[t] = entanglement_report(model, market.train, single_enc[t], seed=seed, **report_kw)
        metrics = _scores(market, probs)
        gap_a, gap_b = (reports[t].pairs[0].tables["shared"].gap for t in TASKS)
        metrics["separation"] = float((gap_a - gap_b) / 2)  # (gap under A's table - gap under B's) / 2
        metrics["expert_abs_r"] = math.nan
        per_seed[SINGLE].append(metrics)
        if seed == ctx.seeds[0]:
            hist[SINGLE] = (_plot_table(reports["click"], "click"), _plot_table(reports["conversion"], "conversion"))
        _log(ctx, dataset, SINGLE, seed, metrics, {"arch": "shared_bottom x 2 (one per task)"})
        for name, arch in MODELS.items():
            model = _train(market, arch, seed, sizes.epochs, market.encoders)
            metrics = _scores(market, predict(model, market.test_batch, TASKS))
            report = entanglement_report(model, market.train, market.encoders, batch=market.test_batch,
                                         seed=seed, **report_kw)
            metrics["separation"] = report.pairs[0].separation
            metrics["expert_abs_r"] = (math.nan if report.expert_mean_abs_r is None
                                       else float(report.expert_mean_abs_r))
            per_seed[name].append(metrics)
            if seed == ctx.seeds[0]:
                hist[name] = (_plot_table(report, "click"), _plot_table(report, "conversion"))
                meta["pairs"] = {"n_click_only": report.pairs[0].n_a, "n_conversion": report.pairs[0].n_b,
                                 "selection": report.pairs[0].selection}
            _log(ctx, dataset, name, seed, metrics, arch)
    return {"per_seed": per_seed, "hist": hist, "meta": meta}


def _log(ctx: ExperimentContext, dataset: str, model: str, seed: int, metrics: dict[str, float],
         arch: dict[str, Any]) -> None:
    ctx.log_run(f"{dataset}/{model}/seed{seed}",
                {"dataset": dataset, "model": model, "seed": seed, **{f"model.{k}": v for k, v in arch.items()},
                 **{f"common.{k}": v for k, v in COMMON.items()}, **TRAIN},
                metrics)


# ----- the verdict ----------------------------------------------------------------------------------------
def _ms(per_seed: dict[str, list[dict[str, float]]], model: str, key: str) -> tuple[float, float]:
    return mean_std([m[key] for m in per_seed[model]])


def check_claim(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and task: single-task mean, worst shared-embedding model, STEM and AME, the tolerance,
    whether there is negative transfer and whether STEM / AME match the single-task model."""
    cases = []
    for dataset, res in results.items():
        ps = res["per_seed"]
        for t in TASKS:
            key = f"{t}_auc"
            single, single_sd = _ms(ps, SINGLE, key)
            tol = max(MIN_TOL, single_sd)
            shared = {m: _ms(ps, m, key)[0] for m in SHARED_EMBEDDING}
            worst = min(shared, key=lambda m: shared[m])
            case: dict[str, Any] = {"dataset": dataset, "task": t, "single": single, "tol": tol, "worst_shared": worst,
                    "worst_shared_auc": shared[worst], "negative_transfer": shared[worst] < single - tol}
            for m in DISENTANGLED:
                case[m] = _ms(ps, m, key)[0]
                case[f"{m}_matches"] = case[m] >= single - tol
            cases.append(case)
    return cases


def _verdict(cases: list[dict[str, Any]]) -> tuple[Verdict, str]:
    nt = [c for c in cases if c["negative_transfer"]]
    if not nt:
        return "not reproduced", ("no dataset/task showed negative transfer of the shared-embedding models, so "
                                  "the claim was not tested")
    ok = {m: [c for c in nt if c[f"{m}_matches"]] for m in DISENTANGLED}
    both = [c for c in nt if all(c[f"{m}_matches"] for m in DISENTANGLED)]
    verdict: Verdict
    if len(both) == len(nt):
        verdict = "reproduced"
    elif any(ok[m] for m in DISENTANGLED):
        verdict = "partly"
    else:
        verdict = "not reproduced"
    parts = [f"{c['dataset']} {c['task']}: single {c['single']:.4f}, {c['worst_shared']} {c['worst_shared_auc']:.4f}, "
             f"STEM {c['STEM']:.4f}, AME {c['AME']:.4f}" for c in nt]
    summary = (f"negative transfer on {len(nt)} of {len(cases)} dataset-tasks ({'; '.join(parts)}); STEM matches "
               f"the single-task model on {len(ok['STEM'])} of them, AME on {len(ok['AME'])}")
    return verdict, summary


# ----- plots ----------------------------------------------------------------------------------------------
def _plot_auc(results: dict[str, dict[str, Any]], path: Any) -> Any:
    from validation.plots import pyplot, save_figure

    plt = pyplot()
    keys = (("click_auc", 0), ("conversion_auc", 1), ("post_click_conversion_auc", None))
    fig, axes = plt.subplots(len(results), len(keys), figsize=(13, 3.0 * len(results)), squeeze=False)
    colours = plt.get_cmap("tab10")
    for r, (dataset, res) in enumerate(results.items()):
        names = TASK_NAMES.get(dataset, TASKS)
        for c, (key, idx) in enumerate(keys):
            ax = axes[r, c]
            stats = [_ms(res["per_seed"], m, key) for m in ORDER]
            means = np.array([s[0] for s in stats])
            ax.bar(np.arange(len(ORDER)), np.nan_to_num(means), yerr=[s[1] for s in stats],
                   color=[colours(i) for i in range(len(ORDER))], capsize=3)
            finite = means[np.isfinite(means)]
            if finite.size:
                lo, hi = float(finite.min()), float(finite.max())
                pad = max(0.01, (hi - lo) * 0.6)
                ax.set_ylim(lo - pad, hi + pad)
            ax.axhline(stats[0][0], color="k", lw=0.8, ls="--")
            ax.set_xticks(np.arange(len(ORDER)), ORDER, rotation=30, fontsize=7)
            label = f"{names[idx]} AUC" if idx is not None else f"{names[1]} AUC given {names[0]}"
            ax.set_title(f"{dataset}: {label}", fontsize=9)
    fig.suptitle("test AUC per model (mean ± std over seeds; dashed: single-task)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _plot_pairs(dataset: str, hist: dict[str, tuple[Any, Any]], path: Any, bins: int = 40) -> Any:
    from validation.plots import pyplot, save_figure

    plt = pyplot()
    names = TASK_NAMES.get(dataset, TASKS)
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
            owner = f"{names[c]} model's table" if model == SINGLE else f"table {table.table}"
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


# ----- run ------------------------------------------------------------------------------------------------
def run(ctx: ExperimentContext, datasets: tuple[str, ...] | None = None) -> ExperimentResult:
    """Train and compare every model on every dataset of the size (or ``datasets``); see the module
    docstring."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    sizes = SMALL if ctx.small else DEFAULT
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than the maths on 2 shared cores
    try:
        results = {d: _run_dataset(ctx, d, sizes) for d in (datasets or sizes.datasets)}
    finally:
        torch.set_num_threads(threads)
    ctx.plot_dir.mkdir(parents=True, exist_ok=True)
    plots = [_plot_auc(results, ctx.plot_dir / "auc.png")]
    plots += [_plot_pairs(d, r["hist"], ctx.plot_dir / f"pairs_{d}.png") for d, r in results.items()]

    columns = ["dataset", "model", "task A AUC", "task A GAUC", "task B AUC", "task B GAUC",
               "B AUC on A-positive rows", "separation", "expert mean |r|"]
    rows = []
    for dataset, res in results.items():
        names = TASK_NAMES.get(dataset, TASKS)
        for m in ORDER:
            cell = lambda key, digits=4: fmt(*_ms(res["per_seed"], m, key), digits=digits)  # noqa: E731
            rows.append({"dataset": f"{dataset} (A {names[0]}, B {names[1]})", "model": m,
                         "task A AUC": cell("click_auc"), "task A GAUC": cell("click_gauc"),
                         "task B AUC": cell("conversion_auc"), "task B GAUC": cell("conversion_gauc"),
                         "B AUC on A-positive rows": cell("post_click_conversion_auc"),
                         "separation": cell("separation", 3), "expert mean |r|": cell("expert_abs_r", 3)})
    cases = check_claim(results)
    verdict, summary = _verdict(cases)
    post = []
    for dataset, res in results.items():
        vals = {m: _ms(res["per_seed"], m, "post_click_conversion_auc")[0] for m in ORDER}
        post.append(f"{dataset} " + ", ".join(f"{m} {v:.3f}" for m, v in vals.items() if math.isfinite(v)))
    finding = (f"{summary}. Post-click conversion AUC (B among A-positive rows): {'; '.join(post)}.")
    notes = [
        "Models: d = 8 per table, MLP experts (64, 32), gates (16,), towers (32,); single-task = one "
        "shared-bottom DNN per task with its own table; MMoE 3 shared experts; PLE 1 level, 1 shared + 1 per "
        "task; STEM 1 shared + 1 per task (3 tables); AME tables of widths 4, 8, 16. Adam lr 3e-3, batch 512, "
        f"{sizes.epochs} epochs, last epoch kept, no IPW.",
        "Negative transfer on a task: a shared-embedding model (shared-bottom, MMoE, PLE) below the "
        "single-task mean AUC by more than max(0.002, single-task std); STEM/AME match when within the same "
        "tolerance. Cases: " + "; ".join(
            f"{c['dataset']}/{c['task']}: single {c['single']:.4f} (tol {c['tol']:.4f}), worst shared "
            f"{c['worst_shared']} {c['worst_shared_auc']:.4f} -> "
            f"{'negative transfer' if c['negative_transfer'] else 'none'}, "
            f"STEM {c['STEM']:.4f}, AME {c['AME']:.4f}" for c in cases),
        "Separation (validation/entanglement.py): label-selected conflicting pairs of the training rows "
        "(A-positive and B-negative vs B-positive; users and items with >= 5 impressions), (gap under A's "
        "table - gap under B's) / 2 of normalised user-ad distances; exactly 0 for a model whose tasks read "
        "one table (shared-bottom, MMoE, PLE, AME); the single-task row pairs the two single-task models.",
        "Data: simulator = the conflicting-taste marketplace of tests/model/test_model_behaviour.py (days 1-5 train, "
        "day 6 test, preference_correlation -0.5); Taobao = last UTC day as test, newest "
        f"{sizes.real_train_rows} training rows; MovieLens = last 10% of impressions in time as test, newest "
        f"{sizes.real_train_rows} training rows; both with the adapters' 4 popularity-sampled negatives per "
        "positive. Taobao's test day has only "
        + (f"{results['taobao']['meta']['test_positives']['conversion']}" if "taobao" in results else "few")
        + " buys, so its buy AUC is noisy.",
    ]
    for dataset, res in results.items():
        names = TASK_NAMES.get(dataset, TASKS)
        spread = []
        for t, label in zip(TASKS, names):
            values = np.array([m[f"{t}_auc"] for runs in res["per_seed"].values() for m in runs], dtype=float)
            sds = [_ms(res["per_seed"], m, f"{t}_auc")[1] for m in ORDER]
            spread.append(f"{label} AUC of every model and seed in [{np.nanmin(values):.3f}, {np.nanmax(values):.3f}], "
                          f"mean seed std {np.nanmean(sds):.3f}")
        notes.append(f"Seed noise on {dataset}: " + "; ".join(spread) + ".")
    data: dict[str, Any] = {d: {"per_seed": r["per_seed"], "meta": r["meta"]} for d, r in results.items()}
    data["cases"] = cases
    return ExperimentResult(name="entanglement", title=EXPERIMENT.title, claim=EXPERIMENT.claim,
                            columns=columns, rows=rows, verdict=verdict, finding=finding, plots=plots,
                            notes=notes, data=data)


EXPERIMENT = Experiment(
    name="entanglement",
    title="Entanglement: single-task vs shared-bottom, MMoE, PLE, STEM, AME on two tasks",
    claim="STEM/AME at least match single-task models on each task where shared-embedding models show "
          "negative transfer.",
    run=run,
)

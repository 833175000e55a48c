"""Experiment 2, interest entanglement: single-task models against shared-bottom, MMoE, PLE, STEM and AME
on two tasks, on the demo marketplace (click / conversion with conflicting tastes), Taobao (pv / buy) and
MovieLens-100k (rated / rated >= 4).

Every dataset is split three ways by time and encoded once (components/experiments/data.py: train,
a validation period, the newest period as the untouched test); every model of every seed trains on the
same rows with the same optimiser settings (3 epochs, no early stopping, the last epoch is kept) and is
scored on the validation and test periods:

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

The claim is checked per dataset and task. The shared-embedding model (shared-bottom, MMoE or PLE) with
the lowest *validation* AUC (seed mean) is the candidate for negative transfer - chosen on the validation
period, so the test period's noise does not pick the worst of three. The task shows *negative transfer*
when that model's test AUC is below the single-task model's beyond the noise: the paired difference over
seeds, with a bootstrap interval over the test period's users, whose interval or seeds' spread
(whichever is wider) lies below 0. On those tasks STEM and AME *match* the single-task model when their
paired difference to it is not below 0 beyond the same noise.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from components.experiments.base import (Difference, Experiment, ExperimentContext, ExperimentResult, Verdict,
                                         auc_gain, fmt, mean_std)

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


@dataclass(frozen=True)
class Sizes:
    """What a size runs: datasets, epochs, training rows of the real logs (the newest kept)."""

    datasets: tuple[str, ...]
    epochs: int
    sim_days: int
    simulator: dict[str, Any]
    real_train_rows: int


DEFAULT = Sizes(("simulator", "taobao", "movielens"), 3, 7, SIMULATOR, 150_000)  # days 1-5 train, 6 validates, 7 tests
SMALL = Sizes(("simulator",), 1, 4, SIMULATOR_SMALL, 20_000)


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


def _scores(market: "Market", probs: dict[str, np.ndarray], valid_probs: dict[str, np.ndarray]) -> dict[str, float]:
    """Test AUC / GAUC per task and post-click conversion AUC; validation AUC per task (``valid_<task>_auc``)."""
    from components.training.metrics import auc, gauc

    users = market.test_users
    clicked = market.labels["click"] == 1
    out: dict[str, float] = {}
    for t in TASKS:
        out[f"{t}_auc"] = auc(probs[t], market.labels[t])
        out[f"{t}_gauc"] = gauc(probs[t], market.labels[t], users)
        out[f"valid_{t}_auc"] = auc(valid_probs[t], market.valid_labels[t])
    y = market.labels["conversion"][clicked]
    out["post_click_conversion_auc"] = auc(probs["conversion"][clicked], y) if 0 < y.sum() < y.size else math.nan
    return out


def _plot_table(report: Any, prefer: str) -> Any:
    """The table of ``report``'s first pair that a task uses: its own task table, else the first shared."""
    tables = report.pairs[0].tables
    return tables.get(f"task:{prefer}") or next(iter(tables.values()))


def _run_dataset(ctx: ExperimentContext, dataset: str, sizes: Sizes) -> dict[str, Any]:
    """Train every model on every seed: per-seed metrics, test scores per model (one dict of task ->
    scores per seed, for the paired intervals), seed-0 distance tables for the plot; then the verdict's
    cases (:func:`check_claim`)."""
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
    single_valid = {t: enc.encode(market.valid, with_labels=True) for t, enc in single_enc.items()}
    per_seed: dict[str, list[dict[str, float]]] = {m: [] for m in ORDER}
    scores: dict[str, list[dict[str, np.ndarray]]] = {m: [] for m in ORDER}
    hist: dict[str, tuple[Any, Any]] = {}
    meta = {"train_rows": market.train.num_rows, "test_rows": market.test.num_rows,
            "test_positives": {t: int(v.sum()) for t, v in market.labels.items()}}
    report_kw: dict[str, Any] = {"tasks": TASKS, "min_count": 5, "max_pairs": 20_000}
    for seed in ctx.seeds:
        # single-task: one model per task
        probs, valid_probs, reports = {}, {}, {}
        for t in TASKS:
            model = _train(market, {"arch": "shared_bottom"}, seed, sizes.epochs, single_enc[t])
            probs[t] = predict(model, single_batch[t], (t,))[t]
            valid_probs[t] = predict(model, single_valid[t], (t,))[t]
            reports[t] = entanglement_report(model, market.train, single_enc[t], seed=seed, **report_kw)
        metrics = _scores(market, probs, valid_probs)
        scores[SINGLE].append(probs)
        gap_a, gap_b = (reports[t].pairs[0].tables["shared"].gap for t in TASKS)
        metrics["separation"] = float((gap_a - gap_b) / 2)  # (gap under A's table - gap under B's) / 2
        metrics["expert_abs_r"] = math.nan
        per_seed[SINGLE].append(metrics)
        if seed == ctx.seeds[0]:
            hist[SINGLE] = (_plot_table(reports["click"], "click"), _plot_table(reports["conversion"], "conversion"))
        _log(ctx, dataset, SINGLE, seed, metrics, {"arch": "shared_bottom x 2 (one per task)"})
        for name, arch in MODELS.items():
            model = _train(market, arch, seed, sizes.epochs, market.encoders)
            probs = predict(model, market.test_batch, TASKS)
            metrics = _scores(market, probs, predict(model, market.valid_batch, TASKS))
            scores[name].append(probs)
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
    meta["split"] = market.split_text()
    gains = {(m, t): auc_gain(market.labels[t], [s[t] for s in scores[m]], [s[t] for s in scores[SINGLE]],
                              market.test_users) for m in MODELS for t in TASKS}
    return {"per_seed": per_seed, "hist": hist, "meta": meta, "gains": gains}


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
    """Per dataset and task: the single-task test AUC (seed mean), the shared-embedding model with the
    lowest *validation* AUC and its test AUC, STEM and AME; each model's paired test difference to the
    single-task model (``results[d]["gains"][model, task]``, a :class:`Difference`); whether there is
    negative transfer (the chosen shared model below the single-task one beyond the noise) and whether
    STEM / AME match (not below it beyond the noise)."""
    cases = []
    for dataset, res in results.items():
        ps, gains = res["per_seed"], res["gains"]
        for t in TASKS:
            key = f"{t}_auc"
            valid = {m: _ms(ps, m, f"valid_{key}")[0] for m in SHARED_EMBEDDING}
            worst = min(valid, key=lambda m: valid[m] if math.isfinite(valid[m]) else math.inf)  # chosen on validation
            diff: Difference = gains[worst, t]
            case: dict[str, Any] = {
                "dataset": dataset, "task": t, "single": _ms(ps, SINGLE, key)[0], "worst_shared": worst,
                "worst_shared_valid_auc": valid[worst], "worst_shared_auc": _ms(ps, worst, key)[0],
                "worst_shared_gain": diff.to_dict(), "negative_transfer": diff.below()}
            for m in DISENTANGLED:
                case[m] = _ms(ps, m, key)[0]
                case[f"{m}_gain"] = gains[m, t].to_dict()
                case[f"{m}_matches"] = not gains[m, t].below()
            cases.append(case)
    return cases


def _case_text(c: dict[str, Any]) -> str:
    """One case for the finding: the test AUCs and the paired differences to the single-task model."""
    def d(g: dict[str, Any]) -> str:
        iv = g["interval"]
        band = "[undefined]" if iv["low"] is None else f"[{iv['low']:+.4f}, {iv['high']:+.4f}]"
        return f"{g['mean']:+.4f} {band}"

    return (f"{c['dataset']} {c['task']}: single {c['single']:.4f}, {c['worst_shared']} {c['worst_shared_auc']:.4f} "
            f"({d(c['worst_shared_gain'])}), STEM {c['STEM']:.4f} ({d(c['STEM_gain'])}), AME {c['AME']:.4f} "
            f"({d(c['AME_gain'])})")


def _verdict(cases: list[dict[str, Any]]) -> tuple[Verdict, str]:
    nt = [c for c in cases if c["negative_transfer"]]
    if not nt:
        return "not reproduced", ("no dataset/task showed negative transfer of the shared-embedding models beyond "
                                  "the noise, so the claim was not tested")
    ok = {m: [c for c in nt if c[f"{m}_matches"]] for m in DISENTANGLED}
    both = [c for c in nt if all(c[f"{m}_matches"] for m in DISENTANGLED)]
    verdict: Verdict
    if len(both) == len(nt):
        verdict = "reproduced"
    elif any(ok[m] for m in DISENTANGLED):
        verdict = "partly"
    else:
        verdict = "not reproduced"
    parts = [_case_text(c) for c in nt]
    summary = (f"negative transfer beyond the noise on {len(nt)} of {len(cases)} dataset-tasks ({'; '.join(parts)}; "
               f"test AUC, then the paired difference to single-task [95% interval over test users]); STEM matches "
               f"the single-task model on {len(ok['STEM'])} of them, AME on {len(ok['AME'])}")
    return verdict, summary


# ----- run ------------------------------------------------------------------------------------------------
def run(ctx: ExperimentContext, datasets: tuple[str, ...] | None = None) -> ExperimentResult:
    """Train and compare every model on every dataset of the size (or ``datasets``); see the module
    docstring."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from components.experiments.entanglement_plots import plot_auc, plot_pairs

    sizes = SMALL if ctx.small else DEFAULT
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than the maths on 2 shared cores
    try:
        results = {d: _run_dataset(ctx, d, sizes) for d in (datasets or sizes.datasets)}
    finally:
        torch.set_num_threads(threads)
    ctx.plot_dir.mkdir(parents=True, exist_ok=True)
    plots = [plot_auc({d: r["per_seed"] for d, r in results.items()}, ORDER, TASK_NAMES, ctx.plot_dir / "auc.png")]
    plots += [plot_pairs(d, r["hist"], TASK_NAMES.get(d, TASKS), SINGLE, ctx.plot_dir / f"pairs_{d}.png")
              for d, r in results.items()]

    cases = check_claim(results)
    verdict, summary = _verdict(cases)
    post = []
    for dataset, res in results.items():
        vals = {m: _ms(res["per_seed"], m, "post_click_conversion_auc")[0] for m in ORDER}
        post.append(f"{dataset} " + ", ".join(f"{m} {v:.3f}" for m, v in vals.items() if math.isfinite(v)))
    finding = (f"{summary}. Post-click conversion AUC (B among A-positive rows): {'; '.join(post)}.")
    data: dict[str, Any] = {d: {"per_seed": r["per_seed"], "meta": r["meta"],
                                "gains": {f"{m}/{t}": g.to_dict() for (m, t), g in r["gains"].items()}}
                            for d, r in results.items()}
    data["cases"] = cases
    return ExperimentResult(name="entanglement", title=EXPERIMENT.title, claim=EXPERIMENT.claim,
                            columns=list(COLUMNS), rows=_table_rows(results), verdict=verdict, finding=finding,
                            plots=plots, notes=_notes(results, cases, sizes), data=data)


COLUMNS = ("dataset", "model", "task A AUC", "Δ task A AUC vs single-task", "task A GAUC", "task B AUC",
           "Δ task B AUC vs single-task", "task B GAUC", "B AUC on A-positive rows", "separation", "expert mean |r|")


def _table_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """One row per dataset and model: seed mean ± std, and the paired test difference to single-task."""
    rows = []
    for dataset, res in results.items():
        names = TASK_NAMES.get(dataset, TASKS)
        for m in ORDER:
            cell = lambda key, digits=4: fmt(*_ms(res["per_seed"], m, key), digits=digits)  # noqa: E731
            gain = lambda t: "-" if m == SINGLE else str(res["gains"][m, t])  # noqa: E731
            rows.append({"dataset": f"{dataset} (A {names[0]}, B {names[1]})", "model": m,
                         "task A AUC": cell("click_auc"), "Δ task A AUC vs single-task": gain("click"),
                         "task A GAUC": cell("click_gauc"), "task B AUC": cell("conversion_auc"),
                         "Δ task B AUC vs single-task": gain("conversion"), "task B GAUC": cell("conversion_gauc"),
                         "B AUC on A-positive rows": cell("post_click_conversion_auc"),
                         "separation": cell("separation", 3), "expert mean |r|": cell("expert_abs_r", 3)})
    return rows


def _notes(results: dict[str, dict[str, Any]], cases: list[dict[str, Any]], sizes: Sizes) -> list[str]:
    """Models, the rule and its cases, separation, data (which periods train, validate, test), seed noise."""
    notes = [
        "Models: d = 8 per table, MLP experts (64, 32), gates (16,), towers (32,); single-task = one "
        "shared-bottom DNN per task with its own table; MMoE 3 shared experts; PLE 1 level, 1 shared + 1 per "
        "task; STEM 1 shared + 1 per task (3 tables); AME tables of widths 4, 8, 16. Adam lr 3e-3, batch 512, "
        f"{sizes.epochs} epochs, last epoch kept, no IPW.",
        "Negative transfer on a task: the shared-embedding model (shared-bottom, MMoE, PLE) with the lowest "
        "validation AUC (chosen on the validation period, never on the test period) is below the single-task "
        "model on the test period beyond the noise; STEM/AME match when not below it beyond the noise. The "
        "noise: the 95% bootstrap interval over the test period's users of the seed-mean paired difference "
        "(200 resamples; per seed, then averaged over the seeds on the same resamples) or the seeds' spread, "
        "whichever is wider (the Δ columns: seed mean ± std [interval]). Cases: " + "; ".join(
            f"{c['dataset']}/{c['task']}: single {c['single']:.4f}, chosen shared {c['worst_shared']} (validation "
            f"{c['worst_shared_valid_auc']:.4f}) test {c['worst_shared_auc']:.4f} -> "
            f"{'negative transfer' if c['negative_transfer'] else 'none'}, STEM {c['STEM']:.4f}, AME {c['AME']:.4f}"
            for c in cases),
        "Separation (validation/entanglement.py): label-selected conflicting pairs of the training rows "
        "(A-positive and B-negative vs B-positive; users and items with >= 5 impressions), (gap under A's "
        "table - gap under B's) / 2 of normalised user-ad distances; exactly 0 for a model whose tasks read "
        "one table (shared-bottom, MMoE, PLE, AME); the single-task row pairs the two single-task models.",
        "Data: " + "; ".join(f"{d} {r['meta']['split']}" for d, r in results.items()) + ". Simulator = the "
        "conflicting-taste marketplace of tests/model/test_model_behaviour.py (preference_correlation -0.5); "
        "Taobao = the last UTC day tests, the day before validates, the newest "
        f"{sizes.real_train_rows} earlier rows train; MovieLens = the last 10% of impressions in time test, the "
        f"10% before validate, the newest {sizes.real_train_rows} earlier rows train; both with the adapters' 4 "
        "popularity-sampled negatives per positive. Taobao's test day has only "
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
    return notes


EXPERIMENT = Experiment(
    name="entanglement",
    title="Entanglement: single-task vs shared-bottom, MMoE, PLE, STEM, AME on two tasks",
    claim="STEM/AME at least match single-task models on each task where shared-embedding models show "
          "negative transfer.",
    run=run,
)

"""Experiment 4, ranking loss: does the combined-pair loss gain more over BCE as positives get sparser?

The claim (METHODS.md "Combined-pair ranking loss"): ``L = α·BCE + (1 − α)·L_pair`` beats plain BCE
(α = 1) by more the sparser the positives, because with rare positives the BCE gradient on a negative is
its tiny predicted rate while the pairwise term gives negatives a margin-dependent gradient (paper: best
α ≈ 0.7 at about 3% positives).

Design, on the demo marketplace and on the Taobao slice (one task, click):

- **a dense marketplace to thin from**: the marketplace of tests/model/test_model_behaviour.py with
  ``click_base_logit`` raised so about a third of the impressions are clicked; days 1-5 train, day 6
  validates, day 7 tests (the clean protocol: components/experiments/data.py).
  The conversion column is dropped (a conversion implies a click: it would leak the label), so the model
  is single-task click.
- **thinning**: for a target training positive rate r in 25%, 10%, 3%, 1%, every training positive is
  kept with probability ``k = r(1 − q) / (q(1 − r))`` (q: the full training rate) and the other positive
  rows are *dropped*; every negative is kept. Why drop and not relabel: dropping positives is the mirror
  image of negative down-sampling - it leaves the feature distribution of the negatives and the target's
  ordering intact (the training odds are the true odds times k, a monotone map, so the best achievable
  test AUC is unchanged) and only makes positives rarer, which is what the claim is about. Relabelling
  positives as negatives would instead inject label noise (a relabelled positive looks exactly like a
  positive) and change what is learnable. The thinned set is drawn once per rate (fixed seed) and shared by
  every α and every model seed, so gains are paired.
- **the validation and test days are untouched** (their real click rate). AUC is comparable across rates.
  Logloss is reported
  twice: raw (the model trained at rate r predicts rates near r, so raw test logloss mostly measures the
  rate shift), and prior-corrected - the logit shifted by ``−log k``, the exact inverse of the thinning's
  odds scaling, which is how a down-sampled model is deployed.
- **Taobao** (when ``../shared/data`` has it): click = a pv against 2 popularity-sampled negatives per
  positive (a 33% rate to thin from), the newest 100,000 training rows, the day before the last validates,
  the last day tests; thinned the same way. A dataset where BCE's *validation* AUC at the densest rate is
  below ``MIN_INFORMATIVE_AUC`` has no ranking signal for the pairwise term to improve: it is tabulated and
  plotted but does not count for the verdict.
- **models**: the same small DNN (``arch="shared_bottom"``) for every α in 1.0 (BCE), 0.9, 0.7, 0.5, seeds
  0-2, the last epoch kept; the output bias starts at the (thinned) training rate (``prior_bias``).
- **choices on the validation day, numbers on the test day**: per rate, the α with the largest validation
  AUC gain over BCE (seed mean) is chosen; its test-day gain is reported with a paired bootstrap interval
  over the test day's users, and is "positive" only when that interval or the seeds' spread, whichever is
  wider, excludes 0.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from components.experiments.base import (Difference, Experiment, ExperimentContext, ExperimentResult, auc_gain,
                                         fmt, mean_std)

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings
    from components.experiments.data import Market

TITLE = "Ranking loss: BCE against the combined-pair loss as positives get sparser"
CLAIM = ("The combined-pair loss α·BCE + (1 − α)·pairwise beats BCE (α = 1), and its AUC gain grows as the "
         "training positives get sparser (25% → 10% → 3% → 1%).")

TASK = "click"
# The behaviour-test marketplace with clicks made common (click_base_logit −1.4 instead of −3.7: about a
# third of the training impressions are clicked) so every target rate down to 25% is reached by thinning.
SIMULATOR: dict[str, Any] = {
    "seed": 7, "n_users": 1200, "new_users_per_day": 12, "n_initial_ads": 500, "new_ads_per_day": 20,
    "sessions_per_user_day": 4.0, "preference_correlation": -0.5, "content_weight": 0.0,
    "preference_scale": 1.5, "click_base_logit": -1.4,
}
SMALL_SIMULATOR: dict[str, Any] = {**SIMULATOR, "n_users": 200, "new_users_per_day": 2, "n_initial_ads": 120,
                                   "new_ads_per_day": 5, "sessions_per_user_day": 3.0}
DAYS, SMALL_DAYS = 7, 4  # the last day tests, the one before validates, the rest train
RATES = (0.25, 0.10, 0.03, 0.01)  # target positive rates of the training set
ALPHAS = (1.0, 0.9, 0.7, 0.5)  # α = 1 is plain BCE, the baseline
THIN_SEED = 12345
TAOBAO_NEGATIVES = 2  # popularity-sampled negatives per pv: a 33% rate to thin from
TAOBAO_ROWS, TAOBAO_SMALL_ROWS = 100_000, 8_000
MIN_INFORMATIVE_AUC = 0.52  # BCE's validation AUC at the densest rate below this: the dataset does not count
MODEL: dict[str, Any] = {"arch": "shared_bottom", "embedding_dim": 8, "expert_hidden": (64, 32),
                         "tower_hidden": (32,), "mnse_combine": "sum", "sequence_encoder": None}
TRAIN: dict[str, Any] = {"epochs": 3, "batch_size": 512, "lr": 3e-3, "patience": 0, "log_every": 0}
SMALL_TRAIN: dict[str, Any] = {**TRAIN, "epochs": 1}


def click_market(settings: "Settings", simulator: dict[str, Any], days: int) -> "Market":
    """The simulated marketplace as a single-task click problem: the conversion label is dropped (it
    implies a click) and the encoders are fitted for the one task."""
    from components.training.encoders import FeatureEncoders
    from components.experiments.data import encoded_market, simulated_market

    full = simulated_market(settings, simulator, days=days)
    others = [t for t in full.tasks if t != TASK]
    train, valid, test = (t.drop_columns(others) for t in (full.train, full.valid, full.test))
    return encoded_market("simulator-click", train, valid, test, FeatureEncoders.fit(train, [TASK]), (TASK,),
                          truth={TASK: full.truth[TASK]} if full.truth else None, extra=full.extra)


def thin_positives(train: "pa.Table", rate: float, seed: int = THIN_SEED) -> tuple["pa.Table", float]:
    """``train`` with each positive kept with probability ``k`` so the expected positive rate is ``rate``
    (the other positive rows dropped, negatives all kept); returns the table and ``k`` (1 when the table's
    rate is already at or below ``rate``)."""
    y = train[TASK].to_numpy().astype(np.float64)
    q = float(y.mean())
    k = min(1.0, rate * (1.0 - q) / (q * (1.0 - rate))) if q > 0 else 1.0
    keep = (y == 0) | (np.random.default_rng(seed).random(len(y)) < k)
    return train.filter(keep), k


def _prior_corrected(p: np.ndarray, k: float) -> np.ndarray:
    """Undo the thinning's odds scaling (odds_train = k · odds): logit − log k."""
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    logit = np.log(p) - np.log1p(-p) - math.log(k)
    return 1.0 / (1.0 + np.exp(-logit))


def _plot(panels: list[tuple[str, dict[float, dict[float, Difference]], dict[float, dict[float, tuple[float, float]]]]],
          rates: list[float], path: Any) -> Any:
    """Per dataset: test AUC gain over BCE against the training positive rate (one line per α, error bars
    the 95% interval over test users), and prior-corrected logloss (mean ± std over seeds). ``panels``:
    (dataset, gains[α][rate], loglosses[α][rate])."""
    from validation.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 4 * len(panels)), squeeze=False)
    x = [100 * r for r in rates]
    for (name, gains, loglosses), (ax1, ax2) in zip(panels, axes):
        for alpha, by_rate in gains.items():
            mean = np.array([by_rate[r].mean for r in rates])
            low = np.nan_to_num(mean - [by_rate[r].interval.low for r in rates])
            high = np.nan_to_num([by_rate[r].interval.high for r in rates] - mean)
            ax1.errorbar(x, mean, yerr=[low, high], marker="o", capsize=3, label=f"α = {alpha}")
        ax1.axhline(0.0, color="grey", linewidth=1)
        for alpha, by_rate in loglosses.items():
            ax2.errorbar(x, [by_rate[r][0] for r in rates], yerr=[by_rate[r][1] for r in rates], marker="o",
                         capsize=3, label="BCE (α = 1)" if alpha == 1.0 else f"α = {alpha}")
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.invert_xaxis()  # sparser to the right
            ax.set_xticks(x, [f"{v:g}%" for v in x])
            ax.set_xlabel("training positive rate (thinned; sparser →)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        ax1.set_title(f"{name}: test AUC gain over BCE (seed mean, 95% interval over users)", fontsize=10)
        ax2.set_title(f"{name}: test logloss, prior-corrected (mean ± std over seeds)", fontsize=10)
    fig.suptitle("combined-pair loss vs BCE (click)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _verdict(best: dict[float, tuple[float, Difference]], rates: list[float]) -> tuple[str, str]:
    """``best[rate] = (α, its test AUC gain over BCE)`` of the α chosen on the validation day per rate;
    rates from dense to sparse.

    Reproduced: the gain at the sparsest rate is positive beyond the noise (its interval or the seeds'
    spread, whichever is wider, excludes 0), its mean is larger than at the densest rate, and it grows in
    at least 2 of the 3 steps to a sparser rate. Partly: one of "positive at the sparse end" and "grows
    with sparsity" holds. Not reproduced: neither.
    """
    g = [best[r][1].mean for r in rates]
    sparse, dense = best[rates[-1]][1], best[rates[0]][1]
    positive = sparse.above()
    steps_up = sum(b > a for a, b in zip(g, g[1:]))
    grows = sparse.mean > dense.mean and steps_up >= 2
    verdict = "reproduced" if positive and grows else ("partly" if positive or grows else "not reproduced")
    parts = ", ".join(f"{100 * r:g}%: {best[r][1]} (α {best[r][0]})" for r in rates)
    finding = (f"Test AUC gain over BCE of the α chosen on the validation day, by training positive rate (seed "
               f"mean ± std [95% interval over test users]): {parts}; the gain "
               f"{'grows' if grows else 'does not grow'} with sparsity ({steps_up}/{len(rates) - 1} steps up) and is "
               f"{'positive beyond the noise' if positive else 'not positive beyond the noise'} at "
               f"{100 * rates[-1]:g}%.")
    return verdict, finding


def _datasets(ctx: ExperimentContext) -> list[tuple[str, "Market", dict[str, Any]]]:
    """(name, market, description) of every dataset the experiment runs on at ``ctx.size``: the simulator,
    and the Taobao slice (click = pv against the adapter's popularity-sampled negatives) when
    ``../shared/data`` holds it."""
    sim, days = (SMALL_SIMULATOR, SMALL_DAYS) if ctx.small else (SIMULATOR, DAYS)
    out = [("simulator", click_market(ctx.settings, sim, days), {"simulator": sim, "days": days})]
    try:
        from components.experiments.data import taobao_market

        rows = TAOBAO_SMALL_ROWS if ctx.small else TAOBAO_ROWS
        market = taobao_market(ctx.settings, tasks=(TASK,), negatives_per_positive=TAOBAO_NEGATIVES,
                               max_train_rows=rows)
        out.append(("taobao", market, {"negatives_per_positive": TAOBAO_NEGATIVES, "max_train_rows": rows}))
    except (FileNotFoundError, OSError) as exc:  # the real slice is optional: say so and go on
        ctx.progress(f"[{ctx.name}] taobao skipped: {exc}")
    return out


def _train_grid(ctx: ExperimentContext, name: str, market: "Market", about: dict[str, Any],
                train_cfg: dict[str, Any]) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[np.ndarray]],
                                                    dict[float, dict[str, float]]]:
    """Every rate x α x seed on one dataset: per-seed metrics (validation and test AUC, test loglosses) and
    test scores under ``"<rate>/<α>"`` (seeds in ``ctx.seeds`` order), and the thinned sets' sizes."""
    from components.training.device import predict
    from components.training.loop import train_ranker
    from components.training.metrics import auc, logloss
    from components.training.train_config import TrainConfig
    from models.config import RankerConfig

    y_test, y_valid = market.labels[TASK], market.valid_labels[TASK]
    runs: dict[str, list[dict[str, float]]] = {}
    scores: dict[str, list[np.ndarray]] = {}
    thinned: dict[float, dict[str, float]] = {}
    for rate in RATES:
        train, k = thin_positives(market.train, rate)
        positives = int(train[TASK].to_numpy().sum())
        thinned[rate] = {"keep_prob": k, "rows": train.num_rows, "positives": positives,
                         "actual_rate": positives / train.num_rows}
        for alpha in ALPHAS:
            for seed in ctx.seeds:
                result = train_ranker(None, train, None, RankerConfig(**MODEL),
                                      TrainConfig(**train_cfg, seed=seed, default_alpha=alpha),
                                      encoders=market.encoders)
                p = predict(result.model, market.test_batch, (TASK,))[TASK]
                p_valid = predict(result.model, market.valid_batch, (TASK,))[TASK]
                corrected = _prior_corrected(p, k)
                m = {"auc": auc(p, y_test), "valid_auc": auc(p_valid, y_valid),
                     "logloss_corrected": logloss(corrected, y_test),
                     "logloss_raw": logloss(p, y_test), "mean_pred_corrected": float(corrected.mean()),
                     "train_rate": positives / train.num_rows, "train_positives": float(positives)}
                runs.setdefault(f"{rate}/{alpha}", []).append({"seed": seed, **m})
                scores.setdefault(f"{rate}/{alpha}", []).append(p)
                ctx.log_run(f"{name}/rate{100 * rate:g}%/alpha{alpha}/seed{seed}",
                            {"data": name, "target_rate": rate, "alpha": alpha, "keep_prob": k, "seed": seed,
                             **MODEL, **train_cfg, **about}, m)
    return runs, scores, thinned


def _run_dataset(ctx: ExperimentContext, name: str, market: "Market", about: dict[str, Any],
                 train_cfg: dict[str, Any]) -> dict[str, Any]:
    """Every rate x α x seed on one dataset: per-seed runs, table rows, test gains with intervals,
    loglosses, and per rate the α chosen on the validation day."""
    from components.training.metrics import auc

    y_test, users = market.labels[TASK], market.test_users
    rates = list(RATES)
    runs, scores, thinned = _train_grid(ctx, name, market, about, train_cfg)

    def seeds_of(rate: float, alpha: float, key: str) -> list[float]:
        return [r[key] for r in runs[f"{rate}/{alpha}"]]

    gains: dict[float, dict[float, Difference]] = {}
    loglosses: dict[float, dict[float, tuple[float, float]]] = {}
    valid_gain: dict[float, dict[float, tuple[float, float]]] = {}
    rows, best = [], {}
    for rate in rates:
        for alpha in ALPHAS[1:]:  # paired by seed: same thinned set, same init seed
            valid_gain.setdefault(rate, {})[alpha] = mean_std(list(
                np.array(seeds_of(rate, alpha, "valid_auc")) - np.array(seeds_of(rate, 1.0, "valid_auc"))))
            gains.setdefault(alpha, {})[rate] = auc_gain(y_test, scores[f"{rate}/{alpha}"], scores[f"{rate}/1.0"],
                                                         users)
        chosen = max(ALPHAS[1:], key=lambda a: valid_gain[rate][a][0])  # chosen on the validation day
        best[rate] = (chosen, gains[chosen][rate])
        info = thinned[rate]
        for alpha in ALPHAS:
            loglosses.setdefault(alpha, {})[rate] = mean_std(seeds_of(rate, alpha, "logloss_corrected"))
            rows.append({
                "data": name,
                "train positive rate": f"{100 * info['actual_rate']:.2f}% ({info['positives']:,} of {info['rows']:,})",
                "α": "1.0 (BCE)" if alpha == 1.0 else f"{alpha}" + (" (chosen)" if alpha == chosen else ""),
                "validation AUC gain": "-" if alpha == 1.0 else fmt(*valid_gain[rate][alpha]),
                "AUC": fmt(*mean_std(seeds_of(rate, alpha, "auc"))),
                "AUC gain over BCE [95% interval]": "-" if alpha == 1.0 else str(gains[alpha][rate]),
                "logloss (prior-corrected)": fmt(*loglosses[alpha][rate]),
                "logloss (raw)": fmt(*mean_std(seeds_of(rate, alpha, "logloss_raw"))),
            })
    full_rate = float(market.train[TASK].to_numpy().mean())
    oracle = auc(market.truth[TASK], y_test) if market.truth else float("nan")
    return {"runs": runs, "thinned": {str(r): v for r, v in thinned.items()}, "rows": rows, "gains": gains,
            "loglosses": loglosses, "best": best, "full_train_rate": full_rate, "oracle_auc": oracle,
            "test_unseen_items": float(1.0 - np.isin(market.test["ad_id"].to_numpy(),
                                                     market.train["ad_id"].to_numpy()).mean()),
            "train_rows": market.train.num_rows, "test_rows": market.test.num_rows,
            "test_rate": float(y_test.mean()), "about": about, "split": market.split_text()}


def _run_all(ctx: ExperimentContext) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """:func:`_run_dataset` on every dataset of the size (torch on one thread); and the training config."""
    import torch

    train_cfg = SMALL_TRAIN if ctx.small else TRAIN
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on 2 shared cores: thread hand-offs cost more than the maths
    per_data: dict[str, dict[str, Any]] = {}
    try:
        for name, market, about in _datasets(ctx):
            per_data[name] = _run_dataset(ctx, name, market, about, train_cfg)
    finally:
        torch.set_num_threads(threads)
    return per_data, train_cfg


def _judge(per_data: dict[str, dict[str, Any]], train_cfg: dict[str, Any]) -> tuple[str, str, list[str]]:
    """The verdict over the informative datasets, the finding and the notes."""
    rates = list(RATES)
    verdicts = {n: _verdict(d["best"], rates) for n, d in per_data.items()}
    # A dataset on which even BCE at the densest rate barely ranks (on the validation day) has no signal for
    # the pairwise term to improve: it is shown, but it does not count for the verdict.
    dense_auc = {n: mean_std([r["valid_auc"] for r in d["runs"][f"{rates[0]}/1.0"]])[0] for n, d in per_data.items()}
    informative = [n for n in per_data if dense_auc[n] >= MIN_INFORMATIVE_AUC]
    kinds = {verdicts[n][0] for n in informative}
    verdict = kinds.pop() if len(kinds) == 1 else ("partly" if kinds else "not reproduced")
    finding = " ".join(
        f"{n.capitalize()}: {verdicts[n][0]}. {verdicts[n][1]}" if n in informative else
        f"{n.capitalize()}: uninformative (BCE validation AUC {dense_auc[n]:.4f} at {100 * rates[0]:g}% positives, "
        f"below {MIN_INFORMATIVE_AUC}: nothing for the pairwise term to improve; not counted)."
        for n in per_data)
    return verdict, finding, _data_notes(per_data, informative, dense_auc) + [
        "Thinning: each training positive kept with probability k = r(1 − q)/(q(1 − r)), the other positive rows "
        "dropped, negatives all kept (the mirror of negative down-sampling: the true odds times k, so the "
        "ranking target is unchanged and positives only get rarer; relabelling them as negatives would add "
        f"label noise instead). One thinned set per rate (seed {THIN_SEED}), shared by every α and seed; gains "
        "are paired by seed. Keep probabilities: " + "; ".join(
            f"{n}: " + ", ".join(f"{100 * r:g}% k = {d['thinned'][str(r)]['keep_prob']:.4f}" for r in RATES)
            for n, d in per_data.items()) + ". Fewer positives also means less signal: the sparse rates have "
        "both a lower rate and fewer positive rows, as sparse positives do in production.",
        "Logloss on the untouched test set: raw, and prior-corrected (logit − log k, the exact inverse of the "
        "thinning's odds scaling); the raw number is dominated by the rate shift the thinning causes.",
        f"Model: {MODEL}; training {train_cfg}, the pairwise term over the in-batch positive x negative "
        "pairs; the output bias starts at the thinned training rate (prior_bias); the last epoch is kept.",
    ]


def _data_notes(per_data: dict[str, dict[str, Any]], informative: list[str], dense_auc: dict[str, float]) -> list[str]:
    """The "Simulator:" and "Taobao:" notes: which days train, validate and test, rates, rows."""
    sim = per_data["simulator"]
    notes = [
        f"Simulator: the demo marketplace ({sim['about']['simulator']}), {sim['about']['days']} days, single task "
        f"click (conversion dropped: it implies a click): {sim['split']}; click rate "
        f"{100 * sim['full_train_rate']:.1f}% in training before thinning, {100 * sim['test_rate']:.1f}% on the test "
        f"day (oracle AUC of the true probabilities {sim['oracle_auc']:.4f}).",
        "Choices on the validation day, numbers on the test day: per rate the α with the largest validation AUC "
        "gain over BCE (seed mean; marked chosen) is the one whose test gain the verdict reads; a test gain "
        "counts as positive only when its 95% bootstrap interval over the test day's users (200 resamples; per "
        "seed, then averaged over the seeds on the same resamples) or the seeds' spread, whichever is wider, "
        "excludes 0. The informative-dataset check (BCE at the densest rate) also reads the validation day.",
    ]
    if "taobao" in per_data:
        tb = per_data["taobao"]
        notes.append(
            f"Taobao: the UserBehavior slice from ../shared/data (components/experiments/data.py taobao_market), "
            f"click = a pv against {TAOBAO_NEGATIVES} popularity-sampled negatives per positive: {tb['split']} "
            f"(the newest training rows kept; rate {100 * tb['full_train_rate']:.1f}% before thinning, "
            f"{100 * tb['test_rate']:.1f}% on the test day). Its negatives "
            "are sampled, so its rates are a construction of the adapter, not an observed click rate; "
            f"{100 * tb['test_unseen_items']:.0f}% of the test day's impressions are of items never seen in "
            "training, and the negatives are popularity-matched, so item popularity carries no signal."
            + ("" if "taobao" in informative else
               f" BCE reaches validation AUC {dense_auc['taobao']:.4f} even at {100 * RATES[0]:g}% positives, so "
               "the slice is shown for completeness and does not count for the verdict."))
    return notes


def _record(per_data: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``per_data`` as JSON-able data (the chosen α and its test gain per rate)."""
    data = {n: {k: v for k, v in d.items() if k not in ("rows", "gains", "loglosses")} for n, d in per_data.items()}
    for d in data.values():
        d["best"] = {str(r): {"alpha": a, "test_gain": g.to_dict()} for r, (a, g) in d["best"].items()}
    return data


def run(ctx: ExperimentContext) -> ExperimentResult:
    """Thin, train every α with every seed at every rate on every dataset, tabulate, plot, judge the claim."""
    per_data, train_cfg = _run_all(ctx)
    rates = list(RATES)
    ctx.plot_dir.mkdir(parents=True, exist_ok=True)
    plot = _plot([(n, d["gains"], d["loglosses"]) for n, d in per_data.items()], rates,
                 ctx.plot_dir / "ranking_loss_gain.png")
    verdict, finding, notes = _judge(per_data, train_cfg)
    columns = ["data", "train positive rate", "α", "validation AUC gain", "AUC", "AUC gain over BCE [95% interval]",
               "logloss (prior-corrected)", "logloss (raw)"]
    rows = [row for d in per_data.values() for row in d["rows"]]
    return ExperimentResult(
        name=ctx.name, title=TITLE, claim=CLAIM, columns=columns, rows=rows, verdict=verdict, finding=finding,
        plots=[plot], notes=notes, data={**_record(per_data), "model": MODEL, "train": train_cfg},
    )


EXPERIMENT = Experiment(name="ranking_loss", title=TITLE, claim=CLAIM, run=run)

"""Experiment 5, representations: ad id only, + visual semantic IDs, + SEE similarities, MNSE against
plain bucketing; AUC overall and on new ads (cold start).

Data: the simulator through the full daily pipeline (``data.pipeline_market``, the same marketplace as
the temporal experiment): the training set carries the representations step's columns, the visual
semantic-ID codes ``ad_semantic_id__sid_1..3`` (residual k-means of the ad image's vector) and the SEE
similarities ``see_text`` / ``see_graph`` / ``see_visual`` (cosine of the user's interest vector and the
ad's pre-trained text / LightGCN / image vector, a numeric feature). Days 1-5 train, day 6 validates, day
7 tests untouched (the clean protocol; a fixed number of epochs, the last kept, so nothing is chosen and
the validation day is only held out); the cold-start slice is the test impressions of ads created less
than 1 day before (``components.training.evaluation``'s ``ads=new`` slice): their ad ids are unseen in
training, so the ad-id row is the shared unknown one.

Variants select the training set's columns before the encoders are fitted, so a dropped column is no
feature at all (``FeatureEncoders.fit`` gives roles by column name). Every variant keeps the user side
(id, profile, rolling stats) and the context (slot, position); the behaviour sequence is left out
(experiment ``temporal`` measures it). The ad side grows: id only; + semantic IDs; + SEE; and, as a
reference, + the ad's taxonomy profile and rolling stats. Numeric fields (user stats, SEE, ...) are
encoded with plain bucketing (one embedding row per equal-frequency bucket: MNSE with a single base
larger than every bucket count, i.e. one digit) or with MNSE (bases 2, 3, 10, concatenated).

Every check of the claim is a paired test-day click AUC difference between a variant and its reference
(:data:`REFERENCE`), with a bootstrap interval over the test day's users; it holds when the interval or the
seeds' spread, whichever is wider, lies above 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from components.experiments.base import (Difference, Experiment, ExperimentContext, ExperimentResult, Verdict,
                                         auc_gain, fmt, mean_std)

TASKS = ("click", "conversion")
MODEL: dict[str, Any] = {"arch": "stem", "num_shared_experts": 1, "experts_per_task": 1, "embedding_dim": 16,
                         "expert_hidden": (64, 32), "gate_hidden": (16,), "tower_hidden": (32,),
                         "mnse_combine": "concat", "sequence_encoder": None}
MNSE_BASES = (2, 3, 10)
TRAIN: dict[str, Any] = {"epochs": 2, "batch_size": 512, "lr": 3e-3, "patience": 0, "log_every": 0}
# two days of small-size training rows: one epoch leaves some variants at chance on the test day
TRAIN_SMALL: dict[str, Any] = {**TRAIN, "epochs": 2}

_AD_SIDE = ("ad_profile__", "ad_stats__", "see_", "ad_semantic_id__")


def _ad_side(name: str) -> bool:
    return name.startswith(_AD_SIDE)


def _keep(prefixes: tuple[str, ...]) -> Callable[[str], bool]:
    """Columns to keep: everything but the behaviour sequence and the ad side, plus the ad-side columns
    starting with one of ``prefixes``."""
    def keep(name: str) -> bool:
        if name.startswith("user_sequence__"):
            return False
        return not _ad_side(name) or name.startswith(prefixes)
    return keep


# (name, ad-side prefixes kept, numeric encoding)
VARIANTS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("ad id only", (), "plain"),
    ("+ semantic IDs", ("ad_semantic_id__",), "plain"),
    ("+ semantic IDs + SEE", ("ad_semantic_id__", "see_"), "plain"),
    ("+ semantic IDs + SEE", ("ad_semantic_id__", "see_"), "mnse"),
    ("+ profile + stats (all)", _AD_SIDE, "plain"),
    ("+ profile + stats (all)", _AD_SIDE, "mnse"),
)


def _key(name: str, numeric: str) -> str:
    return f"{name} [{numeric}]"


# variant key -> the variant it is compared with (the step before it, or the same ads with plain buckets)
REFERENCE: dict[str, str] = {
    _key("+ semantic IDs", "plain"): _key("ad id only", "plain"),
    _key("+ semantic IDs + SEE", "plain"): _key("+ semantic IDs", "plain"),
    _key("+ semantic IDs + SEE", "mnse"): _key("+ semantic IDs + SEE", "plain"),
    _key("+ profile + stats (all)", "plain"): _key("+ semantic IDs + SEE", "plain"),
    _key("+ profile + stats (all)", "mnse"): _key("+ profile + stats (all)", "plain"),
}


Results = dict[str, dict[str, list[float]]]  # variant key -> metric -> one value per seed


def _train_variants(ctx: ExperimentContext, full: Any, train_cfg: dict[str, Any], new_ad: np.ndarray
                    ) -> tuple[Results, dict[str, dict[str, Any]], dict[str, list[np.ndarray]]]:
    """Train every variant of :data:`VARIANTS` once per seed and score the test day: the metrics per
    variant key, each variant's fields, and its test click scores per seed."""
    from components.experiments import data as D
    from components.training.metrics import auc
    from components.training.device import predict
    from components.training.loop import train_ranker
    from components.training.train_config import TrainConfig
    from models.config import RankerConfig

    per: Results = {}
    click_scores: dict[str, list[np.ndarray]] = {}
    fields: dict[str, dict[str, Any]] = {}
    markets: dict[tuple[str, ...], Any] = {}
    for name, prefixes, numeric in VARIANTS:
        if prefixes not in markets:
            markets[prefixes] = D.refit_market(full, keep=_keep(prefixes))
        market = markets[prefixes]
        enc = market.encoders
        max_buckets = max((n.n_buckets for n in enc.spec().numeric), default=2)
        bases = MNSE_BASES if numeric == "mnse" else (max(2, max_buckets),)
        key = _key(name, numeric)
        fields[key] = {"categorical": [c.name for c in enc.categorical], "numeric": [n.name for n in enc.numeric],
                       "mnse_bases": list(bases)}
        train_batch = enc.encode(market.train, with_labels=True)
        for seed in ctx.seeds:
            model_cfg = RankerConfig(**MODEL, mnse_bases=bases)
            result = train_ranker(None, train_batch, None, model_cfg, TrainConfig(**train_cfg, seed=seed),
                                  encoders=enc)
            scores = predict(result.model, market.test_batch, TASKS)
            click_scores.setdefault(key, []).append(scores["click"])
            click, conv = market.labels["click"], market.labels["conversion"]
            metrics = {"click_auc": auc(scores["click"], click),
                       "click_auc_new_ads": auc(scores["click"][new_ad], click[new_ad]),
                       "click_auc_established": auc(scores["click"][~new_ad], click[~new_ad]),
                       "conversion_auc": auc(scores["conversion"], conv),
                       "conversion_auc_new_ads": auc(scores["conversion"][new_ad], conv[new_ad]),
                       "parameters": float(sum(p.numel() for p in result.model.parameters()))}
            for k, v in metrics.items():
                per.setdefault(key, {}).setdefault(k, []).append(float(v))
            ctx.log_run(f"{key}-seed{seed}", {"variant": name, "numeric_encoding": numeric, "seed": seed,
                                               "ad_columns": ",".join(c for c in market.train.column_names
                                                                      if _ad_side(c)) or "ad_id",
                                               **MODEL, "mnse_bases": bases, **train_cfg}, metrics)
    return per, fields, click_scores


def _gains(full: Any, click_scores: dict[str, list[np.ndarray]], new_ad: np.ndarray
           ) -> dict[str, dict[str, Difference]]:
    """Per variant with a reference: the paired test click AUC gain over it, ``"all"`` rows and ``"new"`` ads."""
    y, users = full.labels["click"], full.test_users
    return {key: {"all": auc_gain(y, click_scores[key], click_scores[ref], users),
                  "new": auc_gain(y, click_scores[key], click_scores[ref], users, rows=new_ad)}
            for key, ref in REFERENCE.items()}


def _table_rows(per: Results, gains: dict[str, dict[str, Difference]]) -> list[dict[str, str]]:
    """One row per variant: seed mean and spread of the AUCs, the paired gains over its reference, and
    the parameter count."""
    rows = []
    for name, _p, numeric in VARIANTS:
        key = _key(name, numeric)
        m, g = per[key], gains.get(key)
        rows.append({"ad representation": name, "numeric encoding": "MNSE (2, 3, 10)" if numeric == "mnse" else "plain buckets",
                     "click AUC": fmt(*mean_std(m["click_auc"])),
                     "click AUC, new ads": fmt(*mean_std(m["click_auc_new_ads"])),
                     "compared with": REFERENCE[key] if key in REFERENCE else "-",
                     "Δ click AUC": str(g["all"]) if g else "-", "Δ click AUC, new ads": str(g["new"]) if g else "-",
                     "conversion AUC": fmt(*mean_std(m["conversion_auc"])),
                     "parameters": f"{int(m['parameters'][0]):,}"})
    return rows


def _verdict(per: Results, gains: dict[str, dict[str, Difference]]) -> tuple[dict[str, bool], Verdict, str]:
    """The three checks of the claim (paired test gains above 0 beyond the noise: the interval over
    users or the seeds' spread, whichever is wider), the verdict and the finding."""
    def mean(key: str, metric: str) -> float:
        return mean_std(per[key][metric])[0]

    k_id, k_sid = _key("ad id only", "plain"), _key("+ semantic IDs", "plain")
    k_see, k_see_m = _key("+ semantic IDs + SEE", "plain"), _key("+ semantic IDs + SEE", "mnse")
    k_all_m = _key("+ profile + stats (all)", "mnse")
    sid, see, mnse, mnse_all = gains[k_sid], gains[k_see], gains[k_see_m], gains[k_all_m]
    parts = {"semantic IDs help new ads": sid["new"].above(),
             "SEE helps (overall or on new ads)": see["all"].above() or see["new"].above(),
             "MNSE beats plain buckets (and is not worse with all ad features)":
                 mnse["all"].above() and not mnse_all["all"].below()}
    held = sum(parts.values())
    verdict: Verdict = "reproduced" if held == len(parts) else ("partly" if held else "not reproduced")
    finding = (f"click AUC on new ads: id only {mean(k_id, 'click_auc_new_ads'):.4f}, + semantic IDs "
               f"{mean(k_sid, 'click_auc_new_ads'):.4f} ({sid['new']}), + SEE "
               f"{mean(k_see, 'click_auc_new_ads'):.4f} ({see['new']}); overall + semantic IDs {sid['all']}, "
               f"+ SEE {see['all']}; MNSE vs plain buckets {mnse['all']} overall ({mnse['new']} on new ads), "
               f"{mnse_all['all']} with all ad features (paired test differences, seed mean ± std [95% interval "
               "over test users])")
    return parts, verdict, finding


def run(ctx: ExperimentContext) -> ExperimentResult:
    from components.experiments import data as D

    full = D.pipeline_market(
        ctx.settings, days=D.PIPELINE_DAYS_SMALL if ctx.small else D.PIPELINE_DAYS,
        simulator=D.PIPELINE_SIMULATOR_SMALL if ctx.small else D.PIPELINE_SIMULATOR,
        features=D.PIPELINE_FEATURES, progress=ctx.progress)
    train_cfg = TRAIN_SMALL if ctx.small else TRAIN
    new_ad = full.extra["new_ad"]
    if new_ad is None or not new_ad.any():
        raise RuntimeError("the test day has no impressions of new ads: no cold-start slice")
    per, fields, click_scores = _train_variants(ctx, full, train_cfg, new_ad)
    gains = _gains(full, click_scores, new_ad)

    # ----- table, verdict, plots
    test_rows, n_new = full.test.num_rows, int(new_ad.sum())
    new_clicks = int(full.labels["click"][new_ad].sum())
    columns = ["ad representation", "numeric encoding", "click AUC", "click AUC, new ads", "compared with",
               "Δ click AUC", "Δ click AUC, new ads", "conversion AUC", "parameters"]
    parts, verdict, finding = _verdict(per, gains)
    notes = [
        f"Data: the simulator through the full pipeline: {full.split_text()}; of the test rows {n_new:,} are on new "
        f"ads with {new_clicks} clicks (of {test_rows:,}); simulator "
        f"{D.PIPELINE_SIMULATOR_SMALL if ctx.small else D.PIPELINE_SIMULATOR}.",
        f"Model: {MODEL}, numeric fields with plain buckets (mnse_bases = one base above the largest bucket count) "
        f"or MNSE {MNSE_BASES}; training {train_cfg}, last epoch kept (nothing is chosen, so the validation day "
        "is only held out).",
        "Δ columns: the paired (same seed) test click AUC difference to the variant named in 'compared with', "
        "seed mean ± std and the 95% bootstrap interval over the test day's users (200 resamples; per seed, "
        "then averaged over the seeds on the same resamples); a check holds when the interval or the seeds' "
        "spread, whichever is wider, lies above 0.",
        "Checks: " + "; ".join(f"{k}: {'yes' if v else 'no'}" for k, v in parts.items()) + ".",
        "Fields per variant: " + "; ".join(
            f"{k}: {len(v['categorical'])} categorical ({', '.join(c for c in v['categorical'] if _ad_side(c) or c == 'ad_id')}), "
            f"{len(v['numeric'])} numeric" for k, v in fields.items() if k.endswith("[plain]")) + ".",
    ]
    plots = _plots(ctx, per)
    return ExperimentResult(
        name=ctx.name, title=EXPERIMENT.title, claim=EXPERIMENT.claim, columns=columns, rows=_table_rows(per, gains),
        verdict=verdict, finding=finding, plots=plots, notes=notes,
        data={"per_seed": per, "fields": fields, "new_ad_rows": n_new, "new_ad_clicks": new_clicks,
              "gains": {k: {s: d.to_dict() for s, d in g.items()} for k, g in gains.items()},
              "checks": parts})


def _plots(ctx: ExperimentContext, per: dict[str, dict[str, list[float]]]) -> list[Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx.plot_dir.mkdir(parents=True, exist_ok=True)
    keys = [_key(n, num) for n, _p, num in VARIANTS]
    labels = [f"{n}\n{'MNSE' if num == 'mnse' else 'plain'}" for n, _p, num in VARIANTS]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, metric, title in ((axes[0], "click_auc", "all test impressions"),
                              (axes[1], "click_auc_new_ads", "new ads (created < 1 day before)")):
        means = [mean_std(per[k][metric])[0] for k in keys]
        stds = [mean_std(per[k][metric])[1] for k in keys]
        colors = ["#c63" if "mnse" in k else "#69c" for k in keys]
        ax.bar(range(len(keys)), means, yerr=stds, color=colors, capsize=4)
        finite = [(m, s) for m, s in zip(means, stds) if math.isfinite(m)]
        if finite:
            ax.set_ylim(min(m - s for m, s in finite) - 0.01, max(m + s for m, s in finite) + 0.005)
        ax.set_xticks(range(len(keys)), labels, fontsize=7, rotation=20)
        ax.set_ylabel("test click AUC")
        ax.set_title(title)
    fig.suptitle("Ad representations (blue: plain buckets, orange: MNSE)")
    fig.tight_layout()
    path = ctx.plot_dir / "representations_auc.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    name="representations",
    title="Representations: semantic IDs, SEE and MNSE against the ad id",
    claim=("Visual semantic IDs and SEE similarities (text, graph, visual) improve ranking over the ad id "
           "alone, most on new ads (cold start), and MNSE numeric encoding beats plain bucketing."),
    run=run,
)

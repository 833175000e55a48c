"""The learning-curve experiment's analysis of its points (components/experiments/learning_curve.py runs
them): the axes, the rise of AUC / oracle and the verdict, the table, the notes and the plot. A point's
record is the dict ``learning_curve.run_point`` returns."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from components.experiments.base import Verdict

TASKS: tuple[str, ...] = ("click", "conversion")
CEILINGS: tuple[str, ...] = ("no_taste", "segment_taste", "taxonomy_taste")
AXES: dict[str, str] = {"rows": "more users, same impressions per user",
                        "depth": "more impressions per user, same users"}


def axis_points(records: list[dict[str, Any]], axis: str) -> list[dict[str, Any]]:
    """The records on ``axis`` in the order of its data: training rows along ``rows`` (impressions per user
    stay put there), impressions per training user along ``depth``."""
    key = "train_rows" if axis == "rows" else "impressions_per_user"
    return sorted((r for r in records if axis in r["axes"]), key=lambda r: r[key])


def rise(first: dict[str, Any], last: dict[str, Any], task: str, model: str = "stem") -> tuple[float, float]:
    """(last - first) of AUC / oracle and its noise, sqrt of the summed squared half-widths (independent
    test days)."""
    a, b = first["tasks"][task][f"{model}_ratio"], last["tasks"][task][f"{model}_ratio"]
    half = [(r["high"] - r["low"]) / 2 if r["low"] is not None and r["high"] is not None else math.nan
            for r in (a, b)]
    return b["point"] - a["point"], math.sqrt(half[0] ** 2 + half[1] ** 2)


def verdict(records: list[dict[str, Any]]) -> tuple[Verdict, str]:
    """Reproduced when STEM's AUC / oracle rises beyond the noise on every task along every axis; partly
    when it does on some; the finding gives each rise, its noise and where the deepest point stands
    against the ceilings."""
    risen, parts = [], []
    for axis in AXES:
        pts = axis_points(records, axis)
        if len(pts) < 2:
            continue
        first, last = pts[0], pts[-1]
        for task in TASKS:
            gain, noise = rise(first, last, task)
            risen.append(gain > noise)
            f = last["tasks"][task]
            ceil = {c: f["ceilings"][c] / f["oracle"] for c in f["ceilings"]}
            lg_gain, lg_noise = rise(first, last, task, "lgbm")
            parts.append(
                f"{axis} ({first['impressions_per_user']:.0f} -> {last['impressions_per_user']:.0f} impressions per "
                f"training user, {first['train_rows']:,.0f} -> {last['train_rows']:,.0f} rows) {task}: STEM "
                f"{first['tasks'][task]['stem_ratio']['point']:.3f} -> {f['stem_ratio']['point']:.3f} of the oracle "
                f"({gain:+.3f} ± {noise:.3f}{'' if gain > noise else ', not beyond the noise'}), LightGBM "
                f"{first['tasks'][task]['lgbm_ratio']['point']:.3f} -> {f['lgbm_ratio']['point']:.3f} "
                f"({lg_gain:+.3f} ± {lg_noise:.3f}); ceilings there: "
                + ", ".join(f"{c} {v:.3f}" for c, v in ceil.items()))
    if not risen:
        return "not run", "fewer than two points on every axis"
    status: Verdict = "reproduced" if all(risen) else "partly" if any(risen) else "not reproduced"
    return status, (f"AUC / oracle rises beyond the noise on {sum(risen)} of {len(risen)} axis-tasks. "
                    + "; ".join(parts) + ".")


COLUMNS: tuple[str, ...] = (
    "point", "axes", "users", "sessions / user / day", "days", "train rows", "impressions / training user",
    "clicks / training user",
    *(c for t in TASKS for c in (f"{t} STEM AUC [95 %]", f"{t} STEM / oracle", f"{t} LightGBM AUC [95 %]",
                                 f"{t} LightGBM / oracle", f"{t} oracle; ceilings / oracle (no taste, segment, taxonomy)")),
)
CEILING_STYLE = {"no_taste": ("#bbbbbb", "no taste"), "segment_taste": ("#888888", "segment taste"),
                 "taxonomy_taste": ("#333333", "taxonomy taste")}


def _interval(d: dict[str, Any]) -> str:
    if d.get("point") is None:
        return "-"
    if d.get("low") is None or d.get("high") is None:
        return f"{d['point']:.4f}"
    return f"{d['point']:.4f} [{d['low']:.4f}, {d['high']:.4f}]"


def _ratio(d: dict[str, Any]) -> str:
    return "-" if d.get("point") is None else f"{d['point']:.3f}"


def table_rows(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per point: its size, depth, and per task both models' AUC, interval and ratio, the ceilings."""
    rows = []
    for r in records:
        row = {"point": r["point"], "axes": ", ".join(r["axes"]), "users": f"{r['users']:,}",
               "sessions / user / day": f"{r['sessions']:g}", "days": str(r["days"]),
               "train rows": f"{r['train_rows']:,.0f}", "impressions / training user": f"{r['impressions_per_user']:.1f}",
               "clicks / training user": f"{r['clicks_per_user']:.2f}"}
        for t in TASKS:
            f = r["tasks"][t]
            seeds = f" ({len(f['stem_seeds'])} seeds)" if len(f["stem_seeds"]) > 1 else ""
            row[f"{t} STEM AUC [95 %]"] = _interval(f["stem"]) + seeds
            row[f"{t} STEM / oracle"] = _ratio(f["stem_ratio"])
            row[f"{t} LightGBM AUC [95 %]"] = _interval(f["lgbm"])
            row[f"{t} LightGBM / oracle"] = _ratio(f["lgbm_ratio"])
            row[f"{t} oracle; ceilings / oracle (no taste, segment, taxonomy)"] = (
                f"{f['oracle']:.4f}; " + " / ".join(f"{f['ceilings'][c] / f['oracle']:.3f}" for c in CEILINGS
                                                     if c in f["ceilings"]))
        rows.append(row)
    return rows


def notes(records: list[dict[str, Any]], small: bool) -> list[str]:
    """What the table's numbers are and what the run cost."""
    seeds = ", ".join(f"{r['point']} {len(r['seeds'])}" for r in records)
    out = [
        "Data: the default demo marketplace with only n_users (new_users_per_day kept at 2 % of them) and "
        "sessions_per_user_day changed; every planted effect at its default strength"
        + (" (small size: a 120-ad catalogue, 4 days; its numbers are not results)" if small else "")
        + ". Each point through the real day-steps in its own home under <home>/experiments/learning_curve/.",
        "Clean split at every point: the oldest days train, the day before the newest early-stops "
        "(training.valid_days), the newest day is reported untouched; impressions and clicks per training user "
        "count the training rows only.",
        "STEM: the default config's ranker and trainer (training.ranker / training.train) with the daily job's "
        "repeated-exposure IPW (propensity fitted on the training days), one run per seed; its AUC is the mean "
        "over seeds with a 95 % bootstrap interval over the test day's users (200 resamples, the same resamples "
        f"for every seed). Seeds per point: {seeds}.",
        "LightGBM (components/experiments/gbdt.py): the same training rows, IPW weights and feature columns "
        "(numeric as they are, categorical ids as vocabulary codes declared categorical, no sequence lists), "
        "one model per task, early-stopped on the validation day's AUC, the first seed only; interval as above.",
        "Ceilings: the simulator's partial oracles on the same test rows (docs/evaluation.md, \"Achievable "
        "ceilings\"), as a share of the oracle AUC. A rise counts when it exceeds sqrt(h1^2 + h2^2) of the two "
        "ends' interval half-widths (in ratio units; the test days differ, so no pairing).",
        "Cost per point (wall seconds: build through the day-steps + training and scoring; CPU seconds of "
        "the process): " + ", ".join(f"{r['point']} {r['build_seconds']:.0f} + {r['seconds'] - r['build_seconds']:.0f}"
                                     f" s (CPU {r['cpu_seconds']:.0f} s)" for r in records) + ".",
    ]
    return out


def _x(records: list[dict[str, Any]], axis: str) -> tuple[list[float], str]:
    if axis == "rows":  # impressions per user are constant along this axis: plot against the rows
        return [r["train_rows"] for r in records], "training rows (log)"
    return [r["impressions_per_user"] for r in records], "impressions per training user (log)"


def plot(records: list[dict[str, Any]], path: Path) -> Path:
    """AUC / oracle per task (rows) and axis (columns): STEM and LightGBM with their intervals, the ceilings
    dashed."""
    from validation.plots import pyplot, save_figure

    plt = pyplot()
    from matplotlib.ticker import NullFormatter

    axes_used = [a for a in AXES if len(axis_points(records, a)) >= 1]
    fig, grid = plt.subplots(len(TASKS), len(axes_used), figsize=(5.2 * len(axes_used), 3.6 * len(TASKS)),
                             squeeze=False)
    for j, axis in enumerate(axes_used):
        pts = axis_points(records, axis)
        x, xlabel = _x(pts, axis)
        for i, task in enumerate(TASKS):
            ax = grid[i][j]
            for model, label, colour in (("stem", "STEM (default model)", "#c63"), ("lgbm", "LightGBM", "#369")):
                ratios = [p["tasks"][task][f"{model}_ratio"] for p in pts]
                mid = [r["point"] for r in ratios]
                err = [[m - (r["low"] if r["low"] is not None else m) for m, r in zip(mid, ratios)],
                       [(r["high"] if r["high"] is not None else m) - m for m, r in zip(mid, ratios)]]
                ax.errorbar(x, mid, yerr=err, marker="o", capsize=3, label=label, color=colour)
            for c in CEILINGS:
                vals = [p["tasks"][task]["ceilings"].get(c, math.nan) / p["tasks"][task]["oracle"] for p in pts]
                colour, label = CEILING_STYLE[c]
                ax.plot(x, vals, ls="--", color=colour, label=f"ceiling: {label}")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks(x, [f"{v:,.0f}" for v in x], fontsize=7)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{task} AUC / oracle")
            ax.set_title(f"{task}: {axis} ({AXES[axis]})", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)

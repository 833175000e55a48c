"""The scale map's report: the table, the fitted growth and the log-log plot from bench/scale.py's results.

Reads ``<results>/<rows>/<stage>.json``, fits per stage ``log seconds ~ log rows`` and ``log working
memory ~ log rows`` (working memory: the child's peak RSS less its RSS after imports) over the sizes where
the stage finished, projects the rows at which a stage would reach ``--memory-gb`` of RSS or
``--time-budget-s`` seconds, writes ``scale.png`` and ``summary.json`` beside the results and prints a
Markdown table (docs/scale.md).

    PYTHONPATH=$PWD .venv/bin/python bench/scale_report.py
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scale import DEFAULT_RESULTS, STAGES  # noqa: E402

LABELS = {"generate": "generate the log", "deliver": "deliver", "ingest": "ingest", "features": "features (all views)",
          "interest": "user x category stats", "representations": "representations",
          "training_set": "training-set join", "encode": "encode", "train": "train, per epoch",
          "evaluate": "evaluate", "register": "gates + register", "materialise": "materialise", "serve": "serve"}


def load(results: Path) -> dict[int, dict[str, dict[str, Any]]]:
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for folder in sorted(results.iterdir()):
        if folder.is_dir() and folder.name.isdigit():
            out[int(folder.name)] = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")
                                     if p.stem in STAGES}
    return dict(sorted(out.items()))


def seconds_of(r: dict[str, Any]) -> float | None:
    """The stage's figure: its seconds; for training, seconds per epoch over all the training rows."""
    if r.get("status") != "ok":
        return None
    if r["stage"] == "train":
        return r.get("per_epoch_all_rows_s", r.get("per_epoch_s"))
    return r.get("seconds")


def working_mb(r: dict[str, Any]) -> float | None:
    if r.get("status") != "ok":
        return None
    return max(1.0, r["peak_rss_mb"] - r.get("rss_before_mb", 0))


def fit(xs: list[int], ys: list[float]) -> tuple[float, float] | None:
    """Slope and intercept of log y over log x (None with fewer than two sizes)."""
    import numpy as np

    if len(xs) < 2:
        return None
    slope, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(slope), float(intercept)


def project(f: tuple[float, float] | None, limit: float) -> int | None:
    """Rows at which exp(intercept) * rows^slope reaches ``limit`` (None: no fit or no growth)."""
    if f is None or f[0] <= 0.05:
        return None
    return int(math.exp((math.log(limit) - f[1]) / f[0]))


def summarise(data: dict[int, dict[str, dict[str, Any]]], memory_gb: float, budget_s: float) -> dict[str, Any]:
    stages: dict[str, Any] = {}
    for stage in STAGES:
        runs = [(n, d[stage]) for n, d in data.items() if stage in d]
        ok = [(n, r) for n, r in runs if seconds_of(r) is not None]
        # Memory only where the stage saw all the rows (training on a sample does not).
        full = [(n, r) for n, r in ok if r.get("fraction", 1) == 1]
        t_fit = fit([n for n, _ in ok], [max(seconds_of(r), 1e-3) for _, r in ok])
        m_fit = fit([n for n, _ in full], [working_mb(r) for _, r in full])
        # The local slope between the two largest sizes: fixed costs weigh less there, so it projects.
        t_local = fit([n for n, _ in ok[-2:]], [max(seconds_of(r), 1e-3) for _, r in ok[-2:]])
        m_local = fit([n for n, _ in full[-2:]], [working_mb(r) for _, r in full[-2:]])
        base = max((r.get("rss_before_mb", 0) for _, r in ok), default=0)
        broke = [(n, r.get("reason")) for n, r in runs if r.get("status") in ("broke", "failed")]
        stages[stage] = {
            "time_exponent": round(t_fit[0], 2) if t_fit else None,
            "memory_exponent": round(m_fit[0], 2) if m_fit else None,
            "time_exponent_local": round(t_local[0], 2) if t_local else None,
            "memory_exponent_local": round(m_local[0], 2) if m_local else None,
            "rows_at_memory_limit": project(m_local, memory_gb * 1024 - base),
            "rows_at_time_budget": project(t_local, budget_s),
            "broke_at": broke[0] if broke else None,
        }
    return stages


def human(rows: int | None) -> str:
    """A projected row count for the table: '-' without growth, '> 10B' past any sane extrapolation."""
    if rows is None:
        return "-"
    if rows >= 10**10:
        return "> 10B"
    return f"{rows / 1e9:.1f}B" if rows >= 10**9 else f"{rows / 1e6:.0f}M" if rows >= 10**6 else f"{rows:,}"


def table(data: dict[int, dict[str, dict[str, Any]]], stages: dict[str, Any]) -> str:
    sizes = list(data)
    head = ("| stage | " + " | ".join(f"{n:,} rows: s / peak MB / load" for n in sizes)
            + " | time exp. (all / last two) | memory exp. (all / last two) | rows at 24 GB | rows at 1 h |")
    lines = [head, "|" + "---|" * (len(sizes) + 5)]
    for stage in STAGES:
        cells = []
        for n in sizes:
            r = data[n].get(stage)
            if r is None:
                cells.append("not measured")
            elif r.get("status") == "broke":
                limit = "16 GB" if "memory" in r.get("reason", "") else "time limit"
                cells.append(f"**broke** ({limit}) at {r['seconds']:.0f} s / {r['peak_rss_mb']:,}")
            elif r.get("status") != "ok":
                cells.append(f"{r.get('status')} ({r.get('reason', '')})")
            else:
                s = seconds_of(r)
                mark = "*" if stage == "train" and r.get("fraction", 1) < 1 else ""
                cells.append(f"{s:,.1f}{mark} / {r['peak_rss_mb']:,} / {r['load_before']}")
        fit_row = stages[stage]
        lines.append(f"| {LABELS[stage]} | " + " | ".join(cells)
                     + f" | {fit_row['time_exponent']} / {fit_row['time_exponent_local']}"
                     + f" | {fit_row['memory_exponent']} / {fit_row['memory_exponent_local']}".replace("None", "-")
                     + f" | {human(fit_row['rows_at_memory_limit'])} | {human(fit_row['rows_at_time_budget'])} |")
    return "\n".join(lines)


def plot(data: dict[int, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5.5))
    for i, stage in enumerate(STAGES):
        color = plt.cm.tab20(i / len(STAGES))
        pts = [(n, d[stage]) for n, d in data.items() if stage in d and seconds_of(d[stage]) is not None]
        xs = [n for n, _ in pts]
        ax_t.plot(xs, [max(seconds_of(r), 1e-3) for _, r in pts], "o-", color=color, label=LABELS[stage])
        ax_m.plot(xs, [r["peak_rss_mb"] for _, r in pts], "o-", color=color, label=LABELS[stage])
        # Where it broke: an x at the limit it was killed at (seconds and RSS at the kill).
        broke = [(n, d[stage]) for n, d in data.items() if d.get(stage, {}).get("status") == "broke"]
        ax_t.plot([n for n, _ in broke], [r["seconds"] for _, r in broke], "x", color=color, markersize=11, mew=2.5)
        ax_m.plot([n for n, _ in broke], [r["peak_rss_mb"] for _, r in broke], "x", color=color, markersize=11, mew=2.5)
    for ax, ylabel in ((ax_t, "seconds (train: per epoch)"), (ax_m, "peak RSS of the stage's process, MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("impressions in the 7-day window")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.axhline(24 * 1024, color="red", linestyle="--", linewidth=1, label="24 GB (the box)")
    ax_m.legend(fontsize=7, loc="upper left")
    fig.suptitle("adsrec stage cost vs rows (bench/scale.py, 2 shared cores; x: killed at the 360 s / 16 GB limit)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    ap.add_argument("--memory-gb", type=float, default=24.0)
    ap.add_argument("--time-budget-s", type=float, default=3600.0, help="a stage's share of a daily run")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    data = load(args.results)
    if not data:
        raise SystemExit(f"no results under {args.results}: run bench/scale.py first")
    stages = summarise(data, args.memory_gb, args.time_budget_s)
    (args.results.parent / "summary.json").write_text(json.dumps(
        {"sizes": list(data), "memory_gb": args.memory_gb, "time_budget_s": args.time_budget_s, "stages": stages},
        indent=1, default=str))
    if not args.no_plot:
        plot(data, args.results.parent / "scale.png")
    print(table(data, stages))
    print()
    for stage, s in stages.items():
        print(f"{LABELS[stage]}: {s}")


if __name__ == "__main__":
    main()

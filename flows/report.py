"""Readable plain-text summaries of a run (what the CLI prints and the Prefect artifact shows)."""

from __future__ import annotations

from typing import Any


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(out)


def _n(x: Any) -> str:
    return "-" if x is None else f"{x:,}" if isinstance(x, int) else str(x)


def fmt_share(x: Any) -> str:
    if isinstance(x, (list, tuple)):  # one share per codebook level
        return " / ".join(f"L{i + 1} {v:.0%}" for i, v in enumerate(x))
    return "-" if x is None else f"{x:.1%}" if isinstance(x, float) else str(x)


def _num(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else _n(x)


def with_interval(point: Any, interval: Any, sign: str = "") -> str:
    """``0.6507 [0.640, 0.662]``: a point with its bootstrap interval (an ``Interval.to_dict()``), or the
    point alone when there is no interval; ``sign="+"`` signs every number (a difference)."""
    if not isinstance(point, float):
        return _n(point)
    low, high = (interval or {}).get("low"), (interval or {}).get("high")
    if not (isinstance(low, float) and isinstance(high, float)):
        return f"{point:{sign}.4f}"
    return f"{point:{sign}.4f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def _num_rate(x: Any) -> str:
    return f"{x:,.0f}" if isinstance(x, (int, float)) else "-"


def _encoded(rep: dict[str, Any] | None) -> str:
    if not rep:
        return "-"
    return f"{_n(rep.get('text_encoded'))}/{_n(rep.get('visual_encoded'))}"


DAY_STAGES = ("deliver", "ingest", "features", "representations")
DAY_HEADERS = ["day", "impressions", "ads", "users", "quarantined", "expect.", "feature rows", "encoded txt/img",
               "s", "skipped"]


def group_by_day(summary: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The run's day-step records folded into one entry per day (seconds summed, skipped stages, the
    ingest tables, feature rows, representations), and the other records (training set, train, gates,
    materialize) in run order."""
    days: dict[str, dict[str, Any]] = {}
    extra: list[dict[str, Any]] = []
    for st in summary.get("stages", []):
        if st["stage"] not in DAY_STAGES:
            extra.append(st)
            continue
        day = str(st.get("day")) if st.get("day") is not None else "-"
        d = days.setdefault(day, {"seconds": 0.0, "skipped": []})
        d["seconds"] += st.get("seconds") or 0.0
        if st.get("skipped"):
            d["skipped"].append(st["stage"])
        if st["stage"] == "ingest":
            d["ingest"] = st.get("tables") or {}
            d["expectations_passed"] = st.get("expectations_passed")
            d["data_docs"] = st.get("data_docs")
        elif st["stage"] == "features":
            d["features"] = st.get("rows") or {}
        elif st["stage"] == "representations":
            d["repr"] = st
    return days, extra


def day_row(day: str, d: dict[str, Any]) -> list[str]:
    """One row of the per-day table (:data:`DAY_HEADERS`) for an entry of :func:`group_by_day`."""
    ing = d.get("ingest", {})
    imp = ing.get("impressions", {})
    q = sum((t.get("rows_quarantined") or 0) for t in ing.values()) if ing else None
    rate = imp.get("rows_quarantined", 0) / imp["rows_in"] if imp.get("rows_in") else 0.0
    feats = d.get("features", {})
    return [
        day,
        _n(imp.get("rows_landed")),
        _n(ing.get("ads", {}).get("rows_landed")),
        _n(ing.get("users", {}).get("rows_landed")),
        f"{_n(q)} ({rate:.2%})" if q is not None else "-",
        {True: "pass", False: "FAIL", None: "-"}[d.get("expectations_passed")],
        _n(sum(feats.values())) if feats else "-",
        _encoded(d.get("repr")),
        f"{d['seconds']:.1f}",
        ",".join(d["skipped"]) or "",
    ]


def render_representations(r: dict[str, Any]) -> list[str]:
    """The newest day's representations: codebook, usage, collisions, graph, seconds per stage."""
    lines = [
        f"representations ({r.get('day')}): visual semantic IDs codebook {r.get('codebook_version')}, "
        f"usage {fmt_share(r.get('codebook_usage'))}, collision rate {fmt_share(r.get('collision_rate'))}; "
        f"graph {_n(r.get('graph_edges'))} click edges, final BPR loss {_num(r.get('graph_final_loss'))}"
    ]
    stage_s = r.get("stage_seconds") or {}
    if isinstance(stage_s, dict) and stage_s:
        lines.append("  seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in stage_s.items()
                                                         if isinstance(v, (int, float))))
    return lines


def render_train(st: dict[str, Any]) -> list[str]:
    """The trained model: rows of the train / validation / test days, epochs, throughput, the evaluation
    text (the test day, AUC intervals over users) and where it was saved."""
    tr = st.get("training") or {}
    rows = st.get("rows") or {}
    lines = [
        f"model: {st.get('arch')} trained on {_n(rows.get('train'))} rows, early-stopped on the validation day "
        f"({_n(rows.get('valid'))} rows), evaluated on the untouched newest day ({_n(rows.get('test'))} rows): "
        f"{tr.get('epochs')} epochs (best {tr.get('best_epoch')}), "
        f"{_num_rate(tr.get('samples_per_s'))} samples/s on {tr.get('device')}"
        + ("  [unchanged, skipped]" if st.get("skipped") else "")
    ]
    if (st.get("small_data") or {}).get("text"):
        lines.append(st["small_data"]["text"])
    if st.get("evaluation_text"):
        lines.append(st["evaluation_text"])
    lines.append(f"  saved to {st.get('model_dir')}")
    return lines


def render_training_set(st: dict[str, Any]) -> list[str]:
    """The training set: path, days, seconds, rows, label rates, join path, feature count."""
    lines = [f"training set: {st.get('path')}  ({st.get('days')} days, {st.get('seconds', 0):.1f} s)"]
    meta = st.get("meta") or {}
    if meta:
        rates = ", ".join(f"{k} {v:.2%}" for k, v in (meta.get("label_rates") or {}).items())
        lines.append(f"  rows {_n(meta.get('rows'))}; label rates {rates}; join {meta.get('join_path')}; "
                     f"{len(meta.get('features') or [])} features")
    return lines


def render_stage(st: dict[str, Any]) -> list[str]:
    """A record that is not a day-step: training set, train, gates, materialize, or any other."""
    if st["stage"] == "train":
        return render_train(st)
    if st["stage"] == "gates":
        return [render_gates(st)]
    if st["stage"] == "materialize":
        views = st.get("views") or {}
        return [f"online store: feature values as of {st.get('as_of')} for {len(views)} views "
                f"({st.get('seconds') or 0:.1f} s); score pairs with `adsrec score --pairs FILE`"]
    if st["stage"] == "training_set":
        return render_training_set(st)
    return [f"{st['stage']}: {({k: v for k, v in st.items() if k != 'stage'})}"]


def render_summary(summary: dict[str, Any]) -> str:
    """One block per run: per-day rows landed/quarantined and feature rows, stage time, the training set."""
    days, extra = group_by_day(summary)
    head = (f"adsrec {summary.get('flow')}  status={summary.get('status')}  "
            f"{summary.get('seconds', 0):.1f} s  params={summary.get('parameters')}")
    blocks = [head]
    if days:
        blocks.append(_table(DAY_HEADERS, [day_row(day, d) for day, d in sorted(days.items())]))
    docs = next((d["data_docs"] for _, d in sorted(days.items()) if d.get("data_docs")), None)
    if docs:  # right under the table's expect. column
        blocks.append(render_data_docs(docs))
    reps = [d["repr"] for _, d in sorted(days.items()) if d.get("repr")]
    if reps:
        blocks.extend(render_representations(reps[-1]))
    for st in extra:
        blocks.extend(render_stage(st))
    if summary.get("error"):
        blocks.append(f"error: {summary['error']}")
    return "\n\n".join(blocks)


def render_data_docs(st: dict[str, Any]) -> str:
    """Where the ingested days' Great Expectations results are: the Data Docs file and its URL (an
    ingest record's ``data_docs``)."""
    if not st.get("exists"):
        return f"data quality: no Great Expectations Data Docs yet (expected at {st.get('index')})"
    return (f"data quality: Great Expectations Data Docs {st.get('index')}\n"
            f"  `adsrec up` serves them at {st.get('url')}")


Table = tuple[list[str], list[list[str]]]  # (column names, rows of cells) of a summary table


def metrics_table(st: dict[str, Any]) -> tuple[str, Table]:
    """The heading and the table of the newest (test) day's metrics: per task the AUC with its interval
    over users, the champion's AUC and the difference with its paired interval, the oracle's AUC, GAUC and
    calibration (the champion's columns only with one; the ratios to the oracle are in
    :func:`reference_table`)."""
    metrics = st.get("metrics") or {}
    champ = st.get("champion") or {}
    champ_m = champ.get("metrics") or {}
    diffs = champ.get("auc_difference") or {}
    oracle = st.get("oracle") or {}
    head = (f"comparison on the newest day (champion: version {champ.get('version')})" if champ
            else "metrics on the newest day (no earlier version to compare with)")
    rows = []
    for task, m in metrics.items():
        c = champ_m.get(task) or {}
        auc, cauc = m.get("auc"), c.get("auc")
        delta = (with_interval(auc - cauc, diffs.get(task), "+") if isinstance(auc, float)
                 and isinstance(cauc, float) else "-")
        rows.append([task, with_interval(auc, m.get("auc_interval")), _num(cauc), delta, _num(oracle.get(task)),
                     _num(m.get("gauc")), _num(c.get("gauc")), _num(m.get("calibration")), _num(c.get("calibration"))])
    columns = ["task", "AUC", "champion", "delta", "oracle", "GAUC", "champion", "calibration", "champion"]
    keep = [i for i, name in enumerate(columns) if champ or name not in ("champion", "delta")]  # else empty
    return head, ([columns[i] for i in keep], [[r[i] for i in keep] for r in rows])


def gate_notices(st: dict[str, Any]) -> list[str]:
    """What the run prints under the gate table: each failed gate in words, and the warning of each
    inconclusive gate that passed (validation/gate_words.py)."""
    from validation.gate_words import gate_notice

    version = (st.get("registered") or {}).get("version")
    return [n for g in st.get("gates") or [] if (n := gate_notice({**g, "reason": gate_reason(g)}, version))]


def registered_line(st: dict[str, Any]) -> str:
    """The registered version and its aliases (and the promotion), or that the registry is off."""
    reg = st.get("registered")
    if not reg:
        return "registry disabled (registry.enabled = false): nothing registered"
    aliases = ", ".join(reg.get("aliases") or []) or "no alias (a gate failed)"
    line = f"registered: {reg.get('name')} version {reg.get('version')} -> {aliases}; run {reg.get('run_id')}"
    promoted = st.get("promoted")
    if promoted:
        line += f"; promoted to champion (previous: {promoted.get('previous') or 'none'})"
    return line


def render_gates(st: dict[str, Any]) -> str:
    """The newest (test) day's metrics next to the champion's and the oracle's (AUC with its interval over
    users, the difference with its paired interval), the gate table, the registered version and its
    aliases, and where to look."""
    head, (columns, rows) = metrics_table(st)
    blocks = [head, _table(columns, rows)]
    if st.get("baselines") or st.get("ceilings"):
        ref_head, (ref_columns, ref_rows) = reference_table(st)
        blocks.append(f"{ref_head}\n" + _table(ref_columns, ref_rows))
    blocks.append("quality gates" + ("  [unchanged, skipped]" if st.get("skipped") else "") + "\n"
                  + (st.get("gate_table") or "-"))
    blocks += gate_notices(st)  # a failed gate, or the warning of an inconclusive one that passed
    blocks.append(registered_line(st))
    if st.get("plots"):
        blocks.append("plots: " + ", ".join(st["plots"]))
    ui = st.get("ui") or {}
    blocks.append("where to look: `adsrec models` (versions and aliases); `adsrec up` serves the MLflow UI "
                  f"({ui.get('mlflow', 'http://127.0.0.1:5000')}), the Prefect UI "
                  f"({ui.get('prefect', 'http://127.0.0.1:4200')}) and the Data Docs "
                  f"({ui.get('data_docs', 'http://127.0.0.1:5100/index.html')}) on this machine")
    return "\n".join(blocks)


def reference_table(st: dict[str, Any]) -> tuple[str, Table]:
    """The model's AUC on the newest day next to the trivial baselines' (docs/gates.md) and, on the
    simulator, the partial oracles' and the oracle's, each with its ratio to the oracle (docs/evaluation.md,
    "Achievable ceilings"), and the model's lead over the best baseline with its interval: the heading and
    the table."""
    metrics, baselines = st.get("metrics") or {}, st.get("baselines") or {}
    oracle, ceilings = st.get("oracle") or {}, st.get("ceilings") or {}
    tasks = list(metrics or baselines)

    def cell(task: str, x: Any) -> str:
        o = oracle.get(task)
        ratio = f" ({x / o:.3f})" if isinstance(x, float) and isinstance(o, float) and o > 0 else ""
        return _num(x) + ratio

    names = next((list((b.get("baselines") or {})) for b in baselines.values()), [])
    rows = [["model", *(cell(t, (metrics.get(t) or {}).get("auc")) for t in tasks)]]
    rows += [[f"baseline {n}", *(cell(t, ((baselines.get(t) or {}).get("baselines") or {}).get(n)) for t in tasks)]
             for n in names]
    rows += [[f"ceiling {c}", *(cell(t, per.get(t)) for t in tasks)] for c, per in ceilings.items()]
    if oracle:
        rows.append(["oracle", *(cell(t, oracle.get(t)) for t in tasks)])
    lead = []
    for t in tasks:
        d = (baselines.get(t) or {}).get("difference") or {}
        lo, hi, point = d.get("low"), d.get("high"), d.get("point")
        lead.append("-" if point is None else f"{point:+.4f}" + (f" [{lo:+.4f}, {hi:+.4f}]" if lo is not None
                                                               and hi is not None else ""))
    if baselines:
        rows.append(["model - best baseline", *lead])
    head = "the model next to the trivial baselines" + (" and the achievable ceilings" if ceilings or oracle else "")
    return f"{head} (AUC on the newest day; ratio to the oracle)", (["", *tasks], rows)


def gate_reason(g: dict[str, Any]) -> str:
    """A gate's reason in words; for a gate stored before reasons, one made from its details."""
    if g.get("reason"):  # validation/gates.py words every verdict; older manifests lack it
        return str(g["reason"])
    d = g.get("details") or {}
    if g["name"] == "model":
        bad = [f"{t}: AUC {_num(v.get('auc'))} vs champion {_num(v.get('champion_auc'))}, calibration "
               f"{_num(v.get('calibration'))}" for t, v in (d.get("tasks") or {}).items()
               if not (v.get("auc_ok") and v.get("calibration_ok"))]
        return "; ".join(bad) or "no metrics"
    if g["name"] == "data":
        return (f"quarantine rate {_num(g.get('value'))} (bound {_num(g.get('threshold'))}), days missing "
                f"{d.get('days_missing')}, failed expectations {d.get('failed_expectations')}")
    return f"value {_num(g.get('value'))}, threshold {_num(g.get('threshold'))}"

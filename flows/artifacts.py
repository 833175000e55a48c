"""Prefect artifacts of a run: what someone looking at a scheduled run in the Prefect UI sees besides logs.

- the gates task of the daily flow (flows/daily.py) publishes, as soon as the gates have run, a markdown
  summary ``<flow>-summary`` (the newest day's metrics with their intervals, the model next to the trivial
  baselines and the achievable ceilings with its ratio to the oracle, the gate table with each gate's
  status and reason, the failed gates and inconclusive warnings in words, the registered version), the
  tables ``<flow>-metrics`` and ``<flow>-gates`` and links to the MLflow run and model version;
- every finished flow (flows/summaries.py ``finish_run``) publishes the tables ``<flow>-run`` and
  ``<flow>-days`` and the link to the Great Expectations Data Docs.

They show on the flow run's page and, by key, on the Artifacts page, where each run adds a version. The
markdown is built from the cells the terminal summary prints (flows/report.py, validation/gate_words.py),
so both show the same numbers. Publishing needs a Prefect API; :func:`publish_quietly` logs a failure
instead of failing the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from components.config import Settings
from flows.report import (
    DAY_HEADERS,
    day_row,
    gate_notices,
    gate_reason,
    group_by_day,
    metrics_table,
    reference_table,
    registered_line,
)


def run_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row: flow, status, seconds and every parameter (as text)."""
    row = {"flow": summary.get("flow"), "status": summary.get("status"),
           "seconds": round(summary.get("seconds") or 0.0, 1)}
    row.update({k: "" if v is None else str(v) for k, v in (summary.get("parameters") or {}).items()})
    return [row]


def days_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per day: rows landed and quarantined, expectations, feature rows, encoded, seconds."""
    days, _ = group_by_day(summary)
    return [dict(zip(DAY_HEADERS, day_row(day, d))) for day, d in sorted(days.items())]


def metric_records(gates: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task: the new model's AUC with its interval, GAUC and calibration next to the
    champion's and the oracle's (numbers, so the UI's table sorts them)."""
    champ = ((gates.get("champion") or {}).get("metrics")) or {}
    oracle = gates.get("oracle") or {}
    rows = []
    for task, m in (gates.get("metrics") or {}).items():
        c, interval = champ.get(task) or {}, m.get("auc_interval") or {}
        rows.append({"task": task, "auc": m.get("auc"), "auc_low": interval.get("low"), "auc_high": interval.get("high"),
                     "champion_auc": c.get("auc"), "oracle_auc": oracle.get(task), "gauc": m.get("gauc"),
                     "champion_gauc": c.get("gauc"), "calibration": m.get("calibration"),
                     "champion_calibration": c.get("calibration")})
    return rows


def gate_records(gates: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per quality gate, the cells of the printed gate table (value, interval, threshold, result
    with the ``gates.inconclusive`` policy, reason) with its ``status`` and ``passed``."""
    from validation.gate_words import GATE_COLUMNS, gate_cells, gate_status

    rows = []
    for g in gates.get("gates") or []:
        cells = dict(zip(GATE_COLUMNS, gate_cells({**g, "reason": gate_reason(g)})))
        rows.append({"gate": cells.pop("gate"), "status": gate_status(g), "passed": bool(g.get("passed")), **cells})
    return rows


def md_text(x: Any) -> str:
    """``x`` as markdown text: ``<`` as an entity, so a path such as ``<home>/models`` is not read as an HTML
    tag (and dropped by the UI)."""
    return str(x).replace("<", "&lt;")


def md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table of :func:`md_text` cells; ``|`` in a cell is escaped, a line
    break becomes ``<br>``."""
    def cell(x: Any) -> str:
        return md_text(x).replace("|", "\\|").replace("\n", "<br>") or " "

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(cell(c) for c in cells) + " |"

    return "\n".join([line(columns), "|" + "---|" * len(columns), *(line(r) for r in rows)])


def notice_markdown(notice: str) -> str:
    """A gate notice (validation/gate_words.py ``gate_notice``): its first line in bold, the lines under
    it (why it matters, what to do) as a list."""
    first, *rest = md_text(notice).splitlines()
    return "\n".join([f"**{first}**", "", *(f"- {line.strip()}" for line in rest)])


def inconclusive_policy(gates: Sequence[dict[str, Any]]) -> str | None:
    """``gates.inconclusive`` as the gates that know it recorded it (collapse, entanglement), or None."""
    return next((str(p) for g in gates if (p := (g.get("details") or {}).get("inconclusive_policy"))), None)


def summary_markdown(st: dict[str, Any], title: str) -> str:
    """The daily run's gates record (``assess_and_register``'s result) as markdown: the metrics table, the
    baselines and ceilings table, the gate table, the notices in words and the registered version."""
    head, metrics = metrics_table(st)
    parts = [f"# {title}", f"## {head[0].upper()}{head[1:]}", md_table(*metrics)]
    if st.get("baselines") or st.get("ceilings"):
        ref_head, ref = reference_table(st)
        parts += [f"## {ref_head[0].upper()}{ref_head[1:]}", md_table(*ref)]
    gates = st.get("gates") or []
    parts.append("## Quality gates" + (" (unchanged, skipped)" if st.get("skipped") else ""))
    if gates:
        from validation.gate_words import GATE_COLUMNS

        parts.append(md_table(GATE_COLUMNS, [[r[c] for c in GATE_COLUMNS] for r in gate_records(st)]))
    else:
        parts.append("no gate ran")
    policy = inconclusive_policy(gates)
    if policy:
        parts.append(f"An inconclusive gate (its interval contains the threshold, or the data are too few for one) "
                     f"passes or fails by `gates.inconclusive`, here `{policy}`.")
    parts += [notice_markdown(n) for n in gate_notices(st)]
    parts.append(md_text(registered_line(st)))
    return "\n\n".join(parts) + "\n"


def mlflow_links(gates: dict[str, Any], settings: Settings) -> list[tuple[str, str, str]]:
    """``(key suffix, text, URL)`` of the registered version's MLflow run and model version pages."""
    reg = gates.get("registered")
    if not reg:
        return []
    from flows.services import mlflow_url

    base = (gates.get("ui") or {}).get("mlflow") or mlflow_url(settings)
    links = []
    if reg.get("run_id") and reg.get("experiment_id") is not None:
        links.append(("mlflow-run", f"MLflow run {reg['run_id']}",
                      f"{base}/#/experiments/{reg['experiment_id']}/runs/{reg['run_id']}"))
    links.append(("model-version", f"{reg.get('name')} version {reg.get('version')}",
                  f"{base}/#/models/{reg.get('name')}/versions/{reg.get('version')}"))
    return links


def flow_key(flow: str) -> str:
    """An artifact key's prefix for ``flow`` (keys take lowercase letters, digits and dashes)."""
    return str(flow).replace("_", "-").lower()


def publish_gate_artifacts(st: dict[str, Any], settings: Settings, flow: str = "daily") -> list[str]:
    """Create the gates' artifacts (needs a Prefect API): the markdown summary, the metrics and gates
    tables, the links to the registered version in MLflow; returns their keys."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    key, what = flow_key(flow), f"adsrec {flow}"
    day = st.get("end_day") or st.get("day")
    create_markdown_artifact(markdown=summary_markdown(st, f"{what}: the model for {day}"), key=f"{key}-summary",
                             description=f"{what}: metrics, baselines, ceilings and quality gates of {day}")
    made = [f"{key}-summary"]
    for name, table in {"metrics": metric_records(st), "gates": gate_records(st)}.items():
        if table:
            create_table_artifact(table=table, key=f"{key}-{name}", description=f"{what}: {name} of {day}")
            made.append(f"{key}-{name}")
    for suffix, text, url in mlflow_links(st, settings):
        create_link_artifact(link=url, link_text=text, key=f"{key}-{suffix}", description=f"{what}: {text}")
        made.append(f"{key}-{suffix}")
    return made


def publish_run_artifacts(summary: dict[str, Any], settings: Settings) -> list[str]:
    """Create the run's tables (the run, its days) and the Data Docs link (needs a Prefect API); returns
    their keys. The gates' artifacts come from the gates task (:func:`publish_gate_artifacts`)."""
    from prefect.artifacts import create_link_artifact, create_table_artifact

    key, what = flow_key(summary.get("flow")), f"adsrec {summary.get('flow')}"
    made = []
    for name, table in {"run": run_table(summary), "days": days_table(summary)}.items():
        if table:
            create_table_artifact(table=table, key=f"{key}-{name}", description=f"{what}: {name}")
            made.append(f"{key}-{name}")
    docs = next((st["data_docs"] for st in summary.get("stages", []) if st.get("data_docs")), None)
    if docs and docs.get("exists"):
        create_link_artifact(link=docs["url"], link_text="Great Expectations Data Docs", key=f"{key}-data-docs",
                             description=f"{what}: Great Expectations Data Docs")
        made.append(f"{key}-data-docs")
    return made


def publish_quietly(publish: Callable[..., list[str]], *args: Any) -> list[str]:
    """``publish(*args)``; when it fails (no Prefect API reachable, a rejected artifact) a warning in the
    run's log instead: the artifacts are a view of the run, never a reason for it to fail."""
    try:
        return publish(*args)
    except Exception as exc:  # noqa: BLE001 - any failure to publish leaves the run as it was
        try:
            from prefect import get_run_logger

            logger: Any = get_run_logger()
        except Exception:  # noqa: BLE001 - outside a flow or task run
            logger = logging.getLogger(__name__)
        logger.warning(f"Prefect artifacts not published ({getattr(publish, '__name__', publish)}): "
                       f"{type(exc).__name__}: {exc}")
        return []

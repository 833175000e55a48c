"""Prefect artifacts of a finished run: tables (the run, its days, the model's metrics, its quality
gates) and links (the MLflow run, the registered model version, the Great Expectations Data Docs).

They show on the flow run's page in the Prefect UI and, keyed by flow, on its Artifacts page, where
each new run adds a version. Built from the run summary dictionary (``RunSummary.to_dict()``).
"""

from __future__ import annotations

from typing import Any

from components.config import Settings
from flows.report import DAY_HEADERS, day_row, group_by_day


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


def metrics_table(gates: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task: the new model's AUC, GAUC and calibration next to the champion's and the oracle."""
    champ = ((gates.get("champion") or {}).get("metrics")) or {}
    oracle = gates.get("oracle") or {}
    rows = []
    for task, m in (gates.get("metrics") or {}).items():
        c = champ.get(task) or {}
        rows.append({"task": task, "auc": m.get("auc"), "champion_auc": c.get("auc"), "oracle_auc": oracle.get(task),
                     "gauc": m.get("gauc"), "champion_gauc": c.get("gauc"), "calibration": m.get("calibration"),
                     "champion_calibration": c.get("calibration")})
    return rows


def gates_table(gates: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per quality gate: passed, value, threshold and the reason in words."""
    return [{"gate": g.get("name"), "passed": bool(g.get("passed")), "value": g.get("value"),
             "threshold": g.get("threshold"), "reason": g.get("reason") or ""} for g in gates.get("gates") or []]


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


def publish_run_artifacts(summary: dict[str, Any], settings: Settings) -> list[str]:
    """Create the run's table and link artifacts (needs a Prefect API); returns their keys."""
    from prefect.artifacts import create_link_artifact, create_table_artifact

    key = str(summary.get("flow")).replace("_", "-")
    what = f"adsrec {summary.get('flow')}"
    tables = {"run": run_table(summary), "days": days_table(summary)}
    gates = next((st for st in summary.get("stages", []) if st.get("stage") == "gates"), None)
    if gates:
        tables.update({"metrics": metrics_table(gates), "gates": gates_table(gates)})
    made = []
    for name, table in tables.items():
        if table:
            create_table_artifact(table=table, key=f"{key}-{name}", description=f"{what}: {name}")
            made.append(f"{key}-{name}")
    docs = next((st["data_docs"] for st in summary.get("stages", []) if st.get("data_docs")), None)
    links = mlflow_links(gates, settings) if gates else []
    if docs and docs.get("exists"):
        links.append(("data-docs", "Great Expectations Data Docs", docs["url"]))
    for suffix, text, url in links:
        create_link_artifact(link=url, link_text=text, key=f"{key}-{suffix}", description=f"{what}: {text}")
        made.append(f"{key}-{suffix}")
    return made

"""A flow run's settings and its run summary: loading the settings a flow runs with, keeping the summary
of a failing run, and finishing a run (Data Docs linked, JSON written under ``<home>/runs/``, Prefect
artifacts published). Shared by the flows of ``flows/pipeline.py`` and ``flows/daily.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger

from components.config import Settings, load_settings
from components.runs import RunSummary


def flow_settings(config_file: str | None) -> Settings:
    """The resolved settings a flow runs with (``config_file`` or ``ADSREC_CONFIG``, then ``ADSREC_*``)."""
    return load_settings(config_file).resolved()


@contextmanager
def summarised(settings: Settings, summary: RunSummary) -> Iterator[RunSummary]:
    """A failing run still leaves its summary (what finished, and the error) under runs/."""
    try:
        yield summary
    except BaseException as exc:
        summary.status = "failed"
        summary.error = f"{type(exc).__name__}: {exc}"
        summary.write(settings)
        raise


def link_data_docs(summary: RunSummary, settings: Settings) -> dict[str, Any] | None:
    """Give every ingest record of the run the Data Docs link (the days' GX results are there); None
    when the run ingested nothing."""
    ingests = [st for st in summary.stages if st.get("stage") == "ingest"]
    if not ingests:
        return None
    from flows.services import data_docs_url
    from validation.gx_project import data_docs_index

    index = data_docs_index(settings.gx_dir)
    docs = {"index": str(index), "exists": index.is_file(), "url": data_docs_url(settings)}
    for st in ingests:
        st["data_docs"] = docs
    return docs


def finish_run(summary: RunSummary, settings: Settings) -> str:
    """Mark the run completed, link the Data Docs, write the summary JSON and publish its Prefect
    artifacts (the run and its days; the daily gates task publishes its own); returns the summary's path."""
    from flows.artifacts import publish_quietly, publish_run_artifacts

    summary.status = "completed"
    link_data_docs(summary, settings)
    path = summary.write(settings)
    publish_quietly(publish_run_artifacts, summary.to_dict(), settings)  # a warning, never a failed run
    get_run_logger().info(f"run summary written to {path}")
    return str(path)

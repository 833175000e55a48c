"""The working state of one table of one day while it is ingested (``TableRun``), and how a problem
fails the day (``fail_day``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from components.ingest.report import TableReport
from components.schemas import TableContract


@dataclass
class TableRun:
    """Working state of one table of one day."""

    contract: TableContract
    schema: pa.Schema  # the contract columns (impressions: plus the task labels)
    report: TableReport
    files: list[Path] = field(default_factory=list)
    originals: dict[int, pa.Table] = field(default_factory=dict)  # file index -> table as delivered
    conformed: list[pa.Table] = field(default_factory=list)
    whole_file_rejects: list[pa.Table] = field(default_factory=list)  # __file, __row, __reason, __detail
    failed: list[tuple[Path, str]] = field(default_factory=list)
    batch: pa.Table | None = None  # the day's conformed rows with __reason / __detail after the checks
    index: Any = None  # components.ingest.index.IngestIndex (the cross-day checks)
    known: dict[str, pa.Array] = field(default_factory=dict)  # "ads"/"users": ids landing this day


def fail_day(rep: TableReport, message: str) -> None:
    """A problem that fails the day: an error of the table, and one of the day's failures."""
    rep.errors.append(message)
    rep.failures.append(message)

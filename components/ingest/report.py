"""What ingesting a day did: the per-table and per-day reports (plain JSON via ``to_dict()``, one line via
``IngestReport.one_line()``) and the two errors ingestion raises. Written by components/ingest/day.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from validation.expectations import ExpectationResult


class IngestError(RuntimeError):
    """Ingestion could not complete (nothing was half-written: partitions are replaced atomically)."""


class IngestDayFailed(ValueError):
    """The day's delivery failed ingestion (a data error: retrying cannot help). The message is one line
    naming the file, the reason, the counts and the path of the full JSON report."""

    def __init__(self, report: "IngestReport | str") -> None:
        # A message alone when rebuilt from its args (pickled by Prefect between task and flow).
        super().__init__(report if isinstance(report, str) else report.one_line())
        self.report = None if isinstance(report, str) else report


@dataclass
class TableReport:
    """What happened to one table of one day. Invariant: ``rows_in == rows_landed + rows_quarantined``
    (rows of unreadable files are unknown: those files are listed in ``files_failed`` instead)."""

    table: str
    files_read: list[str] = field(default_factory=list)
    files_empty: list[str] = field(default_factory=list)
    files_failed: dict[str, str] = field(default_factory=dict)  # file -> why it could not be read
    rows_in: int = 0
    rows_landed: int = 0
    rows_quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)  # column -> files it was dropped from
    kept_extra_columns: list[str] = field(default_factory=list)  # ads/users attributes kept
    expectations: list["ExpectationResult"] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # why this table fails the day (one line each)
    previous_rows: int | None = None  # rows of the day's partition landed before this run (None: none)
    kept_previous: bool = False  # the delivery failed and the previously landed partition was kept
    unknown_entities: dict[str, int] = field(default_factory=dict)  # impressions: user_id/ad_id -> rows
    exposure_not_growing: int = 0  # impressions: rows whose exposure_index <= the pair's landed maximum
    landed_path: str | None = None
    quarantine_path: str | None = None

    @property
    def expectations_passed(self) -> bool:
        return all(e.success for e in self.expectations)

    @property
    def quarantine_rate(self) -> float:
        """Quarantined share of this table's rows that arrived."""
        return self.rows_quarantined / self.rows_in if self.rows_in else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "files_read": list(self.files_read),
            "files_empty": list(self.files_empty),
            "files_failed": dict(self.files_failed),
            "rows_in": self.rows_in,
            "rows_landed": self.rows_landed,
            "rows_quarantined": self.rows_quarantined,
            "reasons": dict(self.reasons),
            "ignored_columns": {k: list(v) for k, v in self.ignored_columns.items()},
            "kept_extra_columns": list(self.kept_extra_columns),
            "expectations": [e.to_dict() for e in self.expectations],
            "expectations_passed": self.expectations_passed,
            "quarantine_rate": self.quarantine_rate,
            "warnings": list(self.warnings),
            "errors": list(self.errors),
            "failures": list(self.failures),
            "previous_rows": self.previous_rows,
            "kept_previous": self.kept_previous,
            "unknown_entities": dict(self.unknown_entities),
            "exposure_not_growing": self.exposure_not_growing,
            "landed_path": self.landed_path,
            "quarantine_path": self.quarantine_path,
        }


@dataclass
class IngestReport:
    """The outcome of :func:`ingest_day`; ``to_dict()`` is plain JSON."""

    source: str
    day: dt.date
    tasks: list[str]
    ingested_at: dt.datetime
    seconds: float = 0.0
    tables: dict[str, TableReport] = field(default_factory=dict)
    report_path: str | None = None  # where the JSON report was written
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (bench/ingest_throughput.py)
    index: dict[str, int] = field(default_factory=dict)  # what syncing the ingest index re-indexed

    @property
    def failures(self) -> list[str]:
        """Why the day fails (empty: it passed); see docs/ingestion.md, 'When a day fails'."""
        return [f for t in self.tables.values() for f in t.failures]

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    @property
    def kept_previous(self) -> bool:
        """The delivery failed and did not replace the day already landed."""
        return any(t.kept_previous for t in self.tables.values())

    @property
    def status(self) -> str:
        return "ok" if not self.failed else "kept_previous" if self.kept_previous else "failed"

    @property
    def rows_in(self) -> int:
        return sum(t.rows_in for t in self.tables.values())

    @property
    def rows_landed(self) -> int:
        return sum(t.rows_landed for t in self.tables.values())

    @property
    def rows_quarantined(self) -> int:
        return sum(t.rows_quarantined for t in self.tables.values())

    @property
    def files_failed(self) -> int:
        return sum(len(t.files_failed) for t in self.tables.values())

    @property
    def quarantine_rates(self) -> dict[str, float]:
        return {name: t.quarantine_rate for name, t in self.tables.items()}

    @property
    def quarantine_rate(self) -> float:
        """The largest per-table quarantined share: a users table lost wholesale shows as 1.0 here, it
        cannot hide behind a clean impressions table (per-table rates: ``quarantine_rates``)."""
        return max(self.quarantine_rates.values(), default=0.0)

    @property
    def expectations_passed(self) -> bool:
        return all(t.expectations_passed for t in self.tables.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "day": self.day.isoformat(),
            "tasks": list(self.tasks),
            "ingested_at": self.ingested_at.isoformat(),
            "seconds": round(self.seconds, 3),
            "rows_in": self.rows_in,
            "rows_landed": self.rows_landed,
            "rows_quarantined": self.rows_quarantined,
            "files_failed": self.files_failed,
            "quarantine_rate": self.quarantine_rate,
            "quarantine_rates": self.quarantine_rates,
            "expectations_passed": self.expectations_passed,
            "status": self.status,
            "failed": self.failed,
            "failures": self.failures,
            "kept_previous": self.kept_previous,
            "report_path": self.report_path,
            "index": dict(self.index),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "tables": {name: t.to_dict() for name, t in self.tables.items()},
        }

    def one_line(self) -> str:
        """The outcome in one line: the first failure (file, reason), the counts, what happened to the
        landed day, and where the full JSON report is."""
        counts = ", ".join(f"{t.table} {t.rows_in:,} in/{t.rows_landed:,} landed/{t.rows_quarantined:,} quarantined"
                           + (f"/{len(t.files_failed)} unreadable file(s)" if t.files_failed else "")
                           for t in self.tables.values())
        where = f"; report: {self.report_path}" if self.report_path else ""
        if not self.failed:
            return f"ingest {self.source} {self.day} ok: {counts}{where}"
        first = single_line(self.failures[0])
        more = f" (+{len(self.failures) - 1} more problem(s))" if len(self.failures) > 1 else ""
        kept = ("; the day already landed was kept, the delivery is in quarantine" if self.kept_previous
                else "; nothing had landed for the day before")
        return f"ingest {self.source} {self.day} FAILED: {first}{more}; {counts}{kept}{where}"

    def summary(self) -> str:
        """A few readable lines: per table rows in / landed / quarantined, reasons, failed expectations."""
        lines = [f"ingest {self.source} {self.day}: {self.rows_landed:,} rows landed, "
                 f"{self.rows_quarantined:,} quarantined, {self.files_failed} unreadable files "
                 f"({self.seconds:.1f} s); expectations {'passed' if self.expectations_passed else 'FAILED'}"]
        for t in self.tables.values():
            reasons = ", ".join(f"{r} {n:,}" for r, n in t.reasons.items()) or "none"
            lines.append(f"  {t.table}: in {t.rows_in:,}, landed {t.rows_landed:,}, "
                         f"quarantined {t.rows_quarantined:,} ({t.quarantine_rate:.1%}; reasons: {reasons})")
            lines += [f"    FAILED {e.sentence()}" for e in t.expectations if not e.success]
            lines += [f"    DAY FAILS: {f}" for f in t.failures]
        return "\n".join(lines)


def single_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace (library errors span lines) and cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""The scoring service's event journal: what ``POST /events`` received, written ahead of the in-memory
behaviour state so that a restarted service gets it back (issue 14; docs/serving.md, "POST /events").

Events are appended as JSON lines to ``<home>/serving/events/date=<YYYY-MM-DD>.jsonl`` (the events' UTC day)
and flushed before the state is updated: a process killed at any point has either not answered (the client
retries; pushes are idempotent per ``(request_id, ad_id)``) or has the events on disk. A flush survives a killed
process, not a power cut (no fsync per request: it would cost milliseconds on every push). On start the
service re-pushes the journal's events at or after the online store's ``as_of`` (earlier ones are in the log
the state was seeded from). A line cut short by a kill is skipped and counted. Days more than
``KEEP_DAYS`` before ``as_of`` are deleted: their events have reached the offline log by then, or never will.
Reading is vectorised (``pyarrow.json``); MLflow, Feast and Prefect have nothing for this.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings

KEEP_DAYS = 2


def journal_dir(settings: "Settings") -> Path:
    return settings.home / "serving" / "events"


class EventJournal:
    """Append-only JSON-lines files of pushed events, one per UTC day of the events."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()

    def append(self, events: "pa.Table") -> int:
        """Write ``events`` (one JSON line each, times in ISO 8601 UTC) and flush; returns the lines written."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if events.num_rows == 0:
            return 0
        times = events.column("event_time").cast(pa.timestamp("us", tz="UTC"))
        days = pc.strftime(times, format="%Y-%m-%d").to_pylist()
        # %S prints the microseconds too: 2026-11-08T09:15:02.123456Z
        rows = events.set_column(events.column_names.index("event_time"), "event_time",
                                 pc.strftime(times, format="%Y-%m-%dT%H:%M:%SZ")).to_pylist()
        by_day: dict[str, list[str]] = {}
        for day, row in zip(days, rows):
            by_day.setdefault(day, []).append(json.dumps(row, default=str))
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            for day, lines in by_day.items():
                with open(self.folder / f"date={day}.jsonl", "a", encoding="utf-8") as fh:
                    fh.write("\n".join(lines) + "\n")
                    fh.flush()
        return len(rows)

    def read_since(self, since: dt.datetime) -> tuple["pa.Table | None", int]:
        """The journal's events with ``event_time >= since`` as one table, and the count of lines skipped
        (a line cut short by a kill)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.json as pj

        tables, skipped = [], 0
        for path in sorted(self.folder.glob("date=*.jsonl")) if self.folder.is_dir() else []:
            day = dt.date.fromisoformat(path.stem.removeprefix("date="))
            if day < since.date():
                continue
            raw = path.read_bytes()
            complete = raw[: raw.rfind(b"\n") + 1]
            skipped += int(len(raw) > len(complete))
            if not complete:
                continue
            table = pj.read_json(io.BytesIO(complete))
            times = table.column("event_time").cast(pa.timestamp("us", tz="UTC"))  # ISO 8601 with its Z
            table = table.set_column(table.column_names.index("event_time"), "event_time", times)
            tables.append(table.filter(pc.greater_equal(table.column("event_time"),
                                                        pa.scalar(since, pa.timestamp("us", tz="UTC")))))
        if not tables:
            return None, skipped
        return pa.concat_tables(tables, promote_options="permissive"), skipped

    def prune(self, as_of: dt.datetime) -> list[str]:
        """Delete the files of days more than ``KEEP_DAYS`` before ``as_of``; returns their names."""
        gone = []
        for path in sorted(self.folder.glob("date=*.jsonl")) if self.folder.is_dir() else []:
            day = dt.date.fromisoformat(path.stem.removeprefix("date="))
            if day < as_of.date() - dt.timedelta(days=KEEP_DAYS):
                path.unlink(missing_ok=True)
                gone.append(path.name)
        return gone


def replay(journal: EventJournal, state: Any, as_of: dt.datetime) -> dict[str, Any]:
    """Push the journal's events at or after ``as_of`` into ``state``; what happened, for the service's status."""
    events, skipped = journal.read_since(as_of)
    accepted = int(state.push(events)) if events is not None and events.num_rows else 0
    return {"replayed": 0 if events is None else events.num_rows, "accepted": accepted, "cut_lines": skipped,
            "pruned": journal.prune(as_of)}

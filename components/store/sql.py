"""The offline store's SQL toolkit: the one DuckDB connection helper, the quoting helpers for SQL text,
and the listers of day partitions (``<root>/<table>/date=YYYY-MM-DD/``).

Every DuckDB query over the stores opens its connection with :func:`connect` (in-memory, UTC), quotes
paths and names with :func:`sql_str` / :func:`sql_ident`, and finds its day partitions with
:func:`day_partitions` (folders), :func:`partition_files` (one named file per day) or
:func:`partition_globs` (DuckDB ``*.parquet`` globs of the days that hold parquet). Temp folders of a
write in progress start with a dot (components/storage.py) and never match ``date=YYYY-MM-DD``.

A day is complete or invisible (docs/state.md, "Day commit markers"): under a store root with a
``_days/`` folder (the offline store, the features), :func:`day_partitions` lists a day only when its
commit marker ``<root>/_days/<day>.json`` exists (written last by components/store/days.py, after every
table or view of the day); a day with partitions but no marker is half-written: left out, with a warning
naming it. A view added to a committed day later (the representations' views) is listed once the day's
marker, rewritten by that step, names it. A root without ``_days/`` (a home written before the markers, or
another folder) lists every day.

Light on purpose: DuckDB is imported inside :func:`connect`, so the CLI can import this module cheaply.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import duckdb

DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")  # a day partition's folder name
MARKER_DIR = "_days"  # <root>/_days/<YYYY-MM-DD>.json: the day's commit marker
log = logging.getLogger(__name__)
_warned: set[tuple[str, dt.date]] = set()  # (part folder, day) already reported as half-written by this process


def connect() -> "duckdb.DuckDBPyConnection":
    """An in-memory DuckDB connection in UTC (so TIMESTAMPTZ round-trips to Arrow as timestamp[us, UTC])."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def sql_str(value: Path | str) -> str:
    """A SQL string literal: ``'it''s'``."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    """A quoted SQL identifier (inner double quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def sql_list(values: Sequence[Path | str]) -> str:
    """A SQL list of string literals, e.g. the files or globs for ``read_parquet([...])``."""
    return "[" + ", ".join(sql_str(v) for v in values) + "]"


def sql_ts(value: dt.datetime) -> str:
    """A ``TIMESTAMPTZ`` literal of an aware datetime."""
    return f"TIMESTAMPTZ '{value.isoformat()}'"


def _marker_files(root: Path) -> dict[str, str] | None:
    """``{YYYY-MM-DD: marker path}`` from one ``scandir`` of ``<root>/_days``; None without that folder."""
    try:
        entries = os.scandir(root / MARKER_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with entries:
        return {e.name[:-5]: e.path for e in entries if e.name.endswith(".json") and not e.name.startswith(".")}


def committed_days(root: Path, part: str) -> set[str] | None:
    """The days (``YYYY-MM-DD``) of the store ``root`` whose commit marker commits ``part`` (a table or
    view; :func:`marker_commits`); None when the store has no marker folder (never written with markers:
    every day counts as committed). One ``scandir`` of ``<root>/_days`` and one small JSON read per marker."""
    markers = _marker_files(root)
    return None if markers is None else {d for d, path in markers.items() if marker_commits(path, part)}


def marker_commits(path: str, part: str) -> bool:
    """Whether the marker at ``path`` commits ``part``: a marker written with ``"strict": true``
    (components/store/days.py) commits the parts it names, an older or migrated one every part of its day."""
    try:
        marker = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # replaced or removed while listing: its day is being re-done
        return False
    return not marker.get("strict") or part in marker.get("parts", {})


def half_written_message(root: Path, day: dt.date, part: str | None = None) -> str:
    """One line on a day of ``root`` with partitions but no commit marker: which parts it has and which
    ones the newest committed day has that it lacks. With ``part``: on a part of a committed day that the
    day's marker does not name (written after the marker, by a step that was cut short or has not run)."""
    if part is not None and (root / MARKER_DIR / f"{day.isoformat()}.json").is_file():
        return (f"{part} of day {day} in {root} is not committed (the day's marker {MARKER_DIR}/{day}.json does "
                "not name it): readers leave it out until the step that writes it re-runs the day")
    present = sorted(p.name for p in root.iterdir() if not p.name.startswith(("_", "."))
                     and (p / f"date={day.isoformat()}").is_dir()) if root.is_dir() else []
    markers = sorted((root / MARKER_DIR).glob("[0-9]*.json"))
    expected = list(json.loads(markers[-1].read_text()).get("parts", {})) if markers else []
    missing = [p for p in expected if p not in present]
    return (f"day {day} of {root} is half-written (no commit marker {MARKER_DIR}/{day}.json; has "
            f"{', '.join(present) or 'nothing'}{'; missing ' + ', '.join(missing) if missing else ''}): "
            "readers leave it out until its step (ingest or features) re-runs the day")


def day_partitions(folder: Path, start: dt.date | None = None, end: dt.date | None = None,
                   all_days: bool = False) -> list[tuple[dt.date, Path]]:
    """(day, folder) of every ``date=YYYY-MM-DD`` folder directly under ``folder`` with
    ``start <= day <= end`` (either bound None: open), oldest first; [] when ``folder`` does not exist.
    Days without a commit marker in ``folder.parent/_days`` (when that exists) are left out, with a
    warning, unless ``all_days`` (the writer's own bookkeeping, e.g. the ingest index)."""
    out = []
    markers = None if all_days else _marker_files(folder.parent)  # only the listed days' markers are read
    try:
        entries = os.scandir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return out
    with entries:
        for entry in entries:
            m = DATE_DIR.match(entry.name)
            if not m or not entry.is_dir():
                continue  # temp folders of a write in progress, stray files
            try:
                day = dt.date.fromisoformat(m.group(1))
            except ValueError:
                continue  # date=2026-13-40
            if (start and day < start) or (end and day > end):
                continue
            committed = markers is None or (m.group(1) in markers
                                            and marker_commits(markers[m.group(1)], folder.name))
            if not committed:
                if (str(folder), day) not in _warned:
                    _warned.add((str(folder), day))
                    log.warning(half_written_message(folder.parent, day, folder.name))
                continue
            out.append((day, Path(entry.path)))
    return sorted(out)


def partition_files(folder: Path, name: str, start: dt.date | None = None,
                    end: dt.date | None = None) -> list[tuple[dt.date, Path]]:
    """(day, file) of the day partitions under ``folder`` in ``start..end`` that hold the file ``name``."""
    return [(day, part / name) for day, part in day_partitions(folder, start, end) if (part / name).is_file()]


def partition_globs(root: Path, table: str, first: dt.date | None, last: dt.date | None) -> list[str]:
    """DuckDB globs ``<root>/<table>/date=D/*.parquet`` of the day partitions in ``first..last`` (None:
    open) that hold a parquet file (DuckDB errors on a glob that matches nothing, so such days are left out)."""
    return [str(part / "*.parquet") for _, part in day_partitions(root / table, first, last)
            if any(part.glob("*.parquet"))]


def view_globs(spec_path: str) -> list[str]:
    """The committed day partitions' globs of a feature view whose spec path is the glob
    ``<features>/<view>/date=*/*.parquet`` (Feast's FileSource reads that glob as a whole; the DuckDB readers
    read only committed days, see :func:`day_partitions`)."""
    view = Path(spec_path).parents[1]
    return partition_globs(view.parent, view.name, None, None)

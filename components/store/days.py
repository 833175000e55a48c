"""Per-day commit markers: a day of the offline store or of the features is complete or invisible.

A day is several partitions (ingest: the impressions, ads and users tables; features: five views and the
interest views), each swapped in atomically (components/storage.py), but not all at once. So the writer of
a day calls :func:`begin_day` first (it removes the day's marker, so a day being re-done, and a crash in the
middle of it, is invisible), writes every partition, and calls :func:`commit_day` LAST: it writes
``<root>/_days/<YYYY-MM-DD>.json`` with what was committed (per table or view: its files, rows from the
parquet footer and bytes). Readers list days through ``components.store.sql.day_partitions``, which leaves
out a day without a marker and warns, naming it; :func:`require_day` is the same check for a step that
needs one day (``features`` of a half-ingested day stops with a one-line error instead of building
0 profiles). The step that writes the day re-does it on its next run, even when its inputs are unchanged.

A marker names the parts it commits (``"strict": true``), and readers list a part of a day only when the
day's marker names it. So a step that adds parts to a committed day (the representations' views, written
after the feature views) goes through :func:`extending_day`: the marker is removed before the new parts
and rewritten, naming the old and the new ones, after the last; a crash in between leaves the whole day
invisible, and a re-done feature day hides its old representation views until they are rebuilt.

Migration: a store written before the markers has no ``_days/`` folder, and readers see every day as
before. The first :func:`begin_day` on it writes a marker for each day whose every expected part has its
partition folder (logged), builds ``_days/`` beside the store and renames it into place; from then on the
markers decide. Cost: one ``scandir`` of ``_days`` per listing, one footer read per part at commit; no
per-row work. See docs/state.md and docs/reliability/days.md.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from components.storage import file_lock, write_json_atomic
from components.store.sql import DATE_DIR, MARKER_DIR, half_written_message

log = logging.getLogger(__name__)


class HalfWrittenDay(FileNotFoundError):
    """A day a step needs has partitions but no commit marker (a write of the day was interrupted)."""


def marker_path(root: Path, day: dt.date) -> Path:
    """``<root>/_days/<YYYY-MM-DD>.json``."""
    return root / MARKER_DIR / f"{day.isoformat()}.json"


def is_committed(root: Path, day: dt.date) -> bool:
    """Whether ``day`` of the store ``root`` is visible: its marker exists, or the store has no markers yet."""
    return not (root / MARKER_DIR).is_dir() or marker_path(root, day).is_file()


def require_day(root: Path, day: dt.date, rerun: str) -> None:
    """Raise :class:`HalfWrittenDay` (one line, naming the day, what it lacks and ``rerun``) when ``day``
    has partitions under ``root`` but no commit marker (a day with no partition at all is not raised on:
    it is simply missing, which the caller reports its own way)."""
    if is_committed(root, day):
        return
    folder = f"date={day.isoformat()}"
    if any((p / folder).is_dir() for p in root.iterdir() if not p.name.startswith(("_", "."))):
        raise HalfWrittenDay(f"{half_written_message(root, day)}; run {rerun}")


def _part_record(folder: Path) -> dict:
    import pyarrow.parquet as pq

    files = sorted(p for p in folder.glob("*.parquet"))
    return {"files": [p.name for p in files],
            "rows": sum(pq.ParquetFile(p).metadata.num_rows for p in files),
            "bytes": sum(p.stat().st_size for p in files)}


def _marker(root: Path, day: dt.date, parts: Iterable[str], strict: bool = True) -> dict:
    """The marker's content. ``strict``: it commits the parts it names and no other (readers check,
    components/store/sql.py ``marker_commits``); a migrated marker is not strict (every part of its day)."""
    folder = f"date={day.isoformat()}"
    return {"day": day.isoformat(), "strict": strict,
            "parts": {name: _part_record(root / name / folder) for name in parts}}


def ensure_markers(root: Path, parts: Iterable[str]) -> None:
    """Migrate a store written before the markers (no ``<root>/_days``): mark each day whose every part of
    ``parts`` has its partition folder as committed, then put ``_days/`` in place in one rename."""
    if (root / MARKER_DIR).is_dir():
        return
    parts = list(parts)
    days: dict[str, set[str]] = {}
    for name in parts:
        for entry in (root / name).iterdir() if (root / name).is_dir() else ():
            if DATE_DIR.match(entry.name) and entry.is_dir():
                days.setdefault(entry.name[5:], set()).add(name)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{MARKER_DIR}.tmp-", dir=root))
    complete = sorted(d for d, have in days.items() if have == set(parts))
    try:
        for d in complete:
            day = dt.date.fromisoformat(d)
            write_json_atomic(tmp / f"{d}.json", {**_marker(root, day, parts, strict=False), "migrated": True})
        os.rename(tmp, root / MARKER_DIR)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / MARKER_DIR).is_dir():  # another writer migrating at the same time is fine
            raise
    if days:
        log.info("%s: commit markers introduced; %d complete day(s) marked as committed%s", root, len(complete),
                 f", {len(days) - len(complete)} incomplete day(s) left invisible until re-run"
                 if len(days) > len(complete) else "")


def begin_day(root: Path, day: dt.date, parts: Iterable[str]) -> None:
    """Before (re-)writing ``day``: migrate the store if needed and remove the day's marker (first, so a
    crash from here on leaves the day invisible)."""
    ensure_markers(root, parts)
    marker_path(root, day).unlink(missing_ok=True)
    _fsync_dir(root / MARKER_DIR)


def commit_day(root: Path, day: dt.date, parts: Iterable[str]) -> None:
    """After every part of ``day`` is in place: write its marker (atomically), making the day visible."""
    write_json_atomic(marker_path(root, day), _marker(root, day, parts))
    _fsync_dir(root / MARKER_DIR)


def day_lock(root: Path, day: dt.date) -> AbstractContextManager[None]:
    """An exclusive lock on ``<root>/.locks/<day>.lock`` (:func:`components.storage.file_lock`) while a day's
    parts and marker are written: two commands writing the same day at once (a daily beside a backfill) take
    turns instead of one removing the marker the other is about to rewrite. Readers take no lock (they see
    the day or nothing)."""
    return file_lock(root / ".locks" / f"{day.isoformat()}.lock")


@contextmanager
def extending_day(root: Path, day: dt.date, rerun: str) -> Iterator[list[str]]:
    """Add parts to a committed day (the representations' views to the feature day): the day's marker is
    removed first, so a crash between the new parts leaves the whole day invisible, and written again on
    exit naming its old parts and the ones the caller appended to the yielded list, under :func:`day_lock`. Raises
    :class:`HalfWrittenDay` (naming ``rerun``) when the day has no marker; a store without markers is
    written as before."""
    if not (root / MARKER_DIR).is_dir():
        yield []
        return
    with day_lock(root, day):
        path = marker_path(root, day)
        if not path.is_file():
            raise HalfWrittenDay(f"{half_written_message(root, day)}; run {rerun} first")
        parts = list(json.loads(path.read_text()).get("parts", {}))
        path.unlink()
        _fsync_dir(root / MARKER_DIR)
        added: list[str] = []
        yield added
        commit_day(root, day, dict.fromkeys([*parts, *added]))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


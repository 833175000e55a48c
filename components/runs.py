"""Run bookkeeping: per-day stage manifests (what makes re-runs idempotent) and run summaries.

A stage of a day (deliver, ingest, features) records a manifest with a fingerprint of its inputs and
configuration. A re-run whose fingerprint matches skips the stage and changes nothing on disk; a changed
input or config (or ``force``) runs it again, replacing that day's outputs.

Run summaries are JSON files under ``<home>/runs/``: stage timings, row counts, quarantine counts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import Settings
from components.storage import json_default, write_json_atomic


def fingerprint_files(paths: Iterable[Path], extra: Any = None) -> str:
    """sha256 over the files' partition-relative paths and contents, plus any JSON-able ``extra`` (config)."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update("/".join(p.parts[-3:]).encode())  # <table>/date=D/<file>: where it sits, not just its name
        h.update(b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    h.update(json.dumps(extra, sort_keys=True, default=json_default).encode())
    return h.hexdigest()


DATA_SUFFIXES = (".parquet", ".csv")


def files_under(folder: Path, suffixes: tuple[str, ...] = DATA_SUFFIXES) -> list[Path]:
    """The data files directly in ``folder``, by name: any case of the extension (``part-1.PARQUET``
    counts), hidden files (temp files of a write in progress) left out."""
    if not folder.is_dir():
        return []
    wanted = tuple(s.lower() for s in suffixes)
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in wanted and not p.name.startswith(".") and p.is_file())


@dataclass
class StageManifest:
    """Fingerprints of what each (stage, day) last ran on: ``<home>/manifests/<stage>/<day>.json``."""

    settings: Settings
    stage: str

    def _path(self, day: dt.date) -> Path:
        return self.settings.home / "manifests" / self.stage / f"{day.isoformat()}.json"

    def read(self, day: dt.date) -> dict[str, Any] | None:
        p = self._path(day)
        return json.loads(p.read_text()) if p.is_file() else None

    def forget(self, day: dt.date) -> None:
        """Drop the day's record, so the next run does the stage again (e.g. after it failed)."""
        self._path(day).unlink(missing_ok=True)

    def is_current(self, day: dt.date, fingerprint: str) -> bool:
        m = self.read(day)
        return m is not None and m.get("fingerprint") == fingerprint

    def days(self) -> list[dt.date]:
        """The days this stage has a record for, oldest first."""
        folder = self.settings.home / "manifests" / self.stage
        if not folder.is_dir():
            return []
        out = []
        for p in folder.glob("*.json"):
            try:
                out.append(dt.date.fromisoformat(p.stem))
            except ValueError:
                continue
        return sorted(out)

    def record(self, day: dt.date, fingerprint: str, result: dict[str, Any]) -> None:
        write_json_atomic(
            self._path(day),
            {"stage": self.stage, "day": day, "fingerprint": fingerprint, "result": result,
             "finished_at": dt.datetime.now(dt.timezone.utc)},
        )


@dataclass
class RunSummary:
    """Collects stage timings and counts of one flow run and writes them as JSON."""

    flow: str
    parameters: dict[str, Any]
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    stages: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"
    error: str | None = None

    @contextmanager
    def stage(self, name: str, day: dt.date | None = None) -> Iterator[dict[str, Any]]:
        """Time a stage; the yielded dict is filled by the caller with counts and ends up in the summary."""
        rec: dict[str, Any] = {"stage": name, "day": day}
        t0 = time.perf_counter()
        try:
            yield rec
            rec.setdefault("status", "ok")
        except BaseException as exc:
            rec["status"] = "failed"
            rec["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            rec["seconds"] = round(time.perf_counter() - t0, 3)
            self.stages.append(rec)

    def add(self, rec: dict[str, Any]) -> None:
        self.stages.append(rec)

    def to_dict(self) -> dict[str, Any]:
        finished = dt.datetime.now(dt.timezone.utc)
        return {
            "flow": self.flow,
            "parameters": self.parameters,
            "status": self.status,
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": finished,
            "seconds": round((finished - self.started_at).total_seconds(), 3),
            "stages": self.stages,
        }

    def write(self, settings: Settings) -> Path:
        stamp = self.started_at.strftime("%Y%m%dT%H%M%S%fZ")
        path = settings.runs_dir / f"{stamp}-{self.flow}.json"
        write_json_atomic(path, self.to_dict())
        return path


def latest_summaries(settings: Settings, n: int = 10) -> list[dict[str, Any]]:
    files = sorted(settings.runs_dir.glob("*.json"))[-n:] if settings.runs_dir.is_dir() else []
    return [json.loads(p.read_text()) for p in files]

"""Source adapters: each turns one kind of raw log into the data contract (components/schemas.py) and
drops one day at a time into the landing zone ``<home>/raw/<source>/<table>/date=YYYY-MM-DD/``.

Every adapter has the same small surface (``Source``) so flows never special-case a source.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from components.config import Settings


class Source(Protocol):
    name: str
    tasks: tuple[str, ...]  # label columns it delivers, in order (Settings.tasks)

    def available_days(self) -> tuple[dt.date, dt.date]:
        """First and last day (inclusive) this source can deliver."""
        ...

    def deliver(self, day: dt.date) -> dict[str, int]:
        """Write the day's raw files for every table (overwriting that day), return rows per table."""
        ...


_FILES_CACHE: dict[str, Source] = {}
_FILES_LOCK = threading.Lock()


def get_source(settings: "Settings") -> Source:
    """The configured source (``pipeline.source``). The files source is cached per process while its
    configuration and input files are unchanged, so a backfill parses the log once."""
    name = settings.pipeline.source
    if name == "files":
        from components.sources.files import FilesSource, input_fingerprint

        key = f"{settings.home}|{input_fingerprint(settings)}"
        with _FILES_LOCK:
            if key not in _FILES_CACHE:
                _FILES_CACHE.clear()
                _FILES_CACHE[key] = FilesSource(settings)
            return _FILES_CACHE[key]
    sampling = settings.sources.model_dump(exclude_none=True)
    if name == "simulator":
        from components.sources.simulator import SimulatorSource

        return SimulatorSource(settings)
    if name == "taobao":
        from components.sources.taobao import TaobaoSource

        return TaobaoSource(settings, **sampling)
    if name == "movielens":
        from components.sources.movielens import MovieLensSource

        return MovieLensSource(settings, **sampling)
    raise ValueError(f"unknown source {name!r}; expected simulator, taobao, movielens or files")

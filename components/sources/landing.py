"""The landing zone: ``write_raw_day`` drops one day's raw tables into
``<home>/raw/<source>/<table>/date=YYYY-MM-DD/part-0.parquet``, each file written atomically
(``storage.write_parquet_atomic``), so a reader never sees half a file and re-delivering a day overwrites
it. A marker in each partition names the files the source wrote; a partition holding any other data file
is refused (``ForeignFilesError``), so a source never overwrites or mixes with files it did not write.

The machinery that turns a positives-only interaction log into a contract impression log (negative
sampling, exposure index, request ids, day slicing) is in components/sources/real_log.py.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from components.faults import declare, fault_point
from components.schemas import day_dir
from components.storage import write_parquet_atomic

if TYPE_CHECKING:
    from components.config import Settings

_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DATA_SUFFIXES = (".parquet", ".csv")


DELIVERY_MARKER = ".adsrec-delivery.json"  # in each landing partition: the files the source wrote there

declare("deliver.after_first_table")


class ForeignFilesError(ValueError):
    """A landing partition holds data files its source did not write: it will not overwrite or mix them."""


def _data_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in _DATA_SUFFIXES and not p.name.startswith("."))


def _owned(folder: Path) -> dict[str, dict[str, int]]:
    """What the source wrote into ``folder`` last time (name -> size, mtime_ns), from its marker. A
    partition from before markers existed holding only ``part-0.parquet`` counts as the source's."""
    import json

    marker = folder / DELIVERY_MARKER
    if marker.is_file():
        return json.loads(marker.read_text()).get("files", {})
    files = _data_files(folder)
    if [p.name for p in files] == ["part-0.parquet"]:
        st = files[0].stat()
        return {"part-0.parquet": {"size": st.st_size, "mtime_ns": st.st_mtime_ns}}
    return {}


def foreign_files(folder: Path) -> list[Path]:
    """Data files in a landing partition that its source did not write (or that changed since)."""
    own = _owned(folder)
    out = []
    for p in _data_files(folder):
        st, rec = p.stat(), own.get(p.name)
        if rec is None or rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
            out.append(p)
    return out


def write_raw_day(
    settings: "Settings", source_name: str, day: dt.date, tables: dict[str, pa.Table]
) -> dict[str, int]:
    """Write each table to ``day_dir(settings.raw_dir / source_name, table, day) / "part-0.parquet"``.

    The landing zone belongs to the source: each partition carries a marker naming the files the
    source wrote. A partition holding any other data file (or one changed since) is refused with
    ``ForeignFilesError`` before anything is written, so a source never overwrites or mixes with files
    it did not write. Each file is written under a temporary dot-name and ``os.replace``d
    (``storage.write_parquet_atomic``); files of the source's earlier delivery other than the new one
    are removed, so the partition holds exactly this delivery. The delivered day is one commit
    (components/store/days.py under the source's landing root): its marker is removed before the first
    table and written after the last, so a delivery cut short is invisible to ``ingest`` (which names it)
    and re-done by the next ``deliver``. Returns rows per table.
    """
    import json

    from components.store.days import begin_day, commit_day

    if not _TABLE_NAME.match(source_name):
        raise ValueError(f"source name {source_name!r} is not a plain lower-case identifier")
    root = settings.raw_dir / source_name
    for table_name in tables:
        if not _TABLE_NAME.match(table_name):
            raise ValueError(f"table name {table_name!r} is not a plain lower-case identifier")
        foreign = foreign_files(day_dir(root, table_name, day))
        if foreign:
            raise ForeignFilesError(
                f"{foreign[0].parent} holds {', '.join(p.name for p in foreign)}, which source {source_name!r} did "
                f"not write; it will not overwrite or mix with them. Move them away; to ingest a log of your own, "
                f"use pipeline.source: files (docs/your-own-logs.md)")
    begin_day(root, day, tables)
    rows: dict[str, int] = {}
    for table_name, table in tables.items():
        if rows:
            fault_point("deliver.after_first_table")
        folder = day_dir(root, table_name, day)
        final = folder / "part-0.parquet"
        previous = _owned(folder)
        write_parquet_atomic(table, final)
        for name in previous:
            if name != final.name and (folder / name).is_file():
                (folder / name).unlink()
        st = final.stat()
        marker = {"source": source_name, "files": {final.name: {"size": st.st_size, "mtime_ns": st.st_mtime_ns}}}
        tmp = folder / f".{DELIVERY_MARKER}.tmp"
        tmp.write_text(json.dumps(marker))
        os.replace(tmp, folder / DELIVERY_MARKER)
        rows[table_name] = table.num_rows
    commit_day(root, day, tables)
    return rows

"""``adsrec doctor``: verify a home end to end and say what would repair each problem (issue 14;
docs/reliability/registry.md, docs/state.md).

Reads only; changes nothing. :func:`run_checks` returns one :class:`Check` per area that is fine and one
per problem found:

- the offline store, feature views and representations: every parquet file's footer reads; every day has
  all of its tables (all of the core views); where per-day commit markers exist (``<root>/_days/<day>.json``),
  a day without one is a half-written day (homes without marker folders are not judged on this);
- the feature manifest (``features/_views.json``), the vector stores and semantic-ID codes the newest
  representations step wrote, the online store's state file against its SQLite file;
- the registry: the database opens, every version's logged model is there, every alias points at an
  existing version whose model is there, and no run is left ``RUNNING`` by a killed process.

Costs one footer read per parquet file and one folder listing per registered version.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.config import Settings

DAY_PREFIX = "date="
MARKER_DIR = "_days"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table: ``area`` (offline, features, ...), ``subject`` (what was looked
    at), ``ok``, ``detail`` (what was found) and ``repair`` (what would fix it; empty when ok)."""

    area: str
    subject: str
    ok: bool
    detail: str
    repair: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _visible(path: Path) -> bool:
    """Not a dot-name or ``_``-name (temp partitions of an atomic swap, indexes, markers)."""
    return not path.name.startswith((".", "_"))


def _partitions(table_dir: Path) -> dict[str, Path]:
    """``{YYYY-MM-DD: folder}`` of a table's ``date=`` partitions."""
    if not table_dir.is_dir():
        return {}
    return {p.name[len(DAY_PREFIX):]: p for p in table_dir.iterdir()
            if p.is_dir() and p.name.startswith(DAY_PREFIX)}


def _tables(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and _visible(p)) if root.is_dir() else []


def _data_files(folder: Path) -> list[Path]:
    """The parquet files under ``folder``, none inside a dot- or ``_``-folder."""
    return sorted(f for f in folder.rglob("*.parquet")
                  if not any(p.startswith((".", "_")) for p in f.relative_to(folder).parts))


def parquet_checks(area: str, root: Path, repair: str) -> list[Check]:
    """Every parquet file under ``root`` (dot- and ``_``-folders left out) has a readable footer, and every
    ``date=`` partition holds one. ``repair`` is formatted with ``day``."""
    import pyarrow.parquet as pq

    if not root.is_dir():
        return [Check(area, str(root), True, "absent (nothing written yet)")]
    problems = [Check(area, str(part), False, "partition holds no data file", repair.format(day=day))
                for table in _tables(root) for day, part in sorted(_partitions(table).items())
                if not _data_files(part)]
    files = _data_files(root)
    for f in files:
        try:
            pq.read_metadata(f)
        except Exception as exc:  # noqa: BLE001 - any unreadable footer is the finding
            day = next((q.name[len(DAY_PREFIX):] for q in f.parents if q.name.startswith(DAY_PREFIX)), "?")
            problems.append(Check(area, str(f), False, f"unreadable parquet ({_one_line(exc)})",
                                  repair.format(day=day)))
    return problems or [Check(area, str(root), True, f"{len(files)} parquet files readable")]


def day_completeness(area: str, root: Path, names: Iterable[str], what: str, repair: str) -> list[Check]:
    """Every day that one of ``names`` (tables or views under ``root``) has, all of them have."""
    days = {n: set(_partitions(root / n)) for n in names}
    every = set().union(*days.values()) if days else set()
    problems = []
    for day in sorted(every):
        missing = sorted(n for n, have in days.items() if day not in have)
        if missing and len(missing) < len(days):
            problems.append(Check(area, f"day {day}", False, f"half-written day: no {', '.join(missing)} {what}",
                                  repair.format(day=day)))
    return problems


def marker_checks(area: str, root: Path, repair: str) -> list[Check]:
    """Where ``root/_days/`` exists (per-day commit markers), every day with a partition has a marker."""
    markers = root / MARKER_DIR
    if not markers.is_dir():
        return []
    marked = {p.stem for p in markers.glob("*.json")}
    days = set().union(*(_partitions(t) for t in _tables(root))) if _tables(root) else set()
    out = [Check(area, f"day {day}", False, f"half-written day: partitions without a commit marker "
                                            f"({MARKER_DIR}/{day}.json)", repair.format(day=day))
           for day in sorted(days - marked)]
    from components.store.sql import committed_days

    for table in _tables(root):  # parts of a committed day that its (strict) marker does not name
        uncommitted = sorted((set(_partitions(table)) & marked) - (committed_days(root, table.name) or set()))
        out += [Check(area, f"{table.name} {day}", False, f"not committed: the day's marker does not name "
                      f"{table.name} (a step cut short after the day was committed)",
                      f"re-run the day: adsrec {'representations' if area == 'features' else 'ingest'} "
                      f"--date {day} --force") for day in uncommitted]
    return out


def offline_checks(settings: "Settings") -> list[Check]:
    root = settings.offline_dir
    repair = "re-run the day: adsrec ingest --date {day} --force"
    out = parquet_checks("offline", root, repair)
    out += day_completeness("offline", root, [t.name for t in _tables(root)], "partition", repair)
    return out + marker_checks("offline", root, repair)


def feature_checks(settings: "Settings") -> list[Check]:
    root = settings.features_dir
    repair = "rebuild the day: adsrec features --date {day} --force"
    out = parquet_checks("features", root, repair)
    manifest = root / "_views.json"
    if not _tables(root):
        return out
    try:
        views = json.loads(manifest.read_text())["views"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return out + [Check("features", str(manifest), False, f"feature manifest unreadable ({_one_line(exc)})",
                            "rebuild the newest day: adsrec features --date <day> --force")]
    out.append(Check("features", str(manifest), True, f"{len(views)} core views"))
    out += day_completeness("features", root, views, "view", repair)
    return out + marker_checks("features", root, repair)


def representation_checks(settings: "Settings") -> list[Check]:
    """The vector stores and semantic-ID codes the newest representations step says it wrote are there."""
    import pyarrow.parquet as pq

    from components.representations.semantic_ids import codes_path
    from components.representations.vector_store import vectors_path

    out = parquet_checks("embeddings", settings.embeddings_dir, "adsrec refresh-embeddings --date {day} --force")
    done = sorted((settings.home / "manifests" / "representations").glob("*.json"))
    if not done:
        return out
    try:
        result = json.loads(done[-1].read_text()).get("result") or {}
    except (OSError, ValueError) as exc:
        return out + [Check("embeddings", str(done[-1]), False, f"manifest unreadable ({_one_line(exc)})",
                            f"adsrec refresh-embeddings --date {done[-1].stem} --force")]
    expected = [(f"{k} vector store", vectors_path(settings, v["space"])) for k, v in sorted(result.items())
                if isinstance(v, dict) and isinstance(v.get("space"), str)]
    sid = result.get("semantic_ids")
    if isinstance(sid, dict) and "skipped" not in sid:
        expected.append(("semantic-ID codes", codes_path(settings)))
    for what, path in expected:
        try:
            rows = pq.read_metadata(path).num_rows
            out.append(Check("embeddings", str(path), True, f"{what}: {rows} rows"))
        except Exception as exc:  # noqa: BLE001
            out.append(Check("embeddings", str(path), False, f"{what} missing or unreadable ({_one_line(exc)})",
                             f"rebuild it: adsrec refresh-embeddings --date {done[-1].stem} --force"))
    return out


def online_store_checks(settings: "Settings") -> list[Check]:
    from components.serving.online_store import STATE_FILE, online_db_path

    db, state = online_db_path(settings), settings.feast_dir.expanduser().resolve() / STATE_FILE
    repair = "re-materialise: adsrec materialize"
    if not db.exists() and not state.exists():
        return [Check("online store", str(db.parent), True, "not materialised yet")]
    if not state.is_file():
        return [Check("online store", str(state), False, "state file missing beside the online store", repair)]
    if not db.is_file():
        return [Check("online store", str(db), False, f"online store database missing ({STATE_FILE} names one)",
                      repair)]
    try:
        as_of = json.loads(state.read_text()).get("as_of")
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            tables = con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        finally:
            con.close()
    except (OSError, ValueError, sqlite3.Error) as exc:
        return [Check("online store", str(db.parent), False, f"unreadable ({_one_line(exc)})", repair)]
    return [Check("online store", str(db), True, f"as of {as_of}, {tables} tables")]


def run_checks(settings: "Settings") -> list[Check]:
    """Every check of the home, in order: offline, features, embeddings, online store, registry."""
    from components.registry.health import registry_checks

    out = offline_checks(settings) + feature_checks(settings) + representation_checks(settings)
    out += online_store_checks(settings)
    out += [Check(*row) for row in registry_checks(settings)]
    return out


def checks_table(checks: list[Check]) -> str:
    """A fixed-width table: status, area, subject, detail, repair."""
    rows = [["status", "area", "subject", "detail", "repair"]]
    rows += [["ok" if c.ok else "PROBLEM", c.area, c.subject, c.detail, c.repair or "-"] for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r[:4], widths)), r[4]]).rstrip() for r in rows)

"""The file-backed Great Expectations project under ``ADSREC_HOME``: ``<home>/gx``.

What it holds (all GX's own layout, readable with ``gx.get_context(mode="file", project_root_dir=<home>)``):

- ``great_expectations.yml``: one pandas data source ``adsrec_ingest`` with a dataframe asset and a
  ``whole_batch`` batch definition per ingested table (impressions, ads, users); progress bars off;
- ``expectations/<table>_ingest.json``: the stored suite per table, built from ingestion's
  :class:`validation.expectations.BatchSpec`. The run window is a suite parameter (``$PARAMETER``), so
  the stored suite changes only when the spec does (new task names, label-rate bounds, columns);
- ``validation_definitions/<table>_ingest.json`` and ``checkpoints/<table>_ingest.json``: one checkpoint
  per table, whose ``UpdateDataDocsAction`` adds each run's result to the Data Docs;
- ``uncommitted/validations/``: every validation result (run name = the ingested day);
- ``uncommitted/data_docs/local_site/index.html``: the Data Docs site (``adsrec up`` serves it); its
  index lists the newest ``INDEX_LIMIT`` results.

Concurrency: backfills ingest several days at once, in threads and in processes. The GX context is not
thread-safe and its stores are plain files, so every use goes through :func:`locked`, which holds a
per-folder thread lock and an exclusive ``fcntl.flock`` on ``<home>/gx/.adsrec.lock`` (written by no GX
code). Each process keeps one context per folder (opening one costs about 0.1 s); the stored suite and
checkpoint are re-read from disk on every run, so a suite another process updated is picked up.

Nothing here runs at import; Great Expectations is imported on first use (about 3 s).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DATASOURCE = "adsrec_ingest"
BATCH_DEFINITION = "whole_batch"
SITE = "local_site"
TABLES = ("impressions", "ads", "users")
LOCK_FILE = ".adsrec.lock"
# The Data Docs index lists the newest results only (20 days of three tables): GX reads every listed
# result on each rebuild, about 2 ms apiece, and each of a day's three checkpoints rebuilds it. With 300
# a 215-day MovieLens backfill's ingest grew from 0.65 s to 1.8 s a day of GX (docs/benchmarks.md).
# Older result pages and every validation result stay on disk.
INDEX_LIMIT = 60
SPEC_KEY = "adsrec_spec_sha256"  # suite meta: the fingerprint of the expectations it was built with

_GUARD = threading.Lock()
_THREAD_LOCKS: dict[Path, threading.RLock] = {}
_CONTEXTS: dict[Path, Any] = {}


def suite_name(table: str) -> str:
    return f"{table}_ingest"


def data_docs_dir(gx_dir: Path) -> Path:
    """The Data Docs site folder (GX's default ``local_site``)."""
    return Path(gx_dir) / "uncommitted" / "data_docs" / SITE


def data_docs_index(gx_dir: Path) -> Path:
    return data_docs_dir(gx_dir) / "index.html"


@contextmanager
def locked(gx_dir: Path) -> Iterator[Any]:
    """The project's context, for exclusive use by this thread and process while the block runs."""
    gx_dir = Path(gx_dir).resolve()
    if gx_dir.name != "gx":
        raise ValueError(f"the GX project folder must be named 'gx' (GX's own layout), got {gx_dir}")
    with _GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(gx_dir, threading.RLock())
    with thread_lock:
        gx_dir.mkdir(parents=True, exist_ok=True)
        with open(gx_dir / LOCK_FILE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield _context(gx_dir)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _context(gx_dir: Path) -> Any:
    """Open (first time: create) the project; the data source and its assets are added when missing.
    Called with the locks held."""
    ctx = _CONTEXTS.get(gx_dir)
    if ctx is not None:
        return ctx
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    import validation.gx_expectations  # noqa: F401 - registers the custom expectation the stored suites use
    from validation.gx_tuning import tune_gx

    tune_gx()
    ctx = gx.get_context(mode="file", project_root_dir=gx_dir.parent)
    bars = ctx.variables.progress_bars  # as loaded from the yml: a dict; None in a new project
    stored_off = (bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", None)) is False
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # GX's tqdm bars stay off
    if not stored_off:
        ctx.variables.save()
    sites = ctx.variables.data_docs_sites or {}
    index = (sites.get(SITE) or {}).get("site_index_builder")
    if index is not None and index.get("validation_results_limit") != INDEX_LIMIT:
        index["validation_results_limit"] = INDEX_LIMIT
        ctx.variables.data_docs_sites = sites
        ctx.variables.save()
    try:
        source = ctx.data_sources.get(DATASOURCE)
    except (KeyError, ValueError, LookupError):
        source = ctx.data_sources.add_pandas(DATASOURCE)
    for table in TABLES:
        try:
            asset = source.get_asset(table)
        except LookupError:
            asset = source.add_dataframe_asset(name=table)
        if not any(bd.name == BATCH_DEFINITION for bd in asset.batch_definitions):
            asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)
    _CONTEXTS[gx_dir] = ctx
    return ctx


def _fingerprint(suite: Any) -> str:
    configs = [{"type": e.expectation_type, "kwargs": e.configuration.kwargs, "notes": e.notes}
               for e in suite.expectations]
    return hashlib.sha256(json.dumps(configs, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_for(ctx: Any, table: str, suite: Any) -> Any:
    """The table's checkpoint, with the stored suite brought up to date with ``suite`` first (only
    written when its expectations differ). Called with :func:`locked` held."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.exceptions import DataContextError

    if table not in TABLES:
        raise ValueError(f"no GX batch definition for table {table!r}: expected one of {', '.join(TABLES)}")
    name = suite_name(table)
    suite.meta = {**(suite.meta or {}), SPEC_KEY: _fingerprint(suite)}
    try:
        stored = ctx.suites.get(name)
    except DataContextError:
        stored = None
    if stored is None or (stored.meta or {}).get(SPEC_KEY) != suite.meta[SPEC_KEY]:
        ctx.suites.add_or_update(suite)
    try:
        return ctx.checkpoints.get(name)  # re-read: resolves the suite as stored now
    except DataContextError:
        pass
    batch_definition = ctx.data_sources.get(DATASOURCE).get_asset(table).get_batch_definition(BATCH_DEFINITION)
    definition = ctx.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=name, data=batch_definition, suite=ctx.suites.get(name)))
    return ctx.checkpoints.add_or_update(gx.Checkpoint(
        name=name, validation_definitions=[definition],
        actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[SITE])],
        result_format="SUMMARY",
    ))


def build_data_docs(gx_dir: Path) -> Path:
    """(Re)build the Data Docs site from the stored suites and validation results; returns index.html."""
    with locked(gx_dir) as ctx:
        ctx.build_data_docs(site_names=[SITE])
    return data_docs_index(gx_dir)

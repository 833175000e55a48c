"""Crash safety of the data stages (issue 14; docs/reliability/data-stages.md): deliver, representations, the
training set and materialise, each killed (SIGKILL, ``ADSREC_FAULT``, components/faults.py) at its fault points
in a subprocess, leave nothing half-done that the next reader would take for whole, and a re-run ends in the
state an uninterrupted run leaves (file hashes; tables without their build-time columns).

One tiny simulator home, built once: days d0 and d1 delivered, ingested and featurised. Each test works on
copies of it (a kill copy and an uninterrupted reference), so the tests are independent of their order.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from components.config import PROJECT_ROOT
from tests.data.test_day_markers import tiny_overrides

pytestmark = [pytest.mark.shared_data, pytest.mark.faults]

# Runs ``<module>.<function>(settings, day, *json args)`` on the home given as overrides.
DRIVER = ("import datetime as dt, importlib, json, sys; from components.config import load_settings; "
          "s = load_settings(environ={}, overrides=json.loads(sys.argv[1])).resolved(); "
          "m, f = sys.argv[2].rsplit('.', 1); "
          "getattr(importlib.import_module(m), f)(s, dt.date.fromisoformat(sys.argv[3]), *json.loads(sys.argv[4]))")
BUILD_TIME = {"created_timestamp", "built_at", "fitted_at", "materialized_at", "seconds", "seconds_register",
              "stage_seconds"}  # when and how long, not what: left out of the comparisons


def _settings(home: Path, shared_data: Path):  # noqa: ANN202
    from components.config import load_settings

    return load_settings(environ={}, overrides=tiny_overrides(home, shared_data)).resolved()


def _kill(home: Path, shared: Path, func: str, day: dt.date, point: str, *args: Any) -> None:
    """Run ``func(settings, day, *args)`` in a subprocess with ``ADSREC_FAULT=point``: it must die there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADSREC_")}
    env["ADSREC_FAULT"] = point
    res = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(tiny_overrides(home, shared)), func, day.isoformat(),
                          json.dumps(list(args))], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == -9, (point, res.returncode, res.stderr[-2000:])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parquet(path: Path) -> Any:
    """A parquet file's table without its build-time columns."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table.drop_columns([c for c in table.column_names if c in BUILD_TIME])


def _tree(root: Path) -> dict[str, Any]:
    """Every file under ``root`` (relative path -> parquet table without build-time columns, JSON without
    timings, or the sha256 of the bytes)."""
    out: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        key = str(p.relative_to(root))
        if p.suffix == ".parquet":
            out[key] = _parquet(p)
        elif p.suffix == ".json":
            out[key] = _untimed(json.loads(p.read_text()))
        else:
            out[key] = _sha(p)
    return out


def _untimed(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in BUILD_TIME}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Any]:
    from components import steps

    base = tmp_path_factory.mktemp("faults-data")
    settings = _settings(base / "home", shared_data)
    d0, d1, d2 = steps.demo_window(settings, 3)
    for day in (d0, d1):
        steps.deliver_day(settings, day)
        steps.ingest(settings, day)
        steps.features(settings, day)
    return {"base": base, "shared": shared_data, "d0": d0, "d1": d1, "d2": d2}


def _copy(world: dict[str, Any], name: str) -> tuple[Path, Any]:
    home = world["base"] / name
    shutil.copytree(world["base"] / "home", home)
    return home, _settings(home, world["shared"])


def test_a_delivery_cut_between_tables_is_invisible_to_ingest_and_redone(world) -> None:  # noqa: ANN001
    from components import steps
    from components.store.days import HalfWrittenDay

    d2 = world["d2"]
    ref_home, ref = _copy(world, "deliver-ref")
    steps.deliver_day(ref, d2)
    home, s = _copy(world, "deliver-kill")
    _kill(home, world["shared"], "components.steps.deliver_day", d2, "deliver.after_first_table")
    raw = s.raw_dir / "simulator"
    assert (raw / "impressions" / f"date={d2}" / "part-0.parquet").is_file()  # landed, not committed
    assert not (raw / "ads" / f"date={d2}").exists()
    with pytest.raises(HalfWrittenDay, match=f"day {d2} .*missing ads, users.*adsrec deliver --date {d2}"):
        steps.ingest(s, d2)  # not a day of impressions with no ads and users
    assert not (s.offline_dir / "impressions" / f"date={d2}").exists()
    assert steps.deliver_day(s, d2)["skipped"] is False
    assert steps.deliver_day(s, d2)["skipped"] is True
    parquet = {t: _sha(raw / t / f"date={d2}" / "part-0.parquet") for t in ("impressions", "ads", "users")}
    ref_raw = ref.raw_dir / "simulator"
    assert parquet == {t: _sha(ref_raw / t / f"date={d2}" / "part-0.parquet") for t in parquet}
    marker = json.loads((raw / "_days" / f"{d2}.json").read_text())
    assert marker == json.loads((ref_raw / "_days" / f"{d2}.json").read_text())
    assert steps.ingest(s, d2)["skipped"] is False


REPRESENTATION_VIEWS = ("ad_text_embedding", "ad_visual_embedding", "user_text_interest", "user_visual_interest",
                        "ad_semantic_id", "user_graph_embedding", "ad_graph_embedding")


def _representations(s: Any, day: dt.date) -> dict[str, Any]:
    """The representations' end state: embeddings (vector stores, codebook, codes, graph) and the day's views."""
    views = {v: _tree(s.features_dir / v / f"date={day}") for v in REPRESENTATION_VIEWS
             if (s.features_dir / v).is_dir()}
    return {"embeddings": _tree(s.embeddings_dir), "views": views}


def test_representations_killed_before_the_codes_between_the_views_or_before_the_manifest_come_back_the_same(world) -> None:  # noqa: ANN001
    from components import steps
    from components.runs import StageManifest

    d1 = world["d1"]
    _, ref = _copy(world, "repr-ref")
    assert steps.representations(ref, d1)["skipped"] is False
    expected = _representations(ref, d1)
    assert expected["views"] and expected["embeddings"]

    home, s = _copy(world, "repr-kill")
    _kill(home, world["shared"], "components.steps.representations", d1, "representations.after_vectors")
    assert any(s.embeddings_dir.rglob("*.parquet"))  # vectors stored, no view of the day yet
    assert not any((s.features_dir / v / f"date={d1}").exists() for v in REPRESENTATION_VIEWS)
    assert StageManifest(s, "representations").read(d1) is None
    assert steps.representations(s, d1)["skipped"] is False
    assert _representations(s, d1) == expected

    _kill(home, world["shared"], "components.steps.representations", d1, "representations.before_manifest", True)
    assert steps.representations(s, d1)["skipped"] is False  # not recorded: re-done, not skipped
    assert steps.representations(s, d1)["skipped"] is True
    assert _representations(s, d1) == expected

    # Killed between its views: the whole feature day is invisible, and the next daily's steps re-do it.
    from components.store.days import marker_path
    from components.store.features import read_view

    _kill(home, world["shared"], "components.steps.representations", d1, "representations.between_views", True)
    assert not marker_path(s.features_dir, d1).exists()
    assert any((s.features_dir / v / f"date={d1}").exists() for v in ("ad_text_embedding", "user_text_interest"))
    for view in ("user_stats", "ad_text_embedding"):  # readers see no partition of the day
        with pytest.raises(FileNotFoundError, match=f"no partitions of feature view {view}"):
            read_view(s, view, [d1])
    assert steps.features(s, d1)["skipped"] is False  # the day's marker is missing: re-done
    assert steps.representations(s, d1)["skipped"] is False
    assert _representations(s, d1) == expected
    parts = json.loads(marker_path(s.features_dir, d1).read_text())["parts"]
    assert {"user_stats", "user_sequence", *expected["views"]} <= set(parts)  # the feature and the new views


def test_a_training_set_cut_after_its_parquet_is_refused_then_rebuilt(world) -> None:  # noqa: ANN001
    from components import steps
    from components.registry.gate_and_register import register_and_promote
    from components.training.training_set import training_set_meta

    d1 = world["d1"]
    _, ref = _copy(world, "ts-ref")
    path = Path(steps.training_set(ref, d1, 2)["path"])
    expected = (_parquet(path), _untimed(training_set_meta(path)))

    home, s = _copy(world, "ts-kill")
    steps.training_set(s, d1, 1)  # an earlier build of the day (another window): its meta.json must not survive
    _kill(home, world["shared"], "components.steps.training_set", d1, "training_set.after_parquet", 2)
    target = s.training_dir / d1.isoformat() / "train.parquet"
    assert target.is_file() and not target.with_name("meta.json").exists()
    with pytest.raises(FileNotFoundError, match=f"is half-written \\(its build was cut short\\).*--date {d1}"):
        training_set_meta(target)
    with pytest.raises(FileNotFoundError, match="half-written"):  # the registration reads the views from it
        register_and_promote(s, s.models_dir, {}, [], [], target, [d1], None)
    assert Path(steps.training_set(s, d1, 2)["path"]) == target
    assert not target.with_name(".building").exists()
    assert (_parquet(target), _untimed(training_set_meta(target))) == expected


def _online(s: Any) -> dict[str, Any]:
    """The online store's rows per table (without Feast's write time) and its record."""
    from components.serving.online_store import online_db_path, online_state

    conn = sqlite3.connect(online_db_path(s))
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        rows = {}
        for t in tables:
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")') if r[1] != "created_ts"]
            select = ", ".join(f'"{c}"' for c in cols)
            rows[t] = sorted(conn.execute(f'SELECT {select} FROM "{t}"').fetchall(), key=repr)
    finally:
        conn.close()
    rows.pop("adsrec_materialization", None)
    state = _untimed(online_state(s))
    assert state.pop("online_store") == str(online_db_path(s))
    return {"rows": rows, "state": state}


def test_materialise_killed_after_the_swap_reads_the_new_store_s_own_record(world, caplog) -> None:  # noqa: ANN001
    from components.serving.online_store import materialize_online, online_state

    d0, d1 = world["d0"], world["d1"]
    _, ref = _copy(world, "online-ref")
    materialize_online(ref, d1)
    expected = _online(ref)

    home, s = _copy(world, "online-kill")
    materialize_online(s, d0)  # the live store and its JSON say d0
    _kill(home, world["shared"], "components.serving.online_store.materialize_online", d1, "materialize.after_rename")
    assert json.loads((s.feast_dir / "online_store.json").read_text())["end_day"] == d0.isoformat()  # stale
    with caplog.at_level(logging.WARNING):
        state = online_state(s)
    assert state["end_day"] == d1.isoformat()  # the store's own record, not the stale JSON's d0
    assert "a materialise was cut short" in caplog.text
    assert _online(s) == expected
    materialize_online(s, d1)
    assert _online(s) == expected
    assert json.loads((s.feast_dir / "online_store.json").read_text())["end_day"] == d1.isoformat()


def test_every_data_stage_has_fault_points() -> None:
    import components.representations.refresh  # noqa: F401
    import components.serving.online_store  # noqa: F401
    import components.sources.landing  # noqa: F401
    import components.steps  # noqa: F401
    import components.training.training_set  # noqa: F401
    from components.faults import KNOWN_POINTS

    assert {"deliver.after_first_table", "representations.after_vectors", "representations.before_manifest",
            "representations.between_views",
            "training_set.after_parquet", "materialize.after_rename"} <= KNOWN_POINTS

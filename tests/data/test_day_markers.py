"""A day is complete or invisible (issue 14; docs/reliability/days.md): a process killed (SIGKILL, via
``ADSREC_FAULT``, components/faults.py) between the tables of an ingested day or the views of a feature day
leaves a day that readers do not see and that says so; the next run of the step re-does it (even when its
inputs are unchanged), and the result equals an uninterrupted run's.

One small simulator home: days d0 and d1 delivered, d0 ingested and built; a copy of it runs d1 without
faults (the reference). The kills run the step in a subprocess; the re-runs run in the test's process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from components.config import PROJECT_ROOT

pytestmark = pytest.mark.shared_data

DRIVER = ("import datetime as dt, json, sys; from components import steps; from components.config import "
          "load_settings; s = load_settings(environ={}, overrides=json.loads(sys.argv[1])).resolved(); "
          "getattr(steps, sys.argv[2])(s, dt.date.fromisoformat(sys.argv[3]), force=sys.argv[4] == '1')")


def tiny_overrides(home: Path, shared_data: Path) -> dict[str, Any]:
    """A tiny simulator home (seconds per day), shared with tests/e2e/test_faults_data.py."""
    return {"home": str(home), "pipeline": {"shared_data": str(shared_data)},
            "simulator": {"n_users": 120, "sessions_per_user_day": 2.0, "n_initial_ads": 80, "new_ads_per_day": 8,
                          "new_users_per_day": 5, "n_candidates": 30},
            "features": {"sequence_length": 5}}


def _settings(home: Path, shared_data: Path):  # noqa: ANN202
    from components.config import load_settings

    return load_settings(environ={}, overrides=tiny_overrides(home, shared_data)).resolved()


def _kill(home: Path, shared_data: Path, step: str, day: dt.date, point: str, force: bool = False) -> None:
    """Run ``steps.<step>(day)`` in a subprocess with ``ADSREC_FAULT=point``; it must die there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADSREC_")}
    env["ADSREC_FAULT"] = point
    res = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(tiny_overrides(home, shared_data)), step,
                          day.isoformat(), "1" if force else "0"], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == -9, (point, res.returncode, res.stderr[-2000:])


def _offline_hashes(settings, day: dt.date) -> dict[str, str]:  # noqa: ANN001
    from components.schemas import TABLES, day_dir

    return {t: hashlib.sha256((day_dir(settings.offline_dir, t, day) / "part-0.parquet").read_bytes()).hexdigest()
            for t in TABLES}


def _features(settings, day: dt.date) -> dict[str, Any]:  # noqa: ANN001
    """Each view of the day's partition, without ``created_timestamp`` (when the row was computed)."""
    import pyarrow.parquet as pq

    from components.store.features import VIEWS
    from components.schemas import day_dir

    return {v: pq.read_table(day_dir(settings.features_dir, v, day) / "part-0.parquet").drop_columns(
        ["created_timestamp"]) for v in VIEWS}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Any]:
    from components import steps

    base = tmp_path_factory.mktemp("day-markers")
    settings = _settings(base / "home", shared_data)
    d0, d1 = steps.demo_window(settings, 2)
    for day in (d0, d1):
        steps.deliver_day(settings, day)
    steps.ingest(settings, d0)
    steps.features(settings, d0)
    shutil.copytree(base / "home", base / "reference")
    ref = _settings(base / "reference", shared_data)
    steps.ingest(ref, d1)
    steps.features(ref, d1)
    return {"settings": settings, "home": base / "home", "shared": shared_data, "d0": d0, "d1": d1,
            "offline": _offline_hashes(ref, d1), "features": _features(ref, d1)}


def test_a_kill_between_tables_hides_the_day_until_ingest_re_does_it(world, caplog) -> None:  # noqa: ANN001
    from components import steps
    from components.store.days import HalfWrittenDay
    from components.store.offline import offline_partitions
    from components.training.training_set import read_impressions

    s, d0, d1 = world["settings"], world["d0"], world["d1"]
    _kill(world["home"], world["shared"], "ingest", d1, "ingest.after_impressions")
    assert (s.offline_dir / "impressions" / f"date={d1}").is_dir()  # landed, but not committed
    assert not (s.offline_dir / "ads" / f"date={d1}").is_dir()
    with caplog.at_level(logging.WARNING):
        assert [d for d, _ in offline_partitions(s, "impressions")] == [d0]
        imps = read_impressions(s, d0, d1, s.tasks)
    assert f"day {d1} of {s.offline_dir} is half-written" in caplog.text and "missing ads, users" in caplog.text
    import pyarrow.parquet as pq

    d0_file = offline_partitions(s, "impressions")[0][1]
    d0_ids = set(pq.read_table(d0_file, columns=["request_id"])["request_id"].to_pylist())
    assert imps.num_rows and set(imps["request_id"].to_pylist()) <= d0_ids  # d0's rows only
    with pytest.raises(HalfWrittenDay, match=f"day {d1} .*missing ads, users.*adsrec ingest --date {d1}"):
        steps.features(s, d1)  # not 0 profiles: a clear error
    with pytest.raises(FileNotFoundError, match="no ingested impressions") as missing:
        steps.features(s, d1 + dt.timedelta(days=1))  # a day never ingested is missing, not half-written
    assert not isinstance(missing.value, HalfWrittenDay)
    assert steps.ingest(s, d1)["skipped"] is False
    assert _offline_hashes(s, d1) == world["offline"]

    # A re-do killed after every table but before the marker: the marker went first, so the day is hidden
    # again, and the next run re-does it although the ingest manifest says its inputs are unchanged.
    _kill(world["home"], world["shared"], "ingest", d1, "ingest.before_marker", force=True)
    assert all((s.offline_dir / t / f"date={d1}").is_dir() for t in ("impressions", "ads", "users"))
    assert [d for d, _ in offline_partitions(s, "ads")] == [d0]
    assert steps.ingest(s, d1)["skipped"] is False
    assert steps.ingest(s, d1)["skipped"] is True
    assert _offline_hashes(s, d1) == world["offline"]
    marker = json.loads((s.offline_dir / "_days" / f"{d1}.json").read_text())
    assert set(marker["parts"]) == {"impressions", "ads", "users"} and marker["parts"]["impressions"]["rows"] > 0


def test_a_kill_between_views_hides_the_feature_day_until_features_re_does_it(world, caplog) -> None:  # noqa: ANN001
    from components import steps
    from components.store.days import HalfWrittenDay
    from components.store.features import read_view
    from components.serving.online_store import check_feature_partitions, core_view_specs

    s, d0, d1 = world["settings"], world["d0"], world["d1"]
    steps.ingest(s, d1)
    _kill(world["home"], world["shared"], "features", d1, "features.after_first_view")
    assert (s.features_dir / "user_stats" / f"date={d1}").is_dir()
    with caplog.at_level(logging.WARNING):
        assert set(read_view(s, "user_stats")["event_timestamp"].to_pylist()) == {
            dt.datetime.combine(d1, dt.time(), dt.timezone.utc)}  # d0's rows only (stamped at d0's end)
    assert f"day {d1} of {s.features_dir} is half-written" in caplog.text
    assert {sp.latest_partition for sp in core_view_specs(s)} == {f"date={d0}"}
    with pytest.raises(HalfWrittenDay, match=f"adsrec features --date {d1}"):
        check_feature_partitions(s, core_view_specs(s), d1)
    assert steps.features(s, d1)["skipped"] is False
    assert _features(s, d1) == world["features"]

    _kill(world["home"], world["shared"], "features", d1, "features.before_marker", force=True)
    assert {sp.latest_partition for sp in core_view_specs(s)} == {f"date={d0}"}
    assert steps.features(s, d1)["skipped"] is False  # inputs unchanged, but the day has no marker
    assert _features(s, d1) == world["features"]
    assert {sp.latest_partition for sp in core_view_specs(s)} == {f"date={d1}"}


def test_a_home_without_markers_keeps_its_complete_days(world, tmp_path: Path) -> None:  # noqa: ANN001
    """Migration: a store written before the markers shows every day; the first write marks the complete
    days as committed and leaves an incomplete one out."""
    from components.store.days import begin_day, commit_day
    from components.store.sql import day_partitions

    s, d0, d1 = world["settings"], world["d0"], world["d1"]
    root = tmp_path / "offline"
    for t in ("impressions", "ads", "users"):
        shutil.copytree(s.offline_dir / t / f"date={d0}", root / t / f"date={d0}")
    shutil.copytree(s.offline_dir / "impressions" / f"date={d0}", root / "impressions" / f"date={d1}")
    assert [d for d, _ in day_partitions(root / "impressions")] == [d0, d1]  # no markers: as before
    later = d1 + dt.timedelta(days=1)
    begin_day(root, later, ("impressions", "ads", "users"))
    assert json.loads((root / "_days" / f"{d0}.json").read_text())["migrated"] is True
    assert [d for d, _ in day_partitions(root / "impressions")] == [d0]  # d1 lacks ads and users
    for t in ("impressions", "ads", "users"):
        shutil.copytree(s.offline_dir / t / f"date={d0}", root / t / f"date={later}")
    commit_day(root, later, ("impressions", "ads", "users"))
    assert [d for d, _ in day_partitions(root / "ads")] == [d0, later]

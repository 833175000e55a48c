"""The registry checks before it points, and ``adsrec doctor`` (issue 14; docs/reliability/registry.md):
components/registry/checks.py, components/registry/client.py (a corrupt or locked database),
components/registry/health.py, components/doctor.py, flows/cli/doctor.py.

Uses the three registered versions of tests/code/registry/test_registry.py (1 passing, 2 failing its data
gate, 3 passing; built again for this module). Version 1's artifacts are moved aside and put back by
:func:`missing_v1`; the doctor's home is planted beside the registry's in a home of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.config import PROJECT_ROOT
from tests.code.registry.test_registry import _aliases, fresh_aliases, reg, trained  # noqa: F401 - fixtures

pytestmark = pytest.mark.shared_data

DAYS = ("2026-01-01", "2026-01-02")
VIEWS = ("user_profile", "ad_stats")


def _v1_artifacts(settings: Any) -> Path:
    from mlflow.utils.file_utils import local_file_uri_to_path

    from components.registry.client import mlflow_client

    with mlflow_client(settings) as client:
        return Path(local_file_uri_to_path(client.get_model_version_download_uri(
            settings.registry.model_name, "1")))


@pytest.fixture()
def missing_v1(fresh_aliases: Any) -> Iterator[Any]:  # noqa: F811 - the imported fixture
    """Champion 3, previous 1, and version 1's logged model moved aside (put back afterwards)."""
    from components.registry.aliases import promote

    settings = fresh_aliases
    promote(settings, 1)
    promote(settings, 3)
    folder = _v1_artifacts(settings)
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    try:
        yield settings
    finally:
        aside.rename(folder)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADSREC_", "MLFLOW_TRACKING"))}
    env.update(ADSREC_HOME=str(home), PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


def test_promote_rollback_and_loads_refuse_a_version_without_artifacts(missing_v1: Any) -> None:
    from components.registry.aliases import list_versions, load_champion, promote, rollback, versions_table
    from components.registry.client import RegistryError
    from components.serving.model_slots import alias_version, load_version

    settings = missing_v1
    with pytest.raises(RegistryError, match=r"version 1's artifacts are missing under .*\(no MLmodel file\): "
                                            r"not promoting; re-register it"):
        promote(settings, 1)
    with pytest.raises(RegistryError, match=r"version 1's artifacts are missing .*: not rolling back onto it"):
        rollback(settings)
    assert _aliases(settings) == {"champion": 3, "previous": 1}  # nothing moved
    with pytest.raises(RegistryError, match="version 1's artifacts are missing"):
        load_champion(settings, "previous")
    with pytest.raises(RegistryError, match="cannot serve"):
        load_version(settings, "previous", alias_version(settings, "previous"))
    listed = {v.version: v for v in list_versions(settings)}
    assert "no MLmodel file" in listed[1].artifacts_problem and listed[3].artifacts_problem is None
    table = versions_table(list(listed.values())).splitlines()
    assert table[0].split()[-1] == "artifacts"
    assert [row.split()[-1] for row in table[1:]] == ["ok", "ok", "MISSING"]

    res = _cli(settings.home, "promote", "--version", "1")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "version 1's artifacts are missing" in res.stderr and "Traceback" not in res.stderr
    res = _cli(settings.home, "rollback")
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "not rolling back" in res.stderr
    res = _cli(settings.home, "models")
    assert res.returncode == 0 and "MISSING" in res.stdout and "version 1: artifacts are missing" in res.stdout


def test_a_corrupt_or_locked_registry_database_is_one_line(reg: dict[str, Any], tmp_path: Path,  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from components.config import load_settings
    from components.registry import client as client_module
    from components.registry.aliases import list_versions, promote
    from components.registry.client import RegistryError
    from components.serving.model_slots import alias_version

    home = tmp_path / "home"
    (home / "mlflow").mkdir(parents=True)
    db = home / "mlflow" / "mlflow.db"
    data = bytearray((reg["home"] / "mlflow" / "mlflow.db").read_bytes())
    data[:4096] = b"not a database! " * 256
    db.write_bytes(bytes(data))
    for args in (("models",), ("promote", "--version", "1"), ("rollback",)):
        res = _cli(home, *args)
        assert res.returncode == 1, (args, res)
        assert res.stderr.strip().splitlines() == [
            f"error: the registry database {db} is unreadable (file is not a database): restore it from a backup, "
            "or move it aside to start an empty registry (its versions are then lost); `adsrec doctor` checks "
            "the rest of the home"], (args, res.stderr)
    settings = load_settings(environ={}, overrides={"home": str(home)}).resolved()
    with pytest.raises(RegistryError, match="is unreadable"):
        alias_version(settings, "champion")  # what serving's readiness reports

    monkeypatch.setattr(client_module, "LOCK_WAIT_S", 0.2)
    locked = reg["settings"]
    holder = sqlite3.connect(reg["home"] / "mlflow" / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for call in (lambda: list_versions(locked), lambda: promote(locked, 3)):
            with pytest.raises(RegistryError, match=r"mlflow.db is locked by another process .*wait for"):
                call()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [v.version for v in list_versions(locked)] == [3, 2, 1]


# ----- adsrec doctor -----------------------------------------------------------------------------------------
def _plant_home(home: Path) -> None:
    """A tiny but complete store: two days of three tables and two views, the feature manifest, a text
    vector store named by the representations manifest, and an online store."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": [1, 2, 3]})
    for root, names in (("offline", ("impressions", "ads", "users")), ("features", VIEWS)):
        for name in names:
            for day in DAYS:
                (home / root / name / f"date={day}").mkdir(parents=True)
                pq.write_table(table, home / root / name / f"date={day}" / "part-0.parquet")
    (home / "features" / "_views.json").write_text(json.dumps({"views": list(VIEWS)}))
    (home / "embeddings" / "text").mkdir(parents=True)
    pq.write_table(table, home / "embeddings" / "text" / "vectors.parquet")
    (home / "manifests" / "representations").mkdir(parents=True)
    (home / "manifests" / "representations" / f"{DAYS[1]}.json").write_text(json.dumps(
        {"day": DAYS[1], "result": {"text": {"space": "text"}, "semantic_ids": {"skipped": "no images"}}}))
    (home / "feast").mkdir()
    (home / "feast" / "online_store.json").write_text(json.dumps({"as_of": f"{DAYS[1]}T00:00:00+00:00"}))
    con = sqlite3.connect(home / "feast" / "online_store.db")
    con.execute("CREATE TABLE t (k TEXT)")
    con.close()


def _problems(settings: Any) -> list[tuple[str, str, str]]:
    from components.doctor import run_checks

    return [(c.area, c.subject, c.detail) for c in run_checks(settings) if not c.ok]


def test_doctor_finds_each_planted_problem(fresh_aliases: Any) -> None:  # noqa: F811
    from components.registry.aliases import promote
    from components.registry.client import ensure_experiment, mlflow_client

    settings = fresh_aliases
    home = settings.home
    _plant_home(home)
    assert _problems(settings) == []
    res = _cli(home, "doctor", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["ok"], res.stdout + res.stderr

    promote(settings, 1)
    folder = _v1_artifacts(settings)
    shutil.move(folder, folder.with_name(folder.name + ".aside"))
    imp = home / "offline" / "impressions" / f"date={DAYS[0]}" / "part-0.parquet"
    imp.write_bytes(imp.read_bytes()[:40])
    (home / "feast" / "online_store.db").unlink()
    (home / "embeddings" / "text" / "vectors.parquet").unlink()
    shutil.rmtree(home / "features" / "ad_stats" / f"date={DAYS[1]}")
    (home / "features" / "_days").mkdir()
    (home / "features" / "_days" / f"{DAYS[0]}.json").write_text("{}")
    with mlflow_client(settings) as client:
        run = client.create_run(ensure_experiment(client, settings), run_name="killed")
    try:
        found = _problems(settings)
        res = _cli(home, "doctor", "--json")
    finally:
        shutil.move(folder.with_name(folder.name + ".aside"), folder)
        with mlflow_client(settings) as client:
            client.set_terminated(run.info.run_id, "KILLED")
    details = {(area, detail.split(" (")[0].split(" since ")[0]) for area, _, detail in found}
    assert details == {
        ("offline", "unreadable parquet"),
        ("features", "half-written day: no ad_stats view"),
        ("features", "half-written day: partitions without a commit marker"),
        ("embeddings", "text vector store missing or unreadable"),
        ("online store", "online store database missing"),
        ("registry", f"artifacts are missing under {folder}"),
        ("registry", "points at version 1, whose artifacts are missing"),
        ("registry", "killed RUNNING"),
    }, found
    assert res.returncode == 1
    out = json.loads(res.stdout)
    assert not out["ok"] and {(c["area"], c["detail"]) for c in out["checks"] if not c["ok"]} == {
        (a, d) for a, _, d in found}
    assert all(c["repair"] for c in out["checks"] if not c["ok"])


def test_doctor_on_a_corrupt_registry_and_an_empty_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = _cli(home, "doctor")
    assert res.returncode == 0 and "no problem found" in res.stdout, res.stdout + res.stderr
    (home / "mlflow").mkdir(parents=True)
    (home / "mlflow" / "mlflow.db").write_bytes(b"garbage" * 1000)
    res = _cli(home, "doctor", "--json")
    bad = [c for c in json.loads(res.stdout)["checks"] if not c["ok"]]
    assert res.returncode == 1 and [c["area"] for c in bad] == ["registry"], res.stdout
    assert "mlflow.db is unreadable (file is not a database)" in bad[0]["detail"]


# ----- a promotion killed half way ---------------------------------------------------------------------------
def _state(settings: Any) -> tuple[dict[str, int], list[int], dict[str, str]]:
    """Aliases, the champion history's versions, and the promoted version's promotion tags."""
    from components.registry.aliases import HISTORY_TAG
    from components.registry.client import mlflow_client

    name = settings.registry.model_name
    with mlflow_client(settings) as client:
        history = [int(h["version"]) for h in json.loads(client.get_registered_model(name).tags[HISTORY_TAG])]
        tags = client.get_model_version(name, str(history[-1])).tags
    return _aliases(settings), history, {k: v for k, v in tags.items() if k == "promoted_by"}


def test_a_promotion_killed_after_moving_champion_is_finished_by_the_rerun(fresh_aliases: Any) -> None:  # noqa: F811
    from components.registry.aliases import promote

    settings = fresh_aliases
    promote(settings, 1, by="tester")
    promote(settings, 3, by="tester")
    uninterrupted = _state(settings)
    assert uninterrupted == ({"champion": 3, "previous": 1}, [1, 3], {"promoted_by": "tester"})

    from components.registry.aliases import HISTORY_TAG
    from components.registry.client import mlflow_client

    name = settings.registry.model_name
    with mlflow_client(settings) as client:  # the same start again: champion 1, challenger 3, history [1]
        client.set_registered_model_alias(name, "champion", "1")
        client.delete_registered_model_alias(name, "previous")
        client.set_registered_model_alias(name, "challenger", "3")
        client.delete_model_version_tag(name, "3", "promoted_by")
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([{"version": 1}]))
    driver = ("from components.config import load_settings; from components.registry.aliases import promote; "
              f"promote(load_settings(environ={{}}, overrides={{'home': {str(settings.home)!r}}}).resolved(), 3, "
              "by='tester')")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADSREC_", "MLFLOW_TRACKING"))}
    killed = subprocess.run([sys.executable, "-c", driver], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            env={**env, "ADSREC_FAULT": "promote.after_champion"}, timeout=180)
    assert killed.returncode == -9, killed.stderr
    assert _aliases(settings) == {"champion": 3, "challenger": 3}  # half done: previous not moved yet
    rerun = subprocess.run([sys.executable, "-c", driver], cwd=PROJECT_ROOT, capture_output=True, text=True,
                           env=env, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    assert _state(settings) == uninterrupted

"""The whole daily flow killed and re-run, rollback killed midway, a daily and a backfill at once (issue 14,
docs/reliability/flows.md).

Every command runs as ``python -m flows.cli ...`` in a subprocess on a tiny simulator config; a killed one is
run with ``ADSREC_FAULT=<point>`` (SIGKILL there, return code -9), a transient error with
``ADSREC_FAULT_RAISE=<point>`` (RuntimeError once). The days of the training window are backfilled once into a
base home; each daily scenario runs on a copy of it and is compared with an uninterrupted daily's copy: the
same registered versions (tags, description), aliases, files (model.pt, the training set, manifests'
fingerprints), and no MLflow run left RUNNING.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from components.config import PROJECT_ROOT

pytestmark = [pytest.mark.faults, pytest.mark.shared_data]
DAY = "2026-11-03"
CONFIG = """\
simulator: {n_users: 80, sessions_per_user_day: 2.0, n_initial_ads: 80, new_ads_per_day: 5, new_users_per_day: 3,
            n_candidates: 30, click_base_logit: -2.5}
representations: {rq_codes: 8, rq_pca_dim: 8, graph_dim: 16, graph_epochs: 2, graph_window_days: 2}
pipeline: {training_days: 3}
gates: {baseline_inconclusive: pass, baseline_margin: -1.0}
registry: {auto_promote: if_no_champion}
training:
  ranker: {embedding_dim: 8, expert_hidden: [16], gate_hidden: [8], tower_hidden: [8]}
  train: {epochs: 1, batch_size: 256, device: cpu, patience: 0, log_every: 0}
"""


def _start(home: Path, world: dict[str, Any], *args: str, fault: str | None = None, raise_at: str | None = None,
           extra: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    """``adsrec <args>`` on ``home``, output to ``<home>.<command>.log`` (a file, not a pipe: a killed
    command's Prefect temporary server, its child, would hold a pipe open)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADSREC_", "MLFLOW_TRACKING", "PREFECT_API_URL"))}
    env.update({"PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "ADSREC_HOME": str(home),
                "ADSREC_CONFIG": str(world["config"]), "ADSREC_PIPELINE__SHARED_DATA": str(world["shared"]),
                "PREFECT_API_URL": world["prefect_api"], **({"ADSREC_FAULT": fault} if fault else {}), **({"ADSREC_FAULT_RAISE": raise_at} if raise_at else {}),
                **(extra or {})})
    log = home.with_name(f"{home.name}.{args[0]}.log")
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=PROJECT_ROOT, env=env,
                                stdout=fh, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, log


def _finish(started: tuple[subprocess.Popen, Path]) -> subprocess.CompletedProcess:
    """Wait for the command, then kill what is left of its process group (a killed command's server)."""
    proc, log = started
    try:
        proc.wait(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")


def _adsrec(home: Path, world: dict[str, Any], *args: str, **kw: Any) -> subprocess.CompletedProcess:
    return _finish(_start(home, world, *args, **kw))


def _ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    return res.stdout


def _hashes(home: Path, *subs: str) -> dict[str, str]:
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
            for sub in subs for p in sorted((home / sub).rglob("*")) if p.is_file()}


def _manifests(home: Path) -> dict[str, str]:
    """Each step manifest's input fingerprint (the rest holds timings and run ids)."""
    return {str(p.relative_to(home)): json.loads(p.read_text())["fingerprint"]
            for p in sorted((home / "manifests").rglob("*.json"))}


def _registry(home: Path, world: dict[str, Any]) -> dict[str, Any]:
    """Versions (tags but run ids and promotion times, description), aliases, the runs' statuses."""
    from components.config import load_settings
    from components.registry.client import mlflow_client

    settings = load_settings(environ={}, overrides={"home": str(home), "pipeline": {"shared_data": str(world["shared"])}}
                             ).resolved()
    name = settings.registry.model_name
    volatile = ("run_id", "promoted_at", "promoted_by")
    with mlflow_client(settings) as client:
        versions = {int(mv.version): ({k: v for k, v in mv.tags.items() if k not in volatile}, mv.description)
                    for mv in client.search_model_versions(f"name = '{name}'")}
        aliases = {a: int(v) for m in client.search_registered_models(f"name = '{name}'") for a, v in m.aliases.items()}
        exp = client.get_experiment_by_name(settings.registry.experiment)
        runs = sorted(r.info.status for r in client.search_runs([exp.experiment_id]))
    return {"versions": versions, "aliases": aliases, "runs": runs}


def _state(home: Path, world: dict[str, Any]) -> dict[str, Any]:
    """What must equal across homes, the fingerprint tag included (it does not depend on the home's path)."""
    reg = _registry(home, world)
    return {"registry": {"versions": reg["versions"], "aliases": reg["aliases"]},
            "files": _hashes(home, "offline", "features", f"models/{DAY}/model.pt",
                              f"training/{DAY}/train.parquet"),
            "manifests": _manifests(home)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, prefect_api: str) -> dict[str, Any]:
    """The config, and a base home whose training window (three days to DAY) is backfilled. Every command
    talks to one Prefect server (tests/e2e/conftest.py): an ephemeral one per command would cost 12-22 s."""
    root = tmp_path_factory.mktemp("faults-flows")
    (root / "adsrec.yaml").write_text(CONFIG)
    world = {"root": root, "config": root / "adsrec.yaml", "shared": shared_data, "base": root / "base",
             "prefect_api": prefect_api}
    _ok(_adsrec(world["base"], world, "backfill", "--start-date", "2026-11-01", "--end-date", DAY))
    return world


def _copy(world: dict[str, Any], name: str) -> Path:
    return Path(shutil.copytree(world["base"], world["root"] / name, symlinks=True))


@pytest.fixture(scope="module")
def clean(world: dict[str, Any]) -> dict[str, Any]:
    """An uninterrupted daily on a copy of the base home, and its end state."""
    home = _copy(world, "clean")
    _ok(_adsrec(home, world, "daily", "--run-date", DAY))
    state = _state(home, world)
    assert list(state["registry"]["versions"]) == [1]
    assert _registry(home, world)["runs"] == ["FINISHED"]
    return {"home": home, "state": state}


# In the order a daily passes them: the training's MLflow run open; the gates' verdict written; the version
# created; the version registered and promoted, the gates-and-register manifest not yet written.
POINTS = ("train.after_run_start", "gates.after_verdict", "register.after_version", "gates.before_manifest")


def test_a_daily_killed_at_each_point_from_training_to_registration_reruns_to_the_uninterrupted_state(
        world: dict[str, Any], clean: dict[str, Any]) -> None:
    home = _copy(world, "killed")
    halves = []
    for point in POINTS:
        res = _adsrec(home, world, "daily", "--run-date", DAY, fault=point)
        assert res.returncode == -9, (point, res.stdout[-2000:], res.stderr[-2000:])
        halves.append(_registry(home, world))
    assert [list(h["versions"]) for h in halves] == [[], [], [1], [1]]  # the version exists from the third kill
    assert [h["aliases"] for h in halves] == [{}, {}, {}, {"champion": 1}]  # promoted before the fourth kill
    assert halves[1]["runs"] == ["KILLED", "RUNNING"]  # each daily closes the orphan run of the one before

    out = _ok(_adsrec(home, world, "daily", "--run-date", DAY))
    assert "registered: adsrec-ranker version 1" in out
    got = _state(home, world)
    for key in ("files", "manifests"):
        assert got[key] == clean["state"][key], key
    assert got["registry"]["aliases"] == clean["state"]["registry"]["aliases"]
    [(tags, description)], [(clean_tags, clean_description)] = (
        got["registry"]["versions"].values(), clean["state"]["registry"]["versions"].values())
    assert {k: (v, clean_tags.get(k)) for k, v in tags.items() if v != clean_tags.get(k)} == {}
    assert (set(tags), description) == (set(clean_tags), clean_description)
    runs = _registry(home, world)["runs"]
    assert "RUNNING" not in runs and "FINISHED" in runs  # the version's run: finished on adoption


def test_a_transient_error_after_registration_is_retried_without_a_second_version(
        world: dict[str, Any], clean: dict[str, Any]) -> None:
    home = _copy(world, "raised")
    res = _adsrec(home, world, "daily", "--run-date", DAY, raise_at="register.after_version")
    out = _ok(res)
    assert "injected transient fault at register.after_version" in res.stdout + res.stderr  # the first try failed
    assert "registered: adsrec-ranker version 1" in out
    assert _state(home, world) == clean["state"]  # the retry adopted version 1
    assert "RUNNING" not in _registry(home, world)["runs"]


# ----- rollback killed midway --------------------------------------------------------------------------------
FAIL = [{"name": "data", "value": 1.0, "threshold": 0.05, "passed": False, "details": {}}]


def _settings(home: Path, world: dict[str, Any]) -> Any:
    from components.config import load_settings

    return load_settings(environ={}, overrides={"home": str(home), "pipeline": {"shared_data": str(world["shared"])}}
                         ).resolved()


def _aliases_and_history(home: Path, world: dict[str, Any]) -> tuple[dict[str, int], list[int], set[str]]:
    from components.registry.aliases import HISTORY_TAG
    from components.registry.client import mlflow_client

    settings = _settings(home, world)
    name = settings.registry.model_name
    with mlflow_client(settings) as client:
        history = [int(h["version"]) for h in json.loads(client.get_registered_model(name).tags[HISTORY_TAG])]
        tags = set(client.get_model_version(name, "2").tags)
    return _registry(home, world)["aliases"], history, {t for t in tags if t.startswith("rolled_back")}


def test_a_rollback_killed_after_moving_champion_is_finished_by_the_rerun(
        world: dict[str, Any], clean: dict[str, Any]) -> None:
    import datetime as dt

    from components.registry.aliases import promote
    from components.registry.register import register_model

    homes = {}
    for name in ("rolled", "killed-rollback"):  # champion 2 (forced), previous 1
        home = homes[name] = Path(shutil.copytree(clean["home"], world["root"] / name, symlinks=True))
        settings = _settings(home, world)
        register_model(settings, home / "models" / DAY, {"arch": "stem"}, FAIL,
                       data_window=(dt.date(2026, 11, 1), dt.date.fromisoformat(DAY)))
        promote(settings, 1, force=True, reason="test", by="tester")
        promote(settings, 2, force=True, reason="test", by="tester")
    _ok(_adsrec(homes["rolled"], world, "rollback"))
    uninterrupted = _aliases_and_history(homes["rolled"], world)
    assert uninterrupted[0]["champion"] == 1 and "previous" not in uninterrupted[0] and uninterrupted[1] == [1]

    home = homes["killed-rollback"]
    assert _adsrec(home, world, "rollback", fault="rollback.after_champion").returncode == -9
    assert _registry(home, world)["aliases"] == {"champion": 1, "previous": 1}  # half done
    out = _ok(_adsrec(home, world, "rollback"))
    assert _aliases_and_history(home, world) == uninterrupted
    assert "2" in out and "1" in out


# ----- a daily and a backfill at once ------------------------------------------------------------------------
def test_a_daily_beside_a_backfill_gives_the_data_of_one_after_the_other(world: dict[str, Any]) -> None:
    untrained = {"ADSREC_TRAINING__ENABLED": "false"}
    together = world["root"] / "together"
    started = [_start(together, world, "backfill", "--start-date", "2026-11-01", "--end-date", DAY),
               _start(together, world, "daily", "--run-date", "2026-11-04", extra=untrained)]
    outs = [_finish(s) for s in started]
    for res in outs:
        assert "Traceback" not in _ok(res), res.stdout[-3000:]
    after = _copy(world, "after")  # the base home is the backfill alone; the daily after it
    _ok(_adsrec(after, world, "daily", "--run-date", "2026-11-04", extra=untrained))
    got, expected = _data(together), _data(after)
    assert got["offline"] == expected["offline"] and set(got["features"]) == set(expected["features"])
    for key, columns in expected["features"].items():
        assert set(got["features"][key]) == set(columns), key
        for name, values in columns.items():
            other = got["features"][key][name]
            if key.split("/")[1] in REPRESENTATION_VIEWS and name not in ("ad_id", "user_id", "event_timestamp"):
                continue  # same entities and days only: see REPRESENTATION_VIEWS
            if _floats(values):  # floats, vectors: to the encoder's noise
                import numpy as np

                assert np.allclose(np.asarray(values, float), np.asarray(other, float), atol=1e-5, equal_nan=True), (
                    key, name)
            else:
                assert values == other, (key, name)


# Views built from the representations (vector stores, the semantic-ID codebook, the graph). Beside a
# backfill, the codebook of a day can be fitted on another set of ads than one after the other, so the
# semantic IDs (and the vectors, in the 7th decimal) differ: an open finding (docs/reliability/flows.md,
# "Limits"); the test holds them to the same entities and days, and every other view to the same values.
REPRESENTATION_VIEWS = {"ad_semantic_id", "ad_text_embedding", "ad_visual_embedding", "ad_graph_embedding",
                        "user_graph_embedding", "user_text_interest", "user_visual_interest"}


def _data(home: Path) -> dict[str, Any]:
    """The offline store's files (hash; the ingest index, a DuckDB file, left out) and each feature
    partition's columns without ``created_timestamp`` (the build's wall-clock time, Feast's convention).
    Float columns are compared to 1e-5: the text encoder's vectors move in the 7th decimal when a process
    encodes another batch of ads."""
    import pyarrow.parquet as pq

    offline = {k: v for k, v in _hashes(home, "offline").items() if "/_index/" not in k}
    features = {}
    for p in sorted((home / "features").rglob("*.parquet")):
        table = pq.read_table(p)
        key = [c for c in ("ad_id", "user_id") if c in table.column_names][:1]
        table = table.drop_columns([c for c in ("created_timestamp",) if c in table.column_names])
        features[str(p.relative_to(home))] = (table.sort_by([(c, "ascending") for c in key]) if key else table
                                              ).to_pydict()
    assert any("date=2026-11-04" in k for k in features) and any("date=2026-11-01" in k for k in offline)
    return {"offline": offline, "features": features}


def _floats(values: list[Any]) -> bool:
    """A column of floats or of float vectors (no nulls mixed in)."""
    first = next((v for v in values if v is not None), None)
    if isinstance(first, list):
        first = next((x for x in first if x is not None), None)
    return isinstance(first, float) and None not in values

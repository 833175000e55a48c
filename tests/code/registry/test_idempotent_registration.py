"""Idempotent registration (issue 14; components/registry/idempotence.py, docs/reliability/registration.md):
a registration killed at any of its fault points and run again leaves exactly the versions, aliases and
tags of an uninterrupted one, and the runs the dead processes left RUNNING end KILLED; a retry adopts the
version instead of registering the model twice.

One small marketplace is simulated and one small STEM ranker trained per module; each test registers it
into its own home. The killed registrations run in a subprocess (``python -c`` with ``ADSREC_FAULT``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.code.registry.test_registry import FAIL, PASS, RANKER, SIMULATOR, WINDOW
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.shared_data

# What one process of the daily run does around a registration: the train step opens the training run
# (unless its step is skipped on a re-run: "with_run" false), the register step registers into it.
DRIVER = """
import datetime as dt, json, sys
from components.config import load_settings
from components.registry.register import register_model
from components.registry.training_run import start_training_run
a = json.loads(sys.argv[1])
settings = load_settings(environ={}, overrides=a["overrides"]).resolved()
window = tuple(dt.date.fromisoformat(d) for d in a["window"])
run = start_training_run(settings, window[1], a["training_set"]) if a["with_run"] else None
v = register_model(settings, a["model_dir"], {"arch": "stem"}, a["gates"], data_window=window,
                   training_set=a["training_set"], training_run=run.to_dict() if run else None)
print(json.dumps(v.to_dict()))
"""


def _overrides(home: Path) -> dict[str, Any]:
    return {"home": str(home), "pipeline": {"shared_data": str(SHARED_DATA)}, "simulator": SIMULATOR}


def _settings(home: Path) -> Any:
    from components.config import load_settings

    return load_settings(environ={}, overrides=_overrides(home)).resolved()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, torch_one_thread: None) -> dict[str, Any]:
    """A saved small ranker and its training set (parquet)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    import pyarrow.parquet as pq

    from components.experiments.data import simulator_feature_table
    from components.sources.simulator import simulate
    from components.training.encoders import window_split
    from components.training.loop import train_ranker
    from components.training.train_config import TrainConfig
    from models.config import RankerConfig

    base = tmp_path_factory.mktemp("idempotent")
    table = simulator_feature_table(simulate(_settings(base / "sim"), days=3))
    train, valid, _ = window_split(table)
    result = train_ranker(None, train, valid, RankerConfig(**RANKER),
                          TrainConfig(epochs=1, batch_size=256, lr=3e-3, patience=0, log_every=0, device="cpu"))
    training_set = base / "training_set.parquet"
    pq.write_table(table, training_set)
    return {"model_dir": result.save(base / "model" / WINDOW[1].isoformat()), "training_set": training_set}


def _register(model: dict[str, Any], home: Path, *, with_run: bool = True, gates: Any = PASS) -> Any:
    """The driver's steps in this process."""
    from components.registry.register import register_model
    from components.registry.training_run import start_training_run

    settings = _settings(home)
    run = start_training_run(settings, WINDOW[1], model["training_set"]) if with_run else None
    return register_model(settings, model["model_dir"], {"arch": "stem"}, gates, data_window=WINDOW,
                          training_set=model["training_set"], training_run=run.to_dict() if run else None)


def _drive(model: dict[str, Any], home: Path, fault: str | None, with_run: bool) -> subprocess.CompletedProcess:
    from components.config import PROJECT_ROOT

    args = {"overrides": _overrides(home), "window": [d.isoformat() for d in WINDOW], "gates": PASS,
            "model_dir": str(model["model_dir"]), "training_set": str(model["training_set"]), "with_run": with_run}
    env = {k: v for k, v in os.environ.items() if k != "ADSREC_FAULT"}
    env.update({"PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", **({"ADSREC_FAULT": fault} if fault else {})})
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps(args)], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _state(home: Path) -> dict[str, Any]:
    """The registry as the tests compare it: versions (tags but the run id, description), aliases, runs."""
    from components.registry.client import mlflow_client

    settings = _settings(home)
    name = settings.registry.model_name
    with mlflow_client(settings) as client:
        versions = {int(mv.version): ({k: v for k, v in mv.tags.items() if k != "run_id"}, mv.description, mv.run_id)
                    for mv in client.search_model_versions(f"name = '{name}'")}
        models = client.search_registered_models(f"name = '{name}'")
        aliases = {a: int(v) for m in models for a, v in m.aliases.items()}
        exp = client.get_experiment_by_name(settings.registry.experiment)
        runs = {r.info.run_id: (r.info.status, dict(r.data.tags)) for r in client.search_runs([exp.experiment_id])}
    return {"versions": versions, "aliases": aliases, "runs": runs}


def test_killed_at_each_registration_point_then_rerun_equals_an_uninterrupted_run(
        model: dict[str, Any], tmp_path: Path) -> None:
    import components.registry.register  # noqa: F401 - declares its fault points
    from components.faults import KNOWN_POINTS

    assert {"train.after_run_start", "register.before_version", "register.after_version"} <= KNOWN_POINTS
    _register(model, tmp_path / "clean")
    clean = _state(tmp_path / "clean")
    assert list(clean["versions"]) == [1] and clean["aliases"] == {"challenger": 1}

    home = tmp_path / "killed"
    killed_versions = []
    for point in ("train.after_run_start", "register.before_version", "register.after_version"):
        res = _drive(model, home, point, with_run=True)
        assert res.returncode == -9, (point, res.stdout, res.stderr[-3000:])
        killed_versions.append(list(_state(home)["versions"]))
    assert killed_versions == [[], [], [1]]  # the last kill came after MLflow created version 1
    before = _state(home)
    # each new training run of the day closed the one the previous kill left open; the last is open
    assert before["aliases"] == {} and sorted(s for s, _ in before["runs"].values()) == ["KILLED", "KILLED", "RUNNING"]

    # The re-run of the day: its train step is done (skipped), so the registration opens no training run.
    res = _drive(model, home, None, with_run=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["version"] == 1
    after = _state(home)
    assert after["aliases"] == clean["aliases"]
    [(version, (tags, description, run_id))] = after["versions"].items()
    assert (version, tags, description) == (1, *clean["versions"][1][:2])  # fingerprint tag included
    assert set(after["runs"]) == set(before["runs"])  # the re-run opened no run: it adopted version 1
    for rid, (status, rtags) in after["runs"].items():  # every run was closed as an orphan by the next one
        assert rtags["last_failure"].startswith("orphan: left RUNNING"), (rid, rtags)
        # the version's run (killed after it created the version) reads FINISHED again once adopted
        assert status == ("FINISHED" if rid == run_id else "KILLED"), (rid, status)
    assert after["runs"][run_id][1]["registered"] == "true" and after["runs"][run_id][1]["adsrec.finished_by"]


def test_a_retry_adopts_the_version_and_another_verdict_is_another_version(
        model: dict[str, Any], tmp_path: Path) -> None:
    from components.registry.idempotence import DUPLICATE_TAG, FINGERPRINT_TAG
    from components.registry.training_run import start_training_run

    home = tmp_path / "home"
    first = _register(model, home)
    again = _register(model, home)  # a retry of the gates-and-register task, with a new training run
    assert (again.version, again.run_id, again.aliases, again.model_uri) == (
        first.version, first.run_id, ("challenger",), first.model_uri)
    state = _state(home)
    assert list(state["versions"]) == [1] and state["versions"][1][0][FINGERPRINT_TAG]
    [duplicate] = [r for rid, r in state["runs"].items() if rid != first.run_id]
    assert duplicate[0] == "FINISHED" and duplicate[1][DUPLICATE_TAG] == "adsrec-ranker/1"
    assert duplicate[1]["registered"] == "false" and state["runs"][first.run_id][0] == "FINISHED"

    failed = _register(model, home, gates=FAIL)  # another verdict: another registration, challenger stays
    assert (failed.version, failed.aliases) == (2, ())
    assert _state(home)["aliases"] == {"challenger": 1}

    # A RUNNING run of the day whose process is alive (this one) is not an orphan.
    settings = _settings(home)
    live = start_training_run(settings, WINDOW[1], model["training_set"])
    start_training_run(settings, WINDOW[1] + dt.timedelta(days=1), model["training_set"])  # another day
    start_training_run(settings, WINDOW[1], model["training_set"])
    assert _state(home)["runs"][live.run_id][0] == "RUNNING"


def test_the_fingerprint_does_not_depend_on_where_the_home_lies(model: dict[str, Any], tmp_path: Path) -> None:
    """The daily saves ``checkpoint_dir = <model dir>/checkpoints`` (absolute) in train_config.json: a home and
    its copy hash it relative to the home, so a copied home finds the versions it registered."""
    import json
    import shutil

    from components.registry.idempotence import registration_fingerprint

    def fingerprint(folder: Path, checkpoints: Path) -> str:
        cfg = json.loads((folder / "train_config.json").read_text())
        (folder / "train_config.json").write_text(json.dumps({**cfg, "checkpoint_dir": str(checkpoints)}, indent=1))
        # evaluation.json and history.json (timings, the run id) are not hashed: they differ between trainings
        (folder / "evaluation.json").write_text(json.dumps({"model_dir": str(folder), "seconds": len(str(folder))}))
        return registration_fingerprint(folder, *WINDOW, {"user_profile": 1}, model["training_set"], PASS, "rev")

    a = Path(shutil.copytree(model["model_dir"], tmp_path / "home" / "models" / "day"))
    b = Path(shutil.copytree(model["model_dir"], tmp_path / "copy of it's home" / "models" / "day"))
    assert fingerprint(a, a / "checkpoints") == fingerprint(b, b / "checkpoints")
    assert fingerprint(a, tmp_path / "elsewhere") != fingerprint(b, tmp_path / "elsewhere" / "other")
    cfg = json.loads((b / "train_config.json").read_text())  # the content counts
    (b / "train_config.json").write_text(json.dumps({**cfg, "checkpoint_dir": str(b / "checkpoints"), "lr": 1.0}))
    assert registration_fingerprint(a, *WINDOW, {"user_profile": 1}, model["training_set"], PASS, "rev") != (
        registration_fingerprint(b, *WINDOW, {"user_profile": 1}, model["training_set"], PASS, "rev"))

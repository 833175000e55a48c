"""A home is relocatable and shareable (issue 14, docs/reliability/home.md).

One small home whose path holds a single quote and a space is built by the real steps (deliver, ingest,
features, representations; a DuckDB training set; a tiny ranker registered and promoted; the online store).
Its copy, with the original moved out of the way, scores with ``adsrec score --alias champion`` and
registers a new version on its own; the original's files are byte-identical afterwards. Two commands
started at once on a fresh home migrate the Prefect database once, without an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.config import PROJECT_ROOT

pytestmark = pytest.mark.shared_data
DAYS = 2
CONFIG = """\
simulator: {n_users: 80, sessions_per_user_day: 2.0, n_initial_ads: 80, new_ads_per_day: 5, new_users_per_day: 3,
            n_candidates: 30, click_base_logit: -2.5}
representations: {rq_codes: 8, rq_pca_dim: 8, graph_dim: 16, graph_epochs: 2, graph_window_days: 2}
"""
PASS = [{"name": "data", "value": 0.0, "threshold": 0.05, "passed": True, "details": {}}]
REGISTER = """
import datetime as dt, json, sys
from components.config import load_settings
from components.registry.aliases import load_champion
from components.registry.register import register_model
s = load_settings().resolved()
v = register_model(s, s.home / "models" / "tiny", {"arch": "stem"}, json.loads(sys.argv[1]),
                   data_window=(dt.date.fromisoformat(sys.argv[2]), dt.date.fromisoformat(sys.argv[3])))
load_champion(s, "challenger")  # the new version's artifacts load from this home
print("registered", v.version)
"""


def _env(home: Path, config: Path, shared: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADSREC_", "MLFLOW_TRACKING", "PREFECT_API_URL"))}
    return {**env, "PYTHONPATH": str(PROJECT_ROOT), "ADSREC_HOME": str(home), "ADSREC_CONFIG": str(config),
            "ADSREC_PIPELINE__SHARED_DATA": str(shared)}


def _run(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, torch_one_thread: None) -> dict[str, Any]:
    """The quoted home through the real steps, one tiny ranker registered and promoted, the online store."""
    import torch

    from components.config import load_settings
    from components.registry.aliases import promote
    from components.registry.register import register_model
    from components.serving.online_store import materialize_online
    from components.training.loop import train_ranker
    from components.training.train_config import TrainConfig
    from components.training.training_set import build_training_set
    from models.config import RankerConfig
    from tests.code.serving.worlds import pipeline_days

    base = tmp_path_factory.mktemp("relocation")
    config = base / "adsrec.yaml"
    config.write_text(CONFIG)
    home = base / "it's a home"
    settings = load_settings(config, environ={}, overrides={
        "home": str(home), "pipeline": {"shared_data": str(shared_data)}}).resolved()
    days = pipeline_days(settings, DAYS)  # the features step on a path with a quote and a space
    table = pq.read_table(build_training_set(settings, days[-1], days=DAYS, join_path="duckdb"))
    assert table.num_rows > 100 and {"user_id", "ad_id", "click"} <= set(table.column_names)
    torch.manual_seed(0)
    result = train_ranker(None, table, None,
                          RankerConfig(arch="stem", embedding_dim=4, expert_hidden=(8,), gate_hidden=(4,),
                                       tower_hidden=(4,), mnse_combine="sum"),
                          TrainConfig(epochs=1, batch_size=512, log_every=0, device="cpu", patience=0, seed=0))
    model_dir = result.save(home / "models" / "tiny")
    register_model(settings, model_dir, {"arch": "stem"}, PASS, data_window=(days[0], days[-1]))
    promote(settings, 1)
    materialize_online(settings, days[-1])
    pairs = base / "pairs.parquet"
    user, slot = table["user_id"][0].as_py(), table["slot"][0].as_py()
    ads = list(dict.fromkeys(table["ad_id"].to_pylist()))[:12]
    pq.write_table(pa.table({"user_id": [user] * len(ads), "ad_id": ads, "slot": [slot] * len(ads),
                             "event_time": [table["event_time"][0].as_py()] * len(ads)}), pairs)
    return {"base": base, "home": home, "config": config, "shared": shared_data, "days": days, "pairs": pairs}


def test_a_copied_home_scores_and_registers_on_its_own(built: dict[str, Any]) -> None:
    base, home, days = built["base"], built["home"], built["days"]
    score = ["-m", "flows.cli", "score", "--pairs", str(built["pairs"]), "--alias", "champion", "--top", "0"]
    original = _run([*score, "--out", str(base / "original.parquet")], _env(home, built["config"], built["shared"]))
    assert original.returncode == 0, original.stdout + original.stderr

    copy = base / "copy of it's home"
    shutil.copytree(home, copy, symlinks=True)
    before = _hashes(home)
    away = base / "moved-away"
    home.rename(away)  # the original is gone while the copy works (root ignores chmod 000)
    try:
        env = _env(copy, built["config"], built["shared"])
        scored = _run([*score, "--out", str(base / "copy.parquet")], env)
        assert scored.returncode == 0, scored.stdout + scored.stderr
        # Another data window: the same window would be the same training result, and registration adopts it
        # (components/registry/idempotence.py) instead of registering it again.
        registered = _run(["-c", REGISTER, json.dumps(PASS), str(days[0]), str(days[0])], env)
        assert registered.returncode == 0 and "registered 2" in registered.stdout, registered.stdout + registered.stderr
        assert not home.exists(), "the copy wrote into the original home's path"
    finally:
        away.rename(home)
    assert _hashes(home) == before  # the original is untouched (its registry still has one version)

    a, b = pq.read_table(base / "original.parquet"), pq.read_table(base / "copy.parquet")
    assert a.num_rows == b.num_rows == 12 and a.column("p_click").equals(b.column("p_click"))
    con = sqlite3.connect(copy / "mlflow" / "mlflow.db")
    try:
        rows = [r for t, c in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                               ("logged_models", "artifact_location"), ("model_versions", "source"),
                               ("model_versions", "storage_location"))
                for r in con.execute(f"SELECT {c} FROM {t} WHERE {c} LIKE 'file:%'").fetchall()]
        versions = con.execute("SELECT count(*) FROM model_versions").fetchone()[0]
    finally:
        con.close()
    copy_uri = copy.resolve().as_uri()
    assert versions == 2 and len(rows) >= 4
    assert all(r[0].startswith(copy_uri + "/") for r in rows), rows  # every location is the copy's own
    assert any((copy / "mlflow" / "artifacts").rglob("model.pt"))


def test_two_commands_at_once_on_a_fresh_home_migrate_prefect_once(tmp_path: Path, shared_data: Path) -> None:
    config = tmp_path / "adsrec.yaml"
    config.write_text(CONFIG)
    env = _env(tmp_path / "home", config, shared_data)
    procs = [subprocess.Popen([sys.executable, "-m", "flows.cli", "ingest", "--date", day], cwd=PROJECT_ROOT,
                              env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for day in ("2026-11-01", "2026-11-02")]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for out in outs:
        assert "ERROR" not in out and "duplicate column" not in out and "Traceback" not in out, out

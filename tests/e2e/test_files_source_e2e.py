"""End to end, as a new user would: a log in the user's own column names (CSV for one table, parquet for
the others, hive date folders and flat files, no images, no user profile, tasks ``like`` and ``share``,
empty days, items created before the window) goes through ``adsrec backfill`` then ``adsrec daily``
from a YAML file alone, through the CLI, to a registered model with every gate evaluated, and the
user's folder is left byte-identical.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.code.sources.test_files_source import DAYS, START, make_user_log, tree_digest

REPO = Path(__file__).resolve().parents[2]


def _adsrec(*args: str, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.flows
def test_a_users_own_log_reaches_a_registered_model_from_yaml_alone(tmp_path: Path, prefect_api: str) -> None:
    data = tmp_path / "userdata"
    files = make_user_log(data)
    before = tree_digest(data)
    config = tmp_path / "mylog.yaml"
    config.write_text(yaml.safe_dump({
        "pipeline": {"source": "files", "training_days": DAYS},
        "files": files,
        # small and quick: one epoch; the model is not the point here
        "training": {"train": {"epochs": 1, "batch_size": 512, "patience": 1}},
        "representations": {"graph_epochs": 2},
    }))
    home = tmp_path / "home"
    # One Prefect server for the session's CLI tests (tests/e2e/conftest.py) instead of an ephemeral one each.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ADSREC_")}, "PREFECT_API_URL": prefect_api}
    last = START + dt.timedelta(days=DAYS - 1)

    back = _adsrec("--config", str(config), "--home", str(home), "backfill", "--start-date", START.isoformat(),
                   "--end-date", last.isoformat(), env=env)
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-3000:]
    for d in range(DAYS):  # every day landed, the empty ones as empty partitions
        day = START + dt.timedelta(days=d)
        assert (home / "offline" / "impressions" / f"date={day}" / "part-0.parquet").is_file(), day

    daily = _adsrec("--config", str(config), "--home", str(home), "daily", "--run-date", last.isoformat(), env=env)
    assert daily.returncode == 0, daily.stdout[-3000:] + daily.stderr[-3000:]

    summary = json.loads(sorted((home / "runs").glob("*-daily.json"))[-1].read_text())
    assert summary["status"] == "completed"
    gates = next(s for s in summary["stages"] if s["stage"] == "gates")
    assert {g["name"] for g in gates["gates"]} == {"data", "collapse", "entanglement", "model", "baseline"}
    assert all("passed" in g and "threshold" in g for g in gates["gates"])  # each one evaluated
    assert str(gates["registered"]["version"]) == "1"
    assert "gate" in daily.stdout.lower() and "like" in daily.stdout and "share" in daily.stdout

    assert tree_digest(data) == before  # the user's folder, byte for byte

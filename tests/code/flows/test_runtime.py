"""flows/runtime.py: the process environment a command sets up (umask) and the first migration of the
local Prefect database, serialised by a file lock (issue 14: two commands on a fresh home)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from components.config import PROJECT_ROOT

MIGRATE = "from flows.runtime import ensure_prefect_database; ensure_prefect_database(); print('migrated')"
UMASK = ("import os; from components.config import load_settings; from flows.runtime import configure_environment; "
         "configure_environment(load_settings().resolved()); print(oct(os.umask(0)))")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADSREC_", "PREFECT_API_URL"))}
    return {**env, "PYTHONPATH": str(PROJECT_ROOT), **extra}


def test_three_processes_migrate_a_fresh_prefect_database_once_without_error(tmp_path: Path) -> None:
    """Without the lock, three processes running Prefect's migrations at once on a fresh database fail
    ("duplicate column name" or alembic's "expected to match one row"); with it, all succeed."""
    env = _env(PREFECT_HOME=str(tmp_path / "prefect"))
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATE], cwd=PROJECT_ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(3)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert all(out.strip().endswith("migrated") and "ERROR" not in out and "duplicate" not in out for out in outs)
    assert (tmp_path / "prefect" / "prefect.db").is_file()
    assert len(list((tmp_path / "prefect").glob(".adsrec-db-migrated-*"))) == 1


def test_a_command_sets_the_homes_umask(tmp_path: Path) -> None:
    for configured, expected in ((None, "0o27"), ("077", "0o77")):
        env = _env(ADSREC_HOME=str(tmp_path / "home"), **({"ADSREC_HOME_UMASK": configured} if configured else {}))
        out = subprocess.run([sys.executable, "-c", UMASK], cwd=PROJECT_ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == expected, out

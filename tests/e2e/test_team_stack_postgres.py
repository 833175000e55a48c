"""The team stack on a real Postgres (issue 15): ``infra/local-postgres.sh`` starts a throwaway cluster with
the databases ``prefect`` and ``mlflow``; a Prefect server and the MLflow tracking server run on it, on free
loopback ports; the process-pool deployments of ``infra/prefect.yaml`` are deployed to a process work pool
and a process worker runs a backfill, a daily and a promotion. The records are then read back from both
databases with SQL. Every process started here is stopped in the fixture's finalizer, whatever failed.

Skips with the reason when Postgres is not installed (``make postgres`` / ``infra/local-postgres.sh install``
installs it) or psycopg, MLflow's Postgres driver, is missing (``pip install -e '.[team]'``).
``make test-postgres`` runs it (infra/README.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, SHARED_DATA

pytestmark = [pytest.mark.postgres, pytest.mark.flows, pytest.mark.shared_data]

from tests.e2e.test_flows import TINY  # noqa: E402  (the same tiny marketplace)

SCRIPT = REPO / "infra" / "local-postgres.sh"
POOL = "adsrec-process"
FLOWS = ("daily", "backfill", "promote", "rollback")


@dataclass
class Team:
    home: Path
    logs: Path
    api: str
    mlflow: str
    prefect_db: str   # libpq URLs (postgresql://...) for the checks
    mlflow_db: str
    runs: dict[str, Any]

    def log_tail(self, name: str, n: int = 60) -> str:
        from flows.processes import log_file, log_tail

        return log_tail(log_file(self.logs, name), n)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster(folder: Path) -> dict[str, str]:
    """Start a cluster in ``folder`` with the script (never installing: a test does not run apt-get) and
    return its exports. Skips when Postgres is not installed."""
    res = subprocess.run(["bash", str(SCRIPT), "start", "--dir", str(folder), "--no-install"],
                         capture_output=True, text=True, timeout=180)
    if res.returncode == 3:
        pytest.skip(f"no Postgres for the team-stack test: {res.stderr.strip().splitlines()[-1]}")
    assert res.returncode == 0, f"infra/local-postgres.sh failed ({res.returncode}):\n{res.stderr}"
    out = {}
    for line in res.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = value.strip("'")
    return out


def _libpq(url: str) -> str:
    """postgresql+asyncpg://... (SQLAlchemy's form) -> postgresql://... (psycopg's)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+')[0]}://{rest}"


def _run(cmd: list[str], env: dict[str, str]) -> str:
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def _process_pool_file(folder: Path) -> Path:
    """infra/prefect.yaml with its process-pool deployments only, pulled into this checkout (the image's
    /opt/adsrec is the repository root here)."""
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    spec["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    spec["deployments"] = [d for d in spec["deployments"] if d["work_pool"]["name"] == POOL]
    path = folder / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _sql(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        return conn.execute(query, params).fetchall()


def _launch_servers(work: Path, pg: dict[str, str], base: dict[str, str], started: list[Any]) -> tuple[str, str]:
    from flows.processes import ServiceSpec, http_ok, launch, wait_ready

    p_port, m_port = _port(), _port()
    api, mlflow = f"http://127.0.0.1:{p_port}/api", f"http://127.0.0.1:{m_port}"
    artifacts = work / "mlflow-artifacts"
    specs = [
        ServiceSpec(name="prefect", port=p_port, url=api, health_url=f"{api}/health", marker="server start",
                    command=[sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(p_port)],
                    env={**base, "PREFECT_API_DATABASE_CONNECTION_URL": pg["PREFECT_API_DATABASE_CONNECTION_URL"],
                         "PREFECT_SERVER_UI_API_URL": api}),
        # As infra/docker-compose.yml: Postgres backend store, artifacts proxied by the server.
        ServiceSpec(name="mlflow", port=m_port, url=mlflow, health_url=f"{mlflow}/health", marker="mlflow",
                    command=[sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(m_port),
                             "--workers", "1", "--backend-store-uri", pg["ADSREC_MLFLOW_BACKEND_STORE_URI"],
                             "--serve-artifacts", "--artifacts-destination", str(artifacts),
                             "--default-artifact-root", "mlflow-artifacts:/"],
                    env={**base, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}),
    ]
    launched = [launch(work / "services", spec) for spec in specs]
    started.extend(launched)
    deadline = time.monotonic() + 300
    for one in launched:
        wait_ready(work / "services", one, deadline, lambda url=one.spec.health_url: http_ok(url), "its /health")
    return api, mlflow


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg (MLflow's Postgres driver) is not installed: pip install -e '.[team]'")
    from flows.processes import ServiceSpec, launch, stop_pid

    work = tmp_path_factory.mktemp("team")
    (work / "services").mkdir()
    # Under /tmp, not pytest's 0700 folder: as root the server runs as `postgres`, which must reach it.
    pgdir = Path(tempfile.mkdtemp(prefix="adsrec-pg-"))
    started: list[Any] = []
    try:
        pg = _cluster(pgdir)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "ADSREC_"))}
        base.update({**TINY, "ADSREC_HOME": str(work / "home"), "ADSREC_PIPELINE__SHARED_DATA": str(SHARED_DATA),
                     "PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                     "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"})
        api, mlflow = _launch_servers(work, pg, base, started)
        client = {**base, "PREFECT_API_URL": api, "ADSREC_REGISTRY__TRACKING_URI": mlflow,
                  "MLFLOW_TRACKING_URI": mlflow,
                  "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        # What the compose stack's one-shot prefect-deploy job does, then its process worker.
        _run([sys.executable, "-m", "prefect", "work-pool", "create", POOL, "--type", "process", "--overwrite"], client)
        _run([sys.executable, "-m", "flows.deployments", "limit"], client)
        _run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
              "--prefect-file", str(_process_pool_file(work))], client)
        started.append(launch(work / "services", ServiceSpec(
            name="worker", port=None, url=None, health_url=None, marker="worker start",
            command=[sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process"],
            env={**client, "PREFECT_WORKER_QUERY_SECONDS": "1"})))
        yield Team(home=work / "home", logs=work / "services", api=api, mlflow=mlflow,
                   prefect_db=_libpq(pg["PREFECT_API_DATABASE_CONNECTION_URL"]),
                   mlflow_db=_libpq(pg["ADSREC_MLFLOW_BACKEND_STORE_URI"]), runs={})
    finally:
        for one in reversed(started):
            stop_pid(one.proc.pid, grace=20)
        subprocess.run(["bash", str(SCRIPT), "stop", "--dir", str(pgdir)], capture_output=True, timeout=120)
        shutil.rmtree(pgdir, ignore_errors=True)


def _run_deployment(team: Team, name: str, **parameters: Any) -> Any:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: team.api}):
        run = run_deployment(name, parameters=parameters, timeout=600, poll_interval=2)
    assert run.state is not None and run.state.is_completed(), (
        f"{name} ended {run.state!r}; worker log:\n{team.log_tail('worker')}")
    team.runs[name] = run
    return run


def test_both_servers_keep_their_state_in_postgres(team: Team) -> None:
    """Both schemas were migrated into their own database, and the deployments live in Prefect's."""
    assert _sql(team.prefect_db, "SELECT current_database()") == [("prefect",)]
    assert _sql(team.prefect_db, "SELECT count(*) FROM alembic_version")[0][0] == 1
    assert _sql(team.mlflow_db, "SELECT count(*) FROM alembic_version")[0][0] == 1
    rows = _sql(team.prefect_db, "SELECT f.name, d.name, wp.name FROM deployment d JOIN flow f ON f.id = d.flow_id "
                                 "JOIN work_queue wq ON wq.id = d.work_queue_id JOIN work_pool wp ON wp.id = wq.work_pool_id")
    assert sorted(rows) == sorted((flow, POOL, POOL) for flow in FLOWS)
    assert _sql(team.prefect_db, "SELECT name, \"limit\", active FROM concurrency_limit_v2") == [
        ("adsrec-training", 1, True)]


def test_backfill_daily_and_promote_run_on_the_worker_and_land_in_both_databases(team: Team) -> None:
    _run_deployment(team, f"backfill/{POOL}", start_date="2026-11-01", end_date="2026-11-02",
                    representations=False)
    _run_deployment(team, f"daily/{POOL}", run_date="2026-11-03")
    daily = json.loads(sorted((team.home / "runs").glob("*-daily.json"))[-1].read_text())
    gates = next(s for s in daily["stages"] if s["stage"] == "gates")
    version = int(gates["registered"]["version"])
    _run_deployment(team, f"promote/{POOL}", version=version, force=True, reason="team-stack test")
    # The registry went to the server, not to a SQLite file in the home.
    assert not (team.home / "mlflow" / "mlflow.db").exists()

    ids = [str(run.id) for run in team.runs.values()]
    rows = _sql(team.prefect_db, "SELECT f.name, d.name, fr.state_type::text, fr.infrastructure_pid IS NOT NULL "
                                 "FROM flow_run fr JOIN flow f ON f.id = fr.flow_id "
                                 "JOIN deployment d ON d.id = fr.deployment_id WHERE fr.id::text = ANY(%s)", ids)
    assert sorted(rows) == [(flow, POOL, "COMPLETED", True) for flow in ("backfill", "daily", "promote")], rows
    tasks = dict(_sql(team.prefect_db, "SELECT state_type::text, count(*) FROM task_run "
                                       "WHERE flow_run_id::text = ANY(%s) GROUP BY 1", ids))
    assert tasks.get("COMPLETED", 0) > 0 and not tasks.get("FAILED"), tasks

    model = gates["registered"]["name"]
    assert _sql(team.mlflow_db, "SELECT name FROM registered_models") == [(model,)]
    versions = _sql(team.mlflow_db, "SELECT version, status, run_id IS NOT NULL FROM model_versions WHERE name = %s",
                    model)
    assert versions == [(version, "READY", True)]
    aliases = dict(_sql(team.mlflow_db, "SELECT alias, version FROM registered_model_aliases WHERE name = %s", model))
    assert aliases["champion"] == version, aliases
    runs = _sql(team.mlflow_db, "SELECT r.status, e.name FROM runs r JOIN experiments e "
                                "ON e.experiment_id = r.experiment_id WHERE r.run_uuid = "
                                "(SELECT run_id FROM model_versions WHERE name = %s AND version = %s)", model, version)
    assert runs and runs[0][0] == "FINISHED", runs

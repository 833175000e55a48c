"""Deployments against a real Prefect server on loopback: ``adsrec up`` starts the Prefect server, the
MLflow UI and the deployment server on free ports in a temporary home; the tests trigger a backfill
through the API, watch the daily schedule create runs, check the training slot keeps two flow runs
apart, and ``adsrec down`` stops everything (also in the finalizer, whatever failed)."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import SHARED_DATA

pytestmark = [pytest.mark.flows, pytest.mark.shared_data]

from tests.e2e.test_flows import TINY  # noqa: E402  (the same tiny marketplace)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, accept: str = "application/json") -> tuple[int, str]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class Stack:
    home: Path
    settings: Any
    api: str
    ui: str
    mlflow: str
    up_output: str

    def log_tail(self, name: str, n: int = 40) -> str:
        p = self.home / "services" / f"{name}.log"
        return "\n".join(p.read_text(errors="replace").splitlines()[-n:]) if p.is_file() else "(no log)"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    from components.config import load_settings
    from flows import services
    from flows.cli.main import app

    home = tmp_path_factory.mktemp("deployments") / "home"
    saved = dict(os.environ)
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.update(TINY)
    os.environ.update({
        "ADSREC_HOME": str(home),
        "ADSREC_PIPELINE__SHARED_DATA": str(SHARED_DATA),
        "ADSREC_DEPLOY__PREFECT_PORT": str(_free_port()),
        "ADSREC_DEPLOY__MLFLOW_PORT": str(_free_port()),
        "ADSREC_DEPLOY__DATA_DOCS_PORT": str(_free_port()),
        "ADSREC_SERVING__PORT": str(_free_port()),
        "PREFECT_HOME": str(home / "prefect"),
        # The serve process looks for due runs every second instead of every 10 s.
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    })
    settings = load_settings().resolved()
    try:
        res = CliRunner().invoke(app, ["up", "--timeout", "240"])
        assert res.exit_code == 0, res.output
        yield Stack(home=home, settings=settings, api=services.prefect_api_url(settings),
                    ui=services.prefect_ui_url(settings), mlflow=services.mlflow_url(settings), up_output=res.output)
    finally:
        services.down(settings, grace=15, echo=lambda _: None)
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture()
def api(stack: Stack) -> Iterator[str]:
    """This process's Prefect client talks to the stack's server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api}):
        yield stack.api


def test_up_starts_the_uis_and_the_deployment_server(stack: Stack) -> None:
    from flows import services
    from flows.cli.main import app

    out = stack.up_output
    assert f"Prefect UI:   {stack.ui}" in out and f"{stack.ui}/deployments" in out and stack.mlflow in out
    statuses = {s.name: s for s in services.status(stack.settings)}
    assert all(s.running and s.healthy for s in statuses.values()), services.describe(list(statuses.values()))
    for name, s in statuses.items():
        assert (stack.home / "services" / f"{name}.pid").read_text().strip() == str(s.pid)
    assert _get(f"{stack.api}/health") == (200, "true")
    # The UI page, and the UI told to call this port's API (not 4200).
    code, page = _get(f"{stack.ui}/deployments", accept="text/html")
    assert code == 200 and "<html" in page.lower()
    assert json.loads(_get(f"{stack.ui}/ui-settings")[1])["api_url"] == stack.api
    assert _get(f"{stack.mlflow}/health") == (200, "OK")

    again = CliRunner().invoke(app, ["up"])
    assert again.exit_code == 0 and "already up" in again.output, again.output
    listed = CliRunner().invoke(app, ["services"])
    # + the Data Docs server and the scoring service (healthy without a champion: /ready says it cannot score yet)
    assert listed.exit_code == 0 and listed.output.count("healthy") == 5, listed.output
    code, ready = _get(f"{services.serve_url(stack.settings)}/ready")
    assert code == 503 and "model" in json.loads(ready)["reasons"], ready


def test_backfill_deployment_runs_two_days_triggered_through_the_api(stack: Stack, api: str) -> None:
    from prefect.deployments import run_deployment

    t0 = time.monotonic()
    run = run_deployment("backfill/backfill", parameters={"start_date": "2026-11-01", "end_date": "2026-11-02",
                                                        "representations": False},
                         timeout=300, poll_interval=1)
    assert run.state is not None and run.state.is_completed(), (
        f"backfill run ended {run.state!r} after {time.monotonic() - t0:.0f} s; deployment server log:\n"
        + stack.log_tail("deployments"))
    assert run.parameters["start_date"] == "2026-11-01" and run.parameters["concurrency"] == 2
    for day in ("2026-11-01", "2026-11-02"):
        assert (stack.home / "offline" / "impressions" / f"date={day}" / "part-0.parquet").is_file()
        assert any((stack.home / "features").rglob(f"*{day}*")), f"no feature partition for {day}"
    summary = json.loads(sorted((stack.home / "runs").glob("*-backfill.json"))[-1].read_text())
    assert summary["status"] == "completed"
    assert {s["stage"] for s in summary["stages"]} == {"deliver", "ingest", "features"}  # no representations


def test_daily_deployment_has_its_cron_schedule_and_gets_scheduled_runs(stack: Stack, api: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("daily/daily")
        schedules = [(s.schedule.cron, s.schedule.timezone, s.active) for s in dep.schedules]
        assert schedules == [("0 3 * * *", "UTC", True)]
        assert not dep.paused
        schema = dep.parameter_openapi_schema["properties"]
        assert schema["run_date"]["anyOf"][0] == {"format": "date", "type": "string"}  # a date picker
        deadline = time.monotonic() + 60
        runs: list[Any] = []
        while time.monotonic() < deadline and not runs:
            scheduled = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                                         flow_run_filter=FlowRunFilter(state=scheduled))
            if not runs:
                time.sleep(1)
    assert runs, ("the scheduler created no SCHEDULED run of daily/daily within 60 s; server log:\n"
                  + stack.log_tail("prefect"))
    now = dt.datetime.now(dt.timezone.utc)
    for run in runs:
        start = run.expected_start_time.astimezone(dt.timezone.utc)
        assert (start.hour, start.minute) == (3, 0) and start > now - dt.timedelta(minutes=1)


def test_registry_deployments_have_typed_parameters(stack: Stack, api: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        promote = client.read_deployment_by_name("promote/promote")
        rollback = client.read_deployment_by_name("rollback/rollback")
        backfill = client.read_deployment_by_name("backfill/backfill")
    p = promote.parameter_openapi_schema
    assert p["required"] == ["version"]
    assert [p["properties"][k].get("type") for k in ("version", "force", "reason")] == ["integer", "boolean", "string"]
    assert not promote.schedules and not rollback.schedules and not backfill.schedules
    assert not rollback.parameter_openapi_schema.get("required")
    b = backfill.parameter_openapi_schema["properties"]
    assert b["start_date"]["format"] == b["end_date"]["format"] == "date"
    assert promote.entrypoint == "flows.deployments.promote" and backfill.entrypoint == "flows.pipeline.backfill"


def test_promote_deployment_runs_and_reports_the_registry_refusal(stack: Stack, api: str) -> None:
    """Nothing is registered in this home: the served promote flow runs and fails with the registry's
    own error (the full promote/rollback behaviour is tested in the registry's tests)."""
    from prefect.deployments import run_deployment

    run = run_deployment("promote/promote", parameters={"version": 1}, timeout=120, poll_interval=1)
    assert run.state is not None and run.state.is_failed(), f"{run.state!r}\n{stack.log_tail('deployments')}"
    assert "RegistryError" in (run.state.message or ""), run.state.message


PROBE = textwrap.dedent('''
    import json, sys, time
    from prefect import flow
    from components.config import load_settings
    from flows.concurrency import training_slot

    @flow(name="training-slot-probe")
    def probe(tag: str, out: str) -> bool:
        with training_slot(load_settings().resolved(), timeout_seconds=120):
            enter = time.time()
            time.sleep(2.0)
            leave = time.time()
        with open(out, "a") as f:
            f.write(json.dumps({"tag": tag, "enter": enter, "leave": leave}) + "\\n")
        return True

    probe(sys.argv[1], sys.argv[2])
''')


def test_training_slot_lets_one_flow_run_train_at_a_time(stack: Stack, api: str, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from flows.concurrency import training_slot

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(stack.settings.deploy.training_concurrency_limit)
    assert (limit.limit, limit.active) == (1, True)

    script, out = tmp_path / "probe.py", tmp_path / "slots.jsonl"
    script.write_text(PROBE)
    env = {**os.environ, "PREFECT_API_URL": stack.api}
    procs = [subprocess.Popen([sys.executable, str(script), tag, str(out)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for tag in ("a", "b")]
    logs = [p.communicate(timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    first, second = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["enter"])
    assert second["enter"] >= first["leave"], f"the two training blocks overlapped: {first} {second}"

    # A limit that does not exist never blocks: the block runs at once, without a slot.
    missing = stack.settings.model_copy(deep=True)
    missing.deploy.training_concurrency_limit = "adsrec-no-such-limit"
    t0 = time.monotonic()
    with training_slot(missing):
        pass
    assert time.monotonic() - t0 < 5


def test_down_stops_every_service(stack: Stack) -> None:
    from flows import services
    from flows.cli.main import app

    pids = {s.name: s.pid for s in services.status(stack.settings)}
    res = CliRunner().invoke(app, ["down"])
    assert res.exit_code == 0, res.output
    assert all(f"{name}: stopped" in res.output for name in pids), res.output
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists(), f"{name} (pid {pid}) still runs"  # children of this process: reaped
        assert not (stack.home / "services" / f"{name}.pid").exists()
    for port in (stack.settings.deploy.prefect_port, stack.settings.deploy.mlflow_port):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT are fine
            s.bind(("127.0.0.1", port))  # nothing listens any more
    again = CliRunner().invoke(app, ["down"])
    assert again.exit_code == 0 and "nothing to stop" in again.output


# --- without a server -----------------------------------------------------------------------------------

def test_up_names_a_port_in_use_and_starts_nothing(settings: Any) -> None:
    from flows import services

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        s = settings.model_copy(deep=True)
        s.deploy.prefect_port = port
        s.deploy.mlflow_port = _free_port()
        s.deploy.data_docs_port = _free_port()
        s.serving.port = _free_port()
        with pytest.raises(services.ServiceError, match=f"port {port} on 127.0.0.1 is already in use.*prefect_port"):
            services.up(s, echo=lambda _: None)
    assert not list((s.home / "services").glob("*.pid"))


def test_a_stale_pid_file_is_removed_and_nothing_is_killed(settings: Any) -> None:
    from flows import services

    folder = services.services_dir(settings)
    folder.mkdir(parents=True)
    (folder / "prefect.pid").write_text(f"{os.getpid()}\n")  # a live process that is not a Prefect server
    (folder / "mlflow.pid").write_text("999999999\n")        # no such process
    assert not any(s.running for s in services.status(settings))
    (folder / "prefect.pid").write_text(f"{os.getpid()}\n")
    out = services.down(settings, echo=lambda _: None)
    assert out == {"prefect": "not running (stale PID file removed)"}
    assert not list(folder.glob("*.pid"))


def test_build_deployments_takes_schedule_and_defaults_from_config(settings: Any) -> None:
    from flows.deployments import build_deployments

    s = settings.model_copy(deep=True)
    s.deploy.daily_cron, s.deploy.timezone = "30 4 * * 1-5", "Europe/Berlin"
    s.pipeline.backfill_concurrency = 3
    deps = {d.flow_name: d for d in build_deployments(s)}
    assert list(deps) == ["daily", "backfill", "promote", "rollback"]
    assert [d.name for d in deps.values()] == list(deps)  # each deployment is named after its flow
    sched = deps["daily"].schedules[0].schedule
    assert (sched.cron, sched.timezone) == ("30 4 * * 1-5", "Europe/Berlin")
    assert deps["backfill"].parameters == {"concurrency": 3}
    s.deploy.daily_cron = "every morning"
    with pytest.raises(ValueError, match="deploy.daily_cron='every morning'"):
        build_deployments(s)


def test_training_slot_outside_a_run_without_an_api_is_free(settings: Any) -> None:
    """The embedded default outside a flow: nothing to ask, so no ephemeral server is started for it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.concurrency import training_slot

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        t0 = time.perf_counter()
        with training_slot(settings):
            inside = time.perf_counter() - t0
    assert inside < 0.1


def test_a_service_that_dies_while_starting_is_reported_with_its_log(settings: Any) -> None:
    from flows import processes, services

    folder = services.services_dir(settings)
    folder.mkdir(parents=True)
    dying = [sys.executable, "-c", "print('no database here'); raise SystemExit(3)"]
    spec = processes.ServiceSpec(name="mlflow", command=dying, env=dict(os.environ), port=None, url=None,
                                 health_url="http://127.0.0.1:9/health", marker="mlflow")
    launched = processes.launch(folder, spec)
    with pytest.raises(processes.ServiceError, match=r"(?s)exited with code 3 while starting.*no database here"):
        processes.wait_ready(folder, launched, time.monotonic() + 30, lambda: False, "its health URL")
    bad = settings.model_copy(deep=True)
    bad.deploy.host = "192.0.2.1"  # TEST-NET-1: not an address of this machine
    with pytest.raises(services.ServiceError, match="cannot listen on 192.0.2.1"):
        services.up(bad, echo=lambda _: None)

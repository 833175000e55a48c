"""``adsrec up`` / ``adsrec down``: the local Prefect server (UI), the MLflow UI, the Great Expectations
Data Docs and the deployment server.

Five background processes on ``deploy.host`` (127.0.0.1 by default), each in its own process group,
with its PID file and log under ``<home>/services/``:

- ``prefect``: ``prefect server start`` on ``deploy.prefect_port`` (state in ``<home>/prefect``, the same
  database the embedded runs use, so earlier runs show up in the UI);
- ``mlflow``: ``mlflow server`` on ``deploy.mlflow_port`` over ``settings.mlflow_tracking_uri`` and the
  artifact folder (optional);
- ``data_docs``: ``python -m http.server`` on ``deploy.data_docs_port`` over the GX Data Docs site
  (``<home>/gx/uncommitted/data_docs/local_site``, rebuilt by every ingest; optional). A static file
  server is all the site needs: GX renders plain HTML;
- ``serve``: ``adsrec serve``, the HTTP scoring service on the champion (``serving.port``; docs/serving.md;
  optional);
- ``deployments``: ``python -m flows.deployments serve``, which registers the deployments and runs them.

``down`` stops them by PID (SIGTERM to the process group, SIGKILL after a grace period). A PID file
whose process is gone, or now belongs to another program, is stale: it is removed, nothing is killed.
Starting, watching and stopping the processes is flows/processes.py's job. Prefect's own
``prefect server start --background`` / ``prefect server stop`` (3.8) cannot do it for the Prefect
server: it pipes the server's output into a pipe nobody reads (no log to show when a start fails, and
a server that writes 64 KiB blocks), and ``stop`` sends one SIGTERM without waiting or reaching the
process group; the three other services need the supervision anyway. No Prefect or MLflow import
here: only the standard library.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from components.config import Settings
from flows.processes import (Launched, ServiceError, ServiceSpec, http_ok, launch, log_file, log_tail, owned_pid,
                             pid_file, port_free, read_pid, runs_service, stop_pid, wait_ready)

SERVICE_ORDER = ("prefect", "mlflow", "data_docs", "serve", "deployments")
# A substring of each service's command line: a PID file whose process no longer shows it is stale
# (the PID may have been reused by another program, which must never be killed).
MARKERS = {"prefect": "server start", "mlflow": "mlflow", "data_docs": "http.server",
           "serve": "flows.cli serve", "deployments": "flows.deployments"}
# The config key of each service's port (what the "port in use" error tells the user to change).
PORT_KEYS = {"prefect": "deploy.prefect_port", "mlflow": "deploy.mlflow_port",
             "data_docs": "deploy.data_docs_port", "serve": "serving.port"}
# The deployments the deployment server registers, each named after its flow (flows/deployments.py
# builds them; kept here so that checking them needs no Prefect import).
FLOW_NAMES = ("daily", "backfill", "promote", "rollback")
DEPLOYMENT_NAMES = tuple(f"{name}/{name}" for name in FLOW_NAMES)
# Filesystem lease storage: a training slot held while the server restarts is still released on expiry
# (the default in-memory storage would forget the lease and leave the slot occupied).
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool
    url: str | None
    log: Path


def services_dir(settings: Settings) -> Path:
    return settings.home / "services"


def prefect_api_url(settings: Settings) -> str:
    return f"http://{_url_host(settings.deploy.host)}:{settings.deploy.prefect_port}/api"


def prefect_ui_url(settings: Settings) -> str:
    return f"http://{_url_host(settings.deploy.host)}:{settings.deploy.prefect_port}"


def mlflow_url(settings: Settings) -> str:
    return f"http://{_url_host(settings.deploy.host)}:{settings.deploy.mlflow_port}"


def data_docs_url(settings: Settings) -> str:
    """Where ``adsrec up`` serves the GX Data Docs (their ``index.html``)."""
    return f"http://{_url_host(settings.deploy.host)}:{settings.deploy.data_docs_port}/index.html"


def data_docs_site(settings: Settings) -> Path:
    """The Data Docs folder the server serves (validation/gx_project.py builds it)."""
    from validation.gx_project import data_docs_dir

    return data_docs_dir(settings.gx_dir)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def serve_url(settings: Settings) -> str:
    """The scoring service ``adsrec serve`` (and ``adsrec up``) runs."""
    return f"http://{_url_host(settings.deploy.host)}:{settings.serving.port}"


def service_specs(settings: Settings, mlflow: bool = True, data_docs: bool = True,
                  serve: bool = True) -> list[ServiceSpec]:
    """The services ``up`` starts, in start order (the deployment server needs the Prefect API)."""
    deploy = settings.deploy
    base = dict(os.environ)
    base.update({
        "ADSREC_HOME": str(settings.home),
        "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(settings.prefect_home)),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONUNBUFFERED": "1",
    })
    api = prefect_api_url(settings)
    prefect_env = {k: v for k, v in base.items() if k != "PREFECT_API_URL"}
    # Without this the UI calls the API on port 4200 whatever --port says (STACK.md, "The Prefect UI").
    prefect_env["PREFECT_SERVER_UI_API_URL"] = api
    prefect_env.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASE_STORAGE)
    specs = [ServiceSpec(
        name="prefect",
        command=[sys.executable, "-m", "prefect", "server", "start", "--host", deploy.host,
                 "--port", str(deploy.prefect_port)],
        env=prefect_env, port=deploy.prefect_port, url=prefect_ui_url(settings), health_url=f"{api}/health",
        marker=MARKERS["prefect"],
    )]
    if mlflow:
        artifacts = settings.mlflow_artifact_location
        # The GenAI job runner (huey consumers, periodic scoring) is not needed to browse runs and the
        # registry; without it the UI starts faster and stops in ~2 s instead of ~15 s.
        mlflow_env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **base}
        specs.append(ServiceSpec(
            name="mlflow",
            command=[sys.executable, "-m", "mlflow", "server", "--host", deploy.host, "--port", str(deploy.mlflow_port),
                     "--workers", "1", "--backend-store-uri", settings.mlflow_tracking_uri,
                     "--default-artifact-root", artifacts, "--artifacts-destination", artifacts],
            env=mlflow_env, port=deploy.mlflow_port, url=mlflow_url(settings),
            health_url=f"{mlflow_url(settings)}/health", marker=MARKERS["mlflow"],
        ))
    if data_docs:
        port = deploy.data_docs_port
        root = f"http://{_url_host(deploy.host)}:{port}/"
        specs.append(ServiceSpec(
            name="data_docs",
            command=[sys.executable, "-m", "http.server", str(port), "--bind", deploy.host,
                     "--directory", str(data_docs_site(settings))],
            env=base, port=port, url=data_docs_url(settings),
            health_url=root,  # the site folder (a listing until the first ingest writes index.html)
            marker=MARKERS["data_docs"],
        ))
    if serve:
        # Healthy once it answers /health: it starts without a champion or an online store too, and
        # /ready says when it can score (it retries every serving.poll_seconds).
        specs.append(ServiceSpec(
            name="serve",
            command=[sys.executable, "-m", "flows.cli", "serve", "--host", deploy.host,
                     "--port", str(settings.serving.port)],
            env=base, port=settings.serving.port, url=serve_url(settings),
            health_url=f"{serve_url(settings)}/health", marker=MARKERS["serve"],
        ))
    specs.append(ServiceSpec(
        name="deployments",
        command=[sys.executable, "-m", "flows.deployments", "serve"],
        env={**base, "PREFECT_API_URL": api}, port=None, url=f"{prefect_ui_url(settings)}/deployments",
        health_url=None, marker=MARKERS["deployments"],
    ))
    return specs


# --- readiness ------------------------------------------------------------------------------------

def _deployments_registered(settings: Settings, since: float | None = None) -> bool:
    """Every deployment exists on the API, and (with ``since``, a UNIX time) was (re)registered after it:
    the database keeps the deployments of an earlier ``up``, so existence alone proves nothing."""
    import datetime as dt

    api = prefect_api_url(settings)
    for name in DEPLOYMENT_NAMES:
        try:
            with urllib.request.urlopen(f"{api}/deployments/name/{name}", timeout=2.0) as resp:  # noqa: S310
                updated = json.loads(resp.read())["updated"]
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            return False
        if since is not None:
            when = dt.datetime.fromisoformat(updated.replace("Z", "+00:00")).timestamp()
            if when < since - 1.0:
                return False
    return True


def _ready(settings: Settings, spec: ServiceSpec, since: float | None = None) -> bool:
    if spec.health_url:
        return http_ok(spec.health_url)
    return _deployments_registered(settings, since)


def _wait_ready(settings: Settings, launched: Launched, deadline: float) -> None:
    """Poll until the service answers (its health URL, or the deployments registered after its launch)."""
    spec = launched.spec
    what = spec.health_url or f"deployments {', '.join(DEPLOYMENT_NAMES)} registered"
    wait_ready(services_dir(settings), launched, deadline, lambda: _ready(settings, spec, since=launched.at), what)


# --- the commands -------------------------------------------------------------------------------------

def status(settings: Settings) -> list[ServiceStatus]:
    """What runs: one entry per known service (running or not), with its health."""
    out = []
    for spec in service_specs(settings):
        pid = owned_pid(services_dir(settings), spec.name, spec.marker)
        running = pid is not None
        out.append(ServiceStatus(name=spec.name, pid=pid, running=running,
                                 healthy=running and _ready(settings, spec), url=spec.url,
                                 log=log_file(services_dir(settings), spec.name)))
    return out


def running_prefect_api_url(settings: Settings) -> str | None:
    """The API URL of the Prefect server ``adsrec up`` started for this home, when it runs and answers."""
    if not pid_file(services_dir(settings), "prefect").is_file():
        return None
    if owned_pid(services_dir(settings), "prefect", MARKERS["prefect"]) is None:
        return None
    api = prefect_api_url(settings)
    return api if http_ok(f"{api}/health", timeout=1.0) else None


def up(settings: Settings, mlflow: bool = True, timeout: float = 180.0,
       echo: Callable[[str], None] = print, data_docs: bool = True,
       only: Collection[str] | None = None, serve: bool = True) -> list[ServiceStatus]:
    """Start every service that does not run yet and wait until each answers (``timeout`` seconds per
    stage). The Prefect server, MLflow and the Data Docs server start side by side; the deployment
    server after the Prefect API is healthy. ``only`` (service names) starts just those.

    Already running services are left alone (``echo`` says so). When a start fails, the services this
    call started are stopped again and :class:`ServiceError` says why (log tail included).
    """
    services_dir(settings).mkdir(parents=True, exist_ok=True)
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    if mlflow:
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
        if "://" not in settings.mlflow_artifact_location:
            Path(settings.mlflow_artifact_location).mkdir(parents=True, exist_ok=True)
    if data_docs:
        data_docs_site(settings).mkdir(parents=True, exist_ok=True)
    specs = service_specs(settings, mlflow=mlflow, data_docs=data_docs, serve=serve)
    if only is not None:
        unknown = sorted(set(only) - {s.name for s in specs})
        if unknown:
            raise ServiceError(f"unknown or disabled service(s) {', '.join(unknown)}: choose from "
                               f"{', '.join(s.name for s in specs)}")
        if "deployments" in only and "prefect" not in only and not running_prefect_api_url(settings):
            raise ServiceError("the deployments service needs the Prefect server: start it too (or first)")
        specs = [s for s in specs if s.name in only]
    running = {s.name: owned_pid(services_dir(settings), s.name, s.marker) for s in specs}
    if all(running.values()):
        echo("adsrec is already up (adsrec down stops it):")
        return status(settings)
    for name, pid in running.items():
        if pid:
            echo(f"{name}: already running (pid {pid})")
    for spec in specs:
        if not running[spec.name] and spec.port is not None and not port_free(settings.deploy.host, spec.port):
            key = PORT_KEYS[spec.name]
            env_key = "ADSREC_" + key.replace(".", "__").upper()
            raise ServiceError(
                f"port {spec.port} on {settings.deploy.host} is already in use, so the {spec.name} server cannot "
                f"start. Stop what listens there, or choose another port: {key} in the config file or "
                f"{env_key}=<port>.")
    started: dict[str, Launched] = {}
    try:
        # Stage 1: the servers (independent of each other); stage 2: the deployment server (needs the API).
        for stage in ([s for s in specs if s.name != "deployments"], [s for s in specs if s.name == "deployments"]):
            todo = [s for s in stage if not running[s.name]]
            t0 = time.monotonic()
            for spec in todo:
                echo(f"{spec.name}: starting ...")
                started[spec.name] = launch(services_dir(settings), spec)
            for spec in todo:
                _wait_ready(settings, started[spec.name], t0 + timeout)
                echo(f"{spec.name}: ready after {time.monotonic() - t0:.1f} s "
                     f"(pid {started[spec.name].proc.pid}, log {log_file(services_dir(settings), spec.name)})")
    except BaseException:
        for name, launched in reversed(list(started.items())):
            stop_pid(launched.proc.pid, grace=10.0)
            pid_file(services_dir(settings), name).unlink(missing_ok=True)
        raise
    return status(settings)


def down(settings: Settings, grace: float = 20.0, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Stop the services this home's ``up`` started, deployment server first (it pauses the schedules
    through the API), then the Data Docs server, MLflow, then Prefect. Safe when nothing runs.
    Returns ``{service: outcome}``."""
    outcome: dict[str, str] = {}
    for name in reversed(SERVICE_ORDER):
        path = pid_file(services_dir(settings), name)
        pid = read_pid(path)
        if pid is None:
            path.unlink(missing_ok=True)
            continue
        if not runs_service(pid, MARKERS[name]):
            outcome[name] = "not running (stale PID file removed)"
        else:
            outcome[name] = stop_pid(pid, grace)
        path.unlink(missing_ok=True)
        echo(f"{name}: {outcome[name]}")
    if not outcome:
        echo("nothing to stop: no adsrec service runs for this home")
    return outcome


def watch(settings: Settings, interval: float = 2.0, echo: Callable[[str], None] = print) -> str:
    """Block while every started service runs (``adsrec up --foreground``); return the name of the first
    one that stops (its log tail is echoed). Ctrl-C raises ``KeyboardInterrupt`` as usual."""
    names = [n for n in SERVICE_ORDER if pid_file(services_dir(settings), n).is_file()]
    while True:
        for name in names:
            if owned_pid(services_dir(settings), name, MARKERS[name]) is None:
                log_path = log_file(services_dir(settings), name)
                echo(f"{name} stopped; last lines of {log_path}:\n{log_tail(log_path)}")
                return name
        time.sleep(interval)


def urls(settings: Settings) -> dict[str, str]:
    """What to open in a browser."""
    ui = prefect_ui_url(settings)
    return {"Prefect UI": ui, "deployments": f"{ui}/deployments", "Prefect API": prefect_api_url(settings),
            "MLflow UI": mlflow_url(settings), "Data Docs": data_docs_url(settings),
            "Scoring": f"{serve_url(settings)}/docs"}


def describe(statuses: list[ServiceStatus]) -> str:
    """A small table of the services for the terminal."""
    rows = [f"{'service':<12} {'state':<10} {'pid':>8}  url"]
    for s in statuses:
        state = "healthy" if s.healthy else ("starting" if s.running else "stopped")
        rows.append(f"{s.name:<12} {state:<10} {s.pid or '-':>8}  {s.url or ''}")
    return "\n".join(rows)


def as_json(statuses: list[ServiceStatus]) -> str:
    return json.dumps([{"name": s.name, "pid": s.pid, "running": s.running, "healthy": s.healthy,
                        "url": s.url, "log": str(s.log)} for s in statuses], indent=2)

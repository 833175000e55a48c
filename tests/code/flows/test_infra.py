"""infra/: the docker-compose stack, the worker image and the Prefect deployment config are consistent
with each other and with the project (no Docker needed: the files are parsed and cross-checked)."""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"
REF = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}$")  # one whole ${VAR}, ${VAR:-default}, ${VAR:?msg}
SECRET_KEY = re.compile(r"pass(word)?|secret|token|api_?key|credential", re.I)
URL_CREDENTIALS = re.compile(r"://[^/@\s:]+:([^@\s]+)@")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "prefect.yaml").read_text())


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_compose_has_the_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "prefect-server", "prefect-worker", "mlflow"} <= set(services)
    for name in ("postgres", "prefect-server", "prefect-worker", "mlflow"):
        assert "test" in services[name].get("healthcheck", {}), f"{name} has no healthcheck"
    needs = {"prefect-server": {"postgres"}, "mlflow": {"postgres"}, "prefect-worker": {"prefect-server", "mlflow"}}
    for name, deps in needs.items():
        depends = services[name]["depends_on"]
        for dep in deps:
            assert depends[dep]["condition"] == "service_healthy", f"{name} must wait for {dep} to be healthy"
    worker_cmd = " ".join(services["prefect-worker"]["command"])
    assert "--pool adsrec-process" in worker_cmd and "--type process" in worker_cmd
    assert services["prefect-worker"]["build"]["dockerfile"] == "infra/Dockerfile"


def test_published_ports_bind_to_loopback(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                host_ip = str(port.get("host_ip", ""))
            else:
                # "${BIND_ADDRESS:-127.0.0.1}:${PREFECT_PORT:-4200}:4200": the host part is the first field
                host_ip = re.split(r":(?![^{]*\})", str(port))[0]
            assert host_ip == "127.0.0.1" or re.fullmatch(r"\$\{[A-Z_]+:-127\.0\.0\.1\}", host_ip), (
                f"{name} publishes {port!r} beyond loopback")
    assert published >= 2
    assert "ports" not in compose["services"]["postgres"], "Postgres stays on the internal network"


def test_no_secret_is_written_in_the_compose_file(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if SECRET_KEY.search(key):
                assert REF.match(value), f"{name}.{key} must be a ${{VAR}} reference, not a literal"
        for text in _strings(service.get("command")) + list(_environment(service).values()):
            for password in URL_CREDENTIALS.findall(text):
                assert REF.match(password), f"{name}: a literal password in {text!r}"
    pg = _environment(compose["services"]["postgres"])
    assert pg["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?"), "an unset password must stop compose"
    # Every variable compose needs is documented in .env.example, and the example holds no password.
    example = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (INFRA / "docker-compose.yml").read_text()))
    assert used <= set(example), f"not in .env.example: {sorted(used - set(example))}"
    assert example["POSTGRES_PASSWORD"] == ""


def test_state_lives_on_named_volumes(compose: dict[str, Any]) -> None:
    services, volumes = compose["services"], compose["volumes"]

    def mounts(name: str) -> dict[str, str]:
        out = {}
        for v in services[name].get("volumes", []):
            source, target = str(v).split(":")[:2]
            out[target] = source
        return out

    assert mounts("postgres")["/var/lib/postgresql/data"] in volumes
    command = " ".join(services["mlflow"]["command"])
    destination = re.search(r"--artifacts-destination[= ](\S+)", command).group(1)
    assert "--serve-artifacts" in command and mounts("mlflow")[destination] in volumes
    assert "postgresql" in re.search(r"--backend-store-uri[= ](\S+)", command).group(1)
    assert mounts("prefect-worker")["/data/adsrec"] in volumes


def test_images_follow_the_project_pins(compose: dict[str, Any]) -> None:
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-\[\]]+)==([\w.]+)", (REPO / "requirements.txt").read_text(), re.M))
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert f"prefecthq/prefect:{pins['prefect']}-python3.11" == compose["services"]["prefect-server"]["image"]
    assert f'"mlflow=={pins["mlflow"]}"' in dockerfile
    assert f'"torch=={pins["torch"]}"' in dockerfile and "pip install -r requirements.txt" in dockerfile
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and "root" not in users, "the images run as a non-root user"
    # The build context is the repo root; everything the Dockerfile copies passes the dockerignore.
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is excluded from the build context"


def test_prefect_yaml_deploys_the_four_flows_on_both_pools(prefect_yaml: dict[str, Any],
                                                           compose: dict[str, Any]) -> None:
    from prefect import Flow

    from components.config import DeployConfig

    pools: dict[str, set[str]] = {}
    active_daily = []
    for dep in prefect_yaml["deployments"]:
        path, attr = dep["entrypoint"].split(":")
        assert (REPO / path).is_file(), f"{dep['entrypoint']}: no such file"
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), attr)
        assert isinstance(flow, Flow), f"{dep['entrypoint']} is not a Prefect flow"
        pools.setdefault(dep["work_pool"]["name"], set()).add(flow.name)
        if flow.name == "daily":
            sched = dep["schedules"][0]
            assert (sched["cron"], sched["timezone"]) == (DeployConfig().daily_cron, DeployConfig().timezone)
            if sched["active"]:
                active_daily.append(dep["name"])
        else:
            assert not dep.get("schedules")
    assert pools == {"adsrec-process": {"daily", "backfill", "promote", "rollback"},
                     "adsrec-docker": {"daily", "backfill", "promote", "rollback"}}
    assert len(active_daily) == 1, f"exactly one daily schedule may be active: {active_daily}"
    # The pools exist in the stack: created by the one-shot deploy service, polled by the workers.
    deploy_cmd = " ".join(compose["services"]["prefect-deploy"]["command"])
    for pool in pools:
        assert f"work-pool create {pool}" in deploy_cmd
    assert "--prefect-file infra/prefect.yaml" in deploy_cmd
    docker = next(d for d in prefect_yaml["deployments"] if d["work_pool"]["name"] == "adsrec-docker")
    job = docker["work_pool"]["job_variables"]
    assert job["image"] == compose["services"]["prefect-worker"]["image"]
    assert job["networks"] == [compose["networks"]["adsrec"]["name"]]
    assert job["volumes"][0].split(":")[0] == compose["volumes"]["adsrec-home"]["name"]


def test_infra_readme_covers_the_scale_out_paths() -> None:
    import contextlib
    import io

    from components.training.__main__ import main as train_main

    text = (INFRA / "README.md").read_text()
    for needle in ("docker compose", "type: spark", "type: bigquery", "type: redis", "type: postgres",
                   "--nproc_per_node=8", "--nnodes", "TorchRec", "ROW_WISE"):
        assert needle.lower() in text.lower(), f"infra/README.md does not mention {needle!r}"
    # The torchrun commands use the trainer's real options.
    usage = io.StringIO()
    with contextlib.redirect_stdout(usage), pytest.raises(SystemExit):
        train_main(["--help"])
    commands = re.findall(r"-m components\.train((?:[^`]|\\\n)*?)```", text)
    assert len(commands) == 2
    for command in commands:
        for option in re.findall(r"(?<!\S)(--[a-z-]+)", command):
            assert option in usage.getvalue(), f"components.training (the trainer's command) has no option {option}"


def test_the_postgres_driver_pin_is_the_same_everywhere() -> None:
    """MLflow's Postgres driver: the `team` extra, the Makefile's install and the MLflow image agree."""
    import tomllib

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["team"]
    assert len(extra) == 1 and extra[0].startswith("psycopg[binary]=="), extra
    pin = extra[0]
    assert f'"{pin}"' in (INFRA / "Dockerfile").read_text()
    assert f'"{pin}"' in (REPO / "Makefile").read_text()


def test_local_postgres_script_prints_the_urls_the_stack_uses(tmp_path: Any) -> None:
    """infra/local-postgres.sh without a server: bad input is refused with exit 2, and the URL schemes it
    prints are the drivers the compose stack uses (asyncpg for Prefect, psycopg for MLflow)."""
    import subprocess

    script = INFRA / "local-postgres.sh"
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    for args, message in ((["frobnicate"], "unknown command 'frobnicate'"), (["--port", "x"], "--port must be a number"),
                          (["--bogus"], "unknown argument '--bogus'")):
        res = subprocess.run(["bash", str(script), *args, "--dir", str(tmp_path)], capture_output=True, text=True)
        assert res.returncode == 2 and message in res.stderr, (args, res.returncode, res.stderr)
    compose = (INFRA / "docker-compose.yml").read_text()
    for scheme, database in (("postgresql+asyncpg://", "prefect"), ("postgresql+psycopg://", "mlflow")):
        assert re.search(re.escape(scheme) + r"[^\n]*/" + database + r"$", compose, re.M)
        assert re.search(re.escape(scheme) + r"\S*/" + database + "'", text)
    assert "runuser -u postgres" in text  # Postgres refuses to run as root

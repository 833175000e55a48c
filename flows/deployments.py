"""Prefect deployments of the platform: the scheduled daily retrain, backfills, promotion and rollback.

``adsrec up`` runs ``python -m flows.deployments serve`` against its local Prefect server. That process
registers four deployments, each named after its flow, and executes their runs. Parameters are the flows'
typed arguments, so the UI renders them as fields (dates as date pickers):

- ``daily/daily`` (``flows.daily.daily``), on ``deploy.daily_cron`` in ``deploy.timezone``: run_date
  (empty = yesterday), force, config_file;
- ``backfill/backfill`` (``flows.pipeline.backfill``), started from the UI or the API: start_date,
  end_date, concurrency, representations, force, config_file;
- ``promote/promote`` (:func:`promote`): version (int), force (bool), reason (str);
- ``rollback/rollback`` (:func:`rollback`): config_file.

Serving also creates the global concurrency limit that keeps two training runs apart
(``flows/concurrency.py``). Importing this module only defines the two registry flows; the pipeline
flows are imported when the deployments are built.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, cast

from prefect import flow, get_run_logger

from components.config import Settings, load_settings
from flows.services import DEPLOYMENT_NAMES, FLOW_NAMES

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

__all__ = ["DEPLOYMENT_NAMES", "FLOW_NAMES", "build_deployments", "main", "promote",
           "rollback", "serve_deployments"]
TAGS = ["adsrec"]


def _by() -> str:
    """Who changed the registry, as recorded on the version: this flow run (the OSS UI has no users)."""
    from prefect.runtime import flow_run

    return f"prefect flow run {flow_run.name} ({flow_run.id})"


def _report(title: str, result: dict[str, Any]) -> None:
    """Log the registry change and leave it as a one-row table artifact (keyed ``promote``/``rollback``)."""
    from prefect.artifacts import create_table_artifact

    get_run_logger().info(f"{title}: {json.dumps(result, default=str)}")
    try:
        row = {k: "" if v is None else v if isinstance(v, (str, int, float, bool)) else json.dumps(v, default=str)
               for k, v in result.items()}
        create_table_artifact(table=[row], key=title.split()[0].lower(), description=f"adsrec {title}")
    except Exception:  # an artifact is a courtesy; the registry change already happened
        pass


@flow(name="promote")
def promote(version: int, force: bool = False, reason: str = "", config_file: str | None = None) -> dict[str, Any]:
    """Make registered model version ``version`` the ``champion`` (the old champion becomes
    ``previous``). A version whose quality gates failed is refused unless ``force`` is set together
    with a ``reason``, which is recorded on the version."""
    from components.registry.aliases import promote as promote_version

    settings = load_settings(config_file).resolved()
    result = promote_version(settings, version, force=force, reason=reason or None, by=_by())
    _report(f"promote version {version}", result)
    return result


@flow(name="rollback")
def rollback(config_file: str | None = None) -> dict[str, Any]:
    """Move ``champion`` back to the version aliased ``previous``."""
    from components.registry.aliases import rollback as rollback_champion

    settings = load_settings(config_file).resolved()
    result = rollback_champion(settings, by=_by())
    _report("rollback champion", result)
    return result


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    """The four deployments, in :data:`FLOW_NAMES` order, for ``prefect.serve`` (or a runner).

    ``daily`` runs on ``settings.deploy.daily_cron`` in ``settings.deploy.timezone``; the others only
    when started. Entry points are module paths (``flows.pipeline.backfill``), so the runs load the flows
    from the installed package whatever the working directory. Raises ``ValueError`` naming the key when
    the cron expression or the time zone is invalid.
    """
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from flows.daily import daily
    from flows.pipeline import backfill

    deploy = settings.deploy
    try:
        schedule = Cron(deploy.daily_cron, timezone=deploy.timezone)
    except ValueError as exc:
        raise ValueError(f"deploy.daily_cron={deploy.daily_cron!r} / deploy.timezone={deploy.timezone!r}: "
                         f"{exc}") from None

    def deployment(flow_: Any, description: str, **kwargs: Any) -> RunnerDeployment:
        # Named after its flow (daily/daily). to_deployment is sync/async-dual in Prefect; called from sync code
        # it returns the deployment.
        return cast("RunnerDeployment", flow_.to_deployment(
            flow_.name, description=description, tags=TAGS, entrypoint_type=EntrypointType.MODULE_PATH,
            **kwargs))

    return [
        deployment(daily, "The daily retrain: window up to date, training set, train, evaluate, gates, register. "
                          "run_date empty = yesterday (UTC).", schedule=schedule),
        deployment(backfill, "Deliver, ingest, build features (and representations) for every day from start_date "
                             "to end_date; unchanged days are skipped.",
                   parameters={"concurrency": settings.pipeline.backfill_concurrency}),
        deployment(promote, "Move the champion alias to a registered version (force needs a reason)."),
        deployment(rollback, "Move the champion alias back to the previous version."),
    ]


def serve_deployments(settings: Settings) -> None:
    """Create the training concurrency limit, register the deployments and execute their runs until
    SIGINT/SIGTERM (blocking; on shutdown Prefect pauses the schedules, the next serve resumes them).
    Uses the API in ``PREFECT_API_URL``."""
    from prefect import serve

    from flows.concurrency import ensure_training_limit

    limit = ensure_training_limit(settings)
    print(f"concurrency limit {limit['name']!r}: {limit['limit']} slot(s), {limit['active_slots']} in use", flush=True)
    serve(*build_deployments(settings))


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.deployments serve``: what ``adsrec up`` runs as its deployment server;
    ``python -m flows.deployments limit``: only create the training concurrency limit (for a stack
    whose runs come from work pools, infra/docker-compose.yml)."""
    import argparse
    import os

    parser = argparse.ArgumentParser(prog="python -m flows.deployments", description=main.__doc__)
    parser.add_argument("command", choices=["serve", "limit"])
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        print("error: PREFECT_API_URL is not set. This needs a running Prefect server: use `adsrec up`, or "
              "start `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api", file=sys.stderr)
        return 2
    from flows.runtime import configure_environment

    try:
        settings = load_settings().resolved()
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_environment(settings)
    if args.command == "limit":
        from flows.concurrency import ensure_training_limit

        print(json.dumps(ensure_training_limit(settings)))
        return 0
    serve_deployments(settings)
    return 0


if __name__ == "__main__":
    # Run through the imported module, not __main__: the deployments' entry points must name
    # flows.deployments.promote, which a flow defined in __main__ would not.
    import flows.deployments

    raise SystemExit(flows.deployments.main())

"""The training slot: one Prefect global concurrency limit, so two training runs never share the machine.

``adsrec up`` (the deployment server) creates the limit ``deploy.training_concurrency_limit`` with one
slot; every train step runs inside :func:`training_slot`, which holds that slot while it trains. A second
run that reaches its train step meanwhile waits until the first one leaves (Prefect retries the
acquisition with the server's ``Retry-After``). The slot is a lease: if the holding process dies, the
server frees it when the lease expires (5 minutes), so a crash cannot block training forever.

Embedded default (ephemeral API, no server, no limit created): :func:`training_slot` checks once that
the limit does not exist and runs the block at once; it never waits on a limit that is not there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from components.config import Settings

log = logging.getLogger(__name__)

TRAINING_SLOTS = 1
# Seconds a held slot stays leased without renewal; Prefect renews it every 0.75 * this while the block runs.
LEASE_SECONDS = 300.0


def ensure_training_limit(settings: Settings) -> dict[str, Any]:
    """Create the global concurrency limit ``settings.deploy.training_concurrency_limit`` with one slot,
    or set an existing one back to one slot and active. Needs a Prefect API (``PREFECT_API_URL`` or the
    ephemeral server); returns the limit as ``{"name", "limit", "active", "active_slots"}``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    name = settings.deploy.training_concurrency_limit
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, TRAINING_SLOTS)
        limit = client.read_global_concurrency_limit_by_name(name)
        if not limit.active:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active=True))
            limit = client.read_global_concurrency_limit_by_name(name)
    return {"name": limit.name, "limit": limit.limit, "active": limit.active, "active_slots": limit.active_slots}


def _logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log


def _configured_api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _api_reachable_cheaply() -> bool:
    """True when asking the API costs a request, not a server start: a configured ``PREFECT_API_URL``,
    or inside a flow or task run (whose ephemeral server is already up)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return bool(_configured_api_url()) or FlowRunContext.get() is not None or TaskRunContext.get() is not None


@contextmanager
def training_slot(settings: Settings, timeout_seconds: float | None = None) -> Iterator[bool]:
    """Hold the one slot of the training concurrency limit for the duration of the block.

    Yields ``True`` when a slot is held, ``False`` when no limit applies (it does not exist or is
    inactive, or there is no API to ask without starting one); then the block runs at once. Waits for a
    free slot up to ``timeout_seconds`` (``None``: as long as it takes) and raises Prefect's
    ``AcquireConcurrencySlotTimeoutError`` (a ``TimeoutError``) naming the limit after that. Cost when
    no limit exists: one API request; when it exists: three (read, acquire, release) plus a lease renewal
    every 225 s.

    Example::

        with training_slot(settings) as held:
            result = steps.train(settings, day, path)
    """
    name = settings.deploy.training_concurrency_limit
    logger = _logger()
    if not _api_reachable_cheaply():
        logger.debug("no Prefect API configured and not in a flow run: training slot %r not used", name)
        yield False
        return

    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        # Expected on the embedded default (ephemeral API): say it quietly there, plainly on a server.
        level = logging.INFO if _configured_api_url() else logging.DEBUG
        logger.log(level, f"no concurrency limit {name!r} on this Prefect API (adsrec up creates it): "
                          "training runs are not serialised")
        yield False
        return
    if not limit.active:
        logger.info(f"concurrency limit {name!r} is inactive: training runs are not serialised")
        yield False
        return

    t0 = time.monotonic()
    logger.info(f"acquiring the training slot {name!r} ({limit.active_slots}/{limit.limit} in use)")
    with concurrency(name, occupy=1, timeout_seconds=timeout_seconds, lease_duration=LEASE_SECONDS,
                     strict=True, raise_on_lease_renewal_failure=False):
        logger.info(f"holding the training slot {name!r} (waited {time.monotonic() - t0:.1f} s)")
        yield True

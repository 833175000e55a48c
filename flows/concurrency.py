"""The training slot: one Prefect global concurrency limit, so two training runs never share the machine.

``adsrec up`` (the deployment server) creates the limit ``deploy.training_concurrency_limit`` with one
slot; every train step runs inside :func:`training_slot`, which holds that slot while it trains. A second
run that reaches its train step meanwhile waits until the first one leaves (Prefect retries the
acquisition with the server's ``Retry-After``). The slot is a lease: if the holding process dies, the
server frees it when the lease expires (5 minutes), so a crash cannot block training forever.

A limit that does not exist (the embedded default: ephemeral API, no limit created) or is inactive is
Prefect's own case: ``concurrency(..., strict=False)`` logs that the limit does not exist, the server
takes no slot of an inactive one, and the block runs at once. Without an API to ask (no ``PREFECT_API_URL`` and outside a flow run) no server is
started for it: the block runs at once.
"""

from __future__ import annotations

import logging
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


def _api_reachable_cheaply() -> bool:
    """True when asking the API costs a request, not a server start: a configured ``PREFECT_API_URL``,
    or inside a flow or task run (whose ephemeral server is already up)."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value()) or FlowRunContext.get() is not None or TaskRunContext.get() is not None


@contextmanager
def training_slot(settings: Settings, timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold the one slot of the training concurrency limit for the duration of the block.

    Waits for a free slot up to ``timeout_seconds`` (``None``: as long as it takes) and raises Prefect's
    ``AcquireConcurrencySlotTimeoutError`` (a ``TimeoutError``) after that. When the limit does not
    exist (Prefect logs so) or is inactive, the block runs at once; without an API to ask without
    starting one, the block runs at once. The lease is renewed every 225 s while the block runs.

    Example::

        with training_slot(settings):
            result = steps.train(settings, day, path)
    """
    name = settings.deploy.training_concurrency_limit
    if not _api_reachable_cheaply():
        log.debug("no Prefect API configured and not in a flow run: training slot %r not used", name)
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(name, occupy=1, timeout_seconds=timeout_seconds, lease_duration=LEASE_SECONDS,
                     strict=False, raise_on_lease_renewal_failure=False):
        yield

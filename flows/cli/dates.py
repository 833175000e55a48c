"""Run-date checks made by the commands before a flow starts (no Prefect, no source loaded): a day in
the future, a day outside the simulator's days, a backfill whose start is after its end. Each raises
``ValueError`` with one readable line; a day the source lacks for another reason is still refused by
the flow's first step (components/steps.py).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.config import Settings


def utc_today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


def yesterday() -> dt.date:
    """The daily flow's default run date: yesterday, UTC."""
    return utc_today() - dt.timedelta(days=1)


def simulator_days(settings: "Settings") -> tuple[dt.date, dt.date]:
    """First and last day the simulator delivers (``pipeline.start_date``, ``simulator.horizon_days``):
    what ``SimulatorSource.available_days`` answers, from the settings alone."""
    first = settings.pipeline.start_date
    return first, first + dt.timedelta(days=settings.simulator.horizon_days - 1)


def validate_run_date(settings: "Settings", day: dt.date, today: dt.date | None = None) -> None:
    """Refuse a day the configured source cannot have: outside the simulator's days, or, for a source
    of real logs, after today (UTC)."""
    source = settings.pipeline.source
    if source == "simulator":
        first, last = simulator_days(settings)
        if not first <= day <= last:
            raise ValueError(f"source 'simulator' has data from {first} to {last}; {day} is outside it "
                             "(pipeline.start_date, simulator.horizon_days)")
        return
    today = today or utc_today()
    if day > today:
        raise ValueError(f"{day} is in the future (today is {today}, UTC): source {source!r} has no data for it")


def validate_date_range(settings: "Settings", start: dt.date, end: dt.date, today: dt.date | None = None) -> None:
    """Refuse a range whose start is after its end, or whose ends the source cannot have."""
    if start > end:
        raise ValueError(f"start date {start} is after end date {end}")
    validate_run_date(settings, start, today)
    validate_run_date(settings, end, today)

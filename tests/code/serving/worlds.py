"""The simulated days the serving tests build (test_serving.py, test_service.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def pipeline_days(settings: Any, n: int) -> list[dt.date]:
    """The demo window's first ``n`` days through the real steps: deliver, ingest, features, representations."""
    from components import steps
    from components.representations.refresh import refresh_representations

    days = steps.demo_window(settings, n)
    for day in days:
        steps.deliver_day(settings, day)
        steps.ingest(settings, day)
        steps.features(settings, day)
        refresh_representations(settings, day, progress=False)
    return days

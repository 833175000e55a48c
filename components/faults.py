"""Fault injection for the crash-safety tests (issue 14, docs/reliability.md).

The code calls :func:`fault_point` at named steps, e.g. ``fault_point("register.after_version")`` right after
MLflow created a model version and before the step's manifest. When the environment variable ``ADSREC_FAULT``
names that point (a comma-separated list of names), the process kills itself there with SIGKILL: no
``finally``, no ``atexit``, no flush, as a power cut or an OOM kill would. Unset (always, outside the fault
tests) it costs one environment lookup. A test runs a command with ``ADSREC_FAULT=<point>``, checks that it
died (return code -9), re-runs it without the variable and compares the end state with an uninterrupted run.

``ADSREC_FAULT_RAISE`` (same syntax) makes a named point raise ``RuntimeError`` instead, once per process
(the first pass only): a transient error, for the tests of a task's retries (a Prefect task retried in the
same process passes the point again and goes on).

Point names are ``<stage>.<step>``; :data:`KNOWN_POINTS` collects the ones registered by the code (each call
site registers its name with :func:`declare`), so a test can check it covers every stage.
"""

from __future__ import annotations

import os
import signal

ENV = "ADSREC_FAULT"
ENV_RAISE = "ADSREC_FAULT_RAISE"
KNOWN_POINTS: set[str] = set()
_RAISED: set[str] = set()  # the points that already raised in this process


def declare(*names: str) -> None:
    """Record point names the calling module passes through (for coverage checks in tests)."""
    KNOWN_POINTS.update(names)


def _names(env: str) -> set[str]:
    spec = os.environ.get(env)
    return {s.strip() for s in spec.split(",")} if spec else set()


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL when ``ADSREC_FAULT`` names ``name``; raise ``RuntimeError`` the first
    time it passes here when ``ADSREC_FAULT_RAISE`` names it; otherwise do nothing."""
    if name in _names(ENV):
        os.kill(os.getpid(), signal.SIGKILL)
    if name in _names(ENV_RAISE) and name not in _RAISED:
        _RAISED.add(name)
        raise RuntimeError(f"injected transient fault at {name} ({ENV_RAISE})")

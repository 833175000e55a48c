"""components/faults.py: a named point kills the process only when ADSREC_FAULT names it."""

from __future__ import annotations

import subprocess
import sys

from components.config import PROJECT_ROOT

SCRIPT = "from components.faults import fault_point; fault_point('a.b'); print('alive')"


def _run(env_value: str | None) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k != "ADSREC_FAULT"}
    if env_value is not None:
        env["ADSREC_FAULT"] = env_value
    return subprocess.run([sys.executable, "-c", SCRIPT], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_a_named_point_kills_the_process() -> None:
    assert _run("x.y, a.b").returncode == -9


def test_other_points_and_no_variable_do_nothing() -> None:
    for value in (None, "", "a.c", "a"):
        res = _run(value)
        assert res.returncode == 0 and res.stdout.strip() == "alive", (value, res)


def test_a_raise_point_raises_once_per_process() -> None:
    import os

    script = ("from components.faults import fault_point\n"
              "for _ in range(3):\n"
              "    try:\n        fault_point('a.b'); print('passed')\n"
              "    except RuntimeError as exc:\n        print('raised', exc)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADSREC_FAULT")}
    res = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env={**env, "ADSREC_FAULT_RAISE": "a.b"},
                         capture_output=True, text=True, timeout=60)
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 0 and lines[0].startswith("raised injected transient fault at a.b"), res
    assert lines[1:] == ["passed", "passed"]

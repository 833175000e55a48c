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


# The stages issue 14 names, as the fault points' prefixes spell them.
STAGES = ("deliver", "ingest", "features", "representations", "training_set", "train", "gates", "register",
          "promote", "rollback", "materialize")


def test_every_fault_point_is_declared_killed_by_a_test_and_listed_in_the_reliability_table() -> None:
    """Each ``fault_point("<stage>.<step>")`` in the code: declared by its module (KNOWN_POINTS), named by a
    fault test under tests/, and in docs/reliability.md's table; every stage has at least one point."""
    import importlib
    import re

    from components.faults import KNOWN_POINTS

    calls: dict[str, str] = {}
    for path in sorted([*(PROJECT_ROOT / "components").rglob("*.py"), *(PROJECT_ROOT / "flows").rglob("*.py")]):
        for name in re.findall(r"""fault_point\(["']([\w.]+)["']\)""", path.read_text()):
            calls[name] = str(path.relative_to(PROJECT_ROOT).with_suffix("")).replace("/", ".")
    for module in set(calls.values()):
        importlib.import_module(module)
    assert set(calls) <= KNOWN_POINTS, sorted(set(calls) - KNOWN_POINTS)
    tests = "\n".join(p.read_text() for p in (PROJECT_ROOT / "tests").rglob("test_*.py")
                      if p.name != "test_faults.py")
    table = (PROJECT_ROOT / "docs" / "reliability.md").read_text()
    assert [n for n in calls if f'"{n}"' not in tests] == [], "fault points no test kills"
    assert [n for n in calls if n not in table] == [], "points missing from the table"
    assert [s for s in STAGES if not any(n.startswith(f"{s}.") for n in calls)] == [], "stages without a point"

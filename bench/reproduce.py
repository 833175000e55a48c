"""Run every experiment (issue 6's six and issue 12's learning curve) at its default size and write docs/results.md.

    .venv/bin/python bench/reproduce.py            # all of them, 3 seeds each
    .venv/bin/python bench/reproduce.py ipw temporal

Each experiment is the same code as ``adsrec experiment NAME``; see docs/results.md for the numbers. An
experiment with option runs in :data:`OPTION_RUNS` (the temporal experiment at the strong planted effect) runs
them too, each a section of its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Extra runs of an experiment with its options away from the defaults, after its default run.
OPTION_RUNS: dict[str, tuple[tuple[str, ...], ...]] = {"temporal": (("--option", "strength=strong"),)}


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from components.experiments import NAMES

    names = argv or list(NAMES)
    exe = Path(sys.executable).with_name("adsrec")
    failed = []
    for name in names:
        for extra in ((), *OPTION_RUNS.get(name, ())):
            cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]
            cmd += ["experiment", name, *extra]
            print(f"== {' '.join(cmd)}", flush=True)
            if subprocess.run(cmd).returncode != 0:
                failed.append(" ".join([name, *extra]))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

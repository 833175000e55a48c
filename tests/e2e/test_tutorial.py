"""docs/your-own-logs.md works when followed word for word: every ```bash block runs, in order, from a
checkout-shaped folder (the repository's docs/ and .venv/ linked in), and ends in a registered model."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TUTORIAL = REPO / "docs" / "your-own-logs.md"


def tutorial_commands() -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", TUTORIAL.read_text(), flags=re.S)]


def test_the_tutorial_has_the_steps_it_promises() -> None:
    commands = tutorial_commands()
    assert len(commands) >= 4
    joined = "\n".join(commands)
    for step in ("config", "backfill", "daily", "models"):
        assert f" {step}" in joined, step


@pytest.mark.flows
@pytest.mark.slow  # 70 s: make test-slow (the 15-minute suite has no room for it)
def test_the_tutorial_runs_word_for_word(tmp_path: Path, shared_data: Path) -> None:
    if not (REPO / ".venv" / "bin" / "adsrec").exists():
        pytest.skip("the tutorial runs .venv/bin/adsrec, which `make test` creates")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("docs", ".venv"):  # what the commands touch; state goes to checkout/.adsrec-movielens
        (checkout / name).symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADSREC_")}
    outputs = []
    for command in tutorial_commands():
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=checkout, env=env,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"{command}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        outputs.append(res.stdout)
    assert "source: files" in outputs[0] or "movielens_files" in outputs[0]
    assert (checkout / ".adsrec-movielens" / "offline" / "impressions" / "date=1997-09-26").is_dir()
    assert "adsrec-ranker" in outputs[-1] and re.search(r"^1\s", outputs[-1], flags=re.M), outputs[-1]

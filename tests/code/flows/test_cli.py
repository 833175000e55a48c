"""The ``adsrec`` command line's first-run behaviour (flows/cli/): dates and config refused before a flow
starts, with one line; ``adsrec config``; shell completion; a CLI that imports nothing heavy."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import REPO


@pytest.fixture()
def home(tmp_path: Path) -> Iterator[Path]:
    """An ADSREC_HOME of its own; the environment as it was afterwards (commands set Prefect's, MLflow's)."""
    saved = dict(os.environ)
    os.environ["ADSREC_HOME"] = str(tmp_path / "home")
    try:
        yield tmp_path / "home"
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _invoke(*args: str) -> Any:
    from flows.cli.main import app

    return CliRunner().invoke(app, list(args))


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def test_daily_outside_the_simulators_days_fails_at_once_with_one_line(home: Path) -> None:
    res = _invoke("daily", "--run-date", "2031-01-01")
    assert res.exit_code == 2
    line = _one_error_line(res.output)
    assert "2031-01-01 is outside it" in line and "2026-11-01 to 2027-10-31" in line
    assert "simulator.horizon_days" in line
    assert not (home / "runs").exists()  # no flow ran, so no run summary


def test_a_date_before_the_simulators_first_day_is_refused_for_every_day_command(home: Path) -> None:
    for command in (["ingest", "--date"], ["features", "--date"], ["refresh-embeddings", "--date"]):
        res = _invoke(*command, "2026-10-31")
        assert res.exit_code == 2, (command, res.output)
        assert "2026-10-31 is outside it" in _one_error_line(res.output)


def test_backfill_start_after_end_is_refused(home: Path) -> None:
    res = _invoke("backfill", "--start-date", "2026-11-05", "--end-date", "2026-11-02")
    assert res.exit_code == 2
    assert _one_error_line(res.output) == "error: start date 2026-11-05 is after end date 2026-11-02"


def test_a_future_day_is_refused_for_a_source_of_real_logs(settings: Any) -> None:
    from flows.cli.dates import validate_date_range, validate_run_date

    today = dt.date(2026, 12, 6)
    logs = settings.model_copy(deep=True)
    logs.pipeline.source = "taobao"
    with pytest.raises(ValueError, match=r"2026-12-07 is in the future \(today is 2026-12-06, UTC\)"):
        validate_run_date(logs, dt.date(2026, 12, 7), today)
    validate_run_date(logs, today, today)  # today is fine
    with pytest.raises(ValueError, match="2026-12-08 is in the future"):
        validate_date_range(logs, dt.date(2026, 12, 1), dt.date(2026, 12, 8), today)
    # The simulator's days are simulated: its horizon bounds them, not the clock.
    validate_run_date(settings, settings.pipeline.start_date + dt.timedelta(days=300), today)


def test_a_bad_config_key_fails_at_start_naming_it(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline:\n  sourc: simulator\n")
    for command in (["daily"], ["config"], ["backfill", "--start-date", "2026-11-01", "--end-date", "2026-11-02"]):
        res = _invoke("--config", str(bad), *command)
        assert res.exit_code == 2, (command, res.output)
        assert "pipeline.sourc" in _one_error_line(res.output)


def test_a_refused_date_answers_fast_without_importing_prefect(tmp_path: Path) -> None:
    env = {**os.environ, "ADSREC_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    probe = ("import sys, runpy; sys.argv = ['adsrec', 'daily', '--run-date', '2031-01-01']\n"
             "try:\n    runpy.run_module('flows.cli.main', run_name='__main__')\n"
             "except SystemExit as exc:\n    print('exit', exc.code, 'prefect' in sys.modules)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True)
    assert time.perf_counter() - t0 < 5.0  # was 33 s: the flow started before the date was looked at
    assert out.stdout.strip() == "exit 2 False", out.stdout + out.stderr
    assert out.stderr.strip().count("\n") == 0 and "outside" in out.stderr


def test_config_prints_resolved_values_with_their_descriptions(home: Path) -> None:
    import yaml

    res = _invoke("config")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    # every value with what it means; the derived paths a user looks for, resolved
    assert any(line.startswith("  source: simulator  # ") for line in lines), res.output
    uri = next(line for line in lines if "mlflow_tracking_uri:" in line)
    assert f"sqlite:///{home.resolve()}/mlflow/mlflow.db" in uri and "  # " in uri
    assert any("data_docs_index:" in line and str(home.resolve()) in line for line in lines)
    assert any(line.strip().startswith("arch: stem  # ") for line in lines)
    assert yaml.safe_load(res.output)["pipeline"]["source"] == "simulator"  # it reads back as a config file


def test_config_yaml_prints_the_resolved_values(home: Path) -> None:
    import yaml

    res = _invoke("config", "--yaml")
    assert res.exit_code == 0, res.output
    values = yaml.safe_load(res.output)
    assert values["pipeline"]["source"] == "simulator" and Path(values["home"]) == home.resolve()


def test_shell_completion_is_on() -> None:
    from flows.cli.main import app

    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0 and "--install-completion" in res.output and "--show-completion" in res.output
    shown = CliRunner().invoke(app, ["--show-completion", "bash"], prog_name="adsrec")
    assert shown.exit_code == 0 and "_ADSREC_COMPLETE" in shown.output, shown.output


def test_the_cli_package_has_no_import_circle_and_loads_nothing_heavy() -> None:
    probe = ("import sys, flows.cli.main; print(sorted(m for m in ('prefect', 'torch', 'feast', 'pandas', "
             "'great_expectations', 'mlflow', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]", out.stdout
    common = (REPO / "flows" / "cli" / "common.py").read_text()
    for module in ("pipeline", "registry", "analyze", "serving", "services", "experiments", "config", "main"):
        assert f"flows.cli.{module}" not in common and f"from flows.cli import {module}" not in common


def test_the_demo_hint_mentions_no_champion_when_there_is_none(tmp_path: Path) -> None:
    from components.config import load_settings
    from flows.cli.pipeline import next_demo_hint

    settings = load_settings(environ={}, overrides={"home": str(tmp_path / "h")}).resolved()
    hint = next_demo_hint(settings)
    assert "No champion yet" in hint and "compare" not in hint and "--force --reason" in hint
    off = load_settings(environ={}, overrides={"home": str(tmp_path / "h"), "registry": {"enabled": False}}).resolved()
    assert "champion" not in next_demo_hint(off)

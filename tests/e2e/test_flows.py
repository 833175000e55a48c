"""End-to-end flow tests on tiny simulated data: the CLI drives the Prefect flows (ephemeral API)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.conftest import SHARED_DATA

pytestmark = [pytest.mark.flows, pytest.mark.shared_data]

TINY = {
    "ADSREC_SIMULATOR__N_USERS": "150",
    "ADSREC_SIMULATOR__N_INITIAL_ADS": "300",
    "ADSREC_SIMULATOR__NEW_ADS_PER_DAY": "20",
    "ADSREC_PIPELINE__START_DATE": "2026-11-01",
    "ADSREC_PIPELINE__TRAINING_DAYS": "3",
}


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture()
def env(tmp_path: Path, prefect_api: None) -> Iterator[Path]:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    saved = dict(os.environ)
    home = tmp_path / "home"
    os.environ.update(TINY)
    os.environ["ADSREC_HOME"] = str(home)
    os.environ["ADSREC_PIPELINE__SHARED_DATA"] = str(SHARED_DATA)
    try:
        yield home
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _snapshot(home: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every data file the pipeline writes (runs/ and prefect/ excluded)."""
    out = {}
    for sub in ("raw", "offline", "quarantine", "features", "manifests", "truth"):
        for p in sorted((home / sub).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(home))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def test_backfill_twice_changes_nothing(env: Path) -> None:
    from flows.cli.main import app

    runner = CliRunner()
    args = ["backfill", "--start-date", "2026-11-01", "--end-date", "2026-11-02", "--concurrency", "2"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    before = _snapshot(env)
    for day in ("2026-11-01", "2026-11-02"):
        assert (env / "offline" / "impressions" / f"date={day}" / "part-0.parquet").is_file()
        assert any((env / "features").rglob(f"*{day}*")), f"no feature partition for {day}"
    n_landed = sum(pq.read_metadata(p).num_rows for p in (env / "offline" / "impressions").rglob("*.parquet"))
    assert n_landed > 1000

    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert _snapshot(env) == before, "a repeated backfill must not rewrite any file"
    summaries = sorted((env / "runs").glob("*-backfill.json"))
    assert len(summaries) == 2
    last = json.loads(summaries[-1].read_text())
    assert last["status"] == "completed"
    assert all(st["skipped"] for st in last["stages"]), last["stages"]
    assert "skipped" in second.output

    # --force re-runs every day and lands the same rows (replace, never append).
    third = runner.invoke(app, args + ["--force"])
    assert third.exit_code == 0, third.output
    n_again = sum(pq.read_metadata(p).num_rows for p in (env / "offline" / "impressions").rglob("*.parquet"))
    assert n_again == n_landed


def test_daily_builds_training_set_and_summary(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daily retrain end to end: version 1 is registered (and made champion when its gates pass); the
    next day's model, whose embeddings are forced to collapse, is compared with that champion on the
    newest day, fails the collapse gate, and is registered without the ``challenger`` alias."""
    from flows.cli.main import app

    res = CliRunner().invoke(app, ["daily", "--run-date", "2026-11-03"])
    assert res.exit_code == 0, res.output
    summary = json.loads(sorted((env / "runs").glob("*-daily.json"))[-1].read_text())
    stages = [s["stage"] for s in summary["stages"]]
    assert stages.count("ingest") == 3 and stages.count("representations") == 3
    assert stages[-4:] == ["training_set", "train", "gates", "materialize"]
    ingest = [s for s in summary["stages"] if s["stage"] == "ingest"]
    for s in ingest:
        t = s["tables"]["impressions"]
        assert t["rows_in"] == t["rows_landed"] + t["rows_quarantined"]
    ts = Path(summary["stages"][-4]["path"])
    assert ts.is_file()
    table = pq.read_table(ts)
    assert {"click", "conversion", "user_id", "ad_id", "event_time"} <= set(table.column_names)
    assert table.num_rows == sum(s["tables"]["impressions"]["rows_landed"] for s in ingest)
    assert "training set" in res.output
    trained = summary["stages"][-3]
    assert Path(trained["model_dir"], "model.pt").is_file()
    assert trained["rows"]["test"] == ingest[-1]["tables"]["impressions"]["rows_landed"]  # the newest day reports
    assert trained["rows"]["valid"] == ingest[-2]["tables"]["impressions"]["rows_landed"]  # the day before stops
    assert set(trained["evaluation"]["auc_interval"]) == {"click", "conversion"}
    assert set(trained["evaluation"]["overall"]) == {"click", "conversion"}
    assert 0.0 < trained["oracle"]["oracle"]["click"] <= 1.0  # next to the simulator's oracle AUC
    assert "oracle" in res.output and "model: stem" in res.output

    first = summary["stages"][-2]
    assert [g["name"] for g in first["gates"]] == ["data", "collapse", "entanglement", "model", "baseline"]
    assert first["registered"]["version"] == 1 and first["champion"] is None
    assert first["gates_passed"] == ("challenger" in first["registered"]["aliases"])
    assert "quality gates" in res.output and "registered: adsrec-ranker version 1" in res.output
    _assert_daily_artifacts(first["registered"])
    from components.config import load_settings
    from components.registry.aliases import champion, list_versions

    settings = load_settings().resolved()
    if not first["gates_passed"]:  # tiny data can miss a band; the next run needs a champion to compare with
        assert CliRunner().invoke(app, ["promote", "--version", "1", "--force", "--reason", "test"]).exit_code == 0
    assert champion(settings).version == 1

    # Day 2: collapse every embedding table to rank 1 right after training.
    import torch

    import components.training.loop as train_mod

    original = train_mod.train_ranker

    def collapsing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        result = original(*args, **kwargs)
        with torch.no_grad():
            for w in result.model.embedding.weights:
                w.copy_((torch.randn(w.shape[0], 1) @ torch.randn(1, w.shape[1])).view_as(w))
        return result

    monkeypatch.setattr(train_mod, "train_ranker", collapsing)
    res = CliRunner().invoke(app, ["daily", "--run-date", "2026-11-04"])
    assert res.exit_code == 0, res.output
    second = json.loads(sorted((env / "runs").glob("*-daily.json"))[-1].read_text())["stages"][-2]
    gates = {g["name"]: g for g in second["gates"]}
    assert not gates["collapse"]["passed"] and gates["collapse"]["value"] < settings.gates.ia_floor
    assert second["champion"]["version"] == 1  # compared with the champion on the newest day ...
    assert set(second["champion"]["metrics"]) == {"click", "conversion"}
    assert set(second["champion"]["auc_difference"]) == {"click", "conversion"}  # the paired interval, per task
    assert gates["model"]["details"]["champion"] is True
    assert second["registered"]["version"] == 2 and second["registered"]["aliases"] == []  # ... no challenger
    assert not second["gates_passed"] and second["promoted"] is None
    versions = {v.version: v for v in list_versions(settings)}
    assert "challenger" not in versions[2].aliases and "champion" in versions[1].aliases
    # the failed gate in words: what failed, the config key of its threshold, how to override it
    assert "collapse gate failed" in res.output and "raise gates.ia_champion_tolerance" in res.output
    assert 'adsrec promote --version 2 --force --reason "..."' in res.output

    # The run also loaded the online store: the champion scores (user, ad) pairs from it by alias.
    import pyarrow as pa
    import pyarrow.csv as pcsv

    pairs = pq.read_table(ts, columns=["user_id", "ad_id"]).slice(0, 5)
    pcsv.write_csv(pairs, env / "pairs.csv")
    res = CliRunner().invoke(app, ["score", "--pairs", str(env / "pairs.csv"), "--alias", "champion",
                                   "--out", str(env / "scored.parquet")])
    assert res.exit_code == 0, res.output
    scored = pq.read_table(env / "scored.parquet")
    assert scored.num_rows == 5 and {"p_click", "p_conversion"} <= set(scored.column_names)
    assert isinstance(scored, pa.Table)


def _assert_daily_artifacts(registered: dict) -> None:
    """The run's summary is in Prefect (flows/artifacts.py): tables, links, and the gates' markdown summary
    (metrics, baselines and ceilings, the gate table with statuses and reasons), read back by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = ["daily-run", "daily-days", "daily-metrics", "daily-gates", "daily-mlflow-run", "daily-model-version",
            "daily-summary"]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    by_key = {a.key: a for a in found}
    assert set(keys) <= set(by_key), sorted(by_key)
    assert {by_key[k].type for k in keys[:4]} == {"table"} and {by_key[k].type for k in keys[4:]} == {"markdown"}
    assert f"/runs/{registered['run_id']}" in str(by_key["daily-mlflow-run"].data)
    assert f"/versions/{registered['version']}" in str(by_key["daily-model-version"].data)
    summary = str(by_key["daily-summary"].data)
    assert summary.startswith("# adsrec daily: the model for 2026-11-03") and "| gate | value | interval |" in summary
    assert "| baseline | " in summary and "| oracle | " in summary and "ratio to the oracle" in summary
    assert '"status"' in str(by_key["daily-gates"].data) and '"auc_low"' in str(by_key["daily-metrics"].data)


def test_source_outside_its_days_is_a_clear_error(env: Path) -> None:
    from flows.cli.main import app

    res = CliRunner().invoke(app, ["ingest", "--date", "2020-01-01"])
    assert res.exit_code == 2  # refused by the command, before the flow starts (flows/cli/dates.py)
    assert "outside" in res.output and "2020-01-01" in res.output


def test_help_is_instant() -> None:
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "flows.cli.main", "--help"]  # this tree's CLI, whatever the venv installed
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert time.perf_counter() - t0 < 2.0  # under 1 s on an idle 2-core box; slack for a loaded CI
    assert "backfill" in out.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, flows.cli.main; print(sorted(m for m in ('prefect','torch','feast',"
         "'pandas','great_expectations') if m in sys.modules))"],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == "[]", f"heavy imports at CLI import time: {probe.stdout}"


def test_feast_cli_works_in_feature_repo_after_the_pipeline(tmp_path: Path, env: Path) -> None:
    """`feast apply` and `feast feature-views list` from the command line, in feature_repo/, against the
    default state folder beside it (<repo>/.adsrec), with no environment variable set."""
    import shutil
    import subprocess
    import sys

    from flows.cli.main import app
    from tests.conftest import REPO

    project = tmp_path / "project"
    shutil.copytree(REPO / "feature_repo", project / "feature_repo",
                    ignore=shutil.ignore_patterns("__pycache__", "data"))
    os.environ["ADSREC_HOME"] = str(project / ".adsrec")
    res = CliRunner().invoke(app, ["daily", "--run-date", "2026-11-03"])  # 3 days: train, validation, test
    assert res.exit_code == 0, res.output

    feast = str(Path(sys.executable).with_name("feast"))
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("ADSREC_", "FEAST_"))}
    for args in (["apply"], ["feature-views", "list"]):
        out = subprocess.run([feast, *args], cwd=project / "feature_repo", env=clean_env,
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
    for view in ("user_profile", "user_stats", "user_sequence", "ad_profile", "ad_stats"):
        assert view in out.stdout
    assert (project / ".adsrec" / "feast" / "registry.db").is_file()

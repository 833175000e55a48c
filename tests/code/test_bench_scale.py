"""bench/scale.py (docs/scale.md) end to end at a tiny size: every stage runs in its own child process
and leaves a result with a time and a peak-memory figure; a finished size is resumable and its home is
deleted; the report fits and tabulates what it finds."""

from __future__ import annotations

import json

import pytest

from bench import scale, scale_report
from bench.scale_data import shape, write_log


def test_generated_log_has_the_stated_shape(tmp_path):
    import pyarrow.parquet as pq

    out = write_log(tmp_path, rows=7_001, days=7, seed=1)
    assert out == {**shape(7_001, 7), "first_day": "2026-10-01", "last_day": "2026-10-07"}
    days = sorted((tmp_path / "impressions").iterdir())
    assert [d.name for d in days][0] == "date=2026-10-01" and len(days) == 7
    assert sum(pq.read_metadata(d / "part-0.parquet").num_rows for d in days) == 7_001
    assert pq.read_metadata(tmp_path / "ads.parquet").num_rows == out["ads"]
    assert pq.read_metadata(tmp_path / "users.parquet").num_rows == out["users"]


@pytest.mark.slow  # 13 child processes (torch, MLflow, Feast imports): about 95 s on the shared 2-core box
def test_every_stage_has_a_time_and_a_memory_figure(tmp_path):
    results, work = tmp_path / "results", tmp_path / "work"
    argv = ["--rows", "3000", "--days", "3", "--results", str(results), "--work", str(work),
            "--override", json.dumps({"representations": {"graph_epochs": 1}})]
    scale.main(argv)
    records = {p.stem: json.loads(p.read_text()) for p in (results / "3000").glob("*.json")}
    assert set(records) == set(scale.STAGES)
    for stage, r in records.items():
        assert r["status"] == "ok", (stage, r.get("reason"))
        assert r["seconds"] > 0 and r["peak_rss_mb"] > 0 and r["rss_before_mb"] > 0, (stage, r)
        assert r["load_before"] >= 0
    assert records["train"]["per_epoch_s"] > 0 and records["serve"]["requests"] == scale_report_requests()
    assert not (work / "3000").exists()  # the size's home and log are deleted once every stage has a result

    # Resumable: a second call keeps every finished stage instead of re-running it.
    before = {p.name: p.stat().st_mtime_ns for p in (results / "3000").glob("*.json")}
    scale.main(argv)
    assert {p.name: p.stat().st_mtime_ns for p in (results / "3000").glob("*.json")} == before

    data = scale_report.load(results)
    table = scale_report.table(data, scale_report.summarise(data, 24, 3600))
    assert all(scale_report.LABELS[s] in table for s in scale.STAGES)


def scale_report_requests() -> int:
    from bench.scale_stages import SERVE_REQUESTS

    return SERVE_REQUESTS


def test_a_stage_past_its_limit_is_recorded_as_broken_and_its_dependents_not_run(tmp_path):
    results, work = tmp_path / "results", tmp_path / "work"
    scale.main(["--rows", "2000", "--days", "3", "--results", str(results), "--work", str(work),
                "--stages", "generate", "deliver", "ingest", "--mem-cap-mb", "1"])
    records = {p.stem: json.loads(p.read_text()) for p in (results / "2000").glob("*.json")}
    assert records["generate"]["status"] == "broke" and "memory" in records["generate"]["reason"]
    assert records["deliver"]["status"] == "not run" and records["ingest"]["status"] == "not run"

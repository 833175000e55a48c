"""Evaluation reports, slices and the simulator's oracle AUC (components/training/evaluation.py, slices.py,
oracle.py); the metrics themselves are tests/code/training/test_metrics.py."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest

from components.schemas import TIMESTAMP
from components.training.evaluation import evaluate
from components.training.metrics import auc, calibration, gauc, logloss
from components.training.oracle import oracle_auc
from components.training.slices import EvalSlices, slice_masks

DAY_US = 86_400_000_000


def eval_table(n: int = 400, seed: int = 0) -> tuple[pa.Table, pa.Table, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    start = int(dt.datetime(2026, 11, 5, tzinfo=dt.timezone.utc).timestamp()) * 10**6
    ad = rng.integers(0, 30, n)
    event = start + rng.integers(0, DAY_US, n)
    created = start - (np.arange(30) % 4) * DAY_US // 2  # ads aged 0, 0.5, 1, 1.5 days at the day's start
    cats = np.array(["Apparel", "Footwear", "Accessories", "Personal Care", None], dtype=object)
    click = (rng.random(n) < 0.2).astype(np.int8)
    conv = (click & (rng.random(n) < 0.4)).astype(np.int8)
    table = pa.table({
        "event_time": pa.array(event, pa.int64()).cast(TIMESTAMP),
        "request_id": pa.array([f"r{i}" for i in range(n)]),
        "user_id": pa.array(rng.integers(0, 20, n), pa.int64()),
        "ad_id": pa.array(ad, pa.int64()),
        "exposure_index": pa.array(rng.choice([1, 1, 1, 2, 3], n), pa.int32()),
        "click": pa.array(click),
        "conversion": pa.array(conv),
        "ad_profile__advertiser_id": pa.array(ad * 10, pa.int64()),
        "ad_profile__master_category": pa.array(cats[rng.choice(5, n, p=[0.4, 0.25, 0.2, 0.1, 0.05])]),
    })
    ads = pa.table({"ad_id": pa.array(np.r_[np.arange(30), 3], pa.int64()),  # ad 3 re-delivered later
                    "created_at": pa.array(np.r_[created, start + DAY_US], pa.int64()).cast(TIMESTAMP)})
    scores = {"click": np.clip(0.2 + 0.3 * (click - 0.2) + rng.normal(0, 0.1, n), 0, 1),
              "conversion": np.clip(0.08 + 0.2 * (conv - 0.1) + rng.normal(0, 0.05, n), 0, 1)}
    return table, ads, scores


def test_slices_partition_the_rows() -> None:
    table, ads, _ = eval_table()
    masks, notes = slice_masks(table, EvalSlices(new_ad_days=1.0, top_categories=3), ads=ads)
    exposure = table.column("exposure_index").to_numpy()
    assert np.array_equal(masks["exposure=first"], exposure == 1)
    assert np.array_equal(masks["exposure=first"] ^ masks["exposure=repeated"], np.ones(table.num_rows, bool))
    # ad age at the impression, from the first created_at per ad (ad 3's later row is ignored)
    start = int(dt.datetime(2026, 11, 5, tzinfo=dt.timezone.utc).timestamp()) * 10**6
    ad = table.column("ad_id").to_numpy()
    age = (table.column("event_time").cast("int64").to_numpy() - (start - (ad % 4) * DAY_US // 2)) / DAY_US
    assert np.array_equal(masks["ads=new"], age < 1.0)
    assert not (masks["ads=new"] & masks["ads=established"]).any()
    assert (masks["ads=new"] | masks["ads=established"]).all()
    # top 3 categories by impressions, disjoint, nulls in none of them
    cats = table.column("ad_profile__master_category").to_pylist()
    counts = {c: cats.count(c) for c in set(cats) if c is not None}
    top = sorted(counts, key=lambda c: (-counts[c], c))[:3]
    assert [k for k in masks if k.startswith("category=")] == [f"category={c}" for c in top]
    stacked = np.stack([masks[f"category={c}"] for c in top])
    assert stacked.sum(0).max() == 1 and stacked.sum() == sum(counts[c] for c in top)
    assert any("ad_profile__master_category" in n for n in notes)


def test_evaluate_reports_each_slice_as_its_own_subset() -> None:
    table, ads, scores = eval_table()
    report = evaluate(scores, table, ["click", "conversion"], ads=ads)
    y = table.column("click").to_numpy()
    assert report.metric("click", "auc") == pytest.approx(auc(scores["click"], y))
    users = table.column("user_id").to_numpy()
    assert report.metric("click", "gauc") == pytest.approx(gauc(scores["click"], y, users))
    first = table.column("exposure_index").to_numpy() == 1
    assert report.metric("click", "calibration", "exposure=first") == pytest.approx(
        calibration(scores["click"][first], y[first]))
    assert report.metric("click", "logloss", "exposure=repeated") == pytest.approx(
        logloss(scores["click"][~first], y[~first]))
    for a, b in (("exposure=first", "exposure=repeated"), ("ads=new", "ads=established")):
        assert report.slices[a]["click"].rows + report.slices[b]["click"].rows == table.num_rows
        assert (report.slices[a]["conversion"].positives + report.slices[b]["conversion"].positives
                == int(table.column("conversion").to_numpy().sum()))
    payload = report.to_dict()
    json.dumps(payload, allow_nan=False)  # NaNs became nulls
    assert set(payload["slices"]) == set(report.slices)
    text = report.to_text()
    assert text.splitlines()[0].split()[:4] == ["slice", "task", "rows", "pos%"]
    assert len([line for line in text.splitlines() if line.startswith("exposure=first")]) == 2


def test_evaluate_without_creation_times_leaves_the_new_ad_slice_out() -> None:
    table, _, scores = eval_table(100)
    report = evaluate({"click": scores["click"]}, table, ["click"])
    assert "ads=new" not in report.slices and any("new-ad slices left out" in n for n in report.notes)
    with pytest.raises(ValueError, match="no scores"):
        evaluate({"click": scores["click"]}, table, ["click", "conversion"])
    with pytest.raises(ValueError, match="sigmoid"):
        evaluate({"click": scores["click"] * 5 - 2}, table, ["click"])


def test_oracle_auc_from_the_simulators_ground_truth(shared_data, settings) -> None:
    import pyarrow.parquet as pq

    from components.sources.simulator import SimulatorSource

    settings = settings.model_copy(update={"simulator": settings.simulator.model_copy(
        update={"n_users": 400, "sessions_per_user_day": 2.0,
                "n_initial_ads": 300, "new_users_per_day": 10, "new_ads_per_day": 20})})
    day = settings.pipeline.start_date
    with pytest.raises(FileNotFoundError, match="ground truth"):
        oracle_auc(settings, pa.table({"request_id": ["x"], "event_time": pa.array([0], TIMESTAMP)}), ["click"])
    source = SimulatorSource(settings)
    for d in (day, day + dt.timedelta(days=1)):
        source.deliver(d)
    imp = pa.concat_tables(pq.read_table(settings.raw_dir / "simulator" / "impressions" / f"date={d}")
                           for d in (day, day + dt.timedelta(days=1)))
    truth = pa.concat_tables(pq.read_table(settings.truth_dir / "impressions" / f"date={d}")
                             for d in (day, day + dt.timedelta(days=1)))
    # evaluate a shuffled subset: rows are matched on request_id, not position
    rows = np.random.default_rng(0).permutation(imp.num_rows)[: imp.num_rows // 2]
    table = imp.take(pa.array(rows))
    p_click = truth.column("p_click").to_numpy()[rows]
    noisy = np.clip(p_click + np.random.default_rng(1).normal(0, 0.05, rows.size), 0, 1)
    models = {"truth": {"click": p_click, "conversion": truth.column("p_conversion").to_numpy()[rows]},
              "noisy": {"click": noisy, "conversion": np.full(rows.size, 0.1)}}
    report = oracle_auc(settings, table, ["click", "conversion"], models=models)
    assert report.matched == report.rows == rows.size
    assert report.oracle["click"] == pytest.approx(auc(p_click, table.column("click").to_numpy()))
    assert 0.6 < report.oracle["click"] < 0.95 and 0.6 < report.oracle["conversion"] < 0.99
    assert report.ratio["truth"] == pytest.approx({"click": 1.0, "conversion": 1.0})
    assert report.ratio["noisy"]["click"] < 1.0
    assert report.ratio["noisy"]["conversion"] == pytest.approx(0.5 / report.oracle["conversion"])  # constant: 0.5
    assert "noisy" in report.to_text()
    json.dumps(report.to_dict(), allow_nan=False)
    # attached to an evaluation report, the oracle shows next to the model's AUC
    ev = evaluate({"click": noisy}, table, ["click"], EvalSlices(new_ad_days=None, top_categories=0))
    ev = ev.with_oracle(report)
    assert ev.to_dict()["auc_ratio_to_oracle"]["click"] == pytest.approx(report.ratio["noisy"]["click"])
    assert "oracle" in ev.to_text().splitlines()[0]


def test_evaluate_with_n_boot_gives_each_task_an_auc_interval_over_users() -> None:
    from components.training.intervals import auc_interval

    table, ads, scores = eval_table()
    plain = evaluate(scores, table, ["click", "conversion"], ads=ads)
    assert plain.auc_intervals == {} and "auc_interval" not in plain.to_dict()
    report = evaluate(scores, table, ["click", "conversion"], ads=ads, n_boot=200)
    users = table.column("user_id").to_numpy()
    for task in ("click", "conversion"):
        iv = report.auc_intervals[task]
        assert iv.point == pytest.approx(report.metric(task, "auc"))
        assert iv.low < iv.point < iv.high
        # the resamples are over the 20 users, not the 400 rows: the same interval as auc_interval's
        assert iv == auc_interval(table.column(task).to_numpy(), scores[task], users)
        assert report.to_dict()["auc_interval"][task]["low"] == pytest.approx(iv.low)
    assert f"click {report.auc_intervals['click']}" in report.to_text()
    assert "interval over users (200 resamples)" in report.to_text()

"""The learning-curve experiment (components/experiments/learning_curve.py): its small run end to end, the
LightGBM baseline's inputs, and the verdict's rule that a rise inside the noise is no rise."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.experiments.conftest import run_small


def test_learning_curve_small_run_reports_every_point_on_a_clean_split(settings, tmp_path: Path,
                                                                        shared_data: Path) -> None:
    from components.experiments.learning_curve import SMALL_POINTS
    from components.experiments.learning_curve_report import TASKS, axis_points

    result, lines = run_small("learning_curve", settings, tmp_path / "plots")
    records = result.data["points"]
    assert [r["point"] for r in records] == [p.name for p in SMALL_POINTS] == [r["point"] for r in result.rows]
    for r in records:
        days = r["split_days"]
        assert days["valid"] and days["test"] and days["train"]
        assert max(days["train"]) < min(days["valid"]) and max(days["valid"]) < min(days["test"])  # clean split
        assert len(days["test"]) == 1 and len(days["train"]) == r["days"] - 2
        for task in TASKS:
            f = r["tasks"][task]
            assert 0.5 < f["oracle"] <= 1.0 and set(f["ceilings"]) == {"no_taste", "segment_taste", "taxonomy_taste"}
            for model in ("stem", "lgbm"):
                auc, ratio = f[model], f[f"{model}_ratio"]
                assert 0.0 < auc["point"] < 1.0 and auc["low"] <= auc["point"] <= auc["high"]
                assert ratio["point"] == pytest.approx(auc["point"] / f["oracle"])
            assert f["stem"]["point"] == pytest.approx(float(np.mean(f["stem_seeds"])))
    rows, depth = axis_points(records, "rows"), axis_points(records, "depth")
    assert rows[0]["train_rows"] < rows[-1]["train_rows"]  # more users: more rows, same impressions per user
    assert rows[-1]["impressions_per_user"] == pytest.approx(rows[0]["impressions_per_user"], rel=0.25)
    assert depth[0]["impressions_per_user"] < depth[-1]["impressions_per_user"]
    homes = {p.parent for p in (settings.home / "experiments" / "learning_curve").glob("pipeline-*/training")}
    assert len(homes) == 2  # the depth points of the small size share one home's day-steps
    assert any("LightGBM" in line for line in lines)


def _record(name: str, axis: str, depth: float, ratio: float, half: float) -> dict[str, Any]:
    ratios = {"point": ratio, "low": ratio - half, "high": ratio + half}
    task = {"oracle": 0.8, "ceilings": {"no_taste": 0.66, "taxonomy_taste": 0.74}, "stem_ratio": ratios,
            "lgbm_ratio": ratios}
    return {"point": name, "axes": [axis], "impressions_per_user": depth, "train_rows": depth * 100,
            "tasks": {"click": task, "conversion": task}}


def test_a_rise_counts_only_beyond_the_noise_of_both_ends() -> None:
    from components.experiments.learning_curve_report import rise, verdict

    low, high = _record("a", "depth", 50, 0.80, 0.01), _record("b", "depth", 400, 0.86, 0.01)
    gain, noise = rise(low, high, "click")
    assert gain == pytest.approx(0.06) and noise == pytest.approx(math.sqrt(2) * 0.01)
    assert verdict([high, low])[0] == "reproduced"  # order of the records does not matter
    noisy = [_record("a", "depth", 50, 0.80, 0.05), _record("b", "depth", 400, 0.86, 0.05)]
    status, finding = verdict(noisy)
    assert status == "not reproduced" and "not beyond the noise" in finding
    mixed = [low, high, _record("c", "rows", 50, 0.80, 0.05), _record("d", "rows", 50, 0.82, 0.05)]
    assert verdict(mixed)[0] == "partly"
    assert verdict([low])[0] == "not run"


def test_gbdt_matrix_gives_codes_for_ids_and_raw_numbers_with_nan_for_nulls() -> None:
    import pyarrow as pa

    from components.experiments.gbdt import gbdt_matrix
    from components.training.encoders import FeatureEncoders

    table = pa.table({"user_id": pa.array([1, 1, 2, 2, 3], pa.int64()), "ad_profile__bid": [0.5, None, 2.0, 3.0, 1.5],
                      "click": pa.array([0, 1, 0, 1, 0], pa.int8())})
    enc = FeatureEncoders.fit(table, ["click"])
    x = gbdt_matrix(enc, table)
    assert [c.name for c in enc.categorical] == ["user_id"] and [n.name for n in enc.numeric] == ["ad_profile__bid"]
    np.testing.assert_array_equal(x[:, 0], [1, 1, 2, 2, 0])  # 1 + frequency rank; user 3 seen once: unknown 0
    np.testing.assert_array_equal(x[[0, 2, 3, 4], 1], [0.5, 2.0, 3.0, 1.5])
    assert np.isnan(x[1, 1])

"""Smoke test of experiment 4 (components/experiments/ranking_loss.py) at its small size, and of its
thinning of the training positives."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tests.experiments.conftest import run_small


def test_thin_positives_keeps_negatives_and_reaches_the_rate() -> None:
    import pyarrow as pa

    from components.experiments.ranking_loss import thin_positives

    y = (np.random.default_rng(1).random(200_000) < 0.4).astype(np.int8)
    table = pa.table({"click": y, "row": np.arange(len(y))})
    thinned, k = thin_positives(table, 0.03)
    kept = thinned["click"].to_numpy()
    assert (kept == 0).sum() == (y == 0).sum()  # every negative stays
    assert abs(kept.mean() - 0.03) < 0.002 and math.isclose(k, 0.03 * 0.6 / (0.4 * 0.97), rel_tol=0.02)
    again, _ = thin_positives(table, 0.03)
    assert again["row"].equals(thinned["row"])  # one thinned set per rate, shared by every alpha and seed
    same, k1 = thin_positives(table, 0.5)  # already sparser than the target: nothing dropped
    assert k1 == 1.0 and same.num_rows == table.num_rows


def test_ranking_loss_small_run_has_every_rate_and_alpha(settings, tmp_path: Path, shared_data: Path,
                                                         torch_one_thread: None) -> None:
    from components.experiments.ranking_loss import ALPHAS, RATES

    result, lines = run_small("ranking_loss", settings, tmp_path / "plots")
    datasets = [n for n in ("simulator", "taobao") if n in result.data]
    assert datasets[0] == "simulator" and (shared_data / "taobao").exists() <= ("taobao" in datasets)
    per = len(RATES) * len(ALPHAS)
    assert len(result.rows) == per * len(datasets) and len(lines) == per * len(datasets)
    assert [r["data"] for r in result.rows] == [n for n in datasets for _ in range(per)]
    assert result.verdict in ("reproduced", "partly", "not reproduced")
    assert all(p.is_file() and p.stat().st_size > 10_000 for p in result.plots)
    for name in datasets:
        thinned = result.data[name]["thinned"]
        rates = [thinned[str(r)]["actual_rate"] for r in RATES]
        assert all(a > b for a, b in zip(rates, rates[1:]))  # sparser and sparser
        for r, actual in zip(RATES, rates):
            assert abs(actual - r) < 0.35 * r + 0.004, (name, r, actual)
        rows = [r for r in result.rows if r["data"] == name]
        for i, rate in enumerate(RATES):
            runs = result.data[name]["runs"]
            aucs = [runs[f"{rate}/{a}"][0]["auc"] for a in ALPHAS]
            assert all(0.45 < v < 1.0 for v in aucs), (name, rate, aucs)
            assert len(set(aucs)) > 1  # the pairwise term changes the model
            # the alpha whose test gain is reported is chosen on the validation day, not on the test day
            valid_gain = {a: runs[f"{rate}/{a}"][0]["valid_auc"] - runs[f"{rate}/1.0"][0]["valid_auc"]
                          for a in ALPHAS[1:]}
            best = result.data[name]["best"][str(rate)]
            assert best["alpha"] == max(valid_gain, key=lambda a: valid_gain[a])
            block = rows[i * len(ALPHAS):(i + 1) * len(ALPHAS)]  # the rate's rows, one per alpha
            assert [r["α"] for r in block if r["α"].endswith("(chosen)")] == [f"{best['alpha']} (chosen)"]
            test_gain = runs[f"{rate}/{best['alpha']}"][0]["auc"] - runs[f"{rate}/1.0"][0]["auc"]
            gain = best["test_gain"]
            assert math.isclose(gain["mean"], test_gain, abs_tol=1e-9)
            assert math.isclose(gain["interval"]["point"], test_gain, abs_tol=1e-9)
            assert gain["interval"]["low"] < gain["interval"]["high"]

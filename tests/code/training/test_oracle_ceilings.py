"""The partial oracles beside the oracle (components/training/oracle.py ``OracleReport.ceilings``): each
ceiling's AUC on the same rows, in order, in the text and the dict; a ground truth written before the
ceilings existed gives none."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from components.sources.market_ceilings import CEILINGS
from components.training.metrics import auc
from components.training.oracle import oracle_auc


def test_oracle_report_shows_each_ceiling_on_the_same_rows(shared_data, settings) -> None:
    from components.sources.simulator import SimulatorSource

    settings = settings.model_copy(update={"simulator": settings.simulator.model_copy(
        update={"n_users": 600, "sessions_per_user_day": 2.0,
                "n_initial_ads": 300, "new_users_per_day": 10, "new_ads_per_day": 20})})
    day = settings.pipeline.start_date
    SimulatorSource(settings).deliver(day)
    imp = pq.read_table(settings.raw_dir / "simulator" / "impressions" / f"date={day}")
    truth_path = settings.truth_dir / "impressions" / f"date={day}" / "part-0.parquet"
    truth = pq.read_table(truth_path)
    assert imp.column("request_id").equals(truth.column("request_id"))
    report = oracle_auc(settings, imp, ["click", "conversion"])
    assert list(report.ceilings) == list(CEILINGS)
    for task in ("click", "conversion"):
        y = imp.column(task).to_numpy()
        for c in CEILINGS:
            assert report.ceilings[c][task] == pytest.approx(auc(truth.column(f"p_{task}_{c}").to_numpy(), y))
        per = [report.ceilings[c][task] for c in ("no_taste", "taxonomy_taste")]
        assert 0.5 < per[0] < per[1] < report.oracle[task]  # taste is what the oracle knows beyond them
    text = report.to_text()
    assert "ceiling no_taste" in text and "ceiling taxonomy_taste" in text
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["ceilings"]["segment_taste"]["click"] > 0.5

    # an older ground truth without the partial oracles: the oracle alone
    pq.write_table(truth.drop_columns([c for c in truth.column_names if c.endswith(tuple(CEILINGS))]), truth_path)
    older = oracle_auc(settings, imp, ["click", "conversion"])
    assert older.ceilings == {} and older.oracle == report.oracle
    assert "ceiling" not in older.to_text() and np.isfinite(older.oracle["click"])

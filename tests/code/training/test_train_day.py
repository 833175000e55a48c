"""components/training/train_day.py: the daily model step splits the window three ways, early-stops on the
validation day and reports the untouched newest day, with each task's AUC interval over users."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

TINY = {"arch": "stem", "mnse_combine": "sum", "embedding_dim": 8, "expert_hidden": [32], "gate_hidden": [16],
        "tower_hidden": [16]}


@pytest.fixture(scope="module")
def trained_day(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, torch_one_thread: None) -> dict[str, Any]:
    """train_and_evaluate on the 4-day small training set: days 1-2 train, day 3 validates, day 4 tests."""
    from components.training.encoders import read_training_set
    from components.training.train_day import train_and_evaluate
    from tests.code.training.test_dataset import small_training_set, small_training_settings

    path = small_training_set(tmp_path_factory, shared_data)
    settings = small_training_settings(tmp_path_factory, shared_data, training={
        "ranker": TINY, "train": {"epochs": 2, "batch_size": 1024, "patience": 0, "device": "cpu"}})

    table = read_training_set(path)
    end_day = max(table.column("event_time").to_pylist()).date()
    return {"result": train_and_evaluate(settings, end_day, path, settings.tasks), "table": table,
            "settings": settings}


def test_the_early_stopping_day_is_not_the_reported_day(trained_day: dict[str, Any]) -> None:
    result, table = trained_day["result"], trained_day["table"]
    days = sorted({t.date().isoformat() for t in table.column("event_time").to_pylist()})
    assert result["days"] == {"train": days[:2], "valid": [days[2]], "test": [days[3]]}
    rows = result["rows"]
    assert rows["train"] + rows["valid"] + rows["test"] == table.num_rows
    # early stopping saw the validation day's rows, every epoch; the evaluation is the test day's rows
    history = json.loads((Path(result["model_dir"]) / "history.json").read_text())["history"]
    assert [h["valid_rows"] for h in history] == [rows["valid"]] * 2
    assert result["evaluation"]["rows"] == rows["test"] != rows["valid"]
    for task in trained_day["settings"].tasks:
        assert result["evaluation"]["overall"][task]["rows"] == rows["test"]
        chosen_on = result["training"]["valid_auc"][task]  # the best epoch's AUC on the validation day
        assert not math.isclose(chosen_on, result["evaluation"]["overall"][task]["auc"], rel_tol=1e-9)


def test_the_reported_auc_has_an_interval_over_users_and_the_summary_prints_it(trained_day: dict[str, Any]) -> None:
    from flows.report import render_train

    result = trained_day["result"]
    for task in trained_day["settings"].tasks:
        iv = result["evaluation"]["auc_interval"][task]
        point = result["evaluation"]["overall"][task]["auc"]
        assert iv["point"] == pytest.approx(point) and iv["low"] < point < iv["high"] and iv["n_boot"] == 200
    text = "\n".join(render_train({"stage": "train", **result}))
    assert "early-stopped on the validation day" in text and f"({result['rows']['test']:,} rows)" in text
    click = result["evaluation"]["auc_interval"]["click"]
    assert f"click {click['point']:.4f} [{click['low']:.4f}, {click['high']:.4f}]" in text
    assert result["oracle"] is not None  # the simulator's ground truth scores the same test rows


def test_small_data_lowers_the_batch_to_the_minimum_steps_per_epoch_and_says_so() -> None:
    import pyarrow as pa

    from components.training.train_day import MIN_BATCH, small_data
    from flows.report import render_train

    rows = 15_000  # MovieLens' 7-day window: 7 steps per epoch at the daily batch of 2048
    train = pa.table({"user_id": [i % 60 for i in range(rows)], "ad_id": [i % 1000 for i in range(rows)]})
    note = small_data(train, 2048, 32)
    assert note is not None and note["steps_per_epoch"] == 8 and note["used_batch_size"] == rows // 32 == 468
    assert note["used_steps_per_epoch"] >= 32 and (note["users"], note["ads"]) == (60, 1000)
    assert note["text"].startswith("small data: 15,000 training rows (60 users, 250 rows each; 1,000 ads, 15 rows")
    assert "trained at batch_size 468 (33 steps per epoch, training.min_steps_per_epoch 32)" in note["text"]
    assert small_data(train, 256, 32) is None  # 59 steps already: the configured batch stays
    assert small_data(train, 2048, 0) is None  # the rule off
    tiny = small_data(train.slice(0, 500), 2048, 32)  # never below MIN_BATCH rows a step
    assert tiny is not None and tiny["used_batch_size"] == MIN_BATCH and tiny["used_steps_per_epoch"] == 8
    assert small_data(train.slice(0, 500), 64, 32) is None  # a configured batch already that small stays
    text = "\n".join(render_train({"stage": "train", "small_data": note, "rows": {"train": rows}}))
    assert note["text"] in text
    assert "small data" not in "\n".join(render_train({"stage": "train", "small_data": None}))


def test_the_daily_step_streams_a_set_over_its_memory_budget(trained_day: dict[str, Any], caplog,
                                                             tmp_path_factory: pytest.TempPathFactory,
                                                             shared_data: Path) -> None:
    """Last in the file: it writes the same model folder. With a 1 MB budget the small set (~10 MB decoded)
    streams from disk; the split, the IPW weights and the reported rows are the in-memory run's."""
    import logging

    from components.training.train_day import train_and_evaluate
    from tests.code.training.test_dataset import small_training_set, small_training_settings

    path = small_training_set(tmp_path_factory, shared_data)
    settings = small_training_settings(tmp_path_factory, shared_data, training={"ranker": TINY, "train": {
        "epochs": 2, "batch_size": 1024, "patience": 0, "device": "cpu", "memory_budget_mb": 1}})
    memory = trained_day["result"]
    end_day = max(trained_day["table"].column("event_time").to_pylist()).date()
    with caplog.at_level(logging.INFO, logger="components.training"):
        streamed = train_and_evaluate(settings, end_day, path, settings.tasks)
    assert any("streaming it from disk" in r.getMessage() for r in caplog.records)
    assert any("streamed from parquet" in r.getMessage() for r in caplog.records)
    assert streamed["rows"] == memory["rows"] and streamed["days"] == memory["days"]
    assert streamed["ipw"] == memory["ipw"]
    assert streamed["training"]["steps"] == memory["training"]["steps"]
    for task in settings.tasks:
        assert streamed["evaluation"]["overall"][task]["rows"] == memory["rows"]["test"]

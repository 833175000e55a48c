"""Online serving (components/serving/online_store.py, online_rows.py, scoring.py; flows/cli/serving.py) on a
small simulated marketplace built by the real pipeline steps (deliver, ingest, features, representations)
for three days.

The central check is online/offline consistency: the online store materialised as of the end of day 2 serves,
for the impressions of day 3, the same feature values as the training set's point-in-time join, and the
ranker scores both the same; the only differences are the ones docs/serving.md states (entities created
during day 3); the fresh click sequence and counters come from the impression log, or from a BehaviourState
fed day 3's events, and are equal to the microsecond."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from components.schemas import TIMESTAMP, day_window

pytestmark = pytest.mark.shared_data
DAYS = 3


def _settings(home: Path, shared: Path) -> Any:
    from components.config import load_settings

    return load_settings(environ={}, overrides={
        "home": str(home),
        "pipeline": {"shared_data": str(shared)},
        "simulator": {"n_users": 200, "sessions_per_user_day": 2.0, "n_initial_ads": 150, "new_ads_per_day": 15,
                      "new_users_per_day": 10,
                      "n_candidates": 60, "click_base_logit": -3.0},
        "representations": {"rq_codes": 8, "rq_pca_dim": 8, "graph_dim": 16, "graph_epochs": 5,
                            "graph_window_days": 3},
    }).resolved()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Any]:
    """Three days through the real steps, a training set of all three (with SEE columns), and a small
    ranker trained on days 1-2, saved and loaded back."""
    import torch

    from tests.code.serving.worlds import pipeline_days
    from components.training.artefact import load_trained
    from components.training.loop import train_ranker
    from components.training.train_config import TrainConfig
    from components.training.training_set import build_training_set
    from models.config import RankerConfig

    base = tmp_path_factory.mktemp("serving")
    settings = _settings(base / "home", shared_data)
    days = pipeline_days(settings, DAYS)
    train_table = pq.read_table(build_training_set(settings, days[-1], days=DAYS, join_path="duckdb"))
    start, _ = day_window(days[-1])
    newest = pc.greater_equal(train_table["event_time"], pa.scalar(start, TIMESTAMP))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_ranker(
            None, train_table.filter(pc.invert(newest)), None,
            RankerConfig(arch="stem", embedding_dim=8, expert_hidden=(32,), gate_hidden=(8,), tower_hidden=(16,),
                         mnse_combine="sum"),  # the TIM sequence encoder stays on: click times reach the scores
            TrainConfig(epochs=1, batch_size=512, log_every=0, device="cpu", patience=0),
        )
    finally:
        torch.set_num_threads(threads)
    model_dir = result.save(base / "model")
    return {"settings": settings, "days": days, "train": train_table, "newest": train_table.filter(newest),
            "model": load_trained(model_dir), "model_dir": model_dir}


@pytest.fixture(scope="module")
def materialized(world: dict[str, Any]) -> dict[str, Any]:
    """The online store as of the end of day 2 (the day before the compared impressions)."""
    from components.serving.online_store import materialize_online

    return materialize_online(world["settings"], world["days"][-2])


def test_materialize_writes_every_view_as_of_the_day_end(world: dict[str, Any], materialized: dict[str, Any]) -> None:
    from components.serving.online_store import online_state

    day = world["days"][-2]
    assert materialized["as_of"] == day_window(day)[1].isoformat()
    interest = {f"user_{a}_interest" for a in ("master_category", "sub_category", "article_type")}
    assert set(materialized["views"]) == {"user_profile", "user_stats", "user_sequence", "ad_profile", "ad_stats",
                                          *interest}
    assert all(materialized["views"][v]["entities_written"] > 0 for v in interest)
    # Every entity created up to the end of day 2 is in its profile view, and nobody created later.
    users = pq.read_table(world["settings"].offline_dir / "users")
    created = pc.less_equal(users["created_at"], pa.scalar(day_window(day)[1], TIMESTAMP))
    assert materialized["views"]["user_profile"]["entities_written"] == pc.sum(created.cast(pa.int64())).as_py()
    assert 0 < materialized["views"]["user_stats"]["entities_written"] <= materialized["entities"]["user"]
    assert online_state(world["settings"])["as_of"] == materialized["as_of"]


def test_online_rows_match_the_point_in_time_join(world: dict[str, Any], materialized: dict[str, Any]) -> None:
    """Day-3 impressions served from the store as of the end of day 2 against their training-set rows."""
    from components.serving.online_rows import FLAG_COLUMNS, model_input, online_feature_rows, serving_summary

    offline = world["newest"]
    online = online_feature_rows(world["settings"], offline)  # the impression columns are the requests
    columns = [c for c in online.column_names if c not in FLAG_COLUMNS]
    # Same columns and types as a training-set row, labels aside.
    assert columns == [c for c in offline.column_names if c not in ("click", "conversion")]
    assert all(online.schema.field(c).type == offline.schema.field(c).type for c in columns)
    assert any(c.startswith("see_") for c in columns) and any(c.startswith("ad_semantic_id__") for c in columns)

    # Entities created during day 3 are not in a store materialised at its start: flagged, profile null.
    cutoff = day_window(world["days"][-1])[0]
    users = pq.read_table(world["settings"].offline_dir / "users", columns=["user_id", "created_at"])
    ads = pq.read_table(world["settings"].offline_dir / "ads", columns=["ad_id", "created_at"])
    old_users = users.filter(pc.less(users["created_at"], pa.scalar(cutoff, TIMESTAMP)))["user_id"]
    old_ads = ads.filter(pc.less(ads["created_at"], pa.scalar(cutoff, TIMESTAMP)))["ad_id"]
    user_known = pc.is_in(offline["user_id"], value_set=old_users.combine_chunks()).to_numpy(zero_copy_only=False)
    ad_known = pc.is_in(offline["ad_id"], value_set=old_ads.combine_chunks()).to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(online["user_known"].to_numpy(zero_copy_only=False), user_known)
    np.testing.assert_array_equal(online["ad_known"].to_numpy(zero_copy_only=False), ad_known)
    known = user_known & ad_known
    assert 0 < (~known).sum() < 0.2 * len(known)  # both kinds of row are present
    summary = serving_summary(online)
    assert summary["unknown_users"] == int((~user_known).sum())
    assert all(v["after_request"] == 0 and v["expired"] == 0 for v in summary["withheld"].values())

    # Feature values: equal on every row of existing entities. The click sequence and the user_recent__
    # counters come from the impression log (features.fresh_behaviour), not Feast: click times keep their µs.
    mask = pa.array(known)
    for c in columns:
        assert online[c].filter(mask).to_pylist() == offline[c].filter(mask).to_pylist(), c
    assert any(c.startswith("user_recent__") for c in columns)
    # The interest columns (keyed on the ad's taxonomy) are served, and equal, on most rows.
    interest = [c for c in columns if c.startswith("user_sub_category_interest__")]
    assert interest and pc.sum(pc.is_valid(online[interest[0]]).cast(pa.int64())).as_py() > 0.5 * len(known)
    # On new entities only their profile columns differ (offline saw the profile from created_at on), and
    # the interest columns keyed on a new ad's profile (docs/features.md, "Interest views").
    for c in columns:
        if not c.startswith(("user_profile__", "ad_profile__")) and "_interest__" not in c:
            assert online[c].filter(pc.invert(mask)).to_pylist() == offline[c].filter(pc.invert(mask)).to_pylist(), c
    moved = [r for r in offline["user_sequence__click_times"].to_pylist() if r and any(t.microsecond for t in r)]
    assert moved, "the simulator's click times have sub-second parts: their exact equality above is exercised"

    # The service's path: a BehaviourState seeded up to day 3 and pushed day 3's events serves the same rows.
    from components.serving.behaviour_state import BehaviourState

    state = BehaviourState.from_log(world["settings"], cutoff)
    assert state.push(offline) == offline.num_rows
    via_state = online_feature_rows(world["settings"], offline, behaviour=state)
    assert serving_summary(via_state)["fresh_behaviour"]["source"] == "state"
    assert serving_summary(online)["fresh_behaviour"]["source"] == "log"
    for c in columns:
        assert via_state[c].to_pylist() == online[c].to_pylist(), c

    # The model's inputs and scores: identical for existing entities (same encoded batch), close elsewhere.
    model = world["model"]
    enc_on = model.encoders.encode_numpy(model_input(online), with_labels=False)
    enc_off = model.encoders.encode_numpy(offline, with_labels=False)
    for key, values in enc_on.items():
        np.testing.assert_array_equal(values[known], enc_off[key][known], err_msg=key)
    p_online, p_offline = model.score(model_input(online)), model.score(offline)
    for task in model.tasks:
        assert np.abs(p_online[task] - p_offline[task])[known].max() <= 1e-6, task
        assert np.abs(p_online[task] - p_offline[task]).max() < 0.05, task


def test_unknown_pairs_score_with_defaults_and_flags(world: dict[str, Any], materialized: dict[str, Any]) -> None:
    from components.serving.online_rows import serving_summary
    from components.serving.scoring import score_requests

    model = world["model"]
    user = int(world["newest"]["user_id"][0].as_py())
    ad = int(world["newest"]["ad_id"][0].as_py())
    requests = pa.table({"user_id": [user, 10**12, user], "ad_id": [ad, ad, 10**12]})
    now = day_window(world["days"][-1])[0] + dt.timedelta(hours=9)
    scored = score_requests(world["settings"], requests, model, now=now)
    assert scored["user_known"].to_pylist() == [True, False, True]
    assert scored["ad_known"].to_pylist() == [True, True, False]
    assert scored["position"].to_pylist() == [1, 1, 1] and scored["exposure_index"].to_pylist() == [1, 1, 1]
    assert scored["slot"].null_count == 3 and scored["request_id"].to_pylist() == ["serve-0", "serve-1", "serve-2"]
    assert scored["event_time"].to_pylist() == [now] * 3
    assert scored["user_profile__age_band"][1].as_py() is None and scored["ad_profile__bid"][2].as_py() is None
    for task in model.tasks:
        p = scored[f"p_{task}"].to_numpy()
        assert p.dtype == np.float32 and np.all((p > 0) & (p < 1))
    assert serving_summary(scored)["unknown_users"] == 1 and serving_summary(scored)["unknown_ads"] == 1


def test_point_in_time_rule_is_applied_to_online_values(world: dict[str, Any], materialized: dict[str, Any]) -> None:
    """Feast's online read ignores TTLs and request times; serving withholds what the offline join would."""
    from components.serving.online_rows import online_feature_rows, serving_summary

    row = world["newest"].slice(0, 1)
    as_of = day_window(world["days"][-2])[1]
    ttl = dt.timedelta(days=world["settings"].features.ttl_days)
    times = [as_of + dt.timedelta(hours=1), as_of - dt.timedelta(hours=1), as_of + ttl + dt.timedelta(hours=1)]
    requests = pa.table({"user_id": [row["user_id"][0].as_py()] * 3, "ad_id": [row["ad_id"][0].as_py()] * 3,
                         "event_time": pa.array(times, TIMESTAMP)})
    rows = online_feature_rows(world["settings"], requests)
    stats = rows["user_stats__impressions_1d"].to_pylist()
    assert stats[0] is not None and stats[1] is None and stats[2] is None  # served / not yet known / expired
    assert rows["user_profile__age_band"].to_pylist()[2] is not None  # profiles never expire
    withheld = serving_summary(rows)["withheld"]["user_stats"]
    assert withheld["after_request"] == 1 and withheld["expired"] == 1


def test_materialize_is_idempotent_and_goes_back_in_time(world: dict[str, Any], materialized: dict[str, Any]) -> None:
    from components.serving.online_rows import online_feature_rows
    from components.serving.online_store import materialize_online

    settings, days = world["settings"], world["days"]
    sample = world["newest"].slice(0, 200)
    before = online_feature_rows(settings, sample)
    later = materialize_online(settings, days[-1])  # day 3's new users and ads arrive...
    written = {v: i["entities_written"] for v, i in materialized["views"].items()}
    assert later["views"]["user_profile"]["entities_written"] > written["user_profile"]
    again = materialize_online(settings, days[-2])  # ...and are gone again as of day 2
    assert {v: i["entities_written"] for v, i in again["views"].items()} == written
    after = online_feature_rows(settings, sample)
    assert after.to_pylist() == before.to_pylist()


def test_mlflow_pyfunc_scorer_gives_the_trained_model_scores(
    world: dict[str, Any], materialized: dict[str, Any], tmp_path: Path
) -> None:
    """The registry's pyfunc (components/registry/packaged.py), saved and loaded back through MLflow, as the scorer."""
    import mlflow.pyfunc

    from components.registry.packaged import RANKER_ARTIFACT, write_model_code
    from components.serving.scoring import score_requests

    target = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(str(target), python_model=str(write_model_code(tmp_path / "code.py")),
                             artifacts={RANKER_ARTIFACT: str(world["model_dir"])}, pip_requirements=["torch"])
    pyfunc = mlflow.pyfunc.load_model(str(target))
    requests = world["newest"].slice(0, 300)
    via_pyfunc = score_requests(world["settings"], requests, pyfunc)
    via_model = score_requests(world["settings"], requests, world["model"])
    for task in world["model"].tasks:
        np.testing.assert_allclose(via_pyfunc[f"p_{task}"].to_numpy(), via_model[f"p_{task}"].to_numpy(), atol=1e-6)
    with pytest.raises(TypeError, match="cannot score"):
        score_requests(world["settings"], requests, object())


@pytest.fixture()
def restore_env() -> Iterator[None]:
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_cli_materialize_and_score(world: dict[str, Any], materialized: dict[str, Any], tmp_path: Path,
                                   restore_env: None) -> None:
    from typer.testing import CliRunner

    from flows.cli.main import app

    settings = world["settings"]
    runner = CliRunner()
    empty = runner.invoke(app, ["--home", str(tmp_path / "empty"), "score", "--pairs", str(tmp_path / "x.csv"),
                                "--model-dir", str(world["model_dir"])])
    assert empty.exit_code == 1 and "no pairs file" in empty.output

    pairs = tmp_path / "pairs.csv"
    sample = world["newest"].slice(0, 40).select(["user_id", "ad_id", "slot", "position"])
    import pyarrow.csv as pcsv

    pcsv.write_csv(sample, pairs)
    no_store = runner.invoke(app, ["--home", str(tmp_path / "empty"), "score", "--pairs", str(pairs),
                                   "--model-dir", str(world["model_dir"])])
    assert no_store.exit_code == 1 and "adsrec materialize" in no_store.output

    day = world["days"][-2].isoformat()
    mat = runner.invoke(app, ["--home", str(settings.home), "materialize", "--date", day])
    assert mat.exit_code == 0, mat.output
    assert "user_profile" in mat.output and day_window(world["days"][-2])[1].isoformat() in mat.output

    out = tmp_path / "scores.parquet"
    res = runner.invoke(app, ["--home", str(settings.home), "score", "--pairs", str(pairs), "--model-dir",
                              str(world["model_dir"]), "--out", str(out), "--top", "5"])
    assert res.exit_code == 0, res.output
    assert "p_click" in res.output and "40 pairs scored" in res.output
    scored = pq.read_table(out)
    assert scored.num_rows == 40 and {"p_click", "p_conversion", "user_known"} <= set(scored.column_names)
    bad = tmp_path / "bad.csv"
    bad.write_text("user,ad_id\n1,2\n")
    missing = runner.invoke(app, ["--home", str(settings.home), "score", "--pairs", str(bad), "--model-dir",
                                  str(world["model_dir"])])
    assert missing.exit_code == 1 and "user_id" in missing.output

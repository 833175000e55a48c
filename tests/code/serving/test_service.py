"""The scoring service (components/serving/service.py, api.py, model_slots.py, readers.py, objective.py) on a
small simulated marketplace built by the real steps, with two registered versions.

Checked through HTTP (FastAPI's TestClient): scores equal to ``adsrec score`` for the same pairs (|Δp| ≤ 1e-6),
a promotion served without a restart, a 4xx for each bad request class, readiness, metrics, and the warm
reader against Feast's online read."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.schemas import day_window

pytestmark = pytest.mark.shared_data
DAYS = 2
PASS = [{"name": "data", "value": 0.0, "threshold": 0.05, "passed": True, "details": {}}]


def _settings(home: Path, shared: Path) -> Any:
    from components.config import load_settings

    return load_settings(environ={}, overrides={
        "home": str(home),
        "pipeline": {"shared_data": str(shared)},
        "simulator": {"n_users": 120, "sessions_per_user_day": 2.0, "n_initial_ads": 120, "new_ads_per_day": 10,
                      "new_users_per_day": 5, "n_candidates": 40, "click_base_logit": -2.5},
        "representations": {"rq_codes": 8, "rq_pca_dim": 8, "graph_dim": 16, "graph_epochs": 3,
                            "graph_window_days": 2},
        "serving": {"poll_seconds": 0.3, "max_candidates": 50},
    }).resolved()


def _train(table: pa.Table, seed: int, out: Path) -> Path:
    import torch

    from components.training.loop import train_ranker
    from components.training.train_config import TrainConfig
    from models.config import RankerConfig

    torch.manual_seed(seed)
    result = train_ranker(None, table, None,
                          RankerConfig(arch="stem", embedding_dim=4, expert_hidden=(16,), gate_hidden=(8,),
                                       tower_hidden=(8,), mnse_combine="sum"),
                          TrainConfig(epochs=1, batch_size=512, log_every=0, device="cpu", patience=0, seed=seed))
    return result.save(out)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, torch_one_thread: None) -> Any:
    """Two days through the real steps, two small rankers registered (version 1 champion), the online store
    as of the end of day 2, and a started service with its HTTP client."""
    from fastapi.testclient import TestClient

    from tests.code.serving.worlds import pipeline_days
    from components.registry.aliases import promote
    from components.registry.register import register_model
    from components.serving.api import create_app
    from components.serving.online_store import materialize_online
    from components.serving.service import ScoringService
    from components.training.training_set import build_training_set

    base = tmp_path_factory.mktemp("service")
    settings = _settings(base / "home", shared_data)
    days = pipeline_days(settings, DAYS)
    table = pq.read_table(build_training_set(settings, days[-1], days=DAYS, join_path="duckdb"))
    for version, seed in ((1, 0), (2, 1)):
        model_dir = _train(table, seed, base / f"model-{version}")
        register_model(settings, model_dir, {"arch": "stem"}, PASS, data_window=(days[0], days[-1]))
    promote(settings, 1)
    materialize_online(settings, days[-1])
    service = ScoringService(settings).start()
    client = TestClient(create_app(service))
    yield {"settings": settings, "days": days, "table": table, "service": service, "client": client}
    service.stop()


def _request(served: Any, n: int = 20, **extra: Any) -> dict[str, Any]:
    table = served["table"]
    user = int(table["user_id"][0].as_py())
    ads = list(dict.fromkeys(table["ad_id"].to_pylist()))[:n - 1] + [10**12]  # + an ad nobody knows
    when = day_window(served["days"][-1])[1] + dt.timedelta(hours=3)
    slot = table["slot"][0].as_py()  # a slot of the log (a string)
    return {"user_id": user, "ads": ads, "slot": slot, "event_time": when.isoformat(), **extra}


def test_ready_and_scores_equal_adsrec_score(served: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from flows.cli.main import app

    client = served["client"]
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {"champion": 1}, ready.text
    body = _request(served)
    got = client.post("/score", json=body)
    assert got.status_code == 200, got.text
    out = got.json()
    assert out["path"] == "fast"  # components/serving/encoded.py; the generic path's scores are compared below
    assert out["model"]["version"] == 1 and len(out["ranked"]) == len(body["ads"])
    assert [r["rank"] for r in out["ranked"]] == list(range(1, len(body["ads"]) + 1))
    scores = [r["score"] for r in out["ranked"]]
    assert scores == sorted(scores, reverse=True) and out["unknown_ads"] == 1
    assert {r["ad_id"] for r in out["ranked"] if not r["ad_known"]} == {10**12}

    # The same pairs through `adsrec score --alias champion` (Feast's online read, the pyfunc, a new process' path).
    pairs = pa.table({"user_id": [body["user_id"]] * len(body["ads"]), "ad_id": body["ads"],
                      "slot": [body["slot"]] * len(body["ads"]), "event_time": [body["event_time"]] * len(body["ads"])})
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    monkeypatch.setenv("ADSREC_HOME", str(served["settings"].home))
    monkeypatch.setenv("ADSREC_PIPELINE__SHARED_DATA", str(served["settings"].pipeline.shared_data))
    res = CliRunner().invoke(app, ["score", "--pairs", str(tmp_path / "pairs.parquet"), "--alias", "champion",
                                   "--out", str(tmp_path / "scored.parquet"), "--top", "0"])
    assert res.exit_code == 0, res.output
    batch = pq.read_table(tmp_path / "scored.parquet").to_pylist()
    by_ad = {r["ad_id"]: r for r in out["ranked"]}
    for row in batch:
        for task in ("click", "conversion"):
            assert abs(row[f"p_{task}"] - by_ad[row["ad_id"]][f"p_{task}"]) <= 1e-6, (task, row["ad_id"])


def test_warm_reader_serves_what_feast_serves(served: Any) -> None:
    from components.serving.online_rows import online_feature_rows
    from components.serving.service import ScoreRequest, request_table

    body = _request(served, n=30)
    request = ScoreRequest(user_id=body["user_id"], ads=body["ads"], slot=body["slot"],
                           event_time=dt.datetime.fromisoformat(body["event_time"]))
    warm = served["service"].rows(request)
    cold = online_feature_rows(served["settings"], request_table(request))
    assert warm.column_names == cold.column_names
    for name in warm.column_names:
        assert warm[name].to_pylist() == cold[name].to_pylist(), name


@pytest.mark.parametrize("case", ["known", "unknown user", "expired", "before the store", "other slot"])
def test_fast_path_gives_the_generic_paths_inputs(served: Any, case: str) -> None:
    """The fast path's batch equals FeatureEncoders.encode_numpy of the generic online rows, value for value."""
    from components.serving.online_rows import model_input
    from components.serving.service import ScoreRequest

    service = served["service"]
    body = _request(served, n=40)
    when = dt.datetime.fromisoformat(body["event_time"])
    user, slot = body["user_id"], body["slot"]
    if case == "unknown user":
        user = 10**12
    elif case == "expired":  # past every TTL: stats, sequence and interest rows are withheld
        when += dt.timedelta(days=served["settings"].features.ttl_days + 1)
    elif case == "before the store":  # stats stamped after the request are withheld
        when -= dt.timedelta(days=1)
    elif case == "other slot":
        slot = None
    request = ScoreRequest(user_id=user, ads=body["ads"], slot=slot, event_time=when,
                           positions=list(range(1, len(body["ads"]) + 1)))
    model = service.models.get("champion")
    fast = service.fast_path(model)
    assert fast is not None
    got = fast.rows(request, service.warm.behaviour)
    rows = service.rows(request)
    want = model.trained.encoders.encode_numpy(model_input(rows), with_labels=False)
    assert set(got.batch) == set(want)
    for key, values in want.items():
        np.testing.assert_array_equal(got.batch[key], values, err_msg=key)
    np.testing.assert_array_equal(got.ad_known, rows["ad_known"].to_numpy(zero_copy_only=False))
    assert got.user_known == rows["user_known"][0].as_py()
    if case == "known":
        assert got.user_known and got.ad_known[:-1].all() and not got.ad_known[-1]
    bid = fast.raw_column(got, "ad_profile__bid")  # what an objective reads
    served_bid = rows["ad_profile__bid"].cast(pa.float64()).fill_null(float("nan")).to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(np.isnan(bid), np.isnan(served_bid))
    np.testing.assert_array_equal(bid[~np.isnan(bid)], served_bid[~np.isnan(served_bid)])


def test_objective_ranks_by_expected_value(served: Any) -> None:
    client = served["client"]
    out = client.post("/score", json=_request(served, objective="click * bid", top=5)).json()
    assert out["objective"] == "click * bid" and len(out["ranked"]) == 5
    full = client.post("/score", json=_request(served, objective="click * bid")).json()["ranked"]
    assert [r["ad_id"] for r in full[:5]] == [r["ad_id"] for r in out["ranked"]]
    assert full[-1]["ad_id"] == 10**12 and full[-1]["score"] is None  # an unknown ad has no bid: NaN ranks last
    known = [r for r in full if r["score"] is not None]
    assert [r["score"] for r in known] == sorted((r["score"] for r in known), reverse=True)


@pytest.mark.parametrize("change, status, words", [
    ({"ads": "not a list"}, 422, "ads"),
    ({"user_id": None}, 422, "user_id"),
    ({"unexpected": 1}, 422, "unexpected"),
    ({"ads": []}, 422, "no candidate"),
    ({"ads": list(range(51))}, 413, "at most 50"),
    ({"alias": "nope"}, 404, "nope"),
    ({"objective": "click * no_such_column"}, 422, "no_such_column"),
    ({"objective": "__import__('os').system('true')"}, 422, "only names"),
    ({"positions": [1, 2]}, 422, "positions"),
])
def test_bad_requests_get_a_clear_4xx(served: Any, change: dict[str, Any], status: int, words: str) -> None:
    got = served["client"].post("/score", json={**_request(served), **change})
    assert got.status_code == status, got.text
    assert words in got.text


def test_malformed_json_is_a_422(served: Any) -> None:
    got = served["client"].post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert got.status_code == 422


def test_promotion_is_served_without_a_restart(served: Any) -> None:
    from components.registry.aliases import promote

    client = served["client"]
    before = client.post("/score", json=_request(served)).json()
    promote(served["settings"], 2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        after = client.post("/score", json=_request(served)).json()
        if after["model"]["version"] == 2:
            break
        time.sleep(0.3)
    assert after["model"]["version"] == 2, "the service did not swap in the new champion"
    p1 = np.array([r["p_click"] for r in sorted(before["ranked"], key=lambda r: r["ad_id"])])
    p2 = np.array([r["p_click"] for r in sorted(after["ranked"], key=lambda r: r["ad_id"])])
    assert np.abs(p1 - p2).max() > 1e-4  # another model, other scores
    status = client.get("/status").json()
    assert status["swaps"][-1]["from"] == 1 and status["swaps"][-1]["to"] == 2
    challenger = client.post("/score", json=_request(served, alias="previous")).json()
    assert challenger["model"]["version"] == 1  # another alias is loaded on first use
    metrics = client.get("/metrics").text
    assert 'adsrec_serve_model_version{alias="champion"} 2.0' in metrics
    assert 'adsrec_serve_requests_total{endpoint="score",status="200"}' in metrics
    assert 'adsrec_serve_stage_seconds_bucket{le="0.005",stage="model"}' in metrics


def test_not_ready_without_an_online_store(served: Any, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from components.serving.api import create_app
    from components.serving.service import ScoringService

    empty = served["settings"].model_copy(update={"home": tmp_path / "empty"})
    service = ScoringService(empty).start(watch=False)
    client = TestClient(create_app(service))
    ready = client.get("/ready")
    assert ready.status_code == 503 and {"online_store", "model"} <= set(ready.json()["reasons"])
    got = client.post("/score", json=_request(served))
    assert got.status_code == 503 and "materialize" in got.text


def test_pushed_events_reach_the_next_request(served: Any) -> None:
    """A click pushed to /events is in the very next request's behaviour features (sequence and counters);
    pushing it again changes nothing."""
    from components.serving.service import ScoreRequest

    service, client = served["service"], served["client"]
    body = _request(served)
    when = dt.datetime.fromisoformat(body["event_time"])
    request = ScoreRequest(user_id=body["user_id"], ads=body["ads"], slot=body["slot"], event_time=when)
    before = service.rows(request)
    clicked = body["ads"][3]
    events = [{"event_time": (when - dt.timedelta(seconds=s)).isoformat(), "request_id": f"push-{s}",
               "user_id": body["user_id"], "ad_id": ad, "slot": body["slot"], "position": 1, "exposure_index": 1,
               "click": click, "conversion": 0}
              for s, ad, click in ((90, body["ads"][5], 0), (30, clicked, 1))]
    got = client.post("/events", json={"events": events})
    assert got.status_code == 200 and got.json() == {"received": 2, "accepted": 2}, got.text
    after = service.rows(request)
    assert after["user_sequence__ad_ids"][0].as_py()[0] == clicked  # the newest click first
    assert after["user_sequence__length"][0].as_py() == min(before["user_sequence__length"][0].as_py() + 1,
                                                            served["settings"].features.sequence_length)
    assert after["user_recent__click_1h"][0].as_py() == before["user_recent__click_1h"][0].as_py() + 1
    assert after["user_recent__impressions_1h"][0].as_py() == before["user_recent__impressions_1h"][0].as_py() + 2
    scored = client.post("/score", json=body).json()
    assert scored["ranked"]  # the service scores with them
    again = client.post("/events", json={"events": events})
    assert again.json()["accepted"] == 0
    assert service.rows(request)["user_recent__click_1h"].to_pylist() == after["user_recent__click_1h"].to_pylist()
    bad = client.post("/events", json={"events": [{"user_id": 1}]})
    assert bad.status_code == 422 and "lack columns" in bad.text


def test_pushed_events_survive_a_restart(served: Any) -> None:
    """POST /events is journaled before the state changes: a new service on the same home (a restart) has the
    pushed click in its behaviour features; a line cut short by a kill is skipped."""
    from components.serving.journal import journal_dir
    from components.serving.service import ScoreRequest, ScoringService

    client = served["client"]
    body = _request(served)
    when = dt.datetime.fromisoformat(body["event_time"]) + dt.timedelta(minutes=5)
    clicked = body["ads"][7]
    event = {"event_time": (when - dt.timedelta(seconds=10)).isoformat(), "request_id": "journal-1",
             "user_id": body["user_id"], "ad_id": clicked, "slot": body["slot"], "position": 1,
             "exposure_index": 1, "click": 1, "conversion": 0}
    assert client.post("/events", json={"events": [event]}).json()["accepted"] == 1
    files = sorted(journal_dir(served["settings"]).glob("date=*.jsonl"))
    assert files and "journal-1" in files[-1].read_text()
    with open(files[-1], "a") as fh:
        fh.write('{"event_time": "2026-')  # a kill in the middle of a write
    restarted = ScoringService(served["settings"]).start(watch=False)
    request = ScoreRequest(user_id=body["user_id"], ads=body["ads"], slot=body["slot"], event_time=when)
    assert restarted.rows(request)["user_sequence__ad_ids"][0].as_py()[0] == clicked
    assert restarted.status()["ready"]

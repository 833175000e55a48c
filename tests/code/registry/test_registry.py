"""The MLflow registry (components/registry/: client.py, run_logging.py, register.py, aliases.py, packaged.py;
flows/cli/registry.py).

One small marketplace is simulated and one small STEM ranker (with a behaviour sequence, so list and
timestamp columns go through the pandas round trip) is trained per module, then registered three times in
one SQLite registry under the module's home: version 1 with passing gates, version 2 with a failed data
gate, version 3 with passing gates. Every promotion test starts from no champion and no history.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.shared_data

TASKS = ("click", "conversion")
WINDOW = (dt.date(2026, 1, 1), dt.date(2026, 1, 4))
SIMULATOR = {"seed": 3, "n_users": 200, "new_users_per_day": 5, "n_initial_ads": 150, "new_ads_per_day": 10,
             "sessions_per_user_day": 2.0, "conversion_base_logit": 0.5}
RANKER = {"arch": "stem", "embedding_dim": 4, "expert_hidden": (16,), "gate_hidden": (8,), "tower_hidden": (8,),
          "num_shared_experts": 1, "experts_per_task": 1, "sequence_encoder": "tim"}
PASS = [{"name": "data", "value": 0.0, "threshold": 0.05, "passed": True, "details": {"rows_in": 10}},
        {"name": "model", "value": None, "threshold": -0.01, "passed": True, "details": {"champion": False}}]
FAIL = [{"name": "data", "value": 0.2, "threshold": 0.05, "passed": False, "details": {"rows_in": 10}},
        {"name": "model", "value": None, "threshold": -0.01, "passed": True, "details": {}}]


def _with_sequences(table: Any, seed: int = 0) -> Any:
    """Add a behaviour sequence (ad ids, their categories, click times before the impression) of 0-5
    clicks per row, every 17th row null: the list columns the training set has (docs/features.md)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(seed)
    n = table.num_rows
    lengths = rng.integers(0, 6, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    picks = rng.integers(0, n, int(offsets[-1]))
    ads = table.column("ad_id").combine_chunks().take(pa.array(picks))
    cats = table.column("ad_profile__sub_category").combine_chunks().take(pa.array(picks))
    owner = np.repeat(np.arange(n), lengths)
    event_us = table.column("event_time").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    times = pa.array(event_us[owner] - rng.integers(60, 3 * 86400, len(owner)) * 1_000_000,
                     pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    mask = pa.array(np.arange(n) % 17 == 0)
    lists = {name: pa.ListArray.from_arrays(pa.array(offsets), values, mask=mask)
             for name, values in (("ad_ids", ads), ("categories", cats), ("click_times", times))}
    for name, arr in lists.items():
        table = table.append_column(f"user_sequence__{name}", arr)
    assert pc.sum(pc.is_null(table["user_sequence__ad_ids"])).as_py() > 0
    return table


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, torch_one_thread: None) -> dict[str, Any]:
    """A saved small ranker (day 1 trains, day 2 early-stops), its train-step summary (the test day 3) and
    the validation day."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    from components.config import load_settings
    from components.training.encoders import window_split
    from components.training.evaluation import evaluate
    from components.sources.simulator import simulate
    from components.training.artefact import load_trained
    from components.training.loop import train_ranker
    from components.training.train_config import TrainConfig
    from models.config import RankerConfig
    from components.experiments.data import simulator_feature_table

    settings = load_settings(environ={}, overrides={
        "home": str(tmp_path_factory.mktemp("registry-sim")), "pipeline": {"shared_data": str(SHARED_DATA)},
        "simulator": SIMULATOR}).resolved()
    table = _with_sequences(simulator_feature_table(simulate(settings, days=3)))
    train, valid, test = window_split(table)
    result = train_ranker(None, train, valid, RankerConfig(**RANKER),
                          TrainConfig(epochs=2, batch_size=256, lr=3e-3, patience=0, log_every=0, device="cpu"))
    assert result.model.spec.sequence is not None  # the sequence columns are features
    model_dir = result.save(tmp_path_factory.mktemp("model") / "2026-01-04")
    report = evaluate(load_trained(model_dir).score(test), test, TASKS, n_boot=50)
    summary = {"end_day": WINDOW[1], "model_dir": str(model_dir), "arch": "stem",
               "rows": {"train": train.num_rows, "valid": valid.num_rows, "test": test.num_rows},
               "training": result.summary(),
               "evaluation": report.to_dict(), "evaluation_text": report.to_text(), "oracle": None,
               "ipw": {"enabled": False}}
    (model_dir / "evaluation.json").write_text(json.dumps(summary, default=str))
    (model_dir / "checkpoints").mkdir()
    (model_dir / "checkpoints" / "checkpoint.pt").write_bytes(b"not part of the logged model")
    return {"model_dir": model_dir, "summary": summary, "valid": valid, "test": test, "result": result,
            "table": table}


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, trained: dict[str, Any]) -> dict[str, Any]:
    """Settings with their own home and three registered versions (pass, fail, pass)."""
    from components.config import load_settings
    from components.registry.register import register_model

    home = tmp_path_factory.mktemp("registry-home")
    settings = load_settings(environ={}, overrides={"home": str(home),
                                                    "pipeline": {"shared_data": str(SHARED_DATA)}}).resolved()
    plot = home / "spectrum.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n")  # any file: plots are logged as given
    import pyarrow.parquet as pq

    training_set = home / "training_set.parquet"
    pq.write_table(trained["table"], training_set)
    common = dict(data_window=WINDOW, feature_views={"ad_profile": "v3", "user_stats": "2026-01-04"})
    versions = [
        register_model(settings, trained["model_dir"], trained["summary"], PASS, [plot],
                       sample_rows=trained["valid"].slice(0, 256), training_set=training_set, **common),
        register_model(settings, trained["model_dir"], trained["summary"], FAIL, **common),
        register_model(settings, trained["model_dir"], trained["summary"], PASS,
                       sample_rows=trained["valid"].slice(0, 64), **common),
    ]
    return {"settings": settings, "versions": versions, "home": home}


@pytest.fixture()
def fresh_aliases(reg: dict[str, Any]) -> Iterator[Any]:
    """No champion, no previous, no champion history (the challenger stays where registration put it)."""
    from components.registry.aliases import HISTORY_TAG, set_or_clear_alias
    from components.registry.client import CHALLENGER, CHAMPION, PREVIOUS, mlflow_client

    settings = reg["settings"]
    name = settings.registry.model_name
    with mlflow_client(settings) as client:
        for alias in (CHAMPION, PREVIOUS):
            set_or_clear_alias(client, name, alias, None)
        client.set_registered_model_alias(name, CHALLENGER, "3")
        if HISTORY_TAG in client.get_registered_model(name).tags:
            client.delete_registered_model_tag(name, HISTORY_TAG)
    yield settings


def _aliases(settings: Any) -> dict[str, int]:
    from components.registry.client import mlflow_client

    with mlflow_client(settings) as client:
        return {a: int(v) for a, v in client.get_registered_model(settings.registry.model_name).aliases.items()}


def _version_tags(settings: Any, version: int) -> dict[str, str]:
    from components.registry.client import mlflow_client

    with mlflow_client(settings) as client:
        return dict(client.get_model_version(settings.registry.model_name, str(version)).tags)


# ----- registration ------------------------------------------------------------------------------------------
def test_register_logs_config_window_revision_metrics_gates_and_artifacts(reg: dict[str, Any],
                                                                          trained: dict[str, Any]) -> None:
    from components.registry.client import mlflow_client

    settings = reg["settings"]
    v1 = reg["versions"][0]
    assert (v1.version, v1.gates_passed, v1.aliases) == (1, True, ("challenger",))
    assert v1.model_uri == "models:/adsrec-ranker/1" and v1.logged_model_uri.startswith("models:/m-")
    tags = _version_tags(settings, 1)
    assert tags["gates_passed"] == "true" and tags["gate.data.passed"] == "true"
    assert tags["run_id"] == v1.run_id and tags["tasks"] == "click,conversion"
    assert (tags["data_window_start"], tags["data_window_end"]) == ("2026-01-01", "2026-01-04")
    with mlflow_client(settings) as client:
        run = client.get_run(v1.run_id)
        exp = client.get_experiment(run.info.experiment_id)
        artifacts = {a.path for a in client.list_artifacts(v1.run_id)}
        artifacts |= {a.path for d in ("config", "plots") for a in client.list_artifacts(v1.run_id, d)}
        epoch_auc = client.get_metric_history(v1.run_id, "epoch/valid_auc/click")
    assert exp.name == settings.registry.experiment
    # artifacts under <home>/mlflow/artifacts, not ./mlruns of the working directory
    assert exp.artifact_location == (reg["home"] / "mlflow" / "artifacts").resolve().as_uri()
    assert any((reg["home"] / "mlflow" / "artifacts").rglob("model.pt"))
    assert not any(trained["model_dir"].parent.rglob("mlruns"))

    p, m, t = run.data.params, run.data.metrics, run.data.tags
    assert p["ranker.arch"] == "stem" and p["train.epochs"] == "2" and p["ranker.expert_hidden"] == "[16]"
    assert p["settings.registry.model_name"] == "adsrec-ranker" and "settings.gates.auc_tolerance" in p
    assert all(len(v) <= 6000 for v in p.values())
    overall = trained["summary"]["evaluation"]["overall"]
    for task in TASKS:
        for name in ("auc", "gauc", "logloss", "calibration"):
            assert m[f"{task}/{name}"] == pytest.approx(overall[task][name])
    assert m["training/samples_per_s"] > 0 and m["gate/data"] == 0.0 and m["gate/data/passed"] == 1.0
    assert "gate/model" not in m  # a gate without a value logs only its verdict
    assert [x.step for x in epoch_auc] == [1, 2]
    assert t["code_revision"] == "unknown" or len(t["code_revision"]) == 40
    assert t["code_dirty"] in ("true", "false", "unknown")
    assert json.loads(t["feature_views"]) == {"ad_profile": "v3", "user_stats": "2026-01-04"}
    assert t["gates_passed"] == "true" and t["data_window"] == "2026-01-01..2026-01-04"
    assert {"gates.json", "evaluation.json", "evaluation.txt", "feature_views.json", "scoring_sample.parquet",
            "scoring_sample_scores.parquet", "config/settings.json", "config/ranker_config.json",
            "plots/spectrum.png", "plots/training_curves.png"} <= artifacts


def test_logged_model_is_a_pinned_pyfunc_without_checkpoints(reg: dict[str, Any]) -> None:
    import mlflow

    from components.registry.client import mlflow_client

    settings = reg["settings"]
    with mlflow_client(settings) as _:
        local = Path(mlflow.artifacts.download_artifacts("models:/adsrec-ranker/1"))
    mlmodel = (local / "MLmodel").read_text()
    assert "python_function" in mlmodel and "pytorch" not in mlmodel.split("flavors:")[1].split("\n")[1]
    reqs = (local / "requirements.txt").read_text().split()
    assert "torch==2.13.0" in reqs and any(r.startswith("pyarrow==") for r in reqs)
    files = {p.name for p in local.rglob("*") if p.is_file()}
    assert {"model.pt", "encoders.json", "spec.json", "ranker_config.json"} <= files
    assert "checkpoint.pt" not in files


def test_failed_gate_registers_without_challenger(reg: dict[str, Any]) -> None:
    settings = reg["settings"]
    v2 = reg["versions"][1]
    assert (v2.version, v2.gates_passed, v2.aliases) == (2, False, ())
    tags = _version_tags(settings, 2)
    assert tags["gates_passed"] == "false" and tags["gate.data.passed"] == "false"
    assert tags["gate.model.passed"] == "true" and tags["failed_gates"] == "data"
    # the challenger moved from 1 to the newest passing version, never to 2
    assert reg["versions"][2].aliases == ("challenger",)
    assert _aliases(settings).get("challenger") == 3


def test_no_gates_means_not_passed_and_gates_are_checked(reg: dict[str, Any], trained: dict[str, Any]) -> None:
    from components.registry.register import normalise_gates, register_model

    settings = reg["settings"].model_copy(deep=True)
    settings.registry.model_name = "adsrec-ranker-nogates"
    got = register_model(settings, trained["model_dir"], trained["summary"], [], data_window=WINDOW)
    assert (got.version, got.gates_passed, got.aliases) == (1, False, ())
    with pytest.raises(ValueError, match="more than once"):
        normalise_gates(PASS + PASS[:1])
    with pytest.raises(ValueError, match="true or false"):
        normalise_gates([{"name": "data", "passed": "yes"}])
    with pytest.raises(ValueError, match="data_window"):
        register_model(settings, trained["model_dir"], trained["summary"], PASS,
                       data_window=(WINDOW[1], WINDOW[0]))
    with pytest.raises(FileNotFoundError, match="encoders.json"):
        register_model(settings, trained["model_dir"].parent, trained["summary"], PASS, data_window=WINDOW)


# ----- promotion ---------------------------------------------------------------------------------------------
def test_promote_refuses_a_failed_version_unless_forced_with_a_reason(fresh_aliases: Any) -> None:
    from components.registry.aliases import promote
    from components.registry.client import PromotionError, RegistryError

    settings = fresh_aliases
    with pytest.raises(PromotionError, match=r"failed its gates \(data\).*--force"):
        promote(settings, 2)
    with pytest.raises(PromotionError, match="non-empty --reason"):
        promote(settings, 2, force=True, reason="  ")
    with pytest.raises(RegistryError, match="no version 99"):
        promote(settings, 99)
    assert "champion" not in _aliases(settings)

    out = promote(settings, 2, force=True, reason="data gate tripped by a known late partition")
    assert out["forced"] and out["champion"] == 2 and out["previous"] is None
    assert _aliases(settings)["champion"] == 2
    tags = _version_tags(settings, 2)
    assert tags["forced_promotion_reason"] == "data gate tripped by a known late partition"
    assert tags["promoted_by"] and dt.datetime.fromisoformat(tags["promoted_at"]).tzinfo is not None


def test_promote_moves_previous_and_rollback_walks_the_history(fresh_aliases: Any) -> None:
    from components.registry.aliases import HISTORY_TAG, promote, rollback
    from components.registry.client import RegistryError, mlflow_client

    settings = fresh_aliases
    with pytest.raises(RegistryError, match="no champion"):
        rollback(settings)
    assert promote(settings, 1)["previous"] is None
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(settings)
    promote(settings, 3)
    assert _aliases(settings) == {"champion": 3, "previous": 1}  # challenger 3 was promoted: alias gone
    assert promote(settings, 3)["changed"] is False
    promote(settings, 2, force=True, reason="test")
    assert _aliases(settings) == {"champion": 2, "previous": 3}

    back = rollback(settings)
    assert (back["champion"], back["previous"], back["rolled_back"]) == (3, 1, 2)
    assert _aliases(settings) == {"champion": 3, "previous": 1}
    assert "rolled_back_at" in _version_tags(settings, 2)
    back = rollback(settings)
    assert (back["champion"], back["previous"]) == (1, None)
    assert _aliases(settings) == {"champion": 1}
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(settings)
    with mlflow_client(settings) as client:
        history = json.loads(client.get_registered_model("adsrec-ranker").tags[HISTORY_TAG])
    assert [h["version"] for h in history] == [1]


def test_champion_info_and_auto_promote(fresh_aliases: Any, trained: dict[str, Any]) -> None:
    from components.registry.aliases import champion, list_versions, maybe_auto_promote, promote

    settings = fresh_aliases
    assert champion(settings) is None
    v1, v2, v3 = (v for v in sorted(reg_versions(settings), key=lambda r: r.version))
    assert maybe_auto_promote(settings, v2) is None  # failed gates: never
    assert maybe_auto_promote(settings, v1)["champion"] == 1  # default if_no_champion, none yet
    assert maybe_auto_promote(settings, v3) is None  # there is a champion now
    always = settings.model_copy(deep=True)
    always.registry.auto_promote = "always"
    assert maybe_auto_promote(always, v3)["champion"] == 3
    promote(settings, 1)

    info = champion(settings)
    assert info is not None and info.version == 1 and info.aliases == ("champion",)
    assert info.gates_passed and info.data_window == WINDOW and info.tasks == TASKS
    assert [g["name"] for g in info.gates] == ["data", "model"] and info.gates[0]["details"] == {"rows_in": 10}
    per_task = info.task_metrics()
    overall = trained["summary"]["evaluation"]["overall"]
    assert set(per_task) == set(TASKS)
    assert per_task["click"]["auc"] == pytest.approx(overall["click"]["auc"])
    assert per_task["conversion"]["calibration"] == pytest.approx(overall["conversion"]["calibration"])

    listed = list_versions(settings)
    assert [v.version for v in listed] == [3, 2, 1]
    # 3 lost "challenger" when auto_promote made it champion; then 1 came back
    assert [v.aliases for v in listed] == [("previous",), (), ("champion",)]
    assert listed[1].failed_gates == ("data",) and not listed[1].gates_passed
    assert {g["name"]: g["passed"] for g in listed[1].gates} == {"data": False, "model": True}


def reg_versions(settings: Any) -> list[Any]:
    """RegisteredVersion-like records of versions 1-3 (for maybe_auto_promote)."""
    from components.registry.aliases import list_versions
    from components.registry.register import RegisteredVersion

    return [RegisteredVersion(v.name, v.version, v.run_id or "", v.model_uri, "", v.gates_passed, v.aliases, "")
            for v in list_versions(settings)]


# ----- loading by alias --------------------------------------------------------------------------------------
FRESH_PROCESS = r"""
import json, sys
import mlflow, pandas as pd
client = mlflow.MlflowClient()
mv = client.get_model_version_by_alias("adsrec-ranker", "champion")
sample = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="scoring_sample.parquet")
expected = pd.read_parquet(mlflow.artifacts.download_artifacts(
    run_id=mv.run_id, artifact_path="scoring_sample_scores.parquet"))
model = mlflow.pyfunc.load_model("models:/adsrec-ranker@champion")
got = model.predict(pd.read_parquet(sample))
print(json.dumps({
    "version": mv.version, "columns": list(got.columns), "rows": len(got),
    "max_abs_diff": float((got[expected.columns] - expected).abs().to_numpy().max()),
    "spread": float(got.to_numpy().std()),
    "loaded": sorted(m for m in ("prefect", "feast", "flows", "components.training.train_day",
                                 "components.training.training_set", "components.registry.client",
                                 "components.registry.register", "components.registry.run_logging",
                                 "components.registry.aliases", "sentence_transformers") if m in sys.modules),
}))
"""


def test_fresh_process_loads_the_champion_by_alias_and_reproduces_the_logged_scores(
        fresh_aliases: Any, tmp_path: Path) -> None:
    from components.registry.aliases import promote

    settings = fresh_aliases
    promote(settings, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADSREC_", "MLFLOW_", "PYTHONPATH"))}
    env.update(MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri, MLFLOW_DISABLE_TELEMETRY="true",
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert int(out["version"]) == 1 and out["columns"] == ["p_click", "p_conversion"] and out["rows"] == 256
    assert out["max_abs_diff"] <= 1e-6
    assert out["spread"] > 1e-4  # the scores differ between rows: the comparison is not trivially equal
    assert out["loaded"] == [], f"the pyfunc pulled in training/flow code: {out['loaded']}"
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


SELF_DESCRIBED = r"""
import json, sys
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in type(f).__module__]
sys.path = [p for p in sys.path if p and (p.rstrip("/") not in ("/work/main", sys.argv[1]) or "site-packages" in p)]
import mlflow
from mlflow.models import Model
model = mlflow.pyfunc.load_model("models:/adsrec-ranker/1")
import components
example = Model.load("models:/adsrec-ranker/1").load_input_example()
got = model.predict(example)
print(json.dumps({"components": components.__file__, "rows": len(example), "scores": got.to_dict("list")}))
"""


def test_the_registered_model_describes_itself_and_loads_in_a_process_without_the_repository(
        reg: dict[str, Any], trained: dict[str, Any], tmp_path: Path) -> None:
    """Version 1 carries an input signature, an input example of the scoring sample's first rows, its own
    code (a process without this repository or the installed package on its path loads and scores it),
    and the training set as the run's input dataset."""
    import mlflow

    from components.config import PROJECT_ROOT
    from components.registry.packaged import PackagedRanker
    from components.registry.signature import EXAMPLE_ROWS

    from components.registry.client import mlflow_client

    settings = reg["settings"]
    with mlflow_client(settings) as client:  # the process URI is left alone
        inputs = mlflow.models.get_model_info("models:/adsrec-ranker/1").signature.inputs
        (dataset,) = [d.dataset for d in client.get_run(reg["versions"][0].run_id).inputs.dataset_inputs]
        assert not client.get_run(reg["versions"][1].run_id).inputs.dataset_inputs
    assert dataset.name == "training_set" and len(dataset.digest) == 16 and "training_set.parquet" in dataset.source
    assert inputs is not None and "user_id" in inputs.required_input_names()
    assert {"event_time", "user_sequence__ad_ids", "user_sequence__click_times"} <= set(
        inputs.optional_input_names())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADSREC_", "MLFLOW_", "PYTHONPATH"))}
    env.update(MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri, MLFLOW_DISABLE_TELEMETRY="true",
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    proc = subprocess.run([sys.executable, "-c", SELF_DESCRIBED, str(PROJECT_ROOT)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "/work/" not in out["components"] and "/code/components/" in out["components"], out["components"]
    assert out["rows"] == EXAMPLE_ROWS
    ref = PackagedRanker().load(trained["model_dir"]).score_table(trained["valid"].slice(0, EXAMPLE_ROWS))
    for col in ref.columns:
        np.testing.assert_allclose(out["scores"][col], ref[col], atol=1e-6)
    assert np.std(out["scores"]["p_click"]) > 1e-5  # the rows score differently: not trivially equal


def test_load_champion_in_process_scores_tables_and_frames(fresh_aliases: Any, trained: dict[str, Any]) -> None:
    from components.registry.aliases import load_champion, promote
    from components.registry.client import RegistryError
    from components.registry.packaged import PackagedRanker

    settings = fresh_aliases
    with pytest.raises(RegistryError, match="promote one"):
        load_champion(settings)
    promote(settings, 3)
    model = load_champion(settings)
    rows = trained["valid"].slice(0, 50)
    by_frame = model.predict(rows.to_pandas())
    ranker = model.unwrap_python_model()
    assert isinstance(ranker, PackagedRanker) and ranker.tasks == TASKS
    by_table = ranker.score_table(rows)
    by_dicts = model.predict(rows.to_pylist())
    direct = trained["result"]
    from components.training.device import predict

    ref = predict(direct.model, direct.encoders.encode(rows, with_labels=False), TASKS)
    for task in TASKS:
        np.testing.assert_allclose(by_frame[f"p_{task}"], ref[task], atol=1e-6)
        np.testing.assert_allclose(by_table[f"p_{task}"], ref[task], atol=1e-6)
        np.testing.assert_allclose(by_dicts[f"p_{task}"], ref[task], atol=1e-6)
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="user_id"):  # a required input of the signature
        model.predict(rows.drop_columns(["user_id"]).to_pandas())
    no_sequence = rows.drop_columns(["event_time", "user_sequence__click_times", "user_sequence__categories"])
    assert len(model.predict(no_sequence.to_pandas())) == 50  # optional inputs may be left out
    with pytest.raises(RegistryError, match="alias 'staging'"):
        load_champion(settings, alias="staging")


def test_champion_on_the_test_day_with_the_paired_difference_interval(fresh_aliases: Any,
                                                                      trained: dict[str, Any]) -> None:
    """The champion scores the test day; the new model's AUC minus the champion's gets a paired interval
    over users (the same resamples score both), which the model gate reads."""
    from components.registry.aliases import promote
    from components.registry.gate_and_register import champion_on
    from components.training.artefact import load_trained
    from components.training.metrics import auc

    settings = fresh_aliases
    assert champion_on(settings, trained["test"], TASKS) is None  # no champion yet
    promote(settings, 1)
    test = trained["test"]
    same = load_trained(trained["model_dir"]).score(test)  # the very model the champion is
    wrong = {t: 1.0 - test.column(t).to_numpy().astype(float) for t in TASKS}  # every pair the wrong way round
    assert set(champion_on(settings, test, TASKS)["auc_difference"]) == set()  # no new scores: no difference
    tie = champion_on(settings, test, TASKS, same)
    worse = champion_on(settings, test, TASKS, wrong)
    for task in TASKS:
        labels = test.column(task).to_numpy()
        champ_auc = tie["metrics"][task]["auc"]
        assert champ_auc == pytest.approx(auc(same[task], labels), abs=1e-6)
        assert tie["auc_difference"][task]["point"] == pytest.approx(0.0, abs=1e-6)
        assert tie["auc_difference"][task]["low"] == pytest.approx(0.0, abs=1e-6)
        assert tie["auc_difference"][task]["high"] == pytest.approx(0.0, abs=1e-6)
        d = worse["auc_difference"][task]
        assert d["point"] == pytest.approx(-champ_auc, abs=1e-6) and d["low"] <= d["point"] <= d["high"] < 0


def test_a_champion_whose_code_no_longer_imports_is_a_registry_error(fresh_aliases: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A version registered before the stage folders names ``components.packaged`` in its model code: loading
    it says so (and the daily run's comparison skips it) instead of a bare ModuleNotFoundError."""
    import mlflow.pyfunc

    from components.registry.aliases import load_champion, promote
    from components.registry.client import RegistryError

    settings = fresh_aliases
    promote(settings, 3)

    def old_layout(uri: str, *args: Any, **kwargs: Any) -> Any:
        raise ModuleNotFoundError("No module named 'components.packaged'", name="components.packaged")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", old_layout)
    with pytest.raises(RegistryError, match=r"version 3 .*imports components\.packaged.*adsrec promote"):
        load_champion(settings)


def test_registry_calls_leave_the_process_mlflow_uri_alone(reg: dict[str, Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from components.registry.aliases import list_versions

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////nonexistent/elsewhere.db")
    assert [v.version for v in list_versions(reg["settings"])] == [3, 2, 1]
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////nonexistent/elsewhere.db"
    assert mlflow.get_tracking_uri() == "sqlite:////nonexistent/elsewhere.db"
    assert "MLFLOW_REGISTRY_URI" not in os.environ


def test_empty_home_has_no_versions_and_creates_no_store(tmp_path: Path) -> None:
    from components.config import load_settings
    from components.registry.aliases import champion, list_versions, promote
    from components.registry.client import RegistryError

    settings = load_settings(environ={}, overrides={"home": str(tmp_path / "empty")}).resolved()
    assert list_versions(settings) == [] and champion(settings) is None
    with pytest.raises(RegistryError, match="nothing registered yet"):
        promote(settings, 1)
    assert not (tmp_path / "empty").exists()


# ----- gates and registration of the daily run ----------------------------------------------------------------
def test_assess_and_register_gates_registers_and_is_idempotent(trained: dict[str, Any], tmp_path: Path) -> None:
    """The daily run's last step on a home of its own: no ingest records, so the data gate fails; the
    version is registered without an alias and nothing is promoted; a re-run finds it."""
    import pyarrow.parquet as pq

    from components.config import load_settings
    from components.registry.aliases import list_versions
    from components.registry.gate_and_register import assess_and_register

    settings = load_settings(environ={}, overrides={"home": str(tmp_path / "home"),
                                                    "pipeline": {"shared_data": str(SHARED_DATA)}}).resolved()
    path = tmp_path / "training" / "2026-01-04" / "train.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(trained["table"], path)
    days = [WINDOW[0] + dt.timedelta(days=i) for i in range(4)]
    out = assess_and_register(settings, WINDOW[1], trained["summary"], path, days)
    assert not out["skipped"] and out["champion"] is None and out["promoted"] is None
    assert [g["name"] for g in out["gates"]] == ["data", "collapse", "entanglement", "model", "baseline"]
    baseline = out["gates"][-1]  # the trivial baselines of the same window, next to the model's AUC
    assert set(out["baselines"]) == set(TASKS) and "best baseline" in baseline["reason"]
    assert all(out["baselines"][t]["best"] in ("per_ad", "per_user", "popularity") for t in TASKS)
    assert not out["gates_passed"] and not out["gates"][0]["passed"]  # no ingest records for the window
    assert out["registered"]["version"] == 1 and out["registered"]["aliases"] == []
    assert [Path(p).name for p in out["plots"]] == ["collapse_spectra.png", "entanglement_distances.png"]
    assert all(Path(p).is_file() for p in out["plots"])
    assert set(out["analysis_seconds"]) == {"collapse", "entanglement"}
    assert set(out["metrics"]) == set(TASKS)
    saved = json.loads((trained["model_dir"] / "analysis" / "gates.json").read_text())
    assert saved["passed"] is False and [g["name"] for g in saved["gates"]] == [g["name"] for g in out["gates"]]
    again = assess_and_register(settings, WINDOW[1], trained["summary"], path, days)
    assert again["skipped"] and again["registered"]["version"] == 1
    assert [v.version for v in list_versions(settings)] == [1]


# ----- the command line --------------------------------------------------------------------------------------
@pytest.fixture()
def cli_env(fresh_aliases: Any) -> Iterator[Any]:
    saved = dict(os.environ)
    os.environ["ADSREC_HOME"] = str(fresh_aliases.home)
    os.environ["ADSREC_PIPELINE__SHARED_DATA"] = str(SHARED_DATA)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield fresh_aliases
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_cli_models_promote_rollback(cli_env: Any) -> None:
    from typer.testing import CliRunner

    from flows.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1].split()[:5] == ["version", "aliases", "gates", "click", "AUC"]
    assert lines[2].startswith("3 ") and "challenger" in lines[2] and "passed" in lines[2]
    assert "FAILED: data" in lines[3] and "2026-01-01..2026-01-04" in lines[3]

    res = runner.invoke(app, ["promote", "--version", "2"])
    assert res.exit_code == 1 and "failed its gates (data)" in res.output
    res = runner.invoke(app, ["promote", "--version", "2", "--force"])
    assert res.exit_code == 1 and "--reason" in res.output
    res = runner.invoke(app, ["promote", "--version", "1"])
    assert res.exit_code == 0 and "champion is now version 1" in res.output, res.output
    res = runner.invoke(app, ["promote", "--version", "2", "--force", "--reason", "hotfix"])
    assert res.exit_code == 0 and "FORCED: hotfix" in res.output and "previous: version 1" in res.output
    res = runner.invoke(app, ["models"])
    assert "champion" in res.output.splitlines()[3] and "previous" in res.output.splitlines()[4]
    res = runner.invoke(app, ["rollback"])
    assert res.exit_code == 0 and "champion is now version 1" in res.output, res.output
    res = runner.invoke(app, ["rollback"])
    assert res.exit_code == 1 and "nothing to roll back to" in res.output
    assert _aliases(cli_env) == {"champion": 1, "challenger": 3}


def test_artifact_location_local_folder_or_the_servers_store(tmp_path: Path) -> None:
    from components.config import load_settings
    from components.registry.client import artifact_root_uri

    def settings(**registry: str) -> Any:
        return load_settings(environ={}, overrides={"home": str(tmp_path), "registry": registry}).resolved()

    assert artifact_root_uri(settings()) == (tmp_path / "mlflow" / "artifacts").resolve().as_uri()
    assert artifact_root_uri(settings(artifact_location="rel/arts")) == (tmp_path / "rel/arts").resolve().as_uri()
    assert artifact_root_uri(settings(tracking_uri="http://127.0.0.1:5000")) is None  # the server decides
    assert artifact_root_uri(settings(tracking_uri="http://127.0.0.1:5000",
                                      artifact_location="s3://bucket/adsrec")) == "s3://bucket/adsrec"

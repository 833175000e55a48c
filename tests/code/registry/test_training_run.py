"""The MLflow run that spans training (components/registry/training_run.py): opened when training starts,
epoch curves logged as they happen, re-opened and ended by the registration; FAILED when training fails;
never a reason for training to fail.

One small marketplace is simulated per module; a small STEM ranker is trained inside a training run and
registered into it (the registration's other contents are tested in test_registry.py), then served by
``mlflow models serve`` (docs/serving.md).
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.code.registry.test_registry import PASS, RANKER, SIMULATOR, WINDOW
from tests.conftest import SHARED_DATA

EPOCHS = 3


def _settings(home: Path, **registry: Any) -> Any:
    from components.config import load_settings

    return load_settings(environ={}, overrides={"home": str(home), "pipeline": {"shared_data": str(SHARED_DATA)},
                                                "simulator": SIMULATOR, "registry": registry}).resolved()


def _train(table: Any, callback: Any) -> Any:
    from components.training.encoders import window_split
    from components.training.loop import train_ranker
    from components.training.train_config import TrainConfig
    from models.config import RankerConfig

    train, valid, _ = window_split(table)
    return train_ranker(None, train, valid, RankerConfig(**RANKER),
                        TrainConfig(epochs=EPOCHS, batch_size=256, lr=3e-3, patience=0, log_every=4, device="cpu"),
                        callback=callback)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, torch_one_thread: None) -> dict[str, Any]:
    """Settings with their own home, the simulated feature table and its parquet file (the training set)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    import pyarrow.parquet as pq

    from components.experiments.data import simulator_feature_table
    from components.sources.simulator import simulate

    home = tmp_path_factory.mktemp("training-run")
    settings = _settings(home)
    table = simulator_feature_table(simulate(settings, days=3))
    path = home / "training_set.parquet"
    pq.write_table(table, path)
    return {"settings": settings, "table": table, "path": path, "home": home}


@pytest.fixture(scope="module")
def spanned(data: dict[str, Any]) -> dict[str, Any]:
    """A model trained inside its training run, the run as it was before registration, and the version
    registered into it."""
    from components.registry.client import mlflow_client
    from components.registry.register import register_model
    from components.registry.training_run import tracked_training

    settings, end = data["settings"], WINDOW[1]
    with tracked_training(settings, end, data["path"]) as run:
        result = _train(data["table"], run.listener())
    with mlflow_client(settings) as client:
        during = client.get_run(run.run_id)
        live = {key: client.get_metric_history(run.run_id, key)
                for key in ("epoch/train_loss", "step/loss", "epoch/valid_logloss/click")}
    model_dir = result.save(data["home"] / "model" / end.isoformat())
    summary = {"end_day": end, "model_dir": str(model_dir), "arch": "stem", "training": result.summary(),
               "mlflow_run": run.to_dict()}
    version = register_model(settings, model_dir, summary, PASS, data_window=WINDOW, training_set=data["path"],
                             sample_rows=data["table"].slice(0, 32), training_run=summary["mlflow_run"])
    return {"run": run, "during": during, "live": live, "version": version}


@pytest.mark.shared_data
def test_the_run_spans_training_and_registration(data: dict[str, Any], spanned: dict[str, Any]) -> None:
    from components.registry.client import mlflow_client

    settings, run, during, live = data["settings"], spanned["run"], spanned["during"], spanned["live"]
    assert run.live and run.epochs_logged == EPOCHS
    # Logged as the epochs ended: in the run before anything was registered, and the run was still open.
    assert during.info.status == "RUNNING" and during.data.tags["registered"] == "false"
    assert sorted(m.step for m in live["epoch/train_loss"]) == list(range(1, EPOCHS + 1))
    assert during.info.start_time <= min(m.timestamp for m in live["epoch/train_loss"])
    assert live["step/loss"]  # every log_every steps
    assert len(live["epoch/valid_logloss/click"]) == EPOCHS
    [dataset] = during.inputs.dataset_inputs
    assert dataset.dataset.name == "training_set" and dataset.tags[0].value == "training"

    version = spanned["version"]
    assert version.run_id == run.run_id
    with mlflow_client(settings) as client:
        after = client.get_run(run.run_id)
        mv = client.get_model_version(version.name, str(version.version))
        assert mv.run_id == run.run_id
        assert after.info.status == "FINISHED" and after.data.tags["registered"] == "true"
        assert after.info.end_time >= mv.creation_timestamp >= max(m.timestamp for m in live["epoch/train_loss"])
        for key in ("epoch/train_loss", "epoch/valid_auc/click", "epoch/samples_per_s"):
            steps = [m.step for m in client.get_metric_history(run.run_id, key)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, steps)  # one point per epoch, no duplicate
        assert len(after.inputs.dataset_inputs) == 1  # the training set, logged once
        assert after.data.params["ranker.arch"] == "stem"  # the registration's contents went into this run
        runs = client.search_runs([version.experiment_id])
        assert [r.info.run_id for r in runs] == [run.run_id]  # no second run


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.shared_data
def test_mlflow_models_serve_scores_the_input_example_as_logged(data: dict[str, Any], spanned: dict[str, Any],
                                                                tmp_path: Path) -> None:
    """docs/serving.md, "`mlflow models serve`": the champion served by MLflow's scoring server answers the
    logged input example with the scores the registering process logged."""
    import contextlib
    import json
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    import mlflow
    import numpy as np
    import pandas as pd

    from components.registry.aliases import promote
    from components.registry.client import mlflow_client

    settings, version = data["settings"], spanned["version"]
    promote(settings, version.version, reason="serve test")
    with mlflow_client(settings):
        example = Path(mlflow.artifacts.download_artifacts(f"{version.model_uri}/serving_input_example.json",
                                                           dst_path=str(tmp_path)))
        logged = pd.read_parquet(mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path="scoring_sample_scores.parquet", dst_path=str(tmp_path)))
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # the server execs uvicorn from PATH: the venv's
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                               f"models:/{version.name}@champion", "--env-manager", "local", "-p", str(port),
                               "--host", "127.0.0.1"], env=env, cwd=tmp_path, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # a readiness wait generous for a loaded machine (ready in ~10 s on 2 cores)
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if urllib.request.urlopen(f"{url}/ping", timeout=2).status == 200:
                    break
            except OSError:
                import time

                time.sleep(0.5)
        request = urllib.request.Request(f"{url}/invocations", data=example.read_bytes(),
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
    finally:  # the server and uvicorn under it, always
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    got = pd.DataFrame(answer["predictions"])
    assert list(got.columns) == ["p_click", "p_conversion"] and len(got) == 5
    np.testing.assert_allclose(got.to_numpy(), logged[got.columns].iloc[:len(got)].to_numpy(), atol=1e-6)


@pytest.mark.shared_data
def test_a_failed_training_ends_its_run_failed_with_the_epochs_it_logged(data: dict[str, Any]) -> None:
    from components.registry.client import mlflow_client
    from components.registry.training_run import tracked_training

    settings = _settings(data["home"] / "failing")

    def stop_at_second_epoch(event: dict[str, Any]) -> None:
        if event["event"] == "epoch" and event["epoch"] == 2:
            raise RuntimeError("out of disk")

    with pytest.raises(RuntimeError, match="out of disk"):
        with tracked_training(settings, WINDOW[1], data["path"]) as run:
            _train(data["table"], run.listener(stop_at_second_epoch))
    with mlflow_client(settings) as client:
        failed = client.get_run(run.run_id)
        assert failed.info.status == "FAILED" and failed.info.end_time is not None
        assert failed.data.tags["last_failure"] == "training: RuntimeError: out of disk"
        assert failed.data.tags["registered"] == "false"
        assert [m.step for m in client.get_metric_history(run.run_id, "epoch/train_loss")] == [1]


def test_a_logging_error_is_one_warning_and_training_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    from components.registry.training_run import TrainingRun

    class BrokenStore:
        calls = 0

        def log_batch(self, run_id: str, metrics: list[Any]) -> None:
            BrokenStore.calls += 1
            raise ConnectionError("tracking server unreachable")

    run = TrainingRun("r1", "0", BrokenStore())
    seen: list[int] = []
    callback = run.listener(lambda e: seen.append(e["epoch"]))
    with caplog.at_level(logging.WARNING, logger="components.registry.training_run"):
        for epoch in (1, 2, 3):
            callback({"event": "epoch", "epoch": epoch, "train_loss": 0.5, "valid_auc": {"click": 0.6}})
    assert seen == [1, 2, 3]  # the trainer's own progress still heard every epoch
    assert BrokenStore.calls == 1 and not run.live and run.epochs_logged == 0
    assert len([r for r in caplog.records if "tracking server unreachable" in r.getMessage()]) == 1
    assert run.to_dict() == {"run_id": "r1", "experiment_id": "0", "epochs_logged": 0, "live": False}


def test_no_run_without_the_registry(tmp_path: Path) -> None:
    from components.registry.training_run import tracked_training

    settings = _settings(tmp_path, enabled=False)
    with tracked_training(settings, dt.date(2026, 1, 4), tmp_path / "absent.parquet") as run:
        assert run is None
    assert not (settings.mlflow_dir / "mlflow.db").exists()

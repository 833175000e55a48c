"""The stages of the scale map (bench/scale.py), each run in a fresh child process.

``python bench/scale_stages.py STAGE STATE_JSON`` imports what the stage needs, then times only the
stage's own call (imports are not timed) and writes ``{"seconds": ..., "rss_before_mb": ..., ...}`` to
the JSON path in the state's ``out``. The parent reads the child's peak RSS from ``wait4``. A stage that
produces something later stages need (the training set's path, the train step's result) writes it
into ``<home>/scale-state/``.

Every stage runs the project's own code on the files source: ``components.steps`` for the day steps,
the training set, training and evaluation; ``components.registry.gate_and_register`` (gates + MLflow);
``components.serving.online_store.materialize_online``; ``components.serving.service.ScoringService``.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SERVE_REQUESTS = 200
SERVE_CANDIDATES = 100


def rss_mb() -> float:
    """This process's resident set now (VmRSS), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def settings_of(state: dict[str, Any]):
    from components.config import load_settings

    train = {"epochs": state["epochs"], "patience": 0, "batch_size": 2048}  # the daily default batch
    overrides = {"home": state["home"], "training": {"train": train},
                 "registry": {"auto_promote": "never"}}
    for section, values in (state.get("overrides") or {}).items():  # --override: e.g. a tiny test's
        overrides[section] = {**overrides.get(section, {}), **values}
    return load_settings(state["config"], overrides=overrides, environ={}).resolved()


def days_of(state: dict[str, Any]) -> list[dt.date]:
    first = dt.date.fromisoformat(state["first_day"])
    return [first + dt.timedelta(days=i) for i in range(state["days"])]


def _keep(settings: Any, name: str, value: dict[str, Any]) -> None:
    folder = settings.home / "scale-state"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(value, default=str))


def _kept(settings: Any, name: str) -> dict[str, Any]:
    path = settings.home / "scale-state" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the stage that writes it did not finish")
    return json.loads(path.read_text())


def day_step(step: str):
    """A stage that runs one of components.steps' day steps over every day of the window."""
    def run(settings: Any, days: list[dt.date]) -> dict[str, Any]:
        from components import steps

        fn = {"deliver": steps.deliver_day, "ingest": steps.ingest, "features": steps.features,
              "representations": steps.representations}[step]
        per_day, parts = [], {}
        for d in days:
            out, seconds = _timed(fn, settings, d, force=True)
            per_day.append(seconds)
            for part, s in (out.get("stage_seconds") or {}).items():  # representations' own breakdown
                parts[part] = round(parts.get(part, 0.0) + s, 2)
        return {"per_day_s": per_day, **({"parts_s": parts} if parts else {})}
    return run


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - t0, 3)


def interest(settings: Any, days: list[dt.date]) -> dict[str, Any]:
    """The user x category interest views alone (they are also part of ``features``): for each day, the
    view's query (components/store/interest.py) over the look-back's impressions and the latest ads,
    written to a scratch parquet file."""
    import tempfile

    from components.store.features import lookback_days
    from components.store.interest import interest_query
    from components.store.sql import connect, partition_globs, sql_list, sql_str, sql_ts

    cfg, rows = settings.features, 0
    windows = sorted(set(cfg.rolling_windows_days))
    built_at = dt.datetime.now(dt.timezone.utc)
    with tempfile.TemporaryDirectory(dir=settings.home) as tmp:
        for day in days:
            day_end = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
            con = connect()
            imp = partition_globs(settings.offline_dir, "impressions", day - dt.timedelta(days=lookback_days(settings)), day)
            ads = partition_globs(settings.offline_dir, "ads", None, day)
            con.execute(f"CREATE VIEW imp AS SELECT * FROM read_parquet({sql_list(imp)}, union_by_name = true, "
                        "hive_partitioning = false)")
            con.execute(f"CREATE VIEW latest_ads AS SELECT * FROM read_parquet({sql_list(ads)}, union_by_name = true, "
                        f"hive_partitioning = false) WHERE created_at < {sql_ts(day_end)} "
                        "QUALIFY row_number() OVER (PARTITION BY ad_id ORDER BY created_at DESC) = 1")
            query = interest_query("category", ["click", "conversion"], windows, day_end, cfg.rate_prior_strength,
                                   built_at)
            target = Path(tmp) / f"{day}.parquet"
            con.execute(f"COPY ({query}) TO {sql_str(target)} (FORMAT parquet)")
            rows += con.execute(f"SELECT count(*) FROM read_parquet({sql_str(target)})").fetchone()[0]
            con.close()
    return {"interest_rows": rows}


def training_set(settings: Any, days: list[dt.date]) -> dict[str, Any]:
    from components import steps

    built = steps.training_set(settings, days[-1], len(days))
    _keep(settings, "training_set", built)
    return {"rows": built["meta"].get("rows") if isinstance(built.get("meta"), dict) else None}


def _split(settings: Any):
    from components.training.encoders import read_training_set, window_split

    table = read_training_set(_kept(settings, "training_set")["path"])
    return window_split(table, settings.training.valid_days, settings.training.test_days)


def encode(settings: Any, days: list[dt.date]) -> dict[str, Any]:
    """Fit the encoders on the training days and encode the training and validation rows (what the
    trainer does before its first epoch), read included."""
    from components.training.encoders import FeatureEncoders

    train, valid, _ = _split(settings)
    encoders = FeatureEncoders.fit(train, sequence_category_column=settings.features.sequence_category_column)
    batch = encoders.encode(train, with_labels=True)
    encoders.encode(valid, with_labels=True)
    nbytes = sum(getattr(v, "nbytes", 0) for v in batch.values())
    return {"train_rows": train.num_rows, "valid_rows": valid.num_rows, "encoded_train_mb": round(nbytes / 2**20, 1)}


def _train_sample(settings: Any, cap: int) -> tuple[str, float]:
    """The training set, or a uniform sample of ``cap`` of its rows (every day in proportion, row order
    kept) when it has more: the path to train on and the fraction of the rows it holds."""
    import numpy as np
    import pyarrow.parquet as pq

    path = _kept(settings, "training_set")["path"]
    rows = pq.read_metadata(path).num_rows
    if not cap or rows <= cap:
        return path, 1.0
    keep = np.sort(np.random.default_rng(0).choice(rows, cap, replace=False))
    sample = settings.home / "scale-state" / "train_sample.parquet"
    source, start, writer = pq.ParquetFile(path), 0, None
    for batch in source.iter_batches(batch_size=1 << 20):  # never the whole set in memory
        lo, hi = np.searchsorted(keep, [start, start + batch.num_rows])
        part = batch.take(keep[lo:hi] - start)
        writer = writer or pq.ParquetWriter(sample, part.schema)
        writer.write_batch(part)
        start += batch.num_rows
    writer.close()
    return str(sample), cap / rows


def train(settings: Any, days: list[dt.date]) -> dict[str, Any]:
    """The train step (encode + ``epochs`` epochs + evaluation on the test day + save, in its MLflow run);
    the per-epoch figure is the trainer's own training seconds / epochs. Past ``train_cap`` rows it
    trains on a uniform sample of that many rows and also gives the per-epoch time scaled to all rows
    (training time is linear in rows at a fixed batch size); evaluate and register use the full set."""
    from components import steps

    state = json.loads(Path(sys.argv[2]).read_text())
    path, fraction = _train_sample(settings, state.get("train_cap", 0))
    result = steps.train(settings, days[-1], path, force=True)
    _keep(settings, "train", result)
    t = result["training"]
    per_epoch = t["seconds"] / max(1, t["epochs"])
    return {"per_epoch_s": round(per_epoch, 2), "epochs": t["epochs"], "fraction": round(fraction, 4),
            "per_epoch_all_rows_s": round(per_epoch / fraction, 1),
            "samples_per_s": round(t["samples_per_s"]), "step_seconds": result["seconds"], "split_rows": result["rows"]}


def evaluate(settings: Any, days: list[dt.date]) -> dict[str, Any]:
    """Score the test day with the saved model and evaluate it (metrics, slices, bootstrap interval)."""
    from components.store.offline import read_offline
    from components.training.artefact import load_trained
    from components.training.evaluation import evaluate as evaluate_scores
    from components.training.intervals import DEFAULT_BOOTSTRAP

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    # Only the test days are read (a filter on the parquet): what the stage needs, not the whole set.
    first_test = days[-settings.training.test_days]
    start = dt.datetime(first_test.year, first_test.month, first_test.day, tzinfo=dt.timezone.utc)
    test = pq.read_table(_kept(settings, "training_set")["path"], filters=pc.field("event_time") >= start)
    model = load_trained(_kept(settings, "train")["model_dir"])
    scores = model.score(test)
    ads = read_offline(settings, "ads", None, days[-1], columns=["ad_id", "created_at"], latest=True)
    report = evaluate_scores(scores, test, model.tasks, ads=ads, n_boot=DEFAULT_BOOTSTRAP)
    return {"test_rows": test.num_rows, "auc": {t: round(report.metric(t, "auc"), 4) for t in model.tasks}}


def register(settings: Any, days: list[dt.date]) -> dict[str, Any]:
    """Quality gates and MLflow registration; the version is then promoted (forced when a gate failed,
    which synthetic labels may make happen) so that the serve stage has a champion."""
    from components.registry.aliases import promote
    from components.registry.gate_and_register import assess_and_register

    train_result = _kept(settings, "train")
    path = _kept(settings, "training_set")["path"]
    result = assess_and_register(settings, days[-1], train_result, path, days, force=True)
    version = (result.get("registered") or {}).get("version")
    if version is None:
        raise RuntimeError(f"nothing registered: {result.get('gate_table')}")
    promote(settings, int(version), force=True, reason="scale benchmark")
    return {"version": version, "gates_passed": result.get("gates_passed")}


def materialise(settings: Any, days: list[dt.date]) -> dict[str, Any]:
    from components.serving.online_store import materialize_online

    out = materialize_online(settings, days[-1])
    return {"entities": out.get("entities")}


def serve(settings: Any, days: list[dt.date]) -> dict[str, Any]:
    """Start the scoring service in-process (online store, model) and score ``SERVE_REQUESTS`` requests
    of ``SERVE_CANDIDATES`` random candidates each; the stage time is start + requests."""
    import numpy as np

    from components.serving.service import ScoreRequest, ScoringService

    state = json.loads(Path(sys.argv[2]).read_text())
    rng = np.random.default_rng(0)
    n_users, n_ads = state["users"], state["ads"]
    service, start_s = _timed(lambda: ScoringService(settings).start(watch=False))
    ms = []
    for _ in range(SERVE_REQUESTS):
        request = ScoreRequest(user_id=int(rng.integers(n_users)),
                               ads=[int(a) for a in rng.choice(n_ads, min(SERVE_CANDIDATES, n_ads), replace=False)])
        t0 = time.perf_counter()
        service.score(request)
        ms.append((time.perf_counter() - t0) * 1000)
    service.stop()
    return {"start_s": start_s, "requests": SERVE_REQUESTS, "candidates": SERVE_CANDIDATES,
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


STAGES = {
    "deliver": day_step("deliver"), "ingest": day_step("ingest"), "features": day_step("features"),
    "interest": interest, "representations": day_step("representations"), "training_set": training_set,
    "encode": encode, "train": train, "evaluate": evaluate, "register": register, "materialise": materialise,
    "serve": serve,
}


# Imported before the clock starts, so a stage's seconds are its work, not its imports.
PRELOAD = ("numpy", "pyarrow.parquet", "duckdb", "components.steps", "components.store.features")
PRELOAD_TRAINING = ("torch", "components.training.loop", "components.training.evaluation",
                    "components.registry.training_run")
PRELOAD_STAGE = {"encode": PRELOAD_TRAINING, "train": PRELOAD_TRAINING, "evaluate": PRELOAD_TRAINING,
                 "register": (*PRELOAD_TRAINING, "mlflow", "components.registry.gate_and_register"),
                 "representations": ("torch", "components.representations.refresh"),
                 "materialise": ("feast", "components.serving.online_store"),
                 "serve": (*PRELOAD_TRAINING, "feast", "components.serving.service")}


def main() -> None:
    import importlib

    stage, state_path = sys.argv[1], Path(sys.argv[2])
    state = json.loads(state_path.read_text())
    import logging

    logging.basicConfig(level=logging.WARNING)
    settings = settings_of(state)
    from flows.runtime import configure_environment

    configure_environment(settings)  # what every adsrec command sets first (OMP_WAIT_POLICY, MLflow, offline HF)
    for module in (*PRELOAD, *PRELOAD_STAGE.get(stage, ())):
        importlib.import_module(module)
    before = rss_mb()
    if stage == "generate":  # the input log
        from bench.scale_data import write_log

        extra, seconds = _timed(write_log, Path(state["data"]), state["rows"], state["days"])
    else:
        extra, seconds = _timed(STAGES[stage], settings, days_of(state))
    Path(state["out"]).write_text(json.dumps({"stage": stage, "seconds": seconds, "rss_before_mb": round(before),
                                              **(extra or {})}, default=str))


if __name__ == "__main__":
    main()

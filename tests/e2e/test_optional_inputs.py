"""Every optional input is optional end to end (docs/representations.md "Switches", docs/features.md
"Optional inputs", docs/training.md "IPW"): a log with no images, no titles, no user profiles, no
taxonomy and an empty day still gives a training set, a trained model, a Feast online store and online
rows; each representation space switches off in config and is skipped with one log line; IPW follows a
configured task and is skipped with a message when it cannot apply."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from components.schemas import day_dir

DAYS = 4
# A small marketplace without photos (photo_share 0): the text encoder runs, MobileNet never loads.
SIMULATOR = {"n_users": 200, "n_initial_ads": 150, "new_ads_per_day": 10, "new_users_per_day": 5,
             "n_candidates": 50, "click_base_logit": -3.0, "photo_share": 0.0}
REPRESENTATIONS = {"graph_dim": 16, "graph_epochs": 5, "graph_window_days": 2, "rq_codes": 8, "rq_pca_dim": 8}
TRAINING = {"train": {"epochs": 1, "batch_size": 512},
            "ranker": {"arch": "stem", "mnse_combine": "sum", "embedding_dim": 8}}


def _settings(home: Path, shared: Path, **sections: dict[str, Any]) -> Any:
    from components.config import load_settings

    overrides: dict[str, Any] = {
        "home": str(home), "pipeline": {"shared_data": str(shared), "training_days": DAYS},
        "simulator": dict(SIMULATOR), "representations": dict(REPRESENTATIONS), "training": dict(TRAINING),
    }
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_settings(environ={}, overrides=overrides).resolved()


def _strip_raw_day(settings: Any, day: dt.date) -> None:
    """Rewrite the delivered day as a bare log: ads without titles, photos and taxonomy columns; no users
    file at all (no profiles)."""
    raw = settings.raw_dir / "simulator"
    ads_file = day_dir(raw, "ads", day) / "part-0.parquet"
    ads = pq.read_table(ads_file)
    ads = ads.select(["ad_id", "advertiser_id", "campaign_id", "bid", "created_at"])
    ads = ads.append_column("title", pa.nulls(ads.num_rows, pa.string()))
    ads = ads.append_column("image", pa.nulls(ads.num_rows, pa.binary()))
    pq.write_table(ads, ads_file)
    for f in day_dir(raw, "users", day).glob("*.parquet"):
        f.unlink()


def _empty_impressions_partition(settings: Any, day: dt.date) -> None:
    """What ingestion lands for a day without impressions: the day's partition with no rows."""
    from components.storage import replace_partition, write_parquet_durable

    part = day_dir(settings.offline_dir, "impressions", day)
    schema = pq.read_schema(next(part.glob("*.parquet")))
    replace_partition(part, lambda tmp: write_parquet_durable(schema.empty_table(), tmp / "part-0.parquet"))


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Any]:
    """Four days of a bare log (no images, titles, users, taxonomy), day 3 empty, through features and
    representations."""
    from components import steps

    settings = _settings(tmp_path_factory.mktemp("bare") / "home", shared_data)
    days = steps.demo_window(settings, DAYS)
    reports = {}
    for day in days:
        steps.deliver_day(settings, day)
        _strip_raw_day(settings, day)
        steps.ingest(settings, day)
        if day == days[2]:
            _empty_impressions_partition(settings, day)
        steps.features(settings, day)
        reports[day] = steps.representations(settings, day)
    return {"settings": settings, "days": days, "reports": reports}


def test_a_bare_log_with_an_empty_day_trains_materializes_and_serves(bare: dict[str, Any], caplog) -> None:
    from components.store.features import read_view
    from components.training.train_day import train_and_evaluate
    from components.serving.online_rows import online_feature_rows
    from components.serving.online_store import materialize_online
    from components.training.artefact import load_trained
    from components.training.training_set import build_training_set

    settings, days = bare["settings"], bare["days"]
    # The empty day went through features and representations: no sequence rows, no new graph edges.
    assert read_view(settings, "user_sequence", [days[2]]).num_rows == 0
    for day, rep in bare["reports"].items():
        assert rep["spaces_skipped"] == {"text": f"no ad known by {day} has a title",
                                  "visual": f"no ad known by {day} has an image"}, day
        assert "text" not in rep["views"] and "ad_visual_embedding" not in rep["views"]
    assert "edges" in bare["reports"][days[2]]["graph"]  # its window still held day 2's clicks

    path = build_training_set(settings, days[-1], days=DAYS, join_path="feast")
    table = pq.read_table(path)
    cols = table.column_names
    assert not [c for c in cols if c.startswith("user_profile__")]  # no profile columns: view left out
    assert "see_graph" in cols
    assert not [c for c in cols if c in ("see_text", "see_visual") or c.startswith("ad_semantic_id__")]
    assert not [c for c in cols if c.startswith("ad_profile__") and c not in (
        "ad_profile__advertiser_id", "ad_profile__campaign_id", "ad_profile__bid")]  # no taxonomy
    assert pc.all(pc.equal(pc.list_flatten(table["user_sequence__categories"]), "")).as_py()
    event_days = {t.date() for t in table["event_time"].to_pylist()}
    assert days[2] not in event_days and {days[0], days[1], days[3]} <= event_days

    with caplog.at_level(logging.INFO, logger="components.training.train_day"):
        result = train_and_evaluate(settings, days[-1], path, settings.tasks)
    trained = load_trained(Path(result["model_dir"]))
    read = trained.encoders.feature_columns  # the model's feature spec follows the training set's columns
    assert "see_graph" in read and not [c for c in read if c.startswith("user_profile__") or c == "see_text"]
    assert result["ipw"]["task"] == settings.tasks[0] and "summary" in result["ipw"]
    # the empty day 3 is the validation day: no early stopping, the untouched day 4 still reports
    assert result["rows"]["valid"] == 0 and result["days"]["test"] == [days[3].isoformat()]
    assert "have no rows: no early stopping, the last epoch is kept" in caplog.text

    online = materialize_online(settings, days[-1])
    assert "user_profile" not in online["views"] and online["views"]["user_stats"]["entities_written"] > 0
    sample = table.filter(pc.equal(pc.day(table["event_time"]), days[-1].day)).slice(0, 20)
    requests = sample.select(["user_id", "ad_id", "event_time"])
    rows = online_feature_rows(settings, requests)
    assert "see_graph" in rows.column_names and "see_text" not in rows.column_names
    scores = trained.score(rows.drop_columns(["user_known", "ad_known"]))
    for task in settings.tasks:
        p = np.asarray(scores[task])
        assert p.shape == (20,) and np.all((p > 0) & (p < 1))


def test_each_switch_removes_its_columns_with_one_log_line(bare: dict[str, Any], caplog) -> None:
    from components.representations.refresh import refresh_representations
    from components.representations.similarity import add_similarity_features, similarity_summary

    settings, days = bare["settings"], bare["days"]
    base = pq.read_table(_training_set(settings, days))
    assert "see_graph" in base.column_names
    cases = {
        "graph": ({"graph": False}, "graph: switched off (representations.graph: false); graph vectors and "
                                    "see_graph are skipped"),
        "text": ({"text": False}, "text: switched off (representations.text: false); text vectors, "
                                  "user_text_interest and see_text are skipped"),
        "visual": ({"visual": False}, "visual: switched off (representations.visual: false); visual vectors, "
                                      "semantic IDs, user_visual_interest and see_visual are skipped"),
    }
    for space, (switch, line) in cases.items():
        off = settings.model_copy(update={"representations": settings.representations.model_copy(update=switch)})
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="components.representations.refresh"):
            report = refresh_representations(off, days[-1], progress=False)
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{space}:")]
        assert said == [line], space
        assert report["spaces_skipped"][space].startswith("switched off")
        assert not any(v.startswith(f"ad_{space}") or v.startswith(f"user_{space}") for v in report["views"])
    off = settings.model_copy(update={"representations": settings.representations.model_copy(
        update={"graph": False})})
    table = add_similarity_features(off, base.drop_columns(["see_graph"]))
    assert "see_graph" not in table.column_names
    assert similarity_summary(table)["skipped"]["see_graph"] == "switched off (representations.graph: false)"
    off = settings.model_copy(update={"representations": settings.representations.model_copy(update={"see": False})})
    table = add_similarity_features(off, base.drop_columns(["see_graph"]))
    assert not [c for c in table.column_names if c.startswith("see_")]


def _training_set(settings: Any, days: list[dt.date]) -> Path:
    from components.training.training_set import build_training_set

    return build_training_set(settings, days[-1], days=DAYS, join_path="duckdb")


def test_semantic_ids_switch_and_a_photo_catalogue(tmp_path: Path, shared_data: Path, caplog) -> None:
    """With photos the codes are there; ``semantic_ids: false`` removes them (and only them), with one
    line; ``see: false`` removes the similarities and keeps the codes."""
    from components import steps
    from components.representations.similarity import add_similarity_features
    from components.training.training_set import build_training_set

    sim = {**SIMULATOR, "photo_share": 1.0, "n_initial_ads": 40, "new_ads_per_day": 0, "n_users": 60,
           "n_candidates": 20}
    settings = _settings(tmp_path / "home", shared_data, simulator=sim,
                         representations={"text": False, "graph": False, "semantic_ids": False})
    assert settings.representations.semantic_ids == "off"
    day = steps.demo_window(settings, 1)[0]
    steps.deliver_day(settings, day)
    steps.ingest(settings, day)
    steps.features(settings, day)
    with caplog.at_level(logging.INFO, logger="components.representations.refresh"):
        report = steps.representations(settings, day)
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("semantic_ids:")] == [
        "semantic_ids: switched off (representations.semantic_ids: off); the ad_semantic_id codes are skipped"]
    assert report["visual"]["items_encoded"] == 40 and "ad_semantic_id" not in report["views"]
    table = pq.read_table(build_training_set(settings, day, days=1, join_path="duckdb"))
    assert "see_visual" in table.column_names
    assert not [c for c in table.column_names if c.startswith("ad_semantic_id__") or c in ("see_text", "see_graph")]

    on = settings.model_copy(update={"representations": settings.representations.model_copy(
        update={"semantic_ids": "rqkmeans", "see": False})})
    steps.representations(on, day)
    coded = add_similarity_features(on, table.drop_columns(["see_visual"]))
    assert [c for c in coded.column_names if c.startswith("ad_semantic_id__")] == [
        f"ad_semantic_id__sid_{i + 1}" for i in range(on.representations.rq_levels)]
    assert not [c for c in coded.column_names if c.startswith("see_")]


# ----- IPW and the behaviour task --------------------------------------------------------------------------
def _impressions(exposures: list[int], label: list[int], task: str) -> pa.Table:
    n = len(exposures)
    start = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    return pa.table({
        "user_id": pa.array(np.arange(n) % 3, pa.int64()),
        "ad_id": pa.array(np.zeros(n), pa.int64()),
        "event_time": pa.array([start + dt.timedelta(hours=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
        "exposure_index": pa.array(exposures, pa.int32()),
        task: pa.array(label, pa.int8()),
    })


def test_ipw_skip_reasons_name_the_task_and_the_counts() -> None:
    from components.training.train_day import ipw_skip_reason

    assert ipw_skip_reason(_impressions([1] * 6, [1, 0] * 3, "rating_high"), "rating_high") == (
        "no repeated exposures in the window's 6 impressions (every exposure_index is 1)")
    assert ipw_skip_reason(_impressions([1, 1, 1, 2, 2, 2], [0] * 6, "rating_high"), "rating_high") == (
        "task 'rating_high' (training.ipw_task) has no positives in the window's 6 impressions")
    assert ipw_skip_reason(_impressions([1, 1, 1, 2, 2, 2], [1, 0] * 3, "rating_high"), "rating_high") is None


def test_task_settings_default_to_the_first_task_and_reject_unknown_ones(settings) -> None:
    from components.store.features import behaviour_task, pick_task

    assert behaviour_task(settings, ["rating_high", "watch"]) == "rating_high"
    assert pick_task("watch", ["rating_high", "watch"], "training.ipw_task") == "watch"
    with pytest.raises(ValueError, match=r"training.ipw_task is 'click', which is not one of the tasks"):
        pick_task("click", ["rating_high", "watch"], "training.ipw_task")


def test_ipw_and_the_sequence_follow_a_task_not_named_click(bare: dict[str, Any], tmp_path: Path, caplog) -> None:
    """The bare log's labels renamed (click -> like, conversion -> purchase) in a copy of its offline
    store: the click sequence and the graph read ``like``; IPW fits on ``training.ipw_task: purchase``,
    and is skipped, with its reason logged, once every exposure_index is 1."""
    import shutil

    from components.store.features import build_features, read_view
    from components.representations.refresh import refresh_representations
    from components.training.train_day import train_and_evaluate

    src, days = bare["settings"], bare["days"]
    home = tmp_path / "home"
    shutil.copytree(src.home / "offline", home / "offline")
    for f in (home / "offline" / "impressions").glob("date=*/*.parquet"):
        t = pq.read_table(f)
        pq.write_table(t.rename_columns([{"click": "like", "conversion": "purchase"}.get(c, c)
                                         for c in t.column_names]), f)
    renamed = src.model_copy(update={"home": home})
    tasks = ("like", "purchase")
    for day in days:
        build_features(renamed, day, tasks)
    original = read_view(src, "user_sequence", [days[-1]]).sort_by("user_id")
    sequence = read_view(renamed, "user_sequence", [days[-1]]).sort_by("user_id")
    assert sequence["ad_ids"].equals(original["ad_ids"]) and sequence.num_rows > 0

    # Settings.tasks comes from the source; the renamed copy is the files source's situation.
    from components.config import FilesSourceConfig, FileTableConfig

    files = FilesSourceConfig(tasks=list(tasks), impressions=FileTableConfig(path=str(tmp_path / "unused")))
    renamed = renamed.model_copy(update={
        "pipeline": renamed.pipeline.model_copy(update={"source": "files"}), "files": files,
        "training": renamed.training.model_copy(update={"ipw_task": "purchase"})})
    assert renamed.tasks == tasks
    for day in days:
        refresh_representations(renamed, day, progress=False)
    path = _training_set(renamed, days)
    result = train_and_evaluate(renamed, days[-1], path, tasks)
    assert result["ipw"]["task"] == "purchase" and "summary" in result["ipw"]

    for f in (home / "offline" / "impressions").glob("date=*/*.parquet"):
        t = pq.read_table(f)
        i = t.column_names.index("exposure_index")
        pq.write_table(t.set_column(i, "exposure_index", pa.array(np.ones(t.num_rows, np.int32))), f)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="components.training.train_day"):
        result = train_and_evaluate(renamed, days[-1], path, tasks)
    assert result["ipw"]["skipped"].startswith("no repeated exposures in the window's")
    assert any(r.getMessage().startswith(f"IPW skipped for {days[-1]}: no repeated exposures")
               for r in caplog.records)


def test_an_empty_day_landed_as_an_empty_folder(bare: dict[str, Any], tmp_path: Path) -> None:
    """An empty day may also land as a partition folder without a file: features, representations and
    the training set treat it like the empty file (same rows), and a window of only empty days says
    there is nothing to train on."""
    import shutil

    from components import steps
    from components.training.training_set import build_training_set

    src, days = bare["settings"], bare["days"]
    home = tmp_path / "home"
    shutil.copytree(src.home / "offline", home / "offline")
    settings = src.model_copy(update={"home": home})
    empty = day_dir(settings.offline_dir, "impressions", days[2])
    for f in empty.glob("*"):
        f.unlink()
    for day in days:
        steps.features(settings, day)
        steps.representations(settings, day)
    ours = pq.read_table(build_training_set(settings, days[-1], days=DAYS, join_path="duckdb"))
    theirs = pq.read_table(_training_set(src, days))
    assert ours.num_rows == theirs.num_rows > 0 and ours["request_id"].equals(theirs["request_id"])
    with pytest.raises(ValueError, match=f"no impressions between {days[2]} and {days[2]}: nothing to train on"):
        build_training_set(settings, days[2], days=1, join_path="duckdb")
    missing = days[-1] + dt.timedelta(days=1)
    with pytest.raises(FileNotFoundError, match=f"no ingested impressions for {missing}; ingest the day first"):
        steps.features(settings, missing)


def test_a_first_day_without_impressions_builds_empty_daily_views(bare: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    from components.store.features import build_features, read_view

    src, days = bare["settings"], bare["days"]
    shutil.copytree(src.home / "offline", tmp_path / "home" / "offline")
    settings = src.model_copy(update={"home": tmp_path / "home"})
    for f in day_dir(settings.offline_dir, "impressions", days[0]).glob("*"):
        f.unlink()
    rows = build_features(settings, days[0])
    assert rows["user_stats"] == rows["ad_stats"] == rows["user_sequence"] == 0
    assert rows["ad_profile"] == read_view(src, "ad_profile", [days[0]]).num_rows > 0
    assert "click_rate_1d" in read_view(settings, "user_stats", [days[0]]).column_names


def test_a_single_task_not_named_click_trains_and_gets_gated(bare: dict[str, Any], tmp_path: Path) -> None:
    """One label (``like``) and nothing else: features, representations, training, and the gates (the
    entanglement gate has no task pair and says so instead of failing)."""
    import shutil

    from components.config import FilesSourceConfig, FileTableConfig
    from components.store.features import build_features
    from components.registry.gate_and_register import assess_and_register
    from components.representations.refresh import refresh_representations
    from components.training.train_day import train_and_evaluate

    src, days = bare["settings"], bare["days"]
    home = tmp_path / "home"
    shutil.copytree(src.home / "offline", home / "offline")
    shutil.copytree(src.home / "manifests" / "ingest", home / "manifests" / "ingest")  # the data gate reads it
    for f in (home / "offline" / "impressions").glob("date=*/*.parquet"):
        t = pq.read_table(f).drop_columns(["conversion"])
        pq.write_table(t.rename_columns(["like" if c == "click" else c for c in t.column_names]), f)
    files = FilesSourceConfig(tasks=["like"], impressions=FileTableConfig(path=str(tmp_path / "unused")))
    settings = src.model_copy(update={
        "home": home, "files": files, "pipeline": src.pipeline.model_copy(update={"source": "files"}),
        "registry": src.registry.model_copy(update={"enabled": False})})
    for day in days:
        build_features(settings, day)
        refresh_representations(settings, day, progress=False)
    path = _training_set(settings, days)
    result = train_and_evaluate(settings, days[-1], path, ("like",))
    assert set(result["evaluation"]["overall"]) == {"like"} and result["ipw"]["task"] == "like"
    gates = {g["name"]: g for g in assess_and_register(settings, days[-1], result, path, days)["gates"]}
    assert gates["entanglement"]["passed"], gates["entanglement"]["reason"]
    assert gates["entanglement"]["reason"].startswith("one task (like): no task pair, separation not gated")
    assert gates["model"]["reason"].startswith("like AUC ")


def test_a_column_null_on_every_training_row_is_not_a_feature() -> None:
    """An empty users table still gives ``user_profile__*`` columns, all null: no field for them."""
    from components.training.encoders import FeatureEncoders

    n = 40
    table = pa.table({
        "user_id": pa.array(np.arange(n) % 7, pa.int64()), "ad_id": pa.array(np.arange(n) % 5, pa.int64()),
        "user_profile__age_band": pa.nulls(n, pa.string()), "user_profile__activity": pa.nulls(n, pa.float64()),
        "ad_stats__impressions_1d": pa.array(np.arange(n), pa.int64()),
        "like": pa.array(np.arange(n) % 2, pa.int8()),
    })
    enc = FeatureEncoders.fit(table, ["like"])
    assert enc.feature_columns == ["user_id", "ad_id", "ad_stats__impressions_1d"]
    assert enc.ignored["user_profile__age_band"] == "no value in the training rows (all null)"
    assert enc.ignored["user_profile__activity"] == "no value in the training rows (all null)"


def test_a_task_without_positives_fails_with_the_counts(bare: dict[str, Any], tmp_path: Path) -> None:
    from components.training.train_day import train_and_evaluate

    settings, days = bare["settings"], bare["days"]
    table = pq.read_table(_training_set(settings, days))
    i = table.column_names.index("conversion")
    path = tmp_path / "train.parquet"
    pq.write_table(table.set_column(i, "conversion", pa.array(np.zeros(table.num_rows, np.int8))), path)
    with pytest.raises(ValueError, match=r"task\(s\) \['conversion'\] have no positive in the [\d,]+ training rows "
                                         r"of .*train.parquet \(positives per task: \{'click': \d+, 'conversion': 0\}"):
        train_and_evaluate(settings, days[-1], path, settings.tasks)

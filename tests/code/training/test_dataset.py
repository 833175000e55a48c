"""components/training/encoders.py and field_encoders.py: which columns become which fields, vocabularies, equal-frequency buckets, the
sequence, JSON round trip, and the encoding of a real (small) point-in-time training set."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from components.training.encoders import FeatureEncoders, time_split, window_split
from components.training.field_encoders import SequenceEncoder, fit_buckets

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 3, 12, 0, tzinfo=UTC)


def synthetic_training_set(n: int = 2000, seed: int = 0, length: int = 4) -> pa.Table:
    """A table with the training set's column layout (docs/features.md) and known values."""
    rng = np.random.default_rng(seed)
    ts = pa.timestamp("us", tz="UTC")
    users = rng.integers(1, 50, n)
    ads = rng.integers(100, 160, n)
    cats = np.array(["Apparel", "Footwear", "Accessories"])
    seq_ids: list[list[int] | None] = []
    seq_cats: list[list[str] | None] = []
    seq_times: list[list[dt.datetime] | None] = []
    for i in range(n):  # test data only: the code under test is vectorised
        k = int(rng.integers(0, length + 1))
        if i % 7 == 0:  # a user without a sequence row: null lists
            seq_ids.append(None)
            seq_cats.append(None)
            seq_times.append(None)
            continue
        ids = [int(a) for a in rng.integers(100, 160, k)] + [-1] * (length - k)
        seq_ids.append(ids)
        seq_cats.append([str(c) for c in rng.choice(cats, k)] + [""] * (length - k))
        seq_times.append([T0 - dt.timedelta(minutes=float(m)) for m in 2.0 ** np.arange(1, k + 1)]
                         + [dt.datetime(1970, 1, 1, tzinfo=UTC)] * (length - k))
    rate = rng.random(n)
    rate[::10] = np.nan
    return pa.table({
        "event_time": pa.array([T0 + dt.timedelta(hours=float(h)) for h in np.linspace(0, 47, n)], ts),
        "request_id": pa.array([f"r{i}" for i in range(n)]),
        "user_id": pa.array(users, pa.int64()),
        "ad_id": pa.array(ads, pa.int64()),
        "slot": pa.array(rng.choice(["feed", "search"], n)),
        "position": pa.array(rng.integers(1, 6, n), pa.int32()),
        "exposure_index": pa.array(rng.integers(1, 4, n), pa.int32()),
        "click": pa.array(rng.random(n) < 0.2, pa.bool_()).cast(pa.int8()),
        "conversion": pa.array(rng.random(n) < 0.05, pa.bool_()).cast(pa.int8()),
        "user_profile__gender": pa.array(np.array(["f", "m", None], dtype=object)[rng.integers(0, 3, n)]),
        "user_stats__click_rate_7d": pa.array(rate, pa.float64(), from_pandas=True),
        "user_stats__click_7d": pa.array(rng.integers(0, 3, n), pa.int64()),
        "user_sequence__ad_ids": pa.array(seq_ids, pa.list_(pa.int64())),
        "user_sequence__categories": pa.array(seq_cats, pa.list_(pa.string())),
        "user_sequence__click_times": pa.array(seq_times, pa.list_(ts)),
        "user_sequence__length": pa.array([None if s is None else sum(x >= 0 for x in s) for s in seq_ids], pa.int32()),
        "ad_profile__campaign_id": pa.array(ads * 10, pa.int64()),
        "ad_profile__master_category": pa.array(cats[ads % 3]),
        "ad_profile__bid": pa.array(rng.gamma(2.0, 0.3, n)),
        "ad_semantic_id__sid_1": pa.array(ads % 8, pa.int32()),
        "see_text": pa.array(rng.uniform(-1, 1, n), pa.float32()),
    })


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return synthetic_training_set()


@pytest.fixture(scope="module")
def encoders(table: pa.Table) -> FeatureEncoders:
    return FeatureEncoders.fit(table, min_count=1, numeric_buckets=8)


def test_columns_get_their_roles_and_leaks_are_never_features(encoders: FeatureEncoders) -> None:
    cat = [c.name for c in encoders.categorical]
    num = [c.name for c in encoders.numeric]
    assert cat == ["user_id", "ad_id", "slot", "position", "user_profile__gender", "ad_profile__campaign_id",
                   "ad_profile__master_category", "ad_semantic_id__sid_1"]
    assert num == ["user_stats__click_rate_7d", "user_stats__click_7d", "user_sequence__length",
                   "ad_profile__bid", "see_text"]
    assert encoders.tasks == ["click", "conversion"]
    for leak in ("click", "conversion", "request_id", "event_time", "exposure_index"):
        assert leak not in cat + num
    assert set(encoders.ignored) == {"request_id", "event_time", "exposure_index"}
    groups = {c.name: c.group for c in encoders.categorical + encoders.numeric}  # type: ignore[operator]
    assert groups["user_id"] == "user" and groups["ad_semantic_id__sid_1"] == "ad"
    assert groups["slot"] == "context" and groups["see_text"] == "context"
    assert encoders.sequence == SequenceEncoder(length=4, category_field="ad_profile__master_category")


def test_features_do_not_depend_on_labels_or_exposure(table: pa.Table, encoders: FeatureEncoders) -> None:
    scrambled = table.set_column(table.schema.get_field_index("click"), "click",
                                 pa.array(np.ones(table.num_rows), pa.int8()))
    scrambled = scrambled.set_column(scrambled.schema.get_field_index("exposure_index"), "exposure_index",
                                     pa.array(np.full(table.num_rows, 9), pa.int32()))
    a, b = encoders.encode_numpy(table), encoders.encode_numpy(scrambled)
    for key in ("cat", "num", "seq_items", "seq_cats", "seq_gaps"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["labels"][:, 0].sum() < b["labels"][:, 0].sum() == table.num_rows


def test_encode_shapes_and_dtypes(table: pa.Table, encoders: FeatureEncoders) -> None:
    import torch

    batch = encoders.encode(table)
    n = table.num_rows
    assert batch["cat"].shape == (n, 8) and batch["cat"].dtype == torch.int64
    assert batch["num"].shape == (n, 5) and batch["num"].dtype == torch.int64
    for key in ("seq_items", "seq_cats", "seq_gaps"):
        assert batch[key].shape == (n, 4) and batch[key].dtype == torch.int64
    assert batch["labels"].shape == (n, 2) and batch["labels"].dtype == torch.float32
    assert torch.equal(batch["weights"], torch.ones(n, 2))
    spec = encoders.spec()
    for j, cf in enumerate(spec.categorical):
        assert 0 <= int(batch["cat"][:, j].min()) and int(batch["cat"][:, j].max()) < cf.vocab_size
    for j, nf in enumerate(spec.numeric):
        assert int(batch["num"][:, j].max()) < nf.n_buckets
    assert spec.sequence is not None and int(batch["seq_gaps"].max()) < spec.sequence.n_gap_buckets
    assert spec.sequence.item_field == "ad_id" and spec.tasks == ("click", "conversion")
    # Serving rows have no labels: no labels or weights in the batch.
    assert "labels" not in encoders.encode(table.drop_columns(["click", "conversion"]))


def test_vocabulary_most_frequent_first_unknown_and_rare_to_zero() -> None:
    t = synthetic_training_set(300)
    t = t.set_column(t.schema.get_field_index("slot"), "slot", pa.array(["b", "a", "b", "c", "b", "a"] + ["d"] * 294))
    enc = FeatureEncoders.fit(t, min_count=2)
    slot = enc.categorical_encoder("slot")
    assert slot.values == ["d", "b", "a"] and slot.counts == [294, 3, 2] and slot.vocab_size == 4
    serve = t.slice(0, 6)
    serve = serve.set_column(t.schema.get_field_index("slot"), "slot", pa.array(["a", "b", "c", "zz", None, "d"]))
    assert enc.encode_numpy(serve)["cat"][:, [c.name for c in enc.categorical].index("slot")].tolist() == [
        3, 2, 0, 0, 0, 1]
    # Unseen ids (a new ad) map to 0 in the id field and in the sequence.
    ads = enc.categorical_encoder("ad_id")
    assert ads.encode(pa.array([10**9, None, ads.values[0]], pa.int64())).tolist() == [0, 0, 1]


def test_buckets_are_equal_frequency_and_nulls_get_bucket_zero() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(size=10_000)
    enc = fit_buckets(pa.chunked_array([pa.array(np.append(values, np.nan), from_pandas=True)]), "x", "context", 10)
    assert enc.n_buckets == 11  # null + 10 quantile buckets
    ids = enc.encode(pa.array(values))
    counts = np.bincount(ids, minlength=11)
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] - 1000) <= 1), counts
    assert enc.encode(pa.array([None, np.nan, -1e9, 1e9], pa.float64(), from_pandas=True)).tolist() == [0, 0, 1, 10]
    # Heavily tied values (mostly zero counts) merge quantiles instead of making empty buckets.
    tied = fit_buckets(pa.chunked_array([pa.array([0] * 90 + [1] * 5 + [2] * 5)]), "c", "user", 10)
    assert tied.boundaries == [1.0, 2.0]
    assert tied.encode(pa.array([0, 1, 2, 7])).tolist() == [1, 2, 3, 3]
    # A heavy value among continuous ones gets its own bucket; the rest stay equal-frequency.
    mixed = np.concatenate([np.zeros(5000), rng.uniform(1, 2, 5000)])
    heavy = fit_buckets(pa.chunked_array([pa.array(mixed)]), "r", "ad", 10)
    counts = np.bincount(heavy.encode(pa.array(mixed)))
    assert counts[1] == 5000 and len(counts) == 7 and np.all(np.abs(counts[2:] - 1000) <= 1), counts


def test_sequence_items_categories_and_log_gaps(table: pa.Table, encoders: FeatureEncoders) -> None:
    b = encoders.encode_numpy(table)
    ads = encoders.categorical_encoder("ad_id")
    cats = encoders.categorical_encoder("ad_profile__master_category")
    raw_ids = table.column("user_sequence__ad_ids").to_pylist()
    raw_cats = table.column("user_sequence__categories").to_pylist()
    for i in (1, 2, 3, 5, 8, 13):
        ids = raw_ids[i]
        k = sum(x >= 0 for x in ids)
        expect_items = [ads.values.index(x) + 1 for x in ids[:k]] + [0] * (4 - k)
        assert b["seq_items"][i].tolist() == expect_items
        assert b["seq_cats"][i].tolist() == [cats.values.index(c) + 1 for c in raw_cats[i][:k]] + [0] * (4 - k)
        # Click j (0-based) happened 2**(j+1) minutes before T0; the impression is at event_time.
        gap_min = (table.column("event_time")[i].as_py() - T0).total_seconds() / 60 + 2.0 ** np.arange(1, k + 1)
        expect_gaps = 1 + np.minimum(np.floor(np.log2(1 + gap_min)), 16)
        assert b["seq_gaps"][i].tolist() == expect_gaps.astype(int).tolist() + [0] * (4 - k)
    assert b["seq_items"][0].tolist() == [0, 0, 0, 0] and b["seq_gaps"][0].tolist() == [0, 0, 0, 0]  # null list


def test_all_null_columns_encode_as_unknown(table: pa.Table, encoders: FeatureEncoders) -> None:
    """A scoring request built in pandas has Arrow null-typed columns where every value is missing (an
    unknown user's sequence, no slot): they encode like typed nulls instead of failing."""
    rows = table.slice(0, 4)
    typed = rows
    for name in ("user_sequence__ad_ids", "user_sequence__categories", "ad_profile__master_category"):
        i = rows.column_names.index(name)
        rows = rows.set_column(i, name, pa.nulls(rows.num_rows))
        typed = typed.set_column(i, name, pa.nulls(typed.num_rows, typed.schema.field(name).type))
    a, b = encoders.encode_numpy(rows), encoders.encode_numpy(typed)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert (a["seq_items"] == 0).all()


def test_json_round_trip_encodes_identically(tmp_path: Path, table: pa.Table, encoders: FeatureEncoders) -> None:
    path = encoders.save(tmp_path / "enc" / "encoders.json")
    again = FeatureEncoders.load(path)
    assert again == encoders
    assert again.spec() == encoders.spec()
    a, b = encoders.encode_numpy(table), again.encode_numpy(table)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    data = json.loads(path.read_text())
    data["format_version"] = 99
    with pytest.raises(ValueError, match="format 99"):
        FeatureEncoders.from_dict(data)
    with pytest.raises(KeyError, match="user_id"):
        encoders.encode_numpy(table.drop_columns(["user_id"]))


def test_simhash_is_a_fixed_scale_numeric_field() -> None:
    t = synthetic_training_set(100)
    t = t.append_column("ad_semantic_id__simhash", pa.array(np.arange(100) * 1000 + 5, pa.int64()))
    enc = FeatureEncoders.fit(t)
    sim = next(e for e in enc.numeric if e.name == "ad_semantic_id__simhash")
    assert sim.mode == "identity" and sim.identity_size == 1 << 17 and sim.n_buckets == (1 << 17) + 1
    assert sim.encode(pa.array([0, 99_005, None, 1 << 20])).tolist() == [1, 99_006, 0, 0]


def test_time_split_holds_out_the_last_day(table: pa.Table) -> None:
    train, valid = time_split(table, valid_days=1)
    assert train.num_rows + valid.num_rows == table.num_rows
    last_day = max(table.column("event_time").to_pylist()).date()
    assert {t.date() for t in valid.column("event_time").to_pylist()} == {last_day}
    assert max(train.column("event_time").to_pylist()).date() < last_day


def test_window_split_tests_the_newest_day_and_validates_the_days_before() -> None:
    midnight = dt.datetime(2026, 11, 3, tzinfo=UTC)
    days = [midnight + dt.timedelta(days=d, hours=h) for d in range(5) for h in (0, 23.9)]
    table = pa.table({"event_time": pa.array(days, pa.timestamp("us", tz="UTC")), "row": list(range(len(days)))})

    def dates(t: pa.Table) -> list[dt.date]:
        return sorted({x.date() for x in t.column("event_time").to_pylist()})

    first = midnight.date()
    train, valid, test = window_split(table)  # defaults: 1 validation day, 1 test day
    assert dates(test) == [first + dt.timedelta(days=4)] and dates(valid) == [first + dt.timedelta(days=3)]
    assert dates(train) == [first + dt.timedelta(days=d) for d in range(3)]
    assert train.num_rows + valid.num_rows + test.num_rows == table.num_rows
    train, valid, test = window_split(table, valid_days=2, test_days=2)
    assert [len(dates(t)) for t in (train, valid, test)] == [1, 2, 2]
    with pytest.raises(ValueError, match=r"spans 5 day.*pipeline\.training_days.*training\.valid_days=2 \+ "
                                         r"training\.test_days=3 leave no training day.*at least 6"):
        window_split(table, valid_days=2, test_days=3)
    with pytest.raises(ValueError, match="training.test_days"):
        window_split(table, test_days=0)


def small_training_settings(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, **sections: Any) -> Any:
    """The settings of :func:`small_training_set`'s home, with ``sections`` overriding (e.g. ``training``)."""
    from components.config import load_settings

    home = tmp_path_factory.getbasetemp() / "small-training-home"
    return load_settings(environ={}, overrides={
        "home": str(home), "pipeline": {"shared_data": str(shared_data)},
        "simulator": {"n_users": 400, "sessions_per_user_day": 2.0,
                      "n_initial_ads": 400, "new_ads_per_day": 30, "new_users_per_day": 10},
        **sections,
    }).resolved()


def small_training_set(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A real point-in-time training set (simulator -> ingest -> features -> DuckDB join), 4 small days,
    built once per session (tests/code/training/test_train.py and test_train_day.py reuse it)."""
    from components import steps
    from components.training.training_set import build_training_set

    settings = small_training_settings(tmp_path_factory, shared_data)
    done = list((settings.home / "training").glob("*/train.parquet"))
    if done:
        return done[0]
    days = steps.demo_window(settings, 4)
    for day in days:
        steps.deliver_day(settings, day)
        steps.ingest(settings, day)
        steps.features(settings, day)
    return build_training_set(settings, days[-1], 4, ["click", "conversion"], join_path="duckdb")


def test_real_training_set_encodes_every_row(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> None:
    from components.training.encoders import read_training_set

    table = read_training_set(small_training_set(tmp_path_factory, shared_data))
    train, valid = time_split(table)
    enc = FeatureEncoders.fit(train)
    assert {"user_id", "ad_id", "slot", "position", "ad_profile__article_type"} <= {c.name for c in enc.categorical}
    assert {"user_stats__click_rate_7d", "ad_profile__bid"} <= {c.name for c in enc.numeric}
    assert enc.sequence is not None and enc.sequence.length == 20
    assert enc.sequence.category_field == "ad_profile__master_category"
    b = enc.encode_numpy(valid)
    assert b["cat"].shape == (valid.num_rows, len(enc.categorical))
    # The validation day has new ads: their id is unknown (0) while their category is known.
    ad_col = [c.name for c in enc.categorical].index("ad_id")
    new = b["cat"][:, ad_col] == 0
    assert 0 < new.mean() < 0.5
    type_col = [c.name for c in enc.categorical].index("ad_profile__article_type")
    assert (b["cat"][new, type_col] > 0).mean() > 0.9
    # Real sequence positions have gap buckets >= 1 and padding exactly where the list is padded.
    lengths = valid.column("user_sequence__length").fill_null(0).to_numpy()
    np.testing.assert_array_equal((b["seq_gaps"] > 0).sum(axis=1), lengths)

"""Tests of the real-log adapters (Taobao UserBehavior, MovieLens-100k) and their landing helpers.

The adapters are built once per module (about 1 s for Taobao, 2 s for MovieLens); the checks recount
from the raw files with an independent reader (pyarrow.csv / DuckDB SQL) rather than reusing adapter
code. Tests that need ../shared/data skip with the reason when it is absent; the helper tests do not.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from components.schemas import ADS, TIMESTAMP, USERS, impressions_schema
from components.sources.landing import write_raw_day
from components.sources.real_log import exposure_index, pair_keys, sample_negatives

# the published collection window, 2017-11-25 00:00 .. 2017-12-04 00:00 at UTC+8, as unix seconds
TAOBAO_LO, TAOBAO_HI = 1511539200, 1512316800


def _settings(home: Path, shared: Path):
    from components.config import load_settings

    return load_settings(
        environ={}, overrides={"home": str(home), "pipeline": {"shared_data": str(shared)}}
    ).resolved()


@pytest.fixture(scope="module")
def real_settings(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    return _settings(tmp_path_factory.mktemp("real") / "home", shared_data)


@pytest.fixture(scope="module")
def taobao(real_settings):
    from components.sources.taobao import TaobaoSource

    return TaobaoSource(real_settings)


@pytest.fixture(scope="module")
def movielens(real_settings):
    from components.sources.movielens import MovieLensSource

    return MovieLensSource(real_settings)


@pytest.fixture(scope="module")
def taobao_raw(shared_data: Path) -> dict[str, np.ndarray]:
    """The CSV read independently with pyarrow: rows that do not have 5 fields are counted and skipped."""
    import pyarrow.csv as pcsv

    bad: list[str] = []

    def on_invalid(row: pcsv.InvalidRow) -> str:
        bad.append(row.text)
        return "skip"

    table = pcsv.read_csv(
        shared_data / "taobao" / "user_behavior_head.csv",
        read_options=pcsv.ReadOptions(column_names=["user_id", "item_id", "category_id", "behavior", "ts"]),
        parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
    )
    out = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
    out["n_invalid"] = np.array(len(bad))
    return out


def _np(table: pa.Table, column: str) -> np.ndarray:
    col = table.column(column)
    if pa.types.is_timestamp(col.type):
        return pc.cast(col, pa.int64()).to_numpy()
    return col.to_numpy(zero_copy_only=False)


def _utc_day(impressions: pa.Table) -> np.ndarray:
    return _np(impressions, "event_time") // 86_400_000_000


def _pair_day(user: np.ndarray, item: np.ndarray, day: np.ndarray) -> np.ndarray:
    """One int64 per (user, item, UTC day) for set comparisons (user < 9e6, item < 1e7, day < 1e5)."""
    assert user.max(initial=0) < 9_000_000 and item.max(initial=0) < 10**7 and day.max(initial=0) < 10**5
    return pair_keys(user, item, 10**7) * 100_000 + day


def _check_contract(source, tasks: tuple[str, ...]) -> None:
    tables = source.log.tables
    imp, ads, users = tables["impressions"], tables["ads"], tables["users"]
    assert imp.schema.equals(impressions_schema(tasks))
    assert ads.schema.names[: len(ADS.required)] == ADS.required.names
    for field in ADS.required:
        assert ads.schema.field(field.name).type == field.type, field.name
    for field in USERS.required:
        assert users.schema.field(field.name).type == field.type, field.name
    assert imp.schema.field("event_time").type == TIMESTAMP
    impression_keys = ("event_time", "request_id", "user_id", "ad_id")
    for table, keys in ((imp, impression_keys), (ads, ADS.keys), (users, USERS.keys)):
        for key in keys:
            assert table.column(key).null_count == 0, key
    assert pc.count_distinct(imp.column("request_id")).as_py() == imp.num_rows
    assert pc.count_distinct(ads.column("ad_id")).as_py() == ads.num_rows
    assert pc.count_distinct(users.column("user_id")).as_py() == users.num_rows
    for task in tasks:
        assert set(pc.unique(imp.column(task)).to_pylist()) == {0, 1}, task
    assert pc.all(pc.equal(imp.column("position"), 1)).as_py()
    assert pc.min(imp.column("exposure_index")).as_py() == 1
    # every impression's ad and user exist, and were created no later than the impression
    for entity, key in ((ads, "ad_id"), (users, "user_id")):
        ids, created = _np(entity, key), _np(entity, "created_at")
        order = np.argsort(ids)
        at = np.searchsorted(ids[order], _np(imp, key))
        assert np.array_equal(ids[order][at], _np(imp, key))
        assert np.all(created[order][at] <= _np(imp, "event_time"))
    # (user, ad, UTC day) is unique: the request_id is built on it
    keys = np.stack([_np(imp, "user_id"), _np(imp, "ad_id"), _utc_day(imp)], axis=1)
    assert np.unique(keys, axis=0).shape[0] == imp.num_rows


def _exposure_recount(impressions: pa.Table) -> np.ndarray:
    """exposure_index recomputed with a DuckDB window, in the table's row order."""
    import duckdb

    con = duckdb.connect()
    try:
        rows = impressions.select(["event_time", "request_id", "user_id", "ad_id"])
        con.register("imp", rows.append_column("row", pa.array(np.arange(rows.num_rows))))
        got = con.execute(
            """SELECT row_number() OVER (PARTITION BY user_id, ad_id ORDER BY event_time, request_id) AS n
               FROM imp ORDER BY row"""
        ).to_arrow_table()
    finally:
        con.close()
    return got.column("n").to_numpy()


def _report(name: str, rows: list[dict[str, object]]) -> None:
    print(f"\n{name} label rates per day:")
    for row in rows:
        print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))


# --- helpers (no shared data needed) ---------------------------------------------------------------


def test_sample_negatives_excludes_forbidden_and_counts_shortfall() -> None:
    span = 100
    pool = np.array([10, 11, 12, 13, 14])
    weights = np.array([50.0, 1.0, 1.0, 1.0, 1.0])
    users = np.array([1, 1, 2])  # user 1 has two positives, user 2 one
    forbidden = np.unique(pair_keys(np.array([1, 1, 2, 2, 2]), np.array([10, 11, 10, 11, 12]), span))
    args = (users, pool, weights, forbidden, span)
    draw = sample_negatives(np.random.default_rng(0), *args, per_positive=2, jitter_s=30)
    got_users = users[draw.parent]
    # user 1 may get 12, 13, 14 (3 items for 4 slots); user 2 may get 13, 14 (2 items for 2 slots)
    assert draw.unfilled == 1
    assert draw.item.size == 5
    assert not np.isin(pair_keys(got_users, draw.item, span), forbidden).any()
    assert np.unique(pair_keys(got_users, draw.item, span)).size == 5
    assert set(draw.item[got_users == 2].tolist()) == {13, 14}
    assert set(draw.item[got_users == 1].tolist()) == {12, 13, 14}
    assert np.all(np.abs(draw.offset_s) <= 30)
    again = sample_negatives(np.random.default_rng(0), *args, per_positive=2, jitter_s=30)
    assert np.array_equal(again.item, draw.item) and np.array_equal(again.parent, draw.parent)


def test_sample_negatives_follows_popularity() -> None:
    pool = np.arange(4)
    weights = np.array([8.0, 4.0, 2.0, 1.0])
    users = np.arange(20_000)  # one positive each, so no user ever exhausts the pool
    draw = sample_negatives(np.random.default_rng(1), users, pool, weights, np.empty(0, np.int64), 10, 1, 0)
    share = np.bincount(draw.item, minlength=4) / draw.item.size
    assert np.allclose(share, weights / weights.sum(), atol=0.015)


def test_exposure_index_counts_earlier_impressions_of_the_pair() -> None:
    user = np.array([1, 1, 2, 1, 1])
    ad = np.array([7, 7, 7, 8, 7])
    time = np.array([30, 10, 10, 5, 20])
    assert exposure_index(user, ad, time, np.arange(5)).tolist() == [3, 1, 1, 1, 2]


def test_write_raw_day_replaces_its_own_delivery_and_refuses_foreign_files(settings) -> None:
    from components.sources.landing import DELIVERY_MARKER, ForeignFilesError

    day = dt.date(2020, 1, 2)
    folder = settings.raw_dir / "demo" / "impressions" / "date=2020-01-02"
    tables = {"impressions": pa.table({"a": [1, 2, 3]}), "users": pa.table({"b": pa.array([], pa.int64())})}
    rows = write_raw_day(settings, "demo", day, tables)
    assert rows == {"impressions": 3, "users": 0}
    (folder / "notes.txt").write_text("not a data file")
    rows = write_raw_day(settings, "demo", day, {"impressions": pa.table({"a": [4, 5]})})  # its own: replaced
    assert sorted(p.name for p in folder.iterdir()) == [DELIVERY_MARKER, "notes.txt", "part-0.parquet"]
    assert pq.read_table(folder / "part-0.parquet").column("a").to_pylist() == [4, 5]
    # a file the source did not write (any case of extension) is never overwritten nor mixed with
    (folder / "mine.PARQUET").write_bytes(b"a user's file")
    with pytest.raises(ForeignFilesError, match="mine.PARQUET.*did not write"):
        write_raw_day(settings, "demo", day, tables)
    assert (folder / "mine.PARQUET").read_bytes() == b"a user's file"
    assert pq.read_table(folder / "part-0.parquet").column("a").to_pylist() == [4, 5]
    (folder / "mine.PARQUET").unlink()
    # nor is its own file once someone changed it
    pq.write_table(pa.table({"a": [9]}), folder / "part-0.parquet")
    with pytest.raises(ForeignFilesError, match="part-0.parquet"):
        write_raw_day(settings, "demo", day, tables)
    assert pq.read_table(folder / "part-0.parquet").column("a").to_pylist() == [9]
    assert pq.read_table(settings.raw_dir / "demo" / "users" / "date=2020-01-02" / "part-0.parquet").num_rows == 0
    with pytest.raises(ValueError, match="not a plain"):
        write_raw_day(settings, "../escape", day, {})


def test_missing_data_folder_is_a_clear_error(tmp_path: Path) -> None:
    from components.sources.movielens import MovieLensSource
    from components.sources.taobao import TaobaoSource

    settings = _settings(tmp_path / "home", tmp_path / "no-data")
    with pytest.raises(FileNotFoundError, match="Taobao UserBehavior log not found"):
        TaobaoSource(settings).available_days()
    with pytest.raises(FileNotFoundError, match="MovieLens-100k atomic file not found"):
        MovieLensSource(settings).available_days()


# --- Taobao ----------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_taobao_reconciles_with_raw_file(taobao, taobao_raw) -> None:
    raw = taobao_raw
    stats = taobao.stats
    ts, behaviour = raw["ts"], raw["behavior"]
    inside = (ts >= TAOBAO_LO) & (ts < TAOBAO_HI)
    # the file is a byte-cut head: one last line without its timestamp, and 35 events outside the window
    assert stats["malformed_rows"] == int(raw["n_invalid"]) == 1
    assert stats["raw_rows"] == ts.size + 1 == 84_476
    assert stats["outside_window_rows"] == int((~inside).sum()) == 35
    assert int((behaviour == "pv").sum()) == 75_872  # the README's count
    assert stats["pv_events"] == int(((behaviour == "pv") & inside).sum())
    assert stats["raw_rows"] == stats["malformed_rows"] + stats["outside_window_rows"] + stats["in_window_events"]
    assert stats["in_window_events"] == stats["events_in_impressions"] + stats["events_without_same_day_pv"]

    # every in-window (user, item, UTC day) with a pv is exactly one click=1 impression, and nothing else is
    key = _pair_day(raw["user_id"][inside], raw["item_id"][inside], ts[inside] // 86_400)
    pv_keys = np.unique(key[behaviour[inside] == "pv"])
    imp = taobao.log.tables["impressions"]
    clicked = _np(imp, "click") == 1
    imp_key = _pair_day(_np(imp, "user_id"), _np(imp, "ad_id"), _utc_day(imp))
    assert np.array_equal(np.sort(imp_key[clicked]), pv_keys)
    assert stats["positive_impressions"] == pv_keys.size == int(clicked.sum())
    # events of pair-days without a pv are the ones not attributed
    assert stats["events_without_same_day_pv"] == int((~np.isin(key, pv_keys)).sum())
    # same-day labels: a positive's conversion/cart/fav are its pair-day's buy/cart/fav
    for behav, task in (("buy", "conversion"), ("cart", "cart"), ("fav", "fav")):
        expected = np.isin(imp_key[clicked], np.unique(key[behaviour[inside] == behav]))
        assert np.array_equal(_np(imp, task)[clicked] == 1, expected), task
        assert int(_np(imp, task)[~clicked].sum()) == 0, task
    # the impression's time is the pair-day's first event
    order = np.lexsort((ts[inside], key))
    k_sorted, t_sorted = key[order], ts[inside][order]
    starts = np.flatnonzero(np.r_[True, k_sorted[1:] != k_sorted[:-1]])
    first = dict(zip(k_sorted[starts].tolist(), t_sorted[starts].tolist()))
    got = _np(imp, "event_time")[clicked] // 1_000_000
    assert all(first[k] == t for k, t in zip(imp_key[clicked].tolist(), got.tolist()))


@pytest.mark.shared_data
def test_taobao_contract_and_days(taobao, taobao_raw) -> None:
    _check_contract(taobao, ("click", "conversion", "cart", "fav"))
    assert taobao.available_days() == (dt.date(2017, 11, 24), dt.date(2017, 12, 3))
    imp = taobao.log.tables["impressions"]
    t = _np(imp, "event_time") // 1_000_000
    assert t.min() >= TAOBAO_LO and t.max() < TAOBAO_HI
    ads = taobao.log.tables["ads"]
    assert ads.column("image").null_count == ads.num_rows
    titles, cats = ads.column("title").to_pylist()[:50], ads.column("category").to_pylist()[:50]
    assert titles == [f"category {c}" for c in cats]
    assert taobao.log.tables["users"].schema.names == ["user_id", "created_at"]
    # users = those with an in-window pv: 813 of the file's 815 (two only have other events / outliers)
    raw = taobao_raw
    viewers = np.unique(raw["user_id"][(raw["ts"] >= TAOBAO_LO) & (raw["ts"] < TAOBAO_HI) & (raw["behavior"] == "pv")])
    assert np.array_equal(np.sort(_np(taobao.log.tables["users"], "user_id")), viewers)
    assert viewers.size == 813 and np.unique(raw["user_id"]).size == 815


@pytest.mark.shared_data
def test_taobao_negatives_never_collide(taobao, taobao_raw) -> None:
    raw = taobao_raw
    inside = (raw["ts"] >= TAOBAO_LO) & (raw["ts"] < TAOBAO_HI)
    interacted = np.unique(_pair_day(raw["user_id"][inside], raw["item_id"][inside], raw["ts"][inside] // 86_400))
    imp = taobao.log.tables["impressions"]
    neg = _np(imp, "click") == 0
    neg_key = _pair_day(_np(imp, "user_id")[neg], _np(imp, "ad_id")[neg], _utc_day(imp)[neg])
    assert neg.sum() == 4 * (~neg).sum()  # no shortfall on this log: 4 per positive
    assert not np.isin(neg_key, interacted).any()
    # negatives are items viewed by someone that day
    pv = inside & (raw["behavior"] == "pv")
    viewed = np.unique(raw["item_id"][pv] * 1_000_000 + raw["ts"][pv] // 86_400)
    assert np.isin(_np(imp, "ad_id")[neg] * 1_000_000 + _utc_day(imp)[neg], viewed).all()


@pytest.mark.shared_data
def test_taobao_label_rates_plausible(taobao) -> None:
    rows = taobao.daily_summary()
    _report("taobao", rows)
    assert [r["day"] for r in rows][0] == "2017-11-24" and len(rows) == 10
    for row in rows:
        assert row["click_rate"] == pytest.approx(0.2, abs=1e-9)  # 1 positive : 4 negatives
        for task in ("conversion", "cart", "fav"):
            assert 0.0005 < row[f"{task}_rate"] < 0.02, (row["day"], task)


@pytest.mark.shared_data
def test_taobao_exposure_index_matches_recount(taobao) -> None:
    imp = taobao.log.tables["impressions"]
    recount = _exposure_recount(imp)
    assert np.array_equal(_np(imp, "exposure_index"), recount)
    assert recount.max() > 3  # repeated exposures across days do occur


@pytest.mark.shared_data
def test_taobao_is_deterministic(taobao, real_settings) -> None:
    from components.sources.taobao import TaobaoSource

    again = TaobaoSource(real_settings)
    for name in ("impressions", "ads", "users"):
        assert again.log.tables[name].equals(taobao.log.tables[name]), name
    other = TaobaoSource(real_settings, seed=1).log.tables["impressions"]
    same = taobao.log.tables["impressions"]
    assert not other.column("request_id").equals(same.column("request_id"))  # the negatives move
    assert pc.sum(other.column("click")).as_py() == pc.sum(same.column("click")).as_py()


@pytest.mark.shared_data
def test_taobao_deliver_writes_and_is_idempotent(taobao, real_settings) -> None:
    day = dt.date(2017, 11, 28)
    counts = taobao.deliver(day)
    expected = taobao.log.for_day(day)
    assert counts == {name: t.num_rows for name, t in expected.items()}
    assert counts["impressions"] > 30_000 and counts["ads"] > 0 and counts["users"] > 0
    paths = {name: real_settings.raw_dir / "taobao" / name / f"date={day}" / "part-0.parquet" for name in counts}
    before = {name: p.read_bytes() for name, p in paths.items()}
    for name, p in paths.items():
        assert pq.read_table(p).equals(expected[name])
    assert taobao.deliver(day) == counts
    assert {name: p.read_bytes() for name, p in paths.items()} == before
    # every impression of the day falls inside it
    t = _np(expected["impressions"], "event_time") // 86_400_000_000
    assert set(t.tolist()) == {(day - dt.date(1970, 1, 1)).days}
    # a day without events: empty tables with the full schema
    empty_day = dt.date(2018, 1, 1)
    assert taobao.deliver(empty_day) == {"impressions": 0, "ads": 0, "users": 0}
    empty = pq.read_table(real_settings.raw_dir / "taobao" / "impressions" / f"date={empty_day}" / "part-0.parquet")
    assert empty.num_rows == 0 and empty.schema.equals(impressions_schema(taobao.tasks))
    # the days add up to the whole log
    first, last = taobao.available_days()
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    for name in ("impressions", "ads", "users"):
        assert sum(taobao.log.for_day(d)[name].num_rows for d in days) == taobao.log.tables[name].num_rows


# --- MovieLens -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml_ratings(shared_data: Path) -> pa.Table:
    import duckdb

    con = duckdb.connect()
    try:
        path = str(shared_data / "movielens-100k" / "ml-100k.inter")
        return con.execute(
            "SELECT column0 AS user_id, column1 AS item_id, column2 AS rating, column3 AS ts "
            "FROM read_csv(?, delim='\t', skip=1, header=false, columns={'column0': 'BIGINT', "
            "'column1': 'BIGINT', 'column2': 'DOUBLE', 'column3': 'BIGINT'})",
            [path],
        ).to_arrow_table()
    finally:
        con.close()


@pytest.mark.shared_data
def test_movielens_reconciles_with_ratings(movielens, ml_ratings) -> None:
    imp = movielens.log.tables["impressions"]
    clicked = _np(imp, "click") == 1
    stats = movielens.stats
    assert stats["ratings"] == ml_ratings.num_rows == 100_000 == int(clicked.sum())
    span = 10_000
    r_key = pair_keys(_np(ml_ratings, "user_id"), _np(ml_ratings, "item_id"), span) * 10**10 + _np(ml_ratings, "ts")
    i_key = pair_keys(_np(imp, "user_id"), _np(imp, "ad_id"), span) * 10**10 + _np(imp, "event_time") // 1_000_000
    assert np.array_equal(np.sort(i_key[clicked]), np.sort(r_key))
    liked = np.sort(r_key[_np(ml_ratings, "rating") >= 4])
    assert np.array_equal(np.sort(i_key[clicked & (_np(imp, "conversion") == 1)]), liked)
    assert stats["liked_ratings"] == liked.size == 55_375
    assert int(_np(imp, "conversion")[~clicked].sum()) == 0
    # negatives: 4 per rating except the counted shortfall
    assert stats["negative_impressions"] == int((~clicked).sum()) == 4 * 100_000 - stats["unfilled_negatives"]
    assert stats["unfilled_negatives"] < 0.02 * 400_000


@pytest.mark.shared_data
def test_movielens_contract_and_profiles(movielens) -> None:
    _check_contract(movielens, ("click", "conversion"))
    assert movielens.available_days() == (dt.date(1997, 9, 20), dt.date(1998, 4, 22))
    ads = movielens.log.tables["ads"]
    by_id = {r["ad_id"]: r for r in ads.to_pylist()}
    assert by_id[1]["title"] == "Toy Story" and by_id[1]["genre"] == "Animation"
    assert by_id[1]["genres"] == "Animation|Children's|Comedy" and by_id[1]["release_year"] == 1995
    assert by_id[1412]["release_year"] == 1995  # the year column says "V"; the title says (1995)
    assert by_id[267]["release_year"] is None
    assert len({r["campaign_id"] for r in by_id.values()}) > 200
    users = {r["user_id"]: r for r in movielens.log.tables["users"].to_pylist()}
    assert len(users) == 943
    profile = {k: users[1][k] for k in ("age_band", "gender", "occupation", "zip_prefix")}
    assert profile == {"age_band": "18-24", "gender": "M", "occupation": "technician", "zip_prefix": "857"}
    assert users[2]["age_band"] == "50-55"


@pytest.mark.shared_data
def test_movielens_negatives_never_hidden_positives(movielens, ml_ratings) -> None:
    imp = movielens.log.tables["impressions"]
    neg = _np(imp, "click") == 0
    span = 10_000
    rated = np.unique(pair_keys(_np(ml_ratings, "user_id"), _np(ml_ratings, "item_id"), span))
    assert not np.isin(pair_keys(_np(imp, "user_id")[neg], _np(imp, "ad_id")[neg], span), rated).any()
    assert imp.num_rows == movielens.stats["positive_impressions"] + movielens.stats["negative_impressions"]
    # each negative lies within jitter_s of one of the same user's ratings (on the same UTC day)
    t = _np(imp, "event_time") // 1_000_000
    pos_key = np.sort(_np(imp, "user_id")[~neg] * 10**10 + t[~neg])
    neg_key = _np(imp, "user_id")[neg] * 10**10 + t[neg]
    at = np.clip(np.searchsorted(pos_key, neg_key), 1, pos_key.size - 1)
    nearest = np.minimum(np.abs(pos_key[at] - neg_key), np.abs(pos_key[at - 1] - neg_key))
    assert nearest.max() <= movielens.jitter_s


@pytest.mark.shared_data
def test_movielens_label_rates_and_exposure(movielens) -> None:
    rows = movielens.daily_summary()
    _report("movielens (first 10 days)", rows[:10])
    assert len(rows) == 213
    click = np.array([r["click_rate"] for r in rows])
    conv = np.array([r["conversion_rate"] for r in rows])
    # 1 positive : 4 negatives, more where a heavy rater exhausts the unrated movies; under the
    # ingest click bound (0.5) on every day
    assert np.all((click >= 0.2 - 1e-9) & (click < 0.5)) and float(np.median(click)) == pytest.approx(0.2)
    assert np.all(conv <= click) and 0.08 < float(np.median(conv)) < 0.14
    imp = movielens.log.tables["impressions"]
    assert np.array_equal(_np(imp, "exposure_index"), _exposure_recount(imp))


@pytest.mark.shared_data
def test_movielens_deliver_and_empty_day(movielens, real_settings) -> None:
    day = dt.date(1997, 11, 13)
    counts = movielens.deliver(day)
    path = real_settings.raw_dir / "movielens" / "impressions" / f"date={day}" / "part-0.parquet"
    before = path.read_bytes()
    assert pq.read_table(path).equals(movielens.log.for_day(day)["impressions"])
    assert movielens.deliver(day) == counts and path.read_bytes() == before
    # a day inside the range with no ratings at all
    first, last = movielens.available_days()
    have = {r["day"] for r in movielens.daily_summary()}
    gaps = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    gaps = [d for d in gaps if d.isoformat() not in have]
    assert len(gaps) == 2
    assert movielens.deliver(gaps[0]) == {"impressions": 0, "ads": 0, "users": 0}
    users = pq.read_table(real_settings.raw_dir / "movielens" / "users" / f"date={gaps[0]}" / "part-0.parquet")
    assert users.num_rows == 0 and "age_band" in users.schema.names


@pytest.mark.shared_data
def test_movielens_is_deterministic(movielens, real_settings) -> None:
    from components.sources.movielens import MovieLensSource

    again = MovieLensSource(real_settings)
    for name in ("impressions", "ads", "users"):
        assert again.log.tables[name].equals(movielens.log.tables[name]), name

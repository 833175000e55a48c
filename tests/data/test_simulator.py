"""The demo marketplace simulator: determinism, the data contract, and every planted effect measured
in the generated log (each compared with the knob switched off on the same seed).

Simulations are small (about 60k impressions, a third of a second each) and cached per configuration
for the module, so the whole file runs in a few seconds.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from components.config import Settings, load_settings
from components.schemas import ADS, TIMESTAMP, USERS, day_dir, day_window, impressions_schema
from components.sources import get_source
from components.sources import simulator as sim

START = dt.date(2026, 11, 1)
DAYS = 5
SMALL = {"n_users": 1200, "sessions_per_user_day": 2.0, "n_initial_ads": 1000, "new_ads_per_day": 50, "new_users_per_day": 20}


def make_settings(shared_data: Path, home: Path, **knobs: Any) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "home": str(home),
            "pipeline": {"shared_data": str(shared_data), "start_date": START.isoformat()},
            "simulator": {**SMALL, **knobs},
        },
    ).resolved()


@pytest.fixture(scope="module")
def run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """``run(**knobs)`` -> the simulated tables for SMALL plus knobs, simulated once per module."""
    home = tmp_path_factory.mktemp("sim-home")
    cache: dict[str, dict[str, pa.Table]] = {}

    def _run(days: int = DAYS, **knobs: Any) -> dict[str, pa.Table]:
        key = json.dumps([days, knobs], sort_keys=True)
        if key not in cache:
            cache[key] = sim.simulate(make_settings(shared_data, home, **knobs), START, days)
        return cache[key]

    return _run


def col(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy()


def ctr(out: dict[str, pa.Table], mask: np.ndarray | None = None) -> float:
    clicks = col(out["impressions"], "click")
    return float(clicks.mean() if mask is None else clicks[mask].mean())


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_same_output_and_other_seed_differs(run, shared_data: Path, tmp_path: Path) -> None:
    a = run()
    b = sim.simulate(make_settings(shared_data, tmp_path / "h"), START, DAYS)  # a fresh marketplace
    for name in sim.RAW_TABLES + sim.TRUTH_TABLES:
        assert a[name].equals(b[name]), name
    other = run(seed=8)
    assert not other["impressions"].equals(a["impressions"])


def test_day_depends_only_on_earlier_days(run) -> None:
    short, long = run(days=2), run(days=DAYS)
    day1 = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)

    def day_slice(t: pa.Table, column: str) -> pa.Table:
        d = pc.cast(t[column], pa.timestamp("us", tz="UTC"))
        return t.filter(pc.and_(pc.greater_equal(d, day1), pc.less(d, day1 + dt.timedelta(days=1))))

    for name, column in [("impressions", "event_time"), ("ads", "created_at"), ("users", "created_at"),
                         ("truth_impressions", "event_time")]:
        assert day_slice(short[name], column).num_rows > 0
        assert day_slice(short[name], column).equals(day_slice(long[name], column)), name


def test_deliver_is_byte_identical_and_idempotent(shared_data: Path, tmp_path: Path) -> None:
    day = START + dt.timedelta(days=2)
    files = {}
    for home in ("a", "b"):
        sim._CACHE.entries.clear()  # force a fresh simulation for the second home
        settings = make_settings(shared_data, tmp_path / home)
        source = get_source(settings)
        assert isinstance(source, sim.SimulatorSource) and source.tasks == ("click", "conversion")
        rows = source.deliver(day)
        paths = [day_dir(settings.raw_dir / "simulator", t, day) / "part-0.parquet" for t in sim.RAW_TABLES]
        paths += [day_dir(settings.truth_dir, t, day) / "part-0.parquet" for t in ("impressions", "ads", "users")]
        files[home] = [p.read_bytes() for p in paths]
        import pyarrow.parquet as pq

        assert rows == {t: pq.read_metadata(p).num_rows for t, p in zip(sim.RAW_TABLES, paths)}
        assert rows["impressions"] > 1000 and rows["ads"] == SMALL["new_ads_per_day"]
        assert rows["users"] == SMALL["new_users_per_day"]
        # Re-delivering replaces the day with the same bytes and leaves no temporary files behind.
        assert source.deliver(day) == rows
        assert [p.read_bytes() for p in paths] == files[home]
        leftovers = [p for p in settings.home.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
        assert not leftovers
    assert files["a"] == files["b"]


def test_available_days_and_bad_input(shared_data: Path, tmp_path: Path) -> None:
    settings = make_settings(shared_data, tmp_path / "h", horizon_days=30)
    source = sim.SimulatorSource(settings)
    assert source.available_days() == (START, START + dt.timedelta(days=29))
    with pytest.raises(ValueError, match="horizon_days"):
        source.deliver(START + dt.timedelta(days=30))
    with pytest.raises(ValueError, match="n_candidates"):
        sim.simulate(make_settings(shared_data, tmp_path / "h", n_candidates=4, positions=5), START, 1)


# --- contract -------------------------------------------------------------------------------------


def test_tables_follow_the_contract(run) -> None:
    out = run()
    imp, ads, users = out["impressions"], out["ads"], out["users"]
    assert imp.schema == impressions_schema(["click", "conversion"])
    for table, contract, extras in [
        (ads, ADS, {"master_category": pa.string(), "sub_category": pa.string(), "article_type": pa.string()}),
        (users, USERS, {"age_band": pa.string(), "gender": pa.string(), "region": pa.string(),
                        "account_age_days": pa.int64(), "activity": pa.float64()}),
    ]:
        for field in contract.required:
            assert table.schema.field(field.name).type == field.type, field.name
        assert set(table.column_names) == set(contract.required.names) | set(extras)
        for name, typ in extras.items():
            assert table.schema.field(name).type == typ
        for key in contract.keys:
            assert table[key].null_count == 0
        assert pc.count_distinct(table[contract.unique[0]]).as_py() == table.num_rows
    for key in ("event_time", "request_id", "user_id", "ad_id"):
        assert imp[key].null_count == 0
    assert pc.count_distinct(imp["request_id"]).as_py() == imp.num_rows
    click, conv = col(imp, "click"), col(imp, "conversion")
    assert set(np.unique(click)) == {0, 1} and set(np.unique(conv)) == {0, 1}
    assert np.all(conv <= click)  # a conversion needs a click
    assert set(pc.unique(imp["slot"]).to_pylist()) == {"feed", "search", "detail"}
    assert set(np.unique(col(imp, "position"))) == {1, 2, 3, 4, 5}
    # Every impression is inside the window, after its user and its ad were created.
    lo, _ = day_window(START)
    _, hi = day_window(START + dt.timedelta(days=DAYS - 1))
    assert pc.min(imp["event_time"]).as_py() >= lo and pc.max(imp["event_time"]).as_py() < hi
    t = col(imp, "event_time").astype("datetime64[us]").astype(np.int64)
    for dim, key in ((users, "user_id"), (ads, "ad_id")):
        ids = col(dim, key)
        order = np.argsort(ids)
        created = col(dim, "created_at").astype("datetime64[us]").astype(np.int64)[order]
        pos = np.searchsorted(ids[order], col(imp, key))
        assert np.all(ids[order][pos] == col(imp, key))  # every id is in its dimension table
        assert np.all(created[pos] <= t)


def test_delivered_day_is_inside_the_day(shared_data: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    settings = make_settings(shared_data, tmp_path / "h")
    day = START + dt.timedelta(days=1)
    sim.SimulatorSource(settings).deliver(day)
    lo, hi = day_window(day)
    for table, column in (("impressions", "event_time"), ("ads", "created_at"), ("users", "created_at")):
        t = pq.read_table(day_dir(settings.raw_dir / "simulator", table, day) / "part-0.parquet")
        assert t.schema.field(column).type == TIMESTAMP
        assert pc.min(t[column]).as_py() >= lo and pc.max(t[column]).as_py() < hi, table


def test_exposure_index_matches_a_recount(run) -> None:
    imp = run()["impressions"].to_pandas()
    imp = imp.sort_values(["user_id", "ad_id", "event_time", "request_id"])
    recount = imp.groupby(["user_id", "ad_id"]).cumcount() + 1
    assert (recount.to_numpy() == imp["exposure_index"].to_numpy()).all()
    assert imp["exposure_index"].max() >= 3  # repeats across days exist


def test_ground_truth_stays_out_of_the_raw_tables(run, shared_data: Path, tmp_path: Path) -> None:
    out = run()
    for name in sim.RAW_TABLES:
        names = out[name].column_names
        assert not [c for c in names if c.startswith("p_") or "pref" in c or "affinity" in c], name
    assert not {"colour", "usage", "quality", "popularity"} & set(out["ads"].column_names)
    assert {"colour", "usage"} <= set(out["truth_ads"].column_names)
    truth = out["truth_impressions"]
    assert truth["request_id"].equals(out["impressions"]["request_id"])
    expected = {"p_click", "p_conversion", "p_conversion_given_click", "policy", "propensity"}
    assert expected <= set(truth.column_names)
    p = col(truth, "p_click") * col(truth, "p_conversion_given_click")
    assert np.allclose(p, col(truth, "p_conversion"))
    # deliver puts the truth under truth_dir, nothing of it under raw
    settings = make_settings(shared_data, tmp_path / "h")
    sim.SimulatorSource(settings).deliver(START)
    assert (day_dir(settings.truth_dir, "impressions", START) / "part-0.parquet").is_file()
    # the three tables and the delivered days' commit markers (components/sources/landing.py)
    assert sorted(p.name for p in (settings.raw_dir / "simulator").iterdir()) == ["_days", "ads", "impressions", "users"]
    meta = json.loads((settings.truth_dir / "simulator.json").read_text())
    assert meta["simulator"]["n_users"] == SMALL["n_users"]


def test_default_demo_rates_are_in_band(shared_data: Path, tmp_path: Path) -> None:
    settings = load_settings(
        environ={}, overrides={"home": str(tmp_path / "h"), "pipeline": {"shared_data": str(shared_data)}}
    ).resolved()
    out = sim.simulate(settings, days=2)
    imp = out["impressions"]
    assert 0.03 <= ctr(out) <= 0.06
    assert 0.003 <= col(imp, "conversion").mean() <= 0.01
    assert 15_000 <= imp.num_rows / 2 <= 30_000  # ~300 users x 16 requests x 5 positions per day (x activity)
    # The oracle is informative: the true p_click ranks clicks well above chance.
    p, y = col(out["truth_impressions"], "p_click"), col(imp, "click")
    ranks = np.argsort(np.argsort(p)) + 1
    auc = (ranks[y == 1].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (len(y) - y.sum()))
    assert 0.7 < auc < 0.95


# --- ads: real products, photos, cold start -------------------------------------------------------


def test_ads_are_real_products_with_photos_and_new_ones_every_day(run, shared_data: Path) -> None:
    import pyarrow.parquet as pq

    out = run()
    ads, imp = out["ads"], out["impressions"]
    catalog = pq.read_table(shared_data / "fashion" / "catalog.parquet", columns=["product_id", "title"])
    joined = ads.select(["ad_id", "title"]).join(catalog, "ad_id", "product_id", right_suffix="_cat")
    assert joined.num_rows == ads.num_rows
    assert pc.all(pc.equal(joined["title"], pc.cast(joined["title_cat"], pa.string()))).as_py()
    has_image = ~np.asarray(pc.is_null(ads["image"]))
    assert abs(has_image.mean() - 0.7) < 0.01  # photo_share
    assert all(b[:2] == b"\xff\xd8" for b in ads.filter(pa.array(has_image))["image"].to_pylist()[:50])
    ad_day = col(ads, "created_at").astype("datetime64[D]")
    days, counts = np.unique(ad_day, return_counts=True)
    assert counts.tolist() == [SMALL["n_initial_ads"]] + [SMALL["new_ads_per_day"]] * (DAYS - 1)
    # Cold start: ads created on a day are shown that day.
    imp_day = col(imp, "event_time").astype("datetime64[D]")
    for d in days[1:]:
        new_ids = col(ads, "ad_id")[ad_day == d]
        assert np.isin(col(imp, "ad_id")[imp_day == d], new_ids).sum() > 50


# --- planted effects ------------------------------------------------------------------------------


def recent_same_category_lift(out: dict[str, pa.Table], hours: float = 6.0) -> float:
    """CTR when the user clicked the same article type in the last ``hours`` / CTR otherwise."""
    import pandas as pd

    imp = out["impressions"].select(["event_time", "user_id", "ad_id", "click"]).to_pandas()
    imp = imp.merge(out["ads"].select(["ad_id", "article_type"]).to_pandas(), on="ad_id")
    imp["key"] = imp["user_id"].astype(str) + "|" + imp["article_type"]
    clicks = imp.loc[imp["click"] == 1, ["key", "event_time"]].rename(columns={"event_time": "clicked"})
    m = pd.merge_asof(imp.sort_values("event_time"), clicks.sort_values("clicked"), left_on="event_time",
                      right_on="clicked", by="key", allow_exact_matches=False)
    recent = (m["event_time"] - m["clicked"]) <= pd.Timedelta(hours=hours)
    assert recent.sum() > 300
    return float(m.loc[recent, "click"].mean() / m.loc[~recent, "click"].mean())


def test_recent_same_category_click_raises_click_rate(run) -> None:
    with_boost, without = recent_same_category_lift(run()), recent_same_category_lift(run(temporal_boost=0.0))
    assert with_boost > 2.0
    assert with_boost > 1.4 * without  # what remains without the boost is plain preference


def test_temporal_user_share_picks_the_users_the_boost_applies_to(run) -> None:
    full, half, none = run(), run(temporal_user_share=0.5), run(temporal_user_share=0.0)
    responsive = col(half["truth_users"], "temporal_responsive")
    assert 0.45 < responsive.mean() < 0.55 and col(full["truth_users"], "temporal_responsive").all()
    # the share draws from a stream of its own: the users, ads and each user's draw stay as they were
    for name in ("users", "ads"):
        assert half[name].equals(full[name]) and none[name].equals(full[name])
    assert not col(none["truth_users"], "temporal_responsive").any()
    assert np.array_equal(responsive, col(run(temporal_user_share=0.5, temporal_boost=2.0)["truth_users"],
                                          "temporal_responsive"))
    # no user responsive is the boost switched off, row for row
    off = run(temporal_boost=0.0)
    assert none["impressions"].equals(off["impressions"])
    assert none["truth_impressions"].equals(off["truth_impressions"])
    # with half the users, only theirs get a boost, and it is the boost of the formula
    truth = half["truth_impressions"]
    boost = col(truth, "temporal_boost")
    on_user = np.isin(col(truth, "user_id"), col(half["truth_users"], "user_id")[responsive])
    assert (boost[~on_user] == 0).all() and (boost[on_user] > 0).sum() > 1000
    hours = truth["hours_since_category_click"].to_numpy(zero_copy_only=False)
    assert np.allclose(boost[on_user & (boost > 0)], 1.2 * np.exp(-hours[on_user & (boost > 0)] / 12.0))


def repeated_exposure_overrepresentation(out: dict[str, pa.Table]) -> float:
    """(share of clicks from exposure >= 2) / (share of impressions with exposure >= 2)."""
    click, exposure = col(out["impressions"], "click"), col(out["impressions"], "exposure_index")
    return float((click[exposure >= 2].sum() / click.sum()) / (exposure >= 2).mean())


def test_repeated_exposure_bias_comes_from_retargeting(run) -> None:
    out, organic_only = run(), run(retarget_share=0.0)
    assert repeated_exposure_overrepresentation(out) > 1.35
    assert repeated_exposure_overrepresentation(out) > repeated_exposure_overrepresentation(organic_only) + 0.15
    truth = out["truth_impressions"]
    retarget = np.asarray(pc.equal(truth["policy"], "retarget"))
    assert 0.03 < retarget.mean() < 0.3  # only users with eligible clicked ads get retargeting slots
    assert not np.asarray(pc.equal(organic_only["truth_impressions"]["policy"], "retarget")).any()
    # Retargeted impressions are repeats, of an ad this user clicked within the window before.
    exposure = col(out["impressions"], "exposure_index")
    assert exposure[retarget].min() >= 2
    import pandas as pd

    imp = out["impressions"].select(["event_time", "user_id", "ad_id", "click"]).to_pandas()
    imp["retarget"] = retarget
    clicks = imp.loc[imp["click"] == 1, ["user_id", "ad_id", "event_time"]]
    clicks = clicks.rename(columns={"event_time": "clicked"})
    m = pd.merge_asof(imp[imp["retarget"]].sort_values("event_time"), clicks.sort_values("clicked"),
                      left_on="event_time", right_on="clicked", by=["user_id", "ad_id"], allow_exact_matches=False)
    gap = m["event_time"] - m["clicked"]
    assert gap.notna().all() and (gap <= pd.Timedelta(days=3, hours=4)).all()
    # Known propensities: retargeting picks uniformly among k eligible ads, so share / propensity = k.
    prop = col(truth, "propensity")
    k = 0.3 / prop[retarget]
    assert np.allclose(k, np.round(k)) and k.min() >= 1
    assert np.all((prop > 0) & (prop <= 1))


def test_position_bias_and_positions_are_randomised(run) -> None:
    out, flat = run(), run(position_bias=0.0)
    position = col(out["impressions"], "position")
    rates = [ctr(out, position == p) for p in range(1, 6)]
    assert rates[0] > rates[1] > rates[2] > rates[4]

    def slope(o: dict[str, pa.Table]) -> float:
        r = np.array([ctr(o, col(o["impressions"], "position") == p) for p in range(1, 6)])
        return float(np.polyfit(np.log2(np.arange(1, 6)), np.log(r / (1 - r)), 1)[0])

    assert -0.5 < slope(out) < -0.2  # the configured penalty is 0.35 per log2(position)
    assert abs(slope(flat)) < 0.12
    # Positions are shuffled within a request: the policy is not confounded with position.
    retarget = np.asarray(pc.equal(out["truth_impressions"]["policy"], "retarget"))
    shares = [retarget[position == p].mean() for p in range(1, 6)]
    assert max(shares) - min(shares) < 0.02


def test_fatigue_lowers_click_rate_on_repeats(run) -> None:
    def repeat_vs_first(o: dict[str, pa.Table]) -> float:
        e = col(o["impressions"], "exposure_index")
        return ctr(o, e >= 2) / ctr(o, e == 1)

    assert repeat_vs_first(run()) < repeat_vs_first(run(fatigue=0.0)) - 0.4


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.9])
def test_preference_correlation_in_ground_truth(run, rho: float) -> None:
    out = run(preference_correlation=rho)
    truth = out["truth_impressions"]
    r = np.corrcoef(col(truth, "click_affinity"), col(truth, "conversion_affinity"))[0, 1]
    assert abs(r - rho) < 0.05
    users = out["truth_users"]
    a = np.stack(users["click_colour_pref"].to_numpy(zero_copy_only=False)).ravel()
    b = np.stack(users["conversion_colour_pref"].to_numpy(zero_copy_only=False)).ravel()
    assert abs(np.corrcoef(a, b)[0, 1] - rho) < 0.03


def test_entangled_preferences_show_in_the_log(run) -> None:
    def conversions_per_click(o: dict[str, pa.Table]) -> float:
        return float(col(o["impressions"], "conversion").sum() / col(o["impressions"], "click").sum())

    # With aligned preferences a click is much more often followed by a purchase.
    assert conversions_per_click(run(preference_correlation=0.9)) > 1.6 * conversions_per_click(
        run(preference_correlation=0.0)
    )


def preferred_colour_lift(out: dict[str, pa.Table]) -> float:
    """CTR on ads in the user's top hidden colour / CTR on the rest."""
    users = out["truth_users"]
    vocab = json.loads(users.schema.metadata[b"pref_vocabulary"])["colour"]
    top = np.stack(users["click_colour_pref"].to_numpy(zero_copy_only=False)).argmax(axis=1)
    imp = out["impressions"]
    uid, aid = col(users, "user_id"), col(out["truth_ads"], "ad_id")
    u_order, a_order = np.argsort(uid), np.argsort(aid)
    user_best = np.array(vocab)[top][u_order][np.searchsorted(uid[u_order], col(imp, "user_id"))]
    colours = np.array(out["truth_ads"]["colour"].to_pylist())[a_order]
    ad_colour = colours[np.searchsorted(aid[a_order], col(imp, "ad_id"))]
    hit = ad_colour == user_best
    assert hit.sum() > 500
    return ctr(out, hit) / ctr(out, ~hit)


def test_hidden_colour_drives_clicks(run) -> None:
    with_content, without = preferred_colour_lift(run()), preferred_colour_lift(run(content_weight=0.0))
    assert with_content > 1.8
    assert with_content > without + 0.5


# --- partial oracles (components/sources/market_ceilings.py) ------------------------------------


def test_partial_oracles_zero_or_average_the_taste_and_leave_the_log_unchanged(run, shared_data: Path,
                                                                               tmp_path: Path, monkeypatch) -> None:
    from components.sources import market
    from components.sources.market_ceilings import CEILINGS

    out = run()
    truth = out["truth_impressions"]
    logit, affinity = col(truth, "click_logit"), col(truth, "click_affinity")
    # no taste: the click logit without its affinity term; conversion: click x conversion-given-click
    assert col(truth, "p_click_no_taste") == pytest.approx(1 / (1 + np.exp(-(logit - affinity))))
    for c in CEILINGS:
        assert (col(truth, f"p_conversion_{c}") <= col(truth, f"p_click_{c}")).all()
    # the ceilings rise toward the oracle on the log's labels
    from components.training.metrics import auc

    for task in sim.SimulatorSource.tasks:
        y = col(out["impressions"], task)
        aucs = [auc(col(truth, f"p_{task}_{c}"), y) for c in CEILINGS] + [auc(col(truth, f"p_{task}"), y)]
        assert aucs == sorted(aucs), (task, aucs)
    # computing them draws no random number: without them every logged table is the same
    monkeypatch.setattr(market, "ceiling_probabilities", lambda *a: {})
    monkeypatch.setattr(market, "ceiling_columns", lambda tasks: [])
    bare = sim.simulate(make_settings(shared_data, tmp_path / "bare"), START, DAYS)
    for name in sim.RAW_TABLES + sim.TRUTH_TABLES:
        expected = out[name]
        if name == "truth_impressions":
            expected = expected.drop_columns([c for c in expected.column_names if c.endswith(tuple(CEILINGS))])
        assert bare[name].equals(expected), name

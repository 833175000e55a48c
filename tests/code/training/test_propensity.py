"""The repeated-exposure propensity and IPW weights (components/training/propensity.py): exact counts on hand
logs, weight properties on random logs, and tracking of the simulator's known retargeting policy."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings as hyp_settings, strategies as st

from components.training.propensity import ExposurePropensity, pair_history
from components.schemas import TIMESTAMP

H_US = 86_400_000_000  # one day, the horizon used below


def log(rows: list[tuple[int, int, float, int, int]]) -> pa.Table:
    """(user, ad, time in days, exposure_index, click) -> an impressions table."""
    u, a, t, e, c = (list(x) for x in zip(*rows))
    return pa.table({
        "user_id": pa.array(u, pa.int64()),
        "ad_id": pa.array(a, pa.int64()),
        "event_time": pa.array([round(x * H_US) for x in t], pa.int64()).cast(TIMESTAMP),
        "exposure_index": pa.array(e, pa.int32()),
        "click": pa.array(c, pa.int8()),
    })


def random_log(seed: int, n_pairs: int = 60, retarget: float = 0.8) -> pa.Table:
    """A log where clicked pairs are re-shown much more often: each pair gets a first exposure, then
    continues with probability `retarget` after a click and 0.1 otherwise."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_pairs):  # test data generator, not the code under test
        t, k, clicked = rng.uniform(0, 3), 1, False
        while True:
            c = int(rng.random() < 0.3)
            rows.append((p % 7, p, t, k, c))
            clicked |= bool(c)
            if rng.random() > (retarget if clicked else 0.1) or k >= 6:
                break
            t, k = t + rng.uniform(0, 1.5), k + 1
    return log(rows)


def test_pair_history_counts_clicks_strictly_before_in_time_order() -> None:
    # rows deliberately out of order; pair (1, 10) clicked on exposure 2; pair (2, 20) starts at exposure 3
    t = log([(1, 10, 2.0, 3, 0), (2, 20, 0.5, 3, 1), (1, 10, 0.0, 1, 0), (1, 10, 1.0, 2, 1), (2, 20, 0.7, 4, 0)])
    h = pair_history(t)
    assert h.clicked_before.tolist() == [True, False, False, False, True]
    assert h.clicked_through.tolist() == [True, True, False, True, True]
    assert h.complete.tolist() == [True, False, True, True, False]
    assert h.next_gap_us.tolist() == [-1, round(0.2 * H_US), H_US, H_US, -1]


def test_fit_counts_at_risk_and_reached_exactly() -> None:
    t = log([
        (1, 1, 0.0, 1, 1), (1, 1, 0.5, 2, 0), (1, 1, 3.0, 3, 0),  # clicked at 1: reached 2 within H, not 3
        (1, 2, 0.0, 1, 0), (1, 2, 0.2, 2, 0),                      # never clicked: reached 2
        (2, 3, 0.1, 1, 0),                                         # never clicked: never re-shown
        (2, 4, 0.0, 2, 1), (2, 4, 0.1, 3, 0),                      # left-censored pair: not fitted
        (3, 5, 3.5, 1, 0),                                         # after log_end - H: right-censored
    ])
    p = ExposurePropensity(horizon_days=1.0, prior_strength=0.0).fit(t)
    # at risk of exposure 2: (1,1)@1 clicked -> reached; (1,2)@1 never -> reached; (2,3)@1 never -> no
    assert p.at_risk[2].tolist() == [2, 1] and p.reached[2].tolist() == [1, 1]
    # at risk of exposure 3: (1,1)@2 clicked -> next gap 2.5 days > H; (1,2)@2 never -> no next row
    assert p.at_risk[3].tolist() == [1, 1] and p.reached[3].tolist() == [0, 0]
    assert p.fit_rows == 5  # (1,1)@3.0 and (3,5)@3.5 are after log_end (3.5) - H
    assert p.rho[2, 0] == pytest.approx(0.5) and p.rho[2, 1] == pytest.approx(1.0)
    assert p.rho[2, 2] == pytest.approx(2 / 3)  # pooled over both states
    w = p.weights(t, "click", w_min=0.1)
    # positives: (1,1)@1 first exposure -> 1; (2,4)@2 left-censored -> pooled: clip(0.5 / (2/3)) = 0.75
    assert w.dtype == np.float32
    assert w.tolist() == pytest.approx([1, 1, 1, 1, 1, 1, 0.75, 1, 1])


def test_weights_of_clicked_pairs_follow_the_propensity_ratio() -> None:
    never_reshown = [(9, 9 + i, 0.0, 1, 0) for i in range(6)]
    t = log([(1, 1, 0.0, 1, 1), (1, 1, 0.1, 2, 1), (1, 2, 0.0, 1, 0), (1, 2, 0.1, 2, 1), *never_reshown,
             (8, 1, 3.0, 1, 0)])  # the last row only sets the log's end
    p = ExposurePropensity(horizon_days=1.0, prior_strength=0.0).fit(t)
    # exposure 2: clicked 1/1 reached, never 1/7 reached
    assert p.rho[2, :2].tolist() == pytest.approx([1 / 7, 1.0])
    w = p.weights(t, "click", w_min=0.05)
    assert w[1] == pytest.approx(1 / 7)  # clicked before, exposure 2: pi_first / pi_2 = (1/7) / 1
    assert w[3] == 1.0  # positive at exposure 2 but never clicked before
    assert p.weights(t, "click", w_min=0.5)[1] == pytest.approx(0.5)  # clipped at w_min
    assert p.weight_summary()["weights"]["share_clipped"] == pytest.approx(0.5)


@hyp_settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), w_min=st.floats(0.01, 1.0), prior=st.sampled_from([0.0, 5.0, 50.0]))
def test_weights_lie_in_w_min_1_and_are_1_on_first_exposures_and_negatives(seed: int, w_min: float,
                                                                            prior: float) -> None:
    t = random_log(seed)
    p = ExposurePropensity(horizon_days=1.0, prior_strength=prior, max_exposure=4).fit(t)
    w = p.weights(t, "click", w_min=w_min)
    exposure = t.column("exposure_index").to_numpy()
    click = t.column("click").to_numpy()
    assert w.shape == (t.num_rows,)
    assert np.all((w >= np.float32(w_min)) & (w <= 1.0))
    assert np.all(w[(exposure == 1) | (click == 0)] == 1.0)
    # never clicked before -> exactly 1 too; so only pairs with an earlier click can be down-weighted
    assert np.all(w[~pair_history(t).clicked_before] == 1.0)


def test_round_trip_and_errors() -> None:
    t = random_log(3)
    p = ExposurePropensity(horizon_days=0.5).fit(t)
    q = ExposurePropensity.from_dict(json.loads(json.dumps(p.to_dict())))
    np.testing.assert_array_equal(q.rho[2:], p.rho[2:])
    np.testing.assert_array_equal(q.weights(t, "click"), p.weights(t, "click"))
    with pytest.raises(RuntimeError, match="not fitted"):
        ExposurePropensity().weights(t, "click")
    with pytest.raises(ValueError, match="lacks columns"):
        ExposurePropensity().fit(t.drop_columns(["exposure_index"]))
    with pytest.raises(ValueError, match="w_min"):
        p.weights(t, "click", w_min=0.0)
    with pytest.raises(ValueError, match="full horizon"):
        ExposurePropensity(horizon_days=30).fit(t)


# --- the simulator: the estimate must track the known retargeting policy -------------------------------

SMALL = {"n_users": 1200, "sessions_per_user_day": 2.0,
         "n_initial_ads": 1000, "new_ads_per_day": 50, "new_users_per_day": 20}
DAYS = 4


@pytest.fixture(scope="module")
def simulated(shared_data, tmp_path_factory) -> dict[float, dict[str, pa.Table]]:
    from components.config import load_settings
    from components.sources.simulator import simulate

    out = {}
    for share in (0.0, 0.3, 0.6):
        s = load_settings(environ={}, overrides={
            "home": str(tmp_path_factory.mktemp("prop")), "pipeline": {"shared_data": str(shared_data)},
            "simulator": {**SMALL, "retarget_share": share}}).resolved()
        out[share] = simulate(s, dt.date(2026, 11, 1), DAYS)
    return out


def truth_retarget_rate(imp: pa.Table, truth: pa.Table, n: int) -> float:
    """From the ground truth: among clicked pairs at exposure n-1 with a full day left in the log, the
    share whose next exposure came within a day from a retargeting draw (reference implementation)."""
    assert imp.column("request_id").equals(truth.column("request_id"))
    u, a = imp.column("user_id").to_numpy(), imp.column("ad_id").to_numpy()
    t = imp.column("event_time").cast("int64").to_numpy()
    k, c = imp.column("exposure_index").to_numpy(), imp.column("click").to_numpy()
    rt = truth.column("policy").to_numpy(zero_copy_only=False) == "retarget"
    o = np.lexsort((k, t, a, u))
    u, a, t, k, c, rt = u[o], a[o], t[o], k[o], c[o], rt[o]
    same = np.r_[(u[1:] == u[:-1]) & (a[1:] == a[:-1]), False]
    pair = np.cumsum(np.r_[True, ~same[:-1]])
    clicked = np.zeros(len(u), bool)
    for p_id in np.unique(pair[c == 1]):  # reference: slow but obvious
        idx = np.flatnonzero(pair == p_id)
        clicked[idx] = np.cumsum(c[idx]) > 0
    risk = (k == n - 1) & clicked & (t <= t.max() - H_US)
    nxt = np.r_[t[1:], 0] - t
    hit = same & (nxt <= H_US) & np.r_[rt[1:], False]
    return float(hit[risk].mean())


def test_propensity_tracks_the_simulated_retargeting_policy(simulated) -> None:
    cap = 3  # retarget_frequency_cap (default)
    fits = {share: ExposurePropensity(horizon_days=1.0).fit(d["impressions"]) for share, d in simulated.items()}
    p = fits[0.3]
    for n in (2, 3):  # below the frequency cap: the policy re-shows clicked ads
        never, clicked = p.rho[n, 0], p.rho[n, 1]
        assert clicked > 8 * never
        # The click-driven excess re-exposure equals what the truth attributes to retargeting draws.
        excess = (clicked - never) / (1 - never)
        truth = truth_retarget_rate(simulated[0.3]["impressions"], simulated[0.3]["truth_impressions"], n)
        assert excess == pytest.approx(truth, abs=0.05)
    # Past the frequency cap retargeting (almost) stops, and so does the estimated lift.
    assert p.rho[cap + 1, 1] < 0.4 * p.rho[cap, 1]
    # More retargeting -> higher estimated re-exposure after a click; organic re-exposure unchanged.
    assert fits[0.0].rho[2, 1] < fits[0.3].rho[2, 1] < fits[0.6].rho[2, 1]
    assert fits[0.0].rho[2, 0] == pytest.approx(fits[0.6].rho[2, 0], rel=0.15)
    # Without retargeting a click lifts re-exposure only through the organic ranker's interest term.
    assert (fits[0.0].rho[2, 1] - fits[0.0].rho[2, 0]) / (1 - fits[0.0].rho[2, 0]) < 0.05


def test_weights_collapse_towards_1_without_retargeting(simulated) -> None:
    summaries = {}
    for share in (0.0, 0.3):
        imp = simulated[share]["impressions"]
        p = ExposurePropensity(horizon_days=1.0).fit(imp)
        w = p.weights(imp, "click", w_min=0.05)
        assert np.all((w >= 0.05) & (w <= 1))
        summaries[share] = p.weight_summary()["weights"]
    on, off = summaries[0.3], summaries[0.0]
    assert on["mean"] < 0.5 and on["share_clipped"] > 0.25  # retargeted positives: heavily down-weighted
    assert off["mean"] > 0.9 and off["share_clipped"] == 0.0 and off["quantiles"]["min"] > 0.4

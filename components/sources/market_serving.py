"""The demo marketplace's serving policy and labels, one round of requests at a time: retargeting slots,
the organic ranker (Plackett-Luce over a candidate sample), the exposure index, and the click and
conversion labels from the known model (docs/simulator.md). Functions of the market's state
(components/sources/market.py ``Marketplace``); vectorised over the round's requests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from components.sources.market import Marketplace

US_PER_HOUR = 3_600_000_000
US_PER_DAY = 24 * US_PER_HOUR
KEY_STRIDE = 1 << 20  # (user, ad) pairs are keyed user_index * KEY_STRIDE + ad_index; ads < 2**20
NO_CLICK = np.iinfo(np.int64).min // 4  # "never clicked" in the last-click-time state
TYPE_SHARE = 0.5  # variance share of the taxonomy taste that is article-type specific (rest: sub-category)
CANDIDATE_CELLS_PER_CHUNK = 1_000_000  # bounds the organic ranker's (requests x candidates) matrices


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, elementwise."""
    return 1.0 / (1.0 + np.exp(-x))


def serve_round(
    m: "Marketplace",
    rng: np.random.Generator,
    round_start: int,
    users: np.ndarray,
    times: np.ndarray,
    n_active: np.ndarray,
    day_keys: np.ndarray,
    day_counts: np.ndarray,
) -> dict[str, np.ndarray]:
    """Serve one round's requests (``users`` at ``times``): the ads shown, their exposure index and labels,
    and the ground truth; updates the market's state that later rounds see (last click per article type,
    retargeting pool). ``day_keys`` / ``day_counts``: exposures earlier today, returned updated."""
    cfg = m.cfg
    k, R = cfg.positions, users.size
    is_rt, rt_ad, rt_prop, organic_factor = _retargeting_slots(m, rng, round_start, users, day_keys, day_counts)

    # 2. Organic ranking: candidates drawn uniformly from live ads, scored by popularity plus the
    # user's coarse (sub-category) interest, Gumbel-top-k = Plackett-Luce sampling without repeats.
    org_ad, org_pl, org_ok = organic_ranking(m, rng, users, n_active, rt_ad)

    org_rank = np.clip(np.cumsum(~is_rt, axis=1) - 1, 0, k - 1)
    ad = np.where(is_rt, rt_ad, np.take_along_axis(org_ad, org_rank, axis=1))
    propensity = np.where(is_rt, rt_prop, organic_factor * np.take_along_axis(org_pl, org_rank, axis=1))
    valid = np.where(is_rt, True, np.take_along_axis(org_ok, org_rank, axis=1)).ravel()
    # 3. Display positions in random order, so position is independent of the policy's choice.
    position = np.argsort(rng.random((R, k)), axis=1) + 1
    u_click, u_conv = rng.random(R * k), rng.random(R * k)

    user = np.repeat(users, k)[valid]
    time = np.repeat(times, k)[valid]
    ad, position, propensity = ad.ravel()[valid], position.ravel()[valid], propensity.ravel()[valid]
    policy = is_rt.ravel()[valid].astype(np.int8)
    u_click, u_conv = u_click[valid], u_conv[valid]

    key, exposure, day_keys, day_counts = _exposures(m, user, ad, day_keys, day_counts)
    labels = _labels(m, user, ad, time, position, exposure, key, u_click, u_conv)
    return {
        "valid": valid,
        "time": time,
        "user": user,
        "ad": ad,
        "position": position,
        "exposure": exposure,
        "click": labels["click"],
        "conversion": labels["conversion"],
        "policy": policy,
        "propensity": propensity,
        "p_click": labels["p_click"],
        "p_cvr": labels["p_cvr"],
        "click_logit": labels["click_logit"],
        "click_affinity": labels["click_affinity"],
        "conversion_affinity": labels["conversion_affinity"],
        "temporal": labels["temporal"],
        "hours_since": labels["hours_since"],
        "day_keys": day_keys,
        "day_counts": day_counts,
    }


def _retargeting_slots(
    m: "Marketplace", rng: np.random.Generator, round_start: int, users: np.ndarray, day_keys: np.ndarray,
    day_counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(is a retargeting slot, its ad, its propensity, the organic slots' probability factor), each
    (requests x positions).

    1. Retargeting slots: each draw is a retargeting one with probability retarget_share when the
    user has eligible clicked ads left, showing one of them uniformly (no repeats in a request)."""
    cfg = m.cfg
    k, R = cfg.positions, users.size
    share = cfg.retarget_share
    keep = m.rt_time >= round_start - cfg.retarget_window_days * US_PER_DAY
    m.rt_keys, m.rt_time = m.rt_keys[keep], m.rt_time[keep]
    # Frequency cap, checked at the round's start: an ad is retargeted only while the user has seen
    # it fewer than retarget_frequency_cap times.
    seen = lookup_counts(m.seen_keys, m.seen_counts, m.rt_keys)
    seen += lookup_counts(day_keys, day_counts, m.rt_keys)
    pool = m.rt_keys[seen < cfg.retarget_frequency_cap]
    lo = np.searchsorted(pool, users * KEY_STRIDE)
    n_elig = np.searchsorted(pool, (users + 1) * KEY_STRIDE) - lo
    u_kind, u_pick = rng.random((R, k)), rng.random((R, k))
    picked = np.full((R, k), np.iinfo(np.int64).max, np.int64)  # offsets taken, for no repeats
    is_rt = np.zeros((R, k), bool)
    rt_ad = np.full((R, k), -1, np.int64)
    rt_prop = np.zeros((R, k))
    organic_factor = np.ones((R, k))
    n_rt = np.zeros(R, np.int64)
    for j in range(k):
        remaining = n_elig - n_rt
        can = remaining > 0
        take = can & (u_kind[:, j] < share)
        off = np.floor(u_pick[:, j] * np.maximum(remaining, 1)).astype(np.int64)
        taken = np.sort(picked, axis=1)
        for col in range(k):  # the off-th offset not yet taken: skip taken ones in ascending order
            off += taken[:, col] <= off
        picked[take, j] = off[take]
        is_rt[:, j] = take
        rt_ad[take, j] = pool[lo[take] + off[take]] % KEY_STRIDE
        rt_prop[:, j] = np.where(take, share / np.maximum(remaining, 1), 0.0)
        organic_factor[:, j] = np.where(can, 1.0 - share, 1.0)
        n_rt += take
    return is_rt, rt_ad, rt_prop, organic_factor


def _exposures(m: "Marketplace", user: np.ndarray, ad: np.ndarray, day_keys: np.ndarray,
               day_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pair key, exposure index, today's exposure keys and counts updated) of the round's impressions."""
    # 4. Exposure index: earlier days + earlier rounds today + earlier requests in this round.
    key = user * KEY_STRIDE + ad
    order = np.argsort(key, kind="stable")  # stable: requests are in time order
    ks = key[order]
    first = np.r_[True, ks[1:] != ks[:-1]] if ks.size else np.zeros(0, bool)
    idx = np.arange(ks.size)
    rank = np.empty(ks.size, np.int64)
    rank[order] = idx - np.maximum.accumulate(np.where(first, idx, 0))
    exposure = lookup_counts(m.seen_keys, m.seen_counts, key)
    exposure += lookup_counts(day_keys, day_counts, key) + rank + 1
    starts = np.flatnonzero(first)
    day_keys, day_counts = merge_counts(day_keys, day_counts, ks[starts], np.diff(np.r_[starts, ks.size]))
    return key, exposure, day_keys, day_counts


def _labels(m: "Marketplace", user: np.ndarray, ad: np.ndarray, time: np.ndarray, position: np.ndarray,
            exposure: np.ndarray, key: np.ndarray, u_click: np.ndarray, u_conv: np.ndarray) -> dict[str, np.ndarray]:
    """The click and conversion labels of the round's impressions from the known model (with the
    probabilities and their parts, for the ground truth); updates the state later rounds see."""
    cfg = m.cfg
    # 5. Labels from the known model.
    a = affinities(m, user, ad)
    cat = m.cat.codes
    atype = cat["article_type"][m.ad_prod[ad]]
    last = m.last_click[user, atype]
    clicked_before = last > NO_CLICK
    hours_since = np.where(clicked_before, (time - last) / US_PER_HOUR, np.inf)
    decay = np.exp(-hours_since / cfg.temporal_decay_hours)  # 0 when never clicked (inf hours)
    temporal = np.where(clicked_before & m.user_temporal[user], cfg.temporal_boost * decay, 0.0)
    click_logit = (
        cfg.click_base_logit
        + m.user_bias[user]
        + m.ad_quality[ad]
        + a[0]
        + temporal
        - cfg.position_bias * np.log2(position)
        - cfg.fatigue * (exposure - 1)
    )
    p_click = sigmoid(click_logit)
    p_cvr = sigmoid(cfg.conversion_base_logit + a[1])
    click = u_click < p_click
    conversion = click & (u_conv < p_cvr)

    # 6. State for later rounds: last click time per (user, type), the retargeting pool.
    np.maximum.at(m.last_click, (user[click], atype[click]), time[click])
    m.rt_keys, m.rt_time = merge_latest(m.rt_keys, m.rt_time, key[click], time[click])
    return {
        "click": click,
        "conversion": conversion,
        "p_click": p_click,
        "p_cvr": p_cvr,
        "click_logit": click_logit,
        "click_affinity": a[0],
        "conversion_affinity": a[1],
        "temporal": temporal,
        "hours_since": hours_since,
    }


def organic_ranking(
    m: "Marketplace", rng: np.random.Generator, users: np.ndarray, n_active: np.ndarray, exclude: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plackett-Luce top-k over a uniform candidate sample, chunked over requests.

    Returns the k drawn ads per request in draw order, the conditional probability of each draw
    given the candidates and the earlier draws, and whether the draw is real (a request whose
    candidates ran out of distinct ads gets fewer).
    """
    cfg = m.cfg
    k, C, R = cfg.positions, cfg.n_candidates, users.size
    sub = m.cat.codes["sub_category"]
    ads = np.empty((R, k), np.int64)
    pl = np.empty((R, k))
    ok = np.empty((R, k), bool)
    step = max(1, CANDIDATE_CELLS_PER_CHUNK // C)
    interest = m.pref[0]["sub"]
    for lo in range(0, R, step):
        hi = min(R, lo + step)
        n = hi - lo
        cand = np.floor(rng.random((n, C)) * n_active[lo:hi, None]).astype(np.int64)
        gumbel = rng.gumbel(size=(n, C))
        cand.sort(axis=1)
        drop = np.zeros((n, C), bool)
        drop[:, 1:] = cand[:, 1:] == cand[:, :-1]  # candidates are a set
        for j in range(k):  # never show an ad twice in one request
            drop |= cand == exclude[lo:hi, j : j + 1]
        score = m.ad_popularity[cand] + cfg.organic_interest_weight * interest[
            users[lo:hi, None], sub[m.ad_prod[cand]]
        ]
        score[drop] = -np.inf
        perturbed = score + gumbel
        top = np.argpartition(-perturbed, k - 1, axis=1)[:, :k]
        draw_order = np.argsort(-np.take_along_axis(perturbed, top, 1), axis=1, kind="stable")
        top = np.take_along_axis(top, draw_order, 1)  # (n, k) in draw order
        s_top = np.take_along_axis(score, top, axis=1)
        smax = score.max(axis=1, keepdims=True)
        total = np.exp(score - smax).sum(axis=1, keepdims=True)
        e_top = np.exp(s_top - smax)
        before = np.cumsum(e_top, axis=1) - e_top  # mass of the ads drawn earlier
        ads[lo:hi] = np.take_along_axis(cand, top, axis=1)
        pl[lo:hi] = e_top / np.maximum(total - before, e_top)
        ok[lo:hi] = np.isfinite(s_top)
    return ads, pl, ok


def affinity_weights(m: "Marketplace") -> tuple[float, float]:
    """(taxonomy weight, hidden-content weight) of the affinity: ``sqrt(1 - w)`` and ``sqrt(w / 2)``,
    ``w`` the content weight."""
    w = m.cfg.content_weight
    return np.sqrt(1 - w), np.sqrt(w / 2)


def affinity_terms(m: "Marketplace", user: np.ndarray, ad: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Per task (click, conversion), the unscaled parts of each (user, ad) pair's taste: ``taxonomy``
    (sub-category and article type, what the ad's own fields show) and ``hidden`` (colour and usage,
    which only the title and photo reveal)."""
    codes = m.cat.codes
    prod = m.ad_prod[ad]
    sub, atype = codes["sub_category"][prod], codes["article_type"][prod]
    colour, usage = codes["colour"][prod], codes["usage"][prod]
    out = []
    for p in m.pref:
        taxonomy = np.sqrt(1 - TYPE_SHARE) * p["sub"][user, sub] + np.sqrt(TYPE_SHARE) * p["type"][user, atype]
        hidden = p["colour"][user, colour] + p["usage"][user, usage]
        out.append({"taxonomy": taxonomy, "hidden": hidden})
    return out


def affinities(m: "Marketplace", user: np.ndarray, ad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True click and conversion affinity of each (user, ad) pair (see docs/simulator.md)."""
    tax, content = affinity_weights(m)
    click, conv = (m.cfg.preference_scale * (tax * t["taxonomy"] + content * t["hidden"])
                   for t in affinity_terms(m, user, ad))
    return click, conv


def lookup_counts(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
    """counts[key] for each query key (0 when absent); ``keys`` sorted and unique."""
    if keys.size == 0:
        return np.zeros(query.size, np.int64)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return np.where(keys[pos] == query, counts[pos], 0)


def merge_counts(
    keys: np.ndarray, counts: np.ndarray, new_keys: np.ndarray, new_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Add counts per key; both inputs sorted by key, the output too."""
    if new_keys.size == 0:
        return keys, counts
    allk = np.concatenate([keys, new_keys])
    uniq, inv = np.unique(allk, return_inverse=True)
    summed = np.bincount(inv, weights=np.concatenate([counts, new_counts]), minlength=uniq.size)
    return uniq, summed.astype(np.int64)


def merge_latest(
    keys: np.ndarray, times: np.ndarray, new_keys: np.ndarray, new_times: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Union of (key, time) pairs keeping the latest time per key, sorted by key."""
    if new_keys.size == 0:
        return keys, times
    allk, allt = np.concatenate([keys, new_keys]), np.concatenate([times, new_times])
    order = np.lexsort((allt, allk))
    allk, allt = allk[order], allt[order]
    last = np.r_[allk[1:] != allk[:-1], True]
    return allk[last], allt[last]

"""The demo marketplace: real fashion products as ads, simulated users and a log with known labels.

DESIGN.md section 5. Ads are real products from ``../shared/data/fashion`` (title, taxonomy, photo);
users, the serving policy and the ``click`` / ``conversion`` labels come from a generative model whose
every parameter is a knob of ``SimulatorConfig``. The true probabilities, policy propensities and
latent preferences go to a separate ground-truth folder (``settings.truth_dir``), never to the raw
tables, so downstream analyses can be checked against the truth (oracle AUC, planted entanglement,
repeated-exposure bias, semantic-temporal interest). The model, as formulas, is in docs/simulator.md.

Time runs in ``rounds_per_day`` rounds per day. Inside a round everything is vectorised over the
round's requests; state that later rounds see (last click time per user and article type, the
retargeting pool, exposure counts) is updated between rounds, so clicks in one round change the
click probabilities and the ads shown in later rounds.

Determinism: every day draws from its own random streams seeded by ``(seed, stream, day index)``, and
day D reads only state built by days before it, so day D is byte-identical whatever window it was
simulated in. Knobs that only change probabilities (fatigue, temporal boost, preference correlation,
...) leave the random draws aligned ("common random numbers"), so comparing two values of a knob on the
same seed isolates its effect.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from components.schemas import LABEL_TYPE, TIMESTAMP, day_dir
from components.storage import write_json_atomic, write_parquet_atomic

if TYPE_CHECKING:
    from components.config import Settings, SimulatorConfig
    from components.sources.fashion import FashionCatalog

US_PER_HOUR = 3_600_000_000
US_PER_DAY = 24 * US_PER_HOUR
KEY_STRIDE = 1 << 20  # (user, ad) pairs are keyed user_index * KEY_STRIDE + ad_index; ads < 2**20
NO_CLICK = np.iinfo(np.int64).min // 4  # "never clicked" in the last-click-time state
TASKS = ("click", "conversion")
RAW_TABLES = ("impressions", "ads", "users")
TRUTH_TABLES = ("truth_impressions", "truth_ads", "truth_users")

# Structural constants of the generative model (documented in docs/simulator.md).
SEGMENT_SHARE = 0.5  # variance share of a user's sub-category taste shared with their (gender, age band)
TYPE_SHARE = 0.5  # variance share of the taxonomy taste that is article-type specific (rest: sub-category)
AD_QUALITY_SD = 0.4  # ad-level click logit offset
POPULARITY_NOISE_SD = 0.5  # the policy sees quality only through this noise
USER_BIAS_SD = 0.25  # user-level click logit offset
ACCOUNT_AGE_EFFECT = 0.1  # older accounts click a little less (per sd of log account age)
INITIAL_WINDOW_US = US_PER_HOUR  # day 0: initial ads and users appear within the first hour
MIN_ACTIVE_PER_POSITION = 4  # a request is served only once this many ads per position exist
CANDIDATE_CELLS_PER_CHUNK = 1_000_000  # bounds the organic ranker's (requests x candidates) matrices

GENDERS = ("female", "male")
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
AGE_BAND_P = (0.24, 0.36, 0.2, 0.12, 0.08)
REGIONS = ("north", "south", "east", "west", "central")
POLICIES = ("organic", "retarget")

# Random streams: one generator per (stream, day) so that a day never consumes another day's draws.
_STREAM_STATIC, _STREAM_ADS, _STREAM_USERS, _STREAM_TRAFFIC = 0, 1, 2, 3


def _rng(seed: int, stream: int, day: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, day])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _timestamps(us: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64), pa.int64()).view(TIMESTAMP)


def _strings(vocab: tuple[str, ...] | list[str], codes: np.ndarray) -> pa.Array:
    return pa.array(list(vocab), pa.string()).take(pa.array(np.asarray(codes, dtype=np.int64)))


def _fixed_lists(matrix: np.ndarray) -> pa.Array:
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(m.ravel()), m.shape[1])


def _check_config(cfg: "SimulatorConfig") -> None:
    problems = []
    if not cfg.slots:
        problems.append("slots must name at least one placement")
    if cfg.n_users < 1:
        problems.append("n_users must be at least 1")
    if cfg.n_initial_ads < MIN_ACTIVE_PER_POSITION * cfg.positions:
        problems.append(f"n_initial_ads must be at least {MIN_ACTIVE_PER_POSITION} x positions")
    if cfg.n_candidates < 2 * cfg.positions:
        problems.append("n_candidates must be at least 2 x positions")
    if cfg.new_ads_per_day < 0 or cfg.new_users_per_day < 0:
        problems.append("new_ads_per_day and new_users_per_day must be >= 0")
    if cfg.n_advertisers < 1:
        problems.append("n_advertisers must be at least 1")
    if problems:
        raise ValueError("invalid simulator configuration: " + "; ".join(problems))


class _Marketplace:
    """The simulation state, advanced one day at a time by ``step()``."""

    def __init__(self, cfg: "SimulatorConfig", start: dt.date, catalog: "FashionCatalog") -> None:
        _check_config(cfg)
        self.cfg = cfg
        self.start = start
        self.cat = catalog
        self.day_index = 0
        self.n_sub = len(catalog.vocab["sub_category"])
        self.n_type = len(catalog.vocab["article_type"])
        self.n_col = len(catalog.vocab["colour"])
        self.n_use = len(catalog.vocab["usage"])
        rho = cfg.preference_correlation
        self._rho = (rho, float(np.sqrt(max(0.0, 1.0 - rho * rho))))

        # --- static world: drawn once per seed, independent of the simulated window -------------
        rng = _rng(cfg.seed, _STREAM_STATIC)
        photo = np.flatnonzero(catalog.has_photo)
        plain = np.flatnonzero(~catalog.has_photo)
        self.photo_pool = photo[rng.permutation(photo.size)]
        self.plain_pool = plain[rng.permutation(plain.size)]
        n_seg = len(GENDERS) * len(AGE_BANDS)
        seg_click = rng.standard_normal((n_seg, self.n_sub))
        self.seg_sub = (seg_click, self._correlated(seg_click, rng.standard_normal((n_seg, self.n_sub))))
        # Advertisers: each brand (title's first word) belongs to one advertiser; campaigns are an
        # advertiser's product lines (sub-categories), each with its own typical bid.
        self.brand_advertiser = rng.integers(1, cfg.n_advertisers + 1, size=len(catalog.vocab["brand"]))
        self.campaign_bid = np.exp(rng.normal(np.log(0.4), 0.5, size=(cfg.n_advertisers + 1, self.n_sub)))

        # --- growing state --------------------------------------------------------------------
        self.ads_wanted = 0  # ads asked for so far (drives the cumulative photo share)
        self.photo_used = 0
        self.plain_used = 0
        self.ad_prod = np.empty(0, np.int64)  # catalogue row of each ad, ads in created_at order
        self.ad_created = np.empty(0, np.int64)
        self.ad_quality = np.empty(0)
        self.ad_popularity = np.empty(0)
        self.user_created = np.empty(0, np.int64)
        self.user_activity = np.empty(0)
        self.user_bias = np.empty(0)
        # per task (0 click, 1 conversion): sub-category, article-type, colour, usage preferences
        self.pref: list[dict[str, np.ndarray]] = [
            {k: np.empty((0, n)) for k, n in self._pref_dims().items()} for _ in TASKS
        ]
        self.last_click = np.empty((0, self.n_type), np.int64)  # time of the last click per (user, type)
        self.seen_keys = np.empty(0, np.int64)  # exposures before today: sorted (user, ad) keys
        self.seen_counts = np.empty(0, np.int64)
        self.rt_keys = np.empty(0, np.int64)  # retargeting pool: (user, ad) clicked, sorted
        self.rt_time = np.empty(0, np.int64)  # ... and the time of that pair's last click

    def _pref_dims(self) -> dict[str, int]:
        return {"sub": self.n_sub, "type": self.n_type, "colour": self.n_col, "usage": self.n_use}

    def _correlated(self, base: np.ndarray, independent: np.ndarray) -> np.ndarray:
        """A standard-normal array with correlation ``preference_correlation`` to ``base``."""
        a, b = self._rho
        return a * base + b * independent

    # --- one day --------------------------------------------------------------------------------
    def step(self) -> dict[str, pa.Table]:
        d = self.day_index
        day = self.start + dt.timedelta(days=d)
        day_start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp()) * 10**6
        ads, truth_ads = self._new_ads(d, day_start)
        users, truth_users = self._new_users(d, day_start)
        impressions, truth_imps = self._traffic(d, day, day_start)
        self.day_index += 1
        return {
            "impressions": impressions,
            "ads": ads,
            "users": users,
            "truth_impressions": truth_imps,
            "truth_ads": truth_ads,
            "truth_users": truth_users,
        }

    def _new_ads(self, d: int, day_start: int) -> tuple[pa.Table, pa.Table]:
        cfg, cat = self.cfg, self.cat
        rng = _rng(cfg.seed, _STREAM_ADS, d)
        wanted = cfg.n_initial_ads if d == 0 else cfg.new_ads_per_day
        # Photo share held over the cumulative count, so each day's split does not drift.
        photo_goal = int(np.floor(cfg.photo_share * (self.ads_wanted + wanted) + 0.5))
        photo_goal -= int(np.floor(cfg.photo_share * self.ads_wanted + 0.5))
        self.ads_wanted += wanted
        photo_left = self.photo_pool.size - self.photo_used
        plain_left = self.plain_pool.size - self.plain_used
        n_photo = min(photo_goal, photo_left)
        n_plain = min(wanted - n_photo, plain_left)
        n_photo = min(wanted - n_plain, photo_left)  # an exhausted pool is topped up from the other
        prod = np.concatenate(
            [
                self.photo_pool[self.photo_used : self.photo_used + n_photo],
                self.plain_pool[self.plain_used : self.plain_used + n_plain],
            ]
        )
        self.photo_used += n_photo
        self.plain_used += n_plain
        n = prod.size
        spread = INITIAL_WINDOW_US if d == 0 else US_PER_DAY
        created = day_start + rng.integers(0, spread, size=n)
        quality = rng.normal(0.0, AD_QUALITY_SD, size=n)
        popularity = quality + rng.normal(0.0, POPULARITY_NOISE_SD, size=n)
        bid_noise = rng.normal(0.0, 0.15, size=n)
        order = np.argsort(created, kind="stable")
        prod, created, bid_noise = prod[order], created[order], bid_noise[order]
        quality, popularity = quality[order], popularity[order]
        self.ad_prod = np.concatenate([self.ad_prod, prod])
        self.ad_created = np.concatenate([self.ad_created, created])
        self.ad_quality = np.concatenate([self.ad_quality, quality])
        self.ad_popularity = np.concatenate([self.ad_popularity, popularity])

        codes = cat.codes
        advertiser = self.brand_advertiser[codes["brand"][prod]]
        sub = codes["sub_category"][prod]
        bid = np.maximum(0.01, np.round(self.campaign_bid[advertiser, sub] * np.exp(bid_noise), 2))
        ad_id = pa.array(cat.product_id[prod], pa.int64())
        created_ts = _timestamps(created)
        ads = pa.table(
            {
                "ad_id": ad_id,
                "advertiser_id": pa.array(advertiser.astype(np.int64)),
                "campaign_id": pa.array(advertiser.astype(np.int64) * 1000 + sub + 1),
                "title": cat.title.take(pa.array(prod)),
                "image": cat.photos(cat.product_id[prod]),
                "bid": pa.array(bid, pa.float64()),
                "created_at": created_ts,
                "master_category": _strings(cat.vocab["master_category"], codes["master_category"][prod]),
                "sub_category": _strings(cat.vocab["sub_category"], sub),
                "article_type": _strings(cat.vocab["article_type"], codes["article_type"][prod]),
            }
        )
        truth = pa.table(
            {
                "ad_id": ad_id,
                "created_at": created_ts,
                "colour": _strings(cat.vocab["colour"], codes["colour"][prod]),
                "usage": _strings(cat.vocab["usage"], codes["usage"][prod]),
                "has_photo": pa.array(cat.has_photo[prod]),
                "quality": pa.array(quality),
                "popularity": pa.array(popularity),
            }
        )
        return ads, truth

    def _new_users(self, d: int, day_start: int) -> tuple[pa.Table, pa.Table]:
        cfg = self.cfg
        rng = _rng(cfg.seed, _STREAM_USERS, d)
        n = cfg.n_users if d == 0 else cfg.new_users_per_day
        first_id = self.user_created.size + 1
        spread = INITIAL_WINDOW_US if d == 0 else US_PER_DAY
        created = np.sort(day_start + rng.integers(0, spread, size=n))
        gender = rng.integers(0, len(GENDERS), size=n)
        age = rng.choice(len(AGE_BANDS), size=n, p=AGE_BAND_P)
        region = rng.integers(0, len(REGIONS), size=n)
        log_age = rng.normal(5.5, 1.0, size=n)  # account age on the wider platform, log-days
        account_age = np.floor(np.exp(log_age)).astype(np.int64)
        activity = rng.lognormal(-0.18, 0.6, size=n)  # mean about 1: requests scale with it
        bias = rng.normal(0.0, USER_BIAS_SD, size=n) - ACCOUNT_AGE_EFFECT * (log_age - 5.5)
        segment = gender * len(AGE_BANDS) + age

        # Latent preferences: standard normals; conversion's are correlated with click's by rho,
        # component by component, so corr(click affinity, conversion affinity) = rho exactly.
        dims = self._pref_dims()
        click = {k: rng.standard_normal((n, m)) for k, m in dims.items()}
        indep = {k: rng.standard_normal((n, m)) for k, m in dims.items()}
        conv = {k: self._correlated(click[k], indep[k]) for k in dims}
        s, r = np.sqrt(SEGMENT_SHARE), np.sqrt(1 - SEGMENT_SHARE)
        click["sub"] = s * self.seg_sub[0][segment] + r * click["sub"]
        conv["sub"] = s * self.seg_sub[1][segment] + r * conv["sub"]
        for task, prefs in enumerate((click, conv)):
            for k in dims:
                self.pref[task][k] = np.vstack([self.pref[task][k], prefs[k]])
        self.user_created = np.concatenate([self.user_created, created])
        self.user_activity = np.concatenate([self.user_activity, activity])
        self.user_bias = np.concatenate([self.user_bias, bias])
        self.last_click = np.vstack([self.last_click, np.full((n, self.n_type), NO_CLICK, np.int64)])

        user_id = pa.array(np.arange(first_id, first_id + n, dtype=np.int64))
        created_ts = _timestamps(created)
        users = pa.table(
            {
                "user_id": user_id,
                "created_at": created_ts,
                "age_band": _strings(AGE_BANDS, age),
                "gender": _strings(GENDERS, gender),
                "region": _strings(REGIONS, region),
                "account_age_days": pa.array(account_age),
                "activity": pa.array(np.round(activity, 4)),
            }
        )
        cols: dict[str, pa.Array] = {
            "user_id": user_id,
            "created_at": created_ts,
            "segment": pa.array([f"{g}/{a}" for g in GENDERS for a in AGE_BANDS], pa.string()).take(
                pa.array(segment)
            ),
            "click_bias": pa.array(bias),
        }
        for name, prefs in (("click", click), ("conversion", conv)):
            for k in dims:
                cols[f"{name}_{k}_pref"] = _fixed_lists(prefs[k])
        vocab = {k: list(self.cat.vocab[v]) for k, v in
                 (("sub", "sub_category"), ("type", "article_type"), ("colour", "colour"), ("usage", "usage"))}
        truth = pa.table(cols).replace_schema_metadata({"pref_vocabulary": json.dumps(vocab)})
        return users, truth

    # --- traffic ------------------------------------------------------------------------------
    def _traffic(self, d: int, day: dt.date, day_start: int) -> tuple[pa.Table, pa.Table]:
        cfg = self.cfg
        rng = _rng(cfg.seed, _STREAM_TRAFFIC, d)
        day_end = day_start + US_PER_DAY
        k = cfg.positions
        # Requests: Poisson per user, scaled by activity and by the part of the day the user exists.
        start_u = np.maximum(self.user_created, day_start)
        n_req = rng.poisson(cfg.sessions_per_user_day * self.user_activity * (day_end - start_u) / US_PER_DAY)
        req_user = np.repeat(np.arange(self.user_created.size), n_req)
        span = (day_end - start_u)[req_user]
        req_time = start_u[req_user] + np.floor(rng.random(req_user.size) * span).astype(np.int64)
        placement = rng.integers(0, len(cfg.slots), size=req_user.size)
        order = np.lexsort((req_user, req_time))
        req_user, req_time, placement = req_user[order], req_time[order], placement[order]
        n_active = np.searchsorted(self.ad_created, req_time, side="right")
        served = n_active >= MIN_ACTIVE_PER_POSITION * k
        req_user, req_time, placement, n_active = (x[served] for x in (req_user, req_time, placement, n_active))
        req_round = (req_time - day_start) * cfg.rounds_per_day // US_PER_DAY
        bounds = np.searchsorted(req_round, np.arange(cfg.rounds_per_day + 1))

        parts: list[dict[str, np.ndarray]] = []
        day_keys = np.empty(0, np.int64)  # exposures earlier today (merged into seen_keys at day end)
        day_counts = np.empty(0, np.int64)
        round_len = US_PER_DAY // cfg.rounds_per_day
        for r in range(cfg.rounds_per_day):
            sl = slice(bounds[r], bounds[r + 1])
            round_start = day_start + r * round_len
            out = self._serve_round(
                rng, round_start, req_user[sl], req_time[sl], n_active[sl], day_keys, day_counts
            )
            day_keys, day_counts = out.pop("day_keys"), out.pop("day_counts")
            out["placement"] = np.repeat(placement[sl], k)[out["valid"]]
            out["request"] = np.repeat(np.arange(bounds[r], bounds[r + 1]), k)[out["valid"]]
            del out["valid"]
            parts.append(out)
        self.seen_keys, self.seen_counts = _merge_counts(self.seen_keys, self.seen_counts, day_keys, day_counts)

        cols = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        order = np.lexsort((cols["position"], cols["request"]))
        cols = {name: v[order] for name, v in cols.items()}
        return self._impression_tables(day, cols)

    def _serve_round(
        self,
        rng: np.random.Generator,
        round_start: int,
        users: np.ndarray,
        times: np.ndarray,
        n_active: np.ndarray,
        day_keys: np.ndarray,
        day_counts: np.ndarray,
    ) -> dict[str, np.ndarray]:
        cfg = self.cfg
        k, R = cfg.positions, users.size
        share = cfg.retarget_share

        # 1. Retargeting slots: each draw is a retargeting one with probability retarget_share when the
        # user has eligible clicked ads left, showing one of them uniformly (no repeats in a request).
        keep = self.rt_time >= round_start - cfg.retarget_window_days * US_PER_DAY
        self.rt_keys, self.rt_time = self.rt_keys[keep], self.rt_time[keep]
        # Frequency cap, checked at the round's start: an ad is retargeted only while the user has seen
        # it fewer than retarget_frequency_cap times.
        seen = _lookup_counts(self.seen_keys, self.seen_counts, self.rt_keys)
        seen += _lookup_counts(day_keys, day_counts, self.rt_keys)
        pool = self.rt_keys[seen < cfg.retarget_frequency_cap]
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

        # 2. Organic ranking: candidates drawn uniformly from live ads, scored by popularity plus the
        # user's coarse (sub-category) interest, Gumbel-top-k = Plackett-Luce sampling without repeats.
        org_ad, org_pl, org_ok = self._organic(rng, users, n_active, rt_ad)

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

        # 4. Exposure index: earlier days + earlier rounds today + earlier requests in this round.
        key = user * KEY_STRIDE + ad
        order = np.argsort(key, kind="stable")  # stable: requests are in time order
        ks = key[order]
        first = np.r_[True, ks[1:] != ks[:-1]] if ks.size else np.zeros(0, bool)
        idx = np.arange(ks.size)
        rank = np.empty(ks.size, np.int64)
        rank[order] = idx - np.maximum.accumulate(np.where(first, idx, 0))
        exposure = _lookup_counts(self.seen_keys, self.seen_counts, key)
        exposure += _lookup_counts(day_keys, day_counts, key) + rank + 1
        starts = np.flatnonzero(first)
        day_keys, day_counts = _merge_counts(day_keys, day_counts, ks[starts], np.diff(np.r_[starts, ks.size]))

        # 5. Labels from the known model.
        a = self._affinities(user, ad)
        cat = self.cat.codes
        atype = cat["article_type"][self.ad_prod[ad]]
        last = self.last_click[user, atype]
        clicked_before = last > NO_CLICK
        hours_since = np.where(clicked_before, (time - last) / US_PER_HOUR, np.inf)
        decay = np.exp(-hours_since / cfg.temporal_decay_hours)  # 0 when never clicked (inf hours)
        temporal = np.where(clicked_before, cfg.temporal_boost * decay, 0.0)
        click_logit = (
            cfg.click_base_logit
            + self.user_bias[user]
            + self.ad_quality[ad]
            + a[0]
            + temporal
            - cfg.position_bias * np.log2(position)
            - cfg.fatigue * (exposure - 1)
        )
        p_click = _sigmoid(click_logit)
        p_cvr = _sigmoid(cfg.conversion_base_logit + a[1])
        click = u_click < p_click
        conversion = click & (u_conv < p_cvr)

        # 6. State for later rounds: last click time per (user, type), the retargeting pool.
        np.maximum.at(self.last_click, (user[click], atype[click]), time[click])
        self.rt_keys, self.rt_time = _merge_latest(self.rt_keys, self.rt_time, key[click], time[click])
        return {
            "valid": valid,
            "time": time,
            "user": user,
            "ad": ad,
            "position": position,
            "exposure": exposure,
            "click": click,
            "conversion": conversion,
            "policy": policy,
            "propensity": propensity,
            "p_click": p_click,
            "p_cvr": p_cvr,
            "click_logit": click_logit,
            "click_affinity": a[0],
            "conversion_affinity": a[1],
            "temporal": temporal,
            "hours_since": hours_since,
            "day_keys": day_keys,
            "day_counts": day_counts,
        }

    def _organic(
        self, rng: np.random.Generator, users: np.ndarray, n_active: np.ndarray, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Plackett-Luce top-k over a uniform candidate sample, chunked over requests.

        Returns the k drawn ads per request in draw order, the conditional probability of each draw
        given the candidates and the earlier draws, and whether the draw is real (a request whose
        candidates ran out of distinct ads gets fewer).
        """
        cfg = self.cfg
        k, C, R = cfg.positions, cfg.n_candidates, users.size
        sub = self.cat.codes["sub_category"]
        ads = np.empty((R, k), np.int64)
        pl = np.empty((R, k))
        ok = np.empty((R, k), bool)
        step = max(1, CANDIDATE_CELLS_PER_CHUNK // C)
        interest = self.pref[0]["sub"]
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
            score = self.ad_popularity[cand] + cfg.organic_interest_weight * interest[
                users[lo:hi, None], sub[self.ad_prod[cand]]
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

    def _affinities(self, user: np.ndarray, ad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """True click and conversion affinity of each (user, ad) pair (see docs/simulator.md)."""
        cfg, codes = self.cfg, self.cat.codes
        prod = self.ad_prod[ad]
        sub, atype = codes["sub_category"][prod], codes["article_type"][prod]
        colour, usage = codes["colour"][prod], codes["usage"][prod]
        w = cfg.content_weight
        tax, content = np.sqrt(1 - w), np.sqrt(w / 2)
        out = []
        for p in self.pref:
            taxonomy = np.sqrt(1 - TYPE_SHARE) * p["sub"][user, sub] + np.sqrt(TYPE_SHARE) * p["type"][user, atype]
            hidden = p["colour"][user, colour] + p["usage"][user, usage]
            out.append(cfg.preference_scale * (tax * taxonomy + content * hidden))
        return out[0], out[1]

    def _impression_tables(self, day: dt.date, c: dict[str, np.ndarray]) -> tuple[pa.Table, pa.Table]:
        import pyarrow.compute as pc

        # request_id: <yyyymmdd>-<request number in the day>-<position>; unique across days.
        seq = pc.utf8_lpad(pc.cast(pa.array(c["request"] + 1), pa.string()), 7, "0")
        request_id = pc.binary_join_element_wise(
            day.strftime("%Y%m%d"), seq, pc.cast(pa.array(c["position"]), pa.string()), "-"
        )
        event_time = _timestamps(c["time"])
        user_id = pa.array(c["user"] + 1, pa.int64())
        ad_id = pa.array(self.cat.product_id[self.ad_prod[c["ad"]]], pa.int64())
        impressions = pa.table(
            {
                "event_time": event_time,
                "request_id": request_id,
                "user_id": user_id,
                "ad_id": ad_id,
                "slot": _strings(self.cfg.slots, c["placement"]),
                "position": pa.array(c["position"].astype(np.int32)),
                "exposure_index": pa.array(c["exposure"].astype(np.int32)),
                "click": pa.array(c["click"].astype(np.int8), LABEL_TYPE),
                "conversion": pa.array(c["conversion"].astype(np.int8), LABEL_TYPE),
            }
        )
        hours = c["hours_since"]
        truth = pa.table(
            {
                "request_id": request_id,
                "event_time": event_time,
                "user_id": user_id,
                "ad_id": ad_id,
                "policy": _strings(POLICIES, c["policy"]),
                "propensity": pa.array(c["propensity"]),
                "p_click": pa.array(c["p_click"]),
                "p_conversion_given_click": pa.array(c["p_cvr"]),
                "p_conversion": pa.array(c["p_click"] * c["p_cvr"]),
                "click_logit": pa.array(c["click_logit"]),
                "click_affinity": pa.array(c["click_affinity"]),
                "conversion_affinity": pa.array(c["conversion_affinity"]),
                "temporal_boost": pa.array(c["temporal"]),
                "hours_since_category_click": pa.array(
                    np.where(np.isfinite(hours), hours, 0.0), mask=~np.isfinite(hours)
                ),
            }
        )
        return impressions, truth


def _lookup_counts(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
    """counts[key] for each query key (0 when absent); ``keys`` sorted and unique."""
    if keys.size == 0:
        return np.zeros(query.size, np.int64)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return np.where(keys[pos] == query, counts[pos], 0)


def _merge_counts(
    keys: np.ndarray, counts: np.ndarray, new_keys: np.ndarray, new_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Add counts per key; both inputs sorted by key, the output too."""
    if new_keys.size == 0:
        return keys, counts
    allk = np.concatenate([keys, new_keys])
    uniq, inv = np.unique(allk, return_inverse=True)
    summed = np.bincount(inv, weights=np.concatenate([counts, new_counts]), minlength=uniq.size)
    return uniq, summed.astype(np.int64)


def _merge_latest(
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


# --- public surface ---------------------------------------------------------------------------------


def _fingerprint(settings: "Settings", start: dt.date) -> str:
    payload = json.dumps(
        {"simulator": settings.simulator.model_dump(mode="json"), "start": start.isoformat(),
         "data": str(Path(settings.shared_data).expanduser().resolve())},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _new_marketplace(settings: "Settings", start: dt.date) -> _Marketplace:
    from components.sources.fashion import load_catalog

    return _Marketplace(settings.simulator, start, load_catalog(settings.shared_data))


def simulate(settings: "Settings", start: dt.date | None = None, days: int | None = None) -> dict[str, pa.Table]:
    """Simulate ``days`` days of the marketplace opening on ``start`` (default: pipeline.start_date
    and pipeline.demo_days), and return the raw tables (``impressions``, ``ads``, ``users``) and the
    ground truth (``truth_impressions``, ``truth_ads``, ``truth_users``), each concatenated over days."""
    start = start or settings.pipeline.start_date
    days = settings.pipeline.demo_days if days is None else days
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    market = _new_marketplace(settings, start)
    per_day = [market.step() for _ in range(days)]
    return {name: pa.concat_tables([d[name] for d in per_day]) for name in RAW_TABLES + TRUTH_TABLES}


class _Cache:
    """Per process: the latest marketplace per configuration and its recent days, so delivering days
    in order simulates each day once (a day before the cached ones re-simulates from the start)."""

    max_markets = 2
    max_days = 14

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: OrderedDict[str, tuple[_Marketplace, dict[int, dict[str, pa.Table]]]] = OrderedDict()

    def day(self, settings: "Settings", start: dt.date, index: int) -> dict[str, pa.Table]:
        key = _fingerprint(settings, start)
        with self.lock:
            market, days = self.entries.get(key) or (None, {})
            if index in days:
                self.entries.move_to_end(key)
                return days[index]
            if market is None or market.day_index > index:
                market, days = _new_marketplace(settings, start), {}
            while market.day_index <= index:
                out = market.step()
                days[market.day_index - 1] = out
                for old in [d for d in days if d < market.day_index - self.max_days]:
                    del days[old]
            self.entries[key] = (market, days)
            self.entries.move_to_end(key)
            while len(self.entries) > self.max_markets:
                self.entries.popitem(last=False)
            return days[index]


_CACHE = _Cache()


class SimulatorSource:
    """The demo marketplace as a ``Source``: one simulated day per ``deliver`` call."""

    name = "simulator"
    tasks: tuple[str, ...] = TASKS

    def __init__(self, settings: "Settings") -> None:
        self.settings = settings

    def available_days(self) -> tuple[dt.date, dt.date]:
        start = self.settings.pipeline.start_date
        return start, start + dt.timedelta(days=self.settings.simulator.horizon_days - 1)

    def deliver(self, day: dt.date) -> dict[str, int]:
        """Write the day's raw impressions/ads/users and its ground truth; return raw rows per table."""
        first, last = self.available_days()
        if not first <= day <= last:
            raise ValueError(f"the simulator delivers days {first} to {last} (simulator.horizon_days); got {day}")
        from components.sources.landing import write_raw_day

        out = _CACHE.day(self.settings, first, (day - first).days)
        # refuses, before writing, a landing partition holding files the simulator did not write
        write_raw_day(self.settings, self.name, day, {table: out[table] for table in RAW_TABLES})
        for table in TRUTH_TABLES:
            truth_table = table[len("truth_"):]
            write_parquet_atomic(out[table], day_dir(self.settings.truth_dir, truth_table, day) / "part-0.parquet")
        meta = {
            "source": self.name,
            "start": first.isoformat(),
            "simulator": self.settings.simulator.model_dump(mode="json"),
        }
        write_json_atomic(self.settings.truth_dir / "simulator.json", meta)
        return {table: out[table].num_rows for table in RAW_TABLES}

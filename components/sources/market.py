"""The demo marketplace's generative model: the static world drawn once per seed (product pools, segment
tastes, advertisers and their bids), the growing state (ads, users and their latent preferences, exposure
counts, the retargeting pool) and ``Marketplace.step()``, which simulates one day: new ads, new users and
the day's traffic in ``rounds_per_day`` rounds. Serving a round (the policy and the labels) is in
components/sources/market_serving.py; the public surface (``simulate``, ``SimulatorSource``) in
components/sources/simulator.py, whose docstring describes the model and its determinism.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from components.schemas import LABEL_TYPE, TIMESTAMP
from components.sources.market_ceilings import ceiling_columns, ceiling_probabilities
from components.sources.market_serving import (
    NO_CLICK,
    US_PER_DAY,
    US_PER_HOUR,
    merge_counts,
    serve_round,
)

if TYPE_CHECKING:
    from components.config import SimulatorConfig
    from components.sources.fashion import FashionCatalog

TASKS = ("click", "conversion")

# Structural constants of the generative model (documented in docs/simulator.md; the labels' TYPE_SHARE
# is in market_serving.py).
SEGMENT_SHARE = 0.5  # variance share of a user's sub-category taste shared with their (gender, age band)
AD_QUALITY_SD = 0.4  # ad-level click logit offset
POPULARITY_NOISE_SD = 0.5  # the policy sees quality only through this noise
USER_BIAS_SD = 0.25  # user-level click logit offset
ACCOUNT_AGE_EFFECT = 0.1  # older accounts click a little less (per sd of log account age)
INITIAL_WINDOW_US = US_PER_HOUR  # day 0: initial ads and users appear within the first hour
MIN_ACTIVE_PER_POSITION = 4  # a request is served only once this many ads per position exist

GENDERS = ("female", "male")
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
AGE_BAND_P = (0.24, 0.36, 0.2, 0.12, 0.08)
REGIONS = ("north", "south", "east", "west", "central")
POLICIES = ("organic", "retarget")

# Random streams: one generator per (stream, day) so that a day never consumes another day's draws.
# _STREAM_TEMPORAL draws which new users the temporal boost applies to (temporal_user_share): a stream of
# its own, so the share changes no other draw.
_STREAM_STATIC, _STREAM_ADS, _STREAM_USERS, _STREAM_TRAFFIC, _STREAM_TEMPORAL = 0, 1, 2, 3, 4


def _rng(seed: int, stream: int, day: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, day])


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


class Marketplace:
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
        self.segment_sub_taste = tuple(np.sqrt(SEGMENT_SHARE) * s for s in self.seg_sub)  # per-segment mean
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
        self.user_segment = np.empty(0, np.int64)  # (gender, age band) code: the partial oracles read it
        self.user_temporal = np.empty(0, bool)  # the temporal boost applies to this user (temporal_user_share)
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
        temporal = _rng(cfg.seed, _STREAM_TEMPORAL, d).random(n) < cfg.temporal_user_share

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
        self.user_segment = np.concatenate([self.user_segment, segment])
        self.user_temporal = np.concatenate([self.user_temporal, temporal])
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
            "temporal_responsive": pa.array(temporal),
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
            out = serve_round(
                self, rng, round_start, req_user[sl], req_time[sl], n_active[sl], day_keys, day_counts
            )
            day_keys, day_counts = out.pop("day_keys"), out.pop("day_counts")
            out["placement"] = np.repeat(placement[sl], k)[out["valid"]]
            out["request"] = np.repeat(np.arange(bounds[r], bounds[r + 1]), k)[out["valid"]]
            del out["valid"]
            out.update(ceiling_probabilities(self, out["user"], out["ad"], out["click_logit"] - out["click_affinity"]))
            parts.append(out)
        self.seen_keys, self.seen_counts = merge_counts(self.seen_keys, self.seen_counts, day_keys, day_counts)

        cols = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        order = np.lexsort((cols["position"], cols["request"]))
        cols = {name: v[order] for name, v in cols.items()}
        return self._impression_tables(day, cols)

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
                **{name: pa.array(c[name]) for name in ceiling_columns(TASKS)},
                "hours_since_category_click": pa.array(
                    np.where(np.isfinite(hours), hours, 0.0), mask=~np.isfinite(hours)
                ),
            }
        )
        return impressions, truth

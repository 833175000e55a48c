"""Datasets for the experiments: one split, encoded once, shared by every variant and seed.

Every dataset is split three ways by time (the clean protocol, as the daily job's ``window_split``):
**train** (every day but the last two), **validation** (the day before the newest: every choice an
experiment makes - early stopping if used, the best α, the worst shared model - is made here) and
**test** (the newest day: every reported number, never seen by training or by a choice).

``simulated_market`` is the demo marketplace with known ground truth: the impressions joined with the
raw ad and user attributes (named like the training set's profile views, so the encoders give them the
right roles), days ``1..days-2`` train, day ``days-1`` validates and the last day tests. ``truth`` holds
the test day's true probabilities. Experiments that need the full feature pipeline (sequences, SEE,
semantic IDs) build a training set through ``components.steps`` instead; the real logs (Taobao,
MovieLens) have loaders here as the experiments that use them add them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings
    from components.training.encoders import FeatureEncoders


# The conflicting-taste marketplace of tests/model/test_model_behaviour.py and the experiments, and the small
# models they compare (d = 8 per table, MLP experts (64, 32)). Why each knob differs from the default:
# - preference_correlation -0.5: click and conversion tastes conflict (users click what they would not
#   buy), the entanglement STEM is meant to untangle; with the default 0.3 the tasks mostly agree.
# - content_weight 0: the default puts half the taste on colour and usage, which only the title/photo
#   carry; this table has no text or image features, so that half would be noise to every model alike.
# - preference_scale 1.5: taste is a larger share of the click logit, so ranking quality depends on it.
# - conversion_base_logit 0.5 (p(conv | click) about 0.6 at zero affinity instead of 0.07): 630 test-day
#   conversions instead of a few dozen, so a conversion AUC difference of 0.005 is not pure noise.
# - 1,000 users sending 4 sessions a day on 500 ads: enough impressions per user (about 20 a day) for a
#   user-id embedding to learn that user's taste in 5 days, at a size that trains in seconds.
CONFLICT_SIMULATOR: dict[str, Any] = {
    "seed": 7, "n_users": 1000, "new_users_per_day": 10, "n_initial_ads": 500, "new_ads_per_day": 20,
    "sessions_per_user_day": 4.0, "preference_correlation": -0.5, "content_weight": 0.0,
    "preference_scale": 1.5, "conversion_base_logit": 0.5,
}
CONFLICT_SIMULATOR_SMALL: dict[str, Any] = {**CONFLICT_SIMULATOR, "n_users": 300, "new_users_per_day": 5,
                                            "n_initial_ads": 150, "new_ads_per_day": 5}
CONFLICT_MODEL: dict[str, Any] = {"embedding_dim": 8, "expert_hidden": (64, 32), "gate_hidden": (16,),
                                  "tower_hidden": (32,), "mnse_combine": "sum", "sequence_encoder": None}


@dataclass
class Market:
    """A train / validation / test split by time, its encoders fitted on train, the encoded validation
    and test batches with their labels, and (on the simulator) the true probabilities of the test rows.
    Build one with :func:`encoded_market`."""

    name: str
    train: "pa.Table"
    valid: "pa.Table"
    test: "pa.Table"
    encoders: "FeatureEncoders"
    tasks: tuple[str, ...]
    test_batch: dict[str, Any] = field(repr=False, default_factory=dict)
    labels: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    valid_batch: dict[str, Any] = field(repr=False, default_factory=dict)
    valid_labels: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    truth: dict[str, np.ndarray] | None = field(repr=False, default=None)
    extra: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def test_users(self) -> np.ndarray:
        """The test rows' user ids (the bootstrap's groups)."""
        return self.test["user_id"].to_numpy()

    def split_text(self) -> str:
        """Which days train, validate and test, with their rows: ``days 1-5 train (98,840 rows), day 6
        validates (19,990 rows), day 7 tests, untouched (20,105 rows)`` (UTC days counted from the first
        training row's day; a real log's UTC dates instead, ``extra["calendar_dates"]``)."""
        days = {name: _utc_days(table) for name, table in (("train", self.train), ("valid", self.valid),
                                                          ("test", self.test))}
        first = int(days["train"].min())

        def span(d: np.ndarray) -> str:
            if self.extra.get("calendar_dates"):
                lo_d, hi_d = (str(np.datetime64(int(v), "D")) for v in (d.min(), d.max()))
                return lo_d if lo_d == hi_d else f"{lo_d}..{hi_d}"
            lo, hi = int(d.min()) - first + 1, int(d.max()) - first + 1
            return f"day {lo}" if lo == hi else f"days {lo}-{hi}"

        return (f"{span(days['train'])} train ({self.train.num_rows:,} rows), {span(days['valid'])} validates "
                f"({self.valid.num_rows:,} rows), {span(days['test'])} tests, untouched ({self.test.num_rows:,} rows)")


def encoded_market(name: str, train: "pa.Table", valid: "pa.Table", test: "pa.Table",
                   encoders: "FeatureEncoders", tasks: tuple[str, ...], truth: dict[str, np.ndarray] | None = None,
                   extra: dict[str, Any] | None = None) -> Market:
    """A :class:`Market` with the validation and test rows encoded by ``encoders`` and their labels read;
    ``extra`` gets ``first_exposure`` (test rows with ``exposure_index == 1``) unless it has one."""
    for part, table in (("train", train), ("validation", valid), ("test", test)):
        if table.num_rows == 0:
            raise ValueError(f"{name}: the time split leaves no {part} rows ({train.num_rows} train, "
                             f"{valid.num_rows} validation, {test.num_rows} test)")
    extra = dict(extra or {})
    if "exposure_index" in test.column_names:
        extra.setdefault("first_exposure", test["exposure_index"].to_numpy() == 1)
    return Market(
        name=name, train=train, valid=valid, test=test, encoders=encoders, tasks=tasks,
        test_batch=encoders.encode(test, with_labels=True),
        labels={t: test[t].to_numpy().astype(np.float64) for t in tasks},
        valid_batch=encoders.encode(valid, with_labels=True),
        valid_labels={t: valid[t].to_numpy().astype(np.float64) for t in tasks},
        truth=truth, extra=extra,
    )


def simulator_feature_table(out: dict[str, Any]) -> "pa.Table":
    """Impressions + the ad's and user's raw attributes as ``ad_profile__*`` / ``user_profile__*``
    columns, in impression order (``out`` is what ``components.sources.simulator.simulate`` returns)."""
    import pyarrow as pa

    imp = out["impressions"]
    ads = out["ads"].select(["ad_id", "advertiser_id", "campaign_id", "master_category", "sub_category",
                             "article_type", "bid"])
    ads = ads.rename_columns(["ad_id"] + [f"ad_profile__{c}" for c in ads.column_names[1:]])
    users = out["users"].select(["user_id", "age_band", "gender", "region", "account_age_days", "activity"])
    users = users.rename_columns(["user_id"] + [f"user_profile__{c}" for c in users.column_names[1:]])
    table = imp.append_column("_row", pa.array(np.arange(imp.num_rows)))
    table = table.join(ads, "ad_id", join_type="left outer").join(users, "user_id", join_type="left outer")
    return table.sort_by("_row").drop_columns(["_row"])  # Arrow joins do not keep row order


def simulated_market(settings: "Settings", simulator: dict[str, Any] | None = None, days: int = 7,
                     tasks: tuple[str, ...] = ("click", "conversion")) -> Market:
    """Simulate ``days`` days with ``settings.simulator`` updated by ``simulator``; days ``1..days-2``
    train, day ``days-1`` validates, the last day tests. Deterministic for a given simulator seed."""
    from components.training.encoders import FeatureEncoders, window_split
    from components.sources.simulator import simulate

    if simulator:
        settings = settings.model_copy(update={"simulator": settings.simulator.model_copy(update=simulator)})
    out = simulate(settings, days=days)
    table = simulator_feature_table(out)
    truth = out["truth_impressions"]
    if table.num_rows != truth.num_rows or not table["request_id"].equals(truth["request_id"]):
        raise RuntimeError("simulator impressions and ground truth are not aligned")
    train, valid, test = window_split(table)
    test_truth = truth.slice(train.num_rows + valid.num_rows)  # impressions are in time order: test is the tail
    if not test_truth["request_id"].equals(test["request_id"]):
        raise RuntimeError("the simulator's test day is not the tail of its impressions")
    return encoded_market("simulator", train, valid, test, FeatureEncoders.fit(train), tasks,
                          truth={t: test_truth[f"p_{t}"].to_numpy() for t in tasks})


# ----- real logs (Taobao, MovieLens-100k) ------------------------------------------------------------------
def logged_feature_table(tables: dict[str, "pa.Table"], tasks: tuple[str, ...], ad_columns: tuple[str, ...],
                         user_columns: tuple[str, ...]) -> "pa.Table":
    """A real adapter's impressions joined with the ad's and user's attributes, named like the simulator's
    (``ad_profile__*`` / ``user_profile__*``), in impression (time) order. Label columns other than
    ``tasks`` are dropped (an unused int8 label would otherwise become a numeric feature that leaks)."""
    import pyarrow as pa

    imp = tables["impressions"]
    labels = [c for c in imp.column_names if c in ("click", "conversion", "cart", "fav") and c not in tasks]
    imp = imp.drop_columns(labels)
    table = imp.append_column("_row", pa.array(np.arange(imp.num_rows)))
    if ad_columns:
        ads = tables["ads"].select(["ad_id", *ad_columns])
        ads = ads.rename_columns(["ad_id"] + [f"ad_profile__{c}" for c in ad_columns])
        table = table.join(ads, "ad_id", join_type="left outer")
    if user_columns:
        users = tables["users"].select(["user_id", *user_columns])
        users = users.rename_columns(["user_id"] + [f"user_profile__{c}" for c in user_columns])
        table = table.join(users, "user_id", join_type="left outer")
    return table.sort_by("_row").drop_columns(["_row"])  # Arrow joins do not keep row order


TRAIN, VALID, TEST = 0, 1, 2  # the parts of a time split


def _logged_market(name: str, table: "pa.Table", part: np.ndarray, tasks: tuple[str, ...],
                   max_train_rows: int | None) -> Market:
    """Split ``table`` (time-ordered) by ``part`` (:data:`TRAIN` / :data:`VALID` / :data:`TEST` per row),
    keep the newest ``max_train_rows`` training rows, fit encoders on train, encode validation and test."""
    from components.training.encoders import FeatureEncoders

    t_us = _time_us(table)
    for earlier, later in ((TRAIN, VALID), (VALID, TEST)):
        if t_us[part == earlier].max(initial=-2**62) > t_us[part == later].min(initial=2**62):
            raise RuntimeError(f"{name}: the time split's parts overlap in time")
    train_idx = np.flatnonzero(part == TRAIN)
    if max_train_rows is not None and train_idx.size > max_train_rows:
        train_idx = train_idx[-max_train_rows:]  # the newest rows: the ones nearest the held-out periods
    train = table.take(train_idx)
    valid, test = table.filter(part == VALID), table.filter(part == TEST)
    return encoded_market(name, train, valid, test, FeatureEncoders.fit(train, tasks=list(tasks)), tasks,
                          extra={"calendar_dates": True})


def _time_us(table: "pa.Table") -> np.ndarray:
    import pyarrow as pa

    return table["event_time"].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()


def _utc_days(table: "pa.Table") -> np.ndarray:
    return _time_us(table) // 86_400_000_000


def last_days_parts(table: "pa.Table") -> np.ndarray:
    """Per row: :data:`TEST` on the newest UTC day, :data:`VALID` on the day before, :data:`TRAIN` earlier."""
    days = _utc_days(table)
    last = int(days.max())
    return np.where(days == last, TEST, np.where(days == last - 1, VALID, TRAIN))


def taobao_market(settings: "Settings", tasks: tuple[str, ...] = ("click", "conversion"),
                  negatives_per_positive: int = 4, max_train_rows: int | None = None) -> Market:
    """The Taobao UserBehavior slice (components/sources/taobao.py): one impression per (user, item, day)
    with a ``pv`` (``click`` = 1, ``conversion`` = bought that day) plus the adapter's popularity-sampled
    negatives; the item's ``advertiser_id`` / ``campaign_id`` / ``category`` joined as ``ad_profile__*``
    (the log has no user profile). The last UTC day tests, the day before validates, earlier days train
    (as the daily retrain); ``max_train_rows`` keeps the newest training rows only. ``cart`` / ``fav`` are
    dropped unless asked."""
    from components.sources.taobao import TaobaoSource

    log = TaobaoSource(settings, negatives_per_positive=negatives_per_positive).log
    table = logged_feature_table(log.tables, tasks, ("advertiser_id", "campaign_id", "category"), ())
    return _logged_market("taobao", table, last_days_parts(table), tasks, max_train_rows)


def movielens_market(settings: "Settings", tasks: tuple[str, ...] = ("click", "conversion"),
                     negatives_per_positive: int = 4, test_share: float = 0.1, valid_share: float = 0.1,
                     max_train_rows: int | None = None) -> Market:
    """MovieLens-100k (components/sources/movielens.py): each rating a positive impression (``click`` =
    rated, ``conversion`` = rating >= 4) plus the adapter's popularity-sampled negatives; the movie's
    ``advertiser_id`` / ``campaign_id`` / ``genre`` / ``genres`` / ``release_year`` and the user's
    ``age_band`` / ``gender`` / ``occupation`` / ``zip_prefix`` joined as profile columns. The last
    ``test_share`` of impressions in time is the test set and the ``valid_share`` before it validates (the
    log spans 7 months, a day is too few rows); ``max_train_rows`` keeps the newest training rows only."""
    from components.sources.movielens import MovieLensSource

    if not (0.0 < test_share and 0.0 < valid_share and test_share + valid_share < 1.0):
        raise ValueError(f"test_share ({test_share}) and valid_share ({valid_share}) must be > 0 and sum to < 1")
    log = MovieLensSource(settings, negatives_per_positive=negatives_per_positive).log
    table = logged_feature_table(log.tables, tasks,
                                 ("advertiser_id", "campaign_id", "genre", "genres", "release_year"),
                                 ("age_band", "gender", "occupation", "zip_prefix"))
    t_us = _time_us(table)
    valid_cut, test_cut = np.quantile(t_us, [1.0 - test_share - valid_share, 1.0 - test_share])
    part = np.where(t_us >= test_cut, TEST, np.where(t_us >= valid_cut, VALID, TRAIN))
    return _logged_market("movielens", table, part, tasks, max_train_rows)


# ----- the full feature pipeline on the simulator (sequences, SEE, semantic IDs) -----------------------------
def pipeline_settings(settings: "Settings", simulator: dict[str, Any] | None = None,
                      features: dict[str, Any] | None = None, folder: str | None = None) -> "Settings":
    """``settings`` with the simulator as the source, ``simulator`` / ``features`` overrides, and a
    home of its own, ``<settings.home>/experiments[/<folder>]/pipeline-<hash of the config>``: the same
    config reuses the same pipeline state (its day-steps skip unchanged days), another config gets another."""
    import hashlib
    import json

    sim = settings.simulator.model_copy(update=simulator or {})
    feat = settings.features.model_copy(update=features or {})
    pipe = settings.pipeline.model_copy(update={"source": "simulator"})
    key = json.dumps({"simulator": sim.model_dump(mode="json"), "features": feat.model_dump(mode="json"),
                      "representations": settings.representations.model_dump(mode="json"),
                      "ingest": settings.ingest.model_dump(mode="json"),
                      "start": str(pipe.start_date)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    home = settings.home / "experiments" / (folder or "") / f"pipeline-{digest}"
    return settings.model_copy(update={"home": home, "simulator": sim, "features": feat,
                                       "pipeline": pipe}).resolved()


def pipeline_market(settings: "Settings", days: int = 6, simulator: dict[str, Any] | None = None,
                    features: dict[str, Any] | None = None, tasks: tuple[str, ...] = ("click", "conversion"),
                    progress: Any = None) -> Market:
    """The simulator run through the daily pipeline (``components.steps``): deliver, ingest and features
    for each of ``days`` days, then representations in date order (text/visual vectors, visual semantic
    IDs, the LightGCN graph, interest vectors), then the point-in-time training set of the window. The
    last day tests, the day before validates, the rest train; encoders are fitted on the full training
    table (select columns and refit for a variant, see :func:`refit_market`).

    The state lives in :func:`pipeline_settings`' home and is reused: a second call with the same config
    only reads the training set. The first call encodes the catalogue with the offline text and image
    models (a minute or two on 2 cores for a few hundred ads).

    ``extra``: ``settings`` (the pipeline's), ``ads`` (ad_id, created_at as landed), ``new_ad`` (test rows
    on ads created < 1 day before the impression, as ``components.training.evaluation``'s ``ads=new`` slice),
    ``first_exposure``, ``seconds`` (pipeline wall time).
    """
    import time

    from components.experiments.daily_model import build_window
    from components.training.encoders import FeatureEncoders, read_training_set, window_split
    from components.training.slices import EvalSlices, slice_masks
    from components.store.offline import read_offline

    say = progress or (lambda _msg: None)
    ps = pipeline_settings(settings, simulator, features)
    ps.home.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    window, path = build_window(ps, days, say)
    table = read_training_set(path)
    seconds = time.perf_counter() - started
    say(f"pipeline {ps.home.name}: {table.num_rows} rows, {days} days, {seconds:.0f} s")
    train, valid, test = window_split(table)
    seq_col = ps.features.sequence_category_column
    encoders = FeatureEncoders.fit(train, list(tasks), sequence_category_column=seq_col)
    ads = read_offline(ps, "ads", None, window[-1], columns=["ad_id", "created_at"], latest=True)
    masks, _notes = slice_masks(test, EvalSlices(exposure=True, new_ad_days=1.0, top_categories=0), ads=ads)
    return encoded_market("simulator-pipeline", train, valid, test, encoders, tasks,
                          extra={"settings": ps, "ads": ads, "new_ad": masks.get("ads=new"),
                                 "first_exposure": masks.get("exposure=first"), "seconds": seconds})


def refit_market(market: Market, keep: Any = None, drop: Any = None) -> Market:
    """``market`` with only some feature columns: ``keep(name) -> bool`` or ``drop(name) -> bool`` picks
    the columns of train, validation and test (labels and identifiers always stay), and the encoders are
    refitted, so a dropped column is no feature at all (``FeatureEncoders.fit`` gives each remaining column
    its role by name). The sequence category field is kept as the original encoders had it."""
    from components.training.encoders import FeatureEncoders
    from components.training.field_encoders import IDENTIFIERS

    always = set(market.tasks) | set(IDENTIFIERS) | {"exposure_index"}
    names = [c for c in market.train.column_names
             if c in always or ((keep is None or keep(c)) and (drop is None or not drop(c)))]
    train = market.train.select(names)
    seq = market.encoders.sequence
    category = seq.category_field if seq is not None else None
    encoders = FeatureEncoders.fit(train, list(market.tasks), sequence_category_column=category
                                   if category is not None and category in names else None)
    return encoded_market(market.name, train, market.valid.select(names), market.test.select(names), encoders,
                          market.tasks, truth=market.truth, extra=market.extra)


# The pipeline marketplace of the temporal and representations experiments (one home, shared by both).
# 1,000 users with 4 sessions a day (about 1 click a user a day, so behaviour sequences fill within the
# window), 600 ads at the start and 80 new ones a day (the test day's new ads are the cold-start slice);
# the sequence categories are article types, the level of the simulator's semantic-temporal boost.
PIPELINE_SIMULATOR: dict[str, Any] = {"seed": 7, "n_users": 1000, "new_users_per_day": 20, "n_initial_ads": 600,
                                      "new_ads_per_day": 80, "sessions_per_user_day": 4.0}
PIPELINE_SIMULATOR_SMALL: dict[str, Any] = {"seed": 7, "n_users": 250, "new_users_per_day": 5,
                                            "n_initial_ads": 120, "new_ads_per_day": 30,
                                            "sessions_per_user_day": 4.0}
PIPELINE_FEATURES: dict[str, Any] = {"sequence_category_column": "article_type"}
PIPELINE_DAYS, PIPELINE_DAYS_SMALL = 7, 4  # days 1-5 train, 6 validates, 7 tests (small: 1-2, 3, 4)

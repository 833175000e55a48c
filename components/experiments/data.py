"""Datasets for the experiments: one split, encoded once, shared by every variant and seed.

``simulated_market`` is the demo marketplace with known ground truth: the impressions joined with the
raw ad and user attributes (named like the training set's profile views, so the encoders give them the
right roles), days ``1..days-1`` train and the last day tests. ``truth`` holds the test day's true
probabilities. Experiments that need the full feature pipeline (sequences, SEE, semantic IDs) build a
training set through ``components.steps`` instead; the real logs (Taobao, MovieLens) have loaders here
as the experiments that use them add them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings
    from components.dataset import FeatureEncoders


@dataclass
class Market:
    """A train/test split, its encoders fitted on train, the encoded test batch, labels and (on the
    simulator) the true probabilities of the test rows."""

    name: str
    train: "pa.Table"
    test: "pa.Table"
    encoders: "FeatureEncoders"
    tasks: tuple[str, ...]
    test_batch: dict[str, Any] = field(repr=False, default_factory=dict)
    labels: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    truth: dict[str, np.ndarray] | None = field(repr=False, default=None)
    extra: dict[str, Any] = field(repr=False, default_factory=dict)


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


def simulated_market(settings: "Settings", simulator: dict[str, Any] | None = None, days: int = 6,
                     tasks: tuple[str, ...] = ("click", "conversion")) -> Market:
    """Simulate ``days`` days with ``settings.simulator`` updated by ``simulator``; the last day is the
    test day. Deterministic for a given simulator seed."""
    from components.dataset import FeatureEncoders, time_split
    from components.sources.simulator import simulate

    if simulator:
        settings = settings.model_copy(update={"simulator": settings.simulator.model_copy(update=simulator)})
    out = simulate(settings, days=days)
    table = simulator_feature_table(out)
    truth = out["truth_impressions"]
    if table.num_rows != truth.num_rows or not table["request_id"].equals(truth["request_id"]):
        raise RuntimeError("simulator impressions and ground truth are not aligned")
    train, test = time_split(table)
    test_truth = truth.slice(train.num_rows)  # impressions are in time order: the test day is the tail
    encoders = FeatureEncoders.fit(train)
    return Market(
        name="simulator", train=train, test=test, encoders=encoders, tasks=tasks,
        test_batch=encoders.encode(test, with_labels=True),
        labels={t: test[t].to_numpy().astype(np.float64) for t in tasks},
        truth={t: test_truth[f"p_{t}"].to_numpy() for t in tasks},
        extra={"first_exposure": test["exposure_index"].to_numpy() == 1},
    )

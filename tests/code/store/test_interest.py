"""User x ad-attribute interest views (components/store/interest.py, built by components/store/features.py)
against a brute-force pandas recount on a small random log, and their configuration."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from components.store.features import build_features, read_view
from components.store.interest import interest_attributes, interest_keys
from tests.code.store.test_features import DAY0, random_log

TASKS = ["click", "conversion"]


def expected_interest(log: pd.DataFrame, ads: pd.DataFrame, attribute: str, day: dt.date, windows: list[int],
                      prior: float) -> pd.DataFrame:
    """Brute-force recount of ``user_<attribute>_interest`` as of the end of ``day``, one pair at a time."""
    end = pd.Timestamp(day + dt.timedelta(days=1), tz="UTC")
    log = log.merge(ads[["ad_id", attribute]], on="ad_id")
    span = log[(log.event_time >= end - pd.Timedelta(days=max(windows) + 1)) & (log.event_time < end)]
    rows = []
    for (user, value), _ in sorted(span.groupby(["user_id", attribute]), key=lambda kv: f"{kv[0][0]}|{kv[0][1]}"):
        row: dict = {"key": f"{user}|{value}"}
        for w in windows:
            win = log[(log.event_time >= end - pd.Timedelta(days=w)) & (log.event_time < end)]
            users = win[win.user_id == user]
            mine = users[users[attribute] == value]
            row[f"impressions_{w}d"] = len(mine)
            for task in TASKS:
                global_rate = win[task].sum() / len(win)
                user_prior = (users[task].sum() + prior * global_rate) / (len(users) + prior)
                row[f"{task}_{w}d"] = int(mine[task].sum())
                row[f"{task}_rate_{w}d"] = (mine[task].sum() + prior * user_prior) / (len(mine) + prior)
        rows.append(row)
    return pd.DataFrame(rows)


def test_interest_views_match_a_brute_force_recount(settings) -> None:
    settings.features.rolling_windows_days = [1, 3]
    log = random_log(settings.offline_dir, days=6)
    day = DAY0 + dt.timedelta(days=5)
    rows = build_features(settings, day, TASKS)
    ads = read_view(settings, "ad_profile", [day]).to_pandas()
    # Default: every taxonomy column of the ads (random_log's ads have two).
    assert {"user_sub_category_interest", "user_article_type_interest"} <= set(rows)
    manifest = json.loads((settings.features_dir / "_views.json").read_text())
    assert manifest["interest_views"]["user_sub_category_interest"] == {"attribute": "sub_category",
                                                                        "key": "user_sub_category_key"}
    for attribute in ("sub_category", "article_type"):
        view = f"user_{attribute}_interest"
        got = read_view(settings, view, [day]).to_pandas()
        got = got.sort_values(f"user_{attribute}_key").reset_index(drop=True)
        want = expected_interest(log, ads, attribute, day, [1, 3], settings.features.rate_prior_strength)
        assert rows[view] == len(want) == len(got)
        assert got[f"user_{attribute}_key"].tolist() == want["key"].tolist()
        assert (got["event_timestamp"] == pd.Timestamp(day + dt.timedelta(days=1), tz="UTC")).all()
        assert (want["impressions_1d"] == 0).any() and (want["impressions_1d"] > 0).any()
        for col in want.columns.drop("key"):
            np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-12, err_msg=col)


def test_the_days_own_impressions_never_count(settings) -> None:
    """A view stamped at the end of day D counts days up to D only: adding impressions on D + 1 changes
    nothing in D's partition."""
    settings.features.rolling_windows_days = [2]
    log = random_log(settings.offline_dir, days=3)
    day = DAY0 + dt.timedelta(days=1)
    build_features(settings, day, TASKS)
    got = read_view(settings, "user_sub_category_interest", [day]).to_pandas()
    end = pd.Timestamp(day + dt.timedelta(days=1), tz="UTC")
    assert got["impressions_2d"].sum() == (log.event_time < end).sum()  # every impression before the end, no later


def test_configured_attributes_and_a_source_without_taxonomy(settings) -> None:
    settings.features.interest_attributes = ["article_type"]
    random_log(settings.offline_dir, days=2)
    day = DAY0 + dt.timedelta(days=1)
    rows = build_features(settings, day, TASKS)
    assert [v for v in rows if v.endswith("_interest")] == ["user_article_type_interest"]
    settings.features.interest_attributes = []
    assert not [v for v in build_features(settings, day, TASKS) if v.endswith("_interest")]
    settings.features.interest_attributes = ["colour"]
    with pytest.raises(ValueError, match="colour"):
        build_features(settings, day, TASKS)
    # The default on ads without taxonomy columns: no interest view at all.
    assert interest_attributes(None, []) == []
    assert interest_attributes(None, ["a", "b"]) == ["a", "b"]


def test_keys_are_the_sql_keys_and_null_without_a_value() -> None:
    keys = interest_keys(pa.array([7, 12, 3], pa.int64()), pa.array(["Tops", None, "a|b"]))
    assert keys.to_pylist() == ["7|Tops", None, "3|a|b"]

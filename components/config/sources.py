"""Configuration of where the logs come from: the demo simulator, the real-log adapters (Taobao,
MovieLens) and the ``files`` source that reads the user's own tables (docs/sources.md)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field, field_validator

from components.config.section import Section

IDENTIFIER_PATTERN = r"^[a-z][a-z0-9_]*$"
# The label columns of the built-in sources, in order; the files source declares its own (files.tasks).
BUILTIN_SOURCE_TASKS: dict[str, tuple[str, ...]] = {
    "simulator": ("click", "conversion"),
    "taobao": ("click", "conversion", "cart", "fav"),
    "movielens": ("click", "conversion"),
}


class SimulatorConfig(Section):
    """The demo marketplace (DESIGN.md section 5; every knob in docs/simulator.md). ``n_users`` and
    ``n_initial_ads`` exist from day 0, ``new_*_per_day`` arrive on each later day. The defaults give about
    25k impressions a day from few, active users (300 users with 16 requests a day: about 370 training
    impressions per user over the demo's 7 days), so the default model reaches 0.85 of the oracle AUC on
    both tasks and the whole daily pipeline stays within a few minutes on 2 cores (issue 12: the gap to the
    oracle is mostly impressions per user; docs/results.md, learning curve)."""

    seed: int = Field(7, description="seeds everything random in the simulated market")
    n_users: int = Field(300, description="users signing up on day 0")
    n_initial_ads: int = Field(3_000, description="ads listed on day 0 (at least 4 x positions)")
    new_ads_per_day: int = Field(150, description="ads listed on each later day")
    photo_share: float = Field(0.7, ge=0, le=1, description="share of ads drawn from products with a photo")
    sessions_per_user_day: float = Field(16.0, gt=0, description="mean requests per active user per day")
    rounds_per_day: int = Field(6, ge=1, description="time steps per day; clicks affect later rounds")
    positions: int = Field(5, ge=1, description="ads per request")
    slots: list[str] = Field(["feed", "search", "detail"], description="placements, drawn uniformly per request")
    n_advertisers: int = Field(300, description="advertisers that the brands are spread over")
    new_users_per_day: int = Field(6, ge=0, description="users who sign up on each day after the first")
    n_candidates: int = Field(200, ge=2, description="ads the organic policy samples per request before ranking")
    horizon_days: int = Field(365, ge=1, description="days the simulator can deliver from pipeline.start_date")
    # label model
    click_base_logit: float = Field(-3.7, description="click intercept of the label model")
    conversion_base_logit: float = Field(-2.6, description="conversion-given-click intercept of the label model")
    preference_scale: float = Field(1.0, description="sigma, the spread of the click and conversion affinities")
    preference_correlation: float = Field(0.3, ge=-1, le=1, description="corr(click pref, conversion pref)")
    content_weight: float = Field(0.5, ge=0, le=1, description="share of preference on hidden colour/usage")
    temporal_boost: float = Field(1.2, ge=0, description="logit boost right after a same-category click")
    temporal_decay_hours: float = Field(12.0, gt=0, description="e-folding time of the temporal boost, in hours")
    temporal_user_share: float = Field(
        1.0, ge=0, le=1, description="share of users the temporal boost applies to (a fixed draw per user)")
    position_bias: float = Field(0.35, ge=0, description="logit penalty per log2(position)")
    fatigue: float = Field(0.3, ge=0, description="logit penalty per repeated exposure")
    retarget_share: float = Field(0.3, ge=0, le=1, description="probability a slot is a retargeting slot")
    retarget_window_days: int = Field(3, description="how recent (in days) a click must be to retarget its ad")
    retarget_frequency_cap: int = Field(
        3, ge=1, description="retarget an ad only while the user has seen it fewer times than this"
    )
    organic_interest_weight: float = Field(1.0, ge=0, description="how much the organic policy follows interest")


class RealSourcesConfig(Section):
    """Adapters for real logs that hold only positives (Taobao, MovieLens): negative sampling."""

    negatives_per_positive: int = Field(4, ge=0, description="sampled impressions without a click per click")
    seed: int | None = Field(None, description="default: each adapter's own fixed seed")
    jitter_s: int = Field(120, ge=0, description="negatives' timestamps are the positive's +- this many seconds")


class FileTableConfig(Section):
    """One of the user's tables for the ``files`` source (docs/your-own-logs.md)."""

    path: str = Field(description="a file, a folder, a glob, or a URI DuckDB can read (s3://, gs://, file://)")
    format: Literal["auto", "parquet", "csv"] = Field("auto", description="auto: from the file extensions")
    layout: Literal["auto", "flat", "hive"] = Field(
        "auto", description="hive: date=YYYY-MM-DD/ folders; flat: files cut into UTC days by event_time; "
        "auto: hive when such folders exist")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="contract (or attribute) column -> DuckDB SQL expression over the file's columns, e.g. "
        "click: 'rating >= 4'; a contract column left out is taken by name, else defaulted")
    csv_options: dict[str, Any] = Field(
        default_factory=dict, description="extra DuckDB read_csv options, e.g. {delim: '\\t', header: true}")
    query: str | None = Field(
        None, description="optional DuckDB SELECT over `src` (the files as read), e.g. to aggregate events; "
        "columns then map its output")


class NegativeSamplingConfig(Section):
    """Negatives for a positives-only log (as the Taobao and MovieLens adapters do): impressions the
    user was not seen to act on, drawn by popularity (docs/sources.md)."""

    per_positive: int = Field(0, ge=0, description="sampled impressions per logged one; 0 = off")
    seed: int = Field(0, description="seed of the negative sampling")
    jitter_s: int = Field(120, ge=0, description="a negative's time is its positive's +- this many seconds")


class FilesSourceConfig(Section):
    """``pipeline.source: files``: the user's own logs, read where they lie (never written to)."""

    name: str = Field("files", pattern=IDENTIFIER_PATTERN, description="landing folder name: <home>/raw/<name>/")
    tasks: list[str] = Field(
        ["click"], min_length=1,
        description="label columns, in order: the one list of tasks for ingest, features, training, IPW, gates")
    impressions: FileTableConfig | None = Field(None, description="the impression log (required by this source)")
    ads: FileTableConfig | None = Field(
        None, description="the ads table (optional: without it, the ad ids seen in the impressions are the table)")
    users: FileTableConfig | None = Field(
        None, description="the users table (optional: without it, the user ids seen in the impressions are the table)")
    start_date: dt.date | None = Field(None, description="first day delivered (default: the log's first)")
    end_date: dt.date | None = Field(None, description="last day delivered (default: the log's last)")
    negatives: NegativeSamplingConfig = Field(
        NegativeSamplingConfig(), description="negative sampling for a positives-only log")

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: list[str]) -> list[str]:
        import re

        reserved = {"event_time", "request_id", "user_id", "ad_id", "slot", "position", "exposure_index"}
        for t in tasks:
            if not re.match(IDENTIFIER_PATTERN, t) or t in reserved:
                raise ValueError(f"task name {t!r} must be a lower-case identifier and not a contract column")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"task names repeat: {tasks}")
        return tasks

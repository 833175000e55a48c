"""Configuration of the data stages of a run: which source and dates (``pipeline``), validated ingestion
(``ingest``) and the daily feature views and training sets (``features``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from components.config.section import Section


class PipelineConfig(Section):
    """The run: which source delivers the logs, from which day, and how many days a window holds."""

    source: Literal["simulator", "taobao", "movielens", "files"] = Field(
        "simulator", description="where the logs come from: the demo simulator, a real-log adapter, or your files")
    start_date: dt.date = Field(dt.date(2026, 11, 1), description="the simulator's day 0 (the demo's first day)")
    demo_days: int = Field(7, ge=1, description="days the demo simulates and ingests")
    training_days: int = Field(7, ge=1, description="days in a training window")
    backfill_concurrency: int = Field(2, ge=1, description="days a backfill ingests at once")
    shared_data: Path = Field(
        Path("../shared/data"), description="real data folder (never copied); relative to the project root"
    )


class IngestConfig(Section):
    """Validated ingestion (components/ingest/day.py, docs/ingestion.md). The task label columns are the
    source's (``Settings.tasks``): declared once, by the source."""

    label_rate_bounds: dict[str, tuple[float, float]] = Field(
        default={},
        description="plausible [min, max] positive rate per task name (a GX expectation; failing it fails the "
                    "data gate); a task not listed gets default_label_rate_bounds",
    )
    default_label_rate_bounds: tuple[float, float] = Field(
        (0.0, 0.99), description="[min, max] positive rate of a task without its own bounds: catches a label "
                                 "that is positive on (almost) every row, passes any healthy real log")
    label_rate_min_rows: int = Field(
        100, ge=0, description="days with fewer landed impressions than this skip the label-rate bounds (too noisy)")
    late_tolerance_hours: float = Field(0.0, ge=0, description="accept events this far past the day's end")
    duplicate_lookback_days: int = Field(
        0, ge=0, description="days of landed impressions searched for a repeated request_id; 0 = every landed day"
    )
    exposure_lookback_days: int = Field(
        30, ge=0, description="earlier days searched for a (user, ad) pair whose exposure_index does not grow "
                              "(a warning); 0 = every landed day")
    empty_day: Literal["allow", "warn", "fail"] = Field(
        "warn", description="a day without impressions: allow (land an empty partition), warn (the same, with "
                            "a warning in the report) or fail (the day fails)")
    unknown_entities: Literal["keep", "quarantine"] = Field(
        "keep", description="impressions whose user_id / ad_id no users / ads partition up to the day has: keep "
                            "them (counted, with a warning) or quarantine them (reason unknown_entity)")
    max_quarantine_rate: float = Field(
        0.25, ge=0, le=1, description="a day fails when a table quarantines more than this share of its rows")

    @field_validator("label_rate_bounds", "default_label_rate_bounds")
    @classmethod
    def _bounds(cls, v: Any) -> Any:
        for task, (lo, hi) in (v.items() if isinstance(v, dict) else [("default", v)]):
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"label rate bounds of {task} must satisfy 0 <= min <= max <= 1, got ({lo}, {hi})")
        return v


class FeatureConfig(Section):
    """Daily feature views and point-in-time training sets (docs/features.md)."""

    rolling_windows_days: list[int] = Field([1, 7], min_length=1, description="rolling stats windows, in days")
    sequence_length: int = Field(20, ge=1, description="clicked ads kept in a user's click sequence")
    ttl_days: int = Field(
        30, ge=1, description="Feast TTL of the daily views (stats, sequence); also the click-sequence lookback"
    )
    rate_prior_strength: float = Field(
        20.0, ge=0, description="pseudo-impressions at the window's global rate added to every rate; 0 = raw rate"
    )
    sequence_category_column: str | None = Field(
        None, description="ads column for the sequence categories; None = first categorical taxonomy column"
    )
    interest_attributes: list[str] | None = Field(
        None, description="ads columns with a user x attribute interest view (user_<attr>_interest); None = every "
                          "taxonomy column of the ads, [] = none")
    direct_join_min_rows: int = Field(
        200_000, ge=0, description="training sets at least this big use the DuckDB ASOF join, smaller ones Feast"
    )
    fresh_behaviour: bool = Field(
        True, description="click sequence and user_recent__ counters point-in-time to the microsecond, from the "
                          "impression log itself (components/store/fresh.py), instead of the daily sequence view")
    fresh_windows_hours: list[int] = Field(
        [1, 24], min_length=1, description="windows, in hours, of the user_recent__ impression and click counters")

    @field_validator("fresh_windows_hours")
    @classmethod
    def _fresh_windows(cls, v: list[int]) -> list[int]:
        if any(w < 1 for w in v):
            raise ValueError(f"features.fresh_windows_hours must be >= 1, got {v}")
        return sorted(set(v))

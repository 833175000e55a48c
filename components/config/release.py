"""Configuration of what happens to a trained model: the quality gates it must pass (``gates``) and the
MLflow tracking and model registry it is logged to (``registry``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.config.section import Section


class GatesConfig(Section):
    """Quality gates (DESIGN.md section 8): a version is aliased ``challenger`` only when every gate passes.
    Each gate returns (name, value, threshold, passed, details); see docs/gates.md."""

    # noise: the collapse and entanglement gates fail only when their interval is on the wrong side
    inconclusive: Literal["pass", "fail"] = Field(
        "pass", description="what a gate does when its interval contains the threshold or the data are too few "
        "for an interval: pass (with a warning in the run summary), so that noise on a small day does not block "
        "a model, or fail, to hold back every version the gates cannot vouch for")
    interval_level: float = Field(0.95, gt=0.5, lt=1, description="confidence level of the gates' intervals")

    # data
    max_quarantine_rate: float = Field(0.05, ge=0, le=1, description="rejected / delivered rows in the window")
    # dimensional collapse
    ia_max_rows: int = Field(20_000, ge=2, description="rows sampled per field for information abundance")
    ia_resamples: int = Field(30, ge=2, le=200, description="bootstrap resamples of the sampled rows for the "
                              "interval of mean IA/d")
    ia_floor: float = Field(0.2, ge=0, le=1, description="impression-weighted mean IA/d must stay above this")
    ia_champion_tolerance: float = Field(0.1, ge=0, le=1, description="allowed drop of mean IA/d vs the champion")
    # interest entanglement
    min_separation: float = Field(0.0, description="task tables must separate conflicting pairs by more than this")
    max_expert_correlation: float = Field(0.9, ge=0, le=1, description="mean |Pearson r| between experts")
    entanglement_max_pairs: int = Field(50_000, ge=10, description="conflicting pairs sampled for the analysis")
    # model
    auc_tolerance: float = Field(0.01, ge=0, le=1, description="allowed AUC drop vs the champion, per task")
    calibration_band: tuple[float, float] = Field((0.5, 2.0), description="mean prediction / observed rate")
    # baseline
    baseline_inconclusive: Literal["pass", "fail"] = Field(
        "fail", description="what the baseline gate does when a task's lead over the best trivial baseline is "
        "within the noise (its interval straddles gates.baseline_margin) or undefined: fail (default), so a "
        "version that is not shown to rank better than counting past positives never becomes challenger; pass, "
        "with a warning, as gates.inconclusive does for the other gates")
    baseline_margin: float = Field(
        0.0, ge=-1, le=1, description="AUC lead the model must have over the best trivial baseline (per-ad, "
        "per-user rate, popularity), per task; fails when the interval's upper bound is below it")


class RegistryConfig(Section):
    """MLflow tracking and the model registry (DESIGN.md section 9). Default: SQLite and an artifact folder
    under ``<home>/mlflow``; point ``tracking_uri`` at an MLflow server to share them."""

    tracking_uri: str | None = Field(None, description="default: sqlite:///<home>/mlflow/mlflow.db")
    artifact_location: str | None = Field(None, description="default: <home>/mlflow/artifacts")
    experiment: str = Field("adsrec-daily", description="the MLflow experiment the daily runs log to")
    model_name: str = Field("adsrec-ranker", description="the registered model the versions belong to")
    enabled: bool = Field(True, description="log runs and register versions in MLflow")
    auto_promote: Literal["never", "if_no_champion", "always"] = Field(
        "if_no_champion", description="after the gates pass: make the new version champion")

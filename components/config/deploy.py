"""Configuration of ``adsrec up``: the local Prefect server, MLflow UI, GX Data Docs and the served
deployments (docs/deployments.md)."""

from __future__ import annotations

from pydantic import Field

from components.config.section import Section


class DeployConfig(Section):
    """``adsrec up``: the local Prefect server, MLflow UI, GX Data Docs and the served deployments
    (docs/deployments.md)."""

    host: str = Field("127.0.0.1", description="the address the local services listen on")
    prefect_port: int = Field(4200, ge=1, le=65535, description="the Prefect server and UI")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="the MLflow UI")
    data_docs_port: int = Field(5100, ge=1, le=65535, description="the Great Expectations Data Docs site")
    daily_cron: str = Field("0 3 * * *", description="the daily deployment's schedule")
    timezone: str = Field("UTC", description="the time zone of daily_cron")
    training_concurrency_limit: str = Field("adsrec-training", description="Prefect global concurrency limit name")

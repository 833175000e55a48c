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


class ServingConfig(Section):
    """``adsrec serve``: the HTTP scoring service (docs/serving.md, "The scoring service"). It listens on
    ``deploy.host`` (127.0.0.1 by default)."""

    port: int = Field(5200, ge=1, le=65535, description="the scoring service's port")
    alias: str = Field("champion", description="the registry alias served when a request names none")
    objective: str = Field(
        "click", description="what candidates are ranked by: an expression over the task probabilities (by task "
        "name, e.g. click, or p_click) and numeric row columns (bid = ad_profile__bid), with + - * / ** and "
        "numbers, e.g. 'click * bid' or '0.7 * click + 0.3 * conversion'; a request may send its own")
    max_candidates: int = Field(1000, ge=1, description="candidates one request may send; more is a 413")
    poll_seconds: float = Field(5.0, gt=0, description="how often the service checks the registry alias, the "
                                "online store and the representations for a newer version to swap in")
    fast_path: bool = Field(True, description="score from store rows encoded in advance (components/serving/"
                            "encoded.py; the same inputs as the generic path, faster); false: always the generic path")
    concurrency: int = Field(1, ge=1, description="requests scored at the same time; more wait their turn. "
                             "Scoring is mostly Python holding the GIL, so 1 gives the most requests/s and the "
                             "lowest tail (docs/benchmarks.md, 'Serving latency')")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads of the service's forward passes")

"""The ``adsrec`` app: global options and every command group, assembled (the console script's entry
point is :func:`main`). Every command runs its Prefect flow locally (ephemeral API, no server) unless
``adsrec up`` runs for the home.

Kept light at import: Prefect, pandas, Feast and friends load only inside commands, so
``adsrec --help`` answers at once. Shell completion: ``adsrec --install-completion``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli import (
    analyze,
    config,
    doctor,
    experiments,
    pipeline,
    registry,
    services,
    serving,
)
from flows.cli.common import new_app

app = new_app("adsrec", "Raw ad impression logs to a quality-checked, registered multi-task ranking model, every day.",
              completion=True)


@app.callback()
def global_options(
    config_file: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file")] = None,
    home: Annotated[Optional[Path], typer.Option("--home", help="state folder (default $ADSREC_HOME or ./.adsrec)")] = None,
) -> None:
    if config_file is not None:
        os.environ["ADSREC_CONFIG"] = str(config_file.expanduser().resolve())
    if home is not None:
        os.environ["ADSREC_HOME"] = str(home.expanduser().resolve())


# demo, daily, ingest, features, refresh-embeddings, backfill, runs
pipeline.register(app)
config.register(app)
# promote, rollback, models
registry.register(app)
# adsrec analyze collapse|entanglement
app.add_typer(analyze.analyze_app, name="analyze")
# materialize, score
serving.register(app)
# up, down, services
services.register(app)
# experiment NAME, experiment --list
experiments.register(app)
# doctor
doctor.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

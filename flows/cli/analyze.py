"""``adsrec analyze``: the collapse and entanglement analyses (validation/collapse.py,
validation/entanglement.py) of a saved ranker, from the command line.

A model folder is what ``components.training.artefact.TrainResult.save`` writes (``<home>/models/<day>/``); the
training set is ``<home>/training/<day>/train.parquet`` of the same day unless given. Each command prints
its readable table and writes a JSON report and PNG plots to ``--out`` (default ``<home>/analysis/<day>/``).
Heavy libraries (torch, pyarrow, matplotlib) load inside the commands, so ``adsrec --help`` stays instant.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from flows.cli.common import fail, load_settings_or_exit, new_app

if TYPE_CHECKING:
    from components.config import Settings

analyze_app = new_app("analyze", "Dimensional collapse and interest entanglement of a saved ranker (docs/analysis.md).")

ModelDirOpt = Annotated[Optional[Path], typer.Option(
    "--model-dir", help="a saved ranker folder (default: the newest under <home>/models/)")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="folder for the JSON report and PNGs "
                                                "(default: <home>/analysis/<model folder name>/)")]


def newest_model_dir(home: Path) -> Path:
    """The newest saved ranker under ``<home>/models/`` (folders named by day sort by name)."""
    root = home / "models"
    found = sorted(p for p in root.glob("*") if (p / "model.pt").is_file()) if root.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no saved ranker under {root}; train one with `adsrec daily` or pass --model-dir")
    return found[-1]


def _resolve(settings: "Settings", model_dir: Path | None, training_set: Path | None, out: Path | None,
             need_training_set: bool) -> tuple[Path, Path | None, Path]:
    home = Path(settings.home)
    model_dir = model_dir.expanduser().resolve() if model_dir else newest_model_dir(home)
    if training_set is None:
        default = home / "training" / model_dir.name / "train.parquet"
        if default.is_file():
            training_set = default
        elif need_training_set:
            raise FileNotFoundError(f"no training set at {default}; pass --training-set")
    out = out.expanduser().resolve() if out else home / "analysis" / model_dir.name
    out.mkdir(parents=True, exist_ok=True)
    return model_dir, training_set, out


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=1, default=float))
    return path


@analyze_app.command("collapse")
def collapse_cmd(
    model_dir: ModelDirOpt = None,
    training_set: Annotated[Optional[Path], typer.Option(
        "--training-set", help="rows whose id counts choose the rows analysed (default: the model day's "
        "training set; without one every row is used and unseen rows inflate IA)")] = None,
    out: OutOpt = None,
    max_rows: Annotated[Optional[int], typer.Option(help="rows per field (default gates.ia_max_rows)")] = None,
    seed: int = 0,
) -> None:
    """Information abundance (IA, IA/d) of every field of every embedding table, singular spectra, and the
    DCNv2 interaction-collapse map when the model has a DCNv2 expert."""
    settings = load_settings_or_exit()
    try:
        model_dir, training_set, out = _resolve(settings, model_dir, training_set, out, need_training_set=False)
        from components.training.artefact import load_trained
        from components.training.encoders import read_training_set
        from validation.collapse import collapse_report, id_counts_from_batch
        from validation.interaction_collapse import (
            interaction_collapse_map,
            plot_interaction_map,
        )

        trained = load_trained(model_dir)
        start = time.perf_counter()
        counts = None
        if training_set is not None:
            if trained.encoders is None:
                raise ValueError(f"{model_dir} has no encoders.json: cannot count ids in {training_set}")
            table = read_training_set(training_set)
            counts = id_counts_from_batch(trained.model, trained.encoders.encode_numpy(table, with_labels=False))
        report = collapse_report(trained.model, id_counts=counts,
                                 max_rows=max_rows or settings.gates.ia_max_rows, seed=seed)
        seconds = time.perf_counter() - start
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"model: {model_dir}" + (f"\nid counts from: {training_set}" if training_set else
                                        "\nno training set: all rows used, unweighted"))
    typer.echo(report.to_text())
    written = [_write_json(out / "collapse.json", {"model_dir": str(model_dir), "training_set": str(training_set)
                                                   if training_set else None, "seconds": seconds,
                                                   **report.to_dict()}),
               report.plot(out / "collapse_spectra.png")]
    try:
        imap = interaction_collapse_map(trained.model, id_counts=counts, max_rows=max_rows or
                                        settings.gates.ia_max_rows, seed=seed)
    except ValueError as exc:
        typer.echo(f"interaction collapse map: skipped ({exc})")
    else:
        _write_json(out / "interaction_map.json", imap.to_dict())
        written += [out / "interaction_map.json", plot_interaction_map(imap, out / "interaction_map.png")]
    typer.echo(f"\nanalysis took {seconds:.2f} s")
    for path in written:
        typer.echo(f"wrote {path}")


@analyze_app.command("entanglement")
def entanglement_cmd(
    model_dir: ModelDirOpt = None,
    training_set: Annotated[Optional[Path], typer.Option(
        "--training-set", help="rows with user_id, ad_id and the task labels (default: the model day's "
        "training set)")] = None,
    out: OutOpt = None,
    min_count: Annotated[int, typer.Option(min=1, help="impressions a user and an ad need at least")] = 5,
    max_pairs: Annotated[Optional[int], typer.Option(
        help="conflicting pairs sampled at most (default gates.entanglement_max_pairs)")] = None,
    seed: int = 0,
) -> None:
    """Contradictory preference analysis between every pair of tasks (separation of the conflicting
    (user, ad) pairs per table) and the inter-expert correlation."""
    settings = load_settings_or_exit()
    try:
        model_dir, training_set, out = _resolve(settings, model_dir, training_set, out, need_training_set=True)
        from components.training.artefact import load_trained
        from components.training.encoders import read_training_set
        from validation.entanglement import entanglement_report

        trained = load_trained(model_dir)
        table = read_training_set(training_set)
        start = time.perf_counter()
        report = entanglement_report(trained, table, min_count=min_count,
                                     max_pairs=max_pairs or settings.gates.entanglement_max_pairs, seed=seed)
        seconds = time.perf_counter() - start
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"model: {model_dir}\nrows: {training_set} ({table.num_rows} impressions)")
    typer.echo(report.to_text())
    written = [_write_json(out / "entanglement.json", {"model_dir": str(model_dir), "training_set":
                                                       str(training_set), "seconds": seconds, **report.to_dict()}),
               report.plot(out / "entanglement.png")]
    typer.echo(f"\nanalysis took {seconds:.2f} s")
    for path in written:
        typer.echo(f"wrote {path}")

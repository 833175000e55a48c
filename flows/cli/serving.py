"""``adsrec materialize`` and ``adsrec score``: the Feast online store and scoring (user, ad) pairs from it
(components/serving/online.py does the work; docs/serving.md explains it).

Registered on the main app by ``flows/cli/main.py``; importing this module loads only typer.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from flows.cli.common import prepare_settings

if TYPE_CHECKING:
    import pyarrow as pa

TOP_DEFAULT = 10


def _call(fn: Callable[[], Any]) -> Any:
    """Run a serving call; a missing store, bad input or unknown alias becomes a red message, exit 1."""
    errors: tuple[type[BaseException], ...] = (ValueError, KeyError, TypeError, FileNotFoundError)
    try:
        from components.registry.client import RegistryError

        errors = (*errors, RegistryError)
    except ImportError:  # the registry is optional for --model-dir scoring
        pass
    try:
        return fn()
    except errors as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        typer.secho(f"error: {message}", fg="red", err=True)
        raise typer.Exit(1) from None


def materialize(
    date: Annotated[Optional[dt.datetime], typer.Option(
        formats=["%Y-%m-%d"], help="materialise features as of the end of this UTC day "
                                   "(default: the newest day with built features)")] = None,
) -> None:
    """Load the newest feature values as of the end of a day into the Feast online store (SQLite)."""
    from components.serving.online_store import materialize_online, newest_feature_day

    settings = prepare_settings()
    day = date.date() if date is not None else _call(lambda: newest_feature_day(settings))
    out = _call(lambda: materialize_online(settings, day))
    typer.echo(f"online store as of {out['as_of']} ({out['online_store']}), {out['seconds']:.2f} s")
    for view, info in out["views"].items():
        ttl = f"ttl {info['ttl_days']} d" if info["ttl_days"] else "no ttl"
        typer.echo(f"  {view:<15} {info['entities_written']:>8} {info['entity']}s  ({ttl})")


def _write(table: "pa.Table", path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, path)


def _render(table: "pa.Table", top: int) -> str:
    """The ``top`` rows with the highest probability of the first task, as a fixed-width text table."""
    import pyarrow.compute as pc

    probs = [c for c in table.column_names if c.startswith("p_")]
    if probs:
        table = table.take(pc.sort_indices(table, sort_keys=[(probs[0], "descending")]))
    table = table.slice(0, top)
    cols = ["user_id", "ad_id", "slot", "position", "user_known", "ad_known", *probs]
    rows = [[("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)) for v in r.values()]
            for r in table.select(cols).to_pylist()]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def score(
    pairs: Annotated[Path, typer.Option("--pairs", help="a .csv or .parquet file with user_id, ad_id "
                                                         "[, event_time, slot, position, request_id]")],
    model_dir: Annotated[Optional[Path], typer.Option(
        "--model-dir", help="a saved ranker folder (models/<day>); default: the registry's --alias")] = None,
    alias: Annotated[str, typer.Option(help="registry alias used without --model-dir")] = "champion",
    out: Annotated[Optional[Path], typer.Option(
        help="output .csv or .parquet (default: <pairs>.scored.<ext> beside the pairs file)")] = None,
    top: Annotated[int, typer.Option(min=0, help="rows to print, highest first")] = TOP_DEFAULT,
    with_features: Annotated[bool, typer.Option(
        help="write every feature column too (parquet output only)")] = False,
) -> None:
    """Score (user, ad) pairs from the Feast online features with a saved ranker or a registered model."""
    from components.serving.online_rows import serving_summary
    from components.serving.requests import read_requests
    from components.serving.scoring import score_requests

    settings = prepare_settings()
    target = out or pairs.with_name(f"{pairs.stem}.scored{pairs.suffix or '.parquet'}")
    if with_features and target.suffix.lower() == ".csv":
        typer.secho("error: --with-features needs a .parquet output (list columns do not fit in CSV)",
                    fg="red", err=True)
        raise typer.Exit(2)
    requests = _call(lambda: read_requests(pairs))
    if model_dir is not None:
        from components.training.artefact import load_trained

        scorer = _call(lambda: load_trained(model_dir))
        source = str(model_dir)
    else:
        from components.registry.aliases import load_champion

        scorer = _call(lambda: load_champion(settings, alias))
        source = f"{settings.registry.model_name}@{alias}"
    scored = _call(lambda: score_requests(settings, requests, scorer))
    summary = serving_summary(scored)
    keep = scored if with_features else scored.select(
        ["request_id", "event_time", "user_id", "ad_id", "slot", "position", "user_known", "ad_known",
         *[c for c in scored.column_names if c.startswith("p_")]])
    _write(keep, target)
    if top and scored.num_rows:
        typer.echo(_render(scored, top))
    typer.echo(
        f"\n{summary['rows']} pairs scored with {source} (online store as of {summary.get('online_as_of')}); "
        f"unknown users {summary['unknown_users']}, unknown ads {summary['unknown_ads']}; "
        f"features {summary['seconds']:.3f} s, scoring {summary['seconds_scoring']:.3f} s"
    )
    late = sum(v["after_request"] for v in summary["withheld"].values())
    if late:
        typer.secho(f"note: {late} view value(s) were stamped after their request's event_time and were left out "
                    "(the online store is newer than the requests; materialise an earlier --date to score them "
                    "as of their time)", fg="yellow")
    typer.echo(f"scores: {target}")


def register(app: typer.Typer) -> None:
    """Add ``materialize`` and ``score`` to the main ``adsrec`` app."""
    app.command("materialize")(materialize)
    app.command("score")(score)

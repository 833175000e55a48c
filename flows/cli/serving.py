"""``adsrec materialize``, ``adsrec score`` and ``adsrec serve``: the Feast online store, scoring (user, ad)
pairs from it, and the HTTP scoring service (components/serving/ does the work; docs/serving.md explains it).

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


def serve(
    port: Annotated[Optional[int], typer.Option(help="port (default serving.port, 5200)")] = None,
    host: Annotated[Optional[str], typer.Option(help="address (default deploy.host, 127.0.0.1)")] = None,
    alias: Annotated[Optional[str], typer.Option(help="registry alias served (default serving.alias)")] = None,
    objective: Annotated[Optional[str], typer.Option(
        help="ranking objective, e.g. 'click * bid' (default serving.objective)")] = None,
    max_candidates: Annotated[Optional[int], typer.Option(min=1, help="candidates per request at most")] = None,
) -> None:
    """The HTTP scoring service on the registered champion: POST /score, /events; GET /ready, /metrics."""
    settings = prepare_settings()
    from components.serving.objective import ObjectiveError

    try:
        run_service(settings, host=host, port=port, alias=alias, objective=objective, max_candidates=max_candidates)
    except ObjectiveError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def run_service(settings: Any, *, host: str | None = None, port: int | None = None, alias: str | None = None,
                objective: str | None = None, max_candidates: int | None = None) -> None:
    """Load the service (online store, representations, model) and serve it with uvicorn until stopped."""
    import torch
    import uvicorn

    from components.serving.api import create_app
    from components.serving.service import ScoringService

    torch.set_num_threads(settings.serving.torch_threads)
    host = host or settings.deploy.host
    port = port or settings.serving.port
    service = ScoringService(settings, alias=alias, objective=objective, max_candidates=max_candidates)
    typer.echo(f"loading the online store, representations and {settings.registry.model_name}@{service.alias} ...")
    service.start()
    state = service.status()
    if state["ready"]:
        model = state["models"][service.alias]
        typer.echo(f"serving version {model['version']} ({service.alias}), online store as of "
                   f"{state['online_store']['as_of']}")
    else:
        typer.secho(f"not ready yet (GET /ready says why; retried every {settings.serving.poll_seconds:g} s): "
                    f"{state['reasons']}", fg="yellow")
    typer.echo(f"listening on http://{host}:{port}  (POST /score, POST /events, GET /ready, /status, /metrics)")
    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level="warning", access_log=False)
    finally:
        service.stop()


def register(app: typer.Typer) -> None:
    """Add ``materialize``, ``score`` and ``serve`` to the main ``adsrec`` app."""
    app.command("materialize")(materialize)
    app.command("score")(score)
    app.command("serve")(serve)

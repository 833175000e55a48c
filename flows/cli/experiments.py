"""``adsrec experiment NAME`` / ``adsrec experiment --list``: the reproductions of issue 6 (docs/results.md)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from flows.cli.common import prepare_settings


def _run_one(name: str, seeds: tuple[int, ...], size: str, mlflow: bool, write: bool,
             options: dict[str, str]) -> None:
    from components.experiments import get
    from components.experiments.base import PLOTS_DIR, ExperimentContext, section_name, write_results

    settings = prepare_settings()
    experiment = get(name)
    section = section_name(name, options)
    plot_dir = PLOTS_DIR / section if size == "default" else settings.home / "experiments" / section
    ctx = ExperimentContext(name=name, settings=settings, seeds=seeds, size=size,  # type: ignore[arg-type]
                            plot_dir=plot_dir, mlflow=mlflow, progress=typer.echo, options=options)
    shown = "".join(f", {k} {v}" for k, v in options.items())
    typer.echo(f"experiment {name}: {experiment.title} ({size} size, seeds {list(seeds)}{shown})")
    result = experiment(ctx)
    # The command that reproduces this result (options only where they differ from the defaults).
    flags = ([f"--seeds {','.join(map(str, seeds))}"] if seeds != (0, 1, 2) else []) + \
        ([f"--size {size}"] if size != "default" else []) + ([] if mlflow else ["--no-mlflow"]) + \
        [f"--option {k}={v}" for k, v in options.items()]
    result.command = " ".join(["adsrec", "experiment", name, *flags])
    from components.machine import describe_machine

    result.machine = describe_machine()
    typer.echo("")
    typer.echo(result.table_markdown())
    typer.echo(f"\nverdict: {result.verdict}. {result.finding}")
    for p in result.plots:
        typer.echo(f"plot: {p}")
    if write and size == "default":
        typer.echo(f"wrote {write_results(result)}")
    elif write:
        typer.echo("(small size: docs/results.md not written)")


def experiment(
    name: Annotated[Optional[str], typer.Argument(help="the experiment (see --list)")] = None,
    list_: Annotated[bool, typer.Option("--list", help="name every experiment and its claim")] = False,
    seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "0,1,2",
    size: Annotated[str, typer.Option(help="default (the documented size) or small (a smoke run)")] = "default",
    mlflow: Annotated[bool, typer.Option(help="log every run to MLflow (adsrec-exp-<name>)")] = True,
    write: Annotated[bool, typer.Option(help="write the result into docs/results.md")] = True,
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", help="an experiment's own option as KEY=VALUE, repeatable (temporal: strength=strong)")] = None,
) -> None:
    """Reproduce one of the papers' claims with 3 seeds: a mean ± std table, plots, a verdict, MLflow runs,
    and its section of docs/results.md."""
    from components.experiments import NAMES, get

    if list_ or name is None:
        for n in NAMES:
            e = get(n)
            typer.echo(f"{n:16s} {e.title}\n{'':16s} claim: {e.claim}")
            for key, values in e.options.items():
                typer.echo(f"{'':16s} --option {key}={'|'.join(values)} (default {values[0]})")
        return
    if size not in ("default", "small"):
        typer.secho(f"error: --size must be default or small, got {size!r}", fg="red", err=True)
        raise typer.Exit(2)
    try:
        parsed = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        typer.secho(f"error: --seeds must be integers separated by commas, got {seeds!r}", fg="red", err=True)
        raise typer.Exit(2) from None
    try:
        found = get(name)
    except KeyError as exc:
        typer.secho(f"error: {exc.args[0]}", fg="red", err=True)
        raise typer.Exit(2) from None
    pairs = option or []
    try:
        bad = [o for o in pairs if "=" not in o]
        if bad:
            raise ValueError(f"--option takes KEY=VALUE, got {bad[0]!r}")
        given = dict(o.partition("=")[::2] for o in pairs)
        found.resolve_options(given)
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    defaults = found.resolve_options({})
    _run_one(name, parsed, size, mlflow, write, {k: v for k, v in given.items() if v != defaults[k]})


def register(app: typer.Typer) -> None:
    app.command("experiment")(experiment)

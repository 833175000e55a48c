"""The frame every experiment shares: context (settings, seeds, size, output folders, MLflow), result
(a table of mean ± std over seeds, plots, a verdict on the claim), and writing ``docs/results.md``.

An experiment is a function ``run(ctx) -> ExperimentResult``. It trains its models with
``components.training.loop.train_ranker`` on data from ``components.experiments.data``, logs every (variant,
seed) run with :meth:`ExperimentContext.log_run` (one MLflow experiment per comparison,
``adsrec-exp-<name>``), aggregates with :func:`mean_std`, saves plots under ``ctx.plot_dir`` and returns
the result; :func:`write_results` puts it into its own section of docs/results.md (and the claim-by-claim
summary at the top), with the exact command that produced it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from components.config import PROJECT_ROOT, Settings

Verdict = Literal["reproduced", "partly", "not reproduced", "not run"]
RESULTS_MD = PROJECT_ROOT / "docs" / "results.md"
PLOTS_DIR = PROJECT_ROOT / "docs" / "results"


@dataclass
class ExperimentContext:
    """What a run of one experiment gets.

    Args:
        name: the experiment's name (its MLflow experiment is ``adsrec-exp-<name>``).
        settings: resolved settings (``home`` holds the MLflow store and any pipeline state it builds).
        seeds: one training run per seed and variant.
        size: ``"default"`` (the documented size, under 30 minutes on 2 cores) or ``"small"`` (a smoke
            run for tests: minutes less data and epochs; its numbers are not results).
        plot_dir: where PNGs go (``docs/results/<name>/`` for a default run).
        mlflow: log every run to MLflow.
        progress: receives one line per finished run.
    """

    name: str
    settings: Settings
    seeds: tuple[int, ...] = (0, 1, 2)
    size: Literal["default", "small"] = "default"
    plot_dir: Path = PLOTS_DIR
    mlflow: bool = True
    progress: Callable[[str], None] = print
    _experiment_id: str | None = field(default=None, repr=False)

    @property
    def small(self) -> bool:
        return self.size == "small"

    def log_run(self, run_name: str, params: Mapping[str, Any], metrics: Mapping[str, float],
                artifacts: Iterable[Path] = ()) -> None:
        """One MLflow run under ``adsrec-exp-<name>`` (params flattened to strings, non-finite metrics
        skipped), and a progress line."""
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if _finite(v))
        self.progress(f"[{self.name}] {run_name}: {shown}")
        if not self.mlflow:
            return
        from components.registry.client import mlflow_client

        with mlflow_client(self.settings) as client:
            if self._experiment_id is None:
                exp_name = f"adsrec-exp-{self.name}"
                found = client.get_experiment_by_name(exp_name)
                if found is not None:
                    self._experiment_id = found.experiment_id
                else:
                    from components.registry.client import artifact_root_uri

                    self._experiment_id = client.create_experiment(
                        exp_name, artifact_location=_child_uri(artifact_root_uri(self.settings), exp_name))
            run = client.create_run(self._experiment_id, run_name=run_name, tags={"size": self.size})
            rid = run.info.run_id
            for k, v in params.items():
                client.log_param(rid, str(k)[:250], str(v)[:6000])
            for k, v in metrics.items():
                if _finite(v):
                    client.log_metric(rid, re.sub(r"[^\w\-. /]", "_", str(k)), float(v))
            for path in artifacts:
                client.log_artifact(rid, str(path))
            client.set_terminated(rid)


def _child_uri(root: str | None, name: str) -> str | None:
    return None if root is None else f"{root.rstrip('/')}/{name}"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) over seeds, NaN-free values only."""
    arr = np.array([v for v in values if _finite(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def fmt(mean: float, std: float, digits: int = 4) -> str:
    """``0.6523 ± 0.0021``."""
    if not _finite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


@dataclass
class ExperimentResult:
    """What an experiment found.

    ``columns`` name the table's columns; each row of ``rows`` maps a column to a cell (strings, already
    formatted with :func:`fmt`). ``verdict`` is the claim's outcome and ``finding`` one or two sentences
    with the numbers behind it. ``data`` keeps the raw per-seed numbers (JSON-able) for the record.
    """

    name: str
    title: str
    claim: str
    columns: list[str]
    rows: list[dict[str, str]]
    verdict: Verdict
    finding: str
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    size: str = "default"
    seconds: float = 0.0
    command: str = ""
    machine: str = ""
    finished: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))

    def table_markdown(self) -> str:
        head = "| " + " | ".join(_cell(c) for c in self.columns) + " |"
        sep = "|" + "|".join("---" for _ in self.columns) + "|"
        body = ["| " + " | ".join(_cell(r.get(c, "")) for c in self.columns) + " |" for r in self.rows]
        return "\n".join([head, sep, *body])

    def to_markdown(self, relative_to: Path = RESULTS_MD.parent) -> str:
        lines = [f"## {self.title}", "", f"**Claim.** {self.claim}", "",
                 f"**Command:** `{self.command}` ({self.size} size, seeds {', '.join(map(str, self.seeds))}; "
                 f"{self.seconds / 60:.1f} min on {self.machine or 'this machine'}, finished {self.finished})", "",
                 self.table_markdown(), "", f"**Verdict: {self.verdict}.** {self.finding}", ""]
        lines += [f"- {n}" for n in self.notes]
        if self.notes:
            lines.append("")
        for p in self.plots:
            try:
                rel = Path(p).resolve().relative_to(relative_to.resolve())
            except ValueError:
                rel = Path(p)
            lines.append(f"![{Path(p).stem}]({rel.as_posix()})")
        return "\n".join(lines).rstrip() + "\n"


@dataclass(frozen=True)
class Experiment:
    """One comparison of issue 6: its name, title, the claim, and the function that runs it."""

    name: str
    title: str
    claim: str
    run: Callable[[ExperimentContext], ExperimentResult]

    def __call__(self, ctx: ExperimentContext) -> ExperimentResult:
        started = time.perf_counter()
        result = self.run(ctx)
        result.seconds = time.perf_counter() - started
        result.seeds, result.size = ctx.seeds, ctx.size
        return result


# ----- docs/results.md ------------------------------------------------------------------------------------
_HEADER = """# Results: the papers' claims on real and simulated data

Produced by `adsrec experiment NAME` (every one: `python bench/reproduce.py`); every number below comes from
the committed code at the size and seeds stated next to it, and every run is logged to MLflow under the
experiment `adsrec-exp-<name>` (`adsrec up`, then the MLflow UI). Data: the demo marketplace (known
ground truth), the Taobao slice and MovieLens-100k from `../shared/data`.

"""


def _cell(value: Any) -> str:
    """A markdown table cell: a literal ``|`` (as in ``|c - 1|``) must not split the cell."""
    return re.sub(r"(?<!\\)\|", r"\\|", str(value))


def _section(name: str, body: str) -> str:
    return f"<!-- experiment:{name} -->\n{body.rstrip()}\n<!-- /experiment:{name} -->\n"


def _read_results(path: Path) -> tuple[dict[str, str], dict[str, str], str]:
    """(sections by experiment, summaries by experiment, the hand-written text after the last section)."""
    text = path.read_text() if path.is_file() else ""
    found = list(re.finditer(r"<!-- experiment:(\w+) -->\n(.*?)<!-- /experiment:\1 -->\n", text, flags=re.S))
    sections = {m.group(1): m.group(2) for m in found}
    tail = text[found[-1].end():].strip() if found else ""
    return sections, dict(re.findall(r"<!-- verdict:(\w+) (.*?) -->", text)), tail


def _write_results(path: Path, sections: Mapping[str, str], summaries: Mapping[str, str], tail: str = "") -> Path:
    from components.experiments import NAMES
    from components.storage import write_file_atomic

    rows = ["| experiment | verdict | the numbers |", "|---|---|---|"]
    for name in NAMES:
        verdict, _, finding = summaries.get(name, "not run|not run yet").partition("|")
        rows.append(f"| [{name}](#{name}) | {verdict} | {_cell(finding)} |")
    out = _HEADER + "## Summary, claim by claim\n\n" + "\n".join(rows) + "\n\n"
    for name in NAMES:
        if name in sections:
            out += f'<a id="{name}"></a>\n\n' + _section(name, sections[name]) + "\n"
    if tail:  # sections written by hand after the experiments' (bench results): kept as they are
        out += "\n" + tail + "\n"

    def write(tmp: Path) -> None:
        tmp.write_text(out)

    write_file_atomic(path, write)
    return path


def write_results(result: ExperimentResult, path: Path = RESULTS_MD) -> Path:
    """Replace (or add) ``result``'s section of ``path`` and refresh the summary table at its top."""
    sections, summaries, tail = _read_results(path)
    sections[result.name] = result.to_markdown(path.parent) + f"<!-- verdict:{result.name} {result.verdict}|{result.finding} -->\n"
    summaries[result.name] = f"{result.verdict}|{result.finding}"
    return _write_results(path, sections, summaries, tail)


def refresh_results(path: Path = RESULTS_MD) -> Path:
    """Rewrite ``path``'s header and summary table from its sections (after a format change)."""
    sections, summaries, tail = _read_results(path)
    return _write_results(path, sections, summaries, tail)

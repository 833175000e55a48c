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
from components.training.intervals import DEFAULT_BOOTSTRAP, Interval, mean_auc_difference_interval, weighted_auc

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
        options: the experiment's own options (:attr:`Experiment.options`), e.g. ``{"strength": "strong"}``;
            the ones left out take their defaults when the experiment runs.
    """

    name: str
    settings: Settings
    seeds: tuple[int, ...] = (0, 1, 2)
    size: Literal["default", "small"] = "default"
    plot_dir: Path = PLOTS_DIR
    mlflow: bool = True
    progress: Callable[[str], None] = print
    options: Mapping[str, str] = field(default_factory=dict)
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


@dataclass(frozen=True)
class Difference:
    """A headline difference between two variants on the test day: the seed mean and spread (sample std)
    of the paired per-seed differences, and the paired bootstrap interval over users of that seed mean
    (:func:`components.training.intervals.mean_auc_difference_interval`).

    It is beyond the noise when the wider of the two bands - the interval, or the mean ± the seeds' std
    - lies on one side of 0: :meth:`above` / :meth:`below`. An undefined interval (one class) is never
    beyond the noise.
    """

    mean: float
    std: float
    interval: Interval

    @property
    def low(self) -> float:
        return math.nan if math.isnan(self.interval.low) else min(self.interval.low, self.mean - self.std)

    @property
    def high(self) -> float:
        return math.nan if math.isnan(self.interval.high) else max(self.interval.high, self.mean + self.std)

    def above(self, value: float = 0.0) -> bool:
        """The difference is larger than ``value`` beyond the noise."""
        return _finite(self.low) and self.low > value

    def below(self, value: float = 0.0) -> bool:
        """The difference is smaller than ``value`` beyond the noise."""
        return _finite(self.high) and self.high < value

    def word(self) -> str:
        """``"above 0"``, ``"below 0"`` or ``"within the noise"``."""
        return "above 0" if self.above() else ("below 0" if self.below() else "within the noise")

    def interval_text(self) -> str:
        """``[-0.0010, +0.0060]`` (the bootstrap interval) or ``[undefined]``."""
        iv = self.interval
        return "[undefined]" if not _finite(iv.low) else f"[{iv.low:+.4f}, {iv.high:+.4f}]"

    def __str__(self) -> str:
        """``+0.0025 ± 0.0042 [-0.0010, +0.0060]``: seed mean ± std, then the 95% interval over users."""
        if not _finite(self.mean):
            return "-"
        return f"{self.mean:+.4f} ± {self.std:.4f} {self.interval_text()}"

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "interval": self.interval.to_dict(), "verdict": self.word()}


def auc_gain(labels: np.ndarray, runs: Sequence[np.ndarray], baseline: Sequence[np.ndarray], users: np.ndarray,
             rows: np.ndarray | None = None, n_boot: int = DEFAULT_BOOTSTRAP) -> Difference:
    """The test-day AUC gain of ``runs`` over ``baseline`` (one score array per seed, paired by seed): per
    seed AUC(run) - AUC(baseline), their mean and std over seeds, and the paired bootstrap interval over
    ``users`` of the mean (per seed, then averaged over the seeds on the same resamples). ``rows``: a
    boolean mask of the slice to score (e.g. first exposures, new ads); None: every row.

    Example::

        auc_gain(market.labels["click"], stem_scores, single_scores, market.test_users)  # +0.0031 ± ...
    """
    keep = np.ones(len(labels), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    y, groups = np.asarray(labels)[keep], np.asarray(users)[keep]
    a, b = [np.asarray(r)[keep] for r in runs], [np.asarray(r)[keep] for r in baseline]
    ones = np.ones((1, y.size))
    per_seed = [float(weighted_auc(y, ra, ones)[0] - weighted_auc(y, rb, ones)[0]) for ra, rb in zip(a, b)]
    mean, std = mean_std(per_seed)
    return Difference(mean, std, mean_auc_difference_interval(y, a, b, groups, n_boot=n_boot))


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


def section_name(name: str, options: Mapping[str, str]) -> str:
    """The results section (and plot folder) of experiment ``name`` run with ``options`` away from their
    defaults: ``temporal__strength_strong``; ``name`` itself when there are none."""
    return "__".join([name, *(f"{k}_{v}" for k, v in options.items())])


@dataclass(frozen=True)
class Experiment:
    """One comparison of issue 6: its name, title, the claim, the function that runs it, and its options
    (name -> allowed values, the first the default). A run with an option away from its default is a
    section of its own in docs/results.md, ``<name>__<option>_<value>``, beside the default run's."""

    name: str
    title: str
    claim: str
    run: Callable[[ExperimentContext], ExperimentResult]
    options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def resolve_options(self, given: Mapping[str, str]) -> dict[str, str]:
        """Every option with its value: ``given`` checked, the rest at their defaults. Raises ``ValueError``
        naming the allowed options or values for an unknown one."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            allowed = ", ".join(self.options) or "none"
            raise ValueError(f"experiment {self.name} has no option {unknown[0]!r} (its options: {allowed})")
        for key, value in given.items():
            if value not in self.options[key]:
                raise ValueError(f"experiment {self.name}: option {key} must be one of "
                                 f"{', '.join(self.options[key])}, got {value!r}")
        return {key: given.get(key, values[0]) for key, values in self.options.items()}

    def __call__(self, ctx: ExperimentContext) -> ExperimentResult:
        ctx.options = self.resolve_options(ctx.options)
        started = time.perf_counter()
        result = self.run(ctx)
        result.seconds = time.perf_counter() - started
        result.seeds, result.size = ctx.seeds, ctx.size
        changed = {k: v for k, v in ctx.options.items() if v != self.options[k][0]}
        if changed:
            result.name = section_name(self.name, changed)
            result.title += " (" + ", ".join(f"{k} {v}" for k, v in changed.items()) + ")"
        return result


# ----- docs/results.md ------------------------------------------------------------------------------------
_HEADER = """# Results: the papers' claims on real and simulated data

Produced by `adsrec experiment NAME` (every one: `python bench/reproduce.py`); every number below comes from
the committed code at the size and seeds stated next to it, and every run is logged to MLflow under the
experiment `adsrec-exp-<name>` (`adsrec up`, then the MLflow UI). Data: the demo marketplace (known
ground truth), the Taobao slice and MovieLens-100k from `../shared/data`.

**Protocol (issue 12).** Every dataset is split three ways by time: train (every day but the last two),
validation (the day before the newest) and test (the newest day, untouched; MovieLens: the last 10% of
the log in time tests and the 10% before it validates). Everything chosen - the α of the ranking loss,
the shared-embedding model tested for negative transfer, which real dataset is informative - is chosen
on the validation day; every reported number is on the test day. Models train a fixed number of epochs
and keep the last (no early stopping). Tables show mean ± std over seeds; every comparison a verdict
rests on is a paired test-day difference with a 95% bootstrap interval over the test day's users
(`components.training.intervals`, 200 resamples; per seed, then averaged over the seeds on the same
resamples), shown as `mean ± std [low, high]`. A difference counts only when the interval or the seeds'
spread, whichever is wider, excludes 0; "matches" means "not below beyond that noise". Every section
below was run under this protocol (2026-12-06); the verdicts that changed from the earlier two-way runs
are listed in docs/evaluation.md ("The experiments under the clean protocol").

"""


def _cell(value: Any) -> str:
    """A markdown table cell: a literal ``|`` (as in ``|c - 1|``) must not split the cell."""
    return re.sub(r"(?<!\\)\|", r"\\|", str(value))


def _section(name: str, body: str) -> str:
    return f"<!-- experiment:{name} -->\n{body.rstrip()}\n<!-- /experiment:{name} -->\n"


def _read_results(path: Path) -> tuple[dict[str, str], dict[str, str], str]:
    """The experiments' sections, their verdict lines, and the text after the last section (hand-written
    sections such as the interest-feature gain, kept as they are)."""
    text = path.read_text() if path.is_file() else ""
    found = list(re.finditer(r"<!-- experiment:(\w+) -->\n(.*?)<!-- /experiment:\1 -->\n", text, flags=re.S))
    sections = {m.group(1): m.group(2) for m in found}
    tail = text[found[-1].end():].strip() if found else ""
    return sections, dict(re.findall(r"<!-- verdict:(\w+) (.*?) -->", text)), tail


def _write_results(path: Path, sections: Mapping[str, str], summaries: Mapping[str, str], tail: str = "") -> Path:
    from components.experiments import NAMES
    from components.storage import write_file_atomic

    rows = ["| experiment | verdict | the numbers |", "|---|---|---|"]
    # each experiment, then its runs with an option away from the default (``<name>__<option>_<value>``)
    names = [key for name in NAMES for key in
             [name, *sorted(k for k in {*sections, *summaries} if k.startswith(name + "__"))]]
    for name in names:
        if name not in NAMES and name not in summaries:
            continue
        verdict, _, finding = summaries.get(name, "not run|not run yet").partition("|")
        rows.append(f"| [{name}](#{name}) | {verdict} | {_cell(finding)} |")
    out = _HEADER + "## Summary, claim by claim\n\n" + "\n".join(rows) + "\n\n"
    for name in names:
        if name in sections:
            out += f'<a id="{name}"></a>\n\n' + _section(name, sections[name]) + "\n"
    if tail:
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
    return _write_results(path, *_read_results(path))

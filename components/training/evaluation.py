"""Offline evaluation of a multi-task ranker: AUC, GAUC, logloss, calibration, per slice, and the
simulator's oracle AUC.

METHODS.md "Metrics", DESIGN.md section 7; definitions and slices in docs/evaluation.md.

- :func:`auc`: tie-aware ROC AUC from average ranks (the Mann-Whitney statistic), so a pair with equal
  scores counts one half, exactly as a pairwise count would.
- :func:`gauc`: ``sum_u n_u AUC_u / sum_u n_u`` over the users with both classes, ``n_u`` the user's
  impressions; one lexsort by (user, score) and ``bincount``s, no per-user Python.
- :func:`logloss` (predictions clipped to ``[eps, 1 - eps]``) and :func:`calibration` (mean prediction /
  observed rate).
- :func:`evaluate`: every metric for each task on the whole table and on slices (first vs repeated
  exposure, new vs established ads, the top categories) -> :class:`EvalReport`.
- :func:`oracle_auc`: the AUC of the simulator's true probabilities (read from ``settings.truth_dir``)
  and each model's ratio to it -> :class:`OracleReport`.

Scores passed to :func:`evaluate` are predicted probabilities in [0, 1] (``sigmoid`` of the ranker's
logits), aligned with the table's rows.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from components.config import Settings

US_PER_DAY = 86_400_000_000
LOGLOSS_EPS = 1e-7


# --- metrics ------------------------------------------------------------------------------------------


def _as_labels(labels: Any, n: int | None = None) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    if n is not None and y.size != n:
        raise ValueError(f"labels have {y.size} rows but scores have {n}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    return y.astype(bool)


def _as_scores(scores: Any) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return s


def _as_probabilities(probs: Any) -> np.ndarray:
    p = _as_scores(probs)
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError(
            f"predictions must be probabilities in [0, 1] (got {p.min():.4g}..{p.max():.4g}); pass sigmoid(logits)"
        )
    return p


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; tied values share the mean of their ranks."""
    n = x.size
    order = np.argsort(x)  # any order inside a tie will do: ties get their mean rank below
    xs = x[order]
    new = np.ones(n, bool)
    new[1:] = xs[1:] != xs[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)
    ranks = np.empty(n)
    ranks[order] = np.repeat((starts + ends - 1) / 2.0 + 1.0, ends - starts)
    return ranks


def auc(scores: Any, labels: Any) -> float:
    """ROC AUC: the probability that a random positive scores above a random negative, ties counting
    one half. NaN when either class is missing.

    Example::

        >>> auc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1])
        0.875
    """
    s = _as_scores(scores)
    y = _as_labels(labels, s.size)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _average_ranks(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc_detail(scores: Any, labels: Any, groups: Any) -> tuple[float, int]:
    """(GAUC, number of groups with both classes). GAUC = ``sum_u n_u AUC_u / sum_u n_u`` over the groups
    (users) holding both a positive and a negative; ``n_u`` counts all of the group's rows. NaN when no
    group has both classes."""
    s = _as_scores(scores)
    y = _as_labels(labels, s.size)
    g = np.asarray(groups)
    if g.shape != s.shape:
        raise ValueError(f"groups have shape {g.shape} but scores have {s.shape}")
    if s.size == 0:
        return float("nan"), 0
    _, code = np.unique(g, return_inverse=True)
    return _gauc_codes(s, y, code.ravel())


def _gauc_codes(s: np.ndarray, y: np.ndarray, code: np.ndarray) -> tuple[float, int]:
    """GAUC over dense group codes ``0..G-1`` (validated inputs)."""
    if s.size == 0:
        return float("nan"), 0
    # By group, then score: a score sort then a stable sort by group (twice as fast as a lexsort).
    by_score = np.argsort(s)
    order = by_score[np.argsort(code[by_score], kind="stable")]
    cs, ss, ys = code[order], s[order], y[order]
    n = s.size
    group_start = np.ones(n, bool)
    group_start[1:] = cs[1:] != cs[:-1]
    run_start = group_start.copy()  # a run: equal (group, score), i.e. a tie inside a group
    run_start[1:] |= ss[1:] != ss[:-1]
    idx = np.arange(n)
    first_of_group = np.maximum.accumulate(np.where(group_start, idx, 0))
    starts = np.flatnonzero(run_start)
    ends = np.append(starts[1:], n)
    run_mid = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    rank = run_mid - first_of_group + 1.0  # 1-based, tie-averaged rank inside the group
    n_groups = int(cs[-1]) + 1
    size = np.bincount(cs, minlength=n_groups).astype(float)
    pos = np.bincount(cs, weights=ys.astype(float), minlength=n_groups)
    pos_rank = np.bincount(cs, weights=rank * ys, minlength=n_groups)
    neg = size - pos
    both = (pos > 0) & (neg > 0)
    if not both.any():
        return float("nan"), 0
    auc_u = (pos_rank[both] - pos[both] * (pos[both] + 1) / 2.0) / (pos[both] * neg[both])
    return float((size[both] * auc_u).sum() / size[both].sum()), int(both.sum())


def gauc(scores: Any, labels: Any, groups: Any) -> float:
    """Group AUC, impression-weighted over the users with both classes (see :func:`gauc_detail`).

    Example::

        >>> # user 1: AUC 1.0 on 2 rows; user 2: AUC 0.5 on 3 rows -> (2 * 1.0 + 3 * 0.5) / 5
        >>> gauc([0.1, 0.9, 0.2, 0.3, 0.1], [0, 1, 1, 0, 0], [1, 1, 2, 2, 2])
        0.7
    """
    return gauc_detail(scores, labels, groups)[0]


def logloss(probs: Any, labels: Any, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy, predictions clipped to ``[eps, 1 - eps]``. NaN on no rows."""
    p = _as_probabilities(probs)
    y = _as_labels(labels, p.size)
    if p.size == 0:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def calibration(probs: Any, labels: Any) -> float:
    """Mean prediction / observed positive rate (1 is calibrated, > 1 over-predicts). NaN when the
    rows hold no positive."""
    p = _as_probabilities(probs)
    y = _as_labels(labels, p.size)
    if p.size == 0 or not y.any():
        return float("nan")
    return float(p.mean() / y.mean())


# --- reports ------------------------------------------------------------------------------------------


@dataclass
class TaskMetrics:
    """One task's metrics on one set of rows."""

    rows: int
    positives: int
    positive_rate: float
    mean_prediction: float
    auc: float
    gauc: float
    gauc_users: int
    logloss: float
    calibration: float

    @classmethod
    def compute(cls, probs: np.ndarray, labels: np.ndarray, user_codes: np.ndarray | None) -> "TaskMetrics":
        """Metrics of validated arrays; ``user_codes`` are dense user codes (``np.unique`` inverse)."""
        n = int(probs.size)
        g, g_users = _gauc_codes(probs, labels, user_codes) if user_codes is not None else (float("nan"), 0)
        return cls(
            rows=n,
            positives=int(labels.sum()),
            positive_rate=float(labels.mean()) if n else float("nan"),
            mean_prediction=float(probs.mean()) if n else float("nan"),
            auc=auc(probs, labels),
            gauc=g,
            gauc_users=g_users,
            logloss=logloss(probs, labels),
            calibration=calibration(probs, labels),
        )


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _fmt(x: float, spec: str) -> str:
    return "-" if not math.isfinite(x) else format(x, spec)


@dataclass
class EvalReport:
    """Per-task metrics on the whole table (``overall``) and on each slice (``slices[name][task]``).

    ``oracle`` (task -> oracle AUC), when attached with :meth:`with_oracle`, adds the oracle AUC and the
    model's ratio to it to the text table."""

    tasks: tuple[str, ...]
    rows: int
    overall: dict[str, TaskMetrics]
    slices: dict[str, dict[str, TaskMetrics]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    oracle: dict[str, float] = field(default_factory=dict)

    def with_oracle(self, oracle: "OracleReport") -> "EvalReport":
        self.oracle = dict(oracle.oracle)
        return self

    def metric(self, task: str, name: str, slice_name: str | None = None) -> float:
        """One number, e.g. ``report.metric("click", "calibration", "exposure=first")``."""
        block = self.overall if slice_name is None else self.slices[slice_name]
        return float(getattr(block[task], name))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (NaN -> null)."""
        out = {
            "tasks": list(self.tasks),
            "rows": self.rows,
            "overall": {t: asdict(m) for t, m in self.overall.items()},
            "slices": {s: {t: asdict(m) for t, m in per.items()} for s, per in self.slices.items()},
            "notes": list(self.notes),
        }
        if self.oracle:
            out["oracle_auc"] = dict(self.oracle)
            out["auc_ratio_to_oracle"] = {
                t: self.overall[t].auc / a for t, a in self.oracle.items() if t in self.overall and a > 0
            }
        return _json_safe(out)

    def to_text(self) -> str:
        """A readable fixed-width table: one line per (slice, task)."""
        head = f"{'slice':<28} {'task':<12} {'rows':>9} {'pos%':>7} {'AUC':>7} {'GAUC':>7} {'logloss':>8} {'calib':>6}"
        if self.oracle:
            head += f" {'oracle':>7} {'ratio':>6}"
        lines = [head, "-" * len(head)]
        blocks = [("all", self.overall), *self.slices.items()]
        for name, per in blocks:
            for task in self.tasks:
                m = per[task]
                line = (
                    f"{name[:28]:<28} {task[:12]:<12} {m.rows:>9d} {_fmt(100 * m.positive_rate, '.2f'):>7} "
                    f"{_fmt(m.auc, '.4f'):>7} {_fmt(m.gauc, '.4f'):>7} {_fmt(m.logloss, '.4f'):>8} "
                    f"{_fmt(m.calibration, '.3f'):>6}"
                )
                if self.oracle:
                    o = self.oracle.get(task, float("nan")) if name == "all" else float("nan")
                    ratio = m.auc / o if math.isfinite(o) and o > 0 else float("nan")
                    line += f" {_fmt(o, '.4f'):>7} {_fmt(ratio, '.3f'):>6}"
                lines.append(line)
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


# --- slices -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSlices:
    """Which slices :func:`evaluate` reports.

    Args:
        exposure: ``exposure=first`` (exposure_index 1) and ``exposure=repeated`` (>= 2).
        new_ad_days: an impression is on a new ad when the ad was created less than this many days
            before it (``ads=new`` / ``ads=established``); None turns the slice off.
        category_column: the taxonomy column for ``category=<value>`` slices; None picks the first string
            ``ad_profile__*`` column of the table.
        top_categories: how many of the most shown categories get a slice (0 turns them off).
    """

    exposure: bool = True
    new_ad_days: float | None = 1.0
    category_column: str | None = None
    top_categories: int = 5


def _micros(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)


def _ad_age_days(table: pa.Table, ads: pa.Table | None) -> tuple[np.ndarray | None, str]:
    """Age of each row's ad in days at the impression (NaN when unknown), and how it was found."""
    event = _micros(table.column("event_time"))
    if ads is not None:
        missing = [c for c in ("ad_id", "created_at") if c not in ads.column_names]
        if missing:
            raise ValueError(f"the ads table lacks columns {missing}")
        ad_ids = ads.column("ad_id").to_numpy()
        created = _micros(ads.column("created_at"))
        # First creation time per ad (a re-delivered ad keeps its original age).
        order = np.lexsort((created, ad_ids))
        ad_ids, created = ad_ids[order], created[order]
        first = np.ones(ad_ids.size, bool)
        first[1:] = ad_ids[1:] != ad_ids[:-1]
        ad_ids, created = ad_ids[first], created[first]
        query = table.column("ad_id").to_numpy()
        pos = np.minimum(np.searchsorted(ad_ids, query), max(ad_ids.size - 1, 0))
        known = ad_ids.size > 0
        hit = (ad_ids[pos] == query) if known else np.zeros(query.size, bool)
        age = np.where(hit, (event - (created[pos] if known else 0)) / US_PER_DAY, np.nan)
        return age, "ad created_at from the ads table"
    if "ad_created_at" in table.column_names:
        # float64 holds microseconds since 1970 exactly (< 2**53); a null becomes NaN, an unknown age.
        created = _micros(table.column("ad_created_at")).astype(np.float64)
        return (event - created) / US_PER_DAY, "ad_created_at column"
    return None, ""


def _category_column(table: pa.Table, wanted: str | None) -> str | None:
    if wanted is not None:
        if wanted not in table.column_names:
            raise ValueError(f"category column {wanted!r} is not in the table")
        return wanted
    for f in table.schema:
        if f.name.startswith("ad_profile__") and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)):
            return f.name
    return None


def slice_masks(table: pa.Table, slices: EvalSlices = EvalSlices(),
                ads: pa.Table | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Boolean row masks of every slice, and notes on how they were defined (or why one is missing).

    New ads: the ad's creation time comes from ``ads`` (``ad_id``, ``created_at``; e.g. the offline
    store's ads table), else from an ``ad_created_at`` column; without either, the ``ads=`` slices are
    left out with a note."""
    masks: dict[str, np.ndarray] = {}
    notes: list[str] = []
    if slices.exposure:
        if "exposure_index" not in table.column_names:
            notes.append("no exposure_index column: exposure slices left out")
        else:
            exposure = table.column("exposure_index").to_numpy(zero_copy_only=False)
            masks["exposure=first"] = exposure == 1
            masks["exposure=repeated"] = exposure >= 2
    if slices.new_ad_days is not None:
        age, source = _ad_age_days(table, ads)
        if age is None:
            notes.append("no ad creation times (pass ads= or an ad_created_at column): new-ad slices left out")
        else:
            masks["ads=new"] = age < slices.new_ad_days
            masks["ads=established"] = age >= slices.new_ad_days
            unknown = int(np.isnan(age).sum())
            notes.append(f"new ads: created < {slices.new_ad_days:g} days before the impression ({source})"
                         + (f"; {unknown} rows with an unknown ad are in neither" if unknown else ""))
    if slices.top_categories > 0:
        column = _category_column(table, slices.category_column)
        if column is None:
            notes.append("no ad_profile__ string column: category slices left out")
        else:
            import pyarrow.compute as pc

            values = table.column(column)
            counts = pc.value_counts(values.drop_null()).to_pylist()
            counts.sort(key=lambda d: (-d["counts"], d["values"]))  # most shown first; ties by name
            for d in counts[: slices.top_categories]:
                masks[f"category={d['values']}"] = pc.equal(values, d["values"]).fill_null(False).to_numpy(
                    zero_copy_only=False
                )
            notes.append(f"categories: the {min(slices.top_categories, len(counts))} most shown values of {column}")
    return masks, notes


def evaluate(
    scores: Mapping[str, Any],
    table: pa.Table,
    tasks: Sequence[str],
    slices: EvalSlices = EvalSlices(),
    ads: pa.Table | None = None,
) -> EvalReport:
    """Every metric for each task, on the whole ``table`` and on each slice.

    Args:
        scores: task -> predicted probabilities, aligned with ``table``'s rows.
        table: the evaluated rows: labels, ``user_id`` (for GAUC), ``exposure_index``, ``event_time``,
            ``ad_id`` and the training set's feature columns (a training-set parquet as read back).
        tasks: the tasks to report.
        slices: which slices (see :class:`EvalSlices`).
        ads: ``ad_id`` and ``created_at`` of the ads, for the new-ad slice.

    Example::

        >>> report = evaluate({"click": p_click}, valid_table, ["click"])     # doctest: +SKIP
        >>> report.metric("click", "calibration", "exposure=first")          # doctest: +SKIP
    """
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("evaluate needs at least one task")
    n = table.num_rows
    probs: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for task in tasks:
        if task not in scores:
            raise ValueError(f"no scores for task {task!r} (got {sorted(scores)})")
        if task not in table.column_names:
            raise ValueError(f"the table has no label column {task!r}")
        probs[task] = _as_probabilities(scores[task])
        if probs[task].size != n:
            raise ValueError(f"scores for {task!r} have {probs[task].size} rows, the table has {n}")
        labels[task] = _as_labels(table.column(task).to_numpy(zero_copy_only=False), n)
    users = None  # dense user codes, computed once for every task and slice
    if "user_id" in table.column_names:
        users = np.unique(table.column("user_id").to_numpy(zero_copy_only=False), return_inverse=True)[1].ravel()
    notes = [] if users is not None else ["no user_id column: GAUC not computed"]
    overall = {t: TaskMetrics.compute(probs[t], labels[t], users) for t in tasks}
    masks, slice_notes = slice_masks(table, slices, ads)
    per_slice = {
        name: {
            t: TaskMetrics.compute(probs[t][m], labels[t][m], users[m] if users is not None else None)
            for t in tasks
        }
        for name, m in masks.items()
    }
    return EvalReport(tasks=tasks, rows=n, overall=overall, slices=per_slice, notes=notes + slice_notes)


# --- oracle -------------------------------------------------------------------------------------------


@dataclass
class OracleReport:
    """The simulator's oracle AUC per task (true probability against the logged label) and, for each
    model, its AUC on the same rows and its ratio to the oracle."""

    rows: int
    matched: int
    oracle: dict[str, float]
    models: dict[str, dict[str, float]] = field(default_factory=dict)
    ratio: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))

    def to_text(self) -> str:
        tasks = list(self.oracle)
        lines = [f"{'model':<24} " + " ".join(f"{t[:12]:>12} {'ratio':>6}" for t in tasks)]
        lines.append(f"{'oracle':<24} " + " ".join(f"{_fmt(self.oracle[t], '.4f'):>12} {'1.000':>6}" for t in tasks))
        for name, per in self.models.items():
            lines.append(f"{name[:24]:<24} " + " ".join(
                f"{_fmt(per[t], '.4f'):>12} {_fmt(self.ratio[name][t], '.3f'):>6}" for t in tasks))
        lines.append(f"rows matched to the ground truth: {self.matched} of {self.rows}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def truth_probabilities(settings: "Settings", table: pa.Table, tasks: Sequence[str]) -> dict[str, np.ndarray]:
    """The simulator's true probability ``p_<task>`` for each row of ``table`` (matched on
    ``request_id``; NaN where the ground truth has no such request)."""
    import duckdb

    root = settings.truth_dir / "impressions"
    if not root.is_dir():
        raise FileNotFoundError(
            f"no simulator ground truth under {root}: the oracle AUC exists only for pipeline.source: simulator"
        )
    missing = [c for c in ("request_id", "event_time") if c not in table.column_names]
    if missing:
        raise ValueError(f"the table lacks columns {missing} needed to match the ground truth")
    if table.num_rows == 0:
        return {t: np.empty(0) for t in tasks}
    event = _micros(table.column("event_time"))
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    first = (epoch + dt.timedelta(microseconds=int(event.min()))).date() - dt.timedelta(days=1)
    last = (epoch + dt.timedelta(microseconds=int(event.max()))).date() + dt.timedelta(days=1)
    from components.store.sql import partition_files

    files = [str(p) for _, p in partition_files(root, "part-0.parquet", first, last)]
    if not files:
        raise FileNotFoundError(f"no ground-truth partitions under {root} for {first}..{last}")
    con = duckdb.connect()
    try:
        available = {r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [files]).fetchall()}
        cols = [f"p_{t}" for t in tasks]
        absent = [c for c in cols if c not in available]
        if absent:
            raise ValueError(f"the ground truth has no {absent} (it holds {sorted(available)})")
        keys = pa.table({"row_index": pa.array(np.arange(table.num_rows)), "request_id": table.column("request_id")})
        con.register("eval_keys", keys)
        select = ", ".join(f't."{c}"' for c in cols)
        out = con.execute(
            f"SELECT k.row_index, {select} FROM eval_keys k LEFT JOIN read_parquet(?) t "
            "ON k.request_id = t.request_id ORDER BY k.row_index",
            [files],
        ).arrow().read_all()
    finally:
        con.close()
    if out.num_rows != table.num_rows:
        raise ValueError("the ground truth repeats a request_id; it must be unique")
    return {t: out.column(f"p_{t}").to_numpy(zero_copy_only=False).astype(np.float64) for t in tasks}


def oracle_auc(
    settings: "Settings",
    table: pa.Table,
    tasks: Sequence[str],
    models: Mapping[str, Mapping[str, Any]] | None = None,
) -> OracleReport:
    """Oracle AUC per task on the simulator (the AUC of the true probabilities: the best any model can
    reach on these rows) and, for each model (name -> task -> scores aligned with ``table``), its AUC
    on the same rows and the ratio model / oracle. Rows without ground truth are left out of every
    number; ``matched`` says how many were used."""
    tasks = tuple(tasks)
    truth = truth_probabilities(settings, table, tasks)
    matched = np.ones(table.num_rows, bool)
    for t in tasks:
        matched &= np.isfinite(truth[t])
    if not matched.any():
        raise ValueError("no row of the table matches a request_id of the simulator's ground truth")
    oracle = {t: auc(truth[t][matched], table.column(t).to_numpy(zero_copy_only=False)[matched]) for t in tasks}
    report = OracleReport(rows=table.num_rows, matched=int(matched.sum()), oracle=oracle)
    for name, per_task in (models or {}).items():
        report.models[name] = {}
        report.ratio[name] = {}
        for t in tasks:
            s = _as_scores(per_task[t])
            if s.size != table.num_rows:
                raise ValueError(f"model {name!r} has {s.size} scores for {t!r}, the table has {table.num_rows}")
            a = auc(s[matched], table.column(t).to_numpy(zero_copy_only=False)[matched])
            report.models[name][t] = a
            report.ratio[name][t] = a / oracle[t] if oracle[t] > 0 else float("nan")
    return report

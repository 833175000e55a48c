"""The simulator's oracle AUC: :func:`truth_probabilities` reads the true click/conversion probabilities
of evaluated rows from ``settings.truth_dir``; :func:`oracle_auc` gives their AUC (the best any model can
reach on those rows), each partial oracle's AUC on the same rows (the achievable ceilings,
components/sources/market_ceilings.py) and each model's ratio to the oracle, as an :class:`OracleReport`.
docs/evaluation.md."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from components.training.evaluation import format_number, json_safe
from components.training.metrics import as_scores, auc
from components.training.slices import micros
from components.sources.market_ceilings import CEILINGS

if TYPE_CHECKING:
    from components.config import Settings


@dataclass
class OracleReport:
    """The simulator's oracle AUC per task (true probability against the logged label), the partial
    oracles' AUC on the same rows (``ceilings[ceiling][task]``; empty for a ground truth written before
    they existed) and, for each model, its AUC on the same rows and its ratio to the oracle."""

    rows: int
    matched: int
    oracle: dict[str, float]
    models: dict[str, dict[str, float]] = field(default_factory=dict)
    ratio: dict[str, dict[str, float]] = field(default_factory=dict)
    ceilings: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    def to_text(self) -> str:
        tasks = list(self.oracle)
        lines = [f"{'model':<24} " + " ".join(f"{t[:12]:>12} {'ratio':>6}" for t in tasks)]
        lines.append(f"{'oracle':<24} " + " ".join(f"{format_number(self.oracle[t], '.4f'):>12} {'1.000':>6}" for t in tasks))
        for name, per in self.ceilings.items():
            lines.append(f"{'ceiling ' + name:<24} " + " ".join(
                f"{format_number(per[t], '.4f'):>12} {format_number(per[t] / self.oracle[t], '.3f'):>6}"
                for t in tasks))
        for name, per in self.models.items():
            lines.append(f"{name[:24]:<24} " + " ".join(
                f"{format_number(per[t], '.4f'):>12} {format_number(self.ratio[name][t], '.3f'):>6}" for t in tasks))
        lines.append(f"rows matched to the ground truth: {self.matched} of {self.rows}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def truth_probabilities(settings: "Settings", table: pa.Table, tasks: Sequence[str]) -> dict[str, np.ndarray]:
    """The simulator's true probability ``p_<task>`` for each row of ``table`` (matched on
    ``request_id``; NaN where the ground truth has no such request)."""
    found = truth_columns(settings, table, [f"p_{t}" for t in tasks])
    return {t: found[f"p_{t}"] for t in tasks}


def truth_columns(settings: "Settings", table: pa.Table, columns: Sequence[str],
                  optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Ground-truth ``columns`` (each required) and those of ``optional`` the ground truth holds, for each
    row of ``table`` (matched on ``request_id``; NaN where the ground truth has no such request)."""
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
        return {c: np.empty(0) for c in columns}
    event = micros(table.column("event_time"))
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
        absent = [c for c in columns if c not in available]
        if absent:
            raise ValueError(f"the ground truth has no {absent} (it holds {sorted(available)})")
        keys = pa.table({"row_index": pa.array(np.arange(table.num_rows)), "request_id": table.column("request_id")})
        con.register("eval_keys", keys)
        cols = [*columns, *(c for c in optional if c in available)]
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
    return {c: out.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in cols}


def oracle_auc(
    settings: "Settings",
    table: pa.Table,
    tasks: Sequence[str],
    models: Mapping[str, Mapping[str, Any]] | None = None,
) -> OracleReport:
    """Oracle AUC per task on the simulator (the AUC of the true probabilities: the best any model can
    reach on these rows), each partial oracle's AUC on the same rows and, for each model (name -> task -> scores aligned with ``table``), its AUC
    on the same rows and the ratio model / oracle. Rows without ground truth are left out of every
    number; ``matched`` says how many were used."""
    tasks = tuple(tasks)
    partial = [f"p_{t}_{c}" for c in CEILINGS for t in tasks]
    truth = truth_columns(settings, table, [f"p_{t}" for t in tasks], optional=partial)
    matched = np.ones(table.num_rows, bool)
    for t in tasks:
        matched &= np.isfinite(truth[f"p_{t}"])
    if not matched.any():
        raise ValueError("no row of the table matches a request_id of the simulator's ground truth")
    labels = {t: table.column(t).to_numpy(zero_copy_only=False)[matched] for t in tasks}
    oracle = {t: auc(truth[f"p_{t}"][matched], labels[t]) for t in tasks}
    report = OracleReport(rows=table.num_rows, matched=int(matched.sum()), oracle=oracle)
    for c in CEILINGS:
        if all(f"p_{t}_{c}" in truth for t in tasks):
            report.ceilings[c] = {t: auc(truth[f"p_{t}_{c}"][matched], labels[t]) for t in tasks}
    for name, per_task in (models or {}).items():
        report.models[name] = {}
        report.ratio[name] = {}
        for t in tasks:
            s = as_scores(per_task[t])
            if s.size != table.num_rows:
                raise ValueError(f"model {name!r} has {s.size} scores for {t!r}, the table has {table.num_rows}")
            a = auc(s[matched], labels[t])
            report.models[name][t] = a
            report.ratio[name][t] = a / oracle[t] if oracle[t] > 0 else float("nan")
    return report


__all__ = ["OracleReport", "oracle_auc", "truth_columns", "truth_probabilities"]

"""The ``files`` source's tables: where a configured table's files are, how DuckDB reads them, and the
SELECT that maps their columns onto the contract (the YAML ``files.<table>.columns`` expressions).

components/sources/files.py builds the source from these; docs/your-own-logs.md has the configuration.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.store.sql import sql_ident, sql_str

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from components.config import FileTableConfig

_HIVE_DIR = re.compile(r"^date=\d{4}-\d{2}-\d{2}$")
_SUFFIX_FORMAT = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv", ".txt": "csv"}


class SourceConfigError(ValueError):
    """The files configuration does not fit the files it points at (names the table and column)."""


# --------------------------------------------------------------------------------------------------
# Locating and reading one configured table
# --------------------------------------------------------------------------------------------------


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def local_path(path: str) -> Path:
    return Path(path[len("file://"):] if path.startswith("file://") else path).expanduser()


def table_files(cfg: "FileTableConfig", table: str) -> list[str]:
    """The data files of a configured table: a file, every data file under a folder (recursively,
    whatever the case of the extension), a glob, or a remote URI passed to DuckDB as it is."""
    if is_uri(cfg.path):
        return [cfg.path]
    p = local_path(cfg.path)
    if any(ch in cfg.path for ch in "*?["):
        anchor = Path(p.anchor or ".")
        files = sorted(str(f) for f in anchor.glob(str(p.relative_to(anchor))) if f.is_file())
    elif p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _SUFFIX_FORMAT
                       and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts))
    elif p.is_file():
        files = [str(p)]
    else:
        raise SourceConfigError(f"files.{table}.path: {cfg.path} does not exist")
    if not files:
        raise SourceConfigError(f"files.{table}.path: no parquet or CSV files under {cfg.path}")
    return files


def table_format(cfg: "FileTableConfig", files: list[str], table: str) -> str:
    if cfg.format != "auto":
        return cfg.format
    kinds = {_SUFFIX_FORMAT.get(Path(f.split("?")[0]).suffix.lower()) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise SourceConfigError(f"files.{table}: cannot tell the format of {', '.join(files[:3])} from the "
                                f"extensions; set files.{table}.format to parquet or csv")
    return kinds.pop()  # type: ignore[return-value]


def is_hive(cfg: "FileTableConfig", files: list[str]) -> bool:
    if cfg.layout != "auto":
        return cfg.layout == "hive"
    return any(_HIVE_DIR.match(part) for f in files for part in Path(f).parts[:-1])


def sql_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{sql_str(str(k))}: {sql_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(sql_value(x) for x in v) + "]"
    return sql_str(str(v))


def source_sql(cfg: "FileTableConfig", table: str) -> str:
    """``SELECT * FROM read_parquet|read_csv(...)`` over the configured table (before mapping); hive
    folders add a ``date`` column."""
    files = table_files(cfg, table)
    fmt, hive = table_format(cfg, files, table), is_hive(cfg, files)
    listing = "[" + ", ".join(sql_str(f) for f in files) + "]"
    opts: dict[str, Any] = {"hive_partitioning": hive, "union_by_name": True}
    if fmt == "csv":
        opts.update(cfg.csv_options)
    elif cfg.csv_options:
        raise SourceConfigError(f"files.{table}.csv_options is set but the files are parquet")
    args = ", ".join(f"{k} = {sql_value(v)}" for k, v in opts.items())
    read = f"SELECT * FROM {'read_csv' if fmt == 'csv' else 'read_parquet'}({listing}, {args})"
    return f"WITH src AS ({read}) {cfg.query}" if cfg.query else read


def read_columns(con: "duckdb.DuckDBPyConnection", sql: str, table: str) -> list[str]:
    """The columns DuckDB sees in the configured table (names the file when it cannot be read)."""
    try:
        return list(con.sql(sql).columns)
    except Exception as exc:  # duckdb.Error and friends: name the table
        raise SourceConfigError(f"files.{table}: DuckDB cannot read the configured files: {exc}") from None


def mapped_select(columns: list[str], cfg: "FileTableConfig", table: str,
                  contract: list[str], required: set[str], defaults: dict[str, str]) -> str:
    """The SELECT list mapping the file onto ``contract`` columns plus mapped attributes. A contract
    column with neither a mapping, a same-named column nor a default is left out (optional ones) or
    is an error naming the file's columns (required ones)."""
    have = set(columns)
    select = []
    for col in contract:
        if col in cfg.columns:
            expr = cfg.columns[col]
        elif col in have:
            expr = sql_ident(col)
        elif col in defaults:
            expr = defaults[col]
        elif col in required:
            raise SourceConfigError(
                f"files.{table}: contract column {col!r} is neither mapped (files.{table}.columns.{col}) nor a "
                f"column of the file (its columns: {', '.join(columns)})")
        else:
            continue
        select.append(f"({expr}) AS {sql_ident(col)}")
    select += [f"({expr}) AS {sql_ident(col)}" for col, expr in cfg.columns.items() if col not in contract]
    return ", ".join(select)


def run_sql(con: "duckdb.DuckDBPyConnection", sql: str, table: str) -> pa.Table:
    try:
        return con.sql(sql).to_arrow_table()
    except Exception as exc:
        raise SourceConfigError(f"files.{table}: a column expression failed in DuckDB: {exc}") from None


def run_mapped(con: "duckdb.DuckDBPyConnection", select: str, source: str, cfg: "FileTableConfig",
                table: str) -> pa.Table:
    """The mapped table; when DuckDB rejects the SELECT, the error names the first mapping entry that
    fails on its own (``files.<table>.columns.<name> = <expression>``)."""
    try:
        return con.sql(f"SELECT {select} FROM ({source})").to_arrow_table()
    except Exception as exc:
        for name, expr in cfg.columns.items():
            try:
                con.sql(f"SELECT ({expr}) FROM ({source}) LIMIT 0").fetchall()
            except Exception as one:
                raise SourceConfigError(f"files.{table}.columns.{name} = {expr!r} fails in DuckDB: "
                                        f"{' '.join(str(one).split())}") from None
        raise SourceConfigError(f"files.{table}: the mapping fails in DuckDB: {' '.join(str(exc).split())}") from None

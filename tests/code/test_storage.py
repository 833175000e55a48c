"""components/storage.py: a partition folder or a file is replaced whole or not at all, a failed write
leaves the previous content and no temp names behind, and temp leftovers of crashed runs are swept."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import storage

EXCHANGE = pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])


def _no_exchange(monkeypatch, exchange: bool) -> None:
    if not exchange:
        monkeypatch.setattr(storage, "_exchange", lambda a, b: False)  # other OS / file system


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


# --- replace_partition -----------------------------------------------------------------------------


@EXCHANGE
def test_replace_partition_swaps_whole_folders(tmp_path, monkeypatch, exchange: bool) -> None:
    _no_exchange(monkeypatch, exchange)
    target = tmp_path / "t" / "date=2026-11-01"
    storage.replace_partition(target, lambda d: (d / "part-0.parquet").write_text("one"))
    storage.replace_partition(target, lambda d: (d / "other.txt").write_text("two"))
    assert sorted(p.name for p in target.iterdir()) == ["other.txt"]  # nothing of the old one survives
    assert (target / "other.txt").read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["date=2026-11-01"]


@EXCHANGE
def test_failed_partition_write_keeps_the_previous_one_and_no_temp(tmp_path, monkeypatch, exchange: bool) -> None:
    _no_exchange(monkeypatch, exchange)
    target = tmp_path / "t" / "date=2026-11-01"
    storage.replace_partition(target, lambda d: (d / "part-0.parquet").write_text("old"))

    def write_then_die(d: Path) -> None:
        (d / "part-0.parquet").write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        storage.replace_partition(target, write_then_die)
    assert [p.name for p in target.iterdir()] == ["part-0.parquet"]
    assert (target / "part-0.parquet").read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["date=2026-11-01"]


def test_failed_first_partition_write_leaves_nothing(tmp_path) -> None:
    target = tmp_path / "t" / "date=2026-11-01"
    def fail(d: Path) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        storage.replace_partition(target, fail)
    assert list(target.parent.iterdir()) == []


def test_stale_temp_folders_are_swept_fresh_ones_kept(tmp_path) -> None:
    parent = tmp_path / "t"
    stale = parent / ".date=2026-11-01.tmp-crashed"
    stale_old = parent / ".date=2026-11-01.old-crashed"
    fresh = parent / ".date=2026-11-01.tmp-inflight"  # another writer, still running
    other = parent / ".date=2026-11-02.tmp-crashed"  # another partition's: not ours to judge
    for d in (stale, stale_old, fresh, other):
        (d / "p").mkdir(parents=True)
        (d / "p" / "part-0.parquet").write_text("x")
    for d in (stale, stale_old, other):
        _age(d, storage.STALE_AFTER_S + 60)

    storage.replace_partition(parent / "date=2026-11-01", lambda d: (d / "part-0.parquet").write_text("new"))
    assert sorted(p.name for p in parent.iterdir()) == sorted(["date=2026-11-01", fresh.name, other.name])


def test_partition_temp_names_are_hidden_from_globs(tmp_path) -> None:
    parent = tmp_path / "t"
    seen: list[list[str]] = []

    def write(d: Path) -> None:
        (d / "part-0.parquet").write_text("x")
        seen.append(sorted(p.name for p in parent.glob("date=*")))
        seen.append(sorted(p.name for p in parent.glob("date=*/*.parquet")))

    storage.replace_partition(parent / "date=2026-11-01", write)
    assert seen == [[], []]


# --- single files ----------------------------------------------------------------------------------


def test_write_file_atomic_replaces_content(tmp_path) -> None:
    path = tmp_path / "a" / "b" / "meta.json"  # parents are created
    storage.write_file_atomic(path, lambda tmp: tmp.write_text("one"))
    storage.write_file_atomic(path, lambda tmp: tmp.write_text("two"))
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["meta.json"]


def test_failed_file_write_keeps_the_previous_file_and_no_temp(tmp_path) -> None:
    path = tmp_path / "part-0.parquet"
    table = pa.table({"x": [1, 2, 3]})
    storage.write_parquet_atomic(table, path)
    before = path.read_bytes()

    def write_then_die(tmp: Path) -> None:
        assert tmp.parent == path.parent and tmp.name.startswith(".") and not tmp.match("*.parquet")
        tmp.write_bytes(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        storage.write_file_atomic(path, write_then_die)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["part-0.parquet"]


def test_stale_temp_files_are_swept_fresh_ones_kept(tmp_path) -> None:
    stale = tmp_path / ".meta.json.123.abc.tmp"
    fresh = tmp_path / ".meta.json.456.def.tmp"
    for f in (stale, fresh):
        f.write_text("x")
    _age(stale, storage.STALE_AFTER_S + 60)
    storage.write_json_atomic(tmp_path / "meta.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["meta.json", fresh.name])


def test_write_parquet_atomic_passes_options(tmp_path) -> None:
    path = tmp_path / "train.parquet"
    table = pa.table({"x": list(range(100))})
    storage.write_parquet_atomic(table, path, compression="zstd")
    assert pq.read_table(path).equals(table)
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_write_json_atomic_format(tmp_path) -> None:
    payload = {"b": 1, "a": {"when": dt.date(2026, 11, 1), "where": Path("/x")}}
    storage.write_json_atomic(tmp_path / "sorted.json", payload)
    storage.write_json_atomic(tmp_path / "ordered.json", {"b": 1, "a": 2}, sort_keys=False)
    assert (tmp_path / "sorted.json").read_text() == json.dumps(
        {"a": {"when": "2026-11-01", "where": "/x"}, "b": 1}, indent=2, sort_keys=True
    )
    assert (tmp_path / "ordered.json").read_text() == json.dumps({"b": 1, "a": 2}, indent=2)


# --- permissions (docs/state.md: a second account of the group reads the store) -----------------------------


@EXCHANGE
@pytest.mark.parametrize("umask", [0o027, 0o077])
def test_partition_folders_and_files_follow_the_umask(tmp_path, monkeypatch, exchange: bool, umask: int) -> None:
    import stat

    _no_exchange(monkeypatch, exchange)
    target = tmp_path / "t" / "date=2026-11-01"
    before = os.umask(umask)
    try:
        for text in ("one", "two"):  # a new partition, then a replacement
            storage.replace_partition(target, lambda d: pq.write_table(pa.table({"x": [text]}), d / "part-0.parquet"))
            storage.write_json_atomic(tmp_path / "t" / "manifest.json", {"x": text})
    finally:
        os.umask(before)
    expected_dir, expected_file = 0o777 & ~umask, 0o666 & ~umask
    assert stat.S_IMODE(target.stat().st_mode) == expected_dir  # not mkdtemp's 0700
    assert stat.S_IMODE((target / "part-0.parquet").stat().st_mode) == expected_file
    assert stat.S_IMODE((tmp_path / "t" / "manifest.json").stat().st_mode) == expected_file
    assert pq.read_table(target / "part-0.parquet")["x"].to_pylist() == ["two"]

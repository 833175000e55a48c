"""The one way to write a file or a partition folder atomically.

Why: readers (DuckDB globs over ``date=*``, Feast, the next pipeline stage) must never see half a
partition or half a file, and re-running a day must replace its output, never append to it or leave
a mix of old and new files. So every writer builds the new content under a temporary name beside the
target and renames it into place in one step:

- :func:`replace_partition` swaps a whole folder (``<table>/date=D/``): ``write(tmp_dir)`` fills a
  temp folder, which then replaces the old one (``renameat2(RENAME_EXCHANGE)`` on Linux, two renames
  elsewhere). If ``write`` fails the previous partition is untouched and the temp folder removed.
- Folders and files get the process umask's mode (``home_umask``, applied by the CLI), so a second
  account of the home's group can read the store (docs/state.md).
- :func:`write_file_atomic` (and :func:`write_parquet_atomic`, :func:`write_json_atomic`) replaces a
  single file with ``os.replace``.

Temp names start with a dot (``.<name>.…``), so partition globs (``date=*``, ``*.parquet``) never
match them; temp leftovers of a crashed run older than an hour are swept on the next write of the
same target.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import pyarrow as pa

STALE_AFTER_S = 3600.0  # a temp name older than this belongs to a crashed run, not one in progress


def write_parquet_durable(table: "pa.Table", path: Path) -> None:
    """Write one parquet file and flush it to disk (what a partition swap relies on)."""
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so a reader never sees
    the partition missing. False where unsupported (other OS, old kernel, some file systems)."""
    if sys.platform != "linux":
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _sweep_stale(parent: Path, name: str, older_than_s: float = STALE_AFTER_S) -> None:
    """Remove temp folders/files a crashed run left beside ``name`` (old enough not to be in use)."""
    now = time.time()
    for p in parent.glob(f".{name}.*"):
        try:
            if now - p.lstat().st_mtime > older_than_s:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink()
        except FileNotFoundError:
            pass


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder ``parent/<prefix><hex>`` created with the process umask's mode (e.g.
    0750 under ``home_umask`` 027, components/config/settings.py), not ``mkdtemp``'s 0700: a partition
    folder is this temp folder renamed, and a second account of the group must be able to read the store."""
    while True:
        path = parent / f"{prefix}{uuid.uuid4().hex}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def replace_partition(final_dir: Path, write: Callable[[Path], None]) -> None:
    """Atomically replace the folder ``final_dir`` with what ``write(tmp_dir)`` puts in a temp folder
    beside it. If ``write`` fails, the previous partition is untouched and the temp folder removed.
    Temp folders start with a dot, so partition globs (``date=*``) never see them."""
    parent = final_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(parent, final_dir.name)
    tmp = make_temp_dir(parent, f".{final_dir.name}.tmp-")
    try:
        write(tmp)
        if not final_dir.exists():
            os.rename(tmp, final_dir)
        elif _exchange(tmp, final_dir):
            shutil.rmtree(tmp)  # tmp now holds the previous partition
        else:
            old = make_temp_dir(parent, f".{final_dir.name}.old-")
            os.rename(final_dir, old / "p")
            try:
                os.rename(tmp, final_dir)
            except BaseException:
                os.rename(old / "p", final_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:  # make the renames durable
        _fsync(parent)
    except OSError:
        pass


def write_file_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Replace the file ``path`` with what ``write(tmp_path)`` writes to a temp dot-name in the same
    folder (``os.replace``: atomic on one file system). If ``write`` fails, the previous file is
    untouched and the temp file removed. Creates the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(path.parent, path.name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet_atomic(table: "pa.Table", path: Path, **write_options: Any) -> None:
    """:func:`write_file_atomic` for one parquet file; ``write_options`` go to ``pq.write_table``."""
    import pyarrow.parquet as pq

    write_file_atomic(path, lambda tmp: pq.write_table(table, tmp, **write_options))


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for dates, paths, objects with ``to_dict`` and numpy scalars."""
    if isinstance(o, (dt.date, dt.datetime)):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json_atomic(path: Path, payload: Any, *, sort_keys: bool = True) -> None:
    """:func:`write_file_atomic` for ``payload`` as indented JSON (see :func:`json_default`)."""
    text = json.dumps(payload, indent=2, sort_keys=sort_keys, default=json_default)
    write_file_atomic(path, lambda tmp: tmp.write_text(text))


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created with its folder if missing) for the ``with`` block:
    writers in other processes (and on other open files in this one) wait. The kernel drops the lock when
    the file closes, also when the process is killed, so a crash never leaves it held."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield

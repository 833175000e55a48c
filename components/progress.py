"""Progress bars with an ETA for long work (training epochs, representation encoding, backfills).

tqdm (already installed with sentence-transformers) draws them; we only decide when: on a terminal
(stderr is a TTY) by default, never in logs or CI. ``ADSREC_PROGRESS=1`` forces them on (tests capture
them that way), ``ADSREC_PROGRESS=0`` off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    """Whether bars are drawn: ``ADSREC_PROGRESS`` when set, else whether stderr is a terminal."""
    flag = os.environ.get("ADSREC_PROGRESS", "").strip().lower()
    if flag in {"1", "true", "yes", "on"}:
        return True
    if flag in {"0", "false", "no", "off"}:
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(total: int | None, desc: str, unit: str = "it") -> Any:
    """A tqdm bar over ``total`` units (``.update(n)``, ``.set_postfix_str(s)``, ``.close()``; a context
    manager), disabled when :func:`progress_enabled` is false. Its line ends with ``[elapsed<ETA, rate]``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress_enabled(), file=sys.stderr,
                dynamic_ncols=True, leave=True, mininterval=0.5)


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate ``iterable`` under a bar (see :func:`progress_bar`)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress_bar(total, desc, unit) as bar:
        for item in iterable:
            yield item
            bar.update(1)

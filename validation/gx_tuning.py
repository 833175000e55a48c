"""Speed-ups of Great Expectations 1.24 that change nothing it checks or reports: :func:`tune_gx` (two
whole-column Python loops of the pandas engine turned off) and :func:`cache_data_docs_templates`
(compiled Jinja templates shared between Data Docs builds). Used by the in-memory validation
(validation/expectations.py) and the file-backed project (validation/gx_project.py); importing this
module imports nothing from Great Expectations.
"""

from __future__ import annotations

import threading
from typing import Any

_TUNED = False


def tune_gx() -> None:
    """Turn off two whole-column Python loops of GX 1.24's pandas engine and cache the Data Docs'
    compiled templates (idempotent; see the module docstring). None changes what an expectation
    checks or reports, or what the Data Docs show:

    - ``pandas_execution_engine.HASH_THRESHOLD``: frames smaller than this get an md5 fingerprint of
      every value as a batch marker (3.5 s for 1M rows); 0 means never;
    - ``util.does_ndarray_contain_decimal_dtype``: ``column.mean`` / ``column.sum`` call it to look for
      ``decimal.Decimal`` objects with a generator over every value (6.6 s for two 10M-row label
      columns); only an object array can hold one, so other dtypes answer False at once;
    - Data Docs pages: see :func:`cache_data_docs_templates`.
    """
    global _TUNED
    if _TUNED:
        return
    import great_expectations.execution_engine.pandas_execution_engine as pandas_engine
    import great_expectations.util as gx_util

    pandas_engine.HASH_THRESHOLD = 0
    cache_data_docs_templates()
    original = gx_util.does_ndarray_contain_decimal_dtype
    if not getattr(original, "adsrec_tuned", False):

        def does_ndarray_contain_decimal_dtype(data: Any) -> bool:
            return getattr(data, "dtype", None) == object and original(data)

        does_ndarray_contain_decimal_dtype.adsrec_tuned = True  # type: ignore[attr-defined]
        gx_util.does_ndarray_contain_decimal_dtype = does_ndarray_contain_decimal_dtype
    _TUNED = True


def cache_data_docs_templates() -> None:
    """Share compiled Jinja templates between Data Docs builds. GX builds a new Jinja ``Environment``
    for every page it renders, so each build parsed and compiled the same templates again (0.4 s of
    the 0.5 s a checkpoint run spent on its Data Docs); Jinja's own ``bytecode_cache`` hook keeps them."""
    from great_expectations.render.view.view import DefaultJinjaView
    from jinja2 import BytecodeCache

    if getattr(DefaultJinjaView.__init__, "adsrec_tuned", False):
        return

    class _MemoryBytecodeCache(BytecodeCache):
        def __init__(self) -> None:
            self.codes: dict[str, bytes] = {}
            self.lock = threading.Lock()

        def load_bytecode(self, bucket: Any) -> None:
            code = self.codes.get(bucket.key)
            if code is not None:
                bucket.bytecode_from_string(code)

        def dump_bytecode(self, bucket: Any) -> None:
            with self.lock:
                self.codes[bucket.key] = bucket.bytecode_to_string()

    cache = _MemoryBytecodeCache()
    original_init = DefaultJinjaView.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.env.bytecode_cache = cache

    __init__.adsrec_tuned = True  # type: ignore[attr-defined]
    DefaultJinjaView.__init__ = __init__  # type: ignore[method-assign]

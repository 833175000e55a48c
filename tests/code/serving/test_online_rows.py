"""The pure parts of online rows (components/serving/online_rows.py): the point-in-time rule applied to
what Feast's online read returns, and the summary kept in the schema metadata. No store is needed."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

SECOND_US = 1_000_000


def test_served_by_time_withholds_missing_future_and_expired_rows() -> None:
    from components.serving.online_rows import served_by_time

    now_s = 100_000
    event_us = np.full(5, now_s * SECOND_US, dtype=np.int64)
    # no row, a row 10 s old, one 10 s in the future, one 3 h old (past a 2 h TTL), one exactly at the TTL edge
    stamps = np.array([0, now_s - 10, now_s + 10, now_s - 3 * 3600, now_s - 2 * 3600], dtype=np.int64)
    served, withheld = served_by_time(stamps, event_us, dt.timedelta(hours=2))
    assert served.tolist() == [False, True, False, False, True]
    assert withheld == {"not_in_store": 1, "after_request": 1, "expired": 1}
    served, withheld = served_by_time(stamps, event_us, None)  # no TTL: nothing expires
    assert served.tolist() == [False, True, False, True, True]
    assert withheld == {"not_in_store": 1, "after_request": 1, "expired": 0}
    served, withheld = served_by_time(np.zeros(0, np.int64), np.zeros(0, np.int64), dt.timedelta(days=1))
    assert served.shape == (0,) and withheld == {"not_in_store": 0, "after_request": 0, "expired": 0}


def test_summary_round_trips_through_the_schema_metadata_and_flags_are_dropped() -> None:
    from components.serving.online_rows import (AD_KNOWN, USER_KNOWN, model_input, serving_summary,
                                                with_serving_summary)

    table = pa.table({"user_id": [1], USER_KNOWN: [True], AD_KNOWN: [False]},
                     metadata={b"other": b"kept"})
    assert serving_summary(table) == {}
    tagged = with_serving_summary(table, {"rows": 1, "withheld": {"user_stats": {"expired": 0}}})
    assert serving_summary(tagged) == {"rows": 1, "withheld": {"user_stats": {"expired": 0}}}
    assert tagged.schema.metadata[b"other"] == b"kept"
    assert model_input(tagged).column_names == ["user_id"]

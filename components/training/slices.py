"""The slices of an offline evaluation: :class:`EvalSlices` says which, :func:`slice_masks` finds their
rows (first vs repeated exposure, new vs established ads, the most shown categories). docs/evaluation.md
defines them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

US_PER_DAY = 86_400_000_000


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


def micros(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A timestamp column as int64 microseconds since 1970 (UTC)."""
    return col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)


def _ad_age_days(table: pa.Table, ads: pa.Table | None) -> tuple[np.ndarray | None, str]:
    """Age of each row's ad in days at the impression (NaN when unknown), and how it was found."""
    event = micros(table.column("event_time"))
    if ads is not None:
        missing = [c for c in ("ad_id", "created_at") if c not in ads.column_names]
        if missing:
            raise ValueError(f"the ads table lacks columns {missing}")
        ad_ids = ads.column("ad_id").to_numpy()
        created = micros(ads.column("created_at"))
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
        created = micros(table.column("ad_created_at")).astype(np.float64)
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


__all__ = ["EvalSlices", "US_PER_DAY", "micros", "slice_masks"]

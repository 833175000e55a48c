"""MovieLens-100k adapter: real ratings with timestamps (1997-09 .. 1998-04) mapped onto the contract.

Reads RecBole's atomic files ``<shared_data>/movielens-100k/ml-100k.{inter,user,item}`` (tab-separated,
typed header such as ``user_id:token``). The mapping (docs/sources.md has the measured rates):

- **impressions**: each rating is a positive impression at the rating's timestamp: ``click`` = 1 (the
  user chose to rate the movie), ``conversion`` = rating >= 4 (the user liked it).
- **negatives**: ``negatives_per_positive`` (default 4) per rating, drawn from the movies that exist
  on that day (released by that calendar year, or already rated by someone), weighted by
  1 + the number of ratings the movie had up to and including that day (popularity known so far,
  add-one so an unrated release can still be shown); never a movie the user rates at any time in the
  log (so a negative is never a hidden positive), never twice to one user in a day; ``event_time`` =
  the rating's +/- up to ``jitter_s`` seconds, kept inside the UTC day. Seeded per day.
- **constants**: ``slot`` = "movielens", ``position`` = 1; ``exposure_index`` counts the pair's
  earlier impressions across days (a movie shown as a negative on several days counts up).
- **ads** = movies: ``title`` (the movie title, the ad text), ``genre`` (first listed genre) and
  ``genres`` ("|"-joined list) as categorical taxonomy, ``release_year`` (numeric; from the year
  column, else a "(YYYY)" at the end of the title, else null), no image, ``bid`` 1.0,
  ``advertiser_id`` a stable hash bucket of the movie id (synthetic studios), ``campaign_id`` =
  advertiser x first genre. **users**: ``age_band`` (bucketed age), ``gender``, ``occupation``,
  ``zip_prefix`` (first 3 characters of the zip code). ``created_at`` of ads and users = their first
  impression, so each lands on the day it first appears.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from components.schemas import ADS, USERS, impressions_schema
from components.sources.real_log import (
    DayPartitionedLog,
    LoggedSource,
    exposure_index,
    first_seen,
    ordinal_to_date,
    pair_keys,
    request_ids,
    require_file,
    sample_negatives,
    seconds_to_timestamps,
    stable_bucket,
)

TASKS: tuple[str, ...] = ("click", "conversion")
LIKED_RATING = 4
SLOT = "movielens"
N_ADVERTISERS = 200
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# MovieLens-1M's age groups, applied to 100k's exact ages: lower bounds and labels
AGE_BOUNDS = np.array([18, 25, 35, 45, 50, 56])
AGE_BANDS = np.array(["under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"], dtype=object)


def read_atomic(path: Path) -> pa.Table:
    """One RecBole atomic file: tab-separated, header ``name:type``; columns renamed to ``name``.

    Quoting is off: titles carry apostrophes and the format has no quoting."""
    import pyarrow.csv as pcsv

    table = pcsv.read_csv(
        require_file(path, "MovieLens-100k atomic file"),
        parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pcsv.ConvertOptions(strings_can_be_null=False),
    )
    return table.rename_columns([c.split(":", 1)[0] for c in table.column_names])


class MovieLensSource(LoggedSource):
    """MovieLens-100k as a ``Source``. Parses and derives everything once per instance."""

    name = "movielens"
    tasks: tuple[str, ...] = TASKS

    DEFAULT_SEED = 19970920

    @property
    def folder(self) -> Path:
        return self.settings.shared_data / "movielens-100k"

    def _build(self) -> DayPartitionedLog:
        inter = read_atomic(self.folder / "ml-100k.inter")
        items = read_atomic(self.folder / "ml-100k.item")
        users = read_atomic(self.folder / "ml-100k.user")
        col = lambda t, c, ty: t.column(c).cast(ty).to_numpy()  # noqa: E731
        p_user, p_item = col(inter, "user_id", pa.int64()), col(inter, "item_id", pa.int64())
        p_ts = np.rint(col(inter, "timestamp", pa.float64())).astype(np.int64)
        rating = col(inter, "rating", pa.float64())
        # positives in a fixed order, whatever the file order
        order = np.lexsort((p_item, p_user, p_ts))
        p_user, p_item, p_ts, rating = p_user[order], p_item[order], p_ts[order], rating[order]
        release_year = _release_year(items)
        parent_all, neg_item, neg_time, unfilled = self._negatives(items, release_year, p_user, p_item, p_ts)
        n_pos, n_neg = p_user.size, parent_all.size
        self._stats = {
            "ratings": int(inter.num_rows),
            "positive_impressions": n_pos,
            "liked_ratings": int((rating >= LIKED_RATING).sum()),
            "negative_impressions": n_neg,
            "unfilled_negatives": unfilled,
        }

        user = np.concatenate([p_user, p_user[parent_all]])
        item = np.concatenate([p_item, neg_item])
        ts = np.concatenate([p_ts, neg_time])
        click = np.concatenate([np.ones(n_pos, np.int8), np.zeros(n_neg, np.int8)])
        conversion = np.concatenate([(rating >= LIKED_RATING).astype(np.int8), np.zeros(n_neg, np.int8)])
        order = np.lexsort((item, user, ts))
        user, item, ts, click, conversion = user[order], item[order], ts[order], click[order], conversion[order]
        return DayPartitionedLog({"impressions": self._impressions(user, item, ts, click, conversion),
                                  "ads": _ads(items, item, ts, release_year), "users": _users(users, user, ts)})

    def _negatives(self, items: pa.Table, release_year: np.ndarray, p_user: np.ndarray, p_item: np.ndarray,
                   p_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Negatives for the sorted positives, day by day (module docstring): (positive each one is drawn
        for, movie, time in seconds, unfilled slots)."""
        p_day = np.floor_divide(p_ts, 86_400)
        item_ids = items.column("item_id").cast(pa.int64()).to_numpy()
        item_span = int(max(item_ids.max(initial=0), p_item.max(initial=0))) + 1
        forbidden = np.unique(pair_keys(p_user, p_item, item_span))  # every pair the user ever rates

        # popularity known so far: ratings per (day, movie), cumulated over days; rows = days
        first_day, last_day = int(p_day.min()), int(p_day.max())
        n_days = last_day - first_day + 1
        item_index = np.searchsorted(np.sort(item_ids), p_item)
        sorted_items = np.sort(item_ids)
        if not np.array_equal(sorted_items[np.minimum(item_index, sorted_items.size - 1)], p_item):
            raise ValueError("ml-100k.inter rates movies that ml-100k.item does not list")
        counts = np.zeros((n_days, sorted_items.size), dtype=np.int64)
        np.add.at(counts, (p_day - first_day, item_index), 1)
        rated_so_far = np.cumsum(counts, axis=0)
        year_of_sorted = release_year[np.argsort(item_ids)]

        neg_parent, neg_item, neg_time = [], [], []
        unfilled = 0
        day_starts = np.searchsorted(p_day, np.arange(first_day, last_day + 2))
        for d in range(n_days):
            lo, hi = day_starts[d], day_starts[d + 1]
            if lo == hi:
                continue
            day = first_day + d
            year = ordinal_to_date(day).year
            exists = (rated_so_far[d] > 0) | (np.nan_to_num(year_of_sorted, nan=np.inf) <= year)
            rng = np.random.default_rng([self.seed, day])
            draw = sample_negatives(
                rng,
                p_user[lo:hi],
                sorted_items[exists],
                1.0 + rated_so_far[d][exists],
                forbidden,
                item_span,
                self.negatives_per_positive,
                self.jitter_s,
            )
            unfilled += draw.unfilled
            parent = lo + draw.parent
            neg_parent.append(parent)
            neg_item.append(draw.item)
            neg_time.append(np.clip(p_ts[parent] + draw.offset_s, day * 86_400, (day + 1) * 86_400 - 1))
        cat = lambda parts: np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)  # noqa: E731
        return cat(neg_parent), cat(neg_item), cat(neg_time), unfilled

    def _impressions(self, user: np.ndarray, item: np.ndarray, ts: np.ndarray, click: np.ndarray,
                     conversion: np.ndarray) -> pa.Table:
        """The impressions table of the time-sorted rows (positives and negatives)."""
        day_all = np.floor_divide(ts, 86_400)
        n = user.size
        return pa.table(
            {
                "event_time": seconds_to_timestamps(ts),
                "request_id": request_ids(self.name, day_all, user, item),
                "user_id": pa.array(user, pa.int64()),
                "ad_id": pa.array(item, pa.int64()),
                "slot": pa.array(np.full(n, SLOT, dtype=object), pa.string()),
                "position": pa.array(np.ones(n, np.int32), pa.int32()),
                "exposure_index": pa.array(exposure_index(user, item, ts, np.arange(n)), pa.int32()),
                "click": pa.array(click, pa.int8()),
                "conversion": pa.array(conversion, pa.int8()),
            },
            schema=impressions_schema(TASKS),
        )


def _release_year(items: pa.Table) -> np.ndarray:
    """Release year per row of the item file (float, NaN when unknown). The year column is used when it
    is four digits; otherwise a trailing "(YYYY)" in the title (ml-100k row 1412 has "V" as its year)."""
    import pyarrow.compute as pc

    year = pc.struct_field(pc.extract_regex(items.column("release_year").cast(pa.string()), r"^(?P<y>\d{4})$"), [0])
    from_title = pc.struct_field(pc.extract_regex(items.column("movie_title"), r"\((?P<y>\d{4})\)\s*$"), [0])
    merged = pc.coalesce(year, from_title)
    return pc.cast(merged, pa.float64()).to_numpy(zero_copy_only=False)


def _ads(items: pa.Table, item: np.ndarray, ts: np.ndarray, release_year: np.ndarray) -> pa.Table:
    import pyarrow.compute as pc

    ad_id, created = first_seen(item, ts)
    item_ids = items.column("item_id").cast(pa.int64()).to_numpy()
    rows = pa.array(np.argsort(item_ids)[np.searchsorted(np.sort(item_ids), ad_id)])
    genre_tokens = pc.split_pattern(pc.utf8_trim_whitespace(items.column("class").cast(pa.string())), " ")
    genre_tokens = pc.take(genre_tokens, rows)
    first_genre = pc.list_element(genre_tokens, 0)
    genre_index = pc.index_in(first_genre, value_set=pa.array(GENRES))
    if genre_index.null_count:
        unknown = pc.unique(pc.filter(first_genre, pc.is_null(genre_index))).to_pylist()
        raise ValueError(f"ml-100k.item lists genres outside the MovieLens set: {unknown}")
    genre_index = genre_index.to_numpy().astype(np.int64)
    advertiser = stable_bucket(ad_id, N_ADVERTISERS, salt=2) + 1
    year = release_year[rows.to_numpy()]
    n = ad_id.size
    schema = (
        ADS.required.append(pa.field("genre", pa.string()))
        .append(pa.field("genres", pa.string()))
        .append(pa.field("release_year", pa.int64()))
    )
    return pa.table(
        {
            "ad_id": pa.array(ad_id, pa.int64()),
            "advertiser_id": pa.array(advertiser, pa.int64()),
            "campaign_id": pa.array(advertiser * 100 + genre_index, pa.int64()),
            "title": pc.take(items.column("movie_title").cast(pa.string()), rows),
            "image": pa.nulls(n, pa.binary()),
            "bid": pa.array(np.ones(n), pa.float64()),
            "created_at": seconds_to_timestamps(created),
            "genre": first_genre,
            "genres": pc.binary_join(genre_tokens, "|"),
            "release_year": pa.array(year, pa.float64(), from_pandas=True).cast(pa.int64()),
        },
        schema=schema,
    )


def _users(users: pa.Table, user: np.ndarray, ts: np.ndarray) -> pa.Table:
    import pyarrow.compute as pc

    user_id, created = first_seen(user, ts)
    ids = users.column("user_id").cast(pa.int64()).to_numpy()
    if not np.isin(user_id, ids).all():
        raise ValueError("ml-100k.inter has ratings by users that ml-100k.user does not list")
    rows = pa.array(np.argsort(ids)[np.searchsorted(np.sort(ids), user_id)])
    age = pc.take(users.column("age").cast(pa.int64()), rows).to_numpy()
    zip_code = pc.take(users.column("zip_code").cast(pa.string()), rows)
    schema = USERS.required
    for name in ("age_band", "gender", "occupation", "zip_prefix"):
        schema = schema.append(pa.field(name, pa.string()))
    return pa.table(
        {
            "user_id": pa.array(user_id, pa.int64()),
            "created_at": seconds_to_timestamps(created),
            "age_band": pa.array(AGE_BANDS[np.searchsorted(AGE_BOUNDS, age, side="right")], pa.string()),
            "gender": pc.take(users.column("gender").cast(pa.string()), rows),
            "occupation": pc.take(users.column("occupation").cast(pa.string()), rows),
            "zip_prefix": pc.utf8_slice_codeunits(zip_code, 0, 3),
        },
        schema=schema,
    )

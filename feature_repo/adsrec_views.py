"""The adsrec feature views as plain specs and as Feast objects, built for any state folder.

One definition serves three callers: ``repo.py`` (what ``feast apply`` sees, for the state folder in
``ADSREC_HOME``), ``components/store/feast_store.py`` (Feast in code, for any ``Settings.home``) and the direct
DuckDB join of ``components/training/training_set.py`` (which reads the same parquet with the same TTLs).

The views' fields are read from the built parquet (the newest partition of each view) when the
definitions are built, because they depend on the source: one ``<task>_...`` column per task, one
profile column per categorical / numeric attribute of the ads and users tables. Field names are the
parquet column names; keys and timestamps are not fields.

A view whose newest partition has no feature column (``user_profile`` of a log without user profiles:
only ``user_id`` and the timestamps) is left out: Feast cannot join, materialise or serve a view with an
empty schema, and it would add nothing to a row. It comes back as soon as a partition has columns.

The user x ad-attribute interest views (``user_<attribute>_interest``, components/store/interest.py) are
listed in ``features/_views.json`` by the build; each is keyed on one composite string column
``user_<attribute>_key`` (``'<user_id>|<value>'``), its own entity, and joins the ``training`` service.

The pre-trained representation views (``REPRESENTATION_VIEWS``: text / visual / graph vectors, user
interest vectors, visual semantic IDs; written by components/representations/refresh.py) are added by
``view_specs(..., representations=True)``. They are registered like the others but never join the
``training`` service: training sets get similarities and codes from components/representations/similarity.py instead.

Nothing runs at import time: this module only defines functions (``feast apply`` imports it too).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PROJECT = "adsrec"
EVENT_TS = "event_timestamp"
CREATED_TS = "created_timestamp"
ENTITY_KEYS = {"user": "user_id", "ad": "ad_id"}
# view -> (entity, expires): stats and sequences are daily snapshots that expire after the TTL;
# profiles are stamped when the entity was created and stay valid until a newer row replaces them.
VIEW_ENTITIES: dict[str, tuple[str, bool]] = {
    "user_profile": ("user", False),
    "user_stats": ("user", True),
    "user_sequence": ("user", True),
    "ad_profile": ("ad", False),
    "ad_stats": ("ad", True),
}
FEATURE_SERVICE = "training"
DEFAULT_TTL_DAYS = 30
# Pre-trained representations (components/representations/refresh.py, docs/representations.md): view ->
# (entity, stamping). "creative": a function of the ad's creative, stamped with the ad's created_at and
# never expiring (like the profiles); "daily": stamped at the day's end, TTL ttl_days (like the sequence
# they are averaged from); "graph": stamped at the day's end, TTL one day, because vectors of different
# LightGCN runs are not comparable. They are registered in Feast but kept OUT of the training service:
# vectors are large, so training sets carry the similarities and codes instead
# (components/representations/similarity.py adds them).
REPRESENTATION_VIEWS: dict[str, tuple[str, str]] = {
    "ad_semantic_id": ("ad", "creative"),
    "ad_text_embedding": ("ad", "creative"),
    "ad_visual_embedding": ("ad", "creative"),
    "user_text_interest": ("user", "daily"),
    "user_visual_interest": ("user", "daily"),
    "user_graph_embedding": ("user", "graph"),
    "ad_graph_embedding": ("ad", "graph"),
}
GRAPH_TTL = dt.timedelta(days=1)


@dataclass(frozen=True)
class ViewSpec:
    """One feature view: where its parquet lives and what it holds."""

    name: str
    entity: str
    join_key: str
    path: str  # absolute glob over the day partitions
    ttl: dt.timedelta | None  # None: never expires
    fields: tuple[tuple[str, pa.DataType], ...]
    latest_partition: str  # date=YYYY-MM-DD the schema was read from
    attribute: str | None = None  # interest views: the ad attribute of the (user, attribute) key

    @property
    def feature_names(self) -> list[str]:
        return [name for name, _ in self.fields]


def manifest_ttl_days(home: Path) -> int:
    """The TTL the features were built with (``features/_views.json``), or the default."""
    path = Path(home) / "features" / "_views.json"
    if path.is_file():
        return int(json.loads(path.read_text()).get("ttl_days", DEFAULT_TTL_DAYS))
    return DEFAULT_TTL_DAYS


def manifest_interest_views(home: Path) -> dict[str, dict[str, str]]:
    """The user x attribute interest views of the last feature build (``features/_views.json``): view ->
    ``attribute`` and ``key`` (the composite key column, also the view's entity); empty before any build."""
    path = Path(home) / "features" / "_views.json"
    return dict(json.loads(path.read_text()).get("interest_views", {})) if path.is_file() else {}


def _spec(features: Path, name: str, entity: str, ttl: dt.timedelta | None, partitions: list[Path],
          attribute: str | None = None) -> ViewSpec:
    schema = pq.read_schema(sorted(partitions[-1].glob("*.parquet"))[0])
    key = ENTITY_KEYS.get(entity, entity)  # an interest view's entity is its key column
    fields = tuple((f.name, f.type) for f in schema if f.name not in (key, EVENT_TS, CREATED_TS))
    return ViewSpec(
        name=name,
        entity=entity,
        join_key=key,
        path=str(features / name / "date=*" / "*.parquet"),
        ttl=ttl,
        fields=fields,
        latest_partition=partitions[-1].name,
        attribute=attribute,
    )


def _partitions(features: Path, name: str) -> list[Path]:
    """The view's day partitions holding parquet, of committed days only: with a ``_days/`` folder (commit
    markers, components/store/days.py), a day without ``_days/<day>.json`` is half-written and left out."""
    markers = features / "_days"
    check = markers.is_dir()
    return sorted(p for p in (features / name).glob("date=*") if any(p.glob("*.parquet"))
                  and (not check or (markers / f"{p.name[5:]}.json").is_file()))


def view_specs(home: Path, ttl_days: int, representations: bool = False) -> list[ViewSpec]:
    """Specs of every view under ``<home>/features``; raises naming the view when it was never built.
    Views without any feature column are left out (see the module docstring).

    ``representations=True`` adds the pre-trained representation views (``REPRESENTATION_VIEWS``) that
    have been built (a missing one is left out: the daily refresh may not have run yet). The default
    returns the ``training`` service's views only, which is what a training-set join reads."""
    features = Path(home).expanduser().resolve() / "features"
    specs = []
    for name, (entity, expires) in VIEW_ENTITIES.items():
        partitions = _partitions(features, name)
        if not partitions:
            raise FileNotFoundError(
                f"feature view {name} has no partitions under {features / name}: build the features first "
                "(adsrec demo, or components.store.features.build_features)"
            )
        spec = _spec(features, name, entity, dt.timedelta(days=ttl_days) if expires else None, partitions)
        if spec.fields:  # a view with no feature column (a log without user profiles) has nothing to serve
            specs.append(spec)
    # User x attribute interest views: one composite-key entity each, TTL like the stats.
    for name, interest in manifest_interest_views(home).items():
        partitions = _partitions(features, name)
        if partitions:
            specs.append(_spec(features, name, interest["key"], dt.timedelta(days=ttl_days), partitions,
                               interest["attribute"]))
    if representations:
        ttls = {"creative": None, "daily": dt.timedelta(days=ttl_days), "graph": GRAPH_TTL}
        for name, (entity, stamping) in REPRESENTATION_VIEWS.items():
            partitions = _partitions(features, name)
            if partitions:
                spec = _spec(features, name, entity, ttls[stamping], partitions)
                if spec.fields:
                    specs.append(spec)
    return specs


def _feast_type(arrow_type: pa.DataType) -> Any:
    from feast import types as ft

    scalar = {
        pa.int64(): ft.Int64,
        pa.int32(): ft.Int32,
        pa.float64(): ft.Float64,
        pa.float32(): ft.Float32,
        pa.string(): ft.String,
        pa.large_string(): ft.String,
        pa.bool_(): ft.Bool,
    }
    if pa.types.is_timestamp(arrow_type):
        return ft.UnixTimestamp
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return ft.Array(_feast_type(arrow_type.value_type))
    if arrow_type in scalar:
        return scalar[arrow_type]
    raise TypeError(f"no Feast type for Arrow type {arrow_type}")


def feast_objects(specs: list[ViewSpec]) -> dict[str, Any]:
    """Entities, file sources, feature views and the ``training`` feature service (the core views of
    ``VIEW_ENTITIES`` and the interest views, never the representation views), by name."""
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.data_format import ParquetFormat

    entities = {
        name: Entity(name=name, join_keys=[key], value_type=ValueType.INT64, description=f"{name} id")
        for name, key in ENTITY_KEYS.items()
    }
    for spec in specs:  # interest views: a composite string key '<user_id>|<attribute value>'
        if spec.attribute:
            entities[spec.entity] = Entity(name=spec.entity, join_keys=[spec.join_key], value_type=ValueType.STRING,
                                           description=f"user id and ad {spec.attribute}, '<user_id>|<value>'")
    objects: dict[str, Any] = dict(entities)
    views = []
    for spec in specs:
        source = FileSource(
            name=f"{spec.name}_source",
            path=spec.path,  # absolute: FileSource paths resolve against the process CWD, not the repo
            file_format=ParquetFormat(),
            timestamp_field=EVENT_TS,
            created_timestamp_column=CREATED_TS,
        )
        view = FeatureView(
            name=spec.name,
            entities=[entities[spec.entity]],
            ttl=spec.ttl or dt.timedelta(0),  # Feast: a zero TTL never expires
            schema=[Field(name=n, dtype=_feast_type(t)) for n, t in spec.fields],
            source=source,
            online=True,
            tags={"partition": spec.latest_partition},
        )
        objects[f"{spec.name}_source"] = source
        objects[spec.name] = view
        views.append(view)
    # The training service holds the core and interest views; representation views are served by name.
    interest = {s.name for s in specs if s.attribute}
    training = [v for v in views if v.name in VIEW_ENTITIES or v.name in interest]
    objects[FEATURE_SERVICE] = FeatureService(name=FEATURE_SERVICE, features=training)
    return objects

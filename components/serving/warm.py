"""What the scoring service reads per request, kept warm (components/serving/service.py): the online store in
memory, the similarity inputs and the fresh behaviour state, and how each is (re)loaded. Every refresh helper
keeps the current copy serving when loading a newer one fails, and records why in ``errors`` (what ``/ready``
reports)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.config import Settings


@dataclass
class Warm:
    """What the service reads per request; replaced as a whole by :meth:`ScoringService.refresh`."""

    reader: Any = None
    similarity: Any = None
    behaviour: Any = None
    errors: dict[str, str] = field(default_factory=dict)


def refresh_reader(settings: "Settings", current: Any, errors: dict[str, str], changed: dict[str, Any]) -> Any:
    from components.serving.readers import WarmReader, online_stamp

    if current is not None and current.stamp == online_stamp(settings):
        return current
    try:
        reader = WarmReader.load(settings)
    except Exception as exc:  # OnlineStoreMissing, a store Feast cannot read: keep the old one
        errors["online_store"] = f"{type(exc).__name__}: {exc}"
        return current
    errors.pop("online_store", None)
    changed["online_store"] = {"as_of": reader.state.get("as_of"), "seconds": reader.seconds}
    return reader


def refresh_similarity(settings: "Settings", current: Any, errors: dict[str, str], changed: dict[str, Any]) -> Any:
    from components.representations.similarity_inputs import inputs_fingerprint, load_similarity_inputs
    from components.training.training_set import adds_similarities

    if not adds_similarities(settings, None):
        return None
    if current is not None and current.fingerprint == inputs_fingerprint(settings):
        return current
    try:
        loaded = load_similarity_inputs(settings, fingerprint=True)
    except Exception as exc:
        errors["representations"] = f"{type(exc).__name__}: {exc}"
        return current
    errors.pop("representations", None)
    changed["representations"] = True
    return loaded


def refresh_behaviour(settings: "Settings", current: Any, reader: Any, errors: dict[str, str],
                       changed: dict[str, Any], journal: Any = None) -> Any:
    """The fresh behaviour state, seeded once from the offline log up to the online store's ``as_of`` (what
    ingestion has landed) plus the events journal since then (``journal.replay``: what a previous process was
    pushed); pushed events keep it current, and each new day catches up from the log."""
    if current is not None or reader is None or not settings.features.fresh_behaviour:
        return current
    try:
        from components.serving.behaviour_state import BehaviourState

        as_of = dt.datetime.fromisoformat(reader.state["as_of"])
        state = BehaviourState.from_log(settings, as_of)
        if journal is not None:
            from components.serving.journal import replay

            changed["journal"] = replay(journal, state, as_of)
    except Exception as exc:
        errors["behaviour"] = f"{type(exc).__name__}: {exc}"
        return None
    errors.pop("behaviour", None)
    changed["behaviour"] = True
    return state

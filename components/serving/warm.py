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
    reader = _load("online_store", lambda: WarmReader.load(settings), current, errors, changed)  # OnlineStoreMissing
    if reader is not current:
        changed["online_store"] = {"as_of": reader.state.get("as_of"), "seconds": reader.seconds}
    return reader


def refresh_similarity(settings: "Settings", current: Any, errors: dict[str, str], changed: dict[str, Any]) -> Any:
    from components.representations.similarity_inputs import inputs_fingerprint, load_similarity_inputs
    from components.training.training_set import adds_similarities

    if not adds_similarities(settings, None):
        return None
    if current is not None and current.fingerprint == inputs_fingerprint(settings):
        return current
    return _load("representations", lambda: load_similarity_inputs(settings, fingerprint=True), current, errors,
                 changed)


def refresh_behaviour(settings: "Settings", current: Any, reader: Any, errors: dict[str, str],
                       changed: dict[str, Any], journal: Any = None) -> Any:
    """The fresh behaviour state, seeded once from the offline log up to the online store's ``as_of`` (what
    ingestion has landed) plus the events journal since then (``journal.replay``: what a previous process was
    pushed); pushed events keep it current, and each new day catches up from the log."""
    if current is not None or reader is None or not settings.features.fresh_behaviour:
        return current

    def seed() -> Any:
        from components.serving.behaviour_state import BehaviourState

        as_of = dt.datetime.fromisoformat(reader.state["as_of"])
        state = BehaviourState.from_log(settings, as_of)
        if journal is not None:
            from components.serving.journal import replay

            changed["journal"] = replay(journal, state, as_of)
        return state

    return _load("behaviour", seed, None, errors, changed)


def _load(name: str, load: Any, current: Any, errors: dict[str, str], changed: dict[str, Any]) -> Any:
    """``load()``, recorded in ``changed``; on failure the reason goes to ``errors[name]`` (what ``/ready``
    says) and ``current`` keeps serving."""
    try:
        loaded = load()
    except Exception as exc:  # a store or file a refresh cannot read: keep what serves now
        errors[name] = f"{type(exc).__name__}: {exc}"
        return current
    errors.pop(name, None)
    changed[name] = True
    return loaded

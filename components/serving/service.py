"""The scoring service's core, without HTTP (components/serving/api.py puts FastAPI in front of it;
docs/serving.md, "The scoring service").

:class:`ScoringService` holds everything a request needs, warm: the online store in memory
(``readers.WarmReader``), the similarity inputs (``similarity_inputs.SimilarityInputs``), the fresh
behaviour state when ``features.fresh_behaviour`` is on (``behaviour_state.BehaviourState``) and the model
of each alias asked for (``model_slots.ModelSlots``). :meth:`score` turns one request (a user, candidate ads,
context) into the same online rows ``adsrec score`` builds (``online_rows.online_feature_rows``, the same
code, reading the warm copies instead of Feast and the files), scores them with the alias's model and ranks
them by the objective (components/serving/objective.py). :meth:`refresh`, called by a background thread every
``serving.poll_seconds``, swaps in a newer online store (``adsrec materialize``), refreshed representations
and moved aliases: each is loaded off the request path and replaced in one assignment.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from components.serving.encoded import Unsupported
from components.serving.model_slots import ModelSlots, UnknownAlias
from components.serving.objective import Objective, ObjectiveError, parse_objective, rank_order
from components.serving.warm import Warm, refresh_behaviour, refresh_reader, refresh_similarity

if TYPE_CHECKING:
    import pyarrow as pa

    from components.config import Settings
    from components.serving.encoded import EncodedSnapshot

log = logging.getLogger(__name__)


class TooManyCandidates(ValueError):
    """A request sent more candidates than ``serving.max_candidates``."""


class NotReady(RuntimeError):
    """The service has no online store or no model to serve yet."""


@dataclass
class ScoreRequest:
    """One request: a user, candidate ads and the impression's context (docs/serving.md)."""

    user_id: int
    ads: list[int]
    slot: str | int | None = None
    positions: list[int] | None = None
    event_time: dt.datetime | None = None
    request_id: str | None = None
    alias: str | None = None
    objective: str | None = None
    top: int | None = None


class ScoringService:
    """See the module docstring. ``start()`` loads everything; ``score()`` is safe from many threads."""

    def __init__(self, settings: "Settings", *, alias: str | None = None, objective: str | None = None,
                 max_candidates: int | None = None) -> None:
        cfg = settings.serving
        self.settings = settings
        self.alias = alias or cfg.alias
        self.default_objective = parse_objective(objective or cfg.objective)
        self.max_candidates = max_candidates or cfg.max_candidates
        self.models = ModelSlots(settings)
        self.warm = Warm()
        self._objectives: dict[str, Objective] = {self.default_objective.text: self.default_objective}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = threading.Lock()
        self._snapshots: dict[tuple[int, int, int], Any] = {}  # (model, store, representations) -> fast path
        self._snapshot_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(cfg.concurrency)  # requests scored at once (serving.concurrency)
        from components.serving.journal import EventJournal, journal_dir

        self.journal = EventJournal(journal_dir(settings))
        self.started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    # ----- loading ------------------------------------------------------------------------------------
    def start(self, watch: bool = True) -> "ScoringService":
        """Load the online store, similarity inputs, behaviour state and the default alias's model (what is
        missing is reported by :meth:`status`, and retried by every refresh), then start the watcher."""
        self.refresh()
        if watch and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="adsrec-serve-refresh", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.serving.poll_seconds):
            try:
                self.refresh()
            except Exception:  # the watcher must outlive any one failed refresh
                log.exception("refresh failed")

    def refresh(self) -> dict[str, Any]:
        """Load what is missing or newer (online store, representations, behaviour state, models); returns
        what changed. The current copies keep serving while new ones load."""
        with self._refresh_lock:
            changed: dict[str, Any] = {}
            warm = self.warm
            errors = dict(warm.errors)
            reader = refresh_reader(self.settings, warm.reader, errors, changed)
            similarity = refresh_similarity(self.settings, warm.similarity, errors, changed)
            behaviour = refresh_behaviour(self.settings, warm.behaviour, reader, errors, changed, self.journal)
            if behaviour is not None and "online_store" in changed and "behaviour" not in changed:
                # A new day landed: its events (pushed ones are not counted twice) and its new ads.
                old, new = (dt.datetime.fromisoformat(r.state["as_of"]) for r in (warm.reader, reader))
                if new > old:
                    changed["behaviour_caught_up"] = behaviour.catch_up(old, new)
            self.warm = Warm(reader=reader, similarity=similarity, behaviour=behaviour, errors=errors)
            try:
                self.models.get(self.alias)
                errors.pop("model", None)
            except Exception as exc:  # no champion yet, or it does not load: not ready, retried next time
                errors["model"] = f"{type(exc).__name__}: {exc}"
            swaps = self.models.refresh()
            if swaps:
                changed["models"] = swaps
            return changed

    # ----- state --------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Readiness and what is served: ``ready``, ``reasons`` (what is missing), the models per alias,
        the online store's ``as_of`` and the swaps so far."""
        warm = self.warm
        reasons = dict(warm.errors)
        if warm.reader is None:
            reasons.setdefault("online_store", "not loaded")
        if self.alias not in self.models.held():
            reasons.setdefault("model", f"no model loaded for alias {self.alias!r}")
        return {
            "ready": not reasons,
            "reasons": reasons,
            "alias": self.alias,
            "models": {a: m.describe() for a, m in self.models.held().items()},
            "online_store": None if warm.reader is None else {
                "as_of": warm.reader.state.get("as_of"), "keys": warm.reader.keys,
                "load_seconds": warm.reader.seconds},
            "fresh_behaviour": warm.behaviour is not None,
            "objective": self.default_objective.text,
            "max_candidates": self.max_candidates,
            "swaps": list(self.models.swaps),
            "started_at": self.started_at,
        }

    def objective(self, text: str | None) -> Objective:
        if not text:
            return self.default_objective
        parsed = self._objectives.get(text)
        if parsed is None:
            parsed = parse_objective(text)
            if len(self._objectives) < 256:
                self._objectives[text] = parsed
        return parsed

    # ----- scoring ------------------------------------------------------------------------------------
    def score(self, request: ScoreRequest) -> dict[str, Any]:
        """Score and rank one request. Raises :class:`TooManyCandidates`, :class:`UnknownAlias`,
        :class:`ObjectiveError`, ``ValueError`` (a bad field) or :class:`NotReady`."""
        started = time.perf_counter()
        n = len(request.ads)
        if n == 0:
            raise ValueError("the request has no candidate ads: send at least one ad id in 'ads'")
        if n > self.max_candidates:
            raise TooManyCandidates(f"the request has {n} candidates; this service takes at most "
                                    f"{self.max_candidates} (serving.max_candidates)")
        if request.positions is not None and len(request.positions) != n:
            raise ValueError(f"'positions' has {len(request.positions)} entries for {n} ads: give one per ad or none")
        objective = self.objective(request.objective)
        warm = self.warm
        if warm.reader is None:
            raise NotReady(f"no online store loaded: {warm.errors.get('online_store', 'run adsrec materialize')}")
        model = self.models.get(request.alias or self.alias)
        with self._slots:
            return self._score(request, warm, model, objective, started)

    def _score(self, request: ScoreRequest, warm: Warm, model: Any, objective: Objective,
               started: float) -> dict[str, Any]:
        fast = self.fast_path(model, warm)
        if fast is not None:
            try:
                return self._fast_answer(request, fast, warm, model, objective, started)
            except Unsupported as exc:  # e.g. an objective column the fast path does not build
                log.debug("generic path for this request: %s", exc)
        return self._generic_answer(request, warm, model, objective, started)

    def rows(self, request: ScoreRequest, warm: Warm | None = None) -> "pa.Table":
        """The online rows of ``request`` (one per candidate, in request order): the generic path."""
        from components.serving.online_rows import online_feature_rows

        warm = warm or self.warm
        table = request_table(request)
        extra = {"behaviour": warm.behaviour} if warm.behaviour is not None else {}
        return online_feature_rows(self.settings, table, reader=warm.reader, similarity=warm.similarity, **extra)

    def fast_path(self, model: Any, warm: Warm | None = None) -> "EncodedSnapshot | None":
        """The warm store encoded for ``model`` (components/serving/encoded.py), built on first use per
        (model, store, representations); None when ``serving.fast_path`` is off or the model reads a column
        the fast path does not build."""
        from components.serving.encoded import EncodedSnapshot

        warm = warm or self.warm
        if not self.settings.serving.fast_path or warm.reader is None:
            return None
        key = (id(model.trained), id(warm.reader), id(warm.similarity))
        cached = self._snapshots.get(key)
        if cached is None:
            with self._snapshot_lock:
                cached = self._snapshots.get(key)
                if cached is None:
                    try:
                        cached = EncodedSnapshot(self.settings, model.trained, warm.reader, warm.similarity)
                    except Unsupported as exc:
                        log.warning("version %s is scored by the generic path: %s", model.version, exc)
                        cached = False
                    if len(self._snapshots) >= 4:
                        self._snapshots.clear()  # old models or stores: swapped out
                    self._snapshots[key] = cached
        return cached or None

    def _fast_answer(self, request: ScoreRequest, fast: Any, warm: Warm, model: Any, objective: Objective,
                     started: float) -> dict[str, Any]:
        import pyarrow as pa

        rows = fast.rows(request, warm.behaviour)
        t = time.perf_counter()
        probs = forward(model.trained.model, rows.batch, model.tasks)
        model_seconds = time.perf_counter() - t
        values = {name: arr.astype(np.float64) for name, arr in probs.items()}
        for name in set(objective.columns(model.tasks).values()) - set(values):
            values[name] = fast.raw_column(rows, name)
        when = request.event_time or dt.datetime.now(dt.timezone.utc)
        when = pa.scalar(when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc),
                         pa.timestamp("us", tz="UTC")).as_py()
        timings = {"feature_lookup": rows.seconds_lookup, "request_features": rows.seconds_request,
                   "rows": rows.seconds_lookup + rows.seconds_request, "model": model_seconds}
        return self._answer(request, model, objective, probs, values, np.asarray(request.ads, np.int64),
                            rows.ad_known, rows.user_known, request.request_id or "serve-0", when,
                            warm.reader.state.get("as_of"), timings, started, path="fast")

    def _generic_answer(self, request: ScoreRequest, warm: Warm, model: Any, objective: Objective,
                        started: float) -> dict[str, Any]:
        from components.serving.online_rows import serving_summary
        from components.serving.scoring import probabilities

        rows = self.rows(request, warm)
        t = time.perf_counter()
        probs = probabilities(model.trained, rows)
        model_seconds = time.perf_counter() - t
        values = {name: arr.astype(np.float64) for name, arr in probs.items()}
        for name in set(objective.columns(model.tasks).values()) - set(values):
            if name in rows.column_names:
                values[name] = _as_float(rows.column(name))
        summary = serving_summary(rows)
        fresh = (summary.get("fresh_behaviour") or {}).get("seconds", 0.0)
        timings = {"feature_lookup": summary.get("seconds_feast", 0.0),
                   "request_features": summary.get("seconds_similarity", 0.0) + fresh,
                   "rows": summary.get("seconds", 0.0), "model": model_seconds}
        return self._answer(request, model, objective, probs, values, rows.column("ad_id").to_numpy(),
                            rows.column("ad_known").to_numpy(zero_copy_only=False),
                            bool(rows.column("user_known")[0].as_py()), rows.column("request_id")[0].as_py(),
                            rows.column("event_time")[0].as_py(), summary.get("online_as_of"), timings, started,
                            path="generic")

    def _answer(self, request: ScoreRequest, model: Any, objective: Objective, probs: dict[str, np.ndarray],
                values: dict[str, np.ndarray], ads: np.ndarray, ad_known: np.ndarray, user_known: bool,
                request_id: str, event_time: dt.datetime, as_of: str | None, timings: dict[str, float],
                started: float, path: str) -> dict[str, Any]:
        """The response: candidates ranked by the objective (see docs/serving.md)."""
        tasks = model.tasks
        scores = objective.evaluate(values, tasks, len(ads))
        order = rank_order(scores)
        if request.top:
            order = order[:request.top]
        columns = [probs[f"p_{t}"].tolist() for t in tasks]
        ranked = [
            {"ad_id": int(ads[i]), "rank": r + 1, "score": _finite(scores[i]),
             **{f"p_{t}": columns[k][i] for k, t in enumerate(tasks)}, "ad_known": bool(ad_known[i])}
            for r, i in enumerate(order)
        ]
        return {
            "request_id": request_id,
            "user_id": request.user_id,
            "user_known": user_known,
            "event_time": event_time.isoformat(),
            "model": model.describe(),
            "objective": objective.text,
            "ranked": ranked,
            "unknown_ads": int((~ad_known).sum()),
            "online_as_of": as_of,
            "path": path,
            "timings_ms": {**{k: round(1000 * v, 3) for k, v in timings.items()},
                           "total": round(1000 * (time.perf_counter() - started), 3)},
        }

    def push_events(self, events: "pa.Table") -> int:
        """Make impression events (with their labels) visible to later requests' behaviour features."""
        behaviour = self.warm.behaviour
        if behaviour is None:
            raise NotReady("fresh behaviour features are off (features.fresh_behaviour: false) or not loaded: "
                           f"{self.warm.errors.get('behaviour', 'nothing to update')}")
        behaviour.check_events(events)
        self.journal.append(events)  # written ahead: a restarted service re-pushes it (components/serving/journal.py)
        return int(behaviour.push(events))


def forward(model: Any, batch: dict[str, np.ndarray], tasks: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``{p_<task>: float32}`` of one request's batch: the model called once, as
    ``components.training.device.predict`` does for a batch that fits in one chunk (no grad, eval mode,
    sigmoid of the float logits), without its copy of the batch into a device buffer."""
    import torch

    with torch.no_grad():
        logits = model({k: torch.from_numpy(v) for k, v in batch.items()})
    return {f"p_{t}": torch.sigmoid(logits[t].float()).numpy() for t in tasks}


def request_table(request: ScoreRequest) -> "pa.Table":
    """The request as ``normalize_requests`` input: one row per candidate."""
    import pyarrow as pa

    n = len(request.ads)
    cols: dict[str, Any] = {
        "user_id": pa.array(np.full(n, request.user_id, dtype=np.int64)),
        "ad_id": pa.array(np.asarray(request.ads, dtype=np.int64)),
        "slot": pa.array([None if request.slot is None else str(request.slot)] * n, pa.string()),
    }
    if request.positions is not None:
        cols["position"] = pa.array(np.asarray(request.positions, dtype=np.int64))
    if request.event_time is not None:
        when = request.event_time if request.event_time.tzinfo else request.event_time.replace(tzinfo=dt.timezone.utc)
        cols["event_time"] = pa.array([when] * n, pa.timestamp("us", tz="UTC"))
    if request.request_id is not None:
        cols["request_id"] = pa.array([request.request_id] * n, pa.string())
    return pa.table(cols)


def _as_float(column: Any) -> np.ndarray:
    import pyarrow as pa

    return column.cast(pa.float64()).fill_null(float("nan")).to_numpy(zero_copy_only=False)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


__all__ = ["NotReady", "ObjectiveError", "ScoreRequest", "ScoringService", "TooManyCandidates", "UnknownAlias",
           "request_table"]

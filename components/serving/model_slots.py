"""The models a scoring service holds: one per registry alias it has been asked for, each swapped for the
alias's new version without a restart (docs/serving.md, "Model swaps").

:meth:`ModelSlots.get` returns the loaded model of an alias, loading it the first time (a request naming
``challenger`` loads that one). :meth:`ModelSlots.refresh` asks the registry which version each held alias
points at now and, for every alias that moved (``adsrec promote``, ``adsrec rollback``), loads the new version
by its number, off the request path, then replaces the reference in one assignment: a request in flight keeps
the model it started with, the next one gets the new model, and no request ever waits for a load. A version
that fails to load leaves the old one serving and is reported (``last_error``). The service calls refresh
every ``serving.poll_seconds`` from a background thread. MLflow's registry has no push notification for an
alias move, so polling the alias is the mechanism; one ``get_model_version_by_alias`` call per alias and poll.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.config import Settings

log = logging.getLogger(__name__)


class UnknownAlias(LookupError):
    """No registered version holds the alias (or the registry does not exist yet)."""


@dataclass(frozen=True)
class LoadedModel:
    """One registered version, loaded: ``trained`` is the ``TrainedModel`` the packaged pyfunc wraps."""

    name: str
    alias: str
    version: int
    run_id: str | None
    trained: Any
    loaded_at: str
    seconds: float

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.trained.tasks)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "alias": self.alias, "version": self.version, "run_id": self.run_id,
                "loaded_at": self.loaded_at, "load_seconds": self.seconds}


def alias_version(settings: "Settings", alias: str) -> Any:
    """The ``ModelVersion`` holding ``alias``; raises :class:`UnknownAlias` when none does."""
    from components.registry.client import mlflow_client, store_exists, version_by_alias

    name = settings.registry.model_name
    if not store_exists(settings):
        raise UnknownAlias(f"there is no model registry under {settings.home} yet: run the daily pipeline first")
    with mlflow_client(settings) as client:
        version = version_by_alias(client, name, alias)
    if version is None:
        raise UnknownAlias(f"no version of {name!r} has the alias {alias!r}")
    return version


def load_version(settings: "Settings", alias: str, version: Any) -> LoadedModel:
    """Load registered ``version`` (a ``ModelVersion``) through ``mlflow.pyfunc`` and unwrap its ranker;
    a version whose artifacts are missing raises ``RegistryError`` with one line (components/registry/checks.py)."""
    import mlflow

    from components.registry.checks import artifacts_problem, refusal
    from components.registry.client import RegistryError, mlflow_client

    started = time.perf_counter()
    name = settings.registry.model_name
    with mlflow_client(settings) as client:
        if (problem := artifacts_problem(client, name, version.version)) is not None:
            raise RegistryError(refusal(name, version.version, problem, f"cannot serve {name}@{alias}"))
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    trained = pyfunc.unwrap_python_model().trained
    return LoadedModel(name=name, alias=alias, version=int(version.version), run_id=version.run_id,
                       trained=trained, loaded_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       seconds=round(time.perf_counter() - started, 3))


class ModelSlots:
    """The loaded model per alias, kept current (see the module docstring)."""

    def __init__(self, settings: "Settings") -> None:
        self.settings = settings
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()  # guards loading, not reading: a read is one dict lookup
        self.swaps: list[dict[str, Any]] = []
        self.last_error: str | None = None

    def held(self) -> dict[str, LoadedModel]:
        return dict(self._models)

    def get(self, alias: str) -> LoadedModel:
        """The model of ``alias``, loaded on first use; raises :class:`UnknownAlias`."""
        model = self._models.get(alias)
        if model is not None:
            return model
        with self._lock:
            if alias not in self._models:
                self._models[alias] = load_version(self.settings, alias, alias_version(self.settings, alias))
            return self._models[alias]

    def refresh(self) -> list[dict[str, Any]]:
        """Swap in the new version of every held alias that moved; returns the swaps made."""
        done = []
        for alias, current in list(self._models.items()):
            try:
                version = alias_version(self.settings, alias)
                if int(version.version) == current.version:
                    continue
                with self._lock:
                    loaded = load_version(self.settings, alias, version)
                    self._models[alias] = loaded  # one assignment: requests see the old or the new model
            except Exception as exc:  # keep serving the old version; report why the new one is not served
                self.last_error = f"{alias}: {type(exc).__name__}: {exc}"
                log.warning("model refresh failed, still serving the loaded version: %s", self.last_error)
                continue
            swap = {"alias": alias, "from": current.version, "to": loaded.version, "at": loaded.loaded_at,
                    "load_seconds": loaded.seconds}
            self.swaps.append(swap)
            done.append(swap)
            log.info("alias %s moved: now serving version %d (was %d)", alias, loaded.version, current.version)
        return done

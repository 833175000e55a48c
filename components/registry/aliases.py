"""The registry's aliases and what reads versions back (docs/registry.md, "Promotion and rollback" and "Python API").

``challenger`` is set by registration (components/registry/register.py) when every gate passed;
:func:`promote` moves ``champion`` to a version (refusing one whose gates failed unless forced with a
reason, which is recorded) and ``previous`` to the old champion; :func:`rollback` undoes the last
promotion; :func:`maybe_auto_promote` applies ``registry.auto_promote``. The chain of champions is kept
as a registered-model tag (``champion_history``). :func:`champion`, :func:`version_info`,
:func:`list_versions` and :func:`load_champion` read versions back; :func:`versions_table` prints them.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import Settings
from components.faults import declare, fault_point
from components.registry.checks import artifacts_problem, refusal, version_problems
from components.registry.client import (CHALLENGER, CHAMPION, GATES_ARTIFACT, GATES_PASSED_TAG, PREVIOUS,
                                        PromotionError, RegistryError, mlflow_client, require_store,
                                        store_exists, version_by_alias)

if TYPE_CHECKING:
    import mlflow

    from components.registry.register import RegisteredVersion

log = logging.getLogger(__name__)

HISTORY_TAG = "champion_history"  # registered-model tag: JSON list, oldest first, the last is the champion
HISTORY_LIMIT = 100
declare("promote.after_champion", "rollback.after_champion")


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as the registry holds it.

    ``metrics`` are the run's metrics (``"<task>/auc"``, ``"<task>/gauc"``, ``"<task>/logloss"``,
    ``"<task>/calibration"``, ``"training/samples_per_s"``, ``"gate/<name>"``, ...); :meth:`task_metrics`
    regroups the per-task ones as ``{task: {"auc": ..., ...}}``, the shape ``validation.gates.model_gate``
    takes for the champion. ``gates``: the full gate results (``name, value, threshold, passed, details``)
    from :func:`champion`, only ``name`` and ``passed`` (from the version tags) from :func:`list_versions`.
    """

    name: str
    version: int
    run_id: str | None
    aliases: tuple[str, ...]
    gates_passed: bool
    gates: tuple[dict[str, Any], ...]
    metrics: dict[str, float]
    tags: dict[str, str]
    created: dt.datetime
    data_window: tuple[dt.date, dt.date] | None
    tasks: tuple[str, ...] = ()
    model_uri: str = ""
    failed_gates: tuple[str, ...] = field(default=())
    artifacts_problem: str | None = None  # set by list_versions when the logged model is not all there

    def task_metrics(self) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` from the ``<task>/<metric>`` run metrics."""
        out: dict[str, dict[str, float]] = {t: {} for t in self.tasks}
        for key, value in self.metrics.items():
            task, _, metric = key.partition("/")
            if task in out and metric and "/" not in metric:
                out[task][metric] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id, "aliases": list(self.aliases),
                "gates_passed": self.gates_passed, "failed_gates": list(self.failed_gates),
                "gates": list(self.gates), "metrics": self.metrics, "tasks": list(self.tasks),
                "created": self.created.isoformat(), "model_uri": self.model_uri,
                "artifacts_problem": self.artifacts_problem,
                "data_window": [d.isoformat() for d in self.data_window] if self.data_window else None}


# ----- read back ---------------------------------------------------------------------------------------------
def _version_info(client: "mlflow.MlflowClient", mv: Any, full_gates: bool,
                  aliases: Mapping[str, Any] | None = None) -> VersionInfo:
    """``aliases``: the registered model's alias -> version map (version searches leave aliases out)."""
    tags = dict(mv.tags or {})
    held = (mv.aliases or ()) if aliases is None else [a for a, v in aliases.items() if int(v) == int(mv.version)]
    run_id = mv.run_id or tags.get("run_id")
    metrics: dict[str, float] = {}
    gates: list[dict[str, Any]] = []
    if run_id:
        try:
            metrics = dict(client.get_run(run_id).data.metrics)
        except Exception as exc:  # noqa: BLE001 - a deleted run leaves the version readable
            log.warning("run %s of %s version %s is unreadable: %s", run_id, mv.name, mv.version, exc)
        if full_gates:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    gates = json.loads(Path(client.download_artifacts(run_id, GATES_ARTIFACT, tmp)).read_text())
                except Exception as exc:  # noqa: BLE001
                    log.warning("no %s in run %s: %s", GATES_ARTIFACT, run_id, exc)
    if not gates:
        prefix, suffix = "gate.", ".passed"
        gates = [{"name": k[len(prefix):-len(suffix)], "passed": v == "true"}
                 for k, v in sorted(tags.items()) if k.startswith(prefix) and k.endswith(suffix)]
    window = None
    if tags.get("data_window_start") and tags.get("data_window_end"):
        window = (dt.date.fromisoformat(tags["data_window_start"]), dt.date.fromisoformat(tags["data_window_end"]))
    return VersionInfo(
        name=mv.name, version=int(mv.version), run_id=run_id, aliases=tuple(sorted(held)),
        gates_passed=tags.get(GATES_PASSED_TAG) == "true", gates=tuple(gates), metrics=metrics, tags=tags,
        created=dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=dt.timezone.utc),
        data_window=window, tasks=tuple(t for t in tags.get("tasks", "").split(",") if t),
        model_uri=f"models:/{mv.name}/{mv.version}",
        failed_gates=tuple(t for t in tags.get("failed_gates", "").split(",") if t),
    )


def version_info(settings: Settings, version: int | None = None, alias: str | None = None) -> VersionInfo | None:
    """One version by number or alias (with its full gate results), None when there is none."""
    from mlflow.exceptions import MlflowException

    if (version is None) == (alias is None):
        raise ValueError("give exactly one of version and alias")
    if not store_exists(settings):
        return None
    name = settings.registry.model_name
    with mlflow_client(settings) as client:
        if alias is not None:
            mv = version_by_alias(client, name, alias)
        else:
            try:
                mv = client.get_model_version(name, str(version))
            except MlflowException:
                mv = None
        return None if mv is None else _version_info(client, mv, full_gates=True)


def champion(settings: Settings) -> VersionInfo | None:
    """The version aliased ``champion`` (run metrics, full gate results), or None when there is none."""
    return version_info(settings, alias=CHAMPION)


def list_versions(settings: Settings) -> list[VersionInfo]:
    """Every version of ``registry.model_name``, newest first (gates from the version tags; a version
    whose logged model is not all there has ``artifacts_problem`` set)."""
    if not store_exists(settings):
        return []
    name = settings.registry.model_name
    from mlflow.exceptions import MlflowException

    with mlflow_client(settings) as client:
        try:
            aliases = dict(client.get_registered_model(name).aliases or {})
        except MlflowException:
            return []  # no such registered model yet
        found = client.search_model_versions(f"name = '{name}'")
        problems = version_problems(client, name, found)
        infos = [replace(_version_info(client, mv, full_gates=False, aliases=aliases),
                         artifacts_problem=problems.get(int(mv.version))) for mv in found]
    return sorted(infos, key=lambda v: v.version, reverse=True)


def load_champion(settings: Settings, alias: str = CHAMPION) -> Any:
    """The ``mlflow.pyfunc.PyFuncModel`` of ``models:/<model_name>@<alias>``: ``.predict(rows)`` gives the
    ``p_<task>`` DataFrame; ``.unwrap_python_model()`` is the :class:`components.registry.packaged.PackagedRanker`
    (``.score_table(pyarrow_table)`` skips the pandas round trip). Raises ``RegistryError`` when no
    version has the alias, or when its stored model code imports what this adsrec no longer has (a
    version registered before the modules moved into stage folders names ``components.packaged``)."""
    import mlflow

    name = settings.registry.model_name
    require_store(settings)
    with mlflow_client(settings) as client:
        version = version_by_alias(client, name, alias)
        if version is None:
            raise RegistryError(f"no version of {name!r} has the alias {alias!r}"
                                + (" (promote one: adsrec promote --version V)" if alias == CHAMPION else ""))
        if (problem := artifacts_problem(client, name, version.version)) is not None:
            raise RegistryError(refusal(name, version.version, problem, f"cannot load {name}@{alias}"))
        try:
            return mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
        except ImportError as exc:
            raise RegistryError(
                f"version {version.version} of {name!r} ({alias}) cannot be loaded by this adsrec: its model code "
                f"imports {getattr(exc, 'name', None) or exc} (registered by an older layout); promote a version "
                "registered by this one (adsrec promote --version V) or re-run its day to register it again"
            ) from exc


# ----- promote / rollback ------------------------------------------------------------------------------------
def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER") or "unknown"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _history(client: "mlflow.MlflowClient", name: str) -> list[dict[str, Any]]:
    raw = (client.get_registered_model(name).tags or {}).get(HISTORY_TAG)
    try:
        hist = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        log.warning("registered model %s: unreadable %s tag, starting a new history", name, HISTORY_TAG)
        hist = []
    return [h for h in hist if isinstance(h, dict) and "version" in h]


def _save_history(client: "mlflow.MlflowClient", name: str, history: list[dict[str, Any]]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_LIMIT:]))


def set_or_clear_alias(client: "mlflow.MlflowClient", name: str, alias: str, version: int | None) -> None:
    """Point ``alias`` at ``version``, or remove it (if held) when ``version`` is None."""
    if version is None:
        if version_by_alias(client, name, alias) is not None:
            client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, str(version))


def promote(settings: Settings, version: int, force: bool = False, reason: str | None = None,
            *, by: str | None = None) -> dict[str, Any]:
    """Make ``version`` the ``champion``; the old champion becomes ``previous``.

    Refuses (``PromotionError`` naming the failed gates) a version whose ``gates_passed`` tag is not
    "true", unless ``force`` with a non-empty ``reason``; a forced promotion records
    ``forced_promotion_reason`` on the version. Every promotion records ``promoted_by``/``promoted_at``
    tags and appends to the registered model's ``champion_history`` (saved last). Promoting the current
    champion changes nothing, unless the history does not end with it: then a promotion was killed after
    moving ``champion`` and this one finishes it (``previous`` <- the history's last champion). Returns ``{model, champion, previous, forced, reason, by, at, changed}``.
    """
    from mlflow.exceptions import MlflowException

    name = settings.registry.model_name
    require_store(settings)
    reason = (reason or "").strip() or None
    by = by or _who()
    with mlflow_client(settings) as client:
        try:
            mv = client.get_model_version(name, str(int(version)))
        except MlflowException:
            raise RegistryError(f"{name!r} has no version {version}") from None
        if (problem := artifacts_problem(client, name, version)) is not None:
            raise RegistryError(refusal(name, version, problem, "not promoting"))
        tags = dict(mv.tags or {})
        gates_ok = tags.get(GATES_PASSED_TAG) == "true"
        if not gates_ok:
            failed = tags.get("failed_gates") or "no gates were evaluated"
            why = f"{name} version {version} failed its gates ({failed})"
            if not force:
                raise PromotionError(f"{why}: refusing to promote it; use --force with --reason to override")
            if reason is None:
                raise PromotionError(f"{why}: a forced promotion needs a non-empty --reason")
        current = version_by_alias(client, name, CHAMPION)
        current_v = int(current.version) if current is not None else None
        at = _now()
        result = {"model": name, "champion": int(version), "forced": bool(force and not gates_ok),
                  "reason": reason, "by": by, "at": at, "changed": current_v != int(version)}
        history = _history(client, name)
        if current_v == int(version):
            if not history or int(history[-1]["version"]) == current_v:
                prev = version_by_alias(client, name, PREVIOUS)
                result["previous"] = int(prev.version) if prev is not None else None
                return result
            # A promotion killed after moving champion (the history is saved last): finish it.
            current_v = int(history[-1]["version"])
            result["changed"] = True
        if current_v is not None and (not history or int(history[-1]["version"]) != current_v):
            history.append({"version": current_v, "at": None, "by": None, "note": "champion found without history"})
        history.append({"version": int(version), "at": at, "by": by, "forced": result["forced"], "reason": reason})
        client.set_registered_model_alias(name, CHAMPION, str(version))
        fault_point("promote.after_champion")
        set_or_clear_alias(client, name, PREVIOUS, current_v)
        challenger = version_by_alias(client, name, CHALLENGER)
        if challenger is not None and int(challenger.version) == int(version):
            client.delete_registered_model_alias(name, CHALLENGER)
        client.set_model_version_tag(name, str(version), "promoted_by", by)
        client.set_model_version_tag(name, str(version), "promoted_at", at)
        if result["forced"]:
            client.set_model_version_tag(name, str(version), "forced_promotion_reason", reason or "")
        elif reason:
            client.set_model_version_tag(name, str(version), "promotion_reason", reason)
        _save_history(client, name, history)
    result["previous"] = current_v
    log.info("%s: champion %s -> %s%s", name, current_v, version, " (forced)" if result["forced"] else "")
    return result


def _rollback_chain(history: list[dict[str, Any]], current_v: int, prev_v: int) -> tuple[int, int, int | None]:
    """``(rolled_back, new champion, new previous)`` from the aliases and the champion history, which it
    makes agree and pops. A rollback killed after moving ``champion`` (``previous``, the tags and the history
    come after it) left a champion that the history holds second to last: this one finishes that rollback."""
    if len(history) >= 2 and int(history[-1]["version"]) != current_v and int(history[-2]["version"]) == current_v:
        rolled = int(history.pop()["version"])
        return rolled, current_v, (int(history[-2]["version"]) if len(history) >= 2 else None)
    # The history is the chain of champions, newest last; make it agree with the aliases, then pop.
    if not history or int(history[-1]["version"]) != current_v:
        history.append({"version": current_v, "at": None, "by": None, "note": "champion found without history"})
    history.pop()
    if not history or int(history[-1]["version"]) != prev_v:
        history.append({"version": prev_v, "at": None, "by": None, "note": "previous found without history"})
    return current_v, prev_v, (int(history[-2]["version"]) if len(history) >= 2 else None)


def rollback(settings: Settings, *, by: str | None = None) -> dict[str, Any]:
    """Undo the last promotion: ``champion`` <- ``previous``, and ``previous`` <- the champion before that
    in the history (or removed when there is none). Raises ``RegistryError`` when there is no champion or
    no ``previous`` to roll back to. A rollback killed midway is finished by the next one (the history is
    saved last). Returns ``{model, champion, previous, rolled_back, by, at}``."""
    name = settings.registry.model_name
    require_store(settings)
    by = by or _who()
    with mlflow_client(settings) as client:
        current = version_by_alias(client, name, CHAMPION)
        if current is None:
            raise RegistryError(f"{name!r} has no champion: nothing to roll back")
        prev = version_by_alias(client, name, PREVIOUS)
        if prev is None:
            raise RegistryError(f"{name!r} has no previous champion (alias {PREVIOUS!r}): nothing to roll back to")
        history = _history(client, name)
        current_v, prev_v, before = _rollback_chain(history, int(current.version), int(prev.version))
        if (problem := artifacts_problem(client, name, prev_v)) is not None:
            raise RegistryError(refusal(name, prev_v, problem, "not rolling back onto it"))
        at = _now()
        client.set_registered_model_alias(name, CHAMPION, str(prev_v))
        fault_point("rollback.after_champion")
        set_or_clear_alias(client, name, PREVIOUS, before)
        client.set_model_version_tag(name, str(current_v), "rolled_back_at", at)
        client.set_model_version_tag(name, str(current_v), "rolled_back_by", by)
        _save_history(client, name, history)
    log.info("%s: rolled back champion %d -> %d", name, current_v, prev_v)
    return {"model": name, "champion": prev_v, "previous": before, "rolled_back": current_v, "by": by, "at": at}


def maybe_auto_promote(settings: Settings, registered: RegisteredVersion) -> dict[str, Any] | None:
    """Apply ``registry.auto_promote`` to a just-registered version whose gates passed: "always" promotes
    it, "if_no_champion" only when there is no champion yet, "never" does nothing. Returns
    :func:`promote`'s result, or None when nothing was promoted."""
    mode = settings.registry.auto_promote
    if not registered.gates_passed or mode == "never":
        return None
    if mode == "if_no_champion" and champion(settings) is not None:
        return None
    return promote(settings, registered.version, reason=f"auto_promote={mode}", by=f"adsrec (auto_promote={mode})")


# ----- display -----------------------------------------------------------------------------------------------
def versions_table(versions: Sequence[VersionInfo]) -> str:
    """A fixed-width table: version, aliases, gates, AUC per task, data window, created (UTC), artifacts
    ("ok", or "MISSING" when the logged model is not all there: promote and rollback refuse it)."""
    tasks: list[str] = []
    for v in versions:
        tasks += [t for t in v.tasks if t not in tasks]
    head = ["version", "aliases", "gates"] + [f"{t} AUC" for t in tasks] + ["window", "created (UTC)", "artifacts"]
    rows = [head]
    for v in versions:
        gates = "passed" if v.gates_passed else "FAILED: " + (",".join(v.failed_gates) or "none evaluated")
        aucs = [f"{v.metrics[f'{t}/auc']:.4f}" if f"{t}/auc" in v.metrics else "-" for t in tasks]
        window = f"{v.data_window[0]}..{v.data_window[1]}" if v.data_window else "-"
        rows.append([str(v.version), ",".join(v.aliases) or "-", gates, *aucs, window,
                     v.created.strftime("%Y-%m-%d %H:%M"), "MISSING" if v.artifacts_problem else "ok"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

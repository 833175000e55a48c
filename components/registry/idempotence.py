"""Idempotent registration (issue 14; docs/reliability/registration.md): the same training result is
registered once, however often the register step runs, is retried or is killed half-way.

**What "the same training result" is.** :func:`registration_fingerprint` hashes what decides both the
model a version serves and what its tags say about it:

- the files of the saved ranker that define the model the packaged model serves (``model.pt``,
  ``encoders.json``, ``spec.json``, ``ranker_config.json``, ``train_config.json``:
  components/registry/packaged.py), by name and content: the weights already pin the training data, the
  seeds and the trainer, and a re-run after a kill is byte-identical. ``history.json`` and
  ``evaluation.json`` are left out: they follow from the weights and the training set (both hashed) but
  also hold the run's timings and MLflow run id, which differ between two trainings of the same model;
- the data window and the feature-view versions (the version's tags and description say them);
- the training set's content (its identity; a model registered without one hashes as "none");
- the gate verdict per gate (pass/fail, not the floating values): the version's ``gates_passed`` and
  ``challenger`` alias depend on it, and the same model, gate config and champion give the same verdict;
- the code revision (``git rev-parse HEAD``), since the packaged model carries the project's code.

Not in it: the run id (a re-run after a kill opens a new run), the scoring sample and the plots (logged
with the version, they do not define it), the home's path (a copied home is the same registry: paths
under the home in the hashed JSON files, ``checkpoint_dir``, are hashed relative to it).

The hash is tagged ``adsrec.fingerprint`` on the run and on the version. MLflow writes a version and its
tags in one transaction, so a version without the tag never exists. :func:`registered_with` finds the
version of a fingerprint before anything is created, and :func:`adopt_version` finishes what a killed or
failed registration of it may have left undone (its description, its run's ``registered`` tag, the
``challenger`` alias rule) instead of registering it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.registry.client import CHALLENGER, version_by_alias
from components.registry.training_run import NOT_REGISTERED_TAG, REGISTERED_TAG

if TYPE_CHECKING:
    import datetime as dt

    import mlflow

log = logging.getLogger(__name__)

FINGERPRINT_TAG = "adsrec.fingerprint"
DUPLICATE_TAG = "duplicate_of"  # on a run closed because its model was registered before: "<name>/<version>"


def _update_file(h: Any, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def _json_bytes(model_dir: Path, name: str) -> bytes:
    """A JSON file of the saved ranker with every path under its home written relative to it: the daily
    saves ``checkpoint_dir`` (train_config.json) as an absolute path, which differs between a home and its
    copy although the model is the same. The home is the folder above ``models/`` (the daily's layout), else
    the model folder itself. A file that is not JSON hashes as its bytes."""
    raw = (model_dir / name).read_bytes()
    try:
        content = json.loads(raw)
    except ValueError:
        return raw
    roots = {f.parents[1] if f.parent.name == "models" else f for f in (model_dir.absolute(), model_dir.resolve())}
    prefixes = [f"{r}/" for r in sorted(roots, key=lambda r: -len(str(r)))]

    def relative(value: Any) -> Any:
        if isinstance(value, str):
            return next((f"<home>/{value[len(p):]}" for p in prefixes if value.startswith(p)), value)
        if isinstance(value, list):
            return [relative(v) for v in value]
        if isinstance(value, dict):
            return {k: relative(v) for k, v in value.items()}
        return value

    return json.dumps(relative(content), sort_keys=True).encode()


def registration_fingerprint(model_dir: Path, start: "dt.date", end: "dt.date",
                             feature_views: Mapping[str, Any] | None, training_set: str | Path | None,
                             gate_rows: Iterable[Mapping[str, Any]], revision: str) -> str:
    """sha256 of what makes two registrations the same (the module docstring says what and why)."""
    from components.registry.packaged import REQUIRED_FILES

    h = hashlib.sha256()
    for name in sorted((*REQUIRED_FILES, "train_config.json")):
        if (model_dir / name).is_file():
            h.update(f"{name}\0".encode())
            if name.endswith(".json"):
                h.update(_json_bytes(model_dir, name))
            else:
                _update_file(h, model_dir / name)
    h.update(b"training_set\0")
    if training_set is not None:
        _update_file(h, Path(training_set))
    h.update(json.dumps({"window": [start.isoformat(), end.isoformat()],
                         "feature_views": feature_views or {}, "code_revision": revision,
                         "gates": sorted((str(g["name"]), bool(g["passed"])) for g in gate_rows)},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


def registered_with(client: "mlflow.MlflowClient", model_name: str, fingerprint: str) -> Any | None:
    """The oldest version of ``model_name`` tagged with ``fingerprint`` (MLflow's ``ModelVersion``), or None."""
    found = [mv for mv in client.search_model_versions(f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}'")
             if mv.name == model_name]
    return min(found, key=lambda mv: int(mv.version)) if found else None


def challenger_rule(client: "mlflow.MlflowClient", name: str, version: int, passed: bool) -> tuple[str, ...]:
    """Re-apply the registration's alias rule to ``version``: when its gates passed it becomes
    ``challenger`` unless a newer version already is (a later registration moved it on). Returns the
    aliases it holds by that rule: ``("challenger",)`` or ``()``. A version promoted since (tag
    ``promoted_at``: a crash after the auto-promotion, before the step's manifest) is past being a
    challenger: the promotion took the alias away, and the re-run leaves it so."""
    if not passed or "promoted_at" in client.get_model_version(name, str(version)).tags:
        return ()
    current = version_by_alias(client, name, CHALLENGER)
    if current is not None and int(current.version) > version:
        return ()
    if current is None or int(current.version) != version:
        client.set_registered_model_alias(name, CHALLENGER, str(version))
    return (CHALLENGER,)


def adopt_version(client: "mlflow.MlflowClient", mv: Any, description: str, passed: bool,
                  current_run_id: str | None) -> tuple[tuple[str, ...], str]:
    """Finish the registration of the existing version ``mv`` instead of creating another: its
    description, ``registered=true`` on its run, the challenger rule (:func:`challenger_rule`). A
    different ``current_run_id`` (the run this attempt's training opened) is ended ``FINISHED`` with
    ``registered=false``, ``not_registered`` and ``duplicate_of`` saying which version holds the model.
    Returns (the aliases set by the rule, the logged model's URI)."""
    name, version = mv.name, int(mv.version)
    if (mv.description or "") != description:
        client.update_model_version(name, str(version), description=description)
    if mv.run_id:
        client.set_tag(mv.run_id, REGISTERED_TAG, "true")
        if mv.run_id != current_run_id and client.get_run(mv.run_id).info.status == "KILLED":
            # Killed after it created the version (closed as an orphan since): its training and its version
            # are whole, only the step's bookkeeping was lost. The version's run reads FINISHED, as uninterrupted.
            client.set_tag(mv.run_id, "adsrec.finished_by", "adoption of its version after a crash")
            client.set_terminated(mv.run_id, "FINISHED")
    aliases = challenger_rule(client, name, version, passed)
    if current_run_id and current_run_id != mv.run_id:
        client.set_tag(current_run_id, NOT_REGISTERED_TAG,
                       f"the same model was registered before as {name} version {version} (run {mv.run_id})")
        client.set_tag(current_run_id, DUPLICATE_TAG, f"{name}/{version}")
        client.set_tag(current_run_id, REGISTERED_TAG, "false")
        client.set_terminated(current_run_id, "FINISHED")
    model_id = getattr(mv, "model_id", None)
    log.info("%s version %d already holds this model (fingerprint tag %s): adopted, not registered again",
             name, version, FINGERPRINT_TAG)
    return aliases, (f"models:/{model_id}" if model_id else str(mv.source))

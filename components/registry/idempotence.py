"""Idempotent registration (issue 14; docs/reliability/registration.md): the same training result is
registered once, however often the register step runs, is retried or is killed half-way.

**What "the same training result" is.** :func:`registration_fingerprint` hashes what decides both the
model a version serves and what its tags say about it:

- the files of the saved ranker that the packaged model contains (``model.pt``, ``encoders.json``,
  ``spec.json``, the configs: components/registry/packaged.py), by name and content: the weights
  already pin the training data, the seeds and the trainer, and a re-run after a kill is byte-identical;
- the data window and the feature-view versions (the version's tags and description say them);
- the training set's content (its identity; a model registered without one hashes as "none");
- the gate verdict per gate (pass/fail, not the floating values): the version's ``gates_passed`` and
  ``challenger`` alias depend on it, and the same model, gate config and champion give the same verdict;
- the code revision (``git rev-parse HEAD``), since the packaged model carries the project's code.

Not in it: the run id (a re-run after a kill opens a new run), the scoring sample and the plots (logged
with the version, they do not define it), the home's path (a copied home is the same registry).

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


def registration_fingerprint(model_dir: Path, start: "dt.date", end: "dt.date",
                             feature_views: Mapping[str, Any] | None, training_set: str | Path | None,
                             gate_rows: Iterable[Mapping[str, Any]], revision: str) -> str:
    """sha256 of what makes two registrations the same (the module docstring says what and why)."""
    from components.registry.packaged import OPTIONAL_FILES, REQUIRED_FILES

    h = hashlib.sha256()
    for name in sorted(REQUIRED_FILES + OPTIONAL_FILES):
        if (model_dir / name).is_file():
            h.update(f"{name}\0".encode())
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
    aliases it holds by that rule: ``("challenger",)`` or ``()``."""
    if not passed:
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

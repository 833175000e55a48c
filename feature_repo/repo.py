"""What ``feast apply`` registers: the adsrec views of the state folder in ``ADSREC_HOME``.

``ADSREC_HOME`` defaults to ``<repo root>/.adsrec`` (the demo's default). A relative ``ADSREC_HOME`` is
taken relative to the repo root, not to this folder, so ``cd feature_repo`` does not change its meaning.
The fields of each view come from the features built there (adsrec_views.py), so run the demo first.
"""

from __future__ import annotations

import os
from pathlib import Path

from adsrec_views import feast_objects, manifest_ttl_days, view_specs

_REPO_ROOT = Path(__file__).resolve().parent.parent
_home = Path(os.environ.get("ADSREC_HOME") or ".adsrec").expanduser()
_HOME = (_home if _home.is_absolute() else _REPO_ROOT / _home).resolve()

# Every view built there, the representation views included; module-level names are what
# `feast apply` collects.
globals().update(feast_objects(view_specs(_HOME, manifest_ttl_days(_HOME), representations=True)))

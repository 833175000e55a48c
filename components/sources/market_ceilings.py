"""The simulator's partial oracles: the true click and conversion probabilities of an impression with part
of the user's taste taken away, written to the ground truth beside the full oracle ``p_<task>``.

The full oracle knows every term of the logit (docs/simulator.md). A model that learns from the logs can
at best recover what the logs reveal, so three ceilings stand between "nothing about the user's taste"
and the oracle (docs/evaluation.md, "Achievable ceilings"):

- ``no_taste``: the affinity term zeroed (no per-user taste at all); the user's click bias, the ad's
  quality, the recency boost, position and fatigue stay.
- ``segment_taste``: the affinity replaced by the user's segment's (gender x age band) mean taste, the
  part of the sub-category taste shared by the segment; the other taste parts have mean zero there.
- ``taxonomy_taste``: the user's own taste over the ad's sub-category and article type, without the
  hidden attributes (colour, usage) that only the title and photo reveal.

Each ceiling's probabilities are ``p_<task>_<ceiling>`` (conversion = click x conversion given click, as
for the oracle). Computing them draws no random number, so the logged data stay byte-identical.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from components.sources.market_serving import TYPE_SHARE, affinity_terms, affinity_weights, sigmoid

if TYPE_CHECKING:
    from components.sources.market import Marketplace

CEILINGS = {
    "no_taste": "no per-user taste",
    "segment_taste": "the segment's mean taste",
    "taxonomy_taste": "per-user taste over sub-category and article type, without colour / usage",
}


def ceiling_columns(tasks: tuple[str, ...]) -> list[str]:
    """The ground-truth columns of the partial oracles, ``p_<task>_<ceiling>``."""
    return [f"p_{task}_{ceiling}" for ceiling in CEILINGS for task in tasks]


def ceiling_probabilities(m: "Marketplace", user: np.ndarray, ad: np.ndarray, rest_logit: np.ndarray
                          ) -> dict[str, np.ndarray]:
    """``p_click_<ceiling>`` and ``p_conversion_<ceiling>`` of each impression. ``rest_logit``: the click
    logit without the affinity (bias, quality, recency, position, fatigue)."""
    cfg = m.cfg
    tax, _ = affinity_weights(m)
    terms = affinity_terms(m, user, ad)
    sub = m.cat.codes["sub_category"][m.ad_prod[ad]]
    segment = m.user_segment[user]
    zero = np.zeros(user.size)
    out: dict[str, np.ndarray] = {}
    for ceiling in CEILINGS:
        taste = []
        for task, t in enumerate(terms):
            if ceiling == "no_taste":
                taste.append(zero)
            elif ceiling == "segment_taste":
                seg_sub = m.segment_sub_taste[task][segment, sub]
                taste.append(cfg.preference_scale * tax * np.sqrt(1 - TYPE_SHARE) * seg_sub)
            else:
                taste.append(cfg.preference_scale * tax * t["taxonomy"])
        p_click = sigmoid(rest_logit + taste[0])
        out[f"p_click_{ceiling}"] = p_click
        out[f"p_conversion_{ceiling}"] = p_click * sigmoid(cfg.conversion_base_logit + taste[1])
    return out


__all__ = ["CEILINGS", "ceiling_columns", "ceiling_probabilities"]

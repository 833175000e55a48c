"""Smoke test of experiment 5 (components/experiments/representations.py) at its small size.

Shares the small pipeline marketplace's home with tests/experiments/test_experiment_temporal.py within one pytest
session (the pipeline's day-steps skip what is already built)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.experiments.conftest import run_small


def test_representations_small_run_has_every_variant_and_their_features(pipeline_settings, tmp_path: Path) -> None:
    from components.experiments.representations import REFERENCE, VARIANTS, _key

    result, lines = run_small("representations", pipeline_settings, tmp_path / "plots")
    assert len(result.rows) == len(VARIANTS)
    assert result.verdict in ("reproduced", "partly", "not reproduced")
    assert result.plots and all(p.is_file() for p in result.plots)
    fields = result.data["fields"]
    # dropping columns before fitting really removes the features
    id_only = fields[_key("ad id only", "plain")]
    assert "ad_id" in id_only["categorical"]
    assert not any(c.startswith(("ad_semantic_id__", "ad_profile__")) for c in id_only["categorical"])
    assert not any(c.startswith("see_") for c in id_only["numeric"])
    assert any(c.startswith("ad_semantic_id__") for c in fields[_key("+ semantic IDs", "plain")]["categorical"])
    assert {"see_text", "see_graph", "see_visual"} <= set(fields[_key("+ semantic IDs + SEE", "mnse")]["numeric"])
    assert fields[_key("+ semantic IDs + SEE", "mnse")]["mnse_bases"] == [2, 3, 10]
    assert len(fields[_key("+ semantic IDs + SEE", "plain")]["mnse_bases"]) == 1
    per = result.data["per_seed"]
    overall = [per[_key(n, num)]["click_auc"][0] for n, _p, num in VARIANTS]
    assert all(0.5 < a < 1.0 for a in overall), overall
    assert len(set(np.round(overall, 6))) > 1
    assert result.data["new_ad_rows"] > 0 and all(np.isfinite(per[_key(n, num)]["click_auc_new_ads"][0])
                                                  for n, _p, num in VARIANTS)
    # every check compares a variant with its reference: paired test differences with an interval over users
    for key, ref in REFERENCE.items():
        gain = result.data["gains"][key]
        assert abs(gain["all"]["mean"] - (per[key]["click_auc"][0] - per[ref]["click_auc"][0])) < 1e-9
        assert abs(gain["new"]["mean"] - (per[key]["click_auc_new_ads"][0] - per[ref]["click_auc_new_ads"][0])) < 1e-9

"""Smoke test of experiment 1 (components/experiments/collapse.py) at its small size: every variant is
trained and tabulated, parameter budgets match, and the collapse measures behave as they must."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tests.experiments.conftest import run_small


def test_collapse_small_run_has_every_variant_at_matched_embedding_budgets(settings, tmp_path: Path,
                                                                          torch_one_thread: None) -> None:
    from components.experiments.collapse import FAMILIES, SCALES, variants

    result, lines = run_small("collapse", settings, tmp_path / "plots")
    d = result.data["base_dim"]
    labels = [v["label"] for v in variants(d=d)]
    assert [r["model"] for r in result.rows] == labels and len(labels) == len(FAMILIES) * len(SCALES)
    assert len(lines) == len(labels)
    assert result.verdict in ("reproduced", "partly", "not reproduced")
    assert all(p.is_file() and p.stat().st_size > 10_000 for p in result.plots)
    runs = {label: r[0] for label, r in result.data["runs"].items()}
    # width k x d of one table and k tables of width d hold the same embedding parameters
    for family_single, family_multi in (("DNN", "ME-DNN"), ("DCNv2", "ME-DCNv2")):
        for k in SCALES:
            single = next(v["label"] for v in variants(d=d) if v["family"] == family_single and v["scale"] == k)
            multi = next(v["label"] for v in variants(d=d) if v["family"] == family_multi and v["scale"] == k)
            assert runs[single]["embedding_params"] == runs[multi]["embedding_params"]
    for m in runs.values():
        assert 0.5 < m["auc_click"] < 1.0 and 0.0 < m["ia_ratio"] <= 1.0 and 0.0 < m["ia_whole"] <= 1.0
    assert len({round(m["auc_click"], 6) for m in runs.values()}) > len(SCALES)  # the variants differ
    # low-cardinality fields cap IA at their row count, so per-table IA/d of one table falls with its width
    dnn = [runs[v["label"]]["ia_ratio"] for v in variants(d=d) if v["family"] == "DNN"]
    assert dnn[-1] < dnn[0], dnn
    # the verdict's comparisons are paired test differences with an interval over users
    gains = result.data["gains"]
    by = {(v["family"], v["scale"]): v["label"] for v in variants(d=d)}
    for single, multi in (("DNN", "ME-DNN"), ("DCNv2", "ME-DCNv2")):
        g = gains[f"{multi} {SCALES[-1]} vs {single} {SCALES[-1]}"]
        want = runs[by[multi, SCALES[-1]]]["auc_click"] - runs[by[single, SCALES[-1]]]["auc_click"]
        assert math.isclose(g["mean"], want, abs_tol=1e-9) and g["interval"]["low"] < g["interval"]["high"]
    narrowest = [r for r in result.rows if r["model"].startswith(("DNN 1x", "ME-DNN 1 "))]
    assert len(narrowest) == 2 and all(r["Δ AUC click vs 1x / 1 table"] == "-" for r in narrowest)
    assert "day 3 validates" in result.notes[0] and "day 4 tests, untouched" in result.notes[0]


def test_concatenated_ia_ratio_sees_the_whole_embedding() -> None:
    """Two identical tables side by side add no information: IA/D halves against one table."""
    import torch

    from components.experiments.collapse import concatenated_ia_ratio

    rng = np.random.default_rng(0)
    table = torch.tensor(rng.normal(size=(300, 8)), dtype=torch.float32)

    class Fake:
        def __init__(self, tables):
            self.tables = tables

        def embedding_tables(self):
            return {f"t{i}": t for i, t in enumerate(self.tables)}

        def field_slices(self):
            return {f"t{i}": {"a": (0, 300)} for i in range(len(self.tables))}

    counts = {"a": np.ones(300)}
    one, _ = concatenated_ia_ratio(Fake([table]), counts, min_rows=100)
    two, per_field = concatenated_ia_ratio(Fake([table, table]), counts, min_rows=100)
    assert 0.5 < one <= 1.0 and math.isclose(two, one / 2, rel_tol=1e-6) and set(per_field) == {"a"}
    assert math.isnan(concatenated_ia_ratio(Fake([table]), counts, min_rows=301)[0])

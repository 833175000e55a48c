"""FeatureSpec and RankerConfig: JSON round trips and errors that name the problem."""

from __future__ import annotations

import json

import pytest

from models.config import RankerConfig
from models.spec import CategoricalField, FeatureSpec, NumericField, SequenceField


def _spec() -> FeatureSpec:
    return FeatureSpec(
        categorical=(CategoricalField("user_id", 100, "user"), CategoricalField("ad_id", 50, "ad")),
        numeric=(NumericField("ad_ctr_7d", 20, "ad"),),
        sequence=SequenceField("ad_id", None, length=10, n_gap_buckets=8),
        tasks=("click", "conversion", "like"),
    )


def test_spec_json_round_trip() -> None:
    spec = _spec()
    again = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.categorical_index("ad_id") == 1
    assert again.sequence is not None and again.sequence.length == 10


def test_spec_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="group 'item'"):
        CategoricalField("x", 3, "item")
    with pytest.raises(ValueError, match="duplicate field names"):
        FeatureSpec((CategoricalField("a", 3), CategoricalField("a", 4)))
    with pytest.raises(ValueError, match="item_field 'ad_id' is not a categorical field"):
        FeatureSpec((CategoricalField("user_id", 3),), sequence=SequenceField("ad_id", None, 5, 4))
    with pytest.raises(ValueError, match="n_gap_buckets must be >= 2"):
        SequenceField("ad_id", None, 5, 1)
    with pytest.raises(KeyError, match="no categorical field 'nope'"):
        _spec().categorical_index("nope")


def test_config_json_round_trip_and_lists_become_tuples() -> None:
    cfg = RankerConfig(arch="ame", expert=["dcnv2", "gwpfm"], ame_widths=[8, 16], tower_hidden=[32])
    assert cfg.expert == ("dcnv2", "gwpfm") and cfg.ame_widths == (8, 16)
    again = RankerConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert RankerConfig.from_dict(RankerConfig().to_dict()).arch == "stem"


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="arch = 'dlrm' is not one of"):
        RankerConfig(arch="dlrm")
    with pytest.raises(ValueError, match="expert = 'moe'"):
        RankerConfig(expert=("mlp", "moe"))
    with pytest.raises(ValueError, match="mnse_bases must be integers >= 2"):
        RankerConfig(mnse_bases=(1, 10))
    with pytest.raises(ValueError, match="unknown RankerConfig keys: \\['depth'\\]"):
        RankerConfig.from_dict({"depth": 3})
    with pytest.raises(ValueError, match="mmoe' needs num_shared_experts >= 1"):
        RankerConfig(arch="mmoe", num_shared_experts=0)

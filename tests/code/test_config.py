"""Configuration: defaults, YAML, environment precedence, clear errors, no writes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from components.config import PROJECT_ROOT, load_settings


def test_defaults_and_layout(tmp_path: Path) -> None:
    s = load_settings(environ={}, overrides={"home": str(tmp_path / "h")}).resolved()
    assert s.home == (tmp_path / "h").resolve()
    for sub in (s.raw_dir, s.offline_dir, s.quarantine_dir, s.features_dir, s.feast_dir, s.mlflow_dir,
                s.prefect_home, s.runs_dir, s.truth_dir, s.training_dir):
        assert sub.parent == s.home
    assert s.pipeline.source == "simulator"
    assert s.shared_data == (PROJECT_ROOT / "../shared/data").resolve()
    assert not (tmp_path / "h").exists(), "loading settings must not create folders"


def test_yaml_then_env_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("simulator:\n  n_users: 123\n  seed: 1\npipeline:\n  start_date: 2026-01-05\n")
    s = load_settings(cfg, environ={"ADSREC_SIMULATOR__SEED": "9", "ADSREC_HOME": str(tmp_path / "x")})
    assert s.simulator.n_users == 123  # from YAML
    assert s.simulator.seed == 9  # env beats YAML
    assert s.pipeline.start_date == dt.date(2026, 1, 5)
    assert s.home == tmp_path / "x"
    s2 = load_settings(environ={"ADSREC_CONFIG": str(cfg), "ADSREC_SIMULATOR__SLOTS": "[a, b]"})
    assert s2.simulator.n_users == 123 and s2.simulator.slots == ["a", "b"]


def test_bad_values_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"simulator\.photo_share"):
        load_settings(environ={"ADSREC_SIMULATOR__PHOTO_SHARE": "3"})
    with pytest.raises(ValueError, match=r"simulator\.no_such_knob"):
        load_settings(environ={"ADSREC_SIMULATOR__NO_SUCH_KNOB": "1"})
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_settings(bad, environ={})


def test_representation_switches_and_task_settings() -> None:
    from components.config import load_settings

    s = load_settings(environ={"ADSREC_REPRESENTATIONS__SEMANTIC_IDS": "false", "ADSREC_REPRESENTATIONS__SEE": "no"})
    rep = s.representations
    assert rep.semantic_ids == "off" and rep.see is False
    assert rep.text and rep.visual and rep.graph and rep.behaviour_task is None and s.training.ipw_task is None
    on = load_settings(environ={}, overrides={"representations": {"semantic_ids": True}})
    assert on.representations.semantic_ids == "rqkmeans"
    with pytest.raises(ValueError, match="representations.semantic_ids"):
        load_settings(environ={}, overrides={"representations": {"semantic_ids": "kmeans"}})

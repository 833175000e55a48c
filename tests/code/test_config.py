"""Configuration: defaults, YAML, environment precedence, clear errors, no writes; the typed ranker and
trainer sub-models mirror their dataclasses; what ``adsrec config`` prints."""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from components.config import (
    PROJECT_ROOT,
    ConfigError,
    RankerSettings,
    Settings,
    TrainerSettings,
    describe_settings,
    load_settings,
    render_settings,
)
from models.config import ARCHS, EXPERTS, RankerConfig


def train_config_class() -> type:
    """The trainer's TrainConfig dataclass."""
    from components.training.train_config import TrainConfig

    return TrainConfig


def test_defaults_and_layout(tmp_path: Path) -> None:
    s = load_settings(environ={}, overrides={"home": str(tmp_path / "h")}).resolved()
    assert s.home == (tmp_path / "h").resolve()
    for sub in (s.raw_dir, s.offline_dir, s.quarantine_dir, s.features_dir, s.feast_dir, s.mlflow_dir,
                s.prefect_home, s.runs_dir, s.truth_dir, s.training_dir):
        assert sub.parent == s.home
    assert s.pipeline.source == "simulator"
    assert s.shared_data == (PROJECT_ROOT / "../shared/data").resolve()
    assert (PROJECT_ROOT / "components" / "config" / "__init__.py").is_file()
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
    with pytest.raises(ValueError, match=r"simulator\.no_such_knob: unknown key"):
        load_settings(environ={"ADSREC_SIMULATOR__NO_SUCH_KNOB": "1"})
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_settings(bad, environ={})


def test_home_umask_is_quoted_octal_from_yaml_or_env(tmp_path: Path) -> None:
    assert load_settings(environ={}).umask == 0o027  # group-readable by default (docs/state.md)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("home_umask: '0o077'\n")
    assert load_settings(cfg, environ={}).umask == 0o077
    assert load_settings(cfg, environ={"ADSREC_HOME_UMASK": "022"}).home_umask == "022"  # env beats YAML
    cfg.write_text("home_umask: 027\n")  # YAML 1.1 reads this as the number 23: refused, not guessed
    with pytest.raises(ValueError, match="home_umask.*quoted"):
        load_settings(cfg, environ={})
    with pytest.raises(ValueError, match="home_umask '0o8' is not an octal umask"):
        load_settings(environ={"ADSREC_HOME_UMASK": "0o8"})


def test_representation_switches_and_task_settings() -> None:
    s = load_settings(environ={"ADSREC_REPRESENTATIONS__SEMANTIC_IDS": "false", "ADSREC_REPRESENTATIONS__SEE": "no"})
    rep = s.representations
    assert rep.semantic_ids == "off" and rep.see is False
    assert rep.text and rep.visual and rep.graph and rep.behaviour_task is None and s.training.ipw_task is None
    on = load_settings(environ={}, overrides={"representations": {"semantic_ids": True}})
    assert on.representations.semantic_ids == "rqkmeans"
    with pytest.raises(ValueError, match="representations.semantic_ids"):
        load_settings(environ={}, overrides={"representations": {"semantic_ids": "kmeans"}})


# --- the typed ranker and trainer ---------------------------------------------------------------------
def test_ranker_settings_mirror_ranker_config() -> None:
    """RankerSettings has exactly RankerConfig's fields and defaults, so the two cannot drift apart."""
    assert set(RankerSettings.model_fields) == {f.name for f in dataclasses.fields(RankerConfig)}
    assert RankerSettings().to_ranker_config() == RankerConfig()
    full = RankerSettings(arch="mmoe", expert=["mlp", "gwpfm"], sequence_encoder=None, num_shared_experts=3,
                          cascade={"conversion": "click"}, mnse_bases=[2, 10], me_combine="gate")
    assert full.to_ranker_config() == RankerConfig.from_dict(full.model_dump(mode="json"))
    assert full.to_ranker_config().expert == ("mlp", "gwpfm") and full.to_ranker_config().arch == "mmoe"
    assert type(full.to_ranker_config().arch) is str  # plain strings reach the model, not enum members


def test_trainer_settings_mirror_train_config() -> None:
    """TrainerSettings has exactly TrainConfig's fields and defaults, and builds it."""
    train_config = train_config_class()
    assert set(TrainerSettings.model_fields) == {f.name for f in dataclasses.fields(train_config)}
    assert TrainerSettings().to_dict() == train_config().to_dict()
    custom = TrainerSettings(epochs=3, alphas={"click": 0.5}, device="cpu", stream_data=True)
    assert train_config.from_dict(custom.to_dict()).to_dict() == custom.to_dict()


def test_training_defaults_as_before() -> None:
    """The daily defaults are the ones the untyped mappings had; a ranker or train given in the config
    starts from the dataclass defaults, as the mappings did."""
    train_config = train_config_class()
    s = load_settings(environ={})
    assert s.training.ranker.to_ranker_config() == RankerConfig.from_dict({"arch": "stem", "mnse_combine": "sum"})
    expected = train_config.from_dict({"epochs": 2, "batch_size": 2048, "patience": 1}).to_dict()
    assert s.training.train.to_dict() == expected
    given = load_settings(environ={"ADSREC_TRAINING__RANKER__ARCH": "mmoe"},
                          overrides={"training": {"train": {"epochs": 1}}})
    assert given.training.ranker.to_ranker_config() == RankerConfig(arch="mmoe")
    assert given.training.train.to_dict() == train_config(epochs=1).to_dict()


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("training: {ranker: {archh: stem}}", r"training\.ranker\.archh: unknown key \(did you mean arch\?\)"),
    ("training: {ranker: {arch: stemm}}", r"training\.ranker\.arch: .*'stem'.*'multi_embedding'"),
    ("training: {ranker: {expert: [mlp, moe]}}", r"training\.ranker\.expert: .*'moe'.*" + ", ".join(EXPERTS)),
    ("training: {ranker: {sequence_encoder: lstm}}", r"training\.ranker\.sequence_encoder: .*'tim'"),
    ("training: {ranker: {dropout: 1.5}}", r"training\.ranker: RankerConfig\.dropout must be in \[0, 1\)"),
    ("training: {train: {epoch: 3}}", r"training\.train\.epoch: unknown key \(did you mean epochs\?\)"),
    ("training: {train: {lr: 0}}", r"training\.train\.lr: "),
    ("training: {train: {alphas: {click: 2}}}", r"training\.train\.alphas\.click: "),
])
def test_bad_training_yaml_fails_at_load(tmp_path: Path, yaml_text: str, expected: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError, match=r"^invalid configuration: " + expected) as caught:
        load_settings(cfg, environ={})
    assert "\n" not in str(caught.value), "the CLI prints the error as one line"
    assert isinstance(caught.value, ValueError), "the CLI catches ValueError"


def test_enum_choices_are_the_models_tuples() -> None:
    assert [a.value for a in RankerSettings.model_fields["arch"].annotation] == list(ARCHS)
    with pytest.raises(ConfigError, match="training.ranker.arch"):
        load_settings(environ={"ADSREC_TRAINING__RANKER__ARCH": "transformer"})


def test_config_files_in_the_repository_load() -> None:
    examples = sorted((PROJECT_ROOT / "docs" / "examples").glob("*.yaml"))
    assert examples, "docs/examples has YAML configs"
    for path in examples:
        s = load_settings(path, environ={})
        assert s.pipeline.source == "files" and Path(s.files.impressions.path).is_absolute(), path


# --- adsrec config ---------------------------------------------------------------------------------------
def section_classes(model: type[BaseModel]) -> list[type[BaseModel]]:
    """``model`` and every section class under it (also those unset by default, such as FileTableConfig)."""
    found = [model]
    for field in model.model_fields.values():
        for kind in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(kind, type) and issubclass(kind, BaseModel) and kind not in found:
                found += [k for k in section_classes(kind) if k not in found]
    return found


def test_every_field_has_a_description() -> None:
    missing = [f"{cls.__name__}.{name}" for cls in section_classes(Settings)
               for name, field in cls.model_fields.items() if not (field.description or "").strip()]
    assert missing == []


def test_describe_settings_rows(tmp_path: Path) -> None:
    s = load_settings(environ={}, overrides={"home": str(tmp_path / "h")}).resolved()
    rows = {row.key: row for row in describe_settings(s)}
    assert rows["training.ranker.arch"].value == "stem" and rows["training.ranker.arch"].kind == "value"
    assert rows["training.ranker"].kind == "section" and "stem" in rows["training.ranker"].description
    assert rows["mlflow_tracking_uri"].value == f"sqlite:///{s.home / 'mlflow' / 'mlflow.db'}"
    assert rows["mlflow_artifact_location"].value == str(s.home / "mlflow" / "artifacts")
    assert rows["data_docs_index"].value == str(s.home / "gx/uncommitted/data_docs/local_site/index.html")
    assert rows["feast_yaml"].value == str(s.home / "feast" / "feature_store.yaml")
    assert rows["offline_dir"].kind == "derived" and rows["offline_dir"].description
    assert all(row.description for row in rows.values())


def test_render_settings_prints_values_with_descriptions_and_loads_back(tmp_path: Path) -> None:
    s = load_settings(environ={}, overrides={"home": str(tmp_path / "h"),
                                             "training": {"ranker": {"expert": ["mlp", "dcnv2"]}}}).resolved()
    text = render_settings(s)
    lines = text.splitlines()
    assert "training:  # the ranker the daily run trains" in lines
    assert "    expert: [mlp, dcnv2]  # expert kind, or a list of kinds assigned round-robin to the experts" in lines
    assert "    epochs: 2  # passes over the training set (early stopping may end sooner)" in lines
    assert any(line.startswith(f"#   mlflow_tracking_uri: sqlite:///{s.home}/mlflow/mlflow.db  # ")
               for line in lines)
    assert any(line.startswith("#   data_docs_index: ") for line in lines)
    saved = tmp_path / "printed.yaml"
    saved.write_text(text)
    assert load_settings(saved, environ={}) == s  # what adsrec config prints is a config file


def test_render_settings_of_an_example(tmp_path: Path) -> None:
    s = load_settings(PROJECT_ROOT / "docs" / "examples" / "taobao.yaml", environ={},
                      overrides={"files": {"ads": {"query": "SELECT item_id\nFROM src"}}}).resolved()
    text = render_settings(s)
    assert "\nfiles:  # " in text and "\n  negatives:  # " in text  # docs/your-own-logs.md's sed range
    assert '    query: "SELECT item_id\\nFROM src"  # ' in text  # multi-line text stays on one line
    saved = tmp_path / "printed.yaml"
    saved.write_text(text)
    assert load_settings(saved, environ={}) == s



"""Typed config: defaults, YAML files, dotted overrides and the errors that name the culprit."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from lstmq.config import (
    Config,
    ConfigError,
    ModelConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
)


def test_defaults_load_without_a_file():
    config = load_config()
    assert config == Config()
    assert config.model.hidden == 128 and config.model.layers == 2
    assert config.train.learning_rate == 3e-3 and isinstance(config.train.learning_rate, float)
    assert config.quant.mode == "float" and config.quant.input_clip is None


def test_yaml_file_round_trip(tmp_path):
    config = load_config(overrides=["model.hidden=32", "train.epochs=3", "quant.mode=qat",
                                    "quant.input_clip=2.5", "data.split=official",
                                    "features.trim_db=30"])
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    assert load_config(path) == config


def test_dict_round_trip_of_non_defaults():
    config = load_config(overrides=["model.hidden=auto", "augment.noise_snr_db=20",
                                    "budget.policy=per-layer", "train.select=last"])
    values = config_to_dict(config)
    assert values["model"]["hidden"] == "auto"
    assert config_from_dict(values) == config


@pytest.mark.parametrize("override, section, key, expected", [
    ("train.epochs=7", "train", "epochs", 7),
    ("train.learning_rate=1", "train", "learning_rate", 1.0),  # int -> float is lossless
    ("train.learning_rate=0.5e-3", "train", "learning_rate", 5e-4),
    ("data.path=null", "data", "path", None),
    ("data.path=some/folder", "data", "path", "some/folder"),
    ("data.path=3", "data", "path", "3"),  # a string field keeps the text as typed
    ("quant.init_from=007", "quant", "init_from", "007"),
    ("quant.input_clip=3", "quant", "input_clip", 3.0),
    ("model.hidden=auto", "model", "hidden", "auto"),
    ("model.hidden=48", "model", "hidden", 48),
    ("data.split=official", "data", "split", "official"),
    ("features.cache=false", "features", "cache", False),
    ("features.max_frames=null", "features", "max_frames", None),
])
def test_override_coerces_value(override, section, key, expected):
    value = getattr(getattr(load_config(overrides=[override]), section), key)
    assert value == expected
    assert type(value) is type(expected)  # 1 became 1.0, not an int in a float field


def test_override_accepts_scientific_notation():
    assert load_config(overrides=["train.learning_rate=1e-3"]).train.learning_rate == 1e-3


def test_file_accepts_scientific_notation(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("train:\n  learning_rate: 3e-4\n  weight_decay: 1e-5\n")
    config = load_config(path)
    assert (config.train.learning_rate, config.train.weight_decay) == (3e-4, 1e-5)


def test_later_override_wins_and_file_values_are_kept(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden: 16\n  layers: 1\ntrain:\n  epochs: 5\n")
    config = load_config(path, ["train.epochs=2", "train.epochs=3"])
    assert (config.model.hidden, config.model.layers, config.train.epochs) == (16, 1, 3)


@pytest.mark.parametrize("override, named", [
    ("bogus.x=1", "bogus"),  # unknown section
    ("train.epoch=3", "train.epoch"),  # unknown nested key
    ("train.epochs=three", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),  # float -> int would lose information
    ("train.epochs=true", "train.epochs"),  # bool is not an int here
    ("train.learning_rate=fast", "train.learning_rate"),
    ("model.hidden=big", "model.hidden"),
    ("model.hidden=null", "model.hidden"),
    ("data.split=sideways", "data.split"),
    ("features.cache=1", "features.cache"),
    ("features.compression=cubic", "features.compression"),
    ("data.path=[3]", "data.path"),
    ("train=5", "train"),  # a section given a scalar
])
def test_bad_override_names_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(overrides=[override])


def test_labels_that_yaml_1_1_reads_as_booleans_stay_strings(tmp_path):
    assert load_config(overrides=["data.classes=[yes,no,on,off]"]).data.classes == (
        "yes", "no", "on", "off")
    path = tmp_path / "words.yaml"
    path.write_text("data:\n  classes: [yes, no, up]\nfeatures:\n  cache: false\n")
    config = load_config(path)
    assert config.data.classes == ("yes", "no", "up") and config.features.cache is False


def test_class_names_written_as_integers_are_their_digits():
    assert load_config(overrides=["data.classes=[0, 1, 10]"]).data.classes == ("0", "1", "10")


@pytest.mark.parametrize("override, message", [
    ("model.hidden=abc", "--set model.hidden: expected an integer or 'auto', got 'abc'"),
    ("model=3", "--set model: is a section (a mapping of keys), got 3"),
    ("data.classes=[1.5,2]", "--set data.classes: expected a list of strings or null, got [1.5, 2]"),
    ("train.epoch=3", "--set unknown config key(s): train.epoch"),
])
def test_override_errors_say_what_the_key_takes_and_blame_the_override(override, message):
    with pytest.raises(ConfigError) as error:
        load_config("task_a", [override])  # not blamed on the built-in file
    assert str(error.value) == message


@pytest.mark.parametrize("overrides", [
    ["features.speech_db=30"],  # the float front end
    ["features.frontend=integer", "features.normalize=global", "features.speech_db=30"],
    ["features.frontend=integer", "features.normalize=utterance", "features.speech_db=-5"]])
def test_speech_db_needs_the_integer_front_ends_utterance_statistics(overrides):
    with pytest.raises(ConfigError, match="features.speech_db"):
        load_config(overrides=overrides)


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5"])
def test_preemphasis_outside_0_to_1_is_refused(value):
    with pytest.raises(ConfigError, match=r"features\.preemphasis"):
        load_config(overrides=[f"features.preemphasis={value}"])
    assert load_config(overrides=["features.preemphasis=0.97"]).features.preemphasis == 0.97


@pytest.mark.parametrize("overrides, key", [
    (["features.noise_percentile=10"], "features.noise_percentile"),  # the float front end
    (["features.frontend=integer", "features.noise_percentile=101"], "features.noise_percentile"),
    (["features.frontend=integer", "features.noise_percentile=10", "features.noise_keep_db=0"],
     "features.noise_keep_db"),
    (["features.frontend=integer", "features.noise_percentile=10", "features.noise_keep_db=61"],
     "features.noise_keep_db")])
def test_noise_subtraction_needs_the_integer_front_end(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=overrides)
    assert load_config(overrides=["features.frontend=integer", "features.noise_percentile=10"]
                       ).features.noise_percentile == 10


def test_the_integer_front_end_refuses_pcen():
    with pytest.raises(ConfigError, match=r"features\.compression"):
        load_config(overrides=["features.frontend=integer", "features.compression=pcen"])
    assert load_config(overrides=["features.compression=pcen"]).features.compression == "pcen"


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="train.epochs"):
        parse_override("train.epochs")


def test_override_into_a_scalar_is_not_a_section():
    with pytest.raises(ConfigError, match="train"):
        apply_overrides({"train": 5}, ["train.epochs=3"])


def test_apply_overrides_leaves_input_untouched():
    values = {"train": {"epochs": 1}}
    merged = apply_overrides(values, ["train.epochs=4", "model.layers=1"])
    assert values == {"train": {"epochs": 1}}
    assert merged == {"train": {"epochs": 4}, "model": {"layers": 1}}


@pytest.mark.parametrize("text, named", [
    ("bogus:\n  x: 1\n", "bogus"),
    ("train:\n  epochz: 1\n", "train.epochz"),
    ("train:\n  epochs: many\n", "train.epochs"),
    ("model: 3\n", "model"),
])
def test_bad_file_content_names_file_and_key(tmp_path, text, named):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value)
    assert named in str(error.value)


def test_a_folder_or_a_binary_file_as_config_is_named(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="binary.yaml: not a UTF-8 text file"):
        load_config(binary)


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(path)


def test_invalid_yaml_is_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: {epochs: [1,\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)


@pytest.mark.parametrize("text, where, problem", [
    ("data:\n  classes: [a, b\nmodel:\n  hidden: 8\n", "syntax error at line 3, column 6",
     r"expected ',' or '\]'.*flow sequence from line 2"),  # an unclosed bracket
    ("train:\n  epochs: 3\n   lr: 0.1\n", "syntax error at line 3, column 6",
     "mapping values are not allowed here"),  # indented too far
    ("model:\n  hidden: 8\n\tlayers: 1\n", "syntax error at line 3, column 1",
     r"found character '\\t'"),
    ("train:\n  epochs: 1\n  epochs: 2\n", "error at line 3, column 3", "duplicate key 'epochs'"),
])
def test_yaml_errors_are_one_line_naming_the_file_and_line(tmp_path, text, where, problem):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "\n" not in message and "unicode string" not in message
    assert message.startswith(f"{path}: YAML {where}: ")
    assert re.search(problem, message)


@pytest.mark.parametrize("override", ["data.classes=[a, b", "train.epochs={a: 1", "train={x: [1,"])
def test_malformed_yaml_in_an_override_is_one_line_naming_the_key(override):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    key = override.split("=", 1)[0]
    assert "\n" not in str(error.value) and str(error.value).startswith(f"--set {key}: ")


def test_non_mapping_yaml_is_named(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- train\n- model\n")
    with pytest.raises(ConfigError, match="list.yaml"):
        load_config(path)


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == Config()


def test_about_notes_are_ignored(tmp_path):
    path = tmp_path / "notes.yaml"
    path.write_text("about: |\n  lstmq train --config notes.yaml; takes 1 min\n"
                    "train:\n  epochs: 2\n")
    assert load_config(path) == load_config(overrides=["train.epochs=2"])


def test_about_is_only_free_text_at_top_level(tmp_path):
    path = tmp_path / "nested.yaml"
    path.write_text("train:\n  about: notes\n")
    with pytest.raises(ConfigError, match=r"train\.about"):
        load_config(path)


def test_configs_are_frozen():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.epochs = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model = ModelConfig(hidden=4)  # type: ignore[misc]



BUILTIN = sorted((Path(__file__).resolve().parents[1] / "lstmq" / "configs").glob("*.yaml"))


def test_the_builtin_configs_are_found():
    assert [p.stem for p in BUILTIN] == ["task_a", "task_b_float", "task_b_qat", "task_b_robust",
                                           "task_b_speaker"]


@pytest.mark.parametrize("path", BUILTIN, ids=lambda p: p.name)
def test_every_builtin_config_loads_by_path_and_by_name(path):
    config = load_config(path)
    assert config.model.layers >= 1 and config.train.epochs >= 1
    assert load_config(path.stem) == config
    assert "Run:" in path.read_text() and "Result:" in path.read_text()  # a short header


def test_the_deploy_config_is_task_b_speaker_plus_babble_noisier_and_more_copies_and_the_integer_front_end_with_noise_subtraction_and_speed_votes():
    robust, speaker = load_config("task_b_robust"), load_config("task_b_speaker")
    assert robust.features == dataclasses.replace(
        speaker.features, frontend="integer", noise_percentile=10, noise_keep_db=24.0,
        vote_speeds=(0.9, 1.1))
    assert robust.augment == dataclasses.replace(
        speaker.augment, babble_snr_db=0.0, babble_snr_db_max=20.0, babble_prob=0.5, copies=8,
        noise_snr_db=5.0)
    assert dataclasses.replace(robust, features=speaker.features, augment=speaker.augment) == speaker

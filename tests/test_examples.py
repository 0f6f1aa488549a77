"""The examples run as a user runs them (their ``main``), on their own synthetic data."""

from __future__ import annotations

import json

import pytest

from examples import own_audio_to_integer_model, sensor_sequences

pytestmark = pytest.mark.filterwarnings(
    "ignore:Implicit conversion of an array to a dtype:DeprecationWarning")


def test_own_audio_example_exports_an_integer_model(tmp_path, capsys):
    assert own_audio_to_integer_model.main(["--demo", "--out", str(tmp_path), "--epochs", "4",
                                            "--qat-epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "classes ['go', 'left', 'right', 'stop']" in printed and "float-free" in printed
    assert "within the 36,864-byte budget" in printed
    manifest_names = json.loads((tmp_path / "qat" / "metrics.json").read_text())["classes"]
    assert manifest_names == ["go", "left", "right", "stop"]
    assert (tmp_path / "model.lstmqz").is_file() and (tmp_path / "model.h").is_file()
    assert own_audio_to_integer_model.main(["--data", str(tmp_path / "absent"),
                                            "--out", str(tmp_path / "x")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_sensor_example_runs_qat_conversion_and_the_audit(tmp_path, capsys):
    result = sensor_sequences.run(tmp_path, epochs=2, qat_epochs=1, count=160)
    assert result["classes"] == list(sensor_sequences.ACTIVITIES)
    assert result["agreement"] >= 0.9 and result["bytes"] > 0
    assert "predict_int float-free" in capsys.readouterr().out

"""Smoke tests of the studies (``lstmq reproduce``, leave-one-speaker-out, budget sweep,
tune) on the tiny synthetic WAV folder: each finishes and writes what its report needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import budget_sweep, loso, robustness, tune
from lstmq.folds import leave_one_speaker_out, nested_speaker_folds
from lstmq.study import reproduce

pytestmark = pytest.mark.filterwarnings(
    "ignore:Implicit conversion of an array to a dtype:DeprecationWarning")


@pytest.fixture
def tiny(wav_folder: Path) -> list[str]:
    return [f"data.path={wav_folder}", "data.source=path", "features.cache=false",
            "data.val_fraction=0.4", "model.layers=1", "train.batch_size=8",
            "train.epochs=1"]


def test_reproduce_quick_writes_report_with_every_path(tmp_path: Path, tiny: list[str]):
    result = reproduce(tmp_path, quick=True, overrides=[*tiny, "data.split=random"],
                       progress=False)
    methods = [row["method"] for row in result["rows"]]
    assert methods[0] == "Task A float" and {"PTQ-static", "QAT", "QAT-integer"} <= set(methods)
    integer = next(r for r in result["rows"] if r["method"] == "QAT-integer")
    assert integer["float_free"] and integer["artifact_bytes_match"]
    assert result["audit"]["integer"]["float_free"] and not result["audit"]["float"]["float_free"]
    assert set(result["timing"]["paths"]) >= {"float", "QAT", "QAT-integer"}
    assert result["timing"]["paths"]["float"]["throughput_vs_float"] == pytest.approx(1.0)
    report = (tmp_path / "REPORT.md").read_text()
    assert "| QAT-integer |" in report and "float-free" in report
    assert json.loads((tmp_path / "report.json").read_text())["rows"][0]["method"] == "Task A float"
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_loso_quick_reports_each_path(tmp_path: Path, tiny: list[str], wav_folder: Path):
    speaker = sorted(p.name.split("_")[1] for p in wav_folder.glob("*.wav"))[0]
    result = loso.run(tmp_path, speakers=[speaker], quick=True, progress=False,
                      overrides=[*tiny, "features.vote_speeds=[0.9, 1.1]"])
    row = result["rows"][0]
    assert set(row["without_votes"]) == set(loso.PATHS)  # the same models, no speed votes
    assert set(result["without_votes_mean_over_speakers"]) == set(loso.PATHS)
    assert row["speaker"] == speaker and row["test_count"] > 0
    assert set(result["mean_over_speakers"]) == set(loso.PATHS)
    assert 0.0 <= row["integer_qat_agreement"] <= 1.0
    assert set(row["noisy"]) == set(loso.PATHS) == set(result["noisy_mean_over_speakers"])
    table = (tmp_path / "loso.md").read_text()
    assert f"| {speaker} |" in table and "integer at 10 dB SNR" in table
    assert "| mean without speed votes |" in table


def test_robustness_quick_scores_the_official_split_along_four_paths(tmp_path: Path,
                                                                     tiny: list[str]):
    result = robustness.run(tmp_path, "task_b_speaker", [*tiny, "model.hidden=8"], quick=True,
                            talkers=1, progress=False)
    assert result["paths"] == ["float", "ptq-integer", "qat", "qat-integer"]
    assert result["split"] == "official" and result["test_count"] == 40  # takes 0 and 4
    assert len(result["rows"]) == 4 * len(result["conditions"]) == 44
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert saved["settings"]["quick"] and saved["rows"] == result["rows"]
    assert "| babble 5 dB |" in (tmp_path / "robustness.md").read_text()
    assert (tmp_path / "robustness.png").read_bytes()[:4] == b"\x89PNG"


def test_budget_sweep_counts_bytes_and_marks_the_front(tmp_path: Path, tiny: list[str]):
    result = budget_sweep.run(tmp_path, budgets=[4096, 8192], bits=[8], layers=[1],
                              overrides=tiny, quick=True, progress=False)
    points = result["points"]
    assert [p["budget"] for p in points] == [4096, 8192]
    assert all(p["bytes_match"] and p["bytes"] <= p["budget"] for p in points)
    assert points[0]["hidden"] < points[1]["hidden"]
    assert (tmp_path / "budget_sweep.png").is_file()


def test_pareto_front_drops_dominated_points():
    acc = lambda m: {"mean": m}
    points = [{"name": "a", "bytes": 10, "test_accuracy": acc(0.9)},
              {"name": "b", "bytes": 20, "test_accuracy": acc(0.8)},
              {"name": "c", "bytes": 30, "test_accuracy": acc(0.95)}]
    assert [p["name"] for p in budget_sweep.pareto_front(points)] == ["a", "c"]


def test_tune_reports_validation_only(tmp_path: Path, tiny: list[str]):
    overrides = [*tiny, "train.epochs=1", "model.hidden=4", "data.split=official"]
    result = tune.run(None, {"base": [], "drop": ["model.dropout=0.5"]}, tmp_path, overrides)
    assert set(result) == {"base", "drop"}
    assert all(0.0 <= r["last5_mean"] <= 1.0 for r in result.values())
    assert not any("test" in key for row in result.values() for key in row)


def test_speaker_folds_validate_each_speaker_once_never_on_its_test_speaker():
    folds = nested_speaker_folds(["a", "b", "c"])
    pairs = [(f[1].split("=")[1], f[2].split("=")[1]) for _, f in folds]
    assert pairs == [("a", "b"), ("b", "c"), ("c", "a")]
    assert [val for val, _ in folds] == ["b", "c", "a"]
    assert all(test != val for test, val in pairs)
    with pytest.raises(ValueError, match="at least 3"):
        nested_speaker_folds(["a", "b"])
    assert leave_one_speaker_out(["a", "b"]) == [
        ("a", ["data.split=speaker", "data.test_speaker=a"]),
        ("b", ["data.split=speaker", "data.test_speaker=b"])]


def test_tune_on_speaker_folds_scores_validation_speakers(tmp_path: Path, tiny: list[str],
                                                           wav_folder: Path):
    import shutil  # pylint: disable=import-outside-toplevel

    for path in sorted(wav_folder.glob("*_bob_*.wav")):  # a third speaker
        shutil.copy(path, path.with_name(path.name.replace("_bob_", "_carol_")))
    overrides = [*tiny, "model.hidden=4"]
    result = tune.run(None, {"base": []}, tmp_path, overrides, speakers=["alice", "bob", "carol"])
    per_speaker = result["base"]["val_speaker_last5"]
    assert set(per_speaker) == {"alice", "bob", "carol"}
    assert result["base"]["last5_mean"] == pytest.approx(sum(per_speaker.values()) / 3)
    assert not any("test" in key for row in result.values() for key in row)

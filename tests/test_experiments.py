"""The experiment scripts end to end on a tiny synthetic WAV folder.

Each ``run()`` must finish and write its JSON, markdown and plot with the keys the reports
rely on. Settings are tiny (1 epoch, 1 seed, a few hidden units); nothing here checks
accuracy or speed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import bench_training, benchmark, ensemble, ptq_vs_qat, task_a, tune, voices, votes
from lstmq import comparison
from lstmq.runner import RunFolderError

# aqtp 0.9.0 (aqt_dot_general.py) passes an array as a dtype, which jax 0.10 deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Implicit conversion of an array to a dtype:DeprecationWarning")


@pytest.fixture
def tiny(wav_folder: Path) -> list[str]:
    """Overrides: the synthetic folder, uncached, and one layer (compiles faster)."""
    return [f"data.path={wav_folder}", "data.source=path", "features.cache=false",
            "features.workers=1", "data.val_fraction=0.2",
            "model.layers=1"]


def _read(path: Path) -> dict:
    assert path.is_file(), path
    return json.loads(path.read_text())


def test_task_a_writes_summary_and_reuses_its_run(tmp_path: Path, tiny: list[str]):
    overrides = [*tiny, "model.hidden=4"]
    result = task_a.run(tmp_path, seeds=1, epochs=1, overrides=overrides, progress=False)
    summary = _read(tmp_path / "summary.json")
    assert summary == json.loads(json.dumps(result))
    assert set(summary["test_accuracy"]) >= {"mean", "min", "max", "n"}
    assert summary["test_accuracy"]["n"] == 1 and summary["hidden"] == 4
    assert summary["params"] > 0 and summary["seconds_per_epoch"] > 0
    assert list(summary["test_accuracy_per_seed"]) == ["0"]
    assert "| LSTM 1x4 float |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "run" / "metrics.json").is_file()

    again = task_a.run(tmp_path, seeds=1, epochs=1, overrides=overrides, progress=False)
    assert again["train_seconds"] == result["train_seconds"]  # read back, not retrained
    with pytest.raises(RunFolderError, match="model.hidden"):
        task_a.run(tmp_path, seeds=1, epochs=1, overrides=[*tiny, "model.hidden=5"],
                   progress=False)


def test_tune_scores_variants_and_lets_one_distil_from_another(tmp_path: Path,
                                                                 tiny: list[str]):
    overrides = [*tiny, "model.hidden=4", "train.epochs=1"]
    results = tune.run(None, {"teacher": ["train.seed=10"],
                              "kd": ["train.distill_from={run:teacher}"]}, tmp_path, overrides)
    assert list(results) == ["teacher", "kd"]
    for row in results.values():
        assert 0 <= row["last5_min"] <= row["last5_mean"] <= row["last5_max"] <= 1
    recorded = _read(tmp_path / "kd" / "run.json")["config"]["train"]["distill_from"]
    assert recorded == str(tmp_path / "teacher")
    assert _read(tmp_path / "tune.json") == json.loads(json.dumps(results))


def test_tune_names_another_variants_folder_of_the_same_fold():
    assert tune._fold_runs(["train.distill_from={run:big}", "train.seeds=2"], Path("out"),
                           "theo") == [f"train.distill_from={Path('out/big/theo')}",
                                       "train.seeds=2"]


def test_ensemble_averages_the_probabilities_of_consecutive_seeds():
    labels = np.array([0, 1, 1])
    probabilities = np.array([[[0.6, 0.4], [0.6, 0.4], [0.2, 0.8]],     # 2 of 3 right
                              [[0.3, 0.7], [0.1, 0.9], [0.4, 0.6]],     # 2 of 3 right
                              [[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]]])    # 1 of 3, no group
    single, groups = ensemble.seed_and_ensemble_accuracy(probabilities, labels, members=2)
    np.testing.assert_allclose(single, [2 / 3, 2 / 3, 1 / 3])
    np.testing.assert_allclose(groups, [2 / 3])  # means 0.45/0.55, 0.35/0.65, 0.3/0.7
    with pytest.raises(ValueError, match="members 4"):
        ensemble.seed_and_ensemble_accuracy(probabilities, labels, members=4)
    np.testing.assert_allclose(ensemble.softmax(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]])


def test_ensemble_scores_a_tuning_variant(tmp_path: Path, tiny: list[str]):
    tune.run(None, {"pair": ["train.seeds=2", "train.select=last"]}, tmp_path,
             [*tiny, "model.hidden=4", "train.epochs=1"])
    result = ensemble.run(tmp_path / "pair", members=2)
    assert len(result["folds"]["pair"]["seeds"]) == 2
    assert len(result["folds"]["pair"]["ensembles"]) == 1
    assert _read(tmp_path / "pair" / "ensemble.json") == json.loads(json.dumps(result))
    noisy = ensemble.run_conditions(tmp_path / "pair", 2, ("clean", "white:10"))
    assert list(noisy["conditions"]) == ["clean", "white:10"]
    assert all(len(row["seeds"]) == 2 and len(row["ensembles"]) == 1
               for row in noisy["conditions"].values())
    assert noisy["conditions"]["clean"]["seeds"] == result["folds"]["pair"]["seeds"]
    read = votes.run(tmp_path / "pair", speeds=(0.9, 1.1), tempos=(1.1,))
    assert list(read["means"]) == ["once", "speed votes", "tempo votes", "speed and tempo votes"]
    assert read["folds"]["pair"]["once"] == result["folds"]["pair"]["seeds"]
    assert all(len(values) == 2 for values in read["folds"]["pair"].values())
    assert _read(tmp_path / "pair" / "votes.json") == json.loads(json.dumps(read))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no finished run"):
        ensemble.run(tmp_path / "empty", members=2)


def test_votes_sum_the_logits_of_each_set_of_reads():
    labels = np.array([0, 1])
    logits = {"once": np.array([[[2.0, 0.0], [1.0, 0.0]]]),      # right, wrong
              "speed 0.9": np.array([[[0.0, 1.0], [0.0, 3.0]]]),  # wrong, right
              "tempo 1.1": np.array([[[0.0, 3.0], [0.0, 0.5]]])}  # wrong, wrong
    sets = votes.read_sets([0.9], [1.1])
    assert sets == {"once": ["once"], "speed votes": ["once", "speed 0.9"],
                    "tempo votes": ["once", "tempo 1.1"],
                    "speed and tempo votes": ["once", "speed 0.9", "tempo 1.1"]}
    assert votes.accuracy_of_sums(logits, labels, sets) == {
        "once": [0.5], "speed votes": [1.0], "tempo votes": [0.0], "speed and tempo votes": [0.5]}


def test_voices_picks_the_next_speakers_and_fits_a_power_law():
    assert voices.training_voices(["a", "b", "c", "d"], "c", 2) == ["d", "a"]
    with pytest.raises(ValueError, match="in 1..3"):
        voices.training_voices(["a", "b", "c", "d"], "c", 4)
    with pytest.raises(ValueError, match="'e' is not one of the speakers"):
        voices.training_voices(["a", "b", "c", "d"], "e", 1)
    assert voices.training_voices(["a", "b", "c", "d"], "c", 2, skip=1) == ["a", "b"]
    assert voices.training_voices(["a", "b", "c", "d"], "a", 1, skip=2) == ["d"]
    with pytest.raises(ValueError, match="skip must be in 0..1"):
        voices.training_voices(["a", "b", "c", "d"], "c", 2, skip=2)  # would reach "c" again
    a, b = voices.power_law([2, 4, 8], [0.2, 0.1, 0.05])  # error = 0.4 / k
    assert a == pytest.approx(0.4) and b == pytest.approx(1.0)
    assert voices.voices_needed(0.4, 1.0, 0.95) == pytest.approx(8.0)
    assert voices.voices_needed(0.4, -0.1, 0.95) is None  # the error grows: never


def test_voices_trains_on_the_other_voice_and_tests_the_held_out_one(tmp_path: Path,
                                                                     tiny: list[str]):
    result = voices.run(tmp_path, None, [1], [*tiny, "model.hidden=4", "train.epochs=1",
                                              "train.seeds=1"], progress=False)
    row = result["rows"][0]
    assert {s: r["voices"] for s, r in row["per_speaker"].items()} == {"alice": ["bob"],
                                                                       "bob": ["alice"]}
    metrics = _read(tmp_path / "runs" / "1" / "alice" / "metrics.json")
    assert set(metrics["per_speaker"]) == {"alice"} and metrics["test_count"] == 50
    assert row["per_speaker"]["alice"]["values"] == list(metrics["test_accuracy_per_seed"].values())
    assert result["fit"] is None  # one count: nothing to fit
    assert _read(tmp_path / "voices.json") == json.loads(json.dumps(result))
    assert (tmp_path / "voices.png").stat().st_size > 0


def test_benchmark_writes_report(tmp_path: Path, tiny: list[str]):
    result = benchmark.run(tmp_path, hidden=(4,), seeds=(1, 2), epochs=1, synthetic_clips=64,
                           inference_hidden=4, inference_batch=8, inference_repeats=1,
                           latency_clips=3, overrides=tiny, pytorch=False,
                           batch_sizes=(16, 32), seed_run_hidden=4, seed_run_epochs=1,
                           seed_run_rounds=1)
    saved = _read(tmp_path / "benchmark.json")
    assert saved["settings"]["hidden"] == [4]
    layouts = [(r["hidden"], r["seeds"], r["seed_threads"], r["batch_shards"])
               for r in saved["training_real"]]
    assert layouts == [(4, 1, 0, 1), (4, 1, 0, 2), (4, 2, 1, 1), (4, 2, 0, 1), (4, 2, 0, 2)]
    assert [(r["batch_size"], r["batch_shards"]) for r in saved["training_synthetic"]] == [
        (16, 1), (16, 2), (32, 1), (32, 2)]
    seed_runs = saved["seed_runs"]
    assert (seed_runs["seeds"], seed_runs["rounds"]) == (2, 1)
    [together], [alone] = seed_runs["together_seconds"], seed_runs["alone_seconds"]
    assert len(alone) == 2
    assert seed_runs["ratio"] == pytest.approx(together / sum(alone)) == seed_runs["ratios"][0]
    for row in saved["training_real"] + saved["training_synthetic"]:
        assert set(row["seconds_per_epoch"]) >= {"median", "min", "max", "values"}
        assert row["clip_seeds_per_second"] > 0
    assert saved["training_real"][0]["multi_seed_ratio"] == pytest.approx(1.0)
    assert saved["training_synthetic"][0]["qat"]["seconds_per_epoch"]["median"] > 0
    compiled = saved["compile"]
    assert compiled["cold"]["returncode"] == 0 == compiled["warm"]["returncode"]
    assert compiled["warm"]["cached_programs"] > compiled["cold"]["cached_programs"] == 0
    # 64 clips is not the reference setting: no ratio against the PyTorch figures.
    assert saved["training_synthetic"][0]["speedup_vs_pytorch_quoted"] is None
    paths = saved["inference"]["paths"]
    assert set(paths) == {"float", "qat", "integer"}
    assert paths["float"]["throughput_vs_float"] == pytest.approx(1.0)
    assert all(p["latency_ms"]["n"] == 3 for p in paths.values())
    markdown = (tmp_path / "benchmark.md").read_text()
    assert "multi-seed ratio" in markdown and "| integer |" in markdown
    assert "| vmapped |" in markdown and "per seed x 2 shards" in markdown
    assert "Seeds in one program" in markdown
    assert result["environment"]["cores"] >= 1
    assert "epochs interleaved" not in markdown  # no PyTorch, no rounds in turns


def test_interleaved_timing_reverses_the_order_every_other_round():
    calls = []

    def runner(name: str, seconds: list[float]):
        def epoch() -> float:
            calls.append(name)
            return seconds[calls.count(name) - 1]
        return epoch

    times = bench_training.time_interleaved({"ours": runner("ours", [9, 1, 2, 4]),
                                        "theirs": runner("theirs", [9, 3, 3, 2])},
                                       rounds=3, pause=0)
    assert calls == ["ours", "theirs", "ours", "theirs", "theirs", "ours", "ours", "theirs"]
    assert times == {"ours": [1, 2, 4], "theirs": [3, 3, 2]}  # the warm-up call is not timed
    speedups = bench_training.paired_speedups(times, "theirs")
    assert list(speedups) == ["ours"]
    assert speedups["ours"]["speedup"]["values"] == [3.0, 1.5, 0.5]
    assert speedups["ours"]["speedup"]["median"] == 1.5


def test_pytorch_reference_times_the_reference_model():
    pytest.importorskip("torch")
    from experiments import pytorch_reference

    row = pytorch_reference.time_training(4, clips=40, frames=6, batch_size=16, epochs=2)
    assert row["seconds_per_epoch"]["n"] == 2 and row["clips_per_second"] > 0
    assert (row["hidden"], row["layers"], row["clips"], row["frames"]) == (4, 2, 40, 6)


def test_benchmark_times_pytorch_in_the_same_run_and_in_turns(tmp_path: Path,
                                                                tiny: list[str], monkeypatch):
    """The PyTorch reference replaced by an epoch of 0.5 s (torch is optional; its own
    loop is tested above): the separate and the interleaved ratios are read from it."""
    from experiments import pytorch_reference

    info = {"hidden": 4, "threads": 1, "torch": "fake"}
    monkeypatch.setattr(pytorch_reference, "epoch_runner",
                        lambda *args, **kwargs: (lambda: 0.5, info))
    monkeypatch.setattr(pytorch_reference, "time_training", lambda *args, **kwargs: {
        **info, "seconds_per_epoch": {"median": 0.5, "min": 0.5, "max": 0.5}})
    saved = benchmark.run(tmp_path, hidden=(4,), seeds=(1,), shards=(1,), epochs=1,
                          synthetic_clips=32, inference_hidden=4, inference_batch=8,
                          inference_repeats=1, latency_clips=2, overrides=tiny, pytorch=True,
                          compile_check=False, batch_sizes=(16,), paired_rounds=3)
    row = saved["training_synthetic"][0]
    assert row["pytorch_measured"]["hidden"] == 4
    assert row["speedup_vs_pytorch_measured"] == pytest.approx(
        0.5 / row["seconds_per_epoch"]["median"])
    paired = row["paired"]
    assert paired["rounds"] == 3 == paired["seconds_per_epoch"]["n"]
    assert paired["speedup"]["values"] == pytest.approx(
        [0.5 / seconds for seconds in paired["seconds_per_epoch"]["values"]])
    markdown = (tmp_path / "benchmark.md").read_text()
    assert "PyTorch here s" in markdown and "epochs interleaved" in markdown


def test_pytorch_reference_without_torch_says_how_to_install(monkeypatch):
    from experiments import pytorch_reference

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    assert not pytorch_reference.torch_available()
    with pytest.raises(ImportError, match="pip install torch"):
        pytorch_reference.time_training(4)


def test_ptq_vs_qat_writes_table_plot_and_audit(tmp_path: Path, tiny: list[str]):
    # A small budget keeps the solved hidden sizes tiny (both int8 and float32 rows); one
    # split keeps the six compiled trainings/evaluations within the time limit
    # (the split loop is the same code for every split).
    overrides = [*tiny, "budget.bytes=2500"]
    result = ptq_vs_qat.run(tmp_path, seeds=1, epochs=1, splits=("random",),
                            overrides=overrides, progress=False)
    saved = _read(tmp_path / "ptq_vs_qat.json")
    assert (tmp_path / "ptq_vs_qat.png").stat().st_size > 0
    assert saved["budget"]["int8"]["hidden"] > saved["budget"]["float32"]["hidden"]
    rows = saved["rows"]
    assert [(r["split"], r["method"]) for r in rows] == [
        ("random", method) for method in comparison.METHODS]
    for row in rows:
        assert set(row["test_accuracy"]) >= {"mean", "min", "max", "n"}
        assert row["float_free"] == row["method"].endswith("-integer")
        if row["float_free"]:
            assert row["artifact_bytes_match"] and row["artifact_bytes"] == row["bytes"]
            assert 0.0 <= row["agreement"] <= 1.0
        expected = "float32" if row["method"] in ("float", "float32 parity") else "int8"
        assert row["storage"] == expected
    int8_rows = [r for r in rows if r["storage"] == "int8"]
    assert all(r["fits_budget"] and r["bytes"] == saved["budget"]["int8"]["bytes"]
               for r in int8_rows)
    assert saved["audit"]["integer"]["float_free"] is True
    assert saved["audit"]["float"]["float_free"] is False
    assert saved["audit"]["qat"]["float_free"] is False
    markdown = (tmp_path / "ptq_vs_qat.md").read_text()
    assert "| random | QAT-integer |" in markdown
    assert result["rows"][0]["method"] == "float"


def test_main_parses_flags(tmp_path: Path, tiny: list[str], monkeypatch):
    seen = {}
    monkeypatch.setattr(ptq_vs_qat, "run", lambda *args, **kwargs: seen.update(
        args=args, kwargs=kwargs) or {})
    assert ptq_vs_qat.main(["--quick", "--out", str(tmp_path), "--splits", "random",
                            "--set", "train.epochs=1"]) == 0
    assert seen["args"][:5] == (tmp_path, None, None, ["random"], ["train.epochs=1"])
    assert seen["args"][5] is True

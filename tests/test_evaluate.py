"""Metrics, summaries and plots; then whole runs: train_and_evaluate, reload, resume, CLI."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from lstmq import evaluate, runner
from lstmq.budget import Precision, model_bytes, solve_hidden_size
from lstmq.checkpoint import CheckpointError
from lstmq.cli import main
from lstmq.config import ConfigError, load_config
from lstmq.io import read_json
from lstmq.pipeline import prepare_data
from lstmq.paths import predict_path
from lstmq.recipe import calibrate_input_clip
from lstmq.runner import train_and_evaluate
from lstmq.runs import load_run, model_from_config
from lstmq.train import Trainer, create_train_states

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# metrics --------------------------------------------------------------------------------

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
PREDICTIONS = np.array([0, 0, 1, 1, 2, 2, 2, 2, 0, 1])
FOUR = ("0", "1", "2", "3")
DIGITS = tuple(str(d) for d in range(10))


def test_classification_metrics_by_hand():
    m = evaluate.classification_metrics(LABELS, PREDICTIONS, FOUR)
    assert m["accuracy"] == 0.6 and m["count"] == 10
    assert m["confusion"] == [[2, 1, 0, 0],
                              [0, 1, 1, 0],
                              [1, 0, 3, 0],
                              [0, 1, 0, 0]]
    # class 0: 2 of 3 predicted 0s are right, 2 of 3 true 0s found
    assert m["per_class"]["0"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["per_class"]["1"] == pytest.approx(
        {"precision": 1 / 3, "recall": 1 / 2, "f1": 0.4, "support": 2})
    assert m["per_class"]["2"] == pytest.approx(
        {"precision": 3 / 4, "recall": 3 / 4, "f1": 3 / 4, "support": 4})
    assert m["per_class"]["3"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    json.dumps(m)  # plain Python types only


def test_classification_metrics_against_sklearn():
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200)
    predictions = np.where(rng.random(200) < 0.7, labels, rng.integers(0, 10, 200))
    m = evaluate.classification_metrics(labels, predictions, DIGITS)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    np.testing.assert_array_equal(m["confusion"], confusion_matrix(labels, predictions))
    f1 = f1_score(labels, predictions, average=None)
    np.testing.assert_allclose([m["per_class"][str(c)]["f1"] for c in range(10)], f1)
    assert sum(row["support"] for row in m["per_class"].values()) == 200


def test_classes_absent_from_the_data_still_get_rows():
    m = evaluate.classification_metrics(np.array([1, 1]), np.array([1, 1]), DIGITS)
    assert list(m["per_class"]) == [str(c) for c in range(10)]
    assert np.asarray(m["confusion"]).shape == (10, 10)
    assert m["per_class"]["0"]["support"] == 0 and m["per_class"]["1"]["recall"] == 1.0


def test_metrics_are_keyed_by_class_name_and_empty_sets_give_no_nan():
    names = ("yes", "no", "maybe")
    m = evaluate.classification_metrics(np.array([0, 2, 2]), np.array([0, 2, 1]), names)
    assert list(m["per_class"]) == list(names) and m["classes"] == list(names)
    assert m["per_class"]["maybe"]["recall"] == 0.5
    empty = evaluate.classification_metrics(np.zeros(0, int), np.zeros(0, int), names)
    assert empty["accuracy"] is None
    json.dumps(empty, allow_nan=False)
    table = evaluate.format_metrics_table(m)
    assert all(name in table for name in names)


def test_per_group_accuracy():
    groups = np.array(["theo", "nicolas", "theo", "theo", "nicolas",
                       "theo", "nicolas", "nicolas", "theo", "theo"])
    # theo: clips 0 2 3 5 8 9 -> right, wrong, right, right, wrong, wrong; nicolas: 1 4 6 7
    assert evaluate.per_group_accuracy(LABELS, PREDICTIONS, groups) == {
        "nicolas": 0.75, "theo": 0.5}


def test_summarize_uses_sample_std():
    s = evaluate.summarize([0.9, 0.8, 1.0])
    assert s == pytest.approx({"mean": 0.9, "std": 0.1, "min": 0.8, "max": 1.0, "n": 3})
    assert s["std"] == pytest.approx(np.std([0.9, 0.8, 1.0], ddof=1))
    assert evaluate.summarize([0.5]) == {"mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5, "n": 1}


def test_metrics_table_lists_every_class():
    m = evaluate.classification_metrics(LABELS, PREDICTIONS, FOUR)
    lines = evaluate.format_metrics_table(m).splitlines()
    assert len(lines) == 1 + 4 + 1
    assert lines[-1] == "accuracy 60.00% of 10 clips"


def test_plots_write_png_files(tmp_path):
    m = evaluate.classification_metrics(LABELS, PREDICTIONS, FOUR)
    evaluate.plot_confusion(m["confusion"], tmp_path / "confusion.png", "title")
    history = [{"epoch": e, "train_loss": [1.0 / e, 1.1 / e], "train_accuracy": [0.5, 0.6],
                "val_accuracy": [0.4, 0.5]} for e in (1, 2, 3)]
    evaluate.plot_history(history, tmp_path / "history.png")
    for name in ("confusion.png", "history.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "history.png"]


# whole runs ------------------------------------------------------------------------------
#
# Every run below trains the same small float model (one layer of hidden 8, 2 seeds, 2 epochs)
# unless it says otherwise, so the persistent compilation cache (lstmq.compilation, on in
# every training) lets later runs reuse the first run's XLA executables instead of compiling
# them again. One layer halves the compile time of each new program; stacking is covered in
# test_model.py.


def tree_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def run_overrides(wav_folder, **extra) -> list[str]:
    values = {"data.path": str(wav_folder), "data.split": "official", "data.val_fraction": 0.2,
              "features.cache": "false", "train.epochs": 2, "model.hidden": 8, "model.layers": 1,
              "train.seeds": 2, "train.batch_size": 8}
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def run(wav_folder, workdir, data=None, **extra):
    """train_and_evaluate; ``data`` skips feature extraction when a test runs several times."""
    config = load_config(overrides=run_overrides(wav_folder, **extra))
    return config, train_and_evaluate(config, workdir, data=data, progress=False)


def prepared(wav_folder):
    return prepare_data(load_config(overrides=run_overrides(wav_folder)), progress=False)


@pytest.fixture
def no_plots(monkeypatch):
    """Skip matplotlib (about a second per run) where a test runs several times; plots are
    checked by test_train_and_evaluate_end_to_end and test_plots_write_png_files."""
    monkeypatch.setattr(evaluate, "plot_confusion", lambda *args, **kwargs: None)
    monkeypatch.setattr(evaluate, "plot_history", lambda *args, **kwargs: None)


def test_train_and_evaluate_end_to_end(wav_folder, tmp_path):
    workdir = tmp_path / "run"
    config, result = run(wav_folder, workdir)
    metrics = read_json(workdir / "metrics.json")
    assert metrics == json.loads(json.dumps(result))  # what is returned is what is written
    for key in ("test_accuracy", "per_class", "confusion", "params", "epochs", "train_seconds",
                "config", "derived", "history", "test_accuracy_per_seed", "per_speaker"):
        assert key in metrics, key
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
    assert metrics["config"]["model"]["hidden"] == 8 and metrics["derived"]["hidden"] == 8
    assert metrics["params"] == 13 * 32 + 32 + 8 * 32 + 8 * 10 + 10  # per seed: 794
    assert metrics["test_count"] == 40  # official split: takes 0 and 4 of 10 digits x 2
    assert sum(map(sum, metrics["confusion"])) == 2 * 40  # pooled over the 2 seeds
    assert list(metrics["test_accuracy_per_seed"]) == ["0", "1"]
    assert metrics["test_accuracy"] == pytest.approx(
        np.mean(list(metrics["test_accuracy_per_seed"].values())))
    assert metrics["train_seconds"] > 0
    assert metrics["classes"] == [str(d) for d in range(10)]
    assert list(metrics["per_class"]) == metrics["classes"]
    for name in ("params.msgpack", "run.json", "training.json", "history.json", "confusion.png",
                 "history.png"):
        assert (workdir / name).is_file(), name
    for name in ("confusion.png", "history.png"):
        assert (workdir / name).read_bytes().startswith(PNG_MAGIC)
    history = read_json(workdir / "history.json")
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(len(row["train_loss"]) == 2 and len(row["val_accuracy"]) == 2 for row in history)
    assert read_json(workdir / "run.json")["derived"]["seeds"] == [0, 1]

    # The saved parameters reproduce the logged test accuracy exactly.
    loaded = load_run(workdir)
    assert loaded.config == config
    test = prepare_data(loaded.config, progress=False).test
    logits = predict_path(loaded, test)
    assert logits.shape == (2, 40, 10)
    accuracy = np.mean(np.argmax(logits, -1) == test.labels[None], axis=-1)
    assert accuracy.tolist() == list(metrics["test_accuracy_per_seed"].values())
    assert float(np.mean(accuracy)) == metrics["test_accuracy"]


def test_interrupted_run_resumes_bit_identically(wav_folder, tmp_path, monkeypatch, no_plots):
    data = prepared(wav_folder)
    run(wav_folder, tmp_path / "straight", data)
    real_run_epoch = Trainer.run_epoch

    def crash_in_second_epoch(self, states, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("power cut")
        return real_run_epoch(self, states, epoch)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(Trainer, "run_epoch", crash_in_second_epoch)
        run(wav_folder, tmp_path / "resumed", data)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    assert [row["epoch"] for row in read_json(tmp_path / "resumed" / "history.json")] == [1]
    run(wav_folder, tmp_path / "resumed", data)
    straight = (tmp_path / "straight" / "params.msgpack").read_bytes()
    assert (tmp_path / "resumed" / "params.msgpack").read_bytes() == straight
    rows = [read_json(tmp_path / name / "history.json") for name in ("straight", "resumed")]
    timing = ("seconds", "compile_seconds")  # wall-clock figures differ between runs
    strip = [[{k: v for k, v in row.items() if k not in timing} for row in r] for r in rows]
    assert strip[0] == strip[1]


def test_more_epochs_continue_from_the_last_checkpoint(wav_folder, tmp_path, no_plots):
    workdir, data = tmp_path / "run", prepared(wav_folder)
    _, first = run(wav_folder, workdir, data, **{"train.epochs": 1})
    assert len(first["history"]) == 1
    _, second = run(wav_folder, workdir, data, **{"train.epochs": 2})
    assert [row["epoch"] for row in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]  # epoch 1 was not trained again
    assert second["train_seconds"] == pytest.approx(
        sum(row["seconds"] for row in second["history"]))


def test_qat_run_with_solved_hidden_size_fine_tunes_a_float_run(wav_folder, tmp_path,
                                                                 monkeypatch, no_plots):
    data = prepared(wav_folder)
    run(wav_folder, tmp_path / "float", data)
    starts = []

    def spy(model, tx, seed, seeds, input_size, init_params=None, **options):
        states = create_train_states(model, tx, seed, seeds, input_size, init_params, **options)
        if init_params is not None:  # the fine-tuning start, not load_run's template
            starts.append(jax.tree_util.tree_map(np.array, states.params))  # before donation
        return states

    monkeypatch.setattr(runner, "create_train_states", spy)
    budget = model_bytes(8, 1, 13, 10, Precision(8)).total  # exactly hidden 8 at int8
    assert solve_hidden_size(budget, 1, 13, 10, Precision(8)).hidden == 8
    workdir = tmp_path / "qat"
    run(wav_folder, workdir, data, **{
        "model.hidden": "auto", "budget.bytes": budget, "quant.mode": "qat",
        "quant.init_from": str(tmp_path / "float"), "train.epochs": 1, "train.seeds": 1})
    metrics = read_json(workdir / "metrics.json")
    assert metrics["config"]["model"]["hidden"] == "auto"  # derived values stay out of it
    assert metrics["derived"]["hidden"] == 8 == metrics["hidden"]
    assert read_json(workdir / "run.json")["config"]["model"]["hidden"] == "auto"
    assert metrics["config"]["quant"]["mode"] == "qat"
    frames = [x[:n] for x, n in zip(data.train.x, data.train.lengths)]  # calibrated on train
    assert metrics["derived"]["input_clip"] == calibrate_input_clip(frames, 99.99)
    assert calibrate_input_clip(data.train.x, 99.99, data.train.lengths) == \
        calibrate_input_clip(frames, 99.99)  # padding is not counted
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_count"] == 40
    loaded = load_run(workdir)
    assert model_from_config(loaded.config, loaded.derived).numerics is not None
    assert loaded.derived.hidden == 8
    # It started from the float run's first seed, not from a random init.
    assert len(starts) == 1
    float_params = jax.tree_util.tree_map(lambda p: p[:1], load_run(tmp_path / "float").params)
    assert jax.tree_util.tree_structure(starts[0]) == jax.tree_util.tree_structure(float_params)
    for start, source in zip(jax.tree_util.tree_leaves(starts[0]),
                             jax.tree_util.tree_leaves(float_params)):
        np.testing.assert_array_equal(start, source)

    # It trained through the fake quantization: the same fine-tuning in float ends elsewhere.
    run(wav_folder, tmp_path / "float_tuned", data, **{
        "model.hidden": "auto", "budget.bytes": budget, "quant.mode": "float",
        "quant.init_from": str(tmp_path / "float"), "train.epochs": 1, "train.seeds": 1})
    assert not tree_equal(load_run(tmp_path / "float_tuned").params, loaded.params)

    # A float run of another hidden size cannot seed this one.
    with pytest.raises(CheckpointError, match="hidden"):
        run(wav_folder, tmp_path / "qat4", data, **{
            "model.hidden": 4, "quant.mode": "qat", "quant.init_from": str(tmp_path / "float")})


def test_a_run_is_not_started_from_a_run_of_other_clips_nor_reused_once_its_source_changed(
        wav_folder, tmp_path, no_plots):
    from lstmq.runner import RunFolderError, train_or_reuse

    data = prepared(wav_folder)  # the official split
    quick = {"train.epochs": 1, "train.seeds": 1}
    run(wav_folder, tmp_path / "float", data, **quick)
    qat = {**quick, "quant.mode": "qat", "quant.init_from": str(tmp_path / "float")}
    # Another split of the same clips: the float run trained on some of this run's test clips.
    with pytest.raises(CheckpointError, match=r"float: cannot start this run \(quant.init_from\): "
                       r"it trained on data.split 'official', this run's 'random'.*test clips"):
        run(wav_folder, tmp_path / "leak", **{**qat, "data.split": "random"})
    config, first = run(wav_folder, tmp_path / "qat", data, **qat)
    assert read_json(tmp_path / "qat" / "run.json")["sources"] == {
        "quant.init_from": read_json(tmp_path / "float" / "run.json")["params_sha256"]}
    assert train_or_reuse(config, tmp_path / "qat", data, progress=False) == first  # reused
    # The float run trained again: its fine-tuned run is stale, neither reused nor resumed.
    float_config = load_config(overrides=run_overrides(wav_folder, **quick, **{"train.seed": 5}))
    train_and_evaluate(float_config, tmp_path / "float", data, progress=False, overwrite=True)
    for attempt in (train_or_reuse, train_and_evaluate):
        with pytest.raises(RunFolderError, match=r"qat: started from or learned from "
                           r"quant.init_from .*float as it was .*trained again since"):
            attempt(config, tmp_path / "qat", data, progress=False)
    again = train_and_evaluate(config, tmp_path / "qat", data, progress=False, overwrite=True)
    assert again["params_sha256"] != first["params_sha256"]


def test_a_run_with_a_moving_average_evaluates_and_keeps_the_average(wav_folder, tmp_path,
                                                                     monkeypatch, no_plots):
    data = prepared(wav_folder)
    finals = []
    real_run_epoch = Trainer.run_epoch

    def record(self, states, epoch):
        states, metrics = real_run_epoch(self, states, epoch)
        finals.append(jax.tree_util.tree_map(np.array, (states.params, states.ema_params)))
        return states, metrics

    monkeypatch.setattr(Trainer, "run_epoch", record)
    workdir = tmp_path / "ema"
    run(wav_folder, workdir, data, **{"train.ema_decay": 0.9, "train.select": "last"})
    params, average = finals[-1]
    kept = load_run(workdir).params
    for leaf_kept, leaf_average, leaf_params in zip(*map(jax.tree_util.tree_leaves,
                                                         (kept, average, params))):
        np.testing.assert_array_equal(leaf_kept, leaf_average)
    assert not tree_equal(average, params)  # the average is not the last iterate


def test_load_run_of_a_folder_without_run_json(tmp_path):
    with pytest.raises(CheckpointError, match="run.json"):
        load_run(tmp_path)
    (tmp_path / "training.json").write_text("{}")  # an interrupted training
    with pytest.raises(CheckpointError, match="has not finished .* again to resume it"):
        load_run(tmp_path)


# command line ---------------------------------------------------------------------------


def test_cli_train_then_eval(wav_folder, tmp_path, capsys):
    workdir = tmp_path / "cli"
    args = ["train", "--out", str(workdir), "--quiet"]
    for override in run_overrides(wav_folder):
        args += ["--set", override]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test accuracy over 2 seed(s)" in out
    metrics = read_json(workdir / "metrics.json")

    report_path = tmp_path / "eval.json"
    assert main(["eval", "--run", str(workdir), "--quiet", "--out", str(report_path)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("float: accuracy ") and "40 clips" in line and "official" in line
    report = read_json(report_path)
    assert report["test_accuracy"] == metrics["test_accuracy"]
    assert report["confusion"] == metrics["confusion"]
    assert report["path"] == "float" and report["test_count"] == 40


def test_cli_bad_override_returns_2_naming_the_key(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x"), "--set", "train.epoch=3"]) == 2
    assert "train.epoch" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError):
        load_config(overrides=["train.epoch=3"])


def test_cli_impossible_budget_returns_2(capsys):
    assert main(["budget", "--bytes", "10", "--layers", "2", "--bits", "8"]) == 2
    assert "error" in capsys.readouterr().err


def test_cli_eval_of_missing_run_returns_2(tmp_path, capsys):
    assert main(["eval", "--run", str(tmp_path / "none"), "--quiet"]) == 2
    assert "run.json" in capsys.readouterr().err


@pytest.mark.parametrize("split", ["random", "official", "speaker_disjoint"])
def test_a_test_speaker_without_the_speaker_split_is_refused(split, tmp_path, capsys):
    with pytest.raises(ConfigError, match=f"data.test_speaker .* data.split={split!r}"):
        load_config(overrides=[f"data.split={split}", "data.test_speaker=bob"])
    assert main(["train", "--out", str(tmp_path / "x"), "--set", f"data.split={split}",
                 "--set", "data.test_speaker=bob"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.test_speaker" in err[0] and "data.split" in err[0], err
    assert not (tmp_path / "x").exists()
    speaker = load_config(overrides=["data.split=speaker", "data.test_speaker=bob"]).data
    assert speaker.test_speaker == "bob"

"""A user's own data end to end, through the CLI and through the Python API: train, QAT,
integer conversion, export, eval and predict, with the data's class names in every output.

Models are tiny (one layer of hidden 8, 1 seed, 1-2 epochs): these tests check the plumbing
and the names, not accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import lstmq
from lstmq.cli import main
from lstmq.io import read_json

THREE = ("down", "left", "up")
TWELVE = tuple(f"w{i:02d}" for i in range(12))
TINY = ["features.cache=false", "model.hidden=8", "model.layers=1", "train.seeds=1",
        "train.batch_size=8", "train.epochs=2"]


def _cli(*args: str) -> int:
    return main([*args])


def _train_args(out, data_path, *extra) -> list[str]:
    args = ["train", "--out", str(out), "--quiet", "--set", f"data.path={data_path}"]
    for override in [*TINY, *extra]:
        args += ["--set", override]
    return args


def test_cli_on_a_speech_commands_tree_at_16_khz(make_folders_dataset, tmp_path, capsys):
    root = make_folders_dataset(THREE, sample_rate=16000, lists=True)
    float_dir, qat_dir = tmp_path / "float", tmp_path / "qat"
    assert _cli(*_train_args(float_dir, root, "data.split=official")) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in THREE)
    metrics = read_json(float_dir / "metrics.json")
    assert metrics["classes"] == list(THREE) and list(metrics["per_class"]) == list(THREE)
    assert np.asarray(metrics["confusion"]).shape == (3, 3)
    assert metrics["test_count"] == 12  # cid's clips, from testing_list.txt
    assert metrics["data"]["layout"] == "folders" and metrics["data"]["sample_rate"] == 16000
    assert (float_dir / "confusion.png").is_file()

    assert _cli(*_train_args(qat_dir, root, "data.split=official", "quant.mode=qat",
                             f"quant.init_from={float_dir}", "train.epochs=1")) == 0
    capsys.readouterr()
    artifact = tmp_path / "model.lstmqz"
    assert _cli("export", "--run", str(qat_dir), "--out", str(artifact)) == 0
    assert "within the 36,864-byte budget" in capsys.readouterr().out

    report_file = tmp_path / "eval.json"
    assert _cli("eval", "--run", str(qat_dir), "--integer", "--quiet",
                "--out", str(report_file)) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("qat-integer: accuracy") and "12 clips" in line
    report = read_json(report_file)
    assert report["classes"] == list(THREE) and set(report["per_class"]) == set(THREE)

    assert _cli("predict", "--model", str(qat_dir), "--integer", str(root / "up")) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].split() == ["file", "label", "score"] and len(printed) == 2 + 12
    assert all(row.split()[1] in THREE for row in printed[2:])
    assert _cli("predict", "--model", str(artifact), "--json", str(root / "left")) == 0
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    assert len(predictions) == 12 and {p["label"] for p in predictions} <= set(THREE)
    assert all(0.0 < p["score"] <= 1.0 and len(p["logits"]) == 3 for p in predictions)
    # The artifact and the run's integer path are the same model.
    assert _cli("predict", "--model", str(qat_dir), "--integer", "--json",
                str(root / "left")) == 0
    from_run = json.loads(capsys.readouterr().out)["predictions"]
    assert [p["logits"] for p in from_run] == [p["logits"] for p in predictions]
    # Choices that mean nothing for an artifact, or contradict each other, are refused.
    assert _cli("predict", "--model", str(artifact), "--seed-index", "0", str(root / "left")) == 2
    assert "--seed-index chooses among the models of a run folder" in capsys.readouterr().err
    assert _cli("predict", "--model", str(artifact), "--integer", "--json", str(root / "left")) == 0
    assert json.loads(capsys.readouterr().out)["predictions"] == predictions  # integer already
    # One path given as a string or a Path, not a sequence of one-letter names.
    one = str(sorted((root / "left").rglob("*.wav"))[0])
    predictor = lstmq.artifact_predictor(artifact)
    assert lstmq.predict_files(predictor, one) == lstmq.predict_files(predictor, [Path(one)])
    assert len(lstmq.predict_files(predictor, Path(one))) == 1
    with pytest.raises(lstmq.DataError, match="no WAV file or folder given"):
        lstmq.predict_files(predictor, [])
    for command in (["eval", "--run", str(qat_dir)],
                    ["predict", "--model", str(qat_dir), str(root / "left")]):
        with pytest.raises(SystemExit) as exited:
            _cli(*command, "--integer", "--path", "qat")
        assert exited.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not both"):
        lstmq.evaluate_run(qat_dir, path="qat", integer=True)


def test_a_two_seed_run_from_pcm_with_speed_votes_exports_a_c_library_and_predicts_any_seed(
        make_folders_dataset, tmp_path, capsys):
    from lstmq.c_export import find_compiler
    from lstmq.paths import predict_path
    from lstmq.pipeline import prepare_data

    root = make_folders_dataset(THREE)
    run = tmp_path / "float"  # a float run: its integer model is ptq-integer
    assert _cli(*_train_args(run, root, "features.frontend=integer", "train.seeds=2",
                             "features.vote_speeds=[0.9, 1.1]")) == 0
    # Speed votes: every path adds the passes (integer: int64 sum; float: mean), either engine.
    loaded = lstmq.load_run(run)
    test = prepare_data(loaded.config, progress=False).test
    assert len(test.votes) == 2 and all(vote.names == test.names for vote in test.votes)
    assert all(not np.array_equal(vote.lengths, test.lengths) for vote in test.votes)
    passes = (dataclasses.replace(test, votes=()), *test.votes)
    summed = sum(predict_path(loaded, split, "ptq-integer", engine="jnp").astype(np.int64)
                 for split in passes)
    for engine in ("jnp", "c") if find_compiler() else ("jnp",):
        np.testing.assert_array_equal(predict_path(loaded, test, "ptq-integer", engine=engine),
                                      summed)
    mean = sum(predict_path(loaded, split, "float") for split in passes) / 3
    np.testing.assert_allclose(predict_path(loaded, test, "float"), mean, rtol=1e-5, atol=1e-5)
    artifact, library = tmp_path / "seed1.lstmqz", tmp_path / "c"
    assert _cli("export", "--run", str(run), "--out", str(artifact), "--seed-index", "1",
                "--c-dir", str(library), "--golden", "3") == 0
    assert "Makefile" in {p.name for p in library.iterdir()}
    if find_compiler() is not None and shutil.which("make"):
        done = subprocess.run(["make", "-s", "-C", str(library), "check"], capture_output=True,
                              text=True, check=False)
        assert "3 of 3 clips bit-exact" in done.stdout, done.stdout + done.stderr
    capsys.readouterr()
    assert _cli("predict", "--model", str(run), "--integer", "--seed-index", "1", "--json",
                str(root / "up")) == 0
    from_run = json.loads(capsys.readouterr().out)["predictions"]
    assert _cli("predict", "--model", str(artifact), "--json", str(root / "up")) == 0
    from_artifact = json.loads(capsys.readouterr().out)["predictions"]
    assert [p["logits"] for p in from_run] == [p["logits"] for p in from_artifact]
    assert [p["score"] for p in from_run] == [p["score"] for p in from_artifact]
    # Impossible buffer sizes are refused, and a refused export leaves the old artifact as is.
    before = artifact.read_bytes()
    for seconds, message in (("inf", "--max-seconds must be a positive"),
                             ("0.001", "fewer than the"), ("0.1", "no test clip fits")):
        assert _cli("export", "--run", str(run), "--out", str(artifact), "--c-dir",
                    str(library), "--max-seconds", seconds) == 2
        assert message in capsys.readouterr().err
    assert artifact.read_bytes() == before


def test_cli_refuses_a_class_count_that_differs_and_changed_data(make_folders_dataset,
                                                                 tmp_path, capsys):
    root = make_folders_dataset(THREE)
    assert _cli(*_train_args(tmp_path / "x", root, "model.num_classes=10")) == 2
    assert "model.num_classes is 10 but" in capsys.readouterr().err
    assert not (tmp_path / "x" / "run.json").exists()


def test_api_on_a_twelve_class_manifest(make_manifest_dataset, tmp_path):
    manifest = make_manifest_dataset(TWELVE, speakers=("ann", "bob", "cid"), takes=2)
    config = lstmq.load_config(overrides=[f"data.path={manifest}", "data.split=official",
                                          "data.val_fraction=0.25", *TINY])
    data = lstmq.prepare_data(config, progress=False)
    assert data.classes == TWELVE and len(data.test) == 24
    metrics = lstmq.train_and_evaluate(config, tmp_path / "float", data, progress=False)
    assert list(metrics["per_class"]) == list(TWELVE)
    qat_config = lstmq.load_config(overrides=[
        f"data.path={manifest}", "data.split=official", "data.val_fraction=0.25", *TINY,
        *lstmq.finetune_overrides(tmp_path / "float", epochs=1)])
    lstmq.train_and_evaluate(qat_config, tmp_path / "qat", data, progress=False)
    run = lstmq.load_run(tmp_path / "qat")
    assert run.classes == TWELVE
    models = lstmq.integer_models(run)
    logits = lstmq.predict_path(run, data.test, "qat-integer", models)
    assert logits.shape == (1, 24, 12) and logits.dtype == np.int32
    simulated = lstmq.predict_path(run, data.test, "qat")
    assert np.mean(np.argmax(logits, -1) == np.argmax(simulated, -1)) >= 0.9
    x = lstmq.quantize_input(models[0], data.test.x[:2, :16])
    lstmq.audit_float_free(lstmq.predict_int, models[0], x,
                           np.minimum(data.test.lengths[:2], 16).astype(np.int32))
    report = lstmq.evaluate_run(tmp_path / "qat", integer=True, progress=False)
    assert report["classes"] == list(TWELVE) and report["test_count"] == 24

    # The recorded data is checked: an edited clip changes the fingerprint.
    clip = manifest.parent / "audio" / "ann" / "w00-0.wav"
    clip.write_bytes(clip.read_bytes()[:-2] + b"\x01\x00")
    with pytest.raises(lstmq.DataError, match="fingerprint .* differs from the data"):
        lstmq.evaluate_run(tmp_path / "qat", progress=False)


def _train_arrays_run(folder):
    """A tiny run of two classes of feature arrays (no audio) in ``folder``."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["rest", "walk"], 20)
    x = rng.normal(size=(40, 10, 3)).astype(np.float32) + (labels == "walk")[:, None, None]
    lstmq.train_arrays(x, np.full(40, 10, np.int32), labels, lstmq.load_config(overrides=TINY),
                       folder)


def test_a_run_of_arrays_says_its_data_is_not_kept(tmp_path):
    _train_arrays_run(tmp_path / "arrays")
    with pytest.raises(lstmq.DataError, match="in-memory arrays .* metrics.json"):
        lstmq.evaluate_run(tmp_path / "arrays", progress=False)


def test_missing_data_is_one_line_that_says_how_to_point_at_a_copy(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.delenv("LSTMQ_DATA", raising=False)
    monkeypatch.setenv("LSTMQ_CACHE", str(tmp_path / "cache"))
    unreachable = ["--set", "data.url=http://127.0.0.1:9/fsdd.tar.gz",  # nothing listens
                   "--set", f"data.sha256={'0' * 64}"]
    for command in (["train", "--out", str(tmp_path / "run")],
                    ["reproduce", "--quick", "--out", str(tmp_path / "study")]):
        assert main([*command, *unreachable]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert "cannot download" in err[0] and "LSTMQ_DATA" in err[0]
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "data.format=folders"]) == 2
    assert "set data.path or $LSTMQ_DATA" in capsys.readouterr().err


def test_eval_with_data_reads_it_with_the_runs_own_layout(write_wav, synthetic_clip, tmp_path,
                                                           capsys):
    # class folders whose files happen to be named like FSDD's: auto would read them as FSDD
    root = tmp_path / "tones"
    for digit, label in ((1, "low"), (4, "mid"), (8, "high")):
        for take in range(10):
            write_wav(root / label / f"{take % 10}_{label}take_{take}.wav",
                      synthetic_clip(digit, 0, take))
    run = tmp_path / "run"
    assert _cli(*_train_args(run, root, "data.format=folders", "data.val_fraction=0")) == 0
    capsys.readouterr()
    assert _cli("eval", "--run", str(run), "--data", str(root), "--quiet") == 0
    line = capsys.readouterr().out
    assert "accuracy" in line and "30 clips" in line and "folders layout" in line
    assert _cli("predict", "--model", str(run), str(root / "low")) == 0
    assert capsys.readouterr().out.count(".wav") == 10


def test_a_run_of_arrays_refuses_audio_from_its_folder_and_its_artifact(tmp_path, wav_folder,
                                                                        capsys):
    _train_arrays_run(tmp_path / "arrays")
    with pytest.raises(lstmq.DataError, match="feature arrays, not audio"):
        lstmq.evaluate_run(tmp_path / "arrays", data=wav_folder, progress=False)
    artifact = tmp_path / "arrays.lstmqz"
    assert _cli("export", "--run", str(tmp_path / "arrays"), "--out", str(artifact)) == 0
    capsys.readouterr()
    clip = next(wav_folder.glob("*.wav"))
    assert _cli("predict", "--model", str(artifact), str(clip)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(artifact) in err[0] and "feature arrays, not audio" in err[0], err


def test_init_from_refuses_a_run_of_another_front_end(make_folders_dataset, tmp_path, capsys):
    root = make_folders_dataset(THREE)
    assert _cli(*_train_args(tmp_path / "float", root, "data.val_fraction=0")) == 0
    capsys.readouterr()
    assert _cli(*_train_args(tmp_path / "qat", root, "data.val_fraction=0", "quant.mode=qat",
                             f"quant.init_from={tmp_path / 'float'}", "train.epochs=1",
                             "features.frontend=integer")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "quant.init_from" in err[0] and "features.frontend" in err[0], err
    assert not (tmp_path / "qat" / "run.json").exists()
    # settings of how features are computed (cache, workers, speed votes) may differ
    assert _cli(*_train_args(tmp_path / "qat", root, "data.val_fraction=0", "quant.mode=qat",
                             f"quant.init_from={tmp_path / 'float'}", "train.epochs=1",
                             "features.workers=1", "features.vote_speeds=[0.9]")) == 0

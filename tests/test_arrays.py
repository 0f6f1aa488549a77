"""Any sequences as arrays: what prepare_arrays accepts and refuses, and new sequences scored
by a trained arrays run (arrays_split + predict_path)."""

from __future__ import annotations

import numpy as np
import pytest

import lstmq
from lstmq.data import DataError

TINY = ["model.hidden=8", "model.layers=1", "train.seeds=1", "train.batch_size=8",
        "train.epochs=2", "data.val_fraction=0"]


def separable(count: int = 36, frames: int = 10, features: int = 3, seed: int = 0):
    """Three classes of noisy sequences whose means differ: easy to learn."""
    rng = np.random.default_rng(seed)
    labels = np.array(["a", "b", "c"] * (count // 3))
    offset = {"a": -2.0, "b": 0.0, "c": 2.0}
    x = rng.normal(size=(count, frames, features)).astype(np.float32) * 0.3
    x += np.array([offset[label] for label in labels], np.float32)[:, None, None]
    lengths = rng.integers(frames // 2, frames + 1, count).astype(np.int32)
    return x, lengths, labels


def config(*extra):
    return lstmq.load_config(overrides=[*TINY, *extra])


@pytest.mark.parametrize("edit, problem", [
    (lambda x, n, y: (x[0], n, y), r"expected x \[N, T, F\]"),
    (lambda x, n, y: (x, n[:-1], y), "expected lengths"),
    (lambda x, n, y: (x, n + 100, y), r"lengths must be in \[1, 10\]"),
    (lambda x, n, y: (x, n.astype(np.int64) + 2**32, y), r"lengths must be in \[1, 10\]"),
    (lambda x, n, y: (x, n + 0.5, y), "whole numbers"),
    (lambda x, n, y: (x, n, y[:-1]), "expected labels"),
    (lambda x, n, y: (x, n, np.array([0, "b", None] * 12, dtype=object)), "all strings or all"),
    (lambda x, n, y: (x, n, np.full(36, np.nan)), "all strings or all"),
    (lambda x, n, y: (np.where(np.arange(10)[None, :, None] == 0, np.nan, x), n, y),
     "row 0, frame 0"),
    (lambda x, n, y: (x.astype(np.float64) * 1e39, n, y), "infinite values in float32"),
])
def test_bad_arrays_are_refused_naming_the_problem(edit, problem):
    x, lengths, labels = edit(*separable())
    with pytest.raises(DataError, match=problem):
        lstmq.prepare_arrays(x, lengths, labels, config())


def test_nan_after_a_rows_length_is_padding_and_is_not_read():
    x, lengths, labels = separable()
    x[0, lengths[0]:] = np.nan
    data = lstmq.prepare_arrays(x, lengths, labels, config())
    assert np.isfinite(data.train.x).all() and np.isfinite(data.test.x).all()


@pytest.mark.parametrize("rows, problem", [
    ({"speakers": ["s1", "s2"]}, r"expected speakers \[N\]"),
    ({"partition": ["train"] * 35}, r"expected partition \[N\]"),
    ({"partition": ["train"] * 30 + ["holdout"] * 6}, "partition: split 'holdout'"),
])
def test_speakers_and_partition_must_name_every_row(rows, problem):
    with pytest.raises(DataError, match=problem):
        lstmq.prepare_arrays(*separable(), config("data.split=official"), **rows)


def test_partition_takes_the_manifests_split_names():
    partition = (["train"] * 4 + ["Val", "dev "] + ["Test"] * 2 + ["training", "testing"]
                 + ["train"] * 2) * 3
    data = lstmq.prepare_arrays(*separable(), config("data.split=official"), partition=partition)
    assert (len(data.train), len(data.val), len(data.test)) == (21, 6, 9)


@pytest.mark.parametrize("setting, problem", [
    ("features.frontend=integer", "integer front end"), ("augment.copies=2", "augment.copies=2")])
def test_settings_that_need_audio_are_refused(setting, problem):
    with pytest.raises(DataError, match=problem):
        lstmq.prepare_arrays(*separable(), config(setting))


def test_max_frames_cuts_the_sequences_and_int_labels_index_given_classes():
    x, lengths, labels = separable()
    numbers = np.searchsorted(["a", "b", "c"], labels)
    data = lstmq.prepare_arrays(x, lengths, numbers, config("features.max_frames=4"),
                                classes=(10, 20, 30))
    assert data.classes == ("10", "20", "30")
    assert max(data.train.lengths.max(), data.test.lengths.max()) == 4


def test_int_labels_without_classes_are_classes_in_numeric_order():
    """Index k is class "k" in training and in arrays_split alike, also past 10 classes
    (names sorted as strings would put "10" before "2")."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 10)
    x = rng.normal(size=(120, 5, 2)).astype(np.float32)
    data = lstmq.prepare_arrays(x, np.full(120, 5), labels, config())
    assert data.classes == tuple(str(k) for k in range(12))
    for split in (data.train, data.val, data.test):
        assert all(data.classes[i] == str(j) for i, j in zip(split.labels, labels[
            [int(name.split("_")[1]) for name in split.names]]))
    with pytest.raises(DataError, match=r"class\(es\) \['1'\] have no sequence"):
        lstmq.prepare_arrays(x, np.full(120, 5), np.where(labels == 1, 2, labels), config())


def test_arrays_split_reads_int_labels_as_the_runs_classes(tmp_path):
    x, lengths, labels = separable(60, seed=1)
    numbers = np.searchsorted(["a", "b", "c"], labels)
    run, _ = lstmq.train_arrays(x, lengths, numbers, config(), tmp_path / "run")
    assert run.classes == ("0", "1", "2")
    split = lstmq.arrays_split(run, x, lengths, numbers)
    np.testing.assert_array_equal(split.labels, numbers)


def test_speakers_and_partition_are_part_of_the_arrays_fingerprint():
    """Other speakers or another partition move a split: resuming or evaluating a run on them
    must be refused like other data."""
    x, lengths, labels = separable()
    first = np.where(np.arange(36) < 27, "train", "test")
    speakers = np.array(["s1", "s2", "s3"] * 12)
    plain = lstmq.prepare_arrays(x, lengths, labels, config()).info.fingerprint
    prints = {lstmq.prepare_arrays(x, lengths, labels, config("data.split=official"),
                                   partition=p).info.fingerprint
              for p in (first, first[::-1])}
    prints |= {lstmq.prepare_arrays(x, lengths, labels, config(), speakers=s).info.fingerprint
               for s in (speakers, np.roll(speakers, 1))}
    assert len(prints | {plain}) == 5


def test_data_prepared_under_other_settings_is_refused(tmp_path):
    """One config's arrays trained under another's name would record the wrong features; a
    config differing only in what the train step does (masks, epochs, quantization) shares
    them."""
    x, lengths, labels = separable()
    data = lstmq.prepare_arrays(x, lengths, labels, config())
    with pytest.raises(DataError, match=r"features.max_frames \(prepared None, config 4\)"):
        lstmq.train_and_evaluate(config("features.max_frames=4"), tmp_path / "a", data,
                                 progress=False)
    assert not (tmp_path / "a" / "run.json").exists()
    shared = config("augment.time_mask=2", "train.epochs=1", "quant.mode=qat")
    lstmq.train_and_evaluate(shared, tmp_path / "b", data, progress=False)


def test_new_sequences_are_scored_with_the_runs_statistics(tmp_path):
    x, lengths, labels = separable(60, seed=1)
    shifted = x + 100.0  # far from zero: unnormalised arrays would mislead the model
    run, metrics = lstmq.train_arrays(shifted, lengths, labels,
                                      config("train.epochs=30", "features.normalize=global"),
                                      tmp_path / "run")
    new_x, new_lengths, new_labels = separable(30, seed=2)
    split = lstmq.arrays_split(run, new_x + 100.0, new_lengths, new_labels)
    accuracy = np.mean(np.argmax(lstmq.predict_path(run, split)[0], -1) == split.labels)
    assert accuracy >= 0.9, (accuracy, metrics["test_accuracy"])
    with pytest.raises(DataError, match="has 4 features per frame"):
        lstmq.arrays_split(run, np.zeros((2, 5, 4), np.float32), [5, 5])
    with pytest.raises(DataError, match=r"labels \['z'\] are not classes"):
        lstmq.arrays_split(run, new_x[:2], new_lengths[:2], ["a", "z"])

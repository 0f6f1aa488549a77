"""Knowledge distillation: soft targets, the loss and its gradient, the Trainer, the teacher
check and a run end to end."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmq.checkpoint import CheckpointError
from lstmq.config import ConfigError, load_config
from lstmq.distill import (check_teacher, distillation_loss, original_rows, soft_targets,
                           teacher_targets)
from lstmq.model import LSTMClassifier
from lstmq.normalization import Normalizer
from lstmq.pipeline import SplitArrays
from lstmq.io import read_json
from lstmq.runner import TEACHER_SEED_OFFSET, teacher_config
from lstmq.runs import Derived, Run
from lstmq.train import Trainer, create_train_states
from test_evaluate import no_plots  # noqa: F401 - the fixture

FEATURES, CLASSES, HIDDEN, TIME, N = 4, 3, 8, 10, 24
MODEL = LSTMClassifier(HIDDEN, 1, CLASSES, readout="mean")


def split() -> SplitArrays:
    rng = np.random.default_rng(5)
    return SplitArrays(x=rng.standard_normal((N, TIME, FEATURES)).astype(np.float32),
                       lengths=rng.integers(3, TIME + 1, N).astype(np.int32),
                       labels=(np.arange(N) % CLASSES).astype(np.int32),
                       speakers=np.array(["a", "b"] * (N // 2)),
                       names=tuple(map(str, range(N))))


def config(**train):
    return load_config(overrides=[f"model.hidden={HIDDEN}", "model.dropout=0.0",
                                  "model.readout=mean", "train.batch_size=8",
                                  f"train.bucket_frames={TIME}",
                                  *[f"train.{k}={v}" for k, v in train.items()]])


def train(cfg, data: SplitArrays, soft=None, seeds: int = 1):
    trainer = Trainer(cfg, MODEL, data, soft_targets=soft)
    states = create_train_states(MODEL, trainer.tx, 0, seeds, FEATURES)
    for epoch in range(cfg.train.epochs):
        states, _ = trainer.run_epoch(states, epoch)
    return trainer, states


def test_soft_targets_average_the_seeds_tempered_probabilities():
    logits = np.array([[[2.0, 0.0, 0.0]], [[0.0, 0.0, 2.0]]])  # 2 seeds, 1 clip
    at_1 = soft_targets(logits, 1.0)
    e = np.exp(2.0)
    np.testing.assert_allclose(at_1[0], [(e + 1) / (e + 2) / 2, 1 / (e + 2), (e + 1) / (e + 2) / 2],
                               rtol=1e-6)
    at_4 = soft_targets(logits, 4.0)
    assert at_4.shape == (1, 3) and np.isclose(at_4.sum(), 1.0)
    assert at_4[0, 1] > at_1[0, 1]  # a higher temperature spreads the mass
    with pytest.raises(ValueError, match="temperature"):
        soft_targets(logits, 0.0)


def test_distillation_gradient_is_t_times_tempered_softmax_minus_target():
    logits = jnp.array([[1.5, -0.5, 0.25], [0.0, 2.0, -1.0]])
    targets = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    weight = jnp.array([1.0, 0.5])
    temperature = 3.0
    grad = jax.grad(lambda z: distillation_loss(z, targets, weight, temperature))(logits)
    expected = temperature * (jax.nn.softmax(logits / temperature) - targets) * weight[:, None]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_one_hot_soft_targets_at_temperature_1_train_as_the_labels_alone():
    """(1 - w) CE + w CE = CE when the teacher says the label with certainty at T = 1."""
    data = split()
    _, plain = train(config(epochs=2), data)
    one_hot = np.eye(CLASSES, dtype=np.float32)[data.labels]
    _, taught = train(config(epochs=2, distill_from="teacher", distill_weight=0.7,
                             distill_temperature=1.0), data, soft=one_hot)
    for a, b in zip(jax.tree_util.tree_leaves(plain.params),
                    jax.tree_util.tree_leaves(taught.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_with_weight_1_the_student_learns_the_teachers_labels_not_the_data_s():
    data = split()
    teacher_says = (data.labels + 1) % CLASSES  # a teacher that is always wrong
    soft = np.eye(CLASSES, dtype=np.float32)[teacher_says]
    trainer, states = train(config(epochs=30, learning_rate=0.03, distill_from="teacher",
                                   distill_weight=1.0, distill_temperature=1.0), data, soft=soft)
    predicted = trainer.predict(states.params, data)[0].argmax(-1)
    assert np.mean(predicted == teacher_says) > 0.8
    assert np.mean(predicted == data.labels) < 0.2


def test_trainer_refuses_soft_targets_of_another_length():
    with pytest.raises(ValueError, match="soft targets for 24 training clips"):
        Trainer(config(distill_from="teacher"), MODEL, split(),
                soft_targets=np.full((5, CLASSES), 1 / CLASSES, np.float32))


@pytest.mark.parametrize("overrides, key", [
    (["train.distill_from=t", "train.distill_weight=0"], "train.distill_weight"),
    (["train.distill_from=t", "train.distill_temperature=0"], "train.distill_temperature"),
    (["train.distill_from=t", "augment.mixup=0.2"], "train.distill_from"),
    (["train.distill_from=t", "train.speaker_adversary=0.1"], "train.distill_from"),
    (["train.teacher_seeds=2", "augment.mixup=0.2"], "train.teacher_seeds"),
    (["train.teacher_seeds=2", "train.distill_from=t"], "both name a teacher"),
    (["train.teacher_seeds=-1"], "train.teacher_seeds"),
])
def test_config_refuses_bad_distillation_settings(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(overrides=overrides)


def derived(classes=("0", "1", "2"), mean=0.0) -> Derived:
    normalizer = Normalizer(np.full(FEATURES, mean, np.float32), np.ones(FEATURES, np.float32))
    return Derived(hidden=HIDDEN, input_size=FEATURES, input_clip=4.0, normalizer=normalizer,
                   seeds=(0,), classes=classes)


def test_check_teacher_names_the_folder_and_what_differs(tmp_path):
    student = config()
    teacher = Run(tmp_path / "teacher", student, derived(), params=None,
                  data={"fingerprint": "abc"})
    check_teacher(teacher, student, derived(), "abc")  # the same features and clips: accepted
    other_clip = dataclasses.replace(derived(), input_clip=2.5)
    check_teacher(teacher, student, other_clip, "abc")  # each run calibrates its own clip
    with pytest.raises(CheckpointError, match=r"teacher: cannot teach .*classes \['0', '1', '2'\]"):
        check_teacher(teacher, student, derived(classes=("a", "b", "c")), "abc")
    with pytest.raises(CheckpointError, match="normalisation statistics"):
        check_teacher(teacher, student, derived(mean=1.0), "abc")
    with pytest.raises(CheckpointError, match="another feature config"):
        check_teacher(teacher, load_config(overrides=["features.n_mfcc=10"]), derived(), "abc")


@pytest.mark.parametrize("overrides, fingerprint, named", [
    ([], "xyz", "other recordings (data fingerprint abc, this run's xyz)"),
    (["data.split_seed=7"], "abc", "data.split_seed 42, this run's 7"),
    (["data.split=speaker", "data.test_speaker=bob"], "abc", "data.split 'random', this run's 'speaker'"),
])
def test_a_teacher_of_other_clips_is_refused_as_its_training_clips_may_be_the_students_test(
        tmp_path, overrides, fingerprint, named):
    teacher = Run(tmp_path / "teacher", config(), derived(), params=None,
                  data={"fingerprint": "abc"})
    student = load_config(overrides=overrides) if overrides else config()
    with pytest.raises(CheckpointError, match=re.escape(named) + ".*may be the student's "
                                              "validation or test clips"):
        check_teacher(teacher, student, derived(), fingerprint)


def test_a_run_distils_from_a_finished_run_and_refuses_one_of_other_features(
        wav_folder, tmp_path):
    from test_evaluate import prepared, run  # pylint: disable=import-outside-toplevel

    data = prepared(wav_folder)
    run(wav_folder, tmp_path / "teacher", data, **{"train.seed": 10})
    _, result = run(wav_folder, tmp_path / "student", data,
                    **{"train.distill_from": tmp_path / "teacher"})
    assert result["config"]["train"]["distill_from"] == str(tmp_path / "teacher")
    assert np.all(np.isfinite([row["train_loss"] for row in result["history"]]))
    with pytest.raises(CheckpointError, match="teacher: cannot teach .*normalisation"):
        run(wav_folder, tmp_path / "other", **{"train.distill_from": tmp_path / "teacher",
                                              "features.n_mfcc": 10})


def test_teacher_config_is_the_run_in_float_with_its_own_seeds():
    student = load_config(overrides=["quant.mode=qat", "quant.init_from=runs/f", "train.seed=3",
                                     "train.seeds=2", "train.teacher_seeds=3",
                                     "train.distill_weight=0.9",
                                     "train.distill_source=originals"])
    teacher = teacher_config(student)
    assert teacher.train.distill_source == "rows"  # it distils from nothing
    assert teacher.quant.mode == "float" and teacher.quant.init_from is None
    assert (teacher.train.seed, teacher.train.seeds) == (3 + TEACHER_SEED_OFFSET, 3)
    assert teacher.train.teacher_seeds == 0 and teacher.train.distill_from is None
    assert (teacher.features, teacher.model, teacher.augment, teacher.train.epochs) == \
        (student.features, student.model, student.augment, student.train.epochs)


def test_a_teacher_stage_trains_the_teacher_then_distils_as_from_that_folder(
        wav_folder, tmp_path, no_plots):
    """train.teacher_seeds = distill_from a float run of the teacher's seeds, in <run>/teacher;
    the QAT stage fine-tuned from it learns from the same teacher."""
    from test_evaluate import prepared, run  # pylint: disable=import-outside-toplevel

    data = prepared(wav_folder)
    stage = {"train.teacher_seeds": 2, "train.distill_weight": 0.9, "train.distill_temperature": 3}
    _, result = run(wav_folder, tmp_path / "staged", data, **stage)
    teacher = read_json(tmp_path / "staged" / "teacher" / "run.json")
    assert teacher["derived"]["seeds"] == [TEACHER_SEED_OFFSET, TEACHER_SEED_OFFSET + 1]
    assert teacher["config"]["quant"]["mode"] == "float"
    assert result["config"]["train"]["teacher_seeds"] == 2
    taught_at = (tmp_path / "staged" / "teacher" / "metrics.json").stat().st_mtime_ns

    _, explicit = run(wav_folder, tmp_path / "explicit", data,
                      **{"train.distill_from": tmp_path / "staged" / "teacher",
                         "train.distill_weight": 0.9, "train.distill_temperature": 3})
    _, plain = run(wav_folder, tmp_path / "plain", data)
    losses = [[row["train_loss"] for row in r["history"]] for r in (result, explicit, plain)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)  # the same training
    assert not np.allclose(losses[0], losses[2])  # and not the undistilled one

    qat = {**stage, "quant.mode": "qat", "quant.init_from": tmp_path / "staged",
           "train.epochs": 1}
    run(wav_folder, tmp_path / "qat", data, **qat)
    assert not (tmp_path / "qat" / "teacher").exists()  # the float run's teacher taught it
    assert (tmp_path / "staged" / "teacher" / "metrics.json").stat().st_mtime_ns == taught_at
    with pytest.raises(CheckpointError, match=r"plain[/\\]teacher: no finished teacher"):
        run(wav_folder, tmp_path / "qat2", data,
            **{**qat, "quant.init_from": tmp_path / "plain"})


def test_original_rows_map_each_copy_to_its_clip_and_refuse_another_layout():
    data = split()
    names = ("a", "b", "c") * 3
    three_blocks = dataclasses.replace(data, names=names)  # 3 clips, then 2 copies of them
    np.testing.assert_array_equal(original_rows(dataclasses.replace(
        three_blocks, labels=three_blocks.labels[:9]), 2), [0, 1, 2, 0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="24 training rows are not 5 blocks"):
        original_rows(data, 4)  # 24 rows do not divide into 5 blocks
    with pytest.raises(ValueError, match="not 2 blocks of the same clips"):
        original_rows(data, 1)  # 12 + 12 rows, but the names differ


def test_teacher_reads_each_copys_original_clip_with_distill_source_originals(
        wav_folder, tmp_path, no_plots):
    """Copies get their original clip's targets (not their own), originals keep theirs."""
    from test_evaluate import run, run_overrides  # pylint: disable=import-outside-toplevel
    from lstmq.pipeline import prepare_data  # pylint: disable=import-outside-toplevel
    from lstmq.runner import derive  # pylint: disable=import-outside-toplevel

    copies = {"augment.copies": 2, "augment.noise_snr_db": 5, "augment.noise_snr_db_max": 10}
    student = load_config(overrides=run_overrides(wav_folder, **copies))
    data = prepare_data(student, progress=False)
    run(wav_folder, tmp_path / "teacher", data, **copies)
    n = len(data.train) // 3
    derived_ = derive(student, data)
    as_stored = teacher_targets(tmp_path / "teacher", student, derived_, data.train,
                                data.info.fingerprint)
    originals = teacher_targets(tmp_path / "teacher", dataclasses.replace(
        student, train=dataclasses.replace(student.train, distill_source="originals")),
        derived_, data.train, data.info.fingerprint)
    np.testing.assert_allclose(originals[:n], as_stored[:n], rtol=1e-6, atol=1e-7)
    for block in (1, 2):
        np.testing.assert_array_equal(originals[block * n:(block + 1) * n], originals[:n])
    assert not np.allclose(as_stored[n:], np.tile(as_stored[:n], (2, 1)), atol=1e-3)

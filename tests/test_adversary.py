"""Speaker-adversarial training: the reversal layer, the step's gradients, the Trainer."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmq.adversary import SUMMARY, SpeakerAdversary, reverse_gradient, speaker_indices
from lstmq.config import ConfigError, load_config
from lstmq.model import LSTMClassifier
from lstmq.pipeline import SplitArrays
from lstmq.gradients import cross_entropy, summed_gradients
from lstmq.train import Trainer, create_train_states

FEATURES, CLASSES, HIDDEN, TIME, N = 4, 3, 8, 10, 24
MODEL = LSTMClassifier(HIDDEN, 1, CLASSES, readout="mean")


def split_with_speakers(speakers: list[str]) -> SplitArrays:
    rng = np.random.default_rng(3)
    return SplitArrays(x=rng.standard_normal((N, TIME, FEATURES)).astype(np.float32),
                       lengths=rng.integers(3, TIME + 1, N).astype(np.int32),
                       labels=(np.arange(N) % CLASSES).astype(np.int32),
                       speakers=np.array([speakers[i % len(speakers)] for i in range(N)]),
                       names=tuple(map(str, range(N))))


def config(**train):
    return load_config(overrides=[f"model.hidden={HIDDEN}", "model.dropout=0.0",
                                  "model.readout=mean", "train.batch_size=8",
                                  f"train.bucket_frames={TIME}",
                                  *[f"train.{k}={v}" for k, v in train.items()]])


def test_reverse_gradient_is_identity_forward_and_negated_scaled_backward():
    x = jnp.array([1.0, -2.0, 3.0])
    assert np.array_equal(reverse_gradient(x, jnp.float32(0.5)), x)
    grad = jax.grad(lambda v: jnp.sum(reverse_gradient(v, jnp.float32(0.5)) * jnp.arange(3.0)))(x)
    np.testing.assert_allclose(grad, [-0.0, -0.5, -1.0])


def test_speaker_indices_are_sorted_names_and_positions():
    names, index = speaker_indices(np.array(["theo", "ana", "theo", "bo"]))
    assert names == ("ana", "bo", "theo")
    assert index.tolist() == [2, 0, 2, 1] and index.dtype == np.int32


def test_the_lstm_gets_its_own_gradient_minus_weight_times_the_heads():
    """Classifier gradient = d(digit loss) - weight * d(speaker loss) through the summary;
    the head gets the plain gradient of the speaker loss."""
    split = split_with_speakers(["a", "b", "c"])
    trainer = Trainer(config(speaker_adversary=0.7), MODEL, split)
    states = create_train_states(MODEL, trainer.tx, 0, 1, FEATURES, adversary=trainer.adversary)
    state = jax.tree_util.tree_map(lambda a: a[0], states)
    x, lengths, labels = map(jnp.asarray, (split.x, split.lengths, split.labels))
    speakers = jnp.asarray(speaker_indices(split.speakers)[1])
    weight = jnp.ones(N, jnp.float32)
    key = jax.random.PRNGKey(0)
    (grads, head_grads), metrics = summed_gradients(state, key, x, lengths, labels, weight,
                                                    speakers=speakers, reversal=0.7)

    head = state.adversary

    def digit_loss(params):
        return cross_entropy(MODEL.apply({"params": params}, x, lengths), labels, weight, 0.0)

    def head_loss(params, head_params):
        _, sown = MODEL.apply({"params": params}, x, lengths, mutable=["intermediates"])
        logits = head.apply_fn({"params": head_params}, sown["intermediates"][SUMMARY][0])
        return cross_entropy(logits, speakers, weight, 0.0)

    plain = jax.grad(digit_loss)(state.params)
    through, head_want = jax.grad(head_loss, argnums=(0, 1))(state.params, head.params)
    want = jax.tree_util.tree_map(lambda p, s: p - 0.7 * s, plain, through)
    for got, expected in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-6)
    for got, expected in zip(jax.tree_util.tree_leaves(head_grads),
                             jax.tree_util.tree_leaves(head_want)):
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-6)
    assert float(metrics["loss"]) == pytest.approx(float(digit_loss(state.params)), rel=1e-5)
    assert 0 <= float(metrics["speaker_correct"]) <= N


def test_trainer_trains_the_head_and_keeps_it_out_of_the_classifier():
    split = split_with_speakers(["a", "b"])
    trainer = Trainer(config(speaker_adversary=0.5, epochs=3, seeds=2), MODEL, split)
    states = create_train_states(MODEL, trainer.tx, 0, 2, FEATURES, adversary=trainer.adversary)
    before = jax.tree_util.tree_map(jnp.copy, states.adversary.params)
    for epoch in range(3):
        states, metrics = trainer.run_epoch(states, epoch)
    assert metrics["speaker_accuracy"].shape == (2,)
    assert np.all((metrics["speaker_accuracy"] >= 0) & (metrics["speaker_accuracy"] <= 1))
    assert not np.allclose(before["speaker"]["kernel"], states.adversary.params["speaker"]["kernel"])
    plain = create_train_states(MODEL, trainer.tx, 0, 2, FEATURES)
    assert (jax.tree_util.tree_structure(states.eval_params())
            == jax.tree_util.tree_structure(plain.params))  # nothing of the head to export


def test_without_the_adversary_nothing_changes():
    split = split_with_speakers(["a", "b"])
    trainer = Trainer(config(), MODEL, split)
    assert trainer.adversary is None
    states = create_train_states(MODEL, trainer.tx, 0, 1, FEATURES)
    states, metrics = trainer.run_epoch(states, 0)
    assert states.adversary is None and "speaker_accuracy" not in metrics


def test_the_adversary_refuses_one_speaker_mixup_and_sam():
    with pytest.raises(ValueError, match="at least 2 training speakers"):
        Trainer(config(speaker_adversary=0.5), MODEL, split_with_speakers(["only"]))
    both = dataclasses.replace(config(speaker_adversary=0.5),
                               augment=dataclasses.replace(config().augment, mixup=0.2))
    with pytest.raises(ValueError, match="mixup"):
        Trainer(both, MODEL, split_with_speakers(["a", "b"]))
    with pytest.raises(ValueError, match="sam_rho cannot be combined"):
        Trainer(config(speaker_adversary=0.5, sam_rho=0.05), MODEL, split_with_speakers(["a", "b"]))


def test_a_negative_weight_is_a_config_error():
    with pytest.raises(ConfigError, match="speaker_adversary"):
        config(speaker_adversary=-0.1)


def test_the_head_reads_a_summary_of_the_hidden_size():
    logits, _ = SpeakerAdversary(5).init_with_output(jax.random.PRNGKey(0),
                                                     jnp.zeros((2, HIDDEN)))
    assert logits.shape == (2, 5)

"""Speaker-adversarial training: a training-only head that tries to name the speaker.

A small MLP reads the classifier's clip summary (the state the readout sees, before its
dropout) through a gradient-reversal layer (Ganin & Lempitsky, 2015): the head learns to
tell the training speakers apart, while the LSTM receives ``-weight`` times that gradient,
pushing it towards a summary from which the speaker cannot be read. The head is never part
of the classifier's parameters: it does not count in the budget, is not exported, and is
dropped after training.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

SUMMARY = "summary"  # the name the classifier sows its clip summary under ("intermediates")
HIDDEN_UNITS = 64  # the head's hidden layer


@jax.custom_vjp
def reverse_gradient(x: jax.Array, weight: jax.Array) -> jax.Array:
    """Identity forward; the backward multiplies the cotangent by ``-weight``."""
    return x


def _reverse_fwd(x, weight):
    return x, weight


def _reverse_bwd(weight, cotangent):
    return -weight * cotangent, jnp.zeros_like(weight)


reverse_gradient.defvjp(_reverse_fwd, _reverse_bwd)


class SpeakerAdversary(nn.Module):
    """Speaker logits ``<float32>[batch, speakers]`` from a summary ``[batch, hidden]``."""

    speakers: int

    @nn.compact
    def __call__(self, summary: jax.Array) -> jax.Array:
        hidden = nn.relu(nn.Dense(HIDDEN_UNITS, name="hidden")(summary))
        return nn.Dense(self.speakers, name="speaker")(hidden)


def speaker_indices(speakers: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """The distinct speakers (sorted) and each clip's index among them (``<int32>[n]``)."""
    names, index = np.unique(np.asarray(speakers).astype(str), return_inverse=True)
    return tuple(names.tolist()), index.astype(np.int32)


def make_adversary_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Plain Adam for the head (no schedule: it must keep up with the moving summary)."""
    return optax.adam(learning_rate)


def speaker_loss(adversary_apply, adversary_params, summary: jax.Array, speakers: jax.Array,
                 weight: jax.Array, reversal: float) -> tuple[jax.Array, jax.Array]:
    """(weighted sum of the head's cross-entropy, weighted count of speakers it named right)
    for ``summary`` seen through the gradient-reversal layer (``reversal`` = its weight)."""
    reversed_summary = reverse_gradient(summary, jnp.float32(reversal))
    logits = adversary_apply({"params": adversary_params}, reversed_summary)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, speakers)
    correct = jnp.sum(jnp.where(jnp.argmax(logits, -1) == speakers, weight, 0.0))
    return jnp.sum(losses * weight), correct

"""The loss and its gradient for one seed on one batch: cross-entropy summed over weighted
clips, with the options training composes (augmentation, mixup, distillation, a
speaker-adversarial head, sharpness-aware minimisation). Pure functions of a train state,
vmapped over seeds and jitted by ``lstmq.train``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import optax

from lstmq.adversary import SUMMARY, speaker_loss
from lstmq.batch_augment import mixup
from lstmq.distill import distillation_loss

if TYPE_CHECKING:
    from lstmq.train import TrainState


def cross_entropy(logits: jax.Array, labels: jax.Array, weight: jax.Array,
                  label_smoothing: float) -> jax.Array:
    """Sum of per-example losses (weighted); divide by the weight sum on the host."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing) \
        if label_smoothing > 0 else jax.nn.one_hot(labels, logits.shape[-1])
    return jnp.sum(optax.softmax_cross_entropy(logits, targets) * weight)


def summed_gradients(state: TrainState, key: jax.Array, x: jax.Array, lengths: jax.Array,
                     labels: jax.Array, weight: jax.Array, label_smoothing: float = 0.0,
                     augment: Callable | None = None,
                     mixup_alpha: float = 0.0, speakers: jax.Array | None = None,
                     reversal: float = 0.0, soft: jax.Array | None = None,
                     distill_weight: float = 0.0, temperature: float = 1.0,
                     sam_rho: float = 0.0) -> tuple[Any, dict[str, jax.Array]]:
    """Gradient of the weighted loss sum of one seed on a batch, and the batch's metric sums.

    ``key`` drives dropout; ``fold_in(key, 1)`` drives augmentation, ``fold_in(key, 2)``
    mixup (``mixup_alpha > 0``: clips and their losses mixed in pairs,
    ``lstmq.batch_augment.mixup``).
    With a speaker-adversarial head (``state.adversary``; ``speakers`` the clips' speaker
    indices, ``reversal`` the gradient-reversal weight) the gradient is the pair
    (classifier's, head's), the head's loss is added to the sum, and the metrics also count
    the speakers it named right (``speaker_correct``). With a teacher's soft targets
    (``soft``, ``lstmq.distill``) the loss is ``(1 - distill_weight)`` times the hard one plus
    ``distill_weight`` times the distillation loss at ``temperature``. With ``sam_rho > 0``
    (sharpness-aware minimisation) the gradient is taken again, with the same dropout and
    augmentation, at the parameters moved by ``sam_rho`` along the first gradient's
    direction; the metrics stay those of the unmoved parameters.
    """
    if sam_rho > 0 and state.adversary is not None:
        raise ValueError("train.sam_rho cannot be combined with train.speaker_adversary")
    if soft is not None and (mixup_alpha > 0 or state.adversary is not None):
        raise ValueError("train.distill_from cannot be combined with augment.mixup or "
                         "train.speaker_adversary")
    if augment is not None:
        x = augment(jax.random.fold_in(key, 1), x, lengths)
    if state.adversary is not None:
        if mixup_alpha > 0:
            raise ValueError("train.speaker_adversary cannot be combined with augment.mixup")
        return _adversarial_gradients(state, key, x, lengths, labels, weight, label_smoothing,
                                      speakers, reversal)
    partner, lam = None, None
    if mixup_alpha > 0:
        x, lengths, partner, lam = mixup(jax.random.fold_in(key, 2), x, lengths, weight,
                                        mixup_alpha)

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x, lengths, train=True, rngs={"dropout": key})
        if partner is None:
            loss = cross_entropy(logits, labels, weight, label_smoothing)
            if soft is not None:
                loss = (1.0 - distill_weight) * loss + distill_weight * distillation_loss(
                    logits, soft, weight, temperature)
            return loss, logits
        loss = (cross_entropy(logits, labels, weight * lam, label_smoothing)
                + cross_entropy(logits, labels[partner], weight * (1.0 - lam), label_smoothing))
        return loss, logits

    (loss_sum, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if sam_rho > 0:
        grads = sharpness_aware_gradients(loss_fn, state.params, grads, sam_rho)
    correct = jnp.sum(jnp.where(jnp.argmax(logits, -1) == labels, weight, 0.0))
    return grads, {"loss": loss_sum, "correct": correct, "count": weight.sum()}


def sharpness_aware_gradients(loss_fn: Callable, params: Any, grads: Any, rho: float) -> Any:
    """SAM's gradient: ``loss_fn``'s (``(loss, aux)``) at ``params + rho g / |g|``, ``g`` =
    ``grads`` at ``params`` (a zero gradient leaves the parameters where they are)."""
    norm = optax.tree.norm(grads)
    scale = rho / jnp.where(norm > 0, norm, 1.0)
    moved = jax.tree_util.tree_map(lambda p, g: p + scale * g, params, grads)
    return jax.grad(lambda p: loss_fn(p)[0])(moved)


def _adversarial_gradients(state: TrainState, key: jax.Array, x: jax.Array,
                          lengths: jax.Array, labels: jax.Array, weight: jax.Array,
                          label_smoothing: float, speakers: jax.Array,
                          reversal: float) -> tuple[Any, dict[str, jax.Array]]:
    """``summed_gradients`` with the speaker-adversarial head (see ``lstmq.adversary``), on
    clips already augmented."""
    head = state.adversary

    def loss_fn(params, head_params):
        logits, sown = state.apply_fn({"params": params}, x, lengths, train=True,
                                      rngs={"dropout": key}, mutable=["intermediates"])
        summary = sown["intermediates"][SUMMARY][0]
        head_loss, head_correct = speaker_loss(head.apply_fn, head_params, summary, speakers,
                                               weight, reversal)
        loss = cross_entropy(logits, labels, weight, label_smoothing)
        return loss + head_loss, (logits, loss, head_correct)

    (_, (logits, loss_sum, head_correct)), grads = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(state.params, head.params)
    correct = jnp.sum(jnp.where(jnp.argmax(logits, -1) == labels, weight, 0.0))
    return grads, {"loss": loss_sum, "correct": correct, "count": weight.sum(),
                   "speaker_correct": head_correct}

"""Augmentation inside the jitted train step, on a batch of features: SpecAugment masks and
mixup (``augment.freq_mask``, ``time_mask``, ``mixup``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lstmq.config import AugmentConfig


def spec_augment(key: jax.Array, x: jax.Array, lengths: jax.Array, freq_mask: int,
                 time_mask: int) -> jax.Array:
    """Zero one random band of <= ``freq_mask`` coefficients and one span of <= ``time_mask``
    frames (within each clip's length) per clip. x: <float32>[batch, time, features]."""
    batch, frames, width = x.shape
    k1, k2, k3, k4 = jax.random.split(key, 4)
    f_size = jax.random.randint(k1, (batch, 1), 0, freq_mask + 1)
    f_start = jax.random.randint(k2, (batch, 1), 0, width)
    t_size = jax.random.randint(k3, (batch, 1), 0, time_mask + 1)
    t_start = (jax.random.uniform(k4, (batch, 1)) * jnp.maximum(lengths[:, None] - t_size, 1)
               ).astype(jnp.int32)
    f = jnp.arange(width)[None, :]
    t = jnp.arange(frames)[None, :]
    keep_f = ~((f >= f_start) & (f < f_start + f_size))  # [batch, width]
    keep_t = ~((t >= t_start) & (t < t_start + t_size))  # [batch, frames]
    return x * (keep_f[:, None, :] & keep_t[:, :, None]).astype(x.dtype)


def make_spec_augment(cfg: AugmentConfig):
    """The train-step hook ``augment(key, x, lengths)``, or None when masking is off."""
    if cfg.freq_mask <= 0 and cfg.time_mask <= 0:
        return None
    return lambda key, x, lengths: spec_augment(key, x, lengths, cfg.freq_mask, cfg.time_mask)


def mixup(key: jax.Array, x: jax.Array, lengths: jax.Array, weight: jax.Array, alpha: float
          ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Mix each clip with another clip of the batch (mixup): ``lam * x + (1 - lam) * x[partner]``.

    ``lam`` is drawn from Beta(alpha, alpha) per clip and folded into [0.5, 1], so a clip's
    own label keeps the larger weight (the accuracy metric reads it); a partner of weight 0
    (a padding entry) is not mixed in (``lam = 1``). The mixed clip lasts as long as the
    longer of the two. Returns (mixed x, lengths, partner <int32>[batch], lam <float32>[batch]);
    the loss weighs the two labels by ``lam`` and ``1 - lam``.
    """
    batch = x.shape[0]
    k_lam, k_partner = jax.random.split(key)
    lam = jax.random.beta(k_lam, alpha, alpha, (batch,), dtype=x.dtype)
    partner = jax.random.permutation(k_partner, batch).astype(jnp.int32)
    lam = jnp.where(weight[partner] > 0, jnp.maximum(lam, 1.0 - lam), 1.0)
    mixed = lam[:, None, None] * x + (1.0 - lam[:, None, None]) * x[partner]
    longer = jnp.where(lam < 1.0, jnp.maximum(lengths, lengths[partner]), lengths)
    return mixed, longer, partner, lam

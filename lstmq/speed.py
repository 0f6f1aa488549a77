"""Speed votes: each clip is also scored played faster and slower, and the logits are summed.

A voice the model never heard is often read right when the clip is played a little faster or
slower (tempo and pitch together, like a tape): ``features.vote_speeds`` scores each clip at
speed 1 and at each listed speed and sums the logits (``lstmq.paths.predict_path``). The
bytes of the model do not change; the device runs the front end and the LSTM once per speed.

The resampler is integer arithmetic on int16 PCM, the same in NumPy (``play_at_speed``, one
clip: the data pipeline), in ``jnp`` on int16/int32 only (``play_at_speed_batch``: the device
path ``lstmq.device.pcm_to_logits``, audited float-free), in a plain per-sample reference
(``play_at_speed_ref``) and in the C runtime:

- the step between output samples is ``round(speed * 2^16)`` input samples (Q16);
- output sample k sits at ``k * step``: index ``i = (k * step) >> 16``, weight
  ``w = ((k * step) & 0xFFFF) >> 1`` (Q15);
- ``y[k] = x[i] + rsr((x[i + 1] - x[i]) * w, 15)`` (half up; ``x[i + 1]`` is ``x[i]`` past
  the end), which lies between ``x[i]`` and ``x[i + 1]``: no saturation, and the product
  fits int32 (``65535 * 32767 < 2^31``);
- one output sample for every position before the clip's end: ``(samples * 2^16 - 1) // step
  + 1`` of them.
"""

from __future__ import annotations

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from lstmq.fixedpoint import rounding_shift_right

STEP_BITS = 16
MIN_SPEED, MAX_SPEED = 0.5, 2.0


def speed_step(speed: float) -> int:
    """The Q16 step between output samples for ``speed`` (in [0.5, 2])."""
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed {speed:g}: must be in [{MIN_SPEED:g}, {MAX_SPEED:g}]")
    return int(round(speed * (1 << STEP_BITS)))


def output_length(samples: int, step: int) -> int:
    """Samples of a clip of ``samples`` played with ``step`` (0 stays 0)."""
    return 0 if samples == 0 else (samples * (1 << STEP_BITS) - 1) // step + 1


def play_at_speed(pcm: np.ndarray, step: int) -> np.ndarray:
    """``<int16>[m]``: int16 PCM played with the Q16 ``step`` (module docstring)."""
    pcm = np.asarray(pcm)
    if pcm.dtype != np.int16 or pcm.ndim != 1:
        raise ValueError(f"expected int16 PCM [samples], got {pcm.dtype} {pcm.shape}")
    count = output_length(len(pcm), step)
    position = np.arange(count, dtype=np.int64) * step
    index = position >> STEP_BITS
    weight = ((position & 0xFFFF) >> 1).astype(np.int32)
    here = pcm.astype(np.int32)[index]
    after = pcm.astype(np.int32)[np.minimum(index + 1, len(pcm) - 1)]
    product = (after - here) * weight
    return (here + ((product + (1 << 14)) >> 15)).astype(np.int16)


def play_at_speed_batch(pcm: jax.Array, lengths: jax.Array, step: int,
                        width: int) -> tuple[jax.Array, jax.Array]:
    """``(<int16>[batch, width], <int32>[batch])``: each clip of ``pcm <int16>[batch, S]``
    (``lengths`` samples, zero after) played with the Q16 ``step`` (static), zero after its new
    length, and the new lengths; ``width`` (static, < 2^24) must hold the longest result.

    int32 only: ``k * step`` would overflow, so ``k = kh 2^14 + kl`` and the fraction of
    ``k * (step & 0xFFFF)`` is gathered from ``kl (step & 0xFFFF) < 2^30`` and ``kh (step &
    0xFFFF)``'s low two bits."""
    if not 0 < width < 1 << 24:
        raise ValueError(f"width {width}: must be in [1, 2^24)")
    whole, part = step >> STEP_BITS, step & 0xFFFF
    k = jnp.arange(width, dtype=jnp.int32)
    high = (k >> 14) * part  # k * part = high * 2^14 + (k & 0x3FFF) * part
    rest = ((high & 3) << 14) + (k & 0x3FFF) * part  # < 2^31
    index = k * whole + (high >> 2) + (rest >> STEP_BITS)
    weight = (rest & 0xFFFF) >> 1
    lengths = lengths.astype(jnp.int32)
    last = pcm.shape[1] - 1
    here = jnp.take(pcm, jnp.minimum(index, last), axis=1).astype(jnp.int32)
    after = jnp.take(pcm, jnp.minimum(index + 1, last), axis=1).astype(jnp.int32)
    after = jnp.where(index[None, :] + 1 < lengths[:, None], after, here)
    played = here + rounding_shift_right((after - here) * weight[None, :], 15)
    inside = index[None, :] < lengths[:, None]
    return (jnp.where(inside, played, 0).astype(jnp.int16),
            jnp.sum(inside, axis=1, dtype=jnp.int32))


def play_at_speed_ref(pcm: np.ndarray, step: int) -> np.ndarray:
    """Reference of ``play_at_speed``, one sample at a time as the C runtime walks the clip
    (index and fraction carried, no 64-bit product)."""
    x = [int(v) for v in pcm]
    out = []
    index = fraction = 0
    while index < len(x):
        nxt = x[index + 1] if index + 1 < len(x) else x[index]
        delta = (nxt - x[index]) * (fraction >> 1)
        out.append(x[index] + ((delta + (1 << 14)) >> 15))
        fraction += step & 0xFFFF
        index += (step >> STEP_BITS) + (fraction >> STEP_BITS)
        fraction &= 0xFFFF
    return np.array(out, np.int16)


def vote_datasets(dataset, speeds) -> list:
    """One copy of ``dataset`` per speed in ``speeds``: each clip as int16 PCM (the device's
    ``round(x * 32768)``) played at that speed, back in [-1, 1], with a fingerprint of its own."""
    from lstmq.frontend import pcm_int16  # pylint: disable=import-outside-toplevel

    copies = []
    for speed in speeds:
        step = speed_step(speed)
        audio = tuple(play_at_speed(pcm_int16(clip), step).astype(np.float32) / 32768.0
                      for clip in dataset.audio)
        spec = f"{dataset.fingerprint}:speed-vote:{step}"
        copies.append(dataclasses.replace(
            dataset, audio=audio, fingerprint=hashlib.sha256(spec.encode()).hexdigest(),
            source=f"{dataset.source}, played at x{speed:g}"))
    return copies

"""What a device runs, PCM to label, as one integer function, and where its parts come from.

``pcm_to_logits`` composes the integer front end (``lstmq.frontend``), its int8
quantization and the integer LSTM (``lstmq.integer.predict_int``); ``audit_float_free``
passes on it. ``DeviceModel`` gathers the three parts of one seed of a run trained with
``features.frontend: integer``; the C runtime (``lstmq.c_export``) is generated from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lstmq.frontend import (FeatureQuantizer, FrontendTables, as_pcm, frame_count, frames_bucket,
                            integer_mfcc, make_tables, quantize_features)
from lstmq.integer import IntegerModel, predict_int
from lstmq.speed import STEP_BITS, output_length, play_at_speed_batch, speed_step


class DeviceError(ValueError):
    """A run whose model a device cannot run from PCM (no integer front end)."""


@dataclasses.dataclass(frozen=True, eq=False)
class DeviceModel:
    """One seed's integer model with its integer front end and feature quantizer."""

    model: IntegerModel
    tables: FrontendTables
    quantizer: FeatureQuantizer
    classes: tuple[str, ...]
    keep_frames: int | None  # features.max_frames: later frames are not read
    min_samples: int  # clips are padded with silence to this many samples
    vote_steps: tuple[int, ...] = ()  # Q16 steps of features.vote_speeds (lstmq.speed)

    @property
    def steps(self) -> tuple[int, ...]:
        """The Q16 step of every pass over a clip: speed 1, then each speed vote."""
        return (1 << STEP_BITS,) + self.vote_steps

    def played_samples(self, samples: int) -> int:
        """The most samples any pass over a clip of ``samples`` reads."""
        return max(output_length(samples, step) for step in self.steps)

    def frames_of(self, samples: int) -> int:
        """The most frames any pass over a clip of ``samples`` computes."""
        return frame_count(max(self.played_samples(samples), self.min_samples), self.tables.hop)

    def max_samples(self, max_frames: int) -> int:
        """The longest clip whose every pass fits ``max_frames`` frames."""
        low, high = 0, max_frames * self.tables.hop  # frames_of(high) > max_frames
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if self.frames_of(middle) <= max_frames else (low, middle)
        return low


def tables_digest(tables: FrontendTables) -> str:
    """sha256 of every front-end table and constant: a run records it, exports check it."""
    digest = hashlib.sha256()
    for name, array in tables.arrays().items():
        digest.update(name.encode() + np.ascontiguousarray(array).tobytes())
    constants = (tables.n_fft, tables.hop, tables.mel_frac_bits, tables.dct_frac_bits,
                 tables.floor, tables.utterance)
    if tables.speech is not None:  # digests of runs recorded before the option stay valid
        constants += (tables.speech,)
    if tables.noise_percentile is not None:  # the gain table itself is one of the arrays
        constants += (("noise", tables.noise_percentile),)
    digest.update(repr(constants).encode())
    return digest.hexdigest()


def device_model(run, seed_index: int = 0) -> DeviceModel:
    """The device model of one seed of a run (``lstmq.runs.Run``) with the integer front end.

    Raises:
      DeviceError: the run uses the float front end, or its tables no longer match.
    """
    from lstmq.paths import integer_models  # pylint: disable=import-outside-toplevel

    features = run.config.features
    if features.frontend != "integer":
        raise DeviceError(f"{run.directory}: trained with features.frontend={features.frontend!r}; "
                          "the PCM-to-label runtime needs features.frontend=integer")
    tables = make_tables(features, run.derived.sample_rate)
    recorded = run.derived.frontend_digest
    if recorded and recorded != tables_digest(tables):
        raise DeviceError(f"{run.directory}: the front-end tables built here differ from the "
                          "ones it was trained with (another librosa version?)")
    needed = max((features.min_frames - 1) * tables.hop, 1)
    model = integer_models(run)[seed_index]
    steps = tuple(speed_step(speed) for speed in features.vote_speeds)
    check_vote_sum(model, 1 + len(steps), str(run.directory))
    return DeviceModel(model, tables, run.derived.normalizer.quantizer, run.classes,
                       features.max_frames, needed, steps)


def check_vote_sum(model: IntegerModel, passes: int, where: str) -> None:
    """Raise DeviceError unless the int32 logits of ``passes`` passes over a clip add up
    within int32 whatever the clip (the readout's largest possible logit, times ``passes``)."""
    kernel = np.abs(np.asarray(model["readout/kernel"], np.int64))
    largest = int((127 * kernel.sum(0) + np.abs(np.asarray(model["readout/bias"], np.int64))).max())
    if passes * largest >= 2**31:
        raise DeviceError(f"{where}: {passes} speed-vote passes could sum logits up to "
                          f"{passes * largest:,}, beyond int32; use fewer features.vote_speeds")


def pcm_to_logits(device: DeviceModel, pcm: jax.Array, lengths: jax.Array,
                  frames: int, step: int = 1 << STEP_BITS) -> jax.Array:
    """<int16>[batch, samples] PCM (zero after each clip's ``lengths``) to <int32> logits of
    one pass: the clips played with the Q16 ``step`` (static; a speed vote, or 1 << 16 as
    recorded).

    ``frames`` (static) is at least the frame count of the longest clip's pass.
    """
    if step != 1 << STEP_BITS:
        pcm, lengths = play_at_speed_batch(pcm, lengths, step, frames * device.tables.hop)
    lengths = jnp.maximum(lengths.astype(jnp.int32), device.min_samples)
    values = integer_mfcc(device.tables, pcm, lengths, frames)
    q = quantize_features(device.quantizer, values)
    counts = 1 + lengths // device.tables.hop
    if device.keep_frames:
        counts = jnp.minimum(counts, device.keep_frames)
    return predict_int(device.model, q, counts)


def batch_pcm(clips: list[np.ndarray], device: DeviceModel) -> tuple[np.ndarray, np.ndarray, int]:
    """(<int16>[n, samples], <int32>[n] lengths, frames) of float or int16 clips."""
    pcm = [as_pcm(c) for c in clips]
    frames = max(device.frames_of(p.size) for p in pcm)  # of every pass
    width = max(frames * device.tables.hop, max(p.size for p in pcm))
    out = np.zeros((len(pcm), width), np.int16)
    for row, p in enumerate(pcm):
        out[row, :p.size] = p
    return out, np.array([p.size for p in pcm], np.int32), frames


def jnp_logits(device: DeviceModel, clips: list[np.ndarray], batch: int = 64) -> np.ndarray:
    """<int32>[n, classes] logits of clips through ``pcm_to_logits``, in batches of similar
    length; with speed votes, the sum over every pass (each clip played at its step by
    ``lstmq.speed.play_at_speed_batch``), as the C runtime adds them."""
    clips = [as_pcm(c) for c in clips]  # once
    total = np.zeros((len(clips), len(device.classes)), np.int64)
    for step in device.steps:
        total += _jnp_pass(device, clips, batch, step)
    return total.astype(np.int32)  # within int32: check_vote_sum


def _jnp_pass(device: DeviceModel, clips: list[np.ndarray], batch: int, step: int) -> np.ndarray:
    order = np.argsort([np.asarray(c).size for c in clips], kind="stable")
    out = np.zeros((len(clips), len(device.classes)), np.int32)
    run = jax.jit(lambda p, l, f: pcm_to_logits(device, p, l, f, step), static_argnums=2)
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        pcm, lengths, frames = batch_pcm([clips[i] for i in idx], device)
        frames = frames_bucket(frames)
        if pcm.shape[1] < frames * device.tables.hop:
            pcm = np.pad(pcm, ((0, 0), (0, frames * device.tables.hop - pcm.shape[1])))
        out[idx] = np.asarray(run(pcm, lengths, frames))
    return out


def save_golden(path: Path, clips: list[np.ndarray], logits: np.ndarray) -> None:
    """Golden vectors as .npz: int16 PCM of each clip and the int32 logits it must give."""
    from lstmq.io import atomic_write_bytes  # pylint: disable=import-outside-toplevel
    import io  # pylint: disable=import-outside-toplevel

    buffer = io.BytesIO()
    pcm = [as_pcm(c) for c in clips]
    np.savez(buffer, offsets=np.cumsum([0] + [p.size for p in pcm]).astype(np.int64),
             pcm=np.concatenate(pcm), logits=logits.astype(np.int32))
    atomic_write_bytes(path, buffer.getvalue())

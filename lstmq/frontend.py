"""Integer front end: int16 PCM to MFCC-like features in integer arithmetic only.

``features.frontend: integer`` computes every clip's features with ``integer_mfcc`` (jnp,
int8/int16/int32, batched), the same function the device runs (the C runtime is generated
from the same tables, ``lstmq.c_runtime``; its NumPy reference is ``lstmq.frontend_reference``),
so training sees exactly what the device computes. Steps per frame (rules in docs/numerics.md, "Front end"):

0. with ``features.preemphasis`` a: ``x[n] - rsr(A x[n-1], 15)`` over the clip's samples,
   ``A = round(a 2^15)``, ``x[-1] = 0`` (int32, |value| < 2^16);
1. frame t: N = n_fft samples of the clip padded with N/2 zeros at both ends, from t * hop;
   times a periodic Hann window of ``window`` samples in Q15 (centred), ``rsr(x w, 15)``;
2. block scaling: shift the frame so its peak lies in [2^13, 2^14) (``dsp.block_shift``);
3. real FFT (``dsp.rfft_q15``), magnitudes ``isqrt(re^2 + im^2)``;
4. mel filterbank: the float front end's triangles (``features.mel_norm``: slaney divides
   each by its width) scaled so the largest weight is 1, in Q``mel_frac_bits`` (the most
   fraction bits that cannot overflow); the scale only moves every log by one constant;
5. ``log2_q10``, minus the block shift (so loud and quiet frames share one scale);
   with ``features.noise_percentile``, magnitude subtraction of each band's noise: the
   band's ``noise_percentile``-th percentile over the clip's frames is the estimate ``N``,
   and ``log += gain(log - N)``, ``gain(d) = log2 max(1 - 2^-d, 10^(-keep/20))`` from a table
   (``noise_keep_db``: the most a band is lowered), linearly interpolated;
6. floor ``top_db`` under the clip's peak (in log2 units: top_db / 6.0206 * 1024);
7. DCT-II (orthonormal) in Q``dct_frac_bits``: ``c`` in Q10 log2 units (int32);
8. ``utterance`` normalisation: c - mean over the clip's frames, divided by the mean
   absolute deviation (Q8, ``rounding_divide``); ``global``/``none``: c as is. With
   ``features.speech_db`` the mean and deviation are taken over speech frames only: those
   whose loudest mel band (after the floor) lies within speech_db of the clip's peak, so the
   length of the silence around a word no longer moves every frame's values.

The last step to int8 (``quantize_features``: requantize of value - mean per coefficient,
saturated to [-127, 127]) uses statistics fitted offline on the training clips.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lstmq import dsp
from lstmq import fixedpoint as fx
from lstmq.config import FeatureConfig
from lstmq.features import frame_sizes, mel_filter_norm

log = logging.getLogger("lstmq")

MAG_MAX = math.isqrt(2 * (2**14 + 16) ** 2)  # 23193: the largest magnitude a bin can reach
MAX_FRAMES = 4096  # the utterance sums of a longer clip could leave int32
MAD_FRAC_BITS = 8  # utterance-normalised values are in Q8 units of the mean absolute deviation
LOG_DB = 20.0 * math.log10(2.0)  # dB per log2 unit of magnitude (6.0206)
FRONTEND_VERSION = 2  # 2: features.mel_norm (slaney triangles by default)
NOISE_STEP_BITS = 6  # the noise gain table's step: 2^6 Q10 units, 1/16 of a log2 unit
NOISE_SPAN = 12 * 1024  # 12 log2 units over the estimate the gain rounds to 0 (Q10)


class FrontendError(ValueError):
    """A feature config the integer front end cannot compute."""


def _largest_frac_bits(weights: np.ndarray, input_max: int, limit: int = 15) -> int:
    """The most fraction bits q for which every weight fits int16 and every row's
    sum_k |round(W 2^q)| input_max stays below 2^31 (the accumulation cannot overflow)."""
    for bits in range(limit, -1, -1):
        quantized = np.abs(np.round(weights * 2**bits))
        if quantized.max() <= 32767 and quantized.sum(axis=-1).max() * input_max < 2**31 - 1:
            return bits
    raise FrontendError("front-end weights too large for int32 accumulation")


@dataclasses.dataclass(frozen=True, eq=False)
class FrontendTables:
    """Every constant of the integer front end for one feature config and sample rate."""

    sample_rate: int
    n_fft: int
    hop: int
    n_mels: int
    n_mfcc: int
    window: np.ndarray  # <int16>[n_fft] Q15, the Hann window centred, zeros around it
    fft_twiddles: tuple[np.ndarray, np.ndarray]  # <int16>[n_fft/4]: W_{N/2}^j
    bit_reversal: np.ndarray  # <int32>[n_fft/2]
    split_twiddles: tuple[np.ndarray, np.ndarray]  # <int16>[n_fft/2 + 1]: W_N^k
    mel: np.ndarray  # <int16>[n_mels, n_fft/2 + 1]
    mel_frac_bits: int
    log_table: np.ndarray  # <int32>[257] Q15
    dct: np.ndarray  # <int16>[n_mfcc, n_mels]
    dct_frac_bits: int
    floor: int | None  # top_db in Q10 log2 units, or None
    utterance: bool  # per-clip mean / mean-absolute-deviation normalisation
    speech: int | None = None  # speech_db in Q10 log2 units: utterance statistics' frames
    noise_percentile: int | None = None  # the bands' noise estimate; None: no subtraction
    noise_gain: np.ndarray | None = None  # <int16>[NOISE_SPAN / 2^NOISE_STEP_BITS + 1] Q10
    preemphasis: int = 0  # the pre-emphasis coefficient in Q15; 0: none

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    def arrays(self) -> dict[str, np.ndarray]:
        """The read-only tables a device stores, by name (for counting and export)."""
        return {"window": self.window, "fft_twiddle_re": self.fft_twiddles[0],
                "fft_twiddle_im": self.fft_twiddles[1], "bit_reversal": self.bit_reversal,
                "split_twiddle_re": self.split_twiddles[0],
                "split_twiddle_im": self.split_twiddles[1], "mel": self.mel,
                "log2_table": self.log_table, "dct": self.dct,
                **({} if self.noise_gain is None else {"noise_gain": self.noise_gain})}

    def table_bytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays().values()))


def check_frontend_config(cfg: FeatureConfig) -> None:
    """Refuse feature settings the integer front end does not compute."""
    if cfg.deltas:
        raise FrontendError("features.frontend=integer computes no deltas; set features.deltas=0")
    if cfg.trim_db is not None:
        raise FrontendError("features.frontend=integer does not trim silence; set "
                            "features.trim_db=null")
    if cfg.compression != "log":
        raise FrontendError("features.frontend=integer computes log-mel features only; set "
                            "features.compression=log")
    if cfg.speech_db is not None and cfg.normalize != "utterance":
        raise FrontendError("features.speech_db chooses the frames of the per-utterance "
                            "statistics: set features.normalize=utterance or "
                            "features.speech_db=null")


def make_noise_gain(keep_db: float) -> np.ndarray:
    """Q10 log2 of max(1 - 2^-d, 10^(-keep_db / 20)) at d = i / 16 log2 units over the
    estimate, i = 0 .. NOISE_SPAN / 64: the gain of subtracting the noise's magnitude."""
    d = np.arange(NOISE_SPAN // 2**NOISE_STEP_BITS + 1) * 2.0**NOISE_STEP_BITS / 1024
    with np.errstate(divide="ignore"):
        gain = np.log2(np.maximum(1.0 - 2.0**-d, 2.0**(-keep_db / LOG_DB)))
    return np.round(gain * 1024).astype(np.int16)


def make_tables(cfg: FeatureConfig, sample_rate: int) -> FrontendTables:
    """Quantized window, twiddles, filterbank, log table and DCT (offline, float64)."""
    import librosa  # pylint: disable=import-outside-toplevel
    import scipy.fft  # pylint: disable=import-outside-toplevel

    check_frontend_config(cfg)
    sizes = frame_sizes(cfg, sample_rate)
    n = sizes.n_fft
    if n < 8:
        raise FrontendError(f"an FFT of {n} points is too short for the integer front end")
    hann = np.zeros(n)
    start = (n - sizes.window) // 2
    hann[start:start + sizes.window] = 0.5 - 0.5 * np.cos(
        2 * np.pi * np.arange(sizes.window) / sizes.window)
    window = np.round(32767 * hann).astype(np.int16)
    mel = librosa.filters.mel(sr=sample_rate, n_fft=n, n_mels=cfg.n_mels, fmin=cfg.fmin,
                              fmax=sizes.fmax, norm=mel_filter_norm(cfg)).astype(np.float64)
    empty = np.flatnonzero(mel.max(axis=1) <= 0)
    if empty.size:
        raise FrontendError(f"mel band(s) {empty.tolist()} hold no FFT bin at n_fft={n}; "
                            "use fewer features.n_mels or a longer features.window_ms")
    mel /= mel.max()
    mel_bits = _largest_frac_bits(mel, MAG_MAX)
    dct = scipy.fft.dct(np.eye(cfg.n_mels), type=2, norm="ortho", axis=0)[:cfg.n_mfcc]
    log_max = 31 * 1024 + dsp.MAX_SHIFT * 1024  # |L| after the block-shift correction
    dct_bits = _largest_frac_bits(dct, log_max)
    tables = FrontendTables(
        sample_rate=sample_rate, n_fft=n, hop=sizes.hop, n_mels=cfg.n_mels, n_mfcc=cfg.n_mfcc,
        window=window, fft_twiddles=dsp.twiddles_q15(n // 4, n // 2),
        bit_reversal=dsp.bit_reversal(n // 2), split_twiddles=dsp.twiddles_q15(n // 2 + 1, n),
        mel=np.round(mel * 2**mel_bits).astype(np.int16), mel_frac_bits=mel_bits,
        log_table=dsp.LOG2_TABLE, dct=np.round(dct * 2**dct_bits).astype(np.int16),
        dct_frac_bits=dct_bits,
        floor=None if cfg.top_db is None else int(round(cfg.top_db / LOG_DB * 1024)),
        utterance=cfg.normalize == "utterance",
        speech=None if cfg.speech_db is None else int(round(cfg.speech_db / LOG_DB * 1024)),
        noise_percentile=cfg.noise_percentile,
        noise_gain=None if cfg.noise_percentile is None else make_noise_gain(cfg.noise_keep_db),
        preemphasis=preemphasis_q15(cfg.preemphasis))
    if tables.utterance and (bound := utterance_sum_bound(tables)) > fx.INT32_MAX:
        raise FrontendError(
            f"features.n_mels={cfg.n_mels} with n_mfcc={cfg.n_mfcc}: the per-utterance sums of "
            f"{MAX_FRAMES} frames could leave int32 (bound {bound:,}); use fewer mel bands or "
            "coefficients")
    return tables


def coefficient_bounds(tables: FrontendTables) -> tuple[np.ndarray, np.ndarray]:
    """The least and greatest value each cepstral coefficient ``c_j`` can take (int64 [n_mfcc]
    each), from the range of the log-mel values: ``log2_q10`` of a positive int32 energy
    (0 .. 31 * 1024) less the block-shift correction (shifts -2 .. 14), lowered by at most the
    noise gain table's deepest entry, never raised above it by the floor."""
    one = 1 << dsp.LOG_FRAC_BITS
    deepest = 0 if tables.noise_gain is None else -int(np.min(tables.noise_gain))
    low = -dsp.MAX_SHIFT * one - deepest
    high = 31 * one - dsp.MIN_SHIFT * one
    d = tables.dct.astype(np.int64)
    top = np.where(d > 0, d * high, d * low).sum(axis=1)
    bottom = np.where(d > 0, d * low, d * high).sum(axis=1)
    bits = tables.dct_frac_bits  # c = floor(dot / 2^bits + 1/2)
    return (bottom >> bits), (top >> bits) + 1


def utterance_sum_bound(tables: FrontendTables) -> int:
    """The largest int32 value the per-utterance statistics reach over ``MAX_FRAMES`` frames:
    the sum of ``c``, the sum of ``|c - mean|`` and ``(c - mean) << MAD_FRAC_BITS``."""
    low, high = coefficient_bounds(tables)
    span = high - low
    sums = MAX_FRAMES * np.maximum(np.abs(low), np.abs(high))
    # values in a span of w deviate from their mean by w / 2 on average at most; the mean is
    # rounded, so by w / 2 + 1 / 2 from it (the sum of |c - mean| has nonnegative terms)
    spreads = MAX_FRAMES * (span // 2 + 1)
    shifted = span << MAD_FRAC_BITS
    return int(max(sums.max(), spreads.max(), shifted.max()))


def preemphasis_q15(coefficient: float) -> int:
    """The pre-emphasis coefficient in Q15 (at most 32767: the product stays in int32)."""
    if not 0 <= coefficient < 1:
        raise FrontendError(f"features.preemphasis must lie in [0, 1), got {coefficient}")
    return min(int(round(coefficient * 2**15)), 2**15 - 1)


def preemphasize(pcm: jax.Array, lengths: jax.Array, coefficient_q15: int) -> jax.Array:
    """``x[n] - rsr(A x[n-1], 15)`` of a batch <int16>[batch, samples] within each clip's
    ``lengths`` samples (x[-1] = 0), 0 after them: <int32>[batch, samples], |value| < 2^16."""
    x = pcm.astype(jnp.int32)
    previous = jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
    y = x - fx.rounding_shift_right(previous * jnp.int32(coefficient_q15), 15)
    inside = jnp.arange(x.shape[1], dtype=jnp.int32)[None, :] < lengths.astype(jnp.int32)[:, None]
    return jnp.where(inside, y, 0)


def frame_count(samples: int, hop: int) -> int:
    """Frames of a clip: 1 + samples // hop (librosa's centred framing)."""
    return 1 + samples // hop


def integer_mfcc(tables: FrontendTables, pcm: jax.Array, lengths: jax.Array,
                 frames: int) -> jax.Array:
    """Integer features of a batch of clips.

    Args:
      tables: ``make_tables`` of the feature config.
      pcm: <int16>[batch, samples], each clip zero-padded after its ``lengths`` samples.
      lengths: <int32>[batch] samples of each clip.
      frames: static frame count of the batch (at least ``frame_count`` of the longest).

    Returns:
      <int32>[batch, frames, n_mfcc]: ``c`` (Q10 log2 units), or for utterance
      normalisation ``(c - mean) / mad`` in Q8; frames past a clip's count are 0.
    """
    n, hop = tables.n_fft, tables.hop
    signal = (preemphasize(pcm, lengths, tables.preemphasis) if tables.preemphasis
              else pcm.astype(jnp.int16))
    pad = jnp.zeros((pcm.shape[0], n // 2), signal.dtype)
    need = (frames - 1) * hop + n - (pcm.shape[1] + n)
    tail = jnp.zeros((pcm.shape[0], n // 2 + max(need, 0)), signal.dtype)
    padded = jnp.concatenate([pad, signal, tail], axis=1)
    index = np.arange(frames)[:, None] * hop + np.arange(n)[None, :]
    x = padded[:, index].astype(jnp.int32)  # [B, T, N]
    v = fx.rounding_shift_right(x * jnp.asarray(tables.window, jnp.int32), 15)
    shift = dsp.block_shift(jnp.max(jnp.abs(v), axis=-1))  # [B, T]
    u = dsp.apply_shift(v, shift[..., None])
    re, im = dsp.rfft_q15(u, tables.fft_twiddles, tables.bit_reversal, tables.split_twiddles)
    magnitude = dsp.isqrt(re * re + im * im)  # [B, T, bins]
    energy = dsp.int_dot(magnitude.astype(jnp.int16), jnp.asarray(tables.mel.T))  # [B,T,M]
    log = dsp.log2_q10(energy, tables.log_table) - shift[..., None] * (1 << dsp.LOG_FRAC_BITS)
    valid = (jnp.arange(frames, dtype=jnp.int32)[None, :]
             < (1 + lengths.astype(jnp.int32) // hop)[:, None])  # [B, T]
    if tables.noise_gain is not None:
        log = _subtract_noise(tables, log, valid)
    lowest = jnp.int32(-(2**30))
    peak = jnp.max(jnp.where(valid[..., None], log, lowest), axis=(1, 2))  # [B]
    if tables.floor is not None:
        log = jnp.maximum(log, (peak - tables.floor)[:, None, None])
    counted = valid  # the frames of the utterance statistics
    if tables.speech is not None:
        counted = valid & (jnp.max(log, axis=2) >= (peak - tables.speech)[:, None])
    c = fx.rounding_shift_right(
        dsp.int_dot(log, jnp.asarray(tables.dct.T, jnp.int32)), tables.dct_frac_bits)
    c = jnp.where(valid[..., None], c, 0)
    if tables.utterance:
        c = _utterance(c, valid, counted)
    return c


def _subtract_noise(tables: FrontendTables, log: jax.Array, valid: jax.Array) -> jax.Array:
    """``log + gain(log - N)`` per band, N the band's ``noise_percentile``-th percentile over
    the clip's valid frames (the sorted value at rank (count - 1) * percentile // 100)."""
    ordered = jnp.sort(jnp.where(valid[..., None], log, jnp.int32(2**30)), axis=1)
    count = jnp.sum(valid.astype(jnp.int32), axis=1)  # [B]
    rank = (count - 1) * tables.noise_percentile // 100
    estimate = jnp.take_along_axis(ordered, rank[:, None, None], axis=1)  # [B, 1, M]
    d = jnp.clip(log - estimate, 0, NOISE_SPAN)
    table = jnp.asarray(tables.noise_gain, jnp.int32)
    step, last = NOISE_STEP_BITS, tables.noise_gain.size - 1
    index, fraction = jnp.right_shift(d, step), d & (2**step - 1)
    low, high = table[index], table[jnp.minimum(index + 1, last)]
    return log + low + fx.rounding_shift_right((high - low) * fraction, step)


def _utterance(c: jax.Array, valid: jax.Array, counted: jax.Array) -> jax.Array:
    """(c - mean) / mean absolute deviation, both over each clip's ``counted`` frames, of every
    valid frame; Q8, int32."""
    count = jnp.maximum(jnp.sum(counted.astype(jnp.int32), axis=1), 1)[:, None]  # [B, 1]
    mean = fx.rounding_divide(jnp.sum(jnp.where(counted[..., None], c, 0), axis=1), count)
    d = jnp.where(valid[..., None], c - mean[:, None, :], 0)
    spread = jnp.sum(jnp.where(counted[..., None], jnp.abs(d), 0), axis=1)
    mad = jnp.maximum(fx.rounding_divide(spread, count), 1)
    y = fx.rounding_divide(jnp.left_shift(d, MAD_FRAC_BITS), mad[:, None, :])
    return jnp.where(valid[..., None], y, 0)


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureQuantizer:
    """The last, per-coefficient step to int8: q = sat(requantize(sat(v - offset), m, s), 127)."""

    offset: np.ndarray  # <int32>[C]
    multiplier: np.ndarray  # <int32>[C]
    shift: np.ndarray  # <int8>[C]

    @classmethod
    def fit(cls, mean: np.ndarray, std: np.ndarray, input_clip: float,
            value_scale: float) -> FeatureQuantizer:
        """From float statistics of the values ``v / value_scale``: q = round(((v /
        value_scale) - mean) / std * 127 / input_clip)."""
        offset = np.round(np.asarray(mean, np.float64) * value_scale).astype(np.int32)
        reals = 127.0 / (float(input_clip) * np.asarray(std, np.float64) * value_scale)
        multiplier, shift = fx.quantize_multipliers(reals)
        return cls(offset, multiplier.astype(np.int32), shift.astype(np.int8))

    def to_dict(self) -> dict[str, Any]:
        return {"offset": self.offset.tolist(), "multiplier": self.multiplier.tolist(),
                "shift": self.shift.tolist()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureQuantizer:
        return cls(np.asarray(values["offset"], np.int32),
                   np.asarray(values["multiplier"], np.int32), np.asarray(values["shift"], np.int8))


def quantize_features(quantizer: FeatureQuantizer, v: jax.Array) -> jax.Array:
    """<int32>[..., C] front-end values to the model's <int8>[..., C] input."""
    q = fx.requantize(fx.saturating_sub(v, jnp.asarray(quantizer.offset)),
                      jnp.asarray(quantizer.multiplier),
                      jnp.asarray(quantizer.shift).astype(jnp.int32))
    return jnp.clip(q, -127, 127).astype(jnp.int8)


def value_scale(cfg: FeatureConfig) -> float:
    """Integer units per real unit of the front end's values (Q10 log2, or Q8 MAD units
    after utterance normalisation)."""
    return float(2**MAD_FRAC_BITS if cfg.normalize == "utterance" else 2**dsp.LOG_FRAC_BITS)


def pcm_int16(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] as the int16 PCM a device records: round(x * 32768), saturated."""
    return np.clip(np.round(np.asarray(audio, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def as_pcm(clip: np.ndarray) -> np.ndarray:
    """int16 PCM as it is; float audio in [-1, 1] through ``pcm_int16``."""
    return clip if np.asarray(clip).dtype == np.int16 else pcm_int16(clip)


BATCH = 64  # clips per front-end call


def frames_bucket(frames: int) -> int:
    """Batches are padded to 16, 32, 64, ... frames: a handful of compiled shapes."""
    return max(16, 1 << (frames - 1).bit_length())


def dataset_features(dataset, cfg: FeatureConfig, progress: bool = False) -> tuple[np.ndarray, ...]:
    """Integer front-end values of every clip of a Dataset: <int32>[frames, n_mfcc] each.

    Clips are featurized as int16 PCM (``pcm_int16``) in batches of similar length, padded
    to a power-of-two frame count, so a few compiled programs serve every clip.
    ``features.min_frames`` pads a short clip with silence, ``features.max_frames`` cuts the
    frames of a long one, as the float front end does.
    """
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

    tables = make_tables(cfg, dataset.sample_rate)
    needed = max((cfg.min_frames - 1) * tables.hop, 1)
    peaks = np.array([np.max(np.abs(a)) if a.size else 0.0 for a in dataset.audio])
    if (peaks > 1.0).any():  # float WAVs beyond full scale: int16 PCM saturates them
        loudest = int(np.argmax(peaks))
        log.warning(
            "%s: %d clip(s) exceed full scale (e.g. %s, peak %.3g): the integer front end "
            "reads them as int16 PCM, saturated", dataset.source, int((peaks > 1.0).sum()),
            dataset.names[loudest], peaks[loudest])
    pcm = [pcm_int16(a) for a in dataset.audio]
    pcm = [np.pad(p, (0, needed - p.size)) if p.size < needed else p for p in pcm]
    counts = np.array([frame_count(p.size, tables.hop) for p in pcm])
    if counts.max() > MAX_FRAMES:
        longest = dataset.names[int(np.argmax(counts))]
        raise FrontendError(f"{dataset.source}: clip {longest} has {counts.max()} frames, more "
                            f"than the integer front end's {MAX_FRAMES} (its int32 utterance "
                            "sums); cut the recording into shorter clips")
    run = jax.jit(lambda p, l, frames: integer_mfcc(tables, p, l, frames), static_argnums=2)
    out: list[np.ndarray | None] = [None] * len(pcm)
    order = np.argsort(counts, kind="stable")
    with tqdm(total=len(pcm), desc="integer front end", unit="clip", disable=not progress) as bar:
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            frames = frames_bucket(int(counts[idx].max()))
            samples = frames * tables.hop  # the longest clip with this many frames
            batch = np.zeros((BATCH, samples), np.int16)
            lengths = np.ones(BATCH, np.int32)
            for row, i in enumerate(idx):
                batch[row, :pcm[i].size] = pcm[i]
                lengths[row] = pcm[i].size
            values = np.asarray(run(batch, lengths, frames))
            for row, i in enumerate(idx):
                clip = values[row, :counts[i]]
                out[i] = np.ascontiguousarray(clip[:cfg.max_frames] if cfg.max_frames else clip)
            bar.update(len(idx))
    return tuple(out)

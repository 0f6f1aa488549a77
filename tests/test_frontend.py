"""The integer front end: DSP kernels against their NumPy references at the edges, the whole
front end against its reference, the int8 quantizer, and its place in training."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstmq import dsp, features, fixedpoint as fx, frontend, frontend_reference
from lstmq import fixedpoint_reference as fxr
from lstmq.audit import audit_float_free
from lstmq.config import FeatureConfig, load_config

INT32_MAX = 2**31 - 1
_JITTED = {}


def _fixed(fn, *arrays, size: int = 64):
    """``fn`` jitted once, on arrays padded to ``size`` (hypothesis draws other lengths)."""
    jitted = _JITTED.setdefault(fn, jax.jit(fn))
    count = len(arrays[0])
    padded = [np.pad(a, (0, size - count), constant_values=1) for a in arrays]
    return np.asarray(jitted(*map(jnp.asarray, padded)))[:count]


# --- kernels ------------------------------------------------------------------------------


def test_block_shift_matches_its_reference_for_every_peak():
    peaks = np.arange(0, 2**15 + 1, dtype=np.int32)
    shift = np.asarray(dsp.block_shift(jnp.asarray(peaks)))
    np.testing.assert_array_equal(shift, dsp.block_shift_ref(peaks))
    scaled = peaks[1:].astype(np.int64) * 2.0 ** shift[1:]
    assert scaled.max() < 2**14 and scaled.min() >= 2**13  # every nonzero peak lands there
    assert shift[0] == 0 and shift.min() == -2 and shift.max() == 13


def test_a_block_shifted_peak_lies_in_2_13_to_2_14_after_its_rounding():
    peaks = np.arange(1, 2**16 - 1, dtype=np.int32)  # pre-emphasis reaches 65534
    shifted = np.asarray(dsp.apply_shift(jnp.asarray(peaks), dsp.block_shift(jnp.asarray(peaks))))
    assert shifted.min() == 2**13 and shifted.max() == 2**14  # 2^14 itself: 32767 >> 1, rounded
    assert int(dsp.apply_shift(jnp.int32(32767), jnp.int32(-1))) == 2**14


@pytest.mark.parametrize("shift", [-2, -1, 0, 1, 13])
def test_apply_shift_rounds_half_up_and_shifts_exactly(shift):
    v = np.array([-32768, -32767, -3, -2, -1, 0, 1, 2, 3, 32767], np.int32)
    if shift > 0:
        v = v // 2**shift  # what the block shift allows to be shifted left
    got = np.asarray(dsp.apply_shift(jnp.asarray(v), jnp.int32(shift)))
    np.testing.assert_array_equal(got, dsp.apply_shift_ref(v, shift))
    if shift == -1:
        assert got.tolist()[2:7] == [-1, -1, 0, 0, 1]  # -1.5 -> -1, -1 -> -0.5 -> 0, 0.5 -> 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, INT32_MAX), min_size=1, max_size=64))
def test_isqrt_is_the_floor_square_root(values):
    p = np.array(values, np.int32)
    np.testing.assert_array_equal(_fixed(dsp.isqrt, p), dsp.isqrt_ref(p))


def test_isqrt_at_squares_and_the_int32_edge():
    roots = np.array([0, 1, 2, 3, 4095, 4096, 23170, 46340], np.int64)
    p = np.unique(np.clip(np.concatenate([roots**2 - 1, roots**2, roots**2 + 1, [INT32_MAX]]),
                          0, INT32_MAX)).astype(np.int32)
    got = _fixed(dsp.isqrt, p)
    assert got.tolist() == [math.isqrt(int(v)) for v in p]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-5, INT32_MAX), min_size=1, max_size=64))
def test_log2_matches_its_reference_and_log2(values):
    e = np.array(values, np.int32)
    got = _fixed(dsp.log2_q10, e)
    np.testing.assert_array_equal(got, dsp.log2_q10_ref(e))
    positive = e >= 1
    exact = 1024 * np.log2(e[positive].astype(np.float64))
    assert np.all(np.abs(got[positive] - exact) <= 1.0)  # within one Q10 unit


def test_log2_edges():
    e = np.array([-7, 0, 1, 2, 3, 2**30, INT32_MAX], np.int32)
    assert np.asarray(dsp.log2_q10(jnp.asarray(e))).tolist() == [0, 0, 0, 1024, 1623, 30720, 31744]


@pytest.mark.parametrize("count", [2, 8, 64, 256])
def test_fft_matches_its_reference_and_the_dft(count):
    rng = np.random.default_rng(count)
    z = rng.integers(-2**14 + 1, 2**14, (2, count)).astype(np.int32)
    tw = dsp.twiddles_q15(max(count // 2, 1), count)
    order = dsp.bit_reversal(count)
    zr, zi = (np.asarray(a) for a in dsp.fft_q15(jnp.asarray(z[0]), jnp.asarray(z[1]), *tw, order))
    ref = dsp.fft_q15_ref(list(zip(z[0].tolist(), z[1].tolist())))
    assert list(zip(zr.tolist(), zi.tolist())) == ref
    exact = np.fft.fft(z[0] + 1j * z[1]) / count
    assert np.abs(zr - exact.real).max() <= 2 + np.log2(count)
    assert np.abs(zi - exact.imag).max() <= 2 + np.log2(count)


@pytest.mark.parametrize("n", [16, 256, 512])
def test_real_fft_matches_its_reference_and_numpy(n):
    rng = np.random.default_rng(n)
    u = rng.integers(-2**14 + 1, 2**14, n).astype(np.int32)
    half = n // 2
    xr, xi = (np.asarray(a) for a in dsp.rfft_q15(
        jnp.asarray(u), dsp.twiddles_q15(half // 2, half), dsp.bit_reversal(half),
        dsp.twiddles_q15(half + 1, n)))
    rr, ri = dsp.rfft_q15_ref(u)
    np.testing.assert_array_equal(xr, rr)
    np.testing.assert_array_equal(xi, ri)
    exact = np.fft.rfft(u) / n
    assert np.abs(xr - exact.real).max() <= 3 + np.log2(n)
    assert np.abs(xi - exact.imag).max() <= 3 + np.log2(n)


def test_full_scale_frames_do_not_overflow():
    """The largest frames the block shift lets through, alternating signs: the reference
    computes with unbounded integers, so any int32 wrap in jnp would show."""
    n = 256
    u = np.where(np.arange(n) % 2 == 0, 2**14 - 1, -(2**14) + 1).astype(np.int32)
    half = n // 2
    args = (dsp.twiddles_q15(half // 2, half), dsp.bit_reversal(half), dsp.twiddles_q15(half + 1, n))
    xr, xi = (np.asarray(a) for a in dsp.rfft_q15(jnp.asarray(u), *args))
    rr, ri = dsp.rfft_q15_ref(u)
    np.testing.assert_array_equal(xr, rr)
    np.testing.assert_array_equal(xi, ri)
    power = xr.astype(np.int64) ** 2 + xi.astype(np.int64) ** 2
    assert power.max() < 2**31 and np.sqrt(power.max()) <= frontend.MAG_MAX


# --- the front end ------------------------------------------------------------------------


def _batch(clips, hop):
    width = max(len(c) for c in clips)
    frames = max(frontend.frame_count(len(c), hop) for c in clips)
    pcm = np.zeros((len(clips), max(width, frames * hop)), np.int16)
    for row, clip in enumerate(clips):
        pcm[row, :len(clip)] = clip
    return pcm, np.array([len(c) for c in clips], np.int32), frames


def _clips(rate):
    rng = np.random.default_rng(rate)
    t = np.arange(int(0.3 * rate)) / rate
    tone = np.round(8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    square = np.where(np.sin(2 * np.pi * 300 * t) >= 0, 32767, -32768).astype(np.int16)
    quiet = np.round(rng.standard_normal(int(0.2 * rate)) * 3).astype(np.int16)
    silence = np.zeros(int(0.1 * rate), np.int16)
    tiny = rng.integers(-1000, 1000, 7).astype(np.int16)
    return [tone, square, quiet, silence, tiny]


@pytest.mark.parametrize("rate, normalize, top_db, speech_db, noise, preemphasis", [
    (8000, "global", 80.0, None, None, 0.0), (8000, "utterance", 40.0, None, None, 0.0),
    (16000, "none", None, None, None, 0.0), (8000, "utterance", 40.0, 20.0, None, 0.0),
    (16000, "utterance", None, 30.0, None, 0.0), (8000, "utterance", 40.0, None, (10, 12.0), 0.0),
    (8000, "none", None, None, (0, 30.0), 0.0),
    (16000, "utterance", 40.0, 30.0, (50, 6.0), 0.0), (8000, "utterance", 40.0, None, (10, 24.0), 0.97),
    (16000, "none", None, None, None, 0.5)])
def test_front_end_is_bit_exact_with_its_reference(rate, normalize, top_db, speech_db, noise,
                                                   preemphasis):
    percentile, keep_db = noise or (None, 12.0)
    tables = frontend.make_tables(FeatureConfig(normalize=normalize, top_db=top_db,
                                                speech_db=speech_db, noise_percentile=percentile,
                                                noise_keep_db=keep_db, preemphasis=preemphasis),
                                  rate)
    clips = _clips(rate)
    pcm, lengths, frames = _batch(clips, tables.hop)
    run = jax.jit(lambda p, l: frontend.integer_mfcc(tables, p, l, frames))
    out = np.asarray(run(pcm, lengths))
    for row, clip in enumerate(clips):
        ref = frontend_reference.integer_mfcc_ref(tables, clip)
        np.testing.assert_array_equal(out[row, :len(ref)], ref)
        assert not out[row, len(ref):].any()  # frames past the clip are zero


def test_preemphasis_rounds_half_up_and_spans_both_int16_ends_without_wrapping():
    """x[n] - rsr(A x[n-1], 15) in int32: full-scale alternation reaches -65534 and 65534, a
    half-way product rounds up, the first sample keeps x[-1] = 0 and samples past a clip's
    length are 0 (not -A x[last])."""
    a = frontend.preemphasis_q15(0.97)
    assert a == 31785 and frontend.preemphasis_q15(0.99999) == 32767
    with pytest.raises(frontend.FrontendError, match="preemphasis"):
        frontend.preemphasis_q15(1.0)
    pcm = np.array([[32767, -32768, 32767, -32768, 0, 0], [-32768, 32767, -32768, 2, 9, 0]],
                   np.int16)
    out = np.asarray(frontend.preemphasize(jnp.asarray(pcm), jnp.asarray([4, 5]), 32767))
    np.testing.assert_array_equal(out[0], [32767, -65534, 65534, -65534, 0, 0])
    np.testing.assert_array_equal(out[1], [-32768, 65534, -65534, 32769, 7, 0])
    half = np.asarray(frontend.preemphasize(jnp.asarray([[1, 0], [-1, 0]], jnp.int16),
                                            jnp.asarray([2, 2]), 2**14))  # A x[0] = +-0.5
    np.testing.assert_array_equal(half[:, 1], [-1, 0])  # rsr: 0.5 rounds to 1, -0.5 to 0
    # the window product of the largest value stays in int32
    assert 65534 * int(frontend.make_tables(FeatureConfig(), 8000).window.max()) < 2**31


def test_preemphasis_tilts_both_front_ends_as_its_filter_response():
    """On white noise, a = 0.97 moves every coefficient (mean over frames, in dB) by the DCT of
    the filter's gain 20 log10 |1 - a e^-jw| at the mel bands' centres (-21 dB at 100 Hz,
    +5 dB at 3 kHz), in the integer and the float front end alike."""
    import librosa  # pylint: disable=import-outside-toplevel
    import scipy.fft  # pylint: disable=import-outside-toplevel

    rate = 8000
    clip = np.round(np.random.default_rng(1).normal(0, 3000, rate)).astype(np.int16)
    moved = []
    for coefficient in (0.0, 0.97):
        cfg = FeatureConfig(normalize="none", top_db=None, preemphasis=coefficient)
        integer = frontend_reference.integer_mfcc_ref(frontend.make_tables(cfg, rate), clip)
        floats = features.extract_mfcc(clip / 32768.0, rate, dataclasses.replace(cfg, frontend="float"))
        moved.append((integer[2:-2].mean(0) / 1024 * frontend.LOG_DB, floats[2:-2].mean(0)))
    centres = librosa.mel_frequencies(n_mels=42, fmin=20.0, fmax=rate / 2)[1:-1]
    gain_db = 20 * np.log10(np.abs(1 - 0.97 * np.exp(-2j * np.pi * centres / rate)))
    expected = scipy.fft.dct(gain_db, type=2, norm="ortho")[:13]
    assert expected[1] < -40  # a strong tilt: the low bands fall, the high ones rise
    for path in (0, 1):
        np.testing.assert_allclose(moved[1][path] - moved[0][path], expected, atol=1.0)


def test_speech_frame_statistics_ignore_the_silence_around_a_word():
    """With features.speech_db the utterance statistics skip floored (silent) frames: trailing
    silence leaves the word's values as they were; without it, every value moves."""
    rate = 8000
    t = np.arange(int(0.3 * rate)) / rate
    rng = np.random.default_rng(4)
    word = np.round(6000 * np.sin(2 * np.pi * 300 * t * (1 + t)) * np.hanning(t.size)
                    + rng.normal(0, 20, t.size)).astype(np.int16)
    padded = np.concatenate([word, np.zeros(int(0.4 * rate), np.int16)])
    for speech_db, same in ((30.0, True), (None, False)):
        tables = frontend.make_tables(FeatureConfig(normalize="utterance", top_db=40.0,
                                                    speech_db=speech_db), rate)
        short = frontend_reference.integer_mfcc_ref(tables, word)
        long = frontend_reference.integer_mfcc_ref(tables, padded)
        assert np.array_equal(long[:len(short)], short) == same
        if speech_db is not None:  # the silent frames are normalised by the word's statistics
            assert np.all(long[len(short) + 2:, 0] < -2 * 2**frontend.MAD_FRAC_BITS)
    with pytest.raises(frontend.FrontendError, match="speech_db"):
        frontend.make_tables(FeatureConfig(normalize="global", speech_db=30.0), rate)


def test_noise_gain_table_is_magnitude_subtraction_at_its_edges():
    """gain(d) = log2 max(1 - 2^-d, 10^(-keep/20)) in Q10: the floor at d = 0 (the band at
    its estimate), within one unit of the exact value between steps, 0 at the table's end."""
    table = frontend.make_noise_gain(12.0)
    floor = round(-12.0 / frontend.LOG_DB * 1024)
    assert table[0] == floor and table.min() == floor and table[-1] == 0
    assert np.all(np.diff(table.astype(np.int32)) >= 0)  # never lowers a louder band more
    d = np.arange(1, 11) * 1.0  # whole log2 units: exact table entries
    exact = np.maximum(np.log2(1 - 2.0**-d), -12.0 / frontend.LOG_DB) * 1024
    np.testing.assert_allclose(table[(d * 16).astype(int)], exact, atol=0.5)


def test_noise_subtraction_at_its_edges_in_jnp():
    """Under or at the estimate: the floor gain; past NOISE_SPAN over it: unchanged; halfway
    between two table steps: the rounded mean of the two entries; padded frames ignored."""
    tables = frontend.make_tables(FeatureConfig(noise_percentile=0, noise_keep_db=24.0), 8000)
    gain = tables.noise_gain.astype(np.int64)
    base = -5000  # the band's minimum over the valid frames: the 0th percentile
    values = [base, base + 31 * 64 + 32, base + frontend.NOISE_SPAN + 7, 30000, 2**20, -2**20]
    log = jnp.asarray(np.array(values, np.int32)[None, :, None])  # 1 clip, 6 frames, 1 band
    valid = jnp.asarray([[True, True, True, True, True, False]])  # the last frame is padding
    out = np.asarray(frontend._subtract_noise(tables, log, valid))[0, :, 0]
    assert out[0] == base + gain[0]
    assert out[1] == values[1] + (gain[31] + gain[32] + 1) // 2
    assert out[2] == values[2] and out[3] == values[3] and out[4] == values[4]
    assert out[5] == values[5] + gain[0]  # below the estimate (a padded frame, dropped later)


def test_noise_subtraction_lowers_a_steady_noise_and_keeps_the_word():
    """White noise under a word: with the subtraction the noise-only frames fall by about
    noise_keep_db while the word's loudest band stays within a fraction of a dB."""
    rate = 8000
    rng = np.random.default_rng(7)
    t = np.arange(int(0.3 * rate)) / rate
    word = 8000 * np.sin(2 * np.pi * 500 * t) * np.hanning(t.size)
    clip = np.concatenate([np.zeros(int(0.3 * rate)), word, np.zeros(int(0.3 * rate))])
    pcm = np.round(clip + rng.normal(0, 300, clip.size)).astype(np.int16)
    logs = {}
    for percentile in (None, 20):
        tables = frontend.make_tables(FeatureConfig(normalize="none", top_db=None, n_mfcc=40,
                                                    noise_percentile=percentile), rate)
        c = frontend_reference.integer_mfcc_ref(tables, pcm)
        idct = np.linalg.pinv(tables.dct.astype(np.float64) / 2**tables.dct_frac_bits)
        logs[percentile] = (c @ idct.T) / 1024 * frontend.LOG_DB  # dB per band
    frames = logs[None].shape[0]
    noise = slice(2, frames // 3 - 2)
    frame, band = np.unravel_index(np.argmax(logs[None]), logs[None].shape)  # the word's peak
    drop_noise = np.mean(logs[None][noise] - logs[20][noise])
    drop_word = abs(logs[None][frame, band] - logs[20][frame, band])
    assert 8.0 < drop_noise <= 12.5 and drop_word < 1.0


def test_front_end_tables_cannot_overflow_and_are_counted():
    for rate in (8000, 16000):
        tables = frontend.make_tables(FeatureConfig(), rate)
        mel_bound = np.abs(tables.mel.astype(np.int64)).sum(axis=1).max() * frontend.MAG_MAX
        dct_bound = np.abs(tables.dct.astype(np.int64)).sum(axis=1).max() * (45 * 1024)
        assert mel_bound < 2**31 and dct_bound < 2**31
        assert tables.table_bytes() == sum(a.nbytes for a in tables.arrays().values())
    with pytest.raises(frontend.FrontendError, match="deltas"):
        frontend.make_tables(FeatureConfig(deltas=1), 8000)
    with pytest.raises(frontend.FrontendError, match="compression"):
        frontend.make_tables(FeatureConfig(compression="pcen"), 8000)


@pytest.mark.parametrize("mel_norm", ["slaney", "none"])
def test_the_mel_bank_is_the_float_front_ends_up_to_one_scale(mel_norm):
    import librosa

    cfg = FeatureConfig(mel_norm=mel_norm)
    tables = frontend.make_tables(cfg, 8000)
    bank = librosa.filters.mel(sr=8000, n_fft=256, n_mels=40, fmin=20.0, fmax=4000.0,
                               norm="slaney" if mel_norm == "slaney" else None)
    scaled = bank / bank.max() * 2**tables.mel_frac_bits
    assert np.abs(tables.mel - scaled).max() <= 0.5 + 1e-9  # rounded to nearest, one scale
    assert tables.mel.max() > 2**(tables.mel_frac_bits - 1)  # the largest weight is ~1
    assert (frontend.make_tables(FeatureConfig(mel_norm="none"), 8000).mel != tables.mel).any() \
        == (mel_norm == "slaney")


@pytest.mark.parametrize("mel_norm, bound", [("slaney", 0.99), ("none", 0.97)])
def test_the_front_end_follows_the_float_one_closely(mel_norm, bound):
    """Not the same numbers (magnitudes, log2, integer rounding), but the same information:
    the coefficients correlate strongly over the frames of a clip."""
    from lstmq.features import extract_mfcc

    rng = np.random.default_rng(0)
    t = np.arange(4000) / 8000
    audio = (0.3 * np.sin(2 * np.pi * (300 + 400 * t) * t) + 0.01 * rng.standard_normal(4000))
    cfg = FeatureConfig(mel_norm=mel_norm, top_db=40.0)
    floats = extract_mfcc(audio.astype(np.float32), 8000, cfg)
    tables = frontend.make_tables(cfg, 8000)
    ints = frontend_reference.integer_mfcc_ref(tables, frontend.pcm_int16(audio)).astype(np.float64)
    r = [np.corrcoef(floats[:, j], ints[:, j])[0, 1] for j in range(1, 6)]
    assert min(r) > bound, r


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(-2**31, INT32_MAX), st.integers(-2**31, INT32_MAX)),
                min_size=1, max_size=32))
def test_saturating_sub_matches_its_reference(pairs):
    a, b = (np.array(x, np.int32) for x in zip(*pairs))
    np.testing.assert_array_equal(_fixed(fx.saturating_sub, a, b),
                                  fxr.saturating_sub_ref(a, b))


def test_quantizer_saturates_and_matches_the_exact_formula():
    quantizer = frontend.FeatureQuantizer.fit(np.array([1.5, -2.0]), np.array([0.5, 4.0]), 3.0, 1024)
    v = np.array([[-2**31 + 5, 0], [1536, 2**30], [2048, -2048], [1536 + 100, 5000]], np.int32)
    q = np.asarray(frontend.quantize_features(quantizer, jnp.asarray(v)))
    assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
    difference = fxr.saturating_sub_ref(v, quantizer.offset)  # saturates, never wraps
    expected = np.clip(fxr.requantize_ref(difference, quantizer.multiplier, quantizer.shift),
                       -127, 127)
    assert q[0, 0] == -127
    np.testing.assert_array_equal(q, expected)
    real = ((v[3] / 1024 - np.array([1.5, -2.0])) / np.array([0.5, 4.0])) * 127 / 3.0
    assert np.all(np.abs(q[3] - np.clip(real, -127, 127)) <= 1)


def test_a_quantizer_of_coefficients_with_little_spread_shifts_left_and_saturates():
    """Tiny spreads give negative shifts (a left shift before the multiply): the int8 shift
    table reaches requantize as such, and the edges saturate at +-127."""
    quantizer = frontend.FeatureQuantizer.fit(np.zeros(3), np.array([1e-6, 1e-3, 0.05]), 3.0, 1024)
    assert quantizer.shift.tolist() == [-16, -6, 0]
    v = np.array([[-2**31, -2**31, -2**31], [-1, -1, -1], [0, 0, 0], [1, 1, 1], [3, -3, 2],
                  [2**31 - 1, 2**31 - 1, 2**31 - 1]], np.int32)
    q = np.asarray(frontend.quantize_features(quantizer, jnp.asarray(v)))
    expected = np.clip(fxr.requantize_ref(fxr.saturating_sub_ref(v, quantizer.offset),
                                          quantizer.multiplier, quantizer.shift), -127, 127)
    np.testing.assert_array_equal(q, expected)
    assert q[0].tolist() == [-127] * 3 and q[-1].tolist() == [127] * 3 and q[2].tolist() == [0] * 3


@pytest.mark.parametrize("noise_percentile, speed", [(None, 1.0), (10, 1.0), (10, 0.9)])
def test_pcm_to_logits_is_float_free(tmp_path, noise_percentile, speed):
    from lstmq.speed import speed_step

    from lstmq.device import DeviceModel, pcm_to_logits
    from lstmq.integer import convert_params
    from lstmq.model import LSTMClassifier

    model = LSTMClassifier(hidden=6, layers=1, num_classes=3)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 13)), jnp.ones((1,), jnp.int32))
    integer = convert_params(jax.tree_util.tree_map(np.asarray, params["params"]), 3.0)
    tables = frontend.make_tables(FeatureConfig(normalize="utterance", top_db=40.0,
                                                noise_percentile=noise_percentile), 8000)
    quantizer = frontend.FeatureQuantizer.fit(np.zeros(13), np.ones(13), 3.0, 256)
    device = DeviceModel(integer, tables, quantizer, ("a", "b", "c"), None, 128)
    pcm, lengths, frames = _batch(_clips(8000)[:3], tables.hop)
    frames = device.frames_of(int(pcm.shape[1] / speed) + 1)
    pcm = np.pad(pcm, ((0, 0), (0, frames * tables.hop - pcm.shape[1])))
    report = audit_float_free(
        lambda p, l: pcm_to_logits(device, p, l, frames, speed_step(speed)), pcm, lengths)
    assert report.num_equations > 500 and "float32" not in report.dtypes


def test_integer_front_end_training_sees_the_device_features(wav_folder):
    """The training inputs are exactly q * clip / 127 of the device's int8 features."""
    from lstmq.pipeline import prepare_data

    config = load_config(overrides=[f"data.path={wav_folder}", "features.frontend=integer",
                                    "features.cache=false", "data.split=official",
                                    "data.val_fraction=0", "features.normalize=utterance",
                                    "features.top_db=40"])
    data = prepare_data(config, progress=False)
    normalizer = data.normalizer
    assert normalizer.integer and normalizer.input_clip > 0
    step = np.float32(normalizer.input_clip / 127.0)
    q = data.test.x / step
    assert np.abs(q - np.round(q)).max() < 1e-3  # on the int8 grid (to float32 rounding)
    q = np.round(q)
    assert np.abs(q).max() <= 127
    tables = frontend.make_tables(config.features, 8000)
    from lstmq.data import load_recordings

    dataset = load_recordings(wav_folder)
    name = data.test.names[3]
    clip = frontend.pcm_int16(dataset.audio[dataset.names.index(name)])
    values = frontend_reference.integer_mfcc_ref(tables, clip)
    device_q = np.asarray(frontend.quantize_features(normalizer.quantizer, jnp.asarray(values)))
    np.testing.assert_array_equal(q[3, :len(device_q)].astype(np.int8), device_q)


def test_clips_beyond_full_scale_are_named_when_the_front_end_saturates_them(tmp_path, write_wav,
                                                                           caplog):
    import logging

    from lstmq.data import load_recordings
    from lstmq.features import compute_features

    tone = np.sin(np.arange(4000) / 3.0).astype(np.float32)
    for label in ("a", "b"):
        write_wav(tmp_path / label / "quiet.wav", 0.5 * tone, subtype="FLOAT")
    write_wav(tmp_path / "b" / "loud.wav", 50.0 * tone, subtype="FLOAT")
    dataset = load_recordings(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lstmq"):
        compute_features(dataset, FeatureConfig(frontend="integer", cache=False), progress=False)
    assert "1 clip(s) exceed full scale (e.g. b/loud.wav, peak 50)" in caplog.text


@pytest.mark.parametrize("rate, mels", [(8000, 40), (16000, 128)])
def test_utterance_statistics_at_their_bound_equal_the_reference(rate, mels):
    """MAX_FRAMES frames at the extremes the coefficients can take (half at each end: the
    largest sum of deviations) give the reference's values: no int32 sum wraps."""
    cfg = FeatureConfig(n_mels=mels, n_mfcc=13, normalize="utterance", top_db=None,
                        noise_percentile=10, noise_keep_db=60)
    tables = frontend.make_tables(cfg, rate)
    low, high = frontend.coefficient_bounds(tables)
    assert frontend.utterance_sum_bound(tables) <= fx.INT32_MAX
    frames = frontend.MAX_FRAMES
    for first, second in ((high, low), (high, high), (low, low)):
        c = np.where((np.arange(frames) % 2 == 0)[:, None], first, second).astype(np.int32)
        valid = np.ones((1, frames), bool)
        got = np.asarray(frontend._utterance(jnp.asarray(c[None]), jnp.asarray(valid),
                                             jnp.asarray(valid)))[0]
        np.testing.assert_array_equal(got, frontend_reference._utterance_ref(c, valid[0]))


def test_mel_bands_whose_utterance_sums_could_leave_int32_are_refused():
    cfg = FeatureConfig(n_mels=256, n_mfcc=13, normalize="utterance", top_db=None)
    with pytest.raises(frontend.FrontendError, match="per-utterance sums of 4096 frames"):
        frontend.make_tables(cfg, 44100)
    frontend.make_tables(dataclasses.replace(cfg, normalize="global"), 44100)  # no such sums


def test_fft_bins_of_the_most_adversarial_frames_stay_under_the_magnitude_bound():
    """Frames at +-2^14 (the block-shifted peak after its rounding) following the sign of each
    bin's cosine at three phases: every component within 2^14 + 16, every magnitude within
    MAG_MAX, the bound the mel filterbank's fraction bits are chosen for."""
    n, half = 256, 128
    frames = [np.where(np.cos(2 * np.pi * k * np.arange(n) / n + phase) >= 0, 2**14, -(2**14))
              for k in range(half + 1) for phase in (0.0, np.pi / 4, np.pi / 2)]
    u = jnp.asarray(np.array(frames, np.int32))
    re, im = dsp.rfft_q15(u, dsp.twiddles_q15(half // 2, half), dsp.bit_reversal(half),
                          dsp.twiddles_q15(half + 1, n))
    re, im = np.asarray(re, np.int64), np.asarray(im, np.int64)
    assert max(np.abs(re).max(), np.abs(im).max()) <= 2**14 + 16
    magnitude = np.asarray(dsp.isqrt(jnp.asarray(re * re + im * im, jnp.int32)))
    assert magnitude.max() <= frontend.MAG_MAX
    ref_re, ref_im = zip(*(dsp.rfft_q15_ref(row) for row in frames[:6]))
    np.testing.assert_array_equal(re[:6], np.array(ref_re))
    np.testing.assert_array_equal(im[:6], np.array(ref_im))

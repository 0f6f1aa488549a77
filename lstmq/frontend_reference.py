"""Plain NumPy/Python-integer reference of the integer front end (``lstmq.frontend``): the
same definition, frame by frame, for bit-exact tests of the ``jnp`` path and the C runtime."""

from __future__ import annotations

import numpy as np

from lstmq import dsp
from lstmq.frontend import MAD_FRAC_BITS, NOISE_SPAN, NOISE_STEP_BITS, FrontendTables, frame_count


def integer_mfcc_ref(tables: FrontendTables, pcm: np.ndarray) -> np.ndarray:
    """NumPy reference of ``integer_mfcc`` for one clip ``<int16>[samples]``: the same
    definition, frame by frame, with Python integers (``lstmq.dsp``'s ``*_ref`` kernels).

    Returns <int32>[frames, n_mfcc].
    """
    n, hop = tables.n_fft, tables.hop
    pcm = np.asarray(pcm, np.int64)
    frames = frame_count(pcm.size, hop)
    if tables.preemphasis:
        pcm = np.array([int(x) - dsp._rsr(tables.preemphasis * int(previous), 15)
                        for x, previous in zip(pcm, np.concatenate([[0], pcm[:-1]]))], np.int64)
    padded = np.concatenate([np.zeros(n // 2, np.int64), pcm, np.zeros(n // 2 + n, np.int64)])
    window = tables.window.astype(np.int64)
    mel, dct = tables.mel.astype(np.int64), tables.dct.astype(np.int64)
    logs, shifts = np.zeros((frames, tables.n_mels), np.int64), []
    for t in range(frames):
        x = padded[t * hop:t * hop + n]
        v = np.array([dsp._rsr(int(a) * int(w), 15) for a, w in zip(x, window)], np.int64)
        shift = int(dsp.block_shift_ref(np.array([np.abs(v).max()]))[0])
        u = dsp.apply_shift_ref(v, shift)
        re, im = dsp.rfft_q15_ref(u)
        power = re.astype(np.int64) ** 2 + im.astype(np.int64) ** 2
        magnitude = dsp.isqrt_ref(power).astype(np.int64)
        energy = mel @ magnitude
        logs[t] = dsp.log2_q10_ref(energy).astype(np.int64) - shift * 1024
        shifts.append(shift)
    if tables.noise_gain is not None:
        logs = _subtract_noise_ref(tables, logs)
    peak = logs.max()
    if tables.floor is not None:
        logs = np.maximum(logs, peak - tables.floor)
    counted = np.ones(frames, bool)
    if tables.speech is not None:
        counted = np.array([row.max() >= peak - tables.speech for row in logs])
    c = np.array([[dsp._rsr(int(v), tables.dct_frac_bits) for v in dct @ row] for row in logs],
                 np.int64)
    if tables.utterance:
        c = _utterance_ref(c, counted)
    return c.astype(np.int32)


def _subtract_noise_ref(tables: FrontendTables, logs: np.ndarray) -> np.ndarray:
    out = logs.copy()
    table, step = [int(v) for v in tables.noise_gain], NOISE_STEP_BITS
    for m in range(logs.shape[1]):
        column = sorted(int(v) for v in logs[:, m])
        estimate = column[(len(column) - 1) * tables.noise_percentile // 100]
        for t in range(logs.shape[0]):
            d = min(max(int(logs[t, m]) - estimate, 0), NOISE_SPAN)
            index, fraction = d >> step, d & (2**step - 1)
            low, high = table[index], table[min(index + 1, len(table) - 1)]
            out[t, m] += low + dsp._rsr((high - low) * fraction, step)
    return out


def _round_div(x: int, d: int) -> int:
    """floor(x / d + 1/2) with exact integers."""
    return (2 * x + d) // (2 * d)


def _utterance_ref(c: np.ndarray, counted: np.ndarray) -> np.ndarray:
    count = int(counted.sum())  # at least the peak's frame
    out = np.zeros_like(c)
    for j in range(c.shape[1]):
        column = [int(v) for v in c[:, j]]
        mean = _round_div(sum(v for v, k in zip(column, counted) if k), count)
        deviations = [v - mean for v in column]
        mad = max(_round_div(sum(abs(d) for d, k in zip(deviations, counted) if k), count), 1)
        out[:, j] = [_round_div(d * 2**MAD_FRAC_BITS, mad) for d in deviations]
    return out

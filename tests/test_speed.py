"""Speed votes: the integer resampler against its reference, at the edges, and in the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from lstmq.config import ConfigError, load_config
from lstmq.data import DataError, Dataset
from lstmq.audit import audit_float_free
from lstmq.speed import (output_length, play_at_speed, play_at_speed_batch, play_at_speed_ref,
                         speed_step, vote_datasets)

FULL_SCALE = np.where(np.arange(301) % 2 == 0, 32767, -32768).astype(np.int16)


@pytest.mark.parametrize("seed", range(4))
def test_the_resampler_equals_its_per_sample_reference(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        pcm = rng.integers(-32768, 32768, int(rng.integers(1, 400))).astype(np.int16)
        step = speed_step(float(rng.uniform(0.5, 2.0)))
        np.testing.assert_array_equal(play_at_speed(pcm, step), play_at_speed_ref(pcm, step))


@pytest.mark.parametrize("speed", [0.5, 0.9, 1.1, 2.0])
def test_the_batched_jnp_resampler_equals_numpy_and_is_float_free(speed):
    rng = np.random.default_rng(int(speed * 10))
    sizes = [1, 2, 37, 300, 511]
    pcm = np.zeros((len(sizes) + 1, 512), np.int16)
    for row, size in enumerate(sizes):
        pcm[row, :size] = rng.integers(-32768, 32768, size)
    pcm[-1, :301] = FULL_SCALE
    lengths = np.array([*sizes, 301], np.int32)
    step = speed_step(speed)
    width = 1100
    played, played_lengths = play_at_speed_batch(pcm, lengths, step, width)
    for row, size in enumerate(lengths):
        expected = play_at_speed(pcm[row, :size], step)
        assert int(played_lengths[row]) == expected.size
        np.testing.assert_array_equal(np.asarray(played[row, :expected.size]), expected)
        assert not np.asarray(played[row, expected.size:]).any()
    report = audit_float_free(lambda p, l: play_at_speed_batch(p, l, step, width), pcm, lengths)
    assert report.dtypes <= {"int8", "int16", "int32", "bool"}


def test_the_batched_resampler_stays_exact_for_long_clips():
    """Positions k * step beyond 2^31 (a minute at 8 kHz, played slower) without int64."""
    rng = np.random.default_rng(5)
    pcm = rng.integers(-32768, 32768, (1, 480_000)).astype(np.int16)
    step = speed_step(0.9)
    width = output_length(480_000, step)
    played, count = play_at_speed_batch(pcm, np.array([480_000], np.int32), step, width)
    assert int(count[0]) == width
    np.testing.assert_array_equal(np.asarray(played[0]), play_at_speed(pcm[0], step))


@pytest.mark.parametrize("speed", [0.5, 0.9, 0.999, 1.1, 1.5, 2.0])
def test_full_scale_swings_stay_between_their_neighbours(speed):
    step = speed_step(speed)
    played = play_at_speed(FULL_SCALE, step)
    np.testing.assert_array_equal(played, play_at_speed_ref(FULL_SCALE, step))
    position = np.arange(len(played), dtype=np.int64) * step
    index = position >> 16
    low = np.minimum(FULL_SCALE[index], FULL_SCALE[np.minimum(index + 1, 300)])
    high = np.maximum(FULL_SCALE[index], FULL_SCALE[np.minimum(index + 1, 300)])
    assert np.all((low <= played) & (played <= high))


def test_rounding_is_half_up_and_speed_one_is_the_clip():
    pcm = np.array([0, 1, 0, -1, 3], np.int16)
    np.testing.assert_array_equal(play_at_speed(pcm, 1 << 16), pcm)
    # speed 0.5: the midpoints 0.5 -> 1, 0.5 -> 1, -0.5 -> 0, 1 -> 1 (half up); past the end: 3
    np.testing.assert_array_equal(play_at_speed(pcm, speed_step(0.5)),
                                  [0, 1, 1, 1, 0, 0, -1, 1, 3, 3])
    np.testing.assert_array_equal(play_at_speed(pcm, speed_step(2.0)), [0, 0, 3])


def test_lengths_count_every_position_before_the_end():
    for samples in (1, 2, 7, 8000, 123457):
        for speed in (0.5, 0.9, 1.0, 1.1, 2.0):
            step = speed_step(speed)
            count = output_length(samples, step)
            assert (count - 1) * step < samples * 65536 <= count * step
    assert output_length(0, speed_step(0.9)) == 0
    assert play_at_speed(np.zeros(0, np.int16), speed_step(0.9)).size == 0


def test_bad_speeds_and_inputs_are_refused():
    for speed in (0.49, 2.01, float("nan")):
        with pytest.raises(ValueError, match="must be in"):
            speed_step(speed)
    with pytest.raises(ValueError, match="int16 PCM"):
        play_at_speed(np.zeros(4, np.float32), speed_step(1.1))


def test_vote_speeds_in_the_config_are_checked():
    assert load_config("task_b_qat", ["features.vote_speeds=[0.9, 1.1]"]).features.vote_speeds \
        == (0.9, 1.1)
    for bad in ("[1.0]", "[0.9, 0.9]", "[3]", "[0.2]"):
        with pytest.raises(ConfigError, match="features.vote_speeds"):
            load_config("task_b_qat", [f"features.vote_speeds={bad}"])


def _dataset(clips: list[np.ndarray]) -> Dataset:
    count = len(clips)
    return Dataset(audio=tuple(clips), labels=np.zeros(count, np.int32), classes=("a", "b"),
                   speakers=np.array(["s"] * count), partition=np.array([""] * count),
                   names=tuple(f"c{i}" for i in range(count)), sample_rate=8000,
                   fingerprint="f" * 64, source="test clips", layout="folders")


def test_vote_datasets_replay_the_int16_pcm_the_device_records():
    rng = np.random.default_rng(0)
    clips = [rng.uniform(-1, 1, n).astype(np.float32) for n in (100, 251)]
    slow, fast = vote_datasets(_dataset(clips), (0.9, 1.1))
    for played, speed in ((slow, 0.9), (fast, 1.1)):
        for clip, copy in zip(clips, played.audio):
            pcm = np.clip(np.round(clip.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)
            np.testing.assert_array_equal(np.round(copy * 32768).astype(np.int16),
                                          play_at_speed(pcm, speed_step(speed)))
        assert "played at x" in played.source
    assert len({slow.fingerprint, fast.fingerprint, "f" * 64}) == 3


def test_arrays_refuse_speed_votes():
    from lstmq.pipeline import prepare_arrays

    config = load_config("task_b_qat", ["features.vote_speeds=[0.9]"])
    with pytest.raises(DataError, match="speed votes replay the audio"):
        prepare_arrays(np.zeros((4, 3, 13), np.float32), np.full(4, 3), [0, 1, 0, 1], config)

"""Tests of lstmq.features: MFCC extraction, cache, normalisation, padding, batching."""

from __future__ import annotations

import dataclasses
import json
import time

import librosa
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstmq import features, normalization
from lstmq.config import DataConfig, FeatureConfig
from lstmq.data import Dataset
from lstmq.splits import make_split

SR = 8000


def tone(seconds: float, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def toy_dataset(clips: list[np.ndarray], fingerprint: str = "toy") -> Dataset:
    n = len(clips)
    return Dataset(
        audio=tuple(clips), labels=np.arange(n, dtype=np.int32) % 10,
        classes=tuple(str(d) for d in range(10)), speakers=np.array(["s"] * n),
        partition=np.array([""] * n), names=tuple(f"{i % 10}_s_{i}.wav" for i in range(n)),
        sample_rate=SR, fingerprint=fingerprint, source="toy",
    )


# --- extraction ---------------------------------------------------------------------


def test_mfcc_matches_librosa_with_speech_defaults():
    audio = tone(1.0)
    out = features.extract_mfcc(audio, SR, FeatureConfig())
    assert out.shape == (1 + 8000 // 128, 13) and out.dtype == np.float32  # 63 frames
    reference = librosa.feature.mfcc(y=audio, sr=SR, n_mfcc=13, n_fft=256, hop_length=128, win_length=256,
                                     window="hann", center=True, n_mels=40, fmin=20.0, fmax=4000.0)
    np.testing.assert_allclose(out, reference.T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("deltas", [1, 2])
def test_deltas_append_librosa_deltas(deltas):
    audio = tone(0.5)
    out = features.extract_mfcc(audio, SR, FeatureConfig(deltas=deltas))
    frames = 1 + audio.size // 128
    assert out.shape == (frames, 13 * (1 + deltas))
    base = out[:, :13].T
    for order in range(1, deltas + 1):
        expected = librosa.feature.delta(base, width=9, order=order, mode="nearest").T
        np.testing.assert_allclose(out[:, 13 * order : 13 * (order + 1)], expected, rtol=1e-5, atol=1e-4)
    assert np.abs(out[:, 13:]).max() > 0


@pytest.mark.parametrize("samples", [1, 100, 400, 1148])
def test_short_clips_get_valid_deltas_and_min_frames(samples):
    cfg = FeatureConfig(deltas=2, min_frames=4)
    out = features.extract_mfcc(tone(1.0)[:samples], SR, cfg)
    assert out.shape == (max(4, 1 + samples // 128), 39)
    assert np.isfinite(out).all()


def test_mel_bands_without_an_fft_bin_are_refused_not_left_constant():
    features.check_mel_bands(FeatureConfig(), 8000)
    features.check_mel_bands(FeatureConfig(), 16000)
    with pytest.raises(ValueError, match="hold no FFT bin at 1000 Hz .* fewer features.n_mels"):
        features.check_mel_bands(FeatureConfig(), 1000)
    features.check_mel_bands(FeatureConfig(n_mels=8, window_ms=128), 1000)


def test_max_frames_truncates_and_trim_drops_silence():
    speech = tone(0.5)
    assert features.extract_mfcc(speech, SR, FeatureConfig(max_frames=10)).shape == (10, 13)
    padded = np.concatenate([np.zeros(SR // 2, np.float32), speech, np.zeros(SR // 2, np.float32)])
    untrimmed = features.extract_mfcc(padded, SR, FeatureConfig())
    trimmed = features.extract_mfcc(padded, SR, FeatureConfig(trim_db=30.0))
    assert untrimmed.shape[0] == 1 + padded.size // 128
    assert abs(trimmed.shape[0] - (1 + speech.size // 128)) <= 3


def test_top_db_floors_the_log_mel_spectrum_under_the_clip_peak():
    rng = np.random.default_rng(0)
    speech = tone(0.5)
    quiet, hiss = np.zeros(SR // 4, np.float32), 1e-4 * rng.standard_normal(SR // 4).astype(np.float32)
    silent_gaps = np.concatenate([quiet, speech, quiet])
    hissing_gaps = np.concatenate([hiss, speech, hiss])
    gaps = np.r_[0:12, -12:0]  # frames well inside the gaps
    for top_db, same_gaps in ((40.0, True), (80.0, False)):
        cfg = FeatureConfig(top_db=top_db)
        a, b = (features.extract_mfcc(y, SR, cfg) for y in (silent_gaps, hissing_gaps))
        # the hiss sits about 70 dB under the tone: floored away at 40 dB, visible at 80 dB
        assert np.allclose(a[gaps], b[gaps], atol=1e-3) == same_gaps
        assert np.ptp(a[gaps], axis=0).max() < 1e-3  # digital silence: flat at the floor
    unfloored = features.extract_mfcc(silent_gaps, SR, FeatureConfig(top_db=None))
    assert unfloored[gaps, 0].max() < features.extract_mfcc(silent_gaps, SR, FeatureConfig())[gaps, 0].min()


def test_pcen_normalises_each_band_by_its_own_recent_level():
    rng = np.random.default_rng(0)
    clip = tone(0.5) + 0.05 * rng.standard_normal(SR // 2).astype(np.float32)
    cfg = FeatureConfig(compression="pcen")
    loud, quiet = (features.extract_mfcc(g * clip, SR, cfg) for g in (1.0, 0.01))
    assert loud.shape == (32, 13) and np.isfinite(loud).all()
    # 40 dB less level: the log-mel energy coefficient drops by ~40 dB, PCEN's barely moves
    log_drop = np.subtract(*(features.extract_mfcc(g * clip, SR, FeatureConfig())[:, 0] for g in (1.0, 0.01)))
    assert log_drop.mean() > 200 and np.abs(loud[:, 0] - quiet[:, 0]).mean() < 0.1 * log_drop.mean()
    slow = features.extract_mfcc(clip, SR, dataclasses.replace(cfg, pcen_time_ms=2000.0))
    assert not np.allclose(slow, loud)


def test_bad_feature_configs_are_refused():
    with pytest.raises(ValueError, match="top_db"):
        features.extract_mfcc(tone(0.2), SR, FeatureConfig(top_db=0.0))
    with pytest.raises(ValueError, match="deltas"):
        features.extract_mfcc(tone(0.2), SR, FeatureConfig(deltas=3))
    with pytest.raises(ValueError, match="max_frames"):
        features.extract_mfcc(tone(0.2), SR, FeatureConfig(max_frames=1, min_frames=2))
    with pytest.raises(ValueError, match="mono"):
        features.extract_mfcc(np.zeros((2, 800), np.float32), SR, FeatureConfig())


# --- compute_features and its cache -------------------------------------------------


def test_cache_hit_returns_identical_arrays_without_recomputing(tmp_path, monkeypatch):
    dataset = toy_dataset([tone(0.1 + 0.02 * i, 300 + 40 * i, seed=i) for i in range(12)])
    cfg = FeatureConfig(deltas=1)
    first = features.compute_features(dataset, cfg, cache_dir=tmp_path, progress=False)
    assert len(first) == 12 and [f.shape[1] for f in first] == [26] * 12
    assert [f.shape[0] for f in first] == [1 + a.size // 128 for a in dataset.audio]
    assert [p.name for p in tmp_path.iterdir()] == [f"mfcc-{features.feature_cache_key(dataset, cfg)[:24]}.npz"]
    monkeypatch.setattr(features, "extract_mfcc", lambda *args: pytest.fail("cache was not used"))
    second = features.compute_features(dataset, cfg, cache_dir=tmp_path, progress=False)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_cache_key_follows_feature_fields_and_data_only(tmp_path):
    dataset = toy_dataset([tone(0.2)] * 3)
    key = features.feature_cache_key(dataset, FeatureConfig())
    assert features.feature_cache_key(dataset, FeatureConfig(workers=3, cache=False)) == key
    assert features.feature_cache_key(dataset, FeatureConfig(n_mfcc=20)) != key
    assert features.feature_cache_key(dataset, FeatureConfig(trim_db=40.0)) != key
    assert features.feature_cache_key(dataset, FeatureConfig(top_db=40.0)) != key
    assert features.feature_cache_key(dataset, FeatureConfig(compression="pcen")) != key
    assert features.feature_cache_key(dataset, FeatureConfig(pcen_time_ms=100.0)) == key  # log: unused
    assert features.feature_cache_key(toy_dataset([tone(0.2)] * 3, "other"), FeatureConfig()) != key
    assert features.feature_cache_key(dataset.subset([0, 1]), FeatureConfig()) != key
    assert features.feature_cache_key(dataclasses.replace(dataset, sample_rate=16000), FeatureConfig()) != key


# A changed value for every FeatureConfig field, and the fields that may leave a cache key as
# it is, per front end: a field missing from both makes the test fail, so a new option
# cannot be left out of the key by accident.
_OTHER_VALUE = {"frontend": "float", "n_mfcc": 12, "window_ms": 25.0, "hop_ms": 10.0,
                "n_mels": 32, "fmin": 100.0, "fmax": 3000.0, "preemphasis": 0.97,
                "mel_norm": "none", "deltas": 1, "trim_db": 40.0, "top_db": 40.0,
                "compression": "pcen", "pcen_time_ms": 100.0, "normalize": "global",
                "speech_db": 30.0, "noise_percentile": 20, "noise_keep_db": 6.0,
                "min_frames": 3, "max_frames": 50, "vote_speeds": (0.9,), "cache": False,
                "workers": 3}
_NOT_IN_KEY = {
    # applied after the cached features (normalize), or options of the other front end
    "float": {"normalize", "speech_db", "noise_percentile", "noise_keep_db", "pcen_time_ms"},
    # a float-only option (compression, also float-only, changes the key all the same)
    "integer": {"pcen_time_ms"},
}
_NEVER_IN_KEY = {"vote_speeds", "cache", "workers"}  # votes are datasets of their own


@pytest.mark.parametrize("frontend", ["float", "integer"])
def test_cache_key_covers_every_feature_field_that_changes_the_features(frontend):
    assert set(_OTHER_VALUE) == {f.name for f in dataclasses.fields(FeatureConfig)}
    dataset = toy_dataset([tone(0.2)] * 3)
    base = FeatureConfig(frontend=frontend, normalize="utterance", noise_percentile=10) \
        if frontend == "integer" else FeatureConfig()
    key = features.feature_cache_key(dataset, base)
    for name, value in _OTHER_VALUE.items():
        if name == "frontend":
            value = "integer" if frontend == "float" else "float"
        changed = features.feature_cache_key(dataset, dataclasses.replace(base, **{name: value}))
        ignored = name in _NOT_IN_KEY[frontend] | _NEVER_IN_KEY
        assert (changed == key) == ignored, f"{frontend} front end, features.{name}"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_key"])
def test_corrupt_cache_is_recomputed_and_replaced(damage, tmp_path):
    dataset = toy_dataset([tone(0.1 + 0.03 * i, seed=i) for i in range(5)])
    cfg = FeatureConfig()
    expected = features.compute_features(dataset, cfg, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.iterdir()
    if damage == "garbage":
        path.write_bytes(b"not an npz at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        frames = np.concatenate(expected) + 1
        np.savez(path, key=np.array("x"), frames=frames, offsets=np.cumsum([0] + [len(f) for f in expected]))
    again = features.compute_features(dataset, cfg, cache_dir=tmp_path, progress=False)
    for a, b in zip(expected, again):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # repaired, no temporary left
    with np.load(path) as stored:
        assert str(stored["key"]) == features.feature_cache_key(dataset, cfg)


def test_cache_disabled_writes_nothing(tmp_path):
    dataset = toy_dataset([tone(0.2)] * 2)
    features.compute_features(dataset, FeatureConfig(cache=False), cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_empty_dataset_gives_no_features(tmp_path):
    dataset = toy_dataset([tone(0.2)] * 3).subset([])
    assert features.compute_features(dataset, FeatureConfig(), cache_dir=tmp_path, progress=False) == ()


def test_worker_processes_give_the_serial_result(tmp_path, monkeypatch):
    dataset = toy_dataset([tone(0.1 + 0.01 * i, 200 + 30 * i, seed=i) for i in range(16)])
    serial = features.compute_features(dataset, FeatureConfig(workers=1, cache=False), progress=False)
    monkeypatch.setattr(features, "CLIPS_PER_WORKER", 1)
    parallel = features.compute_features(dataset, FeatureConfig(workers=2, cache=False), progress=False)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


# --- normalisation ------------------------------------------------------------------


def clips_with_mean(mean: float, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(mean + rng.standard_normal((int(rng.integers(5, 30)), 4)) * [1, 2, 3, 4]).astype(np.float32)
            for _ in range(count)]


def test_global_normalizer_uses_training_frames_only():
    train, test = clips_with_mean(0.0, 40, seed=0), clips_with_mean(100.0, 10, seed=1)
    normalizer = normalization.fit_normalizer(train, "global")
    frames = np.concatenate(train).astype(np.float64)
    np.testing.assert_allclose(normalizer.mean, frames.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normalizer.std, frames.std(0), rtol=1e-5)
    normalized_train = np.concatenate(normalizer.apply(train))
    np.testing.assert_allclose(normalized_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(normalized_train.std(0), 1, atol=1e-5)
    normalized_test = np.concatenate(normalizer.apply(test))
    assert np.all(normalized_test.mean(0) > 20)  # test's own mean (100) was not used
    refit = normalization.fit_normalizer(train, "global")
    np.testing.assert_array_equal(refit.mean, normalizer.mean)


def test_utterance_normalizer_standardises_each_clip():
    train = clips_with_mean(5.0, 20, seed=2)
    normalizer = normalization.fit_normalizer(train, "utterance")
    shifted = [clip + 50 for clip in train]  # a per-clip offset is removed by CMVN
    for a, b in zip(normalizer.apply(train), normalizer.apply(shifted)):
        np.testing.assert_allclose(a, b, atol=1e-4)
    for clip in normalizer.apply(train):
        np.testing.assert_allclose(clip.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(normalizer.std, 1, atol=1e-5)


def test_none_normalizer_is_identity_and_dict_round_trips():
    train = clips_with_mean(3.0, 5, seed=3)
    identity = normalization.fit_normalizer(train, "none")
    for a, b in zip(identity.apply(train), train):
        np.testing.assert_array_equal(a, b)
    normalizer = normalization.fit_normalizer(train, "global")
    restored = normalization.Normalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))
    assert restored.mode == "global" and restored.mean.dtype == np.float32
    for a, b in zip(restored.apply(train), normalizer.apply(train)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="normalize mode"):
        normalization.fit_normalizer(train, "max")
    with pytest.raises(ValueError, match=r"\[frames, 4\]"):
        normalizer.apply([np.zeros((3, 5), np.float32)])


def test_constant_coefficient_does_not_blow_up():
    train = [np.ones((6, 2), np.float32), np.ones((3, 2), np.float32)]
    for mode in ("global", "utterance"):
        out = normalization.fit_normalizer(train, mode).apply(train)
        assert all(np.isfinite(clip).all() and np.abs(clip).max() == 0 for clip in out)


# --- padding and batching -----------------------------------------------------------


def test_pad_batch_pads_after_each_clip_to_a_bucket_multiple():
    clips = [np.full((n, 3), n, np.float32) for n in (5, 17, 9)]
    x, lengths = features.pad_batch(clips, bucket=8)
    assert x.shape == (3, 24, 3) and x.dtype == np.float32
    assert lengths.tolist() == [5, 17, 9] and lengths.dtype == np.int32
    for row, n in enumerate((5, 17, 9)):
        assert np.all(x[row, :n] == n) and np.all(x[row, n:] == 0)
    x, lengths = features.pad_batch(clips, bucket=1, max_len=8)
    assert x.shape == (3, 8, 3) and lengths.tolist() == [5, 8, 8]
    np.testing.assert_array_equal(x[1], clips[1][:8])


def test_length_buckets_reduce_padding():
    lengths = np.random.default_rng(0).integers(9, 144, size=1000)
    batches = features.length_buckets(lengths, batch_size=64, bucket=16, rng=1)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_batches = np.array_split(np.random.default_rng(1).permutation(1000), len(batches))
    padded_random = sum(len(b) * lengths[b].max() for b in random_batches)
    assert padded < 0.7 * padded_random
    assert all(np.ptp(-(-lengths[b] // 16)) <= 1 for b in batches)


def test_length_buckets_shuffle_with_rng_and_are_stable_without():
    lengths = np.random.default_rng(0).integers(9, 144, size=200)
    assert all(np.array_equal(a, b) for a, b in zip(features.length_buckets(lengths, 32),
                                                   features.length_buckets(lengths, 32)))
    first, again, other = (features.length_buckets(lengths, 32, 8, rng=seed) for seed in (5, 5, 6))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 200), min_size=0, max_size=120),
    batch_size=st.integers(1, 40),
    bucket=st.integers(1, 32),
    seed=st.one_of(st.none(), st.integers(0, 2**31)),
)
def test_length_buckets_cover_every_index_once(lengths, batch_size, bucket, seed):
    batches = features.length_buckets(lengths, batch_size, bucket, rng=seed)
    flat = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert sum(len(b) < batch_size for b in batches) <= 1


# --- real data ----------------------------------------------------------------------


@pytest.mark.fsdd
def test_real_features_frame_counts_and_cache(fsdd_dataset, tmp_path):
    cfg = FeatureConfig()
    start = time.perf_counter()
    cold = features.compute_features(fsdd_dataset, cfg, cache_dir=tmp_path, progress=False)
    cold_seconds = time.perf_counter() - start
    start = time.perf_counter()
    warm = features.compute_features(fsdd_dataset, cfg, cache_dir=tmp_path, progress=False)
    warm_seconds = time.perf_counter() - start
    frames = np.array([f.shape[0] for f in cold])
    assert (frames.min(), int(np.median(frames)), frames.max()) == (9, 27, 143)
    np.testing.assert_array_equal(frames, [1 + a.size // 128 for a in fsdd_dataset.audio])
    assert all(np.array_equal(a, b) for a, b in zip(cold, warm))
    assert warm_seconds < cold_seconds / 3
    split = make_split(fsdd_dataset, DataConfig())
    normalizer = normalization.fit_normalizer([cold[i] for i in split.train], cfg.normalize)
    test = np.concatenate(normalizer.apply([cold[i] for i in split.test]))
    assert np.all(np.abs(test.mean(0)) < 0.2) and np.all(np.abs(test.std(0) - 1) < 0.2)

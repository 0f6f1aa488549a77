import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmq.augment import (augment_clip, augment_dataset, band_limit, reverberate, room_response,
                           stretch_tempo, warp_formants)
from lstmq.batch_augment import make_spec_augment, mixup, spec_augment
from lstmq.config import AugmentConfig, load_config
from lstmq.pipeline import prepare_data


def _tone(seconds=0.5, rate=8000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_speed_changes_length_within_range():
    audio = _tone()
    cfg = AugmentConfig(speed=0.2, copies=1)
    lengths = [len(augment_clip(audio, 8000, cfg, np.random.default_rng(i))) for i in range(20)]
    assert min(lengths) >= int(len(audio) / 1.2) - 2 and max(lengths) <= int(len(audio) / 0.8) + 2
    assert len(set(lengths)) > 5  # factors really vary


def _peak_hz(audio, rate=8000):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)]


def test_pitch_shift_moves_frequency_within_range_and_keeps_duration():
    audio = _tone(1.0)
    cfg = AugmentConfig(pitch=2.0, copies=1)
    peaks = []
    for seed in range(8):
        shifted = augment_clip(audio, 8000, cfg, np.random.default_rng(seed))
        assert len(shifted) == len(audio)
        peaks.append(_peak_hz(shifted))
    low, high = 440 * 2 ** (-2 / 12), 440 * 2 ** (2 / 12)
    assert low - 3 <= min(peaks) and max(peaks) <= high + 3
    assert max(peaks) - min(peaks) > 20  # shifts really vary
    steps = np.random.default_rng(0).uniform(-2.0, 2.0)  # the first draw of seed 0
    assert abs(peaks[0] - 440 * 2 ** (steps / 12)) < 3


def test_pitch_shift_of_a_short_clip_uses_a_window_shorter_than_the_clip():
    short = _tone(0.25)  # 2000 samples: librosa's default 2048-point window would not fit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shifted = augment_clip(short, 8000, AugmentConfig(pitch=2.0, copies=1),
                               np.random.default_rng(0))
    assert len(shifted) == len(short)
    steps = np.random.default_rng(0).uniform(-2.0, 2.0)
    assert abs(_peak_hz(shifted) - 440 * 2 ** (steps / 12)) < 8  # 4 Hz bins at 0.25 s


def _vowel(formant_hz=700.0, f0=125.0, seconds=1.0, rate=8000, width_hz=300.0):
    """Harmonics of f0 weighted by one resonance at ``formant_hz`` (a crude vowel)."""
    t = np.arange(int(seconds * rate)) / rate
    harmonics = np.arange(1, int(rate / 2 / f0))
    weights = np.exp(-0.5 * ((harmonics * f0 - formant_hz) / width_hz) ** 2) + 0.01
    audio = sum(w * np.sin(2 * np.pi * k * f0 * t) for k, w in zip(harmonics, weights))
    return (0.3 * audio / np.abs(audio).max()).astype(np.float32)


def _spectrum(audio, rate=8000):
    return np.fft.rfftfreq(len(audio), 1 / rate), np.abs(np.fft.rfft(audio * np.hanning(len(audio))))


@pytest.mark.parametrize("factor", [0.85, 1.2])
def test_formant_warp_moves_the_envelope_and_keeps_the_harmonics(factor):
    audio = _vowel()
    warped = warp_formants(audio, 8000, factor)
    assert warped.shape == audio.shape
    np.testing.assert_allclose(np.sqrt(np.mean(warped**2)), np.sqrt(np.mean(audio**2)), rtol=1e-4)
    freqs, before = _spectrum(audio)
    _, after = _spectrum(warped)
    _, ideal = _spectrum(_vowel(700.0 * factor, width_hz=300.0 * factor))  # the vowel it mimics
    band = (freqs > 150) & (freqs < 3000)
    centroid = lambda m: np.sum(freqs[band] * m[band] ** 2) / np.sum(m[band] ** 2)
    moved = (centroid(after) / centroid(before) - 1) / (centroid(ideal) / centroid(before) - 1)
    assert 0.75 < moved < 1.15  # most of the requested move, none in the wrong direction
    # the energy still sits on the harmonics of 125 Hz: pitch unchanged
    on_harmonic = np.abs((freqs / 125.0) - np.round(freqs / 125.0)) * 125.0 < 6.0
    assert np.sum(after[on_harmonic] ** 2) > 0.97 * np.sum(after**2)


def test_formant_warp_of_one_is_the_clip_and_the_option_draws_factors_in_range():
    audio = _vowel(seconds=0.4)
    np.testing.assert_array_equal(warp_formants(audio, 8000, 1.0), audio)
    cfg = AugmentConfig(formant=0.15, copies=1)
    freqs, before = _spectrum(audio)
    ratios = []
    for seed in range(6):
        out = augment_clip(audio, 8000, cfg, np.random.default_rng(seed))
        _, after = _spectrum(out)
        ratios.append(np.sum(freqs * after**2) / np.sum(after**2)
                      / (np.sum(freqs * before**2) / np.sum(before**2)))
    assert 0.8 < min(ratios) and max(ratios) < 1.2 and max(ratios) - min(ratios) > 0.05


def _peak_hz(audio, rate=8000):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)]


@pytest.mark.parametrize("rate", [0.8, 1.25])
def test_tempo_stretch_changes_the_duration_and_keeps_the_pitch(rate):
    audio = _tone(1.0)
    out = stretch_tempo(audio, 8000, rate)
    assert abs(len(out) - len(audio) / rate) <= 1
    assert abs(_peak_hz(out[400:-400]) - 440.0) < 8.0  # a speed change would move it to 440 x rate


def test_tempo_of_one_is_the_clip_and_the_option_draws_rates_in_range():
    audio = _tone(0.5)
    np.testing.assert_array_equal(stretch_tempo(audio, 8000, 1.0), audio)
    cfg = AugmentConfig(tempo=0.2, copies=1)
    lengths = [len(augment_clip(audio, 8000, cfg, np.random.default_rng(seed)))
               for seed in range(8)]
    assert len(audio) / 1.2 - 1 <= min(lengths) and max(lengths) <= len(audio) / 0.8 + 1
    assert max(lengths) - min(lengths) > 0.1 * len(audio)  # really drawn, not fixed


def test_noise_has_requested_snr():
    audio = _tone(2.0)
    noisy = augment_clip(audio, 8000, AugmentConfig(noise_snr_db=10.0, copies=1),
                         np.random.default_rng(0))
    noise = noisy - audio
    snr = 10 * np.log10(np.mean(audio**2) / np.mean(noise**2))
    assert abs(snr - 10.0) < 0.3


def test_noise_snr_range_draws_within_bounds():
    audio = _tone(2.0)
    cfg = AugmentConfig(noise_snr_db=5.0, noise_snr_db_max=25.0, copies=1)
    snrs = []
    for seed in range(12):
        noise = augment_clip(audio, 8000, cfg, np.random.default_rng(seed)) - audio
        snrs.append(10 * np.log10(np.mean(audio**2) / np.mean(noise**2)))
    assert 4.7 < min(snrs) and max(snrs) < 25.3
    assert max(snrs) - min(snrs) > 5  # really drawn, not fixed


@pytest.mark.parametrize("cfg", [AugmentConfig(noise_snr_db_max=20.0, copies=1),
                                 AugmentConfig(noise_snr_db=20.0, noise_snr_db_max=10.0, copies=1),
                                 AugmentConfig(speed=1.0, copies=1),
                                 AugmentConfig(pitch=-1.0, copies=1),
                                 AugmentConfig(pitch=13.0, copies=1),
                                 AugmentConfig(formant=-0.1, copies=1),
                                 AugmentConfig(formant=0.5, copies=1),
                                 AugmentConfig(tempo=-0.1, copies=1),
                                 AugmentConfig(tempo=0.5, copies=1),
                                 AugmentConfig(reverb_rt60=-0.1, copies=1),
                                 AugmentConfig(reverb_rt60=3.0, copies=1),
                                 AugmentConfig(lowpass_hz=0.0, copies=1),
                                 AugmentConfig(lowpass_hz=4000.0, copies=1),
                                 AugmentConfig(highpass_hz=5000.0, copies=1)])
def test_impossible_augmentation_is_refused(cfg, wav_folder):
    from lstmq.data import load_recordings

    with pytest.raises(ValueError, match="augment"):
        augment_dataset(load_recordings(wav_folder), cfg, 0, 0)


def test_time_shift_adds_leading_silence_only():
    audio = _tone()
    shifted = augment_clip(audio, 8000, AugmentConfig(time_shift=0.5, copies=1),
                           np.random.default_rng(3))
    lead = len(shifted) - len(audio)
    assert 0 < lead <= len(audio) // 2
    np.testing.assert_array_equal(shifted[:lead], 0)
    np.testing.assert_array_equal(shifted[lead:], audio)


def test_room_response_decays_60_db_in_rt60_with_tail_as_loud_as_direct_path():
    rate, rt60 = 8000, 0.4
    response = room_response(rt60, rate, np.random.default_rng(0))
    assert response.shape == (int(rt60 * rate),) and response[0] == 1.0
    tail = response[1:].astype(np.float64)
    assert np.sum(tail**2) == pytest.approx(1.0, rel=1e-5)
    # Mean energy of the first and last 10% of the response: 60 dB per rt60, so 54 dB apart.
    tenth = len(tail) // 10
    drop_db = 10 * np.log10(np.mean(tail[:tenth] ** 2) / np.mean(tail[-tenth:] ** 2))
    assert 50 < drop_db < 58


def test_reverberation_keeps_length_and_rms_and_smears_in_time():
    audio = np.zeros(4000, np.float32)
    audio[1000:1200] = _tone()[:200]
    wet = reverberate(audio, room_response(0.3, 8000, np.random.default_rng(1)))
    assert wet.shape == audio.shape and wet.dtype == np.float32
    assert np.sqrt(np.mean(wet**2)) == pytest.approx(np.sqrt(np.mean(audio**2)), rel=1e-4)
    assert np.max(np.abs(wet[:1000])) < 1e-6  # causal: nothing before the sound
    assert np.sqrt(np.mean(wet[1400:2000] ** 2)) > 1e-3  # the tail rings on after it


def test_reverb_option_changes_the_clip_and_zero_keeps_it():
    audio = _tone()
    dry = augment_clip(audio, 8000, AugmentConfig(reverb_rt60=0.0, copies=1), np.random.default_rng(0))
    np.testing.assert_array_equal(dry, audio)
    wet = augment_clip(audio, 8000, AugmentConfig(reverb_rt60=0.5, copies=1), np.random.default_rng(0))
    assert wet.shape == audio.shape and not np.allclose(wet, audio, atol=1e-3)


def _tone_at(hz, seconds=0.5, rate=8000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _rms(x):
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


def test_band_limit_passes_the_band_and_cuts_outside_it():
    low, mid, high = _tone_at(60), _tone_at(1000), _tone_at(3500)
    for audio, expected in ((mid, 1.0), (high, 0.0), (low, 0.0)):
        out = band_limit(audio, 8000, lowpass_hz=2500, highpass_hz=200)[2000:]  # past the onset
        assert out.dtype == np.float32
        assert _rms(out) / _rms(audio[2000:]) == pytest.approx(expected, abs=0.1)
    np.testing.assert_array_equal(band_limit(mid, 8000, None, None), mid)
    np.testing.assert_array_equal(band_limit(mid, 8000, 4000, 0.5), mid)  # cutoffs out of range


def test_lowpass_option_draws_cutoffs_between_its_floor_and_nyquist():
    high = _tone_at(3000)
    kept = [_rms(augment_clip(high, 8000, AugmentConfig(lowpass_hz=2000, copies=1),
                              np.random.default_rng(seed))[2000:]) / _rms(high[2000:])
            for seed in range(12)]
    assert min(kept) < 0.3 and max(kept) > 0.7  # some cutoffs under 3 kHz, some over


def test_augment_dataset_is_deterministic_and_fingerprinted(wav_folder):
    from lstmq.data import load_recordings

    dataset = load_recordings(wav_folder)
    cfg = AugmentConfig(speed=0.1, noise_snr_db=20.0, copies=2)
    a, b = augment_dataset(dataset, cfg, 0, 0), augment_dataset(dataset, cfg, 0, 0)
    c = augment_dataset(dataset, cfg, 0, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a.audio, b.audio))
    assert a.fingerprint == b.fingerprint != c.fingerprint != dataset.fingerprint
    np.testing.assert_array_equal(a.labels, dataset.labels)


def test_spec_augment_masks_inside_clip_and_keeps_shape():
    x = jnp.ones((8, 20, 13))
    lengths = jnp.full((8,), 12, jnp.int32)
    y = spec_augment(jax.random.PRNGKey(0), x, lengths, freq_mask=3, time_mask=4)
    assert y.shape == x.shape
    zeros = np.asarray(y == 0)
    assert zeros.any()
    # no masked frame starts at or beyond a clip's length unless the whole band is masked
    frame_masked = zeros.all(axis=2)
    assert not frame_masked[:, 16:].any()
    assert make_spec_augment(AugmentConfig()) is None


def test_mixup_matches_numpy_and_keeps_padding_out():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 10, 3)).astype(np.float32)
    lengths = rng.integers(1, 11, 16).astype(np.int32)
    weight = np.r_[np.ones(12), np.zeros(4)].astype(np.float32)  # 4 padding entries
    mixed, longer, partner, lam = (np.asarray(a) for a in mixup(
        jax.random.PRNGKey(3), jnp.asarray(x), jnp.asarray(lengths), jnp.asarray(weight), 0.4))
    assert sorted(partner) == list(range(16))  # a permutation of the batch
    padding_partner = weight[partner] == 0
    np.testing.assert_array_equal(lam[padding_partner], 1.0)  # padding is never mixed in
    assert np.all((lam >= 0.5) & (lam <= 1.0)) and np.any(lam < 0.99)
    want = lam[:, None, None] * x + (1 - lam[:, None, None]) * x[partner]
    np.testing.assert_allclose(mixed, want, rtol=1e-6, atol=1e-6)
    mixed_in = lam < 1.0
    np.testing.assert_array_equal(longer[mixed_in],
                                  np.maximum(lengths, lengths[partner])[mixed_in])
    np.testing.assert_array_equal(longer[~mixed_in], lengths[~mixed_in])


@pytest.mark.parametrize("option", ["formant", "tempo"])
def test_newer_options_enter_the_copies_fingerprint_only_when_set(wav_folder, option):
    import hashlib
    import json

    from lstmq.data import load_recordings

    dataset = load_recordings(wav_folder)
    cfg = AugmentConfig(pitch=1.0, copies=1)
    # the fingerprint of copies made before the option existed: every other field
    older = {k: v for k, v in dataclasses.asdict(cfg).items()
             if k not in ("mixup", "formant", "tempo")}
    spec = json.dumps({"parent": dataset.fingerprint, "augment": older, "seed": 0, "copy": 0},
                      sort_keys=True)
    assert augment_dataset(dataset, cfg, 0, 0).fingerprint == hashlib.sha256(spec.encode()).hexdigest()
    changed = augment_dataset(dataset, dataclasses.replace(cfg, **{option: 0.1}), 0, 0)
    assert changed.fingerprint != hashlib.sha256(spec.encode()).hexdigest()


def test_mixup_is_refused_when_negative_and_leaves_copies_fingerprint_alone(wav_folder):
    from lstmq.config_checks import ConfigError, check_config
    from lstmq.data import load_recordings

    with pytest.raises(ConfigError, match="augment.mixup"):
        check_config(load_config(None, ["augment.mixup=-0.1"]))
    dataset = load_recordings(wav_folder)
    cfg = AugmentConfig(speed=0.1, copies=1)
    # mixup happens in the train step: the augmented audio (and its feature cache) is the same
    assert (augment_dataset(dataset, cfg, 0, 0).fingerprint
            == augment_dataset(dataset, dataclasses.replace(cfg, mixup=0.4), 0, 0).fingerprint)


def test_augmented_copies_extend_training_split_only(wav_folder):
    base = load_config(None, [f"data.path={wav_folder}", "data.split=official",
                              "features.cache=false", "data.val_fraction=0.0"])
    plain = prepare_data(base, progress=False)
    augmented = prepare_data(dataclasses.replace(
        base, augment=AugmentConfig(copies=2, speed=0.1)), progress=False)
    assert len(augmented.train) == 3 * len(plain.train)
    assert len(augmented.test) == len(plain.test)
    np.testing.assert_array_equal(augmented.normalizer.mean, plain.normalizer.mean)


def test_babble_copies_mix_other_speakers_at_the_snr_and_leave_other_draws_alone(wav_folder):
    from lstmq.data import load_recordings

    dataset = load_recordings(wav_folder)
    babble = augment_dataset(dataset, AugmentConfig(babble_snr_db=10.0, copies=1), 0, 0)
    for clean, noisy in zip(dataset.audio, babble.audio):
        clean = clean.astype(np.float64)
        snr = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
        assert abs(snr - 10.0) < 0.05
    white = AugmentConfig(noise_snr_db=20.0, copies=1)
    both = dataclasses.replace(white, babble_snr_db=0.0, babble_snr_db_max=5.0, babble_prob=0.5)
    plain, mixed = augment_dataset(dataset, white, 3, 0), augment_dataset(dataset, both, 3, 0)
    same = [np.array_equal(a, b) for a, b in zip(plain.audio, mixed.audio)]
    assert 0 < sum(same) < len(same)  # about half the copies get babble on top, the rest are as before
    assert plain.fingerprint != mixed.fingerprint


@pytest.mark.parametrize("bad, message", [
    (dict(babble_snr_db=10.0, babble_snr_db_max=5.0), "babble_snr_db_max"),
    (dict(babble_snr_db_max=5.0), "babble_snr_db_max"),
    (dict(babble_talkers=0), "babble_talkers"),
    (dict(babble_prob=1.5), "babble_prob"),
])
def test_impossible_babble_is_refused_by_the_config(bad, message):
    from lstmq.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"augment.{k}={v}" for k, v in bad.items()])

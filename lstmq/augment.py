"""Training-time waveform copies: speed, pitch, formants, tempo, shift, reverb, band limits,
white noise, babble of other speakers.

Waveform augmentation makes ``augment.copies`` extra versions of every training clip
before featurization (each copy is a Dataset of its own, so its features are cached like
any other). SpecAugment masks and mixup are drawn inside the jitted train step
(``lstmq.batch_augment``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence

import numpy as np

from lstmq.config import AugmentConfig
from lstmq.data import DataError, Dataset

# Augmentation applied in the train step, not to the copies' audio: kept out of the copies'
# fingerprint (the SpecAugment masks, older, stay in it so existing caches stay valid).
_STEP_ONLY = ("mixup",)
# Waveform options newer than cached copies: in the fingerprint only when set, so that the
# copies of configs without them keep their cache entries.
_FINGERPRINT_WHEN_SET = ("formant", "tempo")


def _phase_vocoder_fft(sample_rate: int) -> int:
    """FFT size of about 32 ms for the pitch shifter's phase vocoder (256 at 8 kHz):
    librosa's default 2048 would be 256 ms at 8 kHz, longer than many digits."""
    return 1 << max(6, round(np.log2(0.032 * sample_rate)))


def change_speed(audio: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
    """The clip played ``factor`` times faster (tempo and pitch together)."""
    import librosa

    return librosa.resample(np.asarray(audio, np.float32), orig_sr=sample_rate * factor,
                            target_sr=sample_rate, res_type="soxr_mq").astype(np.float32)


def shift_pitch(audio: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Every frequency moved by ``semitones``, the duration kept (32 ms phase vocoder)."""
    import librosa

    n_fft = _phase_vocoder_fft(sample_rate)
    return librosa.effects.pitch_shift(np.asarray(audio, np.float32), sr=sample_rate,
                                       n_steps=semitones, n_fft=n_fft, hop_length=n_fft // 4,
                                       res_type="soxr_mq").astype(np.float32)


def stretch_tempo(audio: np.ndarray, sample_rate: int, rate: float) -> np.ndarray:
    """The clip spoken ``rate`` times faster (``len / rate`` samples), pitch and formants kept
    (32 ms phase vocoder)."""
    import librosa

    audio = np.asarray(audio, np.float32)
    if rate == 1.0 or len(audio) == 0:
        return audio.copy()
    n_fft = _phase_vocoder_fft(sample_rate)
    return librosa.effects.time_stretch(audio, rate=rate, n_fft=n_fft,
                                        hop_length=n_fft // 4).astype(np.float32)


def warp_formants(audio: np.ndarray, sample_rate: int, factor: float,
                  smooth_hz: float = 200.0) -> np.ndarray:
    """The spectral envelope stretched ``factor`` times along the frequency axis (a vocal
    tract ``1 / factor`` times as long: formants at ``factor`` x their frequency), the
    harmonics of the voice (its pitch) and the duration kept; same RMS as the input.

    Per 32 ms frame (hop a quarter of it): the envelope is the power spectrum averaged over
    ``smooth_hz`` (about the spacing of a low voice's harmonics); each bin is scaled by the
    warped envelope over the original one (``sqrt(E(f / factor) / E(f))``, the envelope past
    Nyquist held at its last value), and the clip resynthesised with the original phases.
    The smoothing makes the move partial: on vowels of one formant (F0 100-200 Hz) the power
    centroid moves by 0.8-1.0 of the requested shift.
    """
    import librosa
    from scipy.ndimage import uniform_filter1d  # pylint: disable=import-outside-toplevel

    audio = np.asarray(audio, np.float32)
    if factor == 1.0 or len(audio) == 0:
        return audio.copy()
    n_fft = _phase_vocoder_fft(sample_rate)
    spectrum = librosa.stft(audio, n_fft=n_fft, hop_length=n_fft // 4)
    width = max(1, int(round(smooth_hz * n_fft / sample_rate))) | 1  # odd, in bins
    envelope = uniform_filter1d(np.abs(spectrum) ** 2, width, axis=0, mode="nearest") + 1e-12
    bins = np.arange(envelope.shape[0], dtype=np.float64)
    warped = np.stack([np.interp(bins / factor, bins, column) for column in envelope.T], axis=1)
    out = librosa.istft(spectrum * np.sqrt(warped / envelope), hop_length=n_fft // 4,
                        n_fft=n_fft, length=len(audio))
    rms_in, rms_out = float(np.sqrt(np.mean(audio**2))), float(np.sqrt(np.mean(out**2)))
    return (out * (rms_in / rms_out) if rms_out > 0 else out).astype(np.float32)


def add_at_snr(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``audio`` plus ``noise`` scaled so that mean(audio^2) / mean(noise^2) is ``snr_db``
    (both over the whole clip), clipped to [-1, 1]. A silent clip gets noise at the level
    of an RMS of 1e-4."""
    audio = np.asarray(audio, np.float32)
    noise = np.asarray(noise, np.float64)
    if noise.shape != audio.shape:
        raise ValueError(f"noise of shape {noise.shape} for audio of shape {audio.shape}")
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) or 1e-4
    noise_rms = float(np.sqrt(np.mean(noise**2)))
    if noise_rms == 0:
        raise ValueError("the noise is silent: no signal-to-noise ratio can be set")
    scaled = noise * (rms / 10 ** (snr_db / 20) / noise_rms)
    return np.clip(audio + scaled, -1.0, 1.0).astype(np.float32)


def _unit_rms(clip: np.ndarray) -> np.ndarray:
    clip = np.asarray(clip, np.float64)
    return clip / np.sqrt(np.mean(clip**2))


def babble_talkers(pool: Dataset, speaker: str, label: int, count: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Indices into ``pool`` of ``count`` clips to talk over a clip of ``speaker`` saying
    class ``label``: never that speaker (when known) nor that class, distinct speakers
    first, then further clips of the same speakers. ``pool`` holds audible clips only.

    Raises:
      DataError: no clip of ``pool`` qualifies.
    """
    allowed = pool.labels != label
    if speaker:
        allowed &= pool.speakers != speaker
    candidates = np.flatnonzero(allowed)
    if candidates.size == 0:
        raise DataError(f"{pool.source}: no audible clip of another speaker and "
                        f"another class than {speaker or 'an unknown speaker'}'s "
                        f"{pool.classes[label]!r} to make babble from")
    by_speaker: dict[str, list[int]] = {}
    for i in rng.permutation(candidates):
        by_speaker.setdefault(str(pool.speakers[i]), []).append(int(i))
    order = [by_speaker[s] for s in rng.permutation(sorted(by_speaker))]
    chosen: list[int] = []
    while len(chosen) < count:  # round-robin over speakers: distinct voices first
        for clips in order:
            if len(chosen) < count:
                chosen.append(clips[(len(chosen) // len(order)) % len(clips)])
    return np.array(chosen, np.int64)


def babble_noise(talkers: Sequence[np.ndarray], length: int,
                 rng: np.random.Generator) -> np.ndarray:
    """``<float64>[length]``: the sum of the talkers' clips, each at unit RMS, looped from a
    random offset to ``length`` samples."""
    out = np.zeros(length, np.float64)
    for clip in talkers:
        clip = _unit_rms(clip)
        start = int(rng.integers(len(clip)))
        out += np.resize(np.roll(clip, -start), length)
    return out


def audible(dataset: Dataset) -> Dataset:
    """The clips of ``dataset`` that are not all zeros (babble voices)."""
    return dataset.subset(np.array([np.any(a != 0) for a in dataset.audio], bool))


def augment_clip(audio: np.ndarray, sample_rate: int, cfg: AugmentConfig,
                 rng: np.random.Generator) -> np.ndarray:
    """One randomly perturbed copy of a clip ``<float32>[samples]``.

    - speed: resample by a factor in [1 - speed, 1 + speed] (tempo and pitch change together,
      as in Kaldi's speed perturbation, a proxy for other vocal tracts);
    - pitch: shift every frequency (pitch and formants) by up to this many semitones up or
      down, keeping the duration (``librosa.effects.pitch_shift`` with a 32 ms window);
    - formant: stretch the spectral envelope (formants) by a factor in [1 - formant,
      1 + formant], pitch and duration kept (``warp_formants``: other vocal tract lengths);
    - tempo: speak faster or slower by a factor in [1 - tempo, 1 + tempo], pitch and formants
      kept (``stretch_tempo``: other speaking rates);
    - time_shift: up to this fraction of the clip of leading silence;
    - reverb_rt60: convolve with a synthetic room response (``room_response``) whose
      reverberation time is drawn uniformly up to this many seconds, keeping length and RMS;
    - lowpass_hz / highpass_hz: a 4th-order Butterworth low-pass with its cutoff drawn in
      [lowpass_hz, Nyquist] and a high-pass with its cutoff drawn in [0, highpass_hz]: the
      bandwidths of other microphones and recording chains;
    - noise_snr_db: white noise at this signal-to-noise ratio (drawn uniformly up to
      noise_snr_db_max when that is set).
    """
    out = np.asarray(audio, np.float32)
    if cfg.speed > 0:
        out = change_speed(out, sample_rate, rng.uniform(1 - cfg.speed, 1 + cfg.speed))
    if cfg.pitch > 0:
        out = shift_pitch(out, sample_rate, rng.uniform(-cfg.pitch, cfg.pitch))
    if cfg.formant > 0:
        out = warp_formants(out, sample_rate, rng.uniform(1 - cfg.formant, 1 + cfg.formant))
    if cfg.tempo > 0:
        out = stretch_tempo(out, sample_rate, rng.uniform(1 - cfg.tempo, 1 + cfg.tempo))
    if cfg.time_shift > 0:
        lead = int(rng.uniform(0, cfg.time_shift) * len(out))
        out = np.concatenate([np.zeros(lead, np.float32), out])
    if cfg.reverb_rt60 > 0:
        out = reverberate(out, room_response(rng.uniform(0, cfg.reverb_rt60), sample_rate, rng))
    if cfg.lowpass_hz is not None or cfg.highpass_hz is not None:
        low = rng.uniform(cfg.lowpass_hz, sample_rate / 2) if cfg.lowpass_hz is not None else None
        high = rng.uniform(0, cfg.highpass_hz) if cfg.highpass_hz is not None else None
        out = band_limit(out, sample_rate, low, high)
    if cfg.noise_snr_db is not None:
        snr_db = cfg.noise_snr_db
        if cfg.noise_snr_db_max is not None:
            snr_db = rng.uniform(cfg.noise_snr_db, cfg.noise_snr_db_max)
        rms = float(np.sqrt(np.mean(out**2))) or 1e-4
        noise_rms = rms / 10 ** (snr_db / 20)
        out = out + rng.normal(0, noise_rms, len(out)).astype(np.float32)
    return np.clip(out, -1.0, 1.0)


def room_response(rt60: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response ``<float32>[taps]``: the direct path (1 at tap 0)
    followed by Gaussian noise whose energy falls 60 dB in ``rt60`` seconds (a diffuse
    late reverberation, Polack's model), as loud in total as the direct path."""
    taps = max(int(rt60 * sample_rate), 1)
    t = np.arange(taps) / sample_rate
    tail = rng.normal(0, 1, taps) * 10 ** (-3 * t / max(rt60, 1e-6))  # amplitude: -60 dB at rt60
    tail[0] = 0.0
    energy = float(np.sum(tail**2))
    if energy > 0:
        tail /= np.sqrt(energy)
    tail[0] = 1.0
    return tail.astype(np.float32)


def reverberate(audio: np.ndarray, response: np.ndarray) -> np.ndarray:
    """``audio`` convolved with ``response``, cut to the input's length and rescaled to its
    RMS (the tail past the clip's end is dropped, as a fixed-length recording would)."""
    from scipy.signal import fftconvolve  # pylint: disable=import-outside-toplevel

    wet = fftconvolve(audio, response)[: len(audio)].astype(np.float32)
    rms_in, rms_out = float(np.sqrt(np.mean(audio**2))), float(np.sqrt(np.mean(wet**2)))
    return wet * (rms_in / rms_out) if rms_out > 0 else wet


def band_limit(audio: np.ndarray, sample_rate: int, lowpass_hz: float | None,
               highpass_hz: float | None, order: int = 4) -> np.ndarray:
    """``audio`` through Butterworth filters (zero-phase is not needed: a microphone is
    causal): a low-pass at ``lowpass_hz`` and a high-pass at ``highpass_hz``; a cutoff at or
    past Nyquist (low-pass) or at or under 1 Hz (high-pass) leaves that side unfiltered."""
    from scipy.signal import butter, sosfilt  # pylint: disable=import-outside-toplevel

    out = np.asarray(audio, np.float32)
    nyquist = sample_rate / 2
    if lowpass_hz is not None and lowpass_hz < 0.99 * nyquist:
        out = sosfilt(butter(order, lowpass_hz, "lowpass", fs=sample_rate, output="sos"), out)
    if highpass_hz is not None and highpass_hz > 1.0:
        out = sosfilt(butter(order, highpass_hz, "highpass", fs=sample_rate, output="sos"), out)
    return np.asarray(out, np.float32)


def check_augment_config(cfg: AugmentConfig, sample_rate: int | None = None) -> None:
    """Raise ValueError for settings that cannot be honoured (at ``sample_rate``, if given)."""
    if cfg.noise_snr_db_max is not None and (cfg.noise_snr_db is None
                                             or cfg.noise_snr_db_max < cfg.noise_snr_db):
        raise ValueError(f"augment.noise_snr_db_max {cfg.noise_snr_db_max} needs "
                         f"augment.noise_snr_db <= it, got {cfg.noise_snr_db}")
    if not 0 <= cfg.speed < 1:
        raise ValueError(f"augment.speed must be in [0, 1), got {cfg.speed}")
    if not 0 <= cfg.reverb_rt60 <= 2:
        raise ValueError(f"augment.reverb_rt60 must be in [0, 2] seconds, got {cfg.reverb_rt60}")
    for name in ("lowpass_hz", "highpass_hz"):
        cutoff = getattr(cfg, name)
        if cutoff is not None and cutoff <= 0:
            raise ValueError(f"augment.{name} must be positive or null, got {cutoff}")
        if cutoff is not None and sample_rate is not None and cutoff >= sample_rate / 2:
            raise ValueError(f"augment.{name} {cutoff} Hz is not under the Nyquist frequency "
                             f"({sample_rate / 2:g} Hz at {sample_rate} Hz)")
    if not 0 <= cfg.pitch <= 12:
        raise ValueError(f"augment.pitch must be in [0, 12] semitones, got {cfg.pitch}")
    if not 0 <= cfg.formant < 0.5:
        raise ValueError(f"augment.formant must be in [0, 0.5), got {cfg.formant}")
    if not 0 <= cfg.tempo < 0.5:
        raise ValueError(f"augment.tempo must be in [0, 0.5), got {cfg.tempo}")
    if cfg.babble_snr_db_max is not None and (cfg.babble_snr_db is None
                                              or cfg.babble_snr_db_max < cfg.babble_snr_db):
        raise ValueError(f"augment.babble_snr_db_max {cfg.babble_snr_db_max} needs "
                         f"augment.babble_snr_db <= it, got {cfg.babble_snr_db}")
    if cfg.babble_talkers < 1 or not 0 <= cfg.babble_prob <= 1:
        raise ValueError("augment.babble_talkers must be at least 1 and augment.babble_prob in "
                         f"[0, 1], got {cfg.babble_talkers} and {cfg.babble_prob}")


def waveform_augmentation_enabled(cfg: AugmentConfig) -> bool:
    return cfg.copies > 0 and (cfg.speed > 0 or cfg.pitch > 0 or cfg.formant > 0
                               or cfg.tempo > 0 or cfg.time_shift > 0
                               or cfg.reverb_rt60 > 0 or cfg.lowpass_hz is not None
                               or cfg.highpass_hz is not None
                               or cfg.noise_snr_db is not None
                               or (cfg.babble_snr_db is not None and cfg.babble_prob > 0))


def add_babble(audio: np.ndarray, dataset: Dataset, index: int, voices: Dataset,
               cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Clip ``index`` of ``dataset`` (``audio``, already augmented) under babble of
    ``voices`` (other speakers, other classes), with probability ``babble_prob``."""
    if cfg.babble_snr_db is None or rng.uniform() >= cfg.babble_prob:
        return audio
    snr_db = cfg.babble_snr_db
    if cfg.babble_snr_db_max is not None:
        snr_db = rng.uniform(cfg.babble_snr_db, cfg.babble_snr_db_max)
    chosen = babble_talkers(voices, str(dataset.speakers[index]), int(dataset.labels[index]),
                            cfg.babble_talkers, rng)
    noise = babble_noise([voices.audio[j] for j in chosen], len(audio), rng)
    return add_at_snr(audio, noise, snr_db)


def augment_dataset(dataset: Dataset, cfg: AugmentConfig, seed: int, copy: int) -> Dataset:
    """Copy number ``copy`` of every clip, deterministic in (seed, copy, clip index). The
    babble's voices are the dataset's own clips (of other speakers and classes)."""
    check_augment_config(cfg, dataset.sample_rate)
    voices = audible(dataset) if cfg.babble_snr_db is not None and cfg.babble_prob > 0 else None
    audio = []
    for i, clip in enumerate(dataset.audio):
        out = augment_clip(clip, dataset.sample_rate, cfg, np.random.default_rng([seed, copy, i]))
        if voices is not None:  # a stream of its own: the other transformations stay as they were
            out = add_babble(out, dataset, i, voices, cfg,
                             np.random.default_rng([seed, copy, i, 1]))
        audio.append(out)
    audio = tuple(audio)
    waveform = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _STEP_ONLY
                and not (k in _FINGERPRINT_WHEN_SET and not v)}
    spec = json.dumps({"parent": dataset.fingerprint, "augment": waveform,
                       "seed": seed, "copy": copy}, sort_keys=True)
    return dataclasses.replace(dataset, audio=audio,
                               fingerprint=hashlib.sha256(spec.encode()).hexdigest(),
                               source=f"{dataset.source}, augmented copy {copy}")

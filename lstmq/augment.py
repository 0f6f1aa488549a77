"""Training-time augmentation: waveform copies (speed, pitch, shift, noise) and SpecAugment masks.

Waveform augmentation makes ``augment.copies`` extra versions of every training clip
before featurization (each copy is a Dataset of its own, so its features are cached like
any other). SpecAugment masks are drawn inside the jitted train step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

from lstmq.config import AugmentConfig
from lstmq.data import Dataset


def _phase_vocoder_fft(sample_rate: int) -> int:
    """FFT size of about 32 ms for the pitch shifter's phase vocoder (256 at 8 kHz):
    librosa's default 2048 would be 256 ms at 8 kHz, longer than many digits."""
    return 1 << max(6, round(np.log2(0.032 * sample_rate)))


def augment_clip(audio: np.ndarray, sample_rate: int, cfg: AugmentConfig,
                 rng: np.random.Generator) -> np.ndarray:
    """One randomly perturbed copy of a clip ``<float32>[samples]``.

    - speed: resample by a factor in [1 - speed, 1 + speed] (tempo and pitch change together,
      as in Kaldi's speed perturbation, a proxy for other vocal tracts);
    - pitch: shift every frequency (pitch and formants) by up to this many semitones up or
      down, keeping the duration (``librosa.effects.pitch_shift`` with a 32 ms window);
    - time_shift: up to this fraction of the clip of leading silence;
    - noise_snr_db: white noise at this signal-to-noise ratio (drawn uniformly up to
      noise_snr_db_max when that is set).
    """
    import librosa

    out = np.asarray(audio, np.float32)
    if cfg.speed > 0:
        factor = rng.uniform(1 - cfg.speed, 1 + cfg.speed)
        out = librosa.resample(out, orig_sr=sample_rate * factor, target_sr=sample_rate,
                               res_type="soxr_mq").astype(np.float32)
    if cfg.pitch > 0:
        steps = rng.uniform(-cfg.pitch, cfg.pitch)
        n_fft = _phase_vocoder_fft(sample_rate)
        out = librosa.effects.pitch_shift(out, sr=sample_rate, n_steps=steps, n_fft=n_fft,
                                          hop_length=n_fft // 4,
                                          res_type="soxr_mq").astype(np.float32)
    if cfg.time_shift > 0:
        lead = int(rng.uniform(0, cfg.time_shift) * len(out))
        out = np.concatenate([np.zeros(lead, np.float32), out])
    if cfg.noise_snr_db is not None:
        snr_db = cfg.noise_snr_db
        if cfg.noise_snr_db_max is not None:
            snr_db = rng.uniform(cfg.noise_snr_db, cfg.noise_snr_db_max)
        rms = float(np.sqrt(np.mean(out**2))) or 1e-4
        noise_rms = rms / 10 ** (snr_db / 20)
        out = out + rng.normal(0, noise_rms, len(out)).astype(np.float32)
    return np.clip(out, -1.0, 1.0)


def check_augment_config(cfg: AugmentConfig) -> None:
    """Raise ValueError for settings that cannot be honoured."""
    if cfg.noise_snr_db_max is not None and (cfg.noise_snr_db is None
                                             or cfg.noise_snr_db_max < cfg.noise_snr_db):
        raise ValueError(f"augment.noise_snr_db_max {cfg.noise_snr_db_max} needs "
                         f"augment.noise_snr_db <= it, got {cfg.noise_snr_db}")
    if not 0 <= cfg.speed < 1:
        raise ValueError(f"augment.speed must be in [0, 1), got {cfg.speed}")
    if not 0 <= cfg.pitch <= 12:
        raise ValueError(f"augment.pitch must be in [0, 12] semitones, got {cfg.pitch}")


def waveform_augmentation_enabled(cfg: AugmentConfig) -> bool:
    return cfg.copies > 0 and (cfg.speed > 0 or cfg.pitch > 0 or cfg.time_shift > 0
                               or cfg.noise_snr_db is not None)


def augment_dataset(dataset: Dataset, cfg: AugmentConfig, seed: int, copy: int) -> Dataset:
    """Copy number ``copy`` of every clip, deterministic in (seed, copy, clip index)."""
    check_augment_config(cfg)
    audio = tuple(augment_clip(a, dataset.sample_rate, cfg, np.random.default_rng([seed, copy, i]))
                  for i, a in enumerate(dataset.audio))
    spec = json.dumps({"parent": dataset.fingerprint, "augment": dataclasses.asdict(cfg),
                       "seed": seed, "copy": copy}, sort_keys=True)
    return dataclasses.replace(dataset, audio=audio,
                               fingerprint=hashlib.sha256(spec.encode()).hexdigest(),
                               source=f"{dataset.source}, augmented copy {copy}")


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

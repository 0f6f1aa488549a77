"""Value rules of every config field, checked when a config is built (``check_config``).

Types are checked by ``lstmq.config``; these rules catch values of the right type that
would train silently wrong, waste a run or crash later (a negative dropout, zero epochs,
int3 weights, a hop of 0 ms). Every message names the key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from lstmq.config import Config, ConfigError

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _fraction(v) -> bool:  # [0, 1)
    return 0 <= v < 1


def _open_fraction(v) -> bool:  # (0, 1)
    return 0 < v < 1


def _optional(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or rule(v)


# key -> (rule, what it must be)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.path": (lambda v: v is None or v.strip() != "", "a non-empty path or null"),
    "data.classes": (lambda v: v is None or (len(v) >= 2 and len(set(v)) == len(v)
                                            and all(c.strip() for c in v)),
                     "null or a list of at least 2 distinct, non-empty class names"),
    "data.sha256": (lambda v: v is None or bool(_SHA256.fullmatch(v)),
                    "null or 64 hexadecimal digits"),
    "data.test_size": (_open_fraction, "in (0, 1)"),
    "data.val_fraction": (_fraction, "in [0, 1)"),
    "data.sample_rate": (_optional(_positive), "a positive number of Hz or null"),
    "data.test_speaker": (lambda v: v is None or v.strip() != "", "a speaker name or null"),
    "data.val_speaker": (lambda v: v is None or v.strip() != "", "a speaker name or null"),
    "features.n_mfcc": (_positive, "at least 1"),
    "features.window_ms": (_positive, "positive"),
    "features.hop_ms": (_positive, "positive"),
    "features.n_mels": (_positive, "at least 1"),
    "features.fmin": (_non_negative, "0 or more"),
    "features.fmax": (_optional(_positive), "positive or null (Nyquist)"),
    "features.deltas": (lambda v: v in (0, 1, 2), "0, 1 or 2"),
    "features.trim_db": (_optional(_positive), "positive or null"),
    "features.top_db": (_optional(_positive), "positive or null"),
    "features.compression": (lambda v: v in ("log", "pcen"), "log or pcen"),
    "features.pcen_time_ms": (_positive, "positive"),
    "features.speech_db": (_optional(_positive), "positive or null"),
    "features.noise_percentile": (_optional(lambda v: 0 <= v <= 100),
                                  "an integer percentile in [0, 100] or null"),
    # at most 60 dB keeps every log within the DCT's no-overflow bound (docs/numerics.md)
    "features.noise_keep_db": (lambda v: 0 < v <= 60, "in (0, 60] dB"),
    "features.preemphasis": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "features.min_frames": (_positive, "at least 1"),
    "features.max_frames": (_optional(_positive), "at least 1 or null"),
    "features.vote_speeds": (lambda v: len(set(v)) == len(v) and all(
        0.5 <= s <= 2 and s != 1 for s in v), "distinct speeds in [0.5, 2], 1 left out (each "
        "clip is always scored at speed 1)"),
    "features.workers": (_non_negative, "0 (one per core) or more"),
    "model.hidden": (lambda v: v == "auto" or v >= 1, "at least 1 or 'auto'"),
    "model.layers": (_positive, "at least 1"),
    "model.dropout": (_fraction, "in [0, 1)"),
    "model.num_classes": (lambda v: v is None or v >= 2, "at least 2 or null (from the data)"),
    "quant.weight_bits": (lambda v: v in (32, 16, 8, 4), "32, 16, 8 or 4"),
    "quant.input_clip": (_optional(_positive), "positive or null (calibrated)"),
    "quant.input_percentile": (lambda v: 0 < v <= 100, "in (0, 100]"),
    "quant.init_from": (lambda v: v is None or v.strip() != "", "a run folder or null"),
    "budget.bytes": (_positive, "at least 1"),
    "augment.time_shift": (_fraction, "in [0, 1)"),
    "augment.reverb_rt60": (_non_negative, "0 (off) or more seconds"),
    "augment.lowpass_hz": (_optional(_positive), "positive or null"),
    "augment.highpass_hz": (_optional(_positive), "positive or null"),
    "augment.speed": (_fraction, "in [0, 1)"),
    "augment.pitch": (lambda v: 0 <= v <= 12, "in [0, 12] semitones"),
    "augment.formant": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    "augment.tempo": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    "augment.freq_mask": (_non_negative, "0 (off) or more"),
    "augment.time_mask": (_non_negative, "0 (off) or more"),
    "augment.babble_talkers": (_positive, "at least 1"),
    "augment.babble_prob": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "augment.copies": (_non_negative, "0 (off) or more"),
    "augment.mixup": (_non_negative, "0 (off) or a positive Beta parameter"),
    "train.epochs": (_positive, "at least 1"),
    "train.batch_size": (_positive, "at least 1"),
    "train.learning_rate": (_positive, "positive"),
    "train.weight_decay": (_non_negative, "0 or more"),
    "train.warmup_epochs": (_non_negative, "0 or more"),
    "train.grad_clip": (_non_negative, "0 (off) or more"),
    "train.label_smoothing": (_fraction, "in [0, 1)"),
    "train.ema_decay": (_fraction, "in [0, 1) (0: off)"),
    "train.sam_rho": (_non_negative, "0 (off) or a positive neighbourhood radius"),
    "train.speaker_adversary": (_non_negative, "0 (off) or a positive gradient-reversal weight"),
    "train.distill_from": (lambda v: v is None or v.strip() != "", "a run folder or null"),
    "train.distill_weight": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "train.distill_temperature": (_positive, "positive"),
    "train.teacher_seeds": (_non_negative, "0 (no teacher stage) or more"),
    "train.seeds": (_positive, "at least 1"),
    "train.seed_threads": (_non_negative, "0 (one per seed) or more"),
    "train.batch_shards": (_positive, "at least 1"),
    "train.seed_devices": (_non_negative, "0 (every device) or more"),
    "train.bucket_frames": (_positive, "at least 1"),
}


def _value(config: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def check_config(config: Config) -> None:
    """Raise ConfigError naming the first key whose value breaks its rule."""
    for section in ("data", "features", "model", "quant", "budget", "augment", "train"):
        for name, value in vars(getattr(config, section)).items():
            if not _finite(value):
                raise ConfigError(f"{section}.{name}: must be a finite number, got {value!r}")
    for key, (rule, what) in RULES.items():
        value = _value(config, key)
        if not rule(value):
            raise ConfigError(f"{key}: must be {what}, got {value!r}")
    _check_combinations(config)


def _check_combinations(config: Config) -> None:
    f, q, a, t, d = config.features, config.quant, config.augment, config.train, config.data
    if f.n_mfcc > f.n_mels:
        raise ConfigError(f"features.n_mfcc ({f.n_mfcc}) cannot exceed features.n_mels ({f.n_mels})")
    if f.max_frames is not None and f.max_frames < f.min_frames:
        raise ConfigError(f"features.max_frames ({f.max_frames}) is below features.min_frames "
                          f"({f.min_frames})")
    if f.frontend == "integer" and (f.deltas or f.trim_db is not None):
        raise ConfigError("features.frontend=integer computes no deltas and trims no silence: "
                          "set features.deltas=0 and features.trim_db=null")
    if f.frontend == "integer" and f.compression != "log":
        raise ConfigError("features.frontend=integer computes log-mel features only: set "
                          "features.compression=log or features.frontend=float")
    if f.speech_db is not None and (f.frontend != "integer" or f.normalize != "utterance"):
        raise ConfigError("features.speech_db chooses the frames of the integer front end's "
                          "per-utterance statistics: set features.frontend=integer and "
                          "features.normalize=utterance, or features.speech_db=null")
    if f.noise_percentile is not None and f.frontend != "integer":
        raise ConfigError("features.noise_percentile subtracts noise in the integer front end: "
                          "set features.frontend=integer or features.noise_percentile=null")
    if f.fmax is not None and f.fmax <= f.fmin:
        raise ConfigError(f"features.fmax ({f.fmax}) must exceed features.fmin ({f.fmin})")
    if q.mode == "qat" and q.weight_bits not in (8, 4):
        raise ConfigError(f"quant.weight_bits: a QAT model stores int8 or int4 weights (8 or 4), "
                          f"got {q.weight_bits}")
    if a.noise_snr_db_max is not None and (a.noise_snr_db is None
                                           or a.noise_snr_db_max < a.noise_snr_db):
        raise ConfigError("augment.noise_snr_db_max needs augment.noise_snr_db at or below it, "
                          f"got {a.noise_snr_db} and {a.noise_snr_db_max}")
    if a.babble_snr_db_max is not None and (a.babble_snr_db is None
                                            or a.babble_snr_db_max < a.babble_snr_db):
        raise ConfigError("augment.babble_snr_db_max needs augment.babble_snr_db at or below "
                          f"it, got {a.babble_snr_db} and {a.babble_snr_db_max}")
    if t.batch_size % t.batch_shards:
        raise ConfigError(f"train.batch_shards ({t.batch_shards}) must divide train.batch_size "
                          f"({t.batch_size})")
    if t.distill_from is not None and t.teacher_seeds > 0:
        raise ConfigError("train.distill_from and train.teacher_seeds both name a teacher; "
                          f"set one (got {t.distill_from!r} and {t.teacher_seeds})")
    if (t.distill_from is not None or t.teacher_seeds > 0) \
            and (a.mixup > 0 or t.speaker_adversary > 0):
        raise ConfigError("distillation (train.distill_from or train.teacher_seeds) cannot be "
                          "combined with augment.mixup or train.speaker_adversary")
    if t.sam_rho > 0 and t.speaker_adversary > 0:
        raise ConfigError("train.sam_rho cannot be combined with train.speaker_adversary: set "
                          "one of them to 0")
    if t.warmup_epochs > t.epochs:
        raise ConfigError(f"train.warmup_epochs ({t.warmup_epochs}) exceeds train.epochs "
                          f"({t.epochs})")
    if d.val_speaker is not None and d.split not in ("speaker", "speaker_disjoint"):
        raise ConfigError(f"data.val_speaker needs data.split=speaker (or speaker_disjoint), "
                          f"got {d.split!r}")
    if d.test_speaker is not None and d.split != "speaker":
        raise ConfigError(f"data.test_speaker ({d.test_speaker!r}) is read by data.split=speaker "
                          f"only, got data.split={d.split!r}: set data.split=speaker or "
                          "data.test_speaker=null")
    if d.split == "speaker" and d.test_speaker is None:
        raise ConfigError("data.split=speaker needs data.test_speaker (the held-out speaker)")
    if d.val_speaker is not None and d.val_speaker == d.test_speaker:
        raise ConfigError(f"data.val_speaker {d.val_speaker!r} is also data.test_speaker")

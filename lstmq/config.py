"""One typed configuration for every part of lstmq.

Frozen dataclasses, loaded from YAML and overridden by dotted ``key=value`` pairs.
Derived values (solved hidden size, normalisation statistics, calibrated scales) are
computed by the library and written to a run's outputs, never back into a config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


# Every way a trained run is evaluated (lstmq.paths): float runs have the first four.
NUMERICS_PATHS = ("float", "ptq-dynamic", "ptq-static", "ptq-integer", "qat", "qat-integer")


class ConfigError(ValueError):
    """A configuration file, key or value is invalid."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 needs a dot) and refuses a
    key given twice in one mapping (PyYAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Booleans as YAML 1.2 has them (true/false): labels such as yes, no, on, off stay strings.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line for PyYAML's multi-line message: ``YAML syntax error at line L, column C:
    problem (context from line K)`` (1-based), else its first line."""
    kind = ("YAML error" if isinstance(error, yaml.constructor.ConstructorError)  # duplicate key, tag
            else "YAML syntax error")
    mark = getattr(error, "problem_mark", None)
    problem = " ".join(str(getattr(error, "problem", None) or "").split())
    if mark is None or not problem:
        first = str(error).strip().splitlines()
        return f"{kind}: {first[0].strip()}" if first else kind
    text = f"{kind} at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context:
        started = (f" from line {context_mark.line + 1}"
                   if context_mark is not None and context_mark.line != mark.line else "")
        text += f" ({' '.join(str(context).split())}{started})"
    return text


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the recordings come from, how they are laid out and how they are split."""

    source: Literal["auto", "download", "path", "tfds"] = "auto"  # auto: path, else $LSTMQ_DATA, else download
    path: str | None = None  # folder, archive (.tar.gz/.tgz/.zip) or .csv/.tsv manifest
    format: Literal["auto", "fsdd", "folders", "manifest"] = "auto"  # layout (docs/data.md)
    classes: tuple[str, ...] | None = None  # class order; None: sorted labels of the data
    url: str = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
    sha256: str | None = None  # of the download / of data.path's archive; None: known releases only
    cache_dir: str | None = None  # default: $LSTMQ_CACHE or the user cache (platformdirs via pooch)
    tfds_manual_dir: str | None = None
    split: Literal["random", "official", "speaker", "speaker_disjoint"] = "random"
    stratify: bool = True  # random split: keep class proportions (the FSDD study configs: false)
    test_size: float = 0.2  # random and speaker_disjoint splits: fraction of clips (speakers)
    split_seed: int = 42  # random splits (the reference study's random_state)
    test_speaker: str | None = None  # speaker split: the held-out speaker
    val_fraction: float = 0.1  # carved from the training clips, stratified, for model selection
    val_speaker: str | None = None  # speaker split: validate on this training speaker instead
    sample_rate: int | None = None  # Hz; None: the recordings' own (one rate for all)
    resample: bool = False  # other rates: resample when true, refuse (naming the file) when false


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """MFCC extraction, in milliseconds and Hz so that any sample rate works unchanged."""

    frontend: Literal["float", "integer"] = "float"  # librosa in float, or lstmq.frontend
    n_mfcc: int = 13
    window_ms: float = 32.0  # Hann window; the FFT is the next power of two (256 at 8 kHz)
    hop_ms: float = 16.0
    n_mels: int = 40
    fmin: float = 20.0
    fmax: float | None = None  # None: the Nyquist frequency
    # pre-emphasis y[n] = x[n] - a x[n-1] of the clip before framing (x[-1] = 0); 0: off.
    # The integer front end uses a in Q15 on the int16 PCM (lstmq.frontend)
    preemphasis: float = 0.0
    mel_norm: Literal["slaney", "none"] = "slaney"  # triangles / width (librosa's), or peak 1
    deltas: int = 0  # 0: MFCC only; 1: + delta; 2: + delta and delta-delta
    trim_db: float | None = None  # trim leading/trailing silence below this many dB under peak
    top_db: float | None = 80.0  # floor of the log-mel spectrum, dB under the clip's peak (None: none)
    # "log": log-mel (floored at top_db); "pcen": per-channel energy normalisation of the mel
    # magnitudes (librosa.pcen; float front end only), smoothed over pcen_time_ms
    compression: Literal["log", "pcen"] = "log"
    pcen_time_ms: float = 400.0
    normalize: Literal["global", "utterance", "none"] = "global"  # global stats from train only
    # utterance statistics over speech frames only: frames whose loudest mel band lies within
    # this many dB of the clip's peak (integer front end); None: over every frame
    speech_db: float | None = None
    # integer front end: each mel band's noise, estimated as this percentile of the band over
    # the clip's frames, subtracted from its magnitude (spectral subtraction); None: off
    noise_percentile: int | None = None
    noise_keep_db: float = 12.0  # the subtraction lowers a band by at most this many dB (<= 60)
    min_frames: int = 2
    max_frames: int | None = None  # truncate longer clips (None: keep all)
    # speed votes (lstmq.speed): each clip is also scored played at these speeds (integer
    # resampling of its int16 PCM) and the logits are summed; () scores it once
    vote_speeds: tuple[float, ...] = ()
    cache: bool = True
    workers: int = 0  # 0: one per CPU core


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Stacked LSTM classifier (the class count comes from the data)."""

    hidden: int | Literal["auto"] = 128  # "auto": solved from the budget block
    layers: int = 2
    dropout: float = 0.1  # between layers and before the readout
    num_classes: int | None = None  # None: from the data; a number must equal the data's count
    readout: Literal["last", "mean"] = "last"  # last valid state, or mean over valid frames


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Numerics of training: float or quantization-aware (int8 weights and activations)."""

    mode: Literal["float", "qat"] = "float"
    # Storage of the deployed weights, the one source of the width (budget, QAT, export):
    # 8 or 4 (integer model), 16 (int16 accounting only) or 32 (float32; quant.mode=float).
    weight_bits: int = 8
    input_clip: float | None = None  # static |x| bound of the int8 input; None: calibrate on train
    input_percentile: float = 99.99  # calibration percentile of |x| over training frames
    init_from: str | None = None  # run directory of a float model to fine-tune from


@dataclasses.dataclass(frozen=True)
class BudgetConfig:
    """Byte budget for the layer parameters, used when model.hidden is "auto"."""

    bytes: int = 36864  # solved for quant.weight_bits
    policy: Literal["total", "per-layer"] = "total"
    layout: Literal["lstmq", "pytorch"] = "lstmq"


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation (all off by default)."""

    noise_snr_db: float | None = None  # additive white noise at this SNR
    noise_snr_db_max: float | None = None  # if set: SNR uniform in [noise_snr_db, this]
    time_shift: float = 0.0  # max shift as a fraction of the clip
    reverb_rt60: float = 0.0  # max reverberation time (s) of a synthetic room response
    lowpass_hz: float | None = None  # low-pass (another microphone's bandwidth), cutoff drawn in [this, Nyquist]
    highpass_hz: float | None = None  # high-pass, cutoff drawn in [0, this]
    speed: float = 0.0  # max relative speed change (resampling)
    pitch: float = 0.0  # max pitch shift in semitones, duration kept (frequency warp)
    formant: float = 0.0  # max relative formant shift (vocal tract length), pitch kept
    tempo: float = 0.0  # max relative tempo change (speaking rate), pitch and formants kept
    freq_mask: int = 0  # SpecAugment: max masked MFCC coefficients
    time_mask: int = 0  # SpecAugment: max masked frames
    babble_snr_db: float | None = None  # babble of other training speakers at this SNR
    babble_snr_db_max: float | None = None  # if set: SNR uniform in [babble_snr_db, this]
    babble_talkers: int = 4  # voices summed into the babble
    babble_prob: float = 1.0  # share of the copies that get babble
    copies: int = 0  # augmented copies of each training clip, drawn once before training
    mixup: float = 0.0  # > 0: each clip mixed with another of its batch, weight ~ Beta(a, a)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation."""

    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # > 0: evaluate and keep a moving average of the params (e.g. 0.999)
    # > 0: sharpness-aware minimisation: each gradient is taken again at the parameters moved
    # by this length along the first one's direction (twice the gradient work per step)
    sam_rho: float = 0.0
    # > 0: a speaker-adversarial head (lstmq.adversary) whose gradient reaches the LSTM
    # reversed and scaled by this weight; training only, never exported
    speaker_adversary: float = 0.0
    # a finished run folder whose seeds' softened probabilities are a second target
    # (lstmq.distill): the loss mixes in distill_weight of it, at distill_temperature
    distill_from: str | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    # what the teacher reads for a waveform copy: the copy itself ("rows"), or the original
    # clip it was made from ("originals": the student learns to say of a noisy copy what the
    # teacher says of the clean clip)
    distill_source: Literal["rows", "originals"] = "rows"
    # > 0: first train a float teacher of this many seeds (seed + TEACHER_SEED_OFFSET on) in
    # <run>/teacher on the run's data and distill from it; a QAT run fine-tuned from a float
    # run (quant.init_from) distills from that run's teacher (lstmq.runner.teacher_folder)
    teacher_seeds: int = 0
    seed: int = 0
    seeds: int = 1  # seeds trained together by one compiled step (seed, seed+1, ...)
    seed_threads: int = 0  # threads the seeds run on, vmapped within a thread; 0: one per seed
    batch_shards: int = 1  # threads each batch is split over (gradients summed); divides batch_size
    seed_devices: int = 1  # devices the seed axis is split over (jax.sharding); 0: all
    bucket_frames: int = 16  # pad each batch to a multiple of this many frames
    # float LSTM recurrence: "native" the C++ kernel (lstmq.ffi_recurrence, CPU), "xla" the
    # jax scan (lstmq.recurrence); "auto": native on a CPU backend where it builds, else xla.
    # QAT with activations: native = lstm_qat_recurrence_native, xla = nn.scan(RecurrentStep)
    recurrence: Literal["auto", "xla", "native"] = "auto"
    select: Literal["last", "best_val"] = "best_val"  # which epoch's parameters are kept


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs; YAML sections map onto these fields."""

    data: DataConfig = DataConfig()
    features: FeatureConfig = FeatureConfig()
    model: ModelConfig = ModelConfig()
    quant: QuantConfig = QuantConfig()
    budget: BudgetConfig = BudgetConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()


@dataclasses.dataclass(frozen=True)
class _Override:
    """A ``--set`` value: parsed as YAML, and its text, for string fields (``0123`` stays
    ``"0123"``, not the integer 123)."""

    value: Any
    text: str


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation, converting only lossless cases."""
    if isinstance(value, _Override):
        if _admits_str(annotation) and not isinstance(value.value, (bool, type(None), list)) \
                and not (value.value is None or isinstance(value.value, str)):
            return _coerce(value.text, annotation, key)
        return _coerce(value.value, annotation, key)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_describe(annotation)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(annotation):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {typing.get_args(annotation)}")
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        if isinstance(value, (list, tuple)):
            if item is str:  # names such as data.classes: [0, 1, 2] are the digits' names
                value = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v
                         for v in value]
            return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {annotation}")


def _describe(annotation: Any) -> str:
    """What a field annotation admits, in words: ``an integer or 'auto'``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(annotation))
    if origin is Literal:
        return " or ".join(map(repr, typing.get_args(annotation)))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(annotation)[0]).removeprefix('a ')}s"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(annotation, str(annotation))


def _admits_str(annotation: Any) -> bool:
    if annotation is str:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(option is str for option in typing.get_args(annotation))
    return False


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        shown = values.text if isinstance(values, _Override) else repr(values)
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: is a section (a mapping of keys), "
                          f"got {shown}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts and lists (for YAML/JSON)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a Config from nested dicts, rejecting unknown keys, wrong types and values
    outside their rules (``lstmq.config_checks``)."""
    from lstmq.config_checks import check_config  # pylint: disable=import-outside-toplevel

    config = _build(Config, values, "")
    check_config(config)
    return config


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=value``; the value is parsed as YAML (so 3, 0.1, true, null work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} names an empty key; write section.key=value")
    try:
        value = _load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(values: dict[str, Any], overrides: list[str],
                    keep_text: bool = False) -> dict[str, Any]:
    """Return a copy of nested ``values`` with dotted overrides applied (``keep_text``: as
    ``_Override`` values that remember their text, for string fields)."""
    merged = yaml.safe_load(yaml.safe_dump(values)) or {}
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        node = merged
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        node[parts[-1]] = _Override(value, text.split("=", 1)[1]) if keep_text else value
    return merged


BUILTIN_CONFIGS = Path(__file__).resolve().parent / "configs"


def config_path(name: str | os.PathLike) -> Path:
    """A config file: the path itself, or a built-in config by name (``task_b_qat``)."""
    path = Path(name)
    if path.is_file():
        return path
    builtin = BUILTIN_CONFIGS / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and builtin.is_file():
        return builtin  # also when a folder of that name is in the working directory
    if path.is_dir():
        raise ConfigError(f"{name}: is a folder; give a YAML file or a built-in config's name")
    known = ", ".join(sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"{name}: config file not found (built-in configs: {known})")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
    """Load a YAML config (a file, a built-in config's name, or the defaults) and apply
    dotted overrides.

    Raises:
      ConfigError: naming the file, key or value that is wrong.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = config_path(path)
        try:
            values = _load_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: {_yaml_problem(error)}") from None
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not a UTF-8 text file ({error.reason} at byte "
                              f"{error.start})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        values = {k: v for k, v in values.items() if k != "about"}  # free-text run notes
    try:
        return config_from_dict(apply_overrides(values, list(overrides), keep_text=True))
    except ConfigError as error:
        overridden = {text.split("=", 1)[0].strip() for text in overrides if "=" in text}
        message = str(error)
        unknown = message.removeprefix("unknown config key(s): ")
        keys = unknown.split(", ") if unknown != message else [message.split(":", 1)[0]]
        if all(key.split("[", 1)[0] in overridden for key in keys):
            where = "--set "
        else:
            where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{error}") from None

"""A run on disk: its config, the values derived from its data, and its parameters.

``model_from_config`` is the one place where config fields become model constructor
arguments; ``load_run`` reads a run folder back (``run.json`` + ``params.msgpack``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from lstmq.checkpoint import CheckpointError, load_params
from lstmq.config import Config, ConfigError, FeatureConfig, config_from_dict
from lstmq.normalization import Normalizer
from lstmq.io import json_checksum, read_json
from lstmq.model import LSTMClassifier


@dataclasses.dataclass(frozen=True)
class Derived:
    """Values computed from a config and the training data (never written into the config)."""

    hidden: int
    input_size: int
    input_clip: float
    normalizer: Normalizer
    seeds: tuple[int, ...]
    classes: tuple[str, ...]
    sample_rate: int | None = None  # of the training clips (None: features given as arrays)
    frontend_digest: str | None = None  # integer front end: sha256 of its tables

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "input_size": self.input_size,
                "input_clip": self.input_clip, "normalizer": self.normalizer.to_dict(),
                "seeds": list(self.seeds), "classes": list(self.classes),
                "sample_rate": self.sample_rate, "frontend_digest": self.frontend_digest}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Derived:
        return cls(hidden=int(values["hidden"]), input_size=int(values["input_size"]),
                   input_clip=float(values["input_clip"]),
                   normalizer=Normalizer.from_dict(values["normalizer"]),
                   seeds=tuple(int(s) for s in values["seeds"]),
                   classes=tuple(str(c) for c in values["classes"]),
                   sample_rate=values.get("sample_rate"),
                   frontend_digest=values.get("frontend_digest"))


# Feature settings that leave what a model reads as it is: how features are computed (cache,
# workers) and the speed votes added when scoring.
_NOT_MODEL_INPUT = ("cache", "workers", "vote_speeds")


def model_input_features(features: FeatureConfig) -> dict[str, Any]:
    """``features.KEY: value`` of every feature setting that changes the model's input."""
    return {f"features.{field.name}": getattr(features, field.name)
            for field in dataclasses.fields(FeatureConfig) if field.name not in _NOT_MODEL_INPUT}


def feature_differences(theirs: FeatureConfig, mine: FeatureConfig) -> list[str]:
    """``features.KEY theirs, this run's mine`` for every feature setting that changes the
    model's input (another run's, for ``quant.init_from`` or ``train.distill_from``)."""
    theirs, mine = model_input_features(theirs), model_input_features(mine)
    return [f"{key} {theirs[key]!r}, this run's {mine[key]!r}" for key in theirs
            if theirs[key] != mine[key]]


SPLIT_KEYS = ("split", "stratify", "test_size", "split_seed", "test_speaker", "val_fraction",
              "val_speaker")  # which clips a run trains on, and which validate and test it


def clip_differences(source: Run, config: Config, fingerprint: str) -> list[str]:
    """Why another run (``quant.init_from`` or ``train.distill_from``) may have trained on
    clips this run validates or tests on: other recordings, or another split of them."""
    theirs = source.data.get("fingerprint")
    problems = [] if theirs == fingerprint else [
        f"other recordings (data fingerprint {theirs}, this run's {fingerprint})"]
    return problems + [f"data.{key} {getattr(source.config.data, key)!r}, this run's "
                       f"{getattr(config.data, key)!r}" for key in SPLIT_KEYS
                       if getattr(source.config.data, key) != getattr(config.data, key)]


def source_digests(config: Config) -> dict[str, str | None]:
    """The ``params_sha256`` of every run a config starts from or learns from
    (``quant.init_from``, ``train.distill_from``), None where it is not a finished run yet."""
    sources = {"quant.init_from": config.quant.init_from,
               "train.distill_from": config.train.distill_from}
    digests = {}
    for key, folder in sources.items():
        if folder:
            record = Path(folder) / "run.json"
            digests[key] = read_json(record).get("params_sha256") if record.is_file() else None
    return digests


def path_numerics(config: Config, derived: Derived, path: str) -> Any:
    """The numerics a (non-integer) path injects: None for ``float``; AQT fake quant for
    ``qat`` and ``ptq-static``; weight-only fake quant for ``ptq-dynamic``."""
    if path == "float":
        return None
    from lstmq.quant import QATNumerics  # pylint: disable=import-outside-toplevel

    return QATNumerics(input_clip=derived.input_clip, weight_bits=config.quant.weight_bits,
                       activations=path != "ptq-dynamic")


def model_from_config(config: Config, derived: Derived, path: str | None = None) -> LSTMClassifier:
    """The classifier a config and its derived values describe, with the numerics of
    ``path`` injected (default: as the config trains, ``quant.mode``; see ``lstmq.paths``)."""
    return LSTMClassifier(hidden=derived.hidden, layers=config.model.layers,
                          num_classes=derived.num_classes, dropout=config.model.dropout,
                          numerics=path_numerics(config, derived, path or config.quant.mode),
                          readout=config.model.readout,
                          recurrence=config.train.recurrence)


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run loaded from disk; ``params`` are stacked over seeds."""

    directory: Path
    config: Config
    derived: Derived
    params: Any
    data: dict[str, Any]  # run.json's record of the data (source, fingerprint, location, ...)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.derived.classes


def _param_shapes(config: Config, derived: Derived) -> Any:
    from lstmq.train import init_params  # pylint: disable=import-outside-toplevel

    model = model_from_config(config, derived)
    return jax.eval_shape(lambda: init_params(model, 0, len(derived.seeds), derived.input_size))


def record_checksum(record: dict[str, Any]) -> str:
    """sha256 of a run record's canonical JSON, its own ``record_sha256`` left out."""
    return json_checksum(record, "record_sha256")


def load_run(directory: str | Path) -> Run:
    """Load ``run.json`` and ``params.msgpack``.

    Raises:
      CheckpointError: not a run folder, an unreadable or mismatching file (naming it).
    """
    directory = Path(directory)
    if not (directory / "run.json").is_file():
        if (directory / "training.json").is_file():
            raise CheckpointError(f"{directory}: its training has not finished (no run.json); "
                                  "run the same lstmq train --out again to resume it")
        raise CheckpointError(f"{directory}: not a run directory (no run.json)")
    info = read_json(directory / "run.json")
    if "record_sha256" in info and record_checksum(info) != info["record_sha256"]:
        raise CheckpointError(f"{directory / 'run.json'}: its contents differ from the sha256 "
                              "recorded when the run was written (edited or damaged: its "
                              "classes, statistics or config cannot be trusted)")
    try:
        config = config_from_dict(info["config"])
        derived = Derived.from_dict(info["derived"])
    except ConfigError as error:
        raise CheckpointError(f"{directory / 'run.json'}: {error}") from None
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / 'run.json'}: not a run record of this lstmq "
                              f"(missing or invalid {error})") from None
    params = load_params(directory / "params.msgpack", _param_shapes(config, derived),
                         info.get("params_sha256"))  # runs written before the digest: unchecked
    return Run(directory, config, derived, params, info.get("data", {}))

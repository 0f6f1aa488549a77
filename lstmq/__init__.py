"""lstmq: quantization-aware LSTM classifiers for integer-only hardware.

The parts a researcher composes, importable from the top level (loaded on first use):

| idea | names |
|---|---|
| config | ``Config``, ``load_config``, ``ConfigError`` |
| data | ``load_dataset``, ``load_recordings``, ``Dataset``, ``make_split``, ``prepare_data``, ``prepare_arrays``, ``DataError`` |
| model and numerics | ``LSTMClassifier``, ``QATNumerics``, ``numerics_for``, ``PATHS`` (the numerics path names, ``lstmq.paths``) |
| training | ``train_and_evaluate`` (a dataset), ``train_arrays`` and ``arrays_split`` (arrays), ``finetune_overrides``, ``load_run`` |
| quantization | ``calibrate_input_clip``, ``convert_params``, ``integer_models``, ``quantize_input``, ``predict_int`` |
| evaluation | ``predict_path``, ``evaluate_run``, ``run_predictor`` / ``artifact_predictor`` + ``predict_files`` (WAV files), ``classification_metrics`` |
| proof and size | ``audit_float_free``, ``solve_hidden_size``, ``count_bytes``, ``model_bytes``, ``Precision`` |
| artifacts | ``export_run``, ``write_artifact``, ``load_artifact``, ``write_c_header`` |
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "lstmq.config": ("Config", "load_config", "ConfigError"),
    "lstmq.data": ("load_dataset", "load_recordings", "Dataset", "DataError"),
    "lstmq.splits": ("make_split",),
    "lstmq.pipeline": ("prepare_data", "prepare_arrays"),
    "lstmq.model": ("LSTMClassifier",),
    "lstmq.quant": ("QATNumerics",),
    "lstmq.paths": ("numerics_for", "PATHS", "integer_models", "predict_path"),
    "lstmq.runner": ("train_and_evaluate",),
    "lstmq.arrays": ("train_arrays", "arrays_split"),
    "lstmq.recipes": ("finetune_overrides",),
    "lstmq.runs": ("load_run",),
    "lstmq.recipe": ("calibrate_input_clip",),
    "lstmq.integer": ("convert_params", "quantize_input", "predict_int"),
    "lstmq.inference": ("evaluate_run", "predict_files", "run_predictor", "artifact_predictor"),
    "lstmq.evaluate": ("classification_metrics",),
    "lstmq.audit": ("audit_float_free",),
    "lstmq.budget": ("solve_hidden_size", "count_bytes", "model_bytes", "Precision"),
    "lstmq.export": ("export_run", "write_c_header"),
    "lstmq.artifact": ("write_artifact", "load_artifact"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lstmq' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

"""Numerics paths: one name for each way a trained run can be evaluated.

| path | run | what computes the logits |
|---|---|---|
| ``float`` | float | the trained float model |
| ``ptq-dynamic`` | float | post-training int8 (or int4) weights, float activations |
| ``ptq-static`` | float | post-training int8 weights + static int8/int16 activations (fake quant) |
| ``ptq-integer`` | float | the float run converted to the integer model (``predict_int``) |
| ``qat`` | qat | the trained quantization-aware model (fake quant) |
| ``qat-integer`` | qat | the QAT run converted to the integer model (``predict_int``) |

Every path gives ``<seeds, n, classes>`` logits for the same evaluator. A path that does
not belong to the run's ``quant.mode`` is refused, so a PTQ result is never reported as
QAT (or the reverse).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from lstmq.config import NUMERICS_PATHS
from lstmq.integer import IntegerModel, convert_params, predict_int_split
from lstmq.data_errors import DataError
from lstmq.pipeline import SplitArrays, provenance
from lstmq.prediction import predict_split
from lstmq.runs import Run, model_from_config, path_numerics

PATHS = NUMERICS_PATHS
_RUN_MODE = {"float": "float", "ptq-dynamic": "float", "ptq-static": "float",
             "ptq-integer": "float", "qat": "qat", "qat-integer": "qat"}
INTEGER_PATHS = ("ptq-integer", "qat-integer")
SIMULATED_BY = {"ptq-integer": "ptq-static", "qat-integer": "qat"}  # fake quant of each


class PathError(ValueError):
    """A numerics path that does not exist or does not fit the run."""


def check_path(run: Run, path: str) -> None:
    """Raise PathError unless ``path`` is a path of ``run``'s training mode."""
    if path not in PATHS:
        raise PathError(f"unknown numerics path {path!r}; one of {', '.join(PATHS)}")
    mode = run.config.quant.mode
    if _RUN_MODE[path] != mode:
        own = ", ".join(p for p in PATHS if _RUN_MODE[p] == mode)
        raise PathError(f"{run.directory}: path {path!r} needs a {_RUN_MODE[path]} run, this "
                        f"one is {mode} (its paths: {own})")


def trained_path(run: Run) -> str:
    """The path of the model as trained: ``float`` or ``qat``."""
    return run.config.quant.mode


def integer_path(run: Run) -> str:
    """The run's integer path: ``ptq-integer`` for a float run, ``qat-integer`` for QAT."""
    return "ptq-integer" if run.config.quant.mode == "float" else "qat-integer"


def numerics_for(run: Run, path: str) -> Any:
    """The numerics object a (non-integer) path injects into the model (None: float)."""
    check_path(run, path)
    return path_numerics(run.config, run.derived, path)


def integer_models(run: Run, path: str | None = None) -> list[dict[str, np.ndarray]]:
    """One integer model per seed: ``qat-integer`` of a QAT run, ``ptq-integer`` of a float
    run (static PTQ: its calibrated input clip and abs-max weight scales, no retraining).
    ``path`` defaults to the run's own integer path."""
    path = path or integer_path(run)
    check_path(run, path)
    if path not in INTEGER_PATHS:
        raise PathError(f"{path!r} is not an integer path ({', '.join(INTEGER_PATHS)})")
    bits = run.config.quant.weight_bits
    if bits not in (4, 8):
        raise PathError(f"{run.directory}: trained with quant.weight_bits={bits}; an integer "
                        f"model needs 4 or 8 (its {path} path): train it with --set "
                        "quant.weight_bits=8")
    return [convert_params(jax.tree_util.tree_map(lambda p, s=s: np.asarray(p[s]), run.params),
                           run.derived.input_clip, bits, run.config.model.readout)
            for s in range(len(run.derived.seeds))]


ENGINES = ("auto", "c", "jnp")
C_ENGINE_MIN_CLIPS = 256  # auto: below this, building the C library costs more than it saves


def integer_logits(models: list[IntegerModel], split: SplitArrays, weight_bits: int,
                   classes: tuple[str, ...], engine: str = "auto", batch_size: int = 512,
                   bucket: int = 16) -> np.ndarray:
    """``<int32>[seeds, n, classes]`` of integer models on a split: the C runtime (``c``,
    ``lstmq.c_engine``) or ``jnp``; ``auto``: C when a compiler exists and the split has at
    least ``C_ENGINE_MIN_CLIPS`` clips. Bit-exact alike. Speed votes (``split.votes``): the
    int64 sum of the split's logits and each vote's, as the C runtime adds them."""
    if engine not in ENGINES:
        raise PathError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    if split.votes:
        total = integer_logits(models, dataclasses.replace(split, votes=()), weight_bits,
                               classes, engine, batch_size, bucket).astype(np.int64)
        for vote in split.votes:
            total = total + integer_logits(models, vote, weight_bits, classes, engine,
                                           batch_size, bucket)
        return total
    if engine == "c" or (engine == "auto" and len(split) >= C_ENGINE_MIN_CLIPS):
        from lstmq.c_engine import c_engine  # pylint: disable=import-outside-toplevel
        from lstmq.integer import quantize_input  # pylint: disable=import-outside-toplevel

        features = [np.asarray(quantize_input(models[0], split.x[i, :n]))
                    for i, n in enumerate(split.lengths)]
        out = []
        for model in models:
            runner = c_engine(model, weight_bits, classes)
            if runner is None:
                if engine == "c":
                    raise PathError("engine 'c' needs a C compiler (set $CC)")
                break
            try:
                out.append(runner.features_logits(features))
            finally:
                runner.close()
        else:
            return np.stack(out)
    return predict_int_split(models, split, batch_size, bucket)


def predict_path(run: Run, split: SplitArrays, path: str | None = None,
                 models: list[IntegerModel] | None = None, batch_size: int = 512,
                 engine: str = "auto") -> np.ndarray:
    """Logits ``<seeds, n, classes>`` of a run on a prepared split along ``path``
    (default: as trained). Integer paths return int32 logits, from the C runtime or jnp
    (``engine``, see ``integer_logits``); ``models`` reuses a conversion."""
    path = path or trained_path(run)
    check_path(run, path)
    check_split_for(run, split)
    bucket = run.config.train.bucket_frames
    if path in INTEGER_PATHS:
        return integer_logits(models or integer_models(run, path), split,
                              run.config.quant.weight_bits, run.classes, engine, batch_size,
                              bucket)
    model = model_from_config(run.config, run.derived, path)
    predict = jax.jit(jax.vmap(lambda p, x, l: model.apply({"params": p}, x, l),
                               in_axes=(0, None, None)))
    return predict_split(predict, run.params, split, batch_size, bucket)


def check_split_for(run: Run, split: SplitArrays) -> None:
    """A split made under other feature settings or statistics than ``run``'s would be scored
    without a word, and wrongly: refuse it, naming what differs (splits of unknown making,
    built by hand, are taken as they are)."""
    if split.prepared_with is None:
        return
    wanted = provenance(run.config.features, run.derived.normalizer)
    made = split.prepared_with
    differing = sorted(key for key in wanted.keys() | made.keys()
                       if wanted.get(key) != made.get(key))
    if differing:
        shown = ", ".join("the normalisation statistics" if key == "normalizer" else
                          f"{key} (prepared {made.get(key)!r}, the run's {wanted.get(key)!r})"
                          for key in differing[:4])
        raise DataError(f"{run.directory}: the split was prepared under other settings than "
                        f"this run's: {shown}; prepare it with the run's config "
                        "(lstmq.prepare_data(run.config)), or score other recordings with "
                        "lstmq.evaluate_run / lstmq.predict_files and arrays with "
                        "lstmq.arrays_split")


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of (seed, clip) predictions two paths share."""
    return float(np.mean(np.argmax(a, -1) == np.argmax(b, -1)))


def predict_every_path(runs: dict[str, Run], split: SplitArrays) -> dict[str, np.ndarray]:
    """Logits of every path each run has: ``runs`` maps ``float``/``qat`` to a run."""
    logits = {}
    for mode, run in runs.items():
        if run.config.quant.mode != mode:
            raise PathError(f"{run.directory}: given as the {mode} run, it is "
                            f"{run.config.quant.mode}")
        for path in PATHS:
            if _RUN_MODE[path] == mode:
                logits[path] = predict_path(run, split, path)
    return logits

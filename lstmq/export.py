"""Export of a trained run: its integer model as an artifact (``lstmq.artifact``) and as a C
header of ``static const`` arrays, with the run's byte budget enforced."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

import lstmq
from lstmq import budget
from lstmq.artifact import ArtifactError, param_tree, stored_arrays, write_artifact
from lstmq.integer import MEAN_READOUT, IntegerModel, layer_names
from lstmq.recipe import RECIPE_VERSION

log = logging.getLogger("lstmq")

_INTEGER_NOTE = ("Integer front end: int16 PCM to int8 features with the tables this lstmq "
                 "builds from these settings (their sha256: digest); the C library of "
                 "`lstmq export --c-dir` runs it on the device.")
_FRONT_END_NOTE = ("Front-end floats, outside the integer model: features = normalize(MFCC(audio)) "
                   "with these settings and statistics, then quantize_input (scale from "
                   "input_quant/multiplier and input_quant/shift) gives the int8 input.")


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What ``export_run`` wrote; ``param_bytes`` is counted from the artifact's arrays."""

    path: Path
    seed_index: int
    seed: int
    weight_bits: int
    tensors: int
    param_bytes: int
    budget_bytes: int  # count_bytes of the run's parameter tree
    file_bytes: int
    c_header: Path | None
    manifest: dict[str, Any]
    budget_limit: int | None = None  # budget.bytes of the run
    c_library: Any = None  # lstmq.c_export.CLibrary, when a C library was written

    def summary(self) -> str:
        match = "matches" if self.param_bytes == self.budget_bytes else "DIFFERS FROM"
        text = (f"{self.path}: {self.tensors} tensors, {self.param_bytes:,} parameter bytes "
                f"(int{self.weight_bits}; {match} the budget count {self.budget_bytes:,}), "
                f"{self.file_bytes:,} bytes on disk, seed {self.seed}")
        if self.budget_limit is not None:
            fits = "within" if self.param_bytes <= self.budget_limit else "OVER"
            text += f"; {fits} the {self.budget_limit:,}-byte budget"
        lib = self.c_library
        if lib is not None:
            pcm = lib.frontend_bytes > 0
            text += (f"\nC library: {lib.folder} ({'PCM to label' if pcm else 'LSTM on int8 features'}; "
                     f"{lib.layer_bytes:,} parameter bytes + {lib.frontend_bytes:,} front-end "
                     f"table bytes + {lib.constant_bytes:,} constant bytes = {lib.readonly_bytes:,} "
                     f"read-only bytes; {lib.macs_per_frame:,} multiply-accumulates per frame"
                     + (f", {lib.macs_per_second / 1e6:.2f} M per second of audio; buffers for "
                        f"{lib.max_frames} frames" if pcm else "") + ")")
        return text + (f"\nC header: {self.c_header}" if self.c_header else "")


def export_run(run_dir: str | Path, out_path: str | Path, seed_index: int = 0,
               c_header: str | Path | None = None, path: str | None = None,
               c_dir: str | Path | None = None, golden: int = 20,
               max_seconds: float | None = None) -> ExportReport:
    """Exports one seed of a trained run's integer model as an artifact (and a C header, and
    a C library in ``c_dir``: the PCM-to-label runtime for a run trained with the integer
    front end, with ``golden`` test clips as golden vectors; else the LSTM on int8 features).

    ``path``: the run's own integer path by default: ``qat-integer`` for a QAT run,
    ``ptq-integer`` (post-training quantization) for a float run. A run whose hidden size
    was solved from the budget must fit ``budget.bytes``. ``max_seconds`` sizes the C
    library's buffers (default 3 s, or the longest golden clip); the golden clips are then
    the first test clips they hold.

    Raises:
      lstmq.paths.PathError: the path does not fit the run.
      lstmq.integer.ConversionError: the run does not fit the recipe.
      ArtifactError: the artifact's bytes differ from ``count_bytes`` of the run's params,
        or exceed the budget the run was solved for.
      ValueError: no such seed, or a negative ``golden``.
    """
    import jax

    from lstmq.config import config_to_dict
    from lstmq.integer import logit_scale
    from lstmq.paths import integer_models, integer_path
    from lstmq.runs import load_run

    if golden < 0:
        raise ValueError(f"golden must be 0 or more clips, got {golden}")
    for target, example in ((out_path, "model.lstmqz"), (c_header, "model.h")):
        if target is not None and Path(target).is_dir():
            raise ArtifactError(f"{target}: is a folder; give the file's name (e.g. {example})")
    run = load_run(run_dir)
    path = path or integer_path(run)
    seeds = run.derived.seeds
    if not 0 <= seed_index < len(seeds):
        raise ValueError(f"{run_dir}: seed index {seed_index} out of range ({len(seeds)} seeds)")
    model = integer_models(run, path)[seed_index]
    params = jax.tree_util.tree_map(lambda p: np.asarray(p[seed_index]), run.params)
    bits = run.config.quant.weight_bits
    config = config_to_dict(run.config)
    integer_front = run.config.features.frontend == "integer"
    extra = {"classes": list(run.classes), "path": path,
             "logit_scale": logit_scale(params, bits),
             "front_end": {"note": _INTEGER_NOTE if integer_front else _FRONT_END_NOTE,
                           "frontend": run.config.features.frontend,
                           "digest": run.derived.frontend_digest,
                           "sample_rate": run.derived.sample_rate,
                           "features": config["features"],
                           "normalizer": run.derived.normalizer.to_dict(),
                           "input_clip": run.derived.input_clip},
             "source": {"run": Path(run_dir).name, "seed": seeds[seed_index],
                        "seed_index": seed_index}}
    stored = budget.count_artifact_bytes(stored_arrays(model, bits))
    if run.config.model.hidden == "auto" and stored > run.config.budget.bytes:
        raise ArtifactError(f"{run_dir}: the integer model holds {stored:,} bytes, over the "
                            f"budget of {run.config.budget.bytes:,} its hidden size was solved "
                            "for (budget and weight width disagree?)")
    # The C library first: its checks may refuse the export, and then nothing is written.
    library = None
    if c_dir is not None:
        library = _write_c_dir(run, seed_index, model, Path(c_dir), golden, max_seconds)
    manifest = write_artifact(model, out_path, bits, params, extra)
    if c_header is not None:
        write_c_header(model, c_header, weight_bits=bits)
    return ExportReport(Path(out_path), seed_index, seeds[seed_index], bits,
                        len(manifest["tensors"]), sum(t["bytes"] for t in manifest["tensors"]),
                        manifest["param_bytes"], Path(out_path).stat().st_size,
                        None if c_header is None else Path(c_header), manifest,
                        run.config.budget.bytes, library)


def _write_c_dir(run, seed_index: int, model: IntegerModel, folder: Path, golden: int,
                 max_seconds: float | None):
    """The C library of one seed, with golden test clips when it runs from PCM."""
    from lstmq.c_export import write_c_library
    from lstmq.device import device_model, jnp_logits
    from lstmq.frontend import pcm_int16

    bits = run.config.quant.weight_bits
    if run.config.features.frontend != "integer":
        if run.config.features.vote_speeds:
            log.warning("%s: features.vote_speeds=%s are not in the C library: without the "
                        "integer front end it reads features, not PCM, so each clip is scored "
                        "once (train with features.frontend=integer for votes on the device)",
                        run.directory, list(run.config.features.vote_speeds))
        return write_c_library(model, folder, bits, run.classes)
    from lstmq.inference import run_dataset
    from lstmq.splits import make_split

    device = device_model(run, seed_index)
    max_frames = None
    if max_seconds is not None:
        if not (math.isfinite(max_seconds) and max_seconds > 0):
            raise ValueError(f"--max-seconds must be a positive number of seconds, got "
                             f"{max_seconds}")
        # with speed votes, the slowest pass plays the clip longest
        samples = device.played_samples(int(max_seconds * device.tables.sample_rate))
        max_frames = samples // device.tables.hop + 1
        if max_frames < device.frames_of(device.min_samples):
            raise ValueError(f"--max-seconds {max_seconds} holds {max_frames} frame(s), fewer "
                             f"than the {device.frames_of(device.min_samples)} the front end "
                             "needs for a clip")
    clips = []
    if golden > 0:
        dataset = run_dataset(run)
        audio = (pcm_int16(dataset.audio[i]) for i in make_split(dataset, run.config.data).test)
        # With a buffer size given, the golden clips are the first test clips it holds.
        clips = list(itertools.islice((pcm for pcm in audio if max_frames is None
                                       or device.frames_of(pcm.size) <= max_frames), golden))
        if not clips:
            raise ValueError(f"no test clip fits --max-seconds {max_seconds}; give a longer "
                             "one, or --golden 0 for a library without golden clips")
        if len(clips) < golden:
            log.warning("%d golden clip(s) fit --max-seconds %s (of %d asked)", len(clips),
                        max_seconds, golden)
    logits = jnp_logits(device, clips) if clips else None
    return write_c_library(model, folder, bits, run.classes, device, clips, logits, max_frames)


_C_TYPES = {"int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "uint8": "uint8_t"}


def _c_array(ctype: str, name: str, values: np.ndarray, comment: str) -> str:
    items = ["(-2147483647 - 1)" if v == -(2**31) else str(v) for v in values.reshape(-1).tolist()]
    lines = [", ".join(items[i:i + 16]) for i in range(0, len(items), 16)]
    body = ",\n    ".join(lines)
    return f"/* {comment} */\nstatic const {ctype} {name}[{len(items)}] = {{\n    {body}\n}};\n"


def write_c_header(model: IntegerModel, path: str | Path, name: str = "lstmq_model",
                   weight_bits: int = 8) -> None:
    """Writes the integer model as a C99 header of ``static const`` arrays.

    Each tensor ``a/b/c`` becomes ``<name>_a_b_c[N]`` (C order) with ``#define``s of its
    dimensions; int4 weights are packed two per byte as ``uint8_t`` (see ``pack_int4``).
    """
    from lstmq import fixedpoint as fx
    from lstmq.io import atomic_write_text
    from lstmq.recipe import CELL_FRAC_BITS, GATE_FRAC_BITS, HIDDEN_FRAC_BITS, PREACT_FRAC_BITS

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{name!r} is not a C identifier")
    upper = name.upper()
    report = budget.count_bytes(param_tree(model), budget.Precision(weight_bits))
    stored = stored_arrays(model, weight_bits)
    out = [f"/* {name}: integer LSTM classifier exported by lstmq {lstmq.__version__}.",
           f" * Integer recipe v{RECIPE_VERSION} (docs/numerics.md); all arrays in C order. */",
           f"#ifndef {upper}_H_", f"#define {upper}_H_", "", "#include <stdint.h>", "",
           f"#define {upper}_RECIPE_VERSION {RECIPE_VERSION}",
           f"#define {upper}_WEIGHT_BITS {weight_bits}",
           f"#define {upper}_LAYERS {len(layer_names(model))}",
           f"#define {upper}_INPUT_SIZE {np.shape(model['lstm_0/input/kernel'])[0]}",
           f"#define {upper}_HIDDEN {np.shape(model['readout/kernel'])[0]}",
           f"#define {upper}_NUM_CLASSES {np.shape(model['readout/kernel'])[1]}",
           f"#define {upper}_READOUT_MEAN {int(MEAN_READOUT in model)}"
           "  /* 1: readout of the rounded mean state over the frames, 0: of the last */",
           f"#define {upper}_HIDDEN_FRAC_BITS {HIDDEN_FRAC_BITS}",
           f"#define {upper}_PREACT_FRAC_BITS {PREACT_FRAC_BITS}",
           f"#define {upper}_GATE_FRAC_BITS {GATE_FRAC_BITS}",
           f"#define {upper}_CELL_FRAC_BITS {CELL_FRAC_BITS}",
           f"#define {upper}_PARAM_BYTES {report.total}", ""]
    for row in report.rows:
        ident = row.name.replace("/", "_")
        for axis, size in enumerate(row.shape):
            out.append(f"#define {upper}_{ident.upper()}_DIM{axis} {size}")
        out.append(f"#define {upper}_{ident.upper()}_COUNT {row.count}")
        shape = "x".join(map(str, row.shape)) or "scalar"
        comment = f"{row.name}: {row.dtype} [{shape}]"
        if row.dtype == "int4":
            comment += (", packed two per byte: element 2i in the low nibble of byte i, "
                        "2i+1 in the high nibble, two's complement")
        array = stored[row.name]
        out.append(_c_array(_C_TYPES[str(array.dtype)], f"{name}_{ident}", array, comment))
    out.append("/* Kernel constants, not layer parameters: 257-entry Q0.15 tables of the LUT "
               "activations\n * (input Q3.12: u = z + 32768, k = u >> 8, r = u & 255). */")
    for lut, table in (("sigmoid", fx.SIGMOID_LUT), ("tanh", fx.TANH_LUT)):
        out.append(_c_array("int16_t", f"{name}_{lut}_lut", np.asarray(table),
                            f"{lut}: int16 [257], kernel constant"))
    out.append(f"#endif /* {upper}_H_ */\n")
    atomic_write_text(path, "\n".join(out))

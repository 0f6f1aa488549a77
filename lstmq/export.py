"""Single-file artifact of an integer model (zip of ``manifest.json`` + one ``.npy`` per tensor).

The artifact holds exactly the tensors of ``lstmq.budget.count_bytes`` (names, shapes,
dtypes), so its parameter bytes are counted from its own arrays and checked against the
budget at export. Layout of ``model.lstmqz``:

| member | what |
|---|---|
| ``manifest.json`` | versions, sizes, tensors (name, dtype, shape, bytes, sha256), front end |
| ``tensors/<name>.npy`` | one tensor as stored: int8/int16/int32; int4 packed two per byte |

int4 packing (``pack_int4``): the tensor is flattened in C order, element ``2i`` goes to the
low nibble of byte ``i`` and ``2i+1`` to the high nibble, two's complement; an odd count
leaves the last high nibble 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import lstmq
from lstmq import budget
from lstmq.integer import MEAN_READOUT, READOUTS, RECIPE_VERSION, IntegerModel, layer_names

FORMAT = "lstmq-integer-model"
MANIFEST = "manifest.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same model gives the same bytes
_FRONT_END_NOTE = ("Front-end floats, outside the integer model: features = normalize(MFCC(audio)) "
                   "with these settings and statistics, then quantize_input (scale from "
                   "input_quant/multiplier and input_quant/shift) gives the int8 input.")


class ArtifactError(ValueError):
    """An artifact cannot be written or read back as a valid integer model."""


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Packs int4 values (int8 array in [-8, 7], any shape) two per byte: <uint8>[ceil(n/2)]."""
    flat = np.asarray(values).reshape(-1)
    if flat.dtype.kind not in "iu" or (flat.size and (flat.min() < -8 or flat.max() > 7)):
        raise ValueError("pack_int4 needs integers in [-8, 7]")
    nibbles = (flat.astype(np.int16) & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return nibbles[0::2] | (nibbles[1::2] << 4)


def unpack_int4(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``pack_int4``: <uint8>[ceil(n/2)] -> <int8>[shape]."""
    packed = np.asarray(packed)
    count = int(np.prod(shape, dtype=np.int64))
    if packed.dtype != np.uint8 or packed.shape != (-(-count // 2),):
        raise ValueError(f"expected <uint8>[{-(-count // 2)}] for {count} int4 values, "
                         f"got {packed.dtype}{list(packed.shape)}")
    nibbles = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(-1)[:count]
    return ((nibbles.astype(np.int8) ^ 8) - 8).reshape(shape)


def param_tree(model: IntegerModel) -> dict[str, Any]:
    """The shapes of the float param tree an integer model came from (for ``count_bytes``)."""
    tree: dict[str, Any] = {}
    for name in layer_names(model):
        tree[name] = {"input": {"kernel": np.shape(model[f"{name}/input/kernel"]),
                                "bias": np.shape(model[f"{name}/input/bias"])},
                      "cell": {"recurrent": {
                          "kernel": np.shape(model[f"{name}/cell/recurrent/kernel"])}}}
    tree["readout"] = {"kernel": np.shape(model["readout/kernel"]),
                       "bias": np.shape(model["readout/bias"])}
    return tree


def stored_arrays(model: IntegerModel, weight_bits: int = 8) -> dict[str, np.ndarray]:
    """The arrays as an artifact stores them: the budget's int4 rows packed, the rest as is."""
    report = budget.count_bytes(param_tree(model), budget.Precision(weight_bits))
    stored = {}
    for row in report.rows:
        try:
            stored[row.name] = (pack_int4(model[row.name]) if row.dtype == "int4"
                                else np.asarray(model[row.name], order="C"))
        except ValueError as error:
            raise ArtifactError(f"{row.name}: cannot be stored as int4 ({error})") from None
    return stored


def check_budget(stored: Mapping[str, np.ndarray], params: Mapping[str, Any],
                 weight_bits: int) -> budget.ByteReport:
    """Holds stored arrays to ``count_bytes(params)``: same names, shapes, dtypes and bytes.

    Raises:
      ArtifactError: naming the first tensor that differs, or the totals.
    """
    report = budget.count_bytes(params, budget.Precision(weight_bits))
    if [row.name for row in report.rows] != list(stored):
        raise ArtifactError(f"tensors {list(stored)} are not the budget's "
                            f"{[row.name for row in report.rows]}")
    for row in report.rows:
        array = stored[row.name]
        dtype, shape = ("uint8", (row.bytes,)) if row.dtype == "int4" else (row.dtype, row.shape)
        if str(array.dtype) != dtype or array.shape != shape or array.nbytes != row.bytes:
            raise ArtifactError(f"{row.name}: stored as {array.dtype}{list(array.shape)} "
                                f"({array.nbytes} bytes), budget counts {row.dtype}"
                                f"{list(row.shape)} ({row.bytes} bytes)")
    if budget.count_artifact_bytes(stored) != report.total:
        raise ArtifactError(f"artifact holds {budget.count_artifact_bytes(stored)} parameter "
                            f"bytes, the budget counts {report.total}")
    return report


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_artifact(model: IntegerModel, path: str | Path, weight_bits: int = 8,
                   params: Mapping[str, Any] | None = None,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Writes ``model`` atomically as a zip artifact and returns its manifest.

    Args:
      model: integer model arrays (``lstmq.integer.convert_params``; int4 weights unpacked).
      path: output file.
      weight_bits: storage bits of the weights (4 packs them).
      params: the float param tree the model came from; its ``count_bytes`` must equal the
        stored bytes (default: the tree implied by the model's shapes).
      extra: more manifest entries (front end, source run).

    Raises:
      ArtifactError: the stored tensors differ from the budget's count.
    """
    from lstmq.io import atomic_write_bytes

    stored = stored_arrays(model, weight_bits)
    report = check_budget(stored, param_tree(model) if params is None else params, weight_bits)
    rows = {row.name: row for row in report.rows}
    buffer = io.BytesIO()
    tensors = []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in stored.items():
            member, data = f"tensors/{name}.npy", _npy_bytes(array)
            archive.writestr(zipfile.ZipInfo(member, _ZIP_TIME), data)
            tensors.append({"name": name, "file": member, "dtype": rows[name].dtype,
                            "shape": list(rows[name].shape), "stored_dtype": str(array.dtype),
                            "stored_shape": list(array.shape), "bytes": int(array.nbytes),
                            "sha256": hashlib.sha256(data).hexdigest()})
        manifest = {
            "format": FORMAT, "recipe_version": RECIPE_VERSION,
            "lstmq_version": lstmq.__version__, "weight_bits": weight_bits,
            "hidden": int(np.shape(model["readout/kernel"])[0]),
            "layers": len(layer_names(model)),
            "input_size": int(np.shape(model["lstm_0/input/kernel"])[0]),
            "num_classes": int(np.shape(model["readout/kernel"])[1]),
            "readout": "mean" if MEAN_READOUT in model else "last",
            "param_bytes": report.total, "params": report.params,
            "tensors": tensors, **(extra or {}),
        }
        archive.writestr(zipfile.ZipInfo(MANIFEST, _ZIP_TIME), json.dumps(manifest, indent=2))
    atomic_write_bytes(path, buffer.getvalue())
    return manifest


def _read_manifest(archive: zipfile.ZipFile, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except KeyError:
        raise ArtifactError(f"{where}: no {MANIFEST}; not an lstmq artifact") from None
    except ValueError as error:
        raise ArtifactError(f"{where}: {MANIFEST} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{where}: {MANIFEST} does not describe an {FORMAT}")
    if manifest.get("recipe_version") != RECIPE_VERSION:
        raise ArtifactError(f"{where}: integer recipe version {manifest.get('recipe_version')!r}, "
                            f"this lstmq runs version {RECIPE_VERSION}")
    return manifest


def _read_tensor(archive: zipfile.ZipFile, entry: Mapping[str, Any], where: str) -> np.ndarray:
    name = entry["name"]
    try:
        data = archive.read(entry["file"])
    except KeyError:
        raise ArtifactError(f"{where}: tensor {name!r} is missing ({entry['file']})") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ArtifactError(f"{where}: tensor {name!r} is corrupted (sha256 mismatch)")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as error:
        raise ArtifactError(f"{where}: tensor {name!r} is not a valid .npy ({error})") from None
    if str(array.dtype) != entry["stored_dtype"] or list(array.shape) != entry["stored_shape"]:
        raise ArtifactError(f"{where}: tensor {name!r} is {array.dtype}{list(array.shape)}, "
                            f"the manifest says {entry['stored_dtype']}{entry['stored_shape']}")
    if entry["dtype"] != "int4":
        return array
    try:
        return unpack_int4(array, tuple(entry["shape"]))
    except ValueError as error:
        raise ArtifactError(f"{where}: tensor {name!r} does not unpack to int4"
                            f"{entry['shape']} ({error})") from None


def load_artifact(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads an artifact back: (integer model arrays, int4 unpacked to int8; manifest).

    Every tensor is checked against the manifest (file present, sha256, dtype, shape) and the
    manifest against the recipe (version, the budget's tensors and dtypes).

    Raises:
      ArtifactError: naming the file and the tensor on any mismatch or corruption.
      FileNotFoundError: no such file.
    """
    where = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: not found")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise ArtifactError(f"{where}: member {bad} is corrupted (CRC mismatch)")
            manifest = _read_manifest(archive, where)
            try:
                model = {e["name"]: _read_tensor(archive, e, where) for e in manifest["tensors"]}
            except (KeyError, TypeError) as error:
                raise ArtifactError(f"{where}: malformed tensor list in {MANIFEST} "
                                    f"({error})") from None
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ArtifactError(f"{where}: not a readable zip artifact ({error})") from None
    try:
        expected = budget.count_bytes(param_tree(model), budget.Precision(manifest["weight_bits"]))
    except (KeyError, ValueError) as error:
        raise ArtifactError(f"{where}: tensors do not form an integer model ({error})") from None
    sizes = {"hidden": np.shape(model["readout/kernel"])[0], "layers": len(layer_names(model)),
             "input_size": np.shape(model["lstm_0/input/kernel"])[0],
             "num_classes": np.shape(model["readout/kernel"])[1]}
    for key, size in sizes.items():
        if manifest.get(key) != size:
            raise ArtifactError(f"{where}: manifest says {key} {manifest.get(key)!r}, "
                                f"the tensors have {size}")
    for row, entry in zip(expected.rows, manifest["tensors"]):
        if (row.name, row.dtype, row.shape) != (entry["name"], entry["dtype"],
                                                 tuple(entry["shape"])):
            raise ArtifactError(f"{where}: tensor {entry['name']!r} ({entry['dtype']}"
                                f"{entry['shape']}) where the recipe has {row.name!r} "
                                f"({row.dtype}{list(row.shape)})")
    if len(expected.rows) != len(manifest["tensors"]):
        raise ArtifactError(f"{where}: {len(manifest['tensors'])} tensors, the recipe has "
                            f"{len(expected.rows)}")
    readout = manifest.get("readout", "last")
    if readout not in READOUTS:
        raise ArtifactError(f"{where}: manifest readout {readout!r} is not one of {READOUTS}")
    if readout == "mean":
        model[MEAN_READOUT] = np.asarray(1, np.int8)
    return model, manifest


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

    def summary(self) -> str:
        match = "matches" if self.param_bytes == self.budget_bytes else "DIFFERS FROM"
        text = (f"{self.path}: {self.tensors} tensors, {self.param_bytes:,} parameter bytes "
                f"(int{self.weight_bits}; {match} the budget count {self.budget_bytes:,}), "
                f"{self.file_bytes:,} bytes on disk, seed {self.seed}")
        if self.budget_limit is not None:
            fits = "within" if self.param_bytes <= self.budget_limit else "OVER"
            text += f"; {fits} the {self.budget_limit:,}-byte budget"
        return text + (f"\nC header: {self.c_header}" if self.c_header else "")


def export_run(run_dir: str | Path, out_path: str | Path, seed_index: int = 0,
               c_header: str | Path | None = None, path: str = "qat-integer") -> ExportReport:
    """Exports one seed of a trained run's integer model as an artifact (and a C header).

    ``path``: ``qat-integer`` for a QAT run, ``ptq-integer`` to export a float run by
    post-training quantization. A run whose hidden size was solved from the budget must fit
    ``budget.bytes``.

    Raises:
      lstmq.paths.PathError: the path does not fit the run.
      lstmq.integer.ConversionError: the run does not fit the recipe.
      ArtifactError: the artifact's bytes differ from ``count_bytes`` of the run's params,
        or exceed the budget the run was solved for.
      ValueError: no such seed.
    """
    import jax

    from lstmq.config import config_to_dict
    from lstmq.integer import logit_scale
    from lstmq.paths import integer_models
    from lstmq.runs import load_run

    run = load_run(run_dir)
    seeds = run.derived.seeds
    if not 0 <= seed_index < len(seeds):
        raise ValueError(f"{run_dir}: seed index {seed_index} out of range ({len(seeds)} seeds)")
    model = integer_models(run, path)[seed_index]
    params = jax.tree_util.tree_map(lambda p: np.asarray(p[seed_index]), run.params)
    bits = run.config.quant.weight_bits
    config = config_to_dict(run.config)
    extra = {"classes": list(run.classes), "path": path,
             "logit_scale": logit_scale(params, bits),
             "front_end": {"note": _FRONT_END_NOTE, "sample_rate": run.derived.sample_rate,
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
    manifest = write_artifact(model, out_path, bits, params, extra)
    if c_header is not None:
        write_c_header(model, c_header, weight_bits=bits)
    return ExportReport(Path(out_path), seed_index, seeds[seed_index], bits,
                        len(manifest["tensors"]), sum(t["bytes"] for t in manifest["tensors"]),
                        manifest["param_bytes"], Path(out_path).stat().st_size,
                        None if c_header is None else Path(c_header), manifest,
                        run.config.budget.bytes)


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

"""Single-file artifact of an integer model (zip of ``manifest.json`` + one ``.npy`` per tensor).

Reading trusts nothing: the manifest carries its own checksum, every tensor is held to the
recipe (name, storage dtype, shape, bytes) before its member is read, a member's declared
size is checked before any memory is taken, ``.npy`` headers are parsed and compared before
the data is, and requantization multipliers and shifts must lie in their ranges.

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

import hashlib
import io
import json
import re
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import lstmq
from lstmq import budget
from lstmq.integer import MEAN_READOUT, READOUTS, IntegerModel, check_int32_bounds, layer_names
from lstmq.io import atomic_write_bytes, json_checksum
from lstmq.recipe import RECIPE_VERSION

FORMAT = "lstmq-integer-model"
MANIFEST = "manifest.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same model gives the same bytes
_NPY_HEADER_LIMIT = 4096  # bytes of .npy header a stored tensor may carry
MULTIPLIER_RANGE = (2**30, 2**31 - 1)  # requantization multipliers (or exactly 0)
SHIFT_RANGE = (-31, 31)


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
    check_ranges(model, str(path))
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
        manifest["manifest_sha256"] = manifest_checksum(manifest)
        archive.writestr(zipfile.ZipInfo(MANIFEST, _ZIP_TIME), json.dumps(manifest, indent=2))
    atomic_write_bytes(path, buffer.getvalue())
    return manifest


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON, its own checksum field left out."""
    return json_checksum(manifest, "manifest_sha256")


def check_ranges(model: IntegerModel, where: str) -> None:
    """Multipliers are 0 or in [2^30, 2^31); shifts in [-31, 31]; the input multiplier > 0.

    Raises:
      ArtifactError: naming the tensor and the value out of range.
    """
    for name, array in model.items():
        values = np.asarray(array).astype(np.int64)
        if name.endswith("multiplier"):
            low, high = MULTIPLIER_RANGE
            bad = values[(values != 0) & ((values < low) | (values > high))]
            if bad.size or (name == "input_quant/multiplier" and not values.all()):
                shown = bad.reshape(-1)[0] if bad.size else 0
                raise ArtifactError(f"{where}: {name} holds {shown}, outside 0 and "
                                    f"[{low}, {high}]")
        elif name.endswith("shift"):
            low, high = SHIFT_RANGE
            bad = values[(values < low) | (values > high)]
            if bad.size:
                raise ArtifactError(f"{where}: {name} holds {bad.reshape(-1)[0]}, outside "
                                    f"[{low}, {high}]")


def _read_manifest(archive: zipfile.ZipFile, where: str) -> dict[str, Any]:
    try:
        info = archive.getinfo(MANIFEST)
    except KeyError:
        raise ArtifactError(f"{where}: no {MANIFEST}; not an lstmq artifact") from None
    if info.file_size > 1 << 20:
        raise ArtifactError(f"{where}: {MANIFEST} declares {info.file_size:,} bytes; not an "
                            "lstmq manifest")
    try:
        manifest = json.loads(archive.read(info))
    except ValueError as error:
        raise ArtifactError(f"{where}: {MANIFEST} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{where}: {MANIFEST} does not describe an {FORMAT}")
    if manifest.get("recipe_version") != RECIPE_VERSION:
        raise ArtifactError(f"{where}: integer recipe version {manifest.get('recipe_version')!r}, "
                            f"this lstmq runs version {RECIPE_VERSION}")
    if manifest.get("manifest_sha256") != manifest_checksum(manifest):
        raise ArtifactError(f"{where}: {MANIFEST} fails its checksum (edited or corrupted)")
    return manifest


def _expected_rows(manifest: Mapping[str, Any], where: str) -> list[budget.TensorBytes]:
    """The recipe's rows for the shapes the manifest declares (nothing read yet)."""
    try:
        shapes = {e["name"]: tuple(int(d) for d in e["shape"]) for e in manifest["tensors"]}
        tree: dict[str, Any] = {}
        layers = sorted({n.split("/")[0] for n in shapes if re.match(r"lstm_\d+/", n)},
                        key=lambda n: int(n[5:]))
        for layer in layers:
            tree[layer] = {"input": {"kernel": shapes[f"{layer}/input/kernel"],
                                     "bias": shapes[f"{layer}/input/bias"]},
                           "cell": {"recurrent": {
                               "kernel": shapes[f"{layer}/cell/recurrent/kernel"]}}}
        tree["readout"] = {"kernel": shapes["readout/kernel"], "bias": shapes["readout/bias"]}
        rows = budget.count_bytes(tree, budget.Precision(manifest["weight_bits"])).rows
    except (KeyError, TypeError, ValueError) as error:
        raise ArtifactError(f"{where}: malformed tensor list in {MANIFEST} ({error!r})") from None
    names = [e["name"] for e in manifest["tensors"]]
    if names != [row.name for row in rows]:
        raise ArtifactError(f"{where}: tensors {names} are not the recipe's "
                            f"{[row.name for row in rows]}")
    return list(rows)


def _read_tensor(archive: zipfile.ZipFile, entry: Mapping[str, Any], row: budget.TensorBytes,
                 where: str) -> np.ndarray:
    name = row.name
    dtype, shape = ("uint8", (row.bytes,)) if row.dtype == "int4" else (row.dtype, row.shape)
    declared = (entry.get("dtype"), tuple(entry.get("shape", ())), entry.get("stored_dtype"),
                tuple(entry.get("stored_shape", ())), entry.get("bytes"))
    if declared != (row.dtype, row.shape, dtype, shape, row.bytes):
        raise ArtifactError(f"{where}: tensor {name!r} is declared {declared}, the recipe has "
                            f"{row.dtype}{list(row.shape)} stored as {dtype}{list(shape)} "
                            f"({row.bytes} bytes)")
    try:
        info = archive.getinfo(entry["file"])
    except (KeyError, TypeError):
        raise ArtifactError(f"{where}: tensor {name!r} is missing ({entry.get('file')})") from None
    if info.file_size > row.bytes + _NPY_HEADER_LIMIT or info.compress_size > info.file_size + 64:
        raise ArtifactError(f"{where}: member {info.filename} declares {info.file_size:,} bytes "
                            f"for a {row.bytes:,}-byte tensor")
    data = archive.read(info)
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ArtifactError(f"{where}: tensor {name!r} is corrupted (sha256 mismatch)")
    array = _parse_npy(data, dtype, shape, f"{where}: tensor {name!r}")
    if row.dtype != "int4":
        return array
    try:
        return unpack_int4(array, row.shape)
    except ValueError as error:
        raise ArtifactError(f"{where}: tensor {name!r} does not unpack to int4"
                            f"{list(row.shape)} ({error})") from None


def _parse_npy(data: bytes, dtype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """An array from .npy bytes whose header must say ``dtype`` and ``shape`` (C order)."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        found_shape, fortran, found_dtype = read_header(stream, max_header_size=_NPY_HEADER_LIMIT)
    except (ValueError, TypeError, EOFError, SyntaxError) as error:
        raise ArtifactError(f"{what}: not a valid .npy ({error})") from None
    if found_dtype != np.dtype(dtype) or tuple(found_shape) != tuple(shape) or fortran:
        raise ArtifactError(f"{what}: .npy holds {found_dtype}{list(found_shape)}, expected "
                            f"{dtype}{list(shape)}")
    body = data[stream.tell():]
    if len(body) != np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64)):
        raise ArtifactError(f"{what}: .npy data has {len(body)} bytes, expected "
                            f"{np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).copy()


def load_artifact(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads an artifact back: (integer model arrays, int4 unpacked to int8; manifest).

    Raises:
      ArtifactError: naming the file (and the tensor) on any mismatch or corruption.
      FileNotFoundError: no such file.
    """
    where = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: not found")
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = _read_manifest(archive, where)
            rows = _expected_rows(manifest, where)
            model = {row.name: _read_tensor(archive, entry, row, where)
                     for row, entry in zip(rows, manifest["tensors"])}
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
        raise ArtifactError(f"{where}: not a readable zip artifact ({error})") from None
    sizes = {"hidden": np.shape(model["readout/kernel"])[0], "layers": len(layer_names(model)),
             "input_size": np.shape(model["lstm_0/input/kernel"])[0],
             "num_classes": np.shape(model["readout/kernel"])[1]}
    for key, size in sizes.items():
        if manifest.get(key) != size:
            raise ArtifactError(f"{where}: manifest says {key} {manifest.get(key)!r}, "
                                f"the tensors have {size}")
    check_ranges(model, where)
    try:
        check_int32_bounds(model)
    except OverflowError as error:
        raise ArtifactError(f"{where}: {error}") from None
    readout = manifest.get("readout", "last")
    if readout not in READOUTS:
        raise ArtifactError(f"{where}: manifest readout {readout!r} is not one of {READOUTS}")
    if readout == "mean":
        model[MEAN_READOUT] = np.asarray(1, np.int8)
    return model, manifest

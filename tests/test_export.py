"""The integer artifact: bit-exact round trip, sized by the budget, clear errors, a C header."""

from __future__ import annotations

import functools
import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmq import budget
from lstmq.budget import Precision
from lstmq.artifact import (ArtifactError, load_artifact, pack_int4, stored_arrays, unpack_int4,
                            write_artifact)
from lstmq.export import write_c_header
from lstmq.integer import MEAN_READOUT, convert_params, predict_int, quantize_input
from lstmq.recipe import RECIPE_VERSION
from lstmq.model import LSTMClassifier
from lstmq.quant import QATNumerics

CLIP, HIDDEN, FEATURES, CLASSES = 3.0, 12, 13, 10
predict = jax.jit(predict_int)
pytestmark = pytest.mark.filterwarnings(  # AQT calls jnp.promote_types on arrays; not ours
    "ignore:Implicit conversion of an array to a dtype:DeprecationWarning")


@functools.lru_cache(maxsize=None)
def params_of(hidden: int = HIDDEN):
    model = LSTMClassifier(hidden=hidden, layers=2, numerics=QATNumerics(input_clip=CLIP))
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 2, FEATURES)),
                                 jnp.array([2], jnp.int32))["params"]
    rng = np.random.default_rng(1)  # non-zero biases
    return jax.tree_util.tree_map(
        lambda p: np.asarray(p) if p.ndim == 2 else rng.standard_normal(p.shape).astype(np.float32),
        params)


def integer_model(bits: int = 8, hidden: int = HIDDEN, readout: str = "last"):
    return convert_params(params_of(hidden), CLIP, weight_bits=bits, readout=readout)


@pytest.fixture(params=[8, 4], ids=["int8", "int4"])
def bits(request) -> int:
    return request.param


@pytest.fixture
def artifact(tmp_path, bits) -> Path:
    path = tmp_path / "model.lstmqz"
    write_artifact(integer_model(bits), path, bits, params_of())
    return path


# --- int4 packing -----------------------------------------------------------------------


def test_pack_int4_layout():
    # element 2i in the low nibble, 2i+1 in the high nibble, two's complement; odd count pads.
    np.testing.assert_array_equal(pack_int4(np.array([1, -1], np.int8)), [0xF1])
    np.testing.assert_array_equal(pack_int4(np.array([-8, 7, 3], np.int8)), [0x78, 0x03])
    assert pack_int4(np.zeros(0, np.int8)).dtype == np.uint8


@pytest.mark.parametrize("shape", [(16,), (3, 5), (2, 3, 7), (1,), ()])
def test_pack_unpack_round_trip(shape):
    values = np.random.default_rng(0).integers(-8, 8, shape).astype(np.int8)
    packed = pack_int4(values)
    assert packed.dtype == np.uint8 and packed.shape == (-(-values.size // 2),)
    unpacked = unpack_int4(packed, shape)
    assert unpacked.dtype == np.int8 and unpacked.shape == shape
    np.testing.assert_array_equal(unpacked, values)


def test_pack_int4_rejects_out_of_range_and_unpack_wrong_size():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(np.array([8], np.int8))
    with pytest.raises(ValueError, match="uint8"):
        unpack_int4(np.zeros(3, np.uint8), (7, 2))


# --- round trip and bytes ---------------------------------------------------------------


def test_round_trip_is_bit_exact(artifact, bits):
    model = integer_model(bits)
    loaded, manifest = load_artifact(artifact)
    assert list(loaded) == list(model)
    for name, array in model.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)
    rng = np.random.default_rng(2)
    x = quantize_input(model, 1.5 * rng.standard_normal((16, 11, FEATURES)).astype(np.float32))
    lengths = rng.integers(1, 12, 16).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(predict(loaded, x, lengths)),
                                  np.asarray(predict(model, x, lengths)))
    assert manifest["recipe_version"] == RECIPE_VERSION and manifest["weight_bits"] == bits
    assert (manifest["hidden"], manifest["layers"], manifest["input_size"],
            manifest["num_classes"]) == (HIDDEN, 2, FEATURES, CLASSES)
    assert manifest["readout"] == "last"


def test_mean_readout_round_trips_through_manifest_and_header(tmp_path):
    model = integer_model(readout="mean")
    path = tmp_path / "mean.lstmqz"
    manifest = write_artifact(model, path, 8, params_of())
    assert manifest["readout"] == "mean"
    assert manifest["param_bytes"] == budget.count_bytes(params_of(), budget.Precision(8)).total
    loaded, _ = load_artifact(path)
    assert MEAN_READOUT in loaded
    rng = np.random.default_rng(3)
    x = quantize_input(model, 1.5 * rng.standard_normal((16, 11, FEATURES)).astype(np.float32))
    lengths = rng.integers(1, 12, 16).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(predict(loaded, x, lengths)),
                                  np.asarray(predict(model, x, lengths)))
    header = tmp_path / "mean.h"
    write_c_header(model, header)
    assert "#define LSTMQ_MODEL_READOUT_MEAN 1" in header.read_text()


def test_same_model_gives_the_same_bytes(tmp_path, artifact, bits):
    again = tmp_path / "again.lstmqz"
    write_artifact(integer_model(bits), again, bits)
    assert again.read_bytes() == artifact.read_bytes()


def test_artifact_bytes_equal_the_budget_count(artifact, bits):
    report = budget.count_bytes(params_of(), Precision(bits))
    _, manifest = load_artifact(artifact)
    with zipfile.ZipFile(artifact) as archive:  # count what is really stored
        stored = {t["name"]: np.load(io.BytesIO(archive.read(t["file"])))
                  for t in manifest["tensors"]}
    assert budget.count_artifact_bytes(stored) == report.total == manifest["param_bytes"]
    assert sum(t["bytes"] for t in manifest["tensors"]) == report.total
    assert [(t["name"], t["dtype"], tuple(t["shape"])) for t in manifest["tensors"]] == \
        [(row.name, row.dtype, row.shape) for row in report.rows]
    if bits == 4:
        assert report.total < budget.count_bytes(params_of(), Precision(8)).total
        assert stored["readout/kernel"].dtype == np.uint8


def test_export_refuses_bytes_that_differ_from_the_budget(tmp_path):
    path = tmp_path / "model.lstmqz"
    with pytest.raises(ArtifactError, match="lstm_0/input/kernel"):  # params of another size
        write_artifact(integer_model(), path, 8, params_of(hidden=4))
    with pytest.raises(ArtifactError, match="int4"):  # int8 values claimed as 4-bit storage
        write_artifact(integer_model(8), path, 4, params_of())
    assert not path.exists()


# --- errors -----------------------------------------------------------------------------


def rewrite(src: Path, dst: Path, members=None, manifest=None, resign: bool = True) -> Path:
    """Copies an artifact, replacing (bytes) or dropping (None) members, editing the manifest
    (and, with ``resign``, recomputing its checksum, so that the deeper checks must fire)."""
    from lstmq.artifact import manifest_checksum

    members = members or {}
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for info in old.infolist():
            data = members.get(info.filename, old.read(info.filename))
            if info.filename == "manifest.json" and manifest is not None:
                values = json.loads(data)
                manifest(values)
                if resign:
                    values["manifest_sha256"] = manifest_checksum(values)
                data = json.dumps(values).encode()
            if data is not None:
                new.writestr(info.filename, data)
    return dst


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def load_error(path: Path) -> str:
    with pytest.raises(ArtifactError) as info:
        load_artifact(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_corrupted_files_are_named(tmp_path, artifact):
    data = bytearray(artifact.read_bytes())
    truncated = tmp_path / "truncated.lstmqz"
    truncated.write_bytes(data[: len(data) // 2])
    assert "not a readable zip" in load_error(truncated)
    (tmp_path / "text.lstmqz").write_text("not a model")
    assert "not a readable zip" in load_error(tmp_path / "text.lstmqz")
    with zipfile.ZipFile(artifact) as archive:  # flip one byte inside a tensor's data
        info = archive.getinfo("tensors/readout/bias.npy")
    offset = info.header_offset + 30 + len(info.filename) + info.file_size - 1
    data[offset] ^= 0xFF
    flipped = tmp_path / "flipped.lstmqz"
    flipped.write_bytes(bytes(data))
    assert "readout/bias" in load_error(flipped) and "corrupted" in load_error(flipped)
    with pytest.raises(FileNotFoundError, match="absent"):
        load_artifact(tmp_path / "absent.lstmqz")


def test_missing_tensor_is_named(tmp_path, artifact):
    broken = rewrite(artifact, tmp_path / "b.lstmqz", {"tensors/lstm_1/input/bias.npy": None})
    message = load_error(broken)
    assert "'lstm_1/input/bias' is missing" in message


def test_wrong_dtype_is_named(tmp_path, artifact):
    name = "lstm_0/input/requant_shift"
    with zipfile.ZipFile(artifact) as archive:
        array = np.load(io.BytesIO(archive.read(f"tensors/{name}.npy")))
    data = npy(array.astype(np.int16))

    def keep_checksum(manifest):  # a consistent manifest, so the dtype check itself fires
        import hashlib

        entry = next(t for t in manifest["tensors"] if t["name"] == name)
        entry["sha256"] = hashlib.sha256(data).hexdigest()

    broken = rewrite(artifact, tmp_path / "b.lstmqz", {f"tensors/{name}.npy": data}, keep_checksum)
    message = load_error(broken)
    assert name in message and "int16" in message and "int8" in message
    tampered = rewrite(artifact, tmp_path / "t.lstmqz", {f"tensors/{name}.npy": data})
    assert "sha256" in load_error(tampered) and name in load_error(tampered)


def test_manifest_that_does_not_match_the_recipe(tmp_path, artifact):
    def bump(manifest):
        manifest["recipe_version"] = RECIPE_VERSION + 1

    message = load_error(rewrite(artifact, tmp_path / "v.lstmqz", manifest=bump))
    assert f"recipe version {RECIPE_VERSION + 1}" in message

    def relabel(manifest):
        manifest["tensors"][-1]["dtype"] = "int16"

    assert "readout/bias" in load_error(rewrite(artifact, tmp_path / "r.lstmqz", manifest=relabel))

    def reshape(manifest):
        manifest["tensors"][2]["shape"] = [FEATURES, 4 * HIDDEN - 1]

    assert "lstm_0/input/kernel" in load_error(rewrite(artifact, tmp_path / "s.lstmqz",
                                                       manifest=reshape))
    assert "manifest.json" in load_error(rewrite(artifact, tmp_path / "m.lstmqz",
                                                 {"manifest.json": None}))


# --- C header ---------------------------------------------------------------------------

CC = shutil.which("cc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc)")


def test_c_header_content(tmp_path, bits):
    header = tmp_path / "model.h"
    write_c_header(integer_model(bits), header, weight_bits=bits)
    text = header.read_text()
    assert "#include <stdint.h>" in text and f"LSTMQ_MODEL_RECIPE_VERSION {RECIPE_VERSION}" in text
    assert "#define LSTMQ_MODEL_READOUT_MEAN 0" in text
    assert "static const int32_t lstmq_model_readout_bias[10]" in text
    assert "#define LSTMQ_MODEL_LSTM_0_INPUT_KERNEL_DIM0 13" in text
    assert "static const int16_t lstmq_model_tanh_lut[257]" in text
    assert "not layer parameters" in text
    kernel = "lstmq_model_lstm_0_input_kernel"
    if bits == 4:
        assert f"static const uint8_t {kernel}[{13 * 4 * HIDDEN // 2}]" in text and "packed" in text
    else:
        assert f"static const int8_t {kernel}[{13 * 4 * HIDDEN}]" in text
    with pytest.raises(ValueError, match="C identifier"):
        write_c_header(integer_model(bits), header, name="9 lives")


@needs_cc
def test_c_header_compiles_and_holds_the_values(tmp_path, bits):
    model = integer_model(bits)
    write_c_header(model, tmp_path / "model.h", weight_bits=bits)
    stored = stored_arrays(model, bits)
    idents = [name.replace("/", "_") for name in stored] + ["sigmoid_lut", "tanh_lut"]
    sums = "\n".join(f'    printf("%lld\\n", sum_{i}());' for i in range(len(idents)))
    functions = "\n".join(
        f"static long long sum_{i}(void) {{ long long s = 0; size_t k;\n"
        f"    for (k = 0; k < sizeof lstmq_model_{ident} / sizeof lstmq_model_{ident}[0]; ++k)"
        f" s += lstmq_model_{ident}[k];\n    return s; }}" for i, ident in enumerate(idents))
    source = tmp_path / "probe.c"
    source.write_text(f'#include <stdio.h>\n#include <stddef.h>\n#include "model.h"\n{functions}\n'
                      f"int main(void) {{\n{sums}\n    return 0;\n}}\n")
    flags = ["-std=c99", "-Wall", "-Werror"]
    compiled = subprocess.run([CC, *flags, "-c", str(source), "-o", str(tmp_path / "probe.o")],
                              capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    linked = subprocess.run([CC, str(tmp_path / "probe.o"), "-o", str(tmp_path / "probe")],
                            capture_output=True, text=True)
    assert linked.returncode == 0, linked.stderr
    printed = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, check=True)
    from lstmq.fixedpoint import SIGMOID_LUT, TANH_LUT

    expected = [int(a.astype(np.int64).sum()) for a in [*stored.values(), SIGMOID_LUT, TANH_LUT]]
    assert [int(v) for v in printed.stdout.split()] == expected


# --- CLI on a trained run ---------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # no validation split
def test_cli_export_of_a_trained_qat_run(wav_folder, tmp_path, capsys):
    from lstmq.cli import main
    from lstmq.config import load_config
    from lstmq.paths import integer_models
    from lstmq.runner import train_and_evaluate
    from lstmq.runs import load_run

    config = load_config(None, [f"data.path={wav_folder}", "features.cache=false",
                                "train.epochs=1", "model.hidden=8", "train.seeds=1",
                                "train.batch_size=8", "data.split=official",
                                "data.val_fraction=0", "quant.mode=qat",
                                "features.vote_speeds=[0.9]"])
    train_and_evaluate(config, tmp_path / "run", progress=False)
    capsys.readouterr()
    out, header = tmp_path / "model.lstmqz", tmp_path / "model.h"
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(out),
                 "--c-header", str(header)]) == 0
    printed = capsys.readouterr().out
    run = load_run(tmp_path / "run")
    params = jax.tree_util.tree_map(lambda p: np.asarray(p[0]), run.params)
    total = budget.count_bytes(params, Precision(8)).total
    assert str(out) in printed and "18 tensors" in printed
    assert f"{total:,} parameter bytes" in printed and "matches the budget count" in printed
    loaded, manifest = load_artifact(out)
    expected = integer_models(run)[0]
    assert all(np.array_equal(loaded[k], expected[k]) for k in expected) and len(loaded) == 18
    assert manifest["front_end"]["normalizer"] == run.derived.normalizer.to_dict()
    assert manifest["front_end"]["features"]["n_mfcc"] == FEATURES
    assert manifest["source"] == {"run": "run", "seed": 0, "seed_index": 0}
    assert manifest["classes"] == [str(d) for d in range(10)] and manifest["path"] == "qat-integer"
    assert "lstmq_model_readout_kernel" in header.read_text()
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(out),
                 "--seed-index", "1"]) == 2
    assert "seed index 1 out of range" in capsys.readouterr().err
    # speed votes replay PCM: a library of features (float front end) cannot; it says so
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(out), "--c-dir",
                 str(tmp_path / "c")]) == 0
    assert "features.vote_speeds=[0.9] are not in the C library" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "-20"])
def test_cli_export_refuses_a_negative_golden_count(value, tmp_path, capsys):
    from lstmq.cli import main
    from lstmq.export import export_run

    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error, before any work
        main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "m.lstmqz"),
              "--golden", value])
    assert exit_info.value.code == 2
    assert f"argument --golden: must be 0 or more, got {value}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="golden must be 0 or more"):
        export_run(tmp_path / "run", tmp_path / "m.lstmqz", golden=int(value))

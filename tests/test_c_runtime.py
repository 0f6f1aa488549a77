"""The C runtime: bit-exact with the jnp path on the host, free of floats, the host's integer
engine, and on an FPU-less Cortex-M3 under QEMU."""

from __future__ import annotations

import dataclasses
import functools
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmq import frontend
from lstmq.c_export import (CHECK_SOURCES, CExportError, compile_host, find_compiler, float_words,
                            write_c_library)
from lstmq.config import FeatureConfig, load_config
from lstmq.cortex_m import missing_tools, run_on_cortex_m3
from lstmq.device import DeviceModel, jnp_logits
from lstmq.integer import convert_params, predict_int
from lstmq.integer_reference import predict_int_reference
from lstmq.model import LSTMClassifier
from lstmq.speed import speed_step

needs_cc = pytest.mark.skipif(find_compiler() is None,
                              reason="no C compiler (cc, gcc, clang or $CC) on this machine")


@functools.cache
def sanitizer_flags() -> tuple[str, ...]:
    """The undefined-behaviour sanitizer's flags, where the system compiler builds and runs
    a program with them (else none): a signed overflow or a bad shift then ends the program."""
    import tempfile

    flags = ("-fsanitize=undefined", "-fno-sanitize-recover=all")
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "probe.c"
        source.write_text("int main(void) { return 0; }\n")
        done = subprocess.run([find_compiler(), *flags, "-o", str(source.with_suffix("")),
                               str(source)], capture_output=True, check=False)
        if done.returncode != 0:
            return ()
        ran = subprocess.run([str(source.with_suffix(""))], capture_output=True, check=False)
        return flags if ran.returncode == 0 else ()


def make_device(bits: int = 8, readout: str = "last", normalize: str = "utterance",
                top_db: float | None = 40.0, layers: int = 2, seed: int = 0,
                speech_db: float | None = None, noise_percentile: int | None = None,
                noise_keep_db: float = 12.0, vote_speeds: tuple[float, ...] = (),
                preemphasis: float = 0.0) -> DeviceModel:
    model = LSTMClassifier(hidden=6, layers=layers, num_classes=4, readout=readout)
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 2, 13)), jnp.ones((1,), jnp.int32))
    params = jax.tree_util.tree_map(lambda p: np.asarray(p) * 3.0, params["params"])  # busier gates
    integer = convert_params(params, 2.5, bits, readout)
    cfg = FeatureConfig(normalize=normalize, top_db=top_db, speech_db=speech_db,
                        noise_percentile=noise_percentile, noise_keep_db=noise_keep_db,
                        preemphasis=preemphasis)
    tables = frontend.make_tables(cfg, 8000)
    scale = frontend.value_scale(cfg)
    rng = np.random.default_rng(seed)
    quantizer = frontend.FeatureQuantizer.fit(rng.normal(0, 2, 13), rng.uniform(0.5, 3, 13), 2.5,
                                              scale)
    return DeviceModel(integer, tables, quantizer, ("zero", "one", "two", "three"), None, 128,
                       tuple(speed_step(v) for v in vote_speeds))


def clips(count: int = 24, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [np.zeros(400, np.int16),  # digital silence
           np.where(np.arange(3000) % 40 < 20, 32767, -32768).astype(np.int16),  # full scale
           rng.integers(-50, 50, 5).astype(np.int16),  # shorter than a frame
           np.concatenate([np.zeros(900, np.int16),  # a burst between silences
                           (rng.normal(0, 3000, 1200)).astype(np.int16), np.zeros(2000, np.int16)])]
    while len(out) < count:
        n = int(rng.integers(600, 6000))
        t = np.arange(n) / 8000
        wave = rng.uniform(200, 20000) * np.sin(2 * np.pi * rng.uniform(100, 3000) * t)
        out.append(np.clip(wave + rng.normal(0, 50, n), -32768, 32767).astype(np.int16))
    return out


def check_on_host(device: DeviceModel, pcm: list[np.ndarray], folder, bits: int):
    """Builds the library's check program with ``pcm``'s jnp logits as its golden clips, runs
    it, and asserts every clip bit-exact; returns the library and the finished process."""
    library = write_c_library(device.model, folder, bits, device.classes, device, pcm,
                              jnp_logits(device, pcm))
    program = compile_host(folder, CHECK_SOURCES, "lstmq_check", sanitizer_flags())
    done = subprocess.run([str(program)], capture_output=True, text=True, check=False)
    assert f"lstmq check: {len(pcm)} of {len(pcm)} clips bit-exact" in done.stdout, done.stdout
    return library, done


@needs_cc
@pytest.mark.parametrize("bits, readout, normalize, top_db, speech_db, noise", [
    (8, "last", "utterance", 40.0, None, None), (4, "mean", "global", None, None, None),
    (8, "mean", "none", 80.0, None, None), (4, "mean", "utterance", 40.0, 20.0, None),
    (4, "mean", "utterance", 40.0, None, 10), (8, "last", "none", None, None, 0)])
def test_host_build_is_bit_exact_with_jnp(tmp_path, bits, readout, normalize, top_db, speech_db,
                                          noise):
    device = make_device(bits, readout, normalize, top_db, speech_db=speech_db,
                         noise_percentile=noise)
    library, done = check_on_host(device, clips(), tmp_path, bits)
    assert done.returncode == 0
    assert library.layer_bytes > 0 and library.frontend_bytes > 0
    assert library.macs_per_second == library.macs_per_frame * 62.5


@needs_cc
def test_a_feature_quantizer_that_shifts_left_is_bit_exact_on_the_host(tmp_path):
    device = make_device(8, "mean", "utterance", 40.0)
    scale = frontend.value_scale(FeatureConfig(normalize="utterance", top_db=40.0))
    rng = np.random.default_rng(5)
    quantizer = frontend.FeatureQuantizer.fit(rng.normal(0, 0.05, 13), rng.uniform(0.002, 0.2, 13),
                                              2.5, scale)
    assert (quantizer.shift < 0).sum() >= 6  # tiny spreads: left shifts before the multiply
    check_on_host(dataclasses.replace(device, quantizer=quantizer), clips(12), tmp_path, 8)


@needs_cc
@pytest.mark.parametrize("speeds", [(0.9, 1.1), (0.5, 2.0, 0.93)])
def test_speed_votes_on_the_host_are_bit_exact_with_jnp(tmp_path, speeds):
    device = make_device(8, "mean", "utterance", 40.0, vote_speeds=speeds)
    pcm = clips(12)
    library, _ = check_on_host(device, pcm, tmp_path, 8)
    plain = dataclasses.replace(device, vote_steps=())
    assert not np.array_equal(jnp_logits(device, pcm), jnp_logits(plain, pcm))  # votes counted
    # the slowest pass sizes the buffers: a clip of LSTMQ_MAX_SAMPLES fits, one more does not
    assert device.frames_of(device.max_samples(library.max_frames)) <= library.max_frames
    assert device.frames_of(device.max_samples(library.max_frames) + 1) > library.max_frames
    assert library.max_frames >= device.frames_of(max(p.size for p in pcm))
    assert device.max_samples(library.max_frames) >= 3 * 8000  # the default: 3 s in every pass
    passes = sum(65536 / speed_step(v) for v in (1.0, *speeds))  # 1 + 1/0.9 + 1/1.1, ...
    assert library.macs_per_second == pytest.approx(library.macs_per_frame * 62.5 * passes)


@needs_cc
@pytest.mark.parametrize("speeds", [(), (0.9, 1.1)])
def test_preemphasis_on_the_host_is_bit_exact_with_jnp(tmp_path, speeds):
    """Pre-emphasis of the clip as recorded and of every speed-vote pass (full-scale clips
    included, whose emphasised samples reach +-65534)."""
    device = make_device(4, "mean", "utterance", 40.0, noise_percentile=10, noise_keep_db=24.0,
                         vote_speeds=speeds, preemphasis=0.97)
    pcm = clips(12)
    check_on_host(device, pcm, tmp_path, 4)
    plain = make_device(4, "mean", "utterance", 40.0, noise_percentile=10, noise_keep_db=24.0,
                        vote_speeds=speeds)
    assert not np.array_equal(jnp_logits(device, pcm), jnp_logits(plain, pcm))


def test_speed_votes_that_could_overflow_the_int32_sum_are_refused():
    from lstmq.device import DeviceError, check_vote_sum

    device = make_device()
    model = dict(device.model)
    check_vote_sum(model, 3, "model")
    model["readout/bias"] = np.full_like(model["readout/bias"], 2**30)
    check_vote_sum(model, 1, "model")
    with pytest.raises(DeviceError, match="model: 2 speed-vote passes could sum logits"):
        check_vote_sum(model, 2, "model")


@needs_cc
def test_every_int4_weight_value_in_either_nibble_is_decoded_as_jnp_reads_it(tmp_path):
    """The packed int4 kernels hold -8..7 at even and odd positions (low and high nibbles)."""
    device = make_device(bits=4, readout="mean")
    for name, value in device.model.items():
        if name.endswith("kernel"):
            index = np.arange(value.size)
            pattern = (index // 2 * 3 + index % 2 * 5) % 16 - 8  # each value, both nibbles
            device.model[name] = pattern.reshape(value.shape).astype(np.int8)
    recurrent = device.model["lstm_1/cell/recurrent/kernel"].reshape(-1)
    assert all(set(recurrent[parity::2].tolist()) == set(range(-8, 8)) for parity in (0, 1))
    check_on_host(device, clips(8), tmp_path, 4)


@needs_cc
def test_a_changed_golden_logit_is_caught(tmp_path):
    device = make_device()
    pcm = clips(4)
    expected = jnp_logits(device, pcm)
    expected[2, 1] += 1
    write_c_library(device.model, tmp_path, 8, device.classes, device, pcm, expected)
    done = subprocess.run([str(compile_host(tmp_path, CHECK_SOURCES, "check"))],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "clip 2:" in done.stdout and "MISMATCH" in done.stdout
    assert "3 of 4 clips bit-exact" in done.stdout


@needs_cc
def test_any_class_name_compiles_and_prints_as_given(tmp_path):
    names = ("what??!", 'say "hi" \\', "\u00e9t\u00e9", "line\nbreak")  # a trigraph, escapes, UTF-8
    device = dataclasses.replace(make_device(), classes=names)
    pcm = clips(6)
    _, done = check_on_host(device, pcm, tmp_path, 8)
    labels = np.argmax(jnp_logits(device, pcm), axis=-1)
    for index, label in enumerate(labels):
        assert f"clip {index}: {names[label]} bit-exact" in done.stdout


@needs_cc
def test_a_library_written_over_an_older_one_leaves_none_of_its_files(tmp_path):
    device = make_device()
    check_on_host(device, clips(3), tmp_path, 8)
    subprocess.run(["make", "-s", "-C", str(tmp_path), "lstmq_check"], check=False,
                   capture_output=True)
    library = write_c_library(device.model, tmp_path, 8, device.classes, device)  # no golden
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(library.files)
    assert "Makefile" not in library.files


@needs_cc
def test_the_library_holds_no_float_type(tmp_path):
    device = make_device()
    write_c_library(device.model, tmp_path, 8, device.classes, device)
    assert float_words(tmp_path) == []
    runtime = tmp_path / "lstmq_runtime.c"
    runtime.write_text(runtime.read_text() + "\nstatic double lstmq_tainted;\n")
    assert float_words(tmp_path) == ["lstmq_runtime.c: double"]  # the check can fail


@needs_cc
def test_the_engine_equals_predict_int_on_features():
    from lstmq.c_engine import c_engine

    device = make_device(bits=4, readout="mean")
    rng = np.random.default_rng(3)
    features = [rng.integers(-127, 128, (int(n), 13)).astype(np.int8)
                for n in rng.integers(1, 40, 30)] + [np.zeros((0, 13), np.int8)]  # no frame
    engine = c_engine(device.model, 4, device.classes, threads=2)
    try:
        got = engine.features_logits(features)
    finally:
        engine.close()
    width = max(len(f) for f in features)
    x = np.zeros((len(features), width, 13), np.int8)
    for row, f in enumerate(features):
        x[row, :len(f)] = f
    lengths = np.array([len(f) for f in features], np.int32)
    expected = np.asarray(predict_int(device.model, x, lengths))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, predict_int_reference(device.model, x, lengths))


@needs_cc
def test_a_clip_beyond_the_buffers_is_an_error_code(tmp_path):
    from lstmq.c_engine import CEngine

    device = make_device()
    engine = CEngine(device.model, 8, device.classes, device, threads=1)
    try:
        short = engine.pcm_logits([clips(4)[3]])
        assert short.shape == (1, 4)
        with pytest.raises(CExportError, match="error -1"):
            engine.pcm_logits([np.zeros(8000 * 4, np.int16)])  # 4 s, buffers hold 3 s
    finally:
        engine.close()
    assert short.tolist() == jnp_logits(device, [clips(4)[3]]).tolist()


def test_a_library_without_the_front_end_states_its_int8_input_recipe(tmp_path):
    from lstmq.integer import quantize_input

    device = make_device()
    write_c_library(device.model, tmp_path, 8, device.classes)  # a float-front-end run's
    header = (tmp_path / "lstmq_model.h").read_text()
    assert "#define LSTMQ_FRONTEND 0" in header and "LSTMQ_MAX_FRAMES" not in header
    defines = dict(re.findall(r"#define (LSTMQ_INPUT_\w+) (-?\d+)", header))
    multiplier, shift = int(defines["LSTMQ_INPUT_MULTIPLIER"]), int(defines["LSTMQ_INPUT_SHIFT"])
    scale = multiplier * 2.0 ** -(31 + shift)
    x = np.random.default_rng(0).normal(0, 2, (400, 13)).astype(np.float32)
    by_the_header = np.clip(np.round(x / scale), -127, 127)
    np.testing.assert_array_equal(by_the_header, quantize_input(device.model, x))


@needs_cc
def test_a_speed_vote_beyond_the_buffers_leaves_the_callers_logits_as_they_were():
    import ctypes

    from lstmq.c_engine import CEngine

    device = make_device(vote_speeds=(0.9, 1.1))
    engine = CEngine(device.model, 8, device.classes, device, threads=1)
    try:
        max_frames = int(open(engine._folder / "lstmq_model.h").read()
                         .split("#define LSTMQ_MAX_FRAMES ")[1].split()[0])
        n = device.max_samples(max_frames) + 1  # the slowest pass overflows the buffers...
        assert device.frames_of(n) > max_frames
        assert frontend.frame_count(n, device.tables.hop) <= max_frames  # ...the first fits
        pcm = (np.arange(n) % 97 * 300 - 14000).astype(np.int16)
        logits = np.full(4, -12345, np.int32)
        code = engine._libraries[0].lstmq_classify(
            pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)), n,
            logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)))
    finally:
        engine.close()
    assert code == -1
    assert logits.tolist() == [-12345] * 4


@pytest.mark.skipif(bool(missing_tools()) or find_compiler() is None,
                    reason=f"needs {', '.join(missing_tools()) or 'a C compiler'} "
                           "(scripts/install-device-tools.sh)")
def test_cortex_m3_under_qemu_is_bit_exact_and_float_free(tmp_path):
    deploy = load_config("task_b_robust").features  # the front end of the config to deploy
    device = make_device(bits=4, readout="mean", noise_percentile=deploy.noise_percentile,
                         noise_keep_db=deploy.noise_keep_db, vote_speeds=deploy.vote_speeds)
    assert device.vote_steps  # the deploy config's speed votes run on the Cortex-M3 too
    pcm = clips(20)
    library = write_c_library(device.model, tmp_path / "c", 4, device.classes, device, pcm,
                              jnp_logits(device, pcm))
    report = run_on_cortex_m3(library.folder, timeout=300)
    assert (report.clips, report.bit_exact) == (20, 20), report.output[-2000:]
    assert report.soft_float_symbols == ()
    assert report.flash_bytes > library.layer_bytes and report.stack_bytes > 0
    assert report.ram_bytes >= report.bss_bytes > 0


def test_the_integer_side_never_imports_aqt():
    """predict_int, the export, the C generator and the device path run without AQT."""
    code = ("import sys\n"
            "import lstmq.integer, lstmq.export, lstmq.artifact, lstmq.c_export, lstmq.device, "
            "lstmq.frontend, lstmq.inference\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aqt'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@needs_cc
def test_integer_logits_are_the_same_from_either_engine():
    from lstmq.paths import integer_logits
    from lstmq.pipeline import SplitArrays

    device = make_device(bits=8, readout="last", layers=1)
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 30, 40).astype(np.int32)
    x = rng.normal(0, 1.2, (40, 32, 13)).astype(np.float32)
    split = SplitArrays(x, lengths, np.zeros(40, np.int32), np.array([""] * 40),
                        tuple(map(str, range(40))))
    models = [device.model, make_device(bits=8, readout="last", layers=1, seed=1).model]
    by_c = integer_logits(models, split, 8, device.classes, engine="c")
    by_jnp = integer_logits(models, split, 8, device.classes, engine="jnp")
    assert by_c.shape == (2, 40, 4)
    np.testing.assert_array_equal(by_c, by_jnp)


@needs_cc
def test_the_engine_is_built_for_the_default_target_when_the_compiler_refuses_native(monkeypatch):
    import lstmq.c_engine as engine_module

    real, refused = engine_module.compile_host, []

    def no_native(folder, sources, output, extra=()):
        if "-march=native" in extra:
            refused.append(extra)
            raise CExportError("-march=native: unsupported")
        return real(folder, sources, output, extra)

    device = make_device(bits=4, readout="mean")
    features = [np.random.default_rng(n).integers(-127, 128, (n, 13)).astype(np.int8)
                for n in (1, 7, 40)]
    tuned = engine_module.c_engine(device.model, 4, device.classes, threads=1)
    monkeypatch.setattr(engine_module, "compile_host", no_native)
    plain = engine_module.c_engine(device.model, 4, device.classes, threads=1)
    try:
        assert refused and plain.features_logits(features).tolist() == \
            tuned.features_logits(features).tolist()
    finally:
        tuned.close()
        plain.close()

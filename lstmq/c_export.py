"""A self-contained C99 library of a device model: PCM in, logits out, no float anywhere.

``write_c_library`` writes into one folder:

| file | what |
|---|---|
| ``lstmq.h`` | the API: ``lstmq_classify_features``; from PCM ``lstmq_classify``, ``lstmq_features`` |
| ``lstmq_runtime.c`` | front end and LSTM (the same for every model, ``lstmq/c_runtime``) |
| ``lstmq_model.h`` / ``lstmq_model.c`` | sizes, static buffer bounds and every table of this model |
| ``lstmq_golden.c`` + ``lstmq_check.c`` | golden clips with the logits they must give, and a check program |
| ``Makefile`` | ``make check``: build with the system C compiler and run the check |

Compiled with ``-std=c99 -Wall -Wextra -Werror -Wdouble-promotion -Wfloat-conversion``.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from lstmq.artifact import stored_arrays
from lstmq.device import DeviceModel
from lstmq.fixedpoint import SIGMOID_LUT, TANH_LUT
from lstmq.frontend import MAD_FRAC_BITS, NOISE_SPAN, NOISE_STEP_BITS
from lstmq.integer import MEAN_READOUT, layer_names
from lstmq.io import atomic_write_text
from lstmq.speed import STEP_BITS

RUNTIME = Path(__file__).resolve().parent / "c_runtime"
CFLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-Wdouble-promotion", "-Wfloat-conversion",
          "-O2")
LIBRARY_SOURCES = ("lstmq_runtime.c", "lstmq_model.c")
CHECK_SOURCES = (*LIBRARY_SOURCES, "lstmq_golden.c", "lstmq_check.c")
# Everything an export may write into its folder, and what `make check` builds there.
LIBRARY_FILES = frozenset({"lstmq.h", "lstmq_model.h", *CHECK_SOURCES, "Makefile",
                           "lstmq_check"})
_C_TYPE = {np.dtype("int8"): "int8_t", np.dtype("int16"): "int16_t",
           np.dtype("int32"): "int32_t", np.dtype("uint8"): "int8_t",
           np.dtype("uint32"): "uint32_t"}
_FLOAT_WORDS = re.compile(r"\b(float|double|long\s+double|_Complex|__fp16|_Float\d+)\b")


class CExportError(ValueError):
    """The model cannot be written as the C library (or the C build failed)."""


@dataclasses.dataclass(frozen=True)
class CLibrary:
    """What ``write_c_library`` wrote, with the counts a firmware engineer needs."""

    folder: Path
    files: tuple[str, ...]
    max_frames: int
    layer_bytes: int  # the budget's parameter bytes (int4 packed)
    frontend_bytes: int  # front-end tables
    constant_bytes: int  # LUTs, quantizer, layer structs' data beyond the parameters
    macs_per_frame: int
    frames_per_second: float  # frames computed per second of audio, speed votes included

    @property
    def readonly_bytes(self) -> int:
        return self.layer_bytes + self.frontend_bytes + self.constant_bytes

    @property
    def macs_per_second(self) -> float:
        return self.macs_per_frame * self.frames_per_second


def _values(array: np.ndarray) -> list[int]:
    flat = np.asarray(array).reshape(-1)
    if flat.dtype == np.uint8:  # packed int4 bytes, written as the int8 they are in memory
        flat = flat.astype(np.int16)
        flat = np.where(flat > 127, flat - 256, flat)
    return [int(v) for v in flat]


def _array(name: str, array: np.ndarray, comment: str = "") -> str:
    ctype = _C_TYPE[np.asarray(array).dtype]
    items = ["(-2147483647 - 1)" if v == -(2**31) else str(v) for v in _values(array)]
    body = ",\n  ".join(", ".join(items[i:i + 16]) for i in range(0, len(items), 16))
    note = f"/* {comment} */\n" if comment else ""
    return f"{note}const {ctype} {name}[{len(items)}] = {{\n  {body}\n}};\n"


def sparse_mel(mel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, first bin, offsets) of each band's span from its first nonzero bin to its
    last: the filterbank without the zeros around each triangle."""
    nonzero = mel != 0
    start = np.argmax(nonzero, axis=1)
    stop = mel.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    weights = np.concatenate([mel[m, a:b] for m, (a, b) in enumerate(zip(start, stop))])
    offsets = np.concatenate([[0], np.cumsum(stop - start)])
    return weights.astype(np.int16), start.astype(np.int16), offsets.astype(np.int16)


def macs_per_frame(model: dict, device: DeviceModel | None = None) -> int:
    """Multiply-accumulates of one frame: window, FFT, magnitudes, mel, DCT (with the front
    end), then every LSTM layer's matmuls and gate products."""
    frontend = 0
    if device is not None:
        t = device.tables
        half = t.n_fft // 2
        fft = (half // 2) * int(np.log2(half)) * 4 + (half + 1) * 4
        mel = int(np.count_nonzero(t.mel))
        frontend = t.n_fft + fft + 2 * t.bins + mel + t.n_mfcc * t.n_mels + t.n_mfcc
    lstm = 0
    for name in layer_names(model):
        inputs, gates = np.shape(model[f"{name}/input/kernel"])
        hidden = gates // 4
        lstm += (inputs + hidden) * gates + 6 * hidden
    return frontend + lstm


def _model_header(m: dict, device: DeviceModel | None, max_frames: int, weight_bits: int) -> str:
    layers = layer_names(m)
    hidden = np.shape(m["readout/kernel"])[0]
    lines = [
        "/* lstmq_model.h: sizes and tables of one model (generated by lstmq export). */",
        "#ifndef LSTMQ_MODEL_H_", "#define LSTMQ_MODEL_H_", "", "#include <stdint.h>", "",
        f"#define LSTMQ_FRONTEND {int(device is not None)}  /* 1: PCM in (integer front end) */",
        f"#define LSTMQ_N_MFCC {np.shape(m['lstm_0/input/kernel'])[0]}  /* features per frame */"]
    if device is not None:
        t = device.tables
        lines += [
            f"#define LSTMQ_SAMPLE_RATE {t.sample_rate}",
            f"#define LSTMQ_N_FFT {t.n_fft}", f"#define LSTMQ_HOP {t.hop}",
            f"#define LSTMQ_N_MELS {t.n_mels}",
            f"#define LSTMQ_MAX_FRAMES {max_frames}  /* static buffers hold this many frames */",
            f"#define LSTMQ_MAX_SAMPLES {device.max_samples(max_frames)}"
            "  /* the longest clip every pass fits */",
            f"#define LSTMQ_VOTES {len(device.vote_steps)}"
            "  /* speed votes: passes after the one at speed 1 */",
            f"#define LSTMQ_KEEP_FRAMES {device.keep_frames or 0}  /* 0: the model reads every frame */",
            f"#define LSTMQ_MIN_SAMPLES {device.min_samples}",
            f"#define LSTMQ_FLOOR {-1 if t.floor is None else t.floor}  /* Q10 log2; -1: no floor */",
            f"#define LSTMQ_UTTERANCE {int(t.utterance)}",
            f"#define LSTMQ_SPEECH {-1 if t.speech is None else t.speech}"
            "  /* Q10 log2; -1: utterance statistics over every frame */",
            f"#define LSTMQ_NOISE_PERCENTILE "
            f"{-1 if t.noise_percentile is None else t.noise_percentile}"
            "  /* each band's noise estimate; -1: no noise subtraction */",
            f"#define LSTMQ_NOISE_STEP_BITS {NOISE_STEP_BITS}",
            f"#define LSTMQ_NOISE_SPAN {NOISE_SPAN}",
            f"#define LSTMQ_MAD_FRAC_BITS {MAD_FRAC_BITS}",
            f"#define LSTMQ_PREEMPHASIS {t.preemphasis}  /* Q15; 0: no pre-emphasis */",
            f"#define LSTMQ_DCT_FRAC_BITS {t.dct_frac_bits}"]
    else:
        lines += [
            "/* No front end: the host computes each clip's features as lstmq's float front end",
            " * does (front_end.features in the artifact manifest, min_frames and max_frames",
            " * included), normalises them (front_end.normalizer), then quantizes every value x",
            " * to q = clip(round(x / scale), -127, 127), rounding half to even, where",
            " * scale = LSTMQ_INPUT_MULTIPLIER * 2^-(31 + LSTMQ_INPUT_SHIFT). */",
            f"#define LSTMQ_INPUT_MULTIPLIER {int(m['input_quant/multiplier'])}",
            f"#define LSTMQ_INPUT_SHIFT {int(m['input_quant/shift'])}",
            "#define LSTMQ_UTTERANCE 0"]
    lines += [
        f"#define LSTMQ_LAYERS {len(layers)}", f"#define LSTMQ_HIDDEN {hidden}",
        f"#define LSTMQ_NUM_CLASSES {np.shape(m['readout/kernel'])[1]}",
        f"#define LSTMQ_WEIGHT_BITS {weight_bits}",
        f"#define LSTMQ_READOUT_MEAN {int(MEAN_READOUT in m)}", "",
        "struct lstmq_layer {",
        "  const int8_t *input_kernel;  /* [inputs][4 * hidden], gates i, f, g, o */",
        "  const int32_t *input_bias;",
        "  const int32_t *input_multiplier;",
        "  const int8_t *input_shift;",
        "  const int8_t *recurrent_kernel;  /* [hidden][4 * hidden] */",
        "  const int32_t *recurrent_multiplier;",
        "  const int8_t *recurrent_shift;",
        "};", "",
        "extern const struct lstmq_layer LSTMQ_LAYER[LSTMQ_LAYERS];",
        "extern const int8_t LSTMQ_READOUT_KERNEL[];", "extern const int32_t LSTMQ_READOUT_BIAS[];",
        "extern const int16_t LSTMQ_SIGMOID_LUT[257];", "extern const int16_t LSTMQ_TANH_LUT[257];",
        "extern const char *const LSTMQ_CLASS_NAMES[LSTMQ_NUM_CLASSES];"]
    if device is not None:
        lines += [
        "extern const int16_t LSTMQ_WINDOW[LSTMQ_N_FFT];",
        "extern const int16_t LSTMQ_FFT_TWIDDLE_RE[];", "extern const int16_t LSTMQ_FFT_TWIDDLE_IM[];",
        "extern const int32_t LSTMQ_BIT_REVERSAL[];",
        "extern const int16_t LSTMQ_SPLIT_TWIDDLE_RE[];", "extern const int16_t LSTMQ_SPLIT_TWIDDLE_IM[];",
        "extern const int16_t LSTMQ_MEL_WEIGHTS[];",
        "extern const int16_t LSTMQ_MEL_START[LSTMQ_N_MELS];",
        "extern const int16_t LSTMQ_MEL_OFFSET[LSTMQ_N_MELS + 1];",
        "extern const int32_t LSTMQ_LOG2_TABLE[257];", "extern const int16_t LSTMQ_DCT[];",
        *(["extern const int16_t LSTMQ_NOISE_GAIN[];"] if device.tables.noise_gain is not None
          else []),
        *(["extern const uint32_t LSTMQ_VOTE_STEPS[LSTMQ_VOTES];  /* Q16 */"]
          if device.vote_steps else []),
        "extern const int32_t LSTMQ_FEATURE_OFFSET[LSTMQ_N_MFCC];",
        "extern const int32_t LSTMQ_FEATURE_MULTIPLIER[LSTMQ_N_MFCC];",
        "extern const int8_t LSTMQ_FEATURE_SHIFT[LSTMQ_N_MFCC];"]
    lines += ["", "#endif /* LSTMQ_MODEL_H_ */", ""]
    return "\n".join(lines)


def c_string(text: str) -> str:
    """A C99 string literal of ``text``'s UTF-8 bytes: printable ASCII as is (``"``, ``\\``
    and ``?``, which could start a trigraph, escaped), every other byte as a 3-digit octal
    escape (octal, unlike hex, cannot swallow the characters after it)."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\?':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _model_source(m: dict, classes: tuple[str, ...], device: DeviceModel | None,
                  weight_bits: int) -> str:
    stored = stored_arrays(m, weight_bits)
    parts = ["/* lstmq_model.c: the tables of one model (generated by lstmq export). */",
             '#include "lstmq_model.h"', ""]
    layers = layer_names(m)
    for name in layers:
        ident = name.upper()
        for tensor, suffix in (("input/kernel", "INPUT_KERNEL"), ("input/bias", "INPUT_BIAS"),
                               ("input/requant_multiplier", "INPUT_MULTIPLIER"),
                               ("input/requant_shift", "INPUT_SHIFT"),
                               ("cell/recurrent/kernel", "RECURRENT_KERNEL"),
                               ("cell/recurrent/requant_multiplier", "RECURRENT_MULTIPLIER"),
                               ("cell/recurrent/requant_shift", "RECURRENT_SHIFT")):
            parts.append("static " + _array(f"LSTMQ_{ident}_{suffix}", stored[f"{name}/{tensor}"],
                                            f"{name}/{tensor}"))
    parts.append("const struct lstmq_layer LSTMQ_LAYER[LSTMQ_LAYERS] = {")
    for name in layers:
        ident = name.upper()
        parts.append(f"  {{LSTMQ_{ident}_INPUT_KERNEL, LSTMQ_{ident}_INPUT_BIAS, "
                     f"LSTMQ_{ident}_INPUT_MULTIPLIER, LSTMQ_{ident}_INPUT_SHIFT, "
                     f"LSTMQ_{ident}_RECURRENT_KERNEL, LSTMQ_{ident}_RECURRENT_MULTIPLIER, "
                     f"LSTMQ_{ident}_RECURRENT_SHIFT}},")
    parts += ["};", ""]
    tables = [("LSTMQ_READOUT_KERNEL", stored["readout/kernel"], "readout/kernel"),
              ("LSTMQ_READOUT_BIAS", stored["readout/bias"], "readout/bias"),
              ("LSTMQ_SIGMOID_LUT", np.asarray(SIGMOID_LUT), "sigmoid, Q3.12 in, Q0.15 out"),
              ("LSTMQ_TANH_LUT", np.asarray(TANH_LUT), "tanh, Q3.12 in, Q0.15 out")]
    if device is not None:
        tables += _frontend_tables(device)
    for name, array, comment in tables:
        parts.append(_array(name, np.asarray(array), comment))
    names = ", ".join(c_string(c) for c in classes)
    parts.append(f"const char *const LSTMQ_CLASS_NAMES[LSTMQ_NUM_CLASSES] = {{{names}}};\n")
    return "\n".join(parts)


def _frontend_tables(device: DeviceModel) -> list[tuple[str, np.ndarray, str]]:
    t, quantizer = device.tables, device.quantizer
    weights, start, offsets = sparse_mel(t.mel)
    return [("LSTMQ_WINDOW", t.window, "Hann window, Q15, centred in the FFT"),
            ("LSTMQ_FFT_TWIDDLE_RE", t.fft_twiddles[0], "W_{N/2}^j, Q15"),
            ("LSTMQ_FFT_TWIDDLE_IM", t.fft_twiddles[1], ""),
            ("LSTMQ_BIT_REVERSAL", t.bit_reversal, ""),
            ("LSTMQ_SPLIT_TWIDDLE_RE", t.split_twiddles[0], "W_N^k, Q15"),
            ("LSTMQ_SPLIT_TWIDDLE_IM", t.split_twiddles[1], ""),
            ("LSTMQ_MEL_WEIGHTS", weights, f"mel filterbank, Q{t.mel_frac_bits}: each band's "
             "weights from its first nonzero bin to its last"),
            ("LSTMQ_MEL_START", start, "first nonzero bin of each band"),
            ("LSTMQ_MEL_OFFSET", offsets, "where each band's weights start in LSTMQ_MEL_WEIGHTS"),
            ("LSTMQ_LOG2_TABLE", t.log_table, "round(2^15 log2(1 + i / 256))"),
            ("LSTMQ_DCT", t.dct, f"DCT-II (orthonormal), Q{t.dct_frac_bits}"),
            ("LSTMQ_FEATURE_OFFSET", quantizer.offset, "int8 features: requantize(v - offset)"),
            ("LSTMQ_FEATURE_MULTIPLIER", quantizer.multiplier, ""),
            ("LSTMQ_FEATURE_SHIFT", quantizer.shift, "")] + (
        [] if t.noise_gain is None else
        [("LSTMQ_NOISE_GAIN", t.noise_gain, "Q10 log2 max(1 - 2^-d, 10^(-keep_db / 20)), d = i / 16")]) + (
        [("LSTMQ_VOTE_STEPS", np.array(device.vote_steps, np.uint32),
          "speed votes: input samples per output sample, Q16")] if device.vote_steps else [])


GOLDEN_CHECK = r"""
/* Runs every golden clip, hands each result to `report`; returns the mismatches. */
int32_t lstmq_golden_check(void (*report)(int32_t clip, int32_t label, const int32_t *logits,
                                          int32_t same)) {
  int32_t clip, c, mismatches = 0, logits[LSTMQ_NUM_CLASSES];
  for (clip = 0; clip < LSTMQ_GOLDEN_COUNT; clip++) {
    int32_t start = LSTMQ_GOLDEN_OFFSETS[clip];
    int32_t label = lstmq_classify(&LSTMQ_GOLDEN_PCM[start], LSTMQ_GOLDEN_OFFSETS[clip + 1] - start,
                                   logits);
    int32_t same = label >= 0;
    for (c = 0; c < LSTMQ_NUM_CLASSES; c++) {
      same = same && logits[c] == LSTMQ_GOLDEN_LOGITS[clip * LSTMQ_NUM_CLASSES + c];
    }
    mismatches += !same;
    report(clip, label, logits, same);
  }
  return mismatches;
}
"""


def _golden_source(clips: list[np.ndarray], logits: np.ndarray) -> str:
    offsets = np.cumsum([0] + [c.size for c in clips]).astype(np.int32)
    return "\n".join([
        "/* lstmq_golden.c: clips, the logits the model must give for them, and the check that"
        " compares them (generated). */",
        '#include "lstmq.h"', "",
        f"const int32_t LSTMQ_GOLDEN_COUNT = {len(clips)};",
        _array("LSTMQ_GOLDEN_OFFSETS", offsets),
        _array("LSTMQ_GOLDEN_PCM", np.concatenate(clips).astype(np.int16)),
        _array("LSTMQ_GOLDEN_LOGITS", np.asarray(logits, np.int32)), GOLDEN_CHECK])


CHECK_PROGRAM = r"""/* lstmq_check.c: the golden check on the host (generated). */
#include <stdio.h>

#include "lstmq.h"

extern const int32_t LSTMQ_GOLDEN_COUNT;
int32_t lstmq_golden_check(void (*report)(int32_t, int32_t, const int32_t *, int32_t));

static void print(int32_t clip, int32_t label, const int32_t *logits, int32_t same) {
  (void)logits;
  printf("clip %ld: %s %s\n", (long)clip, label >= 0 ? LSTMQ_CLASS_NAMES[label] : "error",
         same ? "bit-exact" : "MISMATCH");
}

int main(void) {
  int32_t mismatches = lstmq_golden_check(print);
  printf("lstmq check: %ld of %ld clips bit-exact\n", (long)(LSTMQ_GOLDEN_COUNT - mismatches),
         (long)LSTMQ_GOLDEN_COUNT);
  return mismatches == 0 ? 0 : 1;
}
"""

MAKEFILE = """# Builds the library's check with the system C compiler and runs it: make check
CC ?= cc
CFLAGS ?= {cflags}

lstmq_check: {sources} lstmq.h lstmq_model.h
\t$(CC) $(CFLAGS) -o $@ {sources}

check: lstmq_check
\t./lstmq_check

.PHONY: check
"""


def write_c_library(model: dict, folder: str | Path, weight_bits: int,
                    classes: tuple[str, ...], device: DeviceModel | None = None,
                    golden_clips: list[np.ndarray] | None = None,
                    golden_logits: np.ndarray | None = None,
                    max_frames: int | None = None) -> CLibrary:
    """Writes the C library of an integer model into ``folder``: with ``device`` (a model
    trained with the integer front end) the PCM-to-label runtime, else the LSTM on int8
    features only. Golden clips (int16 PCM, with ``device``) and their logits go into the
    check program.

    ``max_frames`` sizes the static buffers (default: the golden clips' longest, at least
    3 s of audio).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CExportError(f"{folder}: exists and is not a folder")
    clips = [np.asarray(c, np.int16) for c in (golden_clips or [])]
    if clips and device is None:
        raise CExportError("golden PCM clips need the integer front end (a device model)")
    frontend_bytes, frames_per_second = 0, 0.0
    if device is not None and sum(len(a) for a in sparse_mel(device.tables.mel)) >= 2**15:
        raise CExportError("the mel filterbank has too many weights for int16 offsets")
    if device is not None:
        t = device.tables
        longest = max([device.frames_of(c.size) for c in clips] or [1])
        if max_frames is None:  # 3 s of audio, in every pass (speed votes play it longer)
            max_frames = max(longest, int(np.ceil(3.0 * t.sample_rate / t.hop)) + 1,
                             device.frames_of(int(3.0 * t.sample_rate)))
        if longest > max_frames:
            raise CExportError(f"a golden clip needs {longest} frames, over max_frames={max_frames}")
        if max_frames > 4096:
            raise CExportError(f"max_frames {max_frames} exceeds the front end's 4096")
        frontend_bytes = sum(np.asarray(a).nbytes for _, a, _ in _frontend_tables(device))
        # frames computed per second of audio, over every pass (a pass at speed v: 1 / v)
        passes = sum((1 << STEP_BITS) / step for step in device.steps)
        frames_per_second = t.sample_rate / t.hop * passes
    files = {"lstmq.h": (RUNTIME / "lstmq.h").read_text(),
             "lstmq_runtime.c": (RUNTIME / "lstmq_runtime.c").read_text(),
             "lstmq_model.h": _model_header(model, device, max_frames or 0, weight_bits),
             "lstmq_model.c": _model_source(model, classes, device, weight_bits)}
    if clips:
        files.update({"lstmq_golden.c": _golden_source(clips, golden_logits),
                      "lstmq_check.c": CHECK_PROGRAM,
                      "Makefile": MAKEFILE.format(cflags=" ".join(CFLAGS),
                                                  sources=" ".join(CHECK_SOURCES))})
    for name in LIBRARY_FILES - set(files):  # an earlier export's, not this library's
        (folder / name).unlink(missing_ok=True)
    for name, text in files.items():
        atomic_write_text(folder / name, text)
    layer_bytes = sum(a.nbytes for a in stored_arrays(model, weight_bits).values())
    constants = 2 * 257 * 2  # the sigmoid and tanh tables (front end: in its tables)
    return CLibrary(folder, tuple(sorted(files)), max_frames or 0, layer_bytes, frontend_bytes,
                    constants, macs_per_frame(model, device), frames_per_second)


def find_compiler() -> str | None:
    """The system C compiler (``$CC``, cc, gcc or clang), or None."""
    import os  # pylint: disable=import-outside-toplevel

    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def compile_host(folder: Path, sources: tuple[str, ...], output: str,
                 extra: tuple[str, ...] = ()) -> Path:
    """Builds ``sources`` of a C library folder with the system compiler and the strict flags.

    Raises:
      CExportError: no compiler, or the build failed (with its messages).
    """
    compiler = find_compiler()
    if compiler is None:
        raise CExportError("no C compiler found (set $CC)")
    target = folder / output
    command = [compiler, *CFLAGS, *extra, "-o", str(target), *[str(folder / s) for s in sources]]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CExportError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return target


def float_words(folder: Path) -> list[str]:
    """Float types in the preprocessed library sources (must be none)."""
    compiler = find_compiler()
    if compiler is None:
        raise CExportError("no C compiler found (set $CC)")
    found = []
    ours = {str((folder / name).resolve()) for name in (*LIBRARY_SOURCES, "lstmq.h",
                                                        "lstmq_model.h")}
    for source in LIBRARY_SOURCES:
        done = subprocess.run([compiler, "-std=c99", "-E", str(folder / source)],
                              capture_output=True, text=True, check=True)
        current = None
        for line in done.stdout.splitlines():
            marker = re.match(r'^# \d+ "([^"]+)"', line)
            if marker:  # which file the following lines come from
                current = str(Path(marker.group(1)).resolve()) if not marker.group(1).startswith("<") else None
                continue
            if current in ours:
                found += [f"{Path(current).name}: {m.group(0)}" for m in _FLOAT_WORDS.finditer(line)]
    return found

"""The C runtime's kernels one call at a time against the NumPy references, at the edges of
their domains (tests/c/kernels_harness.c), built with the undefined-behaviour sanitizer where
the compiler has one: the golden clips of tests/test_c_runtime.py reach few of these edges."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lstmq import dsp
from lstmq import fixedpoint as fx
from lstmq import fixedpoint_reference as ref
from lstmq.c_export import compile_host, find_compiler, write_c_library
from test_c_runtime import make_device, sanitizer_flags

HARNESS = Path(__file__).parent / "c" / "kernels_harness.c"
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
EDGES32 = [INT32_MIN, INT32_MIN + 1, -(2**30) - 1, -(2**30), -(2**16), -(2**15) - 1, -(2**15),
           -3, -2, -1, 0, 1, 2, 3, 2**15 - 1, 2**15, 2**16, 2**30 - 1, 2**30, 2**31 - 2**15,
           INT32_MAX - 1, INT32_MAX]
EDGES16 = [-32768, -32767, -256, -255, -1, 0, 1, 255, 256, 32767]
MULTIPLIERS = [0, 2**30, 2**30 + 1, 2**31 - 128, INT32_MAX]


def edge_cases() -> list[tuple[str, int, int, int, int]]:
    """(kernel, a, b, c, the reference's result) at every kernel's edges."""
    draws = np.random.default_rng(0).integers(INT32_MIN, INT32_MAX, 40, endpoint=True).tolist()
    values = EDGES32 + draws
    cases = []
    for x, s in itertools.product(values, [*range(34), 40]):
        cases.append(("rsr", x, s, 0, int(ref.rounding_shift_right_ref(x, s))))
        cases.append(("left", x, s, 0, int(ref.saturating_left_shift_ref(x, s))))
    for x, s in itertools.product(EDGES32, [-1, -31]):  # as jnp's array shifts: the identity
        cases.append(("rsr", x, s, 0, int(fx.rounding_shift_right(np.int32(x), np.int32([s]))[0])))
    for a, m in itertools.product(EDGES32, EDGES32):
        cases.append(("highmul", a, m, 0, int(ref.rounding_high_mul_ref(a, m))))
    for a, m, s in itertools.product(values, MULTIPLIERS, range(-31, 32)):
        cases.append(("requant", a, m, s, int(ref.requantize_ref(a, m, s))))
    for x, d in itertools.product(values, [1, 2, 3, 7, 143, 2**16, 2**30 - 1]):
        cases.append(("divide", x, d, 0, int(ref.rounding_divide_ref(x, d))))
    zs = [z for z in range(-(2**15), 2**15) if z % 61 == 0 or abs(z) >= 32700 or abs(z) < 260]
    for kernel, table in (("sigmoid", fx.SIGMOID_LUT), ("tanh", fx.TANH_LUT)):
        cases += [(kernel, z, 0, 0, int(ref.lut_lookup_ref(z, table))) for z in zs]
    for a, b, s in itertools.product(EDGES16, EDGES16, [0, 1, 15, 19, 23, 31]):
        cases.append(("mulshift", a, b, s, int(ref.fixed_mul_shift_ref(a, b, s))))
    for a, b in itertools.product(EDGES32, EDGES32):
        cases.append(("sub", a, b, 0, int(ref.saturating_sub_ref(a, b))))
    for p in [0, 1, 2, 3, 4, 2**30 - 1, 2**30, 46340**2 - 1, 46340**2, INT32_MAX,
              *[abs(v) for v in draws if v != INT32_MIN]]:
        cases.append(("isqrt", p, 0, 0, int(dsp.isqrt_ref(np.array([p]))[0])))
    for e in [INT32_MIN, -1, 0, 1, 2, 3, 255, 256, 257, 2**30, INT32_MAX, *draws]:
        cases.append(("log2", e, 0, 0, int(dsp.log2_q10_ref(np.array([e]))[0])))
    for p in [0, 1, 2, 2**13 - 1, 2**13, 2**14 - 1, 2**14, 2**15 - 1, 2**15, 65534, 65535]:
        cases.append(("blockshift", p, 0, 0, int(dsp.block_shift_ref(np.array([p]))[0])))
    for v, s in itertools.product([-65535, -32768, -3, -1, 0, 1, 3, 32767, 65535],
                                  range(dsp.MIN_SHIFT, dsp.MAX_SHIFT + 1)):
        if abs(v) * 2 ** max(s, 0) < 2**31:  # the front end's range: |v| < 2^16, peak < 2^15
            cases.append(("applyshift", v, s, 0, int(dsp.apply_shift_ref(np.array([v]), s)[0])))
    return cases


@pytest.mark.skipif(find_compiler() is None,
                    reason="no C compiler (cc, gcc, clang or $CC) on this machine")
def test_every_c_kernel_equals_its_numpy_reference_at_the_edges(tmp_path):
    device = make_device(readout="mean")  # the utterance statistics and mean readout too
    write_c_library(device.model, tmp_path, 8, device.classes, device)
    shutil.copy(HARNESS, tmp_path / HARNESS.name)
    program = compile_host(tmp_path, (HARNESS.name, "lstmq_model.c"), "kernels",
                           sanitizer_flags())
    cases = edge_cases()
    done = subprocess.run([str(program)], input="".join(f"{k} {a} {b} {c}\n"
                                                        for k, a, b, c, _ in cases),
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]  # a sanitizer report ends the program
    got = [int(v) for v in done.stdout.split()]
    assert len(got) == len(cases)
    wrong = [(case, value) for case, value in zip(cases, got) if case[4] != value]
    assert not wrong, wrong[:10]
    assert {case[0] for case in cases} == {"rsr", "left", "highmul", "requant", "divide",
                                           "sigmoid", "tanh", "mulshift", "sub", "isqrt", "log2",
                                           "blockshift", "applyshift"}

"""The float-free audit: clean integer programs pass, planted floats are found and named."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmq import fixedpoint as fp
from lstmq.audit import DEFAULT_ALLOWED_DTYPES, AuditReport, FloatFoundError, audit_float_free

X = jnp.arange(32, dtype=jnp.int32).reshape(4, 8)


@pytest.fixture(autouse=True, scope="module")
def strict_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield


def halve_in_float(v):
    """The planted float: an int32 -> float32 -> int32 round trip."""
    return (v.astype(jnp.float32) * jnp.float32(0.5)).astype(jnp.int32)


def audit_error(fn, *args) -> str:
    with pytest.raises(FloatFoundError) as info:
        audit_float_free(fn, *args)
    return str(info.value)


def test_pure_integer_function_passes():
    def fn(x):
        y = jax.lax.scan(lambda c, v: (c + v, c * v), x[0], x)[1]
        return jax.lax.cond(x[0, 0] > 0, lambda v: v >> 1, lambda v: v & 3, y).astype(jnp.int8)

    report = audit_float_free(fn, X)
    assert isinstance(report, AuditReport)
    assert report.primitive_counts["scan"] == 1 and report.primitive_counts["cond"] == 1
    assert report.primitive_counts["add"] >= 1 and report.num_equations > 5
    assert report.dtypes <= {"int8", "int32", "bool"} and report.max_depth == 1


def test_top_level_float():
    msg = audit_error(lambda x: halve_in_float(x) + x, X)
    assert "convert_element_type (result): float32[4,8]" in msg
    assert "mul (literal operand): float32[]" in msg or "mul (operand): float32[]" in msg


def test_float_in_scan_body():
    msg = audit_error(lambda x: jax.lax.scan(lambda c, v: (c + halve_in_float(v), None), x[0], x)[0], X)
    assert "scan > mul (result): float32[8]" in msg


def test_float_in_cond_branch():
    msg = audit_error(lambda x: jax.lax.cond(x[0, 0] > 0, lambda v: v, halve_in_float, x), X)
    assert "cond.branches[0] > mul (result): float32[4,8]" in msg  # branches[0] is the false branch
    assert "branches[1]" not in msg


def test_float_in_while_body():
    def fn(x):
        return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (halve_in_float(c[0]), c[1] + 1), (x, 0))[0]

    assert "while.body_jaxpr > mul (result): float32[4,8]" in audit_error(fn, X)


def test_float_in_nested_jit():
    inner = jax.jit(halve_in_float)
    msg = audit_error(lambda x: jax.lax.scan(lambda c, v: (c + inner(v), None), x[0], x)[0], X)
    assert "scan > jit(halve_in_float) > mul (result): float32[8]" in msg


def test_float_in_custom_jvp_and_custom_vjp():
    @jax.custom_jvp
    def f(x):
        return halve_in_float(x)

    f.defjvp(lambda primals, tangents: (f(primals[0]), tangents[0]))
    assert "custom_jvp_call > mul (result): float32[4,8]" in audit_error(f, X)

    @jax.custom_vjp
    def g(x):
        return halve_in_float(x)

    g.defvjp(lambda x: (g(x), None), lambda _, ct: (ct,))
    assert "custom_vjp_call > mul (result): float32[4,8]" in audit_error(g, X)


def test_float_in_remat():
    assert "remat2 > mul (result): float32[4,8]" in audit_error(jax.checkpoint(halve_in_float), X)


def test_float_constant_and_inputs():
    table = jnp.linspace(0.0, 1.0, 8, dtype=jnp.float32)
    assert "constant: float32[8]" in audit_error(lambda x: x + table.astype(jnp.int32), X)
    assert "argument [0]: float32[4,8]" in audit_error(lambda x: x, X.astype(jnp.float32))
    assert "argument [0]: int64[3]" in audit_error(lambda x: x, np.arange(3, dtype=np.int64))
    assert "argument [0]: float64[]" in audit_error(lambda x: x, 1.5)


def test_error_type_and_allowed_dtypes():
    with pytest.raises(ValueError):
        audit_float_free(halve_in_float, X)
    with pytest.raises(AssertionError):
        audit_float_free(halve_in_float, X)
    assert audit_float_free(halve_in_float, X, allowed_dtypes=DEFAULT_ALLOWED_DTYPES | {np.float32})
    with pytest.raises(FloatFoundError, match="int32"):
        audit_float_free(lambda x: x + 1, X, allowed_dtypes={"int8", "bool"})


def test_many_violations_are_truncated():
    err = audit_error(lambda x: sum(halve_in_float(x + i) for i in range(10)), X)
    assert "more" in err and err.count("\n") <= 12


# The integer kernels themselves are float-free, eagerly traced and under jit.
I32 = jnp.zeros(16, jnp.int32)
I16 = jnp.zeros(16, jnp.int16)
KERNELS = {
    "rounding_high_mul": (fp.rounding_high_mul, I32, I32),
    "rounding_shift_right": (fp.rounding_shift_right, I32, I32),
    "requantize_per_channel": (fp.requantize, I32, jnp.full(16, 2**30, jnp.int32), jnp.arange(-8, 8, dtype=jnp.int32)),
    "requantize_static": (lambda a: fp.requantize(a, 1_518_500_250, 7), I32),
    "lut_lookup": (fp.lut_lookup, I16, jnp.asarray(fp.TANH_LUT)),
    "sigmoid_q15": (fp.sigmoid_q15, I16),
    "tanh_q15": (fp.tanh_q15, I16),
    "fixed_mul_shift": (lambda a, b: fp.fixed_mul_shift(a, b, 15), I16, I16),
    "saturating_add16": (fp.saturating_add16, I16, I16),
    "int_matmul": (fp.int_matmul, jnp.zeros((2, 13), jnp.int8), jnp.zeros((13, 32), jnp.int8)),
}


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_integer_kernels_are_float_free(name, jit):
    fn, *args = KERNELS[name]
    report = audit_float_free(jax.jit(fn) if jit else fn, *args)
    assert report.dtypes <= {"int8", "int16", "int32", "bool"}
    assert report.max_depth >= int(jit)

"""Float-free audit: proves from the jaxpr that a function computes on integers only.

``audit_float_free(fn, *args)`` traces ``fn`` with ``jax.make_jaxpr`` and checks the dtype
of every value the program touches: the arguments, constants, every equation's inputs
(variables and literals) and outputs, recursively through every sub-jaxpr held in an
equation's params (``scan``, ``while``, ``cond`` branches, nested ``jit``, ``custom_jvp_call``,
``custom_vjp_call``, ``remat`` ... found generically, not by primitive name). Rules that are
not traced into the forward program (a custom JVP/VJP rule) are not audited.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.extend import core

DEFAULT_ALLOWED_DTYPES: frozenset[np.dtype] = frozenset(np.dtype(d) for d in ("int8", "int16", "int32", "bool"))
_MAX_LISTED = 10


class FloatFoundError(ValueError, AssertionError):
    """A value with a disallowed dtype (float, int64, unsigned ...) was found.

    Attributes:
      violations: one ``"path > primitive: dtype[shape] (role)"`` line per offending value.
    """

    def __init__(self, violations: list[str]):
        self.violations = violations
        listed = "\n  ".join(violations[:_MAX_LISTED])
        more = f"\n  ... and {len(violations) - _MAX_LISTED} more" if len(violations) > _MAX_LISTED else ""
        super().__init__(f"float-free audit failed, {len(violations)} disallowed value(s):\n  {listed}{more}")


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """What a clean program contains.

    Attributes:
      primitive_counts: equations per primitive name, nested jaxprs included.
      dtypes: names of every dtype seen.
      max_depth: deepest nesting of sub-jaxprs (0: flat program).
    """

    primitive_counts: dict[str, int]
    dtypes: frozenset[str]
    max_depth: int

    @property
    def num_equations(self) -> int:
        return sum(self.primitive_counts.values())


def _format(aval: Any) -> str:
    return f"{aval.dtype}[{','.join(str(d) for d in aval.shape)}]"


def _sub_jaxprs(eqn: core.JaxprEqn) -> Iterator[tuple[str, core.Jaxpr]]:
    """Yields (path element, jaxpr) for every Jaxpr/ClosedJaxpr-valued param of ``eqn``."""
    name = eqn.primitive.name
    if isinstance(eqn.params.get("name"), str):
        name = f"{name}({eqn.params['name']})"
    found = []
    for key, value in eqn.params.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        for i, item in enumerate(items):
            if isinstance(item, (core.Jaxpr, core.ClosedJaxpr)):
                found.append((key, i if isinstance(value, (list, tuple)) else None, item))
    for key, index, item in found:
        label = name if len(found) == 1 else f"{name}.{key}" + ("" if index is None else f"[{index}]")
        yield label, item.jaxpr if isinstance(item, core.ClosedJaxpr) else item


class _Walker:
    def __init__(self, allowed: frozenset[np.dtype]):
        self.allowed = allowed
        self.violations: list[str] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.dtypes: set[str] = set()
        self.max_depth = 0

    def check(self, aval: Any, where: str) -> None:
        dtype = getattr(aval, "dtype", None)
        if dtype is None:  # effect tokens carry no data
            return
        self.dtypes.add(str(dtype))
        if dtype not in self.allowed:
            self.violations.append(f"{where}: {_format(aval)}")

    def walk(self, jaxpr: core.Jaxpr, path: tuple[str, ...]) -> None:
        self.max_depth = max(self.max_depth, len(path))
        prefix = " > ".join(path)
        at = f"{prefix} > " if path else ""
        for var in jaxpr.constvars:
            self.check(var.aval, f"{at}constant")
        for var in jaxpr.invars:
            self.check(var.aval, f"{prefix or 'program'} input")
        for eqn in jaxpr.eqns:
            prim = eqn.primitive.name
            self.counts[prim] += 1
            for var in eqn.invars:
                kind = "literal operand" if isinstance(var, core.Literal) else "operand"
                self.check(var.aval, f"{at}{prim} ({kind})")
            for var in eqn.outvars:
                self.check(var.aval, f"{at}{prim} (result)")
            for label, sub in _sub_jaxprs(eqn):
                self.walk(sub, path + (label,))
        for var in jaxpr.outvars:
            self.check(var.aval, f"{prefix or 'program'} output")


def _check_args(args: tuple[Any, ...], walker: _Walker) -> None:
    """Checks the raw arguments: catches e.g. int64/float64 NumPy inputs before x64 canonicalisation."""
    for keypath, leaf in jax.tree_util.tree_leaves_with_path(args):
        if isinstance(leaf, (bool, int)):
            continue  # Python ints become weakly typed int32 (jax raises if they do not fit)
        dtype = getattr(leaf, "dtype", None)
        dtype = np.dtype(type(leaf)) if dtype is None else dtype
        shape = getattr(leaf, "shape", ())
        walker.dtypes.add(str(dtype))
        if dtype not in walker.allowed:
            walker.violations.append(f"argument {jax.tree_util.keystr(keypath)}: {dtype}[{','.join(map(str, shape))}]")


def audit_float_free(
    fn: Callable[..., Any],
    *example_args: Any,
    allowed_dtypes: frozenset[np.dtype] | set[Any] = DEFAULT_ALLOWED_DTYPES,
    **kwargs: Any,
) -> AuditReport:
    """Traces ``fn(*example_args, **kwargs)`` and checks that no value has a disallowed dtype.

    Args:
      fn: the function to audit (jitted or not).
      *example_args: arguments to trace with (arrays or ``jax.ShapeDtypeStruct``); they are
        traced as inputs, so their dtypes are audited too.
      allowed_dtypes: dtypes every value must have (default int8, int16, int32, bool).
      **kwargs: bound to ``fn`` statically (``functools.partial``), e.g. Python-int shifts.

    Returns:
      An ``AuditReport`` of the clean program.

    Raises:
      FloatFoundError: listing each offending value as
        ``"scan > jit(f) > mul (result): float32[4,8]"``.
    """
    allowed = frozenset(np.dtype(d) for d in allowed_dtypes)
    walker = _Walker(allowed)
    _check_args(example_args, walker)
    closed = jax.make_jaxpr(functools.partial(fn, **kwargs))(*example_args)
    walker.walk(closed.jaxpr, ())
    if walker.violations:
        raise FloatFoundError(walker.violations)
    return AuditReport(dict(walker.counts), frozenset(walker.dtypes), walker.max_depth)

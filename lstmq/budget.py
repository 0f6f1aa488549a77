"""Byte accounting of LSTM classifiers at a storage precision, and a hidden-size solver.

Bytes are counted from a real Flax param tree (``count_bytes``), and from the shapes the
model would have (``model_bytes``) through the same code path, so the two agree by
construction and a test holds the shapes to the built model. What each tensor costs is set
by the tables below; the integer export is to store exactly these tensors (names, shapes,
dtypes of ``ByteReport.rows``), so an artifact's size (``count_artifact_bytes``) can be
checked against the report.

Storage per role (``weight_bits`` 32 is a float model; 16, 8, 4 an integer one):

| role       | float32 model | integer model                                  |
|------------|---------------|------------------------------------------------|
| weight     | float32       | int16 / int8 / int4 (two per byte, per tensor rounded up) |
| bias       | float32       | int32 (at the accumulator scale)               |
| multiplier | not stored    | int32, requantization multiplier               |
| shift      | not stored    | int8, requantization shift                     |

Layouts (which parameters a layer has):
  lstmq: the Flax model, ``z = x W_x + b + h W_h``, one bias per gate.
  pytorch: ``nn.LSTM``, ``z = x W_ih^T + b_ih + h W_hh^T + b_hh``, two bias vectors per
    layer; the second is counted as ``cell/recurrent/bias``, stored like the first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lstmq.config import BudgetConfig, ModelConfig, QuantConfig

SUPPORTED_BITS = (32, 16, 8, 4)
LAYOUTS = ("lstmq", "pytorch")
POLICIES = ("total", "per-layer")

# role -> (dtype in a float model, dtype in an integer model); None: not stored,
# "weight": the precision's weight dtype.
STORAGE = {
    "weight": ("float32", "weight"),
    "bias": ("float32", "int32"),
    "multiplier": (None, "int32"),
    "shift": (None, "int8"),
}
DTYPE_BITS = {"float32": 32, "int32": 32, "int16": 16, "int8": 8, "int4": 4}

# Tensors of each group: (name inside the group, role, derivation, layouts).
# derivation None: a leaf of the Flax param tree. ("channels", k): one per output channel
# of kernel k. ("like", t): same shape as tensor t. ("scalar",): a single value.
_BOTH = LAYOUTS
_RECURRENT = "cell/recurrent/kernel"
LSTM_TENSORS = (
    ("input/kernel", "weight", None, _BOTH),  # [F_in, 4h], per-channel scale
    ("input/bias", "bias", None, _BOTH),  # [4h]
    ("input/requant_multiplier", "multiplier", ("channels", "input/kernel"), _BOTH),
    ("input/requant_shift", "shift", ("channels", "input/kernel"), _BOTH),
    ("cell/recurrent/kernel", "weight", None, _BOTH),  # [h, 4h], per-channel scale
    ("cell/recurrent/bias", "bias", ("like", "input/bias"), ("pytorch",)),  # b_hh
    ("cell/recurrent/requant_multiplier", "multiplier", ("channels", _RECURRENT), _BOTH),
    ("cell/recurrent/requant_shift", "shift", ("channels", _RECURRENT), _BOTH),
)
# One per-tensor scale, and logits are compared by argmax at that common scale: no requant.
READOUT_TENSORS = (
    ("kernel", "weight", None, _BOTH),  # [h, C]
    ("bias", "bias", None, _BOTH),  # [C]
)
# The input boundary rescales features to int8 (lstm_0's input scale).
INPUT_QUANT_TENSORS = (
    ("multiplier", "multiplier", ("scalar",), _BOTH),
    ("shift", "shift", ("scalar",), _BOTH),
)
INPUT_QUANT = "input_quant"
READOUT = "readout"
_LSTM_GROUP = re.compile(r"lstm_(\d+)")


class BudgetError(ValueError):
    """No hidden size fits the byte budget."""


@dataclasses.dataclass(frozen=True)
class Precision:
    """Storage precision of the weights: 32 is float32 throughout, below that integers."""

    weight_bits: int = 8

    def __post_init__(self):
        if isinstance(self.weight_bits, bool) or self.weight_bits not in SUPPORTED_BITS:
            raise ValueError(
                f"weight_bits must be one of {SUPPORTED_BITS}, got {self.weight_bits!r}")

    @property
    def is_float(self) -> bool:
        return self.weight_bits == 32

    @property
    def name(self) -> str:
        return "float32" if self.is_float else f"int{self.weight_bits}"

    def dtype(self, role: str) -> str | None:
        """Storage dtype of a tensor of ``role``; None when it is not stored at all."""
        dtype = STORAGE[role][0 if self.is_float else 1]
        return self.name if dtype == "weight" else dtype


def storage_nbytes(dtype: str, count: int) -> int:
    """Bytes of ``count`` values of ``dtype``; int4 packs two per byte, rounded up."""
    return -(-count * DTYPE_BITS[dtype] // 8)


@dataclasses.dataclass(frozen=True)
class TensorBytes:
    """One stored tensor: ``param`` says whether it is a model parameter (else a constant)."""

    name: str
    group: str
    shape: tuple[int, ...]
    dtype: str
    count: int
    bytes: int
    param: bool


@dataclasses.dataclass(frozen=True)
class ByteReport:
    """Per-tensor bytes of a model, grouped by layer (input_quant, lstm_i, readout)."""

    rows: tuple[TensorBytes, ...]
    precision: Precision
    layout: str

    @property
    def total(self) -> int:
        return sum(row.bytes for row in self.rows)

    @property
    def params(self) -> int:
        return sum(row.count for row in self.rows if row.param)

    @property
    def groups(self) -> dict[str, int]:
        """Bytes per group, in model order."""
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.group] = out.get(row.group, 0) + row.bytes
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout, "weight_bits": self.precision.weight_bits,
            "precision": self.precision.name, "total": self.total, "params": self.params,
            "groups": self.groups,
            "tensors": [dict(dataclasses.asdict(r), shape=list(r.shape)) for r in self.rows],
        }


def _as_precision(precision: Precision | int) -> Precision:
    return precision if isinstance(precision, Precision) else Precision(precision)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, tuple[int, ...]]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            shape = value if isinstance(value, tuple) else np.shape(value)
            out[f"{prefix}{key}"] = tuple(int(d) for d in shape)
    return out


def _group_rows(group: str, leaves: dict[str, tuple[int, ...]], table, precision, layout):
    rows, shapes = [], {}
    known = {name for name, _, _, layouts in table if layout in layouts}
    extra = sorted(set(leaves) - known)
    if extra:
        raise ValueError(f"{group}: tensor(s) {extra} are not part of the {layout} layout")
    for name, role, derive, layouts in table:
        if layout not in layouts:
            continue
        if name in leaves:
            shape = leaves[name]
        elif derive is None:
            raise ValueError(f"{group}: parameter {name!r} missing from the param tree")
        elif derive[0] == "channels":
            shape = (shapes[derive[1]][-1],)
        elif derive[0] == "like":
            shape = shapes[derive[1]]
        else:
            shape = ()
        shapes[name] = shape
        dtype = precision.dtype(role)
        if dtype is not None:
            count = math.prod(shape)
            rows.append(TensorBytes(f"{group}/{name}", group, shape, dtype, count,
                                    storage_nbytes(dtype, count), role in ("weight", "bias")))
    return rows


def count_params(params: Mapping) -> int:
    """Number of scalars in a Flax param tree (``{'params': ...}`` or its contents)."""
    params = params.get("params", params)
    return sum(math.prod(shape) for shape in _flatten(params).values())


def count_bytes(params: Mapping, precision: Precision | int, layout: str = "lstmq") -> ByteReport:
    """Stored bytes of a real param tree at ``precision``, plus the constants it implies.

    Args:
      params: ``{'params': {...}}`` from ``LSTMClassifier.init`` or its ``'params'`` entry;
        leaves are arrays or anything with a ``shape``.
      precision: a ``Precision`` or its weight bits.
      layout: "lstmq" or "pytorch" (adds each layer's second bias, shaped like the first).

    Raises:
      ValueError: on an unknown group or tensor, or a missing parameter.
    """
    precision = _as_precision(precision)
    _check_choice("layout", layout, LAYOUTS)
    params = params.get("params", params)
    lstm, readout = [], None
    for group in params:
        match = _LSTM_GROUP.fullmatch(group)
        if match:
            lstm.append((int(match.group(1)), group))
        elif group == READOUT:
            readout = group
        else:
            raise ValueError(f"unknown param group {group!r} (expected lstm_<i> and readout)")
    if not lstm or readout is None:
        raise ValueError(f"a classifier needs lstm_<i> groups and a readout, got {sorted(params)}")
    rows = _group_rows(INPUT_QUANT, {}, INPUT_QUANT_TENSORS, precision, layout)
    for _, group in sorted(lstm):
        rows += _group_rows(group, _flatten(params[group]), LSTM_TENSORS, precision, layout)
    rows += _group_rows(readout, _flatten(params[readout]), READOUT_TENSORS, precision, layout)
    return ByteReport(tuple(rows), precision, layout)


def count_artifact_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes of an exported artifact's arrays (4-bit tensors are stored packed)."""
    return sum(np.asarray(array).nbytes for array in arrays.values())


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def param_shapes(hidden: int, layers: int, input_size: int, num_classes: int) -> dict:
    """The shapes of ``LSTMClassifier(hidden, layers, num_classes).init`` params (lstmq layout)."""
    tree: dict[str, Any] = {}
    for index in range(layers):
        fan_in = input_size if index == 0 else hidden
        tree[f"lstm_{index}"] = {
            "input": {"kernel": (fan_in, 4 * hidden), "bias": (4 * hidden,)},
            "cell": {"recurrent": {"kernel": (hidden, 4 * hidden)}},
        }
    tree[READOUT] = {"kernel": (hidden, num_classes), "bias": (num_classes,)}
    return tree


def model_bytes(hidden: int, layers: int, input_size: int, num_classes: int,
                precision: Precision | int, layout: str = "lstmq") -> ByteReport:
    """``count_bytes`` of the model these sizes describe, without building it."""
    for name, value in (("hidden", hidden), ("layers", layers), ("input_size", input_size),
                        ("num_classes", num_classes)):
        _positive_int(name, value)
    return count_bytes(param_shapes(hidden, layers, input_size, num_classes), precision, layout)


def used_bytes(report: ByteReport, policy: str) -> int:
    """Bytes the policy holds to the budget: the total, or the largest group's."""
    _check_choice("policy", policy, POLICIES)
    return report.total if policy == "total" else max(report.groups.values())


@dataclasses.dataclass(frozen=True)
class Solution:
    """The largest hidden size within the budget; headroom is budget minus used bytes."""

    hidden: int
    report: ByteReport
    budget: int
    policy: str
    layout: str
    headroom: int

    def to_dict(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "budget": self.budget, "policy": self.policy,
                "layout": self.layout, "headroom": self.headroom, "report": self.report.to_dict()}


def solve_hidden_size(budget_bytes: int, layers: int, input_size: int = 13, num_classes: int = 10,
                      precision: Precision | int = Precision(8), policy: str = "total",
                      layout: str = "lstmq") -> Solution:
    """Largest hidden size whose bytes fit the budget.

    Policy "total" holds everything (input_quant, all layers, readout) to ``budget_bytes``;
    "per-layer" holds each group (each LSTM layer, the readout, the input constants) to it
    separately. Bytes never decrease as ``hidden`` grows, so doubling then bisection finds
    the exact boundary.

    Raises:
      BudgetError: even ``hidden=1`` does not fit; the message gives the bytes it needs.
      ValueError: a size is not a positive integer, fewer than 2 classes, or bits/policy/layout
        are unsupported.
    """
    budget_bytes = _positive_int("budget_bytes", budget_bytes)
    if _positive_int("num_classes", num_classes) < 2:
        raise BudgetError(f"num_classes must be at least 2 (a classifier needs 2 classes; "
                          f"training refuses fewer), got {num_classes}")
    precision = _as_precision(precision)
    _check_choice("policy", policy, POLICIES)

    def used(hidden: int) -> int:
        return used_bytes(model_bytes(hidden, layers, input_size, num_classes, precision, layout),
                          policy)

    need = used(1)
    if need > budget_bytes:
        raise BudgetError(
            f"a budget of {budget_bytes:,} bytes cannot hold even hidden=1 ({layers} layer(s), "
            f"{input_size} inputs, {num_classes} classes, {precision.name}, {layout} layout, "
            f"{policy} policy): needs at least {need:,} bytes")
    fits, fails = 1, 2
    while used(fails) <= budget_bytes:
        fits, fails = fails, 2 * fails
    while fails - fits > 1:
        mid = (fits + fails) // 2
        fits, fails = (mid, fails) if used(mid) <= budget_bytes else (fits, mid)
    report = model_bytes(fits, layers, input_size, num_classes, precision, layout)
    return Solution(fits, report, budget_bytes, policy, layout,
                    budget_bytes - used_bytes(report, policy))


def hidden_from_config(model_cfg: ModelConfig, budget_cfg: BudgetConfig, weight_bits: int,
                       input_size: int, num_classes: int) -> int:
    """``model_cfg.hidden`` if it is a number, else the size solved from ``budget_cfg`` for
    weights stored at ``weight_bits`` (``quant.weight_bits``, the one source of the width).

    ``num_classes`` is the data's class count. A derived value: callers record it with the
    run's outputs, never in the config.
    """
    if model_cfg.hidden != "auto":
        return _positive_int("model.hidden", model_cfg.hidden)
    return solve_hidden_size(budget_cfg.bytes, model_cfg.layers, input_size, num_classes,
                             Precision(weight_bits), budget_cfg.policy,
                             budget_cfg.layout).hidden


def format_report(report: ByteReport) -> str:
    """A table of tensors with shape, dtype, count and bytes; group subtotals and total."""
    header = ("tensor", "shape", "dtype", "count", "bytes")
    lines: list[tuple[str, ...]] = []
    groups = report.groups
    for index, row in enumerate(report.rows):
        lines.append((row.name, "x".join(map(str, row.shape)) or "scalar", row.dtype,
                      f"{row.count:,}", f"{row.bytes:,}"))
        if index + 1 == len(report.rows) or report.rows[index + 1].group != row.group:
            lines.append((f"  {row.group} subtotal", "", "", "", f"{groups[row.group]:,}"))
    lines.append((f"total ({report.params:,} params, {report.precision.name}, {report.layout})",
                  "", "", "", f"{report.total:,}"))
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def render(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(render(header))
    return "\n".join([render(header), rule, *map(render, lines[:-1]), rule, render(lines[-1])])


def add_budget_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``lstmq budget``; defaults are those of BudgetConfig and ModelConfig."""
    budget, model = BudgetConfig(), ModelConfig()  # defaults shown in --help
    parser.add_argument("--bytes", type=int, default=budget.bytes,
                        help=f"byte budget (default {budget.bytes})")
    parser.add_argument("--layers", type=int, default=model.layers, help="LSTM layers")
    parser.add_argument("--bits", type=int, choices=SUPPORTED_BITS, default=QuantConfig.weight_bits,
                        help="weight storage bits; 32 is a float32 model")
    parser.add_argument("--policy", choices=POLICIES, default=budget.policy,
                        help="total: everything within the budget; per-layer: each layer")
    parser.add_argument("--layout", choices=LAYOUTS, default=budget.layout,
                        help="lstmq: one bias per gate; pytorch: nn.LSTM's two")
    parser.add_argument("--input-size", type=int, default=13, help="features per frame")
    parser.add_argument("--classes", type=int, default=10, help="output classes")
    parser.add_argument("--json", action="store_true", help="print the solution as JSON")
    return parser


def run_budget(args: argparse.Namespace) -> int:
    """Solve and print; 2 (message on stderr) when the budget or a flag is impossible."""
    try:
        solution = solve_hidden_size(args.bytes, args.layers, args.input_size, args.classes,
                                     Precision(args.bits), args.policy, args.layout)
    except ValueError as error:
        message = str(error)
        for name, flag in (("budget_bytes", "--bytes"), ("num_classes", "--classes"),
                           ("input_size", "--input-size"), ("layers", "--layers")):
            message = message.replace(f"{name} must", f"{flag} must", 1)
        print(f"lstmq budget: error: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(solution.to_dict(), indent=2))
        return 0
    report = solution.report
    print(f"hidden size {solution.hidden}: {used_bytes(report, solution.policy):,} of "
          f"{solution.budget:,} bytes ({solution.policy} policy), {solution.headroom:,} headroom")
    print(f"{args.layers} layer(s), {args.input_size} inputs, {args.classes} classes, "
          f"{report.precision.name} weights, {solution.layout} layout\n")
    print(format_report(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``lstmq budget``: the largest hidden size within a byte budget, with its breakdown."""
    parser = argparse.ArgumentParser(prog="lstmq budget", description=main.__doc__)
    return run_budget(add_budget_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

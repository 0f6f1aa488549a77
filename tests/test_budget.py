"""Byte accounting against the real Flax param tree, independent formulas and brute force."""

from __future__ import annotations

import functools
import json
import math
import random

import numpy as np
import pytest

from lstmq import budget
from lstmq.budget import BudgetError, Precision
from lstmq.config import BudgetConfig, ModelConfig

BITS = (32, 16, 8, 4)
LAYOUTS = ("lstmq", "pytorch")


@functools.lru_cache(maxsize=None)
def built_params(hidden, layers, input_size, num_classes):
    import jax
    import jax.numpy as jnp

    from lstmq.model import LSTMClassifier

    model = LSTMClassifier(hidden=hidden, layers=layers, num_classes=num_classes)
    x = jnp.zeros((1, 2, input_size), jnp.float32)
    return model.init(jax.random.key(0), x, jnp.array([2], jnp.int32))


def formula_groups(h, layers, f, c, bits, layout):
    """Bytes per group written out by hand from docs/numerics.md, independently of the tables."""
    biases = 2 if layout == "pytorch" else 1
    groups = {}
    if bits == 32:
        for i in range(layers):
            fan_in = f if i == 0 else h
            groups[f"lstm_{i}"] = 4 * (4 * h * fan_in + 4 * h * h + biases * 4 * h)
        groups["readout"] = 4 * (h * c + c)
        return groups
    weights = lambda n: math.ceil(n * bits / 8)  # noqa: E731
    groups["input_quant"] = 4 + 1
    for i in range(layers):
        fan_in = f if i == 0 else h
        # kernels + int32 biases + (int32 multiplier + int8 shift) per channel, for W_x and W_h
        groups[f"lstm_{i}"] = (weights(4 * h * fan_in) + weights(4 * h * h)
                               + 4 * biases * 4 * h + 2 * 5 * 4 * h)
    groups["readout"] = weights(h * c) + 4 * c
    return groups


def used(report, policy):
    return report.total if policy == "total" else max(report.groups.values())


def test_reference_study_parity_float32_pytorch():
    solution = budget.solve_hidden_size(36864, 2, 13, 10, Precision(32), "total", "pytorch")
    assert solution.hidden == 24
    assert solution.report.params == 8794 == 12 * 24**2 + 78 * 24 + 10
    assert solution.report.total == 35176
    assert solution.headroom == 36864 - 35176
    # 12h^2 + 78h + 10 parameters at 4 bytes, for every h
    for h in range(1, 200):
        report = budget.model_bytes(h, 2, 13, 10, 32, "pytorch")
        assert report.params == 12 * h * h + 78 * h + 10
        assert report.total == 4 * report.params


def test_lstmq_layout_float32_at_24_and_its_own_solution():
    report = budget.model_bytes(24, 2, 13, 10, 32, "lstmq")
    assert report.params == 8602 == budget.count_params(built_params(24, 2, 13, 10))
    assert report.total == 34408
    expected = max(h for h in range(1, 2000)
                   if 4 * (12 * h * h + 70 * h + 10) <= 36864)  # lstmq: 12h^2 + 70h + 10
    assert budget.solve_hidden_size(36864, 2, 13, 10, 32, "total", "lstmq").hidden == expected


@pytest.mark.parametrize("sizes", [(1, 1, 1, 1), (3, 1, 13, 10), (5, 2, 13, 10),
                                   (7, 3, 4, 3), (2, 2, 20, 2)])
def test_count_bytes_of_built_model_equals_model_bytes(sizes):
    params = built_params(*sizes)
    for bits in BITS:
        for layout in LAYOUTS:
            real = budget.count_bytes(params, Precision(bits), layout)
            analytic = budget.model_bytes(*sizes, Precision(bits), layout)
            assert real.to_dict() == analytic.to_dict()
            assert real.groups == formula_groups(*sizes, bits, layout)
    assert budget.model_bytes(*sizes, 32).params == budget.count_params(params)
    assert budget.count_params(params["params"]) == budget.count_params(params)


def test_model_bytes_matches_hand_formula_across_sizes():
    rng = random.Random(1)
    for _ in range(300):
        h, layers = rng.randint(1, 300), rng.randint(1, 4)
        f, c = rng.randint(1, 40), rng.randint(1, 20)
        bits, layout = rng.choice(BITS), rng.choice(LAYOUTS)
        report = budget.model_bytes(h, layers, f, c, bits, layout)
        groups = formula_groups(h, layers, f, c, bits, layout)
        assert report.groups == groups
        assert report.total == sum(groups.values())


def test_bytes_never_decrease_with_hidden():
    for bits in BITS:
        for layout in LAYOUTS:
            totals = [budget.model_bytes(h, 2, 13, 9, bits, layout) for h in range(1, 120)]
            for policy in budget.POLICIES:
                values = [used(report, policy) for report in totals]
                assert values == sorted(values)


def test_solver_matches_brute_force():
    rng = random.Random(0)
    checked = 0
    for _ in range(36):
        budget_bytes = int(math.exp(rng.uniform(math.log(150), math.log(300_000))))
        layers, f, c = rng.randint(1, 3), rng.randint(1, 40), rng.randint(2, 12)
        bits, policy, layout = rng.choice(BITS), rng.choice(budget.POLICIES), rng.choice(LAYOUTS)
        fits = [h for h in range(1, 2000)
                if used(budget.model_bytes(h, layers, f, c, bits, layout), policy) <= budget_bytes]
        if not fits:
            with pytest.raises(BudgetError):
                budget.solve_hidden_size(budget_bytes, layers, f, c, bits, policy, layout)
            continue
        assert max(fits) < 1999, "widen the brute-force range"
        solution = budget.solve_hidden_size(budget_bytes, layers, f, c, bits, policy, layout)
        assert solution.hidden == max(fits)
        assert solution.headroom == budget_bytes - used(solution.report, policy) >= 0
        checked += 1
    assert checked >= 25


def test_per_layer_policy_holds_each_group_not_the_sum():
    total = budget.solve_hidden_size(36864, 2, 13, 10, 8, "total")
    per_layer = budget.solve_hidden_size(36864, 2, 13, 10, 8, "per-layer")
    assert per_layer.hidden > total.hidden
    assert max(per_layer.report.groups.values()) <= 36864 < per_layer.report.total
    assert total.report.total <= 36864
    bigger = budget.model_bytes(per_layer.hidden + 1, 2, 13, 10, 8)
    assert max(bigger.groups.values()) > 36864
    # one layer: the layer dominates, readout is a separate group, so per-layer >= total
    one_total = budget.solve_hidden_size(5000, 1, 13, 10, 8, "total")
    one_layer = budget.solve_hidden_size(5000, 1, 13, 10, 8, "per-layer")
    assert one_layer.hidden >= one_total.hidden


def test_infeasible_budget_names_minimum_bytes():
    need = budget.model_bytes(1, 2, 13, 10, 8).total
    with pytest.raises(BudgetError, match=f"at least {need:,} bytes"):
        budget.solve_hidden_size(need - 1, 2, 13, 10, 8)
    assert budget.solve_hidden_size(need, 2, 13, 10, 8).hidden == 1
    assert issubclass(BudgetError, ValueError)
    per_group = max(budget.model_bytes(1, 2, 13, 10, 8).groups.values())
    with pytest.raises(BudgetError, match=f"at least {per_group:,} bytes"):
        budget.solve_hidden_size(per_group - 1, 2, 13, 10, 8, policy="per-layer")


def test_four_bit_packing_rounds_each_tensor_up():
    report = budget.model_bytes(3, 1, 13, 5, 4)
    rows = {row.name: row for row in report.rows}
    assert rows["readout/kernel"].count == 15 and rows["readout/kernel"].bytes == 8
    assert rows["lstm_0/input/kernel"].bytes == 13 * 12 // 2
    assert rows["readout/bias"].dtype == "int32" and rows["readout/bias"].bytes == 20
    assert budget.storage_nbytes("int4", 1) == 1
    assert budget.storage_nbytes("int4", 7) == 4


def test_integer_constants_and_float_model_have_no_scales():
    int8 = {row.name: row for row in budget.model_bytes(4, 2, 13, 10, 8).rows}
    assert int8["input_quant/multiplier"].dtype == "int32"
    assert int8["input_quant/shift"].dtype == "int8"
    for layer in ("lstm_0/input", "lstm_1/cell/recurrent"):
        assert int8[f"{layer}/requant_multiplier"].shape == (16,)
        assert int8[f"{layer}/requant_shift"].dtype == "int8"
        assert not int8[f"{layer}/requant_shift"].param
    assert not any(name.startswith("readout/requant") for name in int8)
    float32 = budget.model_bytes(4, 2, 13, 10, 32)
    assert {row.dtype for row in float32.rows} == {"float32"}
    assert "input_quant" not in float32.groups


def test_pytorch_layout_adds_second_bias_to_real_tree():
    params = built_params(5, 2, 13, 10)
    lstmq = budget.count_bytes(params, 8, "lstmq")
    pytorch = budget.count_bytes(params, 8, "pytorch")
    assert pytorch.total - lstmq.total == 2 * 4 * (4 * 5)
    assert pytorch.params - lstmq.params == 2 * 4 * 5
    assert "lstm_1/cell/recurrent/bias" in {row.name for row in pytorch.rows}


def test_count_bytes_rejects_foreign_trees():
    params = built_params(2, 1, 3, 2)["params"]
    with pytest.raises(ValueError, match="not part of the lstmq layout"):
        budget.count_bytes({**params, "lstm_0": {**params["lstm_0"], "extra": np.zeros(3)}}, 8)
    with pytest.raises(ValueError, match="unknown param group"):
        budget.count_bytes({**params, "conv": {"kernel": np.zeros(3)}}, 8)
    with pytest.raises(ValueError, match="missing"):
        budget.count_bytes({**params, "readout": {"kernel": np.zeros((2, 2))}}, 8)


@pytest.mark.parametrize("bits", BITS)
def test_artifact_bytes_of_tables_dtypes_match_report(bits):
    report = budget.model_bytes(5, 2, 13, 7, bits)
    arrays = {}
    for row in report.rows:  # what an exporter writes: int4 packed two per uint8
        if row.dtype == "int4":
            arrays[row.name] = np.zeros((row.count + 1) // 2, np.uint8)
        else:
            arrays[row.name] = np.zeros(row.shape, np.dtype(row.dtype))
    assert budget.count_artifact_bytes(arrays) == report.total


@pytest.mark.parametrize("call", [
    lambda: Precision(12),
    lambda: Precision(True),
    lambda: budget.solve_hidden_size(0, 2),
    lambda: budget.solve_hidden_size(1000, 0),
    lambda: budget.solve_hidden_size(1000, 2, input_size=-1),
    lambda: budget.solve_hidden_size(1000, 2, num_classes=2.5),
    lambda: budget.solve_hidden_size(True, 2),
    lambda: budget.solve_hidden_size(1000, 2, policy="max"),
    lambda: budget.solve_hidden_size(1000, 2, layout="keras"),
    lambda: budget.model_bytes(0, 1, 1, 1, 8),
])
def test_invalid_inputs_raise_clear_errors(call):
    with pytest.raises(ValueError, match="must be"):
        call()


def test_report_formats_and_serialises():
    report = budget.model_bytes(24, 2, 13, 10, 8)
    text = budget.format_report(report)
    for group, size in report.groups.items():
        assert f"{group} subtotal" in text and f"{size:,}" in text
    assert f"{report.total:,}" in text.splitlines()[-1]
    assert "lstm_1/cell/recurrent/requant_multiplier" in text
    data = json.loads(json.dumps(budget.solve_hidden_size(36864, 2).to_dict()))
    assert data["report"]["total"] == sum(t["bytes"] for t in data["report"]["tensors"])
    assert data["report"]["tensors"][0]["shape"] == []


def test_cli_prints_solution_and_breakdown(capsys):
    assert budget.main(["--bytes", "36864", "--layers", "2", "--bits", "32",
                        "--layout", "pytorch"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hidden size 24: 35,176 of 36,864 bytes")
    assert "lstm_0 subtotal" in out and "readout/kernel" in out
    assert budget.main(["--bytes", "36864", "--bits", "8", "--policy", "per-layer", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["hidden"] == budget.solve_hidden_size(36864, 2, 13, 10, 8, "per-layer").hidden


def test_cli_impossible_budget_exits_2_without_traceback(capsys):
    assert budget.main(["--bytes", "100", "--layers", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "at least" in captured.err and "Traceback" not in captured.err
    assert budget.main(["--bytes", "1000", "--layers", "0"]) == 2
    assert "--layers must be a positive integer" in capsys.readouterr().err
    assert budget.main(["--bytes", "0"]) == 2  # named by its flag, not the argument's name
    assert "--bytes must be a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error
        budget.main(["--bits", "7"])
    assert exit_info.value.code == 2


def test_hidden_from_config_is_derived_not_written_back():
    fixed = ModelConfig(hidden=32)
    assert budget.hidden_from_config(fixed, BudgetConfig(), 8, 13, 10) == 32
    auto = ModelConfig(hidden="auto", layers=2)
    cfg = BudgetConfig(bytes=36864, policy="per-layer", layout="lstmq")
    expected = budget.solve_hidden_size(36864, 2, 13, 10, 4, "per-layer", "lstmq").hidden
    assert budget.hidden_from_config(auto, cfg, 4, 13, 10) == expected
    # the class count is the data's: 3 classes leave room for a larger hidden size
    three = budget.solve_hidden_size(36864, 2, 13, 3, 4, "per-layer", "lstmq").hidden
    assert budget.hidden_from_config(auto, cfg, 4, 13, 3) == three >= expected
    assert auto.hidden == "auto"
    with pytest.raises(BudgetError):
        budget.hidden_from_config(auto, BudgetConfig(bytes=64), 8, 13, 10)


def test_fewer_than_two_classes_are_refused_as_training_refuses_them(capsys):
    with pytest.raises(BudgetError, match="num_classes must be at least 2"):
        budget.solve_hidden_size(36864, 2, 13, 1)
    assert budget.main(["--classes", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--classes must be at least 2" in captured.err
    assert captured.err.strip().endswith("got 1") and "Traceback" not in captured.err
    assert budget.main(["--classes", "2"]) == 0

"""The C++/FFI recurrence (lstmq.ffi_recurrence) against the XLA one (lstmq.recurrence).

Tolerances: values rtol = atol = 1e-5 (they lie in [-1, 1]); gradients rtol 1e-4 and atol
1e-5 times the largest gradient magnitude (the kernel gradient sums T*B products, and the
two paths add in different orders). Exact equality where both paths copy: held states and
zero gradients at invalid steps.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmq import ffi_recurrence
from lstmq.recurrence import lstm_recurrence

pytestmark = pytest.mark.skipif(not ffi_recurrence.available(),
                                reason=f"native LSTM kernel unavailable: "
                                       f"{ffi_recurrence.unavailable_reason()}")

VALUE_TOL = dict(rtol=1e-5, atol=1e-5)
native = ffi_recurrence.lstm_recurrence_native


def mask(time: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """<bool>[T, B]: clips cycle through never valid, always valid, ending early, and random
    mid-clip gaps (a single clip: gaps)."""
    valid = np.ones((time, batch), bool)
    for clip in range(batch):
        kind = clip % 4 if batch > 1 else 3
        if kind == 0:
            valid[:, clip] = False
        elif kind == 2:
            valid[rng.integers(0, time + 1):, clip] = False
        elif kind == 3:
            valid[:, clip] = rng.random(time) < 0.6
    return valid


def make_inputs(time: int, batch: int, hidden: int, seed: int = 0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    z_input = 1.5 * jax.random.normal(keys[0], (time, batch, 4 * hidden), jnp.float32)
    kernel = jax.random.normal(keys[1], (hidden, 4 * hidden), jnp.float32) / np.sqrt(hidden)
    weights = jax.random.normal(keys[2], (time, batch, hidden), jnp.float32)  # cotangents
    return z_input, kernel, jnp.asarray(mask(time, batch, np.random.default_rng(seed))), weights


def weighted_loss(fn):
    return lambda z_input, kernel, valid, weights: jnp.sum(fn(z_input, kernel, valid) * weights)


@functools.cache
def _outputs_and_grads(fn):
    def loss(z_input, kernel, valid, weights):
        outputs = fn(z_input, kernel, valid)
        return jnp.sum(outputs * weights), outputs

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def outputs_and_grads(fn, *args):
    """(outputs, (d z_input, d kernel)) in one compiled call (one compile per shape)."""
    (_, outputs), grad = _outputs_and_grads(fn)(*args)
    return outputs, grad


def assert_grads_close(got, want):
    for g, w in zip(got, want):
        scale = max(1.0, float(jnp.abs(w).max()))
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * scale)


SHAPES = [  # (time, batch, hidden): every H of 1, 5, 24, 48, 67, 128, B of 1, 3, 32, T of 1, 7, 40;
    # B of 37 and 64: several chunks of rows (16 each), the last one partial
    (1, 1, 1), (7, 3, 5), (40, 32, 24), (7, 32, 48), (40, 32, 67), (7, 1, 128), (40, 32, 128),
    (9, 37, 24), (12, 64, 48),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T%d-B%d-H%d" % s)
def test_values_and_gradients_match_xla(shape):
    args = make_inputs(*shape, seed=sum(shape))
    got, got_grads = outputs_and_grads(native, *args)
    want, want_grads = outputs_and_grads(lstm_recurrence, *args)
    assert got.shape == shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, **VALUE_TOL)
    assert_grads_close(got_grads, want_grads)
    np.testing.assert_array_equal(np.asarray(got_grads[0])[~np.asarray(args[2])], 0.0)


_ONE_CPU_CHILD = """
import os, sys
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # before jax starts its pool
import numpy as np
sys.path.insert(0, "tests")
from test_ffi_recurrence import chunked_results
np.savez(sys.argv[1], *chunked_results())
"""


def chunked_results() -> list[np.ndarray]:
    """Outputs and gradients of the float and QAT kernels on 53 rows (four chunks)."""
    z_input, kernel, valid, weights = make_inputs(20, 53, 24, seed=11)
    float_out, float_grads = outputs_and_grads(native, z_input, kernel, valid, weights)
    qat = lambda z, w, v: ffi_recurrence.lstm_qat_recurrence_native(z, w, w, v)  # noqa: E731
    qat_out, qat_grads = outputs_and_grads(qat, z_input, kernel, valid, weights)
    return [np.asarray(a) for a in (float_out, *float_grads, qat_out, *qat_grads)]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity control and at least two CPUs")
def test_results_do_not_depend_on_the_thread_count(tmp_path):
    """The chunks of rows run on XLA's thread pool; a process pinned to one CPU (a pool of
    one) gives bit-identical values and gradients."""
    path = tmp_path / "one_cpu.npz"
    subprocess.run([sys.executable, "-c", _ONE_CPU_CHILD, str(path)], check=True,
                   capture_output=True, env=os.environ.copy(), cwd=Path(__file__).parents[1])
    one_cpu = np.load(path)
    for index, array in enumerate(chunked_results()):
        np.testing.assert_array_equal(array, one_cpu[f"arr_{index}"])


def test_invalid_steps_hold_the_state_and_ignore_their_inputs():
    z_input, kernel, valid, weights = make_inputs(12, 8, 5, seed=3)
    outputs = np.asarray(jax.jit(native)(z_input, kernel, valid))
    held = np.zeros_like(outputs[0])
    for t in range(len(outputs)):
        keep = ~np.asarray(valid[t])
        np.testing.assert_array_equal(outputs[t][keep], held[keep])
        held = outputs[t]
    noisy = jnp.where(valid[..., None], z_input, jnp.nan)  # never read
    fn = jax.jit(jax.value_and_grad(weighted_loss(native), argnums=(0, 1)))
    value, (d_z, d_kernel) = fn(z_input, kernel, valid, weights)
    noisy_value, (noisy_d_z, noisy_d_kernel) = fn(noisy, kernel, valid, weights)
    np.testing.assert_array_equal(value, noisy_value)
    np.testing.assert_array_equal(d_z, noisy_d_z)
    np.testing.assert_array_equal(d_kernel, noisy_d_kernel)


def test_eager_and_last_output_only():
    """Outside jit too; the classifier reads only outputs[-1]."""
    z_input, kernel, valid, weights = make_inputs(9, 6, 24, seed=4)
    last_only = weights.at[:-1].set(0.0)
    want, want_grads = outputs_and_grads(lstm_recurrence, z_input, kernel, valid, last_only)
    np.testing.assert_allclose(native(z_input, kernel, valid), want, **VALUE_TOL)
    got = jax.grad(weighted_loss(native), argnums=(0, 1))(z_input, kernel, valid, last_only)
    assert_grads_close(got, want_grads)


def test_vmap_over_kernels_and_over_inputs():
    z_input, kernel, valid, weights = make_inputs(10, 4, 24, seed=5)
    kernels = jnp.stack([kernel, 0.5 * kernel, -kernel])  # stacked seeds, as the trainer vmaps
    grad = jax.grad(weighted_loss(native), argnums=(0, 1))
    batched = jax.jit(jax.vmap(grad, in_axes=(None, 0, None, None)))(z_input, kernels, valid,
                                                                    weights)
    for index in range(len(kernels)):
        want = outputs_and_grads(lstm_recurrence, z_input, kernels[index], valid, weights)[1]
        assert_grads_close([g[index] for g in batched], want)
    inputs = jnp.stack([z_input, -z_input])
    valids = jnp.stack([valid, ~valid])
    batched = jax.jit(jax.vmap(native, in_axes=(0, None, 0)))(inputs, kernel, valids)
    for index in range(2):
        want = outputs_and_grads(lstm_recurrence, inputs[index], kernel, valids[index], weights)[0]
        np.testing.assert_allclose(batched[index], want, **VALUE_TOL)


def test_shard_map_over_the_batch():
    from jax.sharding import NamedSharding  # pylint: disable=import-outside-toplevel
    from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel

    z_input, kernel, valid, weights = make_inputs(6, 4 * jax.device_count(), 5, seed=6)
    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    specs = (P(None, "batch"), P(), P(None, "batch"), P(None, "batch"))
    args = [jax.device_put(a, NamedSharding(mesh, s))
            for a, s in zip((z_input, kernel, valid, weights), specs)]

    def loss(z_input, kernel, valid, weights):  # per shard, summed over the mesh
        return jax.lax.psum(weighted_loss(native)(z_input, kernel, valid, weights), "batch")

    sharded = jax.shard_map(loss, mesh=mesh, in_specs=specs, out_specs=P())
    got = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(*args)
    want = jax.jit(jax.value_and_grad(weighted_loss(lstm_recurrence), argnums=(0, 1)))(
        z_input, kernel, valid, weights)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    assert_grads_close(got[1], want[1])


def test_rejects_other_dtypes():
    z_input, kernel, valid, _ = make_inputs(3, 2, 4)
    with pytest.raises(TypeError, match="float32"):
        native(z_input.astype(jnp.bfloat16), kernel, valid)


_CHILD = """
import json, logging
records = []
class Record(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("lstmq").addHandler(Record())
logging.getLogger("lstmq").setLevel(logging.INFO)
from lstmq import ffi_recurrence
ok = ffi_recurrence.available()
path = ffi_recurrence._loaded().get("library")
print(json.dumps({"ok": ok, "path": str(path), "mtime": path.stat().st_mtime_ns if path else None,
                  "built": any("building" in m for m in records)}))
"""


def test_a_fresh_process_reuses_the_build():
    path = ffi_recurrence._loaded()["library"]
    before = path.stat().st_mtime_ns
    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          check=True, env=os.environ.copy(), cwd=Path(__file__).parents[1])
    child = json.loads(done.stdout.strip().splitlines()[-1])
    assert child == {"ok": True, "path": str(path), "mtime": before, "built": False}
    assert not list(path.parent.glob("*.tmp"))  # no leftover partial builds


def test_concurrent_builds_compile_once(tmp_path, monkeypatch):
    """The build's locking and renaming (on a stand-in source: compiling is not the point)."""
    source = tmp_path / "source" / "stand_in.cc"
    source.parent.mkdir()
    source.write_text('extern "C" int lstmq_lstm_padding() { return 1; }\n')
    monkeypatch.setattr(ffi_recurrence, "SOURCE", source)
    folder = tmp_path / "cache"
    compiler = ffi_recurrence.find_cxx()
    target = ffi_recurrence.library_path(compiler, folder)
    calls = []
    run = subprocess.run
    monkeypatch.setattr(ffi_recurrence.subprocess, "run",
                        lambda *a, **k: calls.append(a) or run(*a, **k))
    errors = []

    def build():
        try:
            ffi_recurrence._build(compiler, target)
        except Exception as error:  # pylint: disable=broad-except
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(calls) == 1 and target.exists()
    assert sorted(p.name for p in folder.iterdir()) == [target.name, target.name + ".lock"]


def test_the_model_trains_the_same_on_either_recurrence():
    from lstmq.model import LSTMClassifier, float_recurrence

    assert float_recurrence("xla") is lstm_recurrence
    assert float_recurrence("native") is ffi_recurrence.lstm_recurrence_native
    assert float_recurrence("auto") is ffi_recurrence.lstm_recurrence_native  # CPU, builds
    with pytest.raises(ValueError, match="auto, xla or native"):
        float_recurrence("fast")
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(5, 11, 4)), jnp.float32)
    lengths = jnp.asarray([11, 1, 6, 0, 9], jnp.int32)
    labels = jnp.asarray([0, 1, 2, 0, 1])
    models = {r: LSTMClassifier(hidden=7, layers=2, num_classes=3, recurrence=r)
              for r in ("xla", "native")}
    params = models["xla"].init(jax.random.PRNGKey(0), x, lengths)

    def loss(params, model):
        logits = model.apply(params, x, lengths)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(5), labels])

    values = {r: jax.value_and_grad(loss)(params, m) for r, m in models.items()}
    np.testing.assert_allclose(values["native"][0], values["xla"][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 values["native"][1], values["xla"][1])


# ---------------------------------------------------------------------------------------
# The QAT recurrence (lstm_qat_recurrence_native) against the nn.scan of RecurrentStep.

def qat_models(hidden: int, bits: int, readout: str, activations: bool = True) -> dict:
    from lstmq.model import LSTMClassifier
    from lstmq.quant import QATNumerics

    numerics = QATNumerics(input_clip=3.0, weight_bits=bits, activations=activations)
    return {r: LSTMClassifier(hidden=hidden, layers=2, num_classes=10, numerics=numerics,
                              readout=readout, recurrence=r) for r in ("xla", "native")}


def qat_loss_and_logits(params, model, x, lengths, labels):
    logits = model.apply(params, x, lengths)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels]), logits


def test_qat_recurrence_dispatch():
    from lstmq.model import qat_recurrence
    from lstmq.quant import QATNumerics

    qat = QATNumerics(input_clip=3.0)
    assert qat_recurrence("native", qat) is ffi_recurrence.lstm_qat_recurrence_native
    assert qat_recurrence("auto", qat) is ffi_recurrence.lstm_qat_recurrence_native  # CPU
    assert qat_recurrence("xla", qat) is None
    assert qat_recurrence("native", None) is None  # float: float_recurrence's business
    assert qat_recurrence("native", QATNumerics(input_clip=3.0, activations=False)) is None


@pytest.mark.parametrize("bits", [8, 4])
def test_qat_recurrent_kernel_is_aqts_fake_quant(bits):
    """QATNumerics.recurrent_kernel equals the rhs AQT's "recurrent" dot uses (read through
    a dot with 0.5 * I, exact on the Q0.7 lhs grid), an all-zero channel included."""
    import flax.linen as nn
    from lstmq.quant import QATNumerics

    numerics = QATNumerics(input_clip=3.0, weight_bits=bits)
    hidden = 13
    kernel = jax.random.normal(jax.random.PRNGKey(bits), (hidden, 4 * hidden)) / 4
    kernel = kernel.at[:, 5].set(0.0)
    dense = nn.Dense(4 * hidden, use_bias=False,
                     dot_general_cls=numerics.dot_general_cls("recurrent"))
    with jax.numpy_dtype_promotion("standard"):
        aqt = 2 * dense.apply({"params": {"kernel": kernel}}, 0.5 * jnp.eye(hidden))
    ours = numerics.recurrent_kernel(kernel)
    np.testing.assert_array_equal(ours, aqt)
    # and AQT's lhs quantization of a Q0.7 h is the identity: h @ W_q exactly
    h = jnp.arange(-127, 128, dtype=jnp.float32)[:hidden * 4].reshape(4, hidden) / 128
    with jax.numpy_dtype_promotion("standard"):
        np.testing.assert_array_equal(dense.apply({"params": {"kernel": kernel}}, h),
                                      jnp.dot(h, ours))
    np.testing.assert_array_equal(jax.grad(lambda k: jnp.sum(numerics.recurrent_kernel(k)))(kernel),
                                  jnp.ones_like(kernel))


@pytest.mark.parametrize("hidden, bits, readout, scale", [
    (16, 8, "last", 1.0), (16, 4, "mean", 1.0), (67, 8, "mean", 2.0), (48, 4, "last", 4.0)])
def test_qat_model_native_matches_the_scan(hidden, bits, readout, scale):
    """Same param tree; logits equal (measured: bit-exact; allowed: a rare fixed-point
    rounding flipped by a float rounding difference, e.g. in sigmoid or the dot's summation
    order); gradients within rtol 1e-4, atol 5e-5 x the largest (measured <= 3.2e-5 of the
    largest, in the first layer's: summation order of the backward matmuls, through 30 steps
    and two layers; the second layer's <= 3e-6). ``scale`` > 1 drives z and c into
    saturation."""
    rng = np.random.default_rng(hidden + bits)
    batch, time = 24, 30
    x = jnp.asarray(1.5 * rng.standard_normal((batch, time, 13)), jnp.float32)
    lengths = jnp.asarray(rng.integers(0, time + 1, batch), jnp.int32).at[:2].set((0, time))
    labels = jnp.asarray(rng.integers(0, 10, batch))
    models = qat_models(hidden, bits, readout)
    with jax.numpy_dtype_promotion("standard"):  # AQT's dot_general; not ours
        trees = {r: m.init(jax.random.PRNGKey(0), x, lengths) for r, m in models.items()}
        assert list(trees["native"]) == list(trees["xla"]) == ["params"]  # no "aqt" state
        assert (jax.tree_util.tree_structure(trees["native"])
                == jax.tree_util.tree_structure(trees["xla"]))
        jax.tree.map(np.testing.assert_array_equal, trees["native"], trees["xla"])
        params = jax.tree.map(
            lambda p: scale * p if p.ndim == 2
            else jnp.asarray(0.5 * rng.standard_normal(p.shape), jnp.float32), trees["xla"])
        step = jax.jit(jax.value_and_grad(qat_loss_and_logits, has_aux=True), static_argnums=1)
        out = {r: step(params, m, x, lengths, labels) for r, m in models.items()}
    (_, want), want_grads = out["xla"]
    (_, got), got_grads = out["native"]
    diff = np.abs(np.asarray(got) - np.asarray(want))
    assert np.mean(diff <= 1e-5) >= 0.99 and diff.max() < 0.05, diff.max()
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5 * float(np.abs(b).max()))


def test_ptq_dynamic_numerics_keep_the_scan():
    """activations=False (weight-only PTQ): the native setting still runs the nn.scan."""
    models = qat_models(8, 8, "last", activations=False)
    x, lengths = jnp.ones((2, 5, 13)), jnp.asarray([5, 3], jnp.int32)
    with jax.numpy_dtype_promotion("standard"):
        params = models["xla"].init(jax.random.PRNGKey(0), x, lengths)
        jaxpr = str(jax.make_jaxpr(models["native"].apply)(params, x, lengths))
    assert "lstmq_lstm_qat_forward" not in jaxpr and "scan" in jaxpr


@pytest.mark.filterwarnings("ignore:Implicit conversion of an array to a dtype:DeprecationWarning")
def test_integer_conversion_of_a_natively_trained_qat_model():
    """tests/test_integer.py's QAT training on a separable task, with the native QAT
    recurrence: the integer model of its params agrees with the QAT model (same bounds)."""
    from test_integer import CLIP, int_logits, train_qat_on_separable_task

    from lstmq.integer import convert_params, quantize_input

    with jax.numpy_dtype_promotion("standard"):
        model, params, sample = train_qat_on_separable_task(recurrence="native")
        x, lengths, labels = sample(512, 1)
        qat = np.asarray(jax.jit(model.apply)({"params": params}, x, lengths))
        scan = qat_models(16, 8, "last")["xla"].clone(num_classes=4)
        qat_scan = np.asarray(jax.jit(scan.apply)({"params": params}, x, lengths))
    # The trained params, either path: equal but where one rounding tie of the recurrence
    # falls the other way (rare rows; as in test_qat_training_step_matches_the_scan).
    diff = np.abs(qat - qat_scan)
    assert np.mean(diff <= 1e-5) >= 0.99 and diff.max() < 0.05, diff.max()
    with jax.numpy_dtype_promotion("strict"):
        int_model = convert_params(params, CLIP)
        logits = int_logits(int_model, quantize_input(int_model, x), lengths)
    readout_scale = np.abs(np.asarray(params["readout"]["kernel"])).max() / 127
    error = np.abs(logits * readout_scale / 128 - qat).max()
    qat_pred, int_pred = qat.argmax(-1), logits.argmax(-1)
    assert np.mean(qat_pred == labels) > 0.6
    assert error < 0.1
    assert np.mean(qat_pred == int_pred) >= 0.98


def test_qat_recurrence_under_shard_map_and_vmap():
    """lstm_qat_recurrence_native sharded over the batch (check_vma) and vmapped over
    kernels gives the unsharded, unbatched values and gradients."""
    from jax.sharding import NamedSharding  # pylint: disable=import-outside-toplevel
    from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel

    from lstmq.quant import fake_quant_weights

    qat = ffi_recurrence.lstm_qat_recurrence_native
    z_input, kernel, valid, weights = make_inputs(6, 4 * jax.device_count(), 5, seed=7)

    def loss(z_input, kernel, valid, weights):
        return jnp.sum(qat(z_input, kernel, fake_quant_weights(kernel, 8), valid) * weights)

    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    specs = (P(None, "batch"), P(), P(None, "batch"), P(None, "batch"))
    args = [jax.device_put(a, NamedSharding(mesh, s))
            for a, s in zip((z_input, kernel, valid, weights), specs)]
    sharded = jax.shard_map(lambda *a: jax.lax.psum(loss(*a), "batch"), mesh=mesh,
                            in_specs=specs, out_specs=P())
    got = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(*args)
    want = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(z_input, kernel, valid, weights)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    assert_grads_close(got[1], want[1])
    kernels = jnp.stack([kernel, 0.5 * kernel])
    batched = jax.vmap(jax.grad(loss, argnums=1), in_axes=(None, 0, None, None))(
        z_input, kernels, valid, weights)
    for index in range(2):
        np.testing.assert_allclose(batched[index],
                                   jax.grad(loss, argnums=1)(z_input, kernels[index], valid,
                                                             weights), rtol=1e-5, atol=1e-6)

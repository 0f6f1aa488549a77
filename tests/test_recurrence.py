"""lstm_recurrence (hand-written backward pass) against a plain autodiff lax.scan reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmq.recurrence import lstm_recurrence

TIME, BATCH, HIDDEN = 9, 6, 5
LENGTHS = np.array([0, TIME, 1, 4, TIME - 1, 6], np.int32)  # none, full, one, ...


@pytest.fixture(autouse=True, scope="module")
def strict_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield


def reference_recurrence(z_input, kernel, valid):
    """The textbook LSTM (gates i, f, g, o), masked steps keep the state; autodiff only."""
    hidden = kernel.shape[0]

    def step(carry, inputs):
        c, h = carry
        zx, v = inputs
        z = zx + jnp.dot(h, kernel, precision="highest")
        i = jax.nn.sigmoid(z[:, :hidden])
        f = jax.nn.sigmoid(z[:, hidden:2 * hidden])
        g = jnp.tanh(z[:, 2 * hidden:3 * hidden])
        o = jax.nn.sigmoid(z[:, 3 * hidden:])
        new_c = f * c + i * g
        new_h = o * jnp.tanh(new_c)
        new_c = jnp.where(v[:, None], new_c, c)
        new_h = jnp.where(v[:, None], new_h, h)
        return (new_c, new_h), new_h

    zeros = jnp.zeros((z_input.shape[1], hidden), jnp.float32)
    return jax.lax.scan(step, (zeros, zeros), (z_input, valid))[1]


def make_inputs(seed: int = 0, lengths=LENGTHS):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    z_input = 1.5 * jax.random.normal(k1, (TIME, BATCH, 4 * HIDDEN), jnp.float32)
    kernel = 0.6 * jax.random.normal(k2, (HIDDEN, 4 * HIDDEN), jnp.float32)
    valid = jnp.arange(TIME)[:, None] < jnp.asarray(lengths)[None, :]  # <bool>[T, B]
    weights = jax.random.normal(k3, (TIME, BATCH, HIDDEN), jnp.float32)  # cotangent of outputs
    return z_input, kernel, valid, weights


def weighted_loss(fn):
    """A scalar that reads every output step, so every step's cotangent is non-zero."""
    return lambda z_input, kernel, valid, weights: jnp.sum(fn(z_input, kernel, valid) * weights)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_values_match_reference(jit):
    z_input, kernel, valid, _ = make_inputs(0)
    fn = jax.jit(lstm_recurrence) if jit else lstm_recurrence
    got = fn(z_input, kernel, valid)
    assert got.shape == (TIME, BATCH, HIDDEN) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, jax.jit(reference_recurrence)(z_input, kernel, valid),
                               rtol=1e-5, atol=1e-6)


def reference_grad(*args):
    return jax.jit(jax.grad(weighted_loss(reference_recurrence), argnums=(0, 1)))(*args)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_gradients_match_reference(jit):
    z_input, kernel, valid, weights = make_inputs(1)
    grad = jax.grad(weighted_loss(lstm_recurrence), argnums=(0, 1))
    want_z, want_kernel = reference_grad(z_input, kernel, valid, weights)
    got_z, got_kernel = (jax.jit(grad) if jit else grad)(z_input, kernel, valid, weights)
    assert got_z.dtype == jnp.float32 and got_kernel.dtype == jnp.float32
    np.testing.assert_allclose(got_z, want_z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_kernel, want_kernel, rtol=1e-4, atol=1e-5)
    # Steps past a clip's length get no gradient; the zero-length clip gets none at all.
    np.testing.assert_array_equal(np.asarray(got_z)[~np.asarray(valid)], 0.0)


def test_gradients_of_the_last_output_only():
    """The classifier reads outputs[-1]: cotangent only on the final row."""
    z_input, kernel, valid, weights = make_inputs(2)
    last_only = weights.at[:-1].set(0.0)
    grad = jax.jit(jax.grad(weighted_loss(lstm_recurrence), argnums=(0, 1)))
    want = reference_grad(z_input, kernel, valid, last_only)
    for got, ref in zip(grad(z_input, kernel, valid, last_only), want):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_gradients_under_vmap_over_seeds():
    """The trainer vmaps the step over stacked seeds: the custom VJP must batch."""
    z_input, kernel, valid, weights = make_inputs(3)
    kernels = jnp.stack([kernel, 0.5 * kernel, -kernel])
    grad = jax.grad(weighted_loss(lstm_recurrence), argnums=1)
    batched = jax.jit(jax.vmap(grad, in_axes=(None, 0, None, None)))(
        z_input, kernels, valid, weights)
    for index in range(len(kernels)):
        want = reference_grad(z_input, kernels[index], valid, weights)[1]
        np.testing.assert_allclose(batched[index], want, rtol=1e-4, atol=1e-5)


def test_masked_steps_keep_the_state():
    z_input, kernel, valid, _ = make_inputs(4)
    outputs = np.asarray(jax.jit(lstm_recurrence)(z_input, kernel, valid))
    for clip, length in enumerate(LENGTHS):
        after = outputs[length:, clip]
        held = outputs[length - 1, clip] if length else np.zeros(HIDDEN, np.float32)
        np.testing.assert_array_equal(after, np.broadcast_to(held, after.shape))
        if length > 1:  # and the state did move while the clip was valid
            assert np.abs(outputs[length - 1, clip] - outputs[0, clip]).max() > 1e-3


def test_masked_inputs_are_ignored():
    """Whatever lies in z_input past a clip's length changes neither values nor gradients."""
    z_input, kernel, valid, weights = make_inputs(5)
    noisy = jnp.where(valid[..., None], z_input, 1e3)
    fn = jax.jit(jax.value_and_grad(weighted_loss(lstm_recurrence), argnums=1))
    value, grad = fn(z_input, kernel, valid, weights)
    noisy_value, noisy_grad = fn(noisy, kernel, valid, weights)
    np.testing.assert_array_equal(value, noisy_value)
    np.testing.assert_array_equal(grad, noisy_grad)

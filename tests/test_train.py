"""Optimiser, loss, train_step, seed-stacked states, the Trainer's batches, a QAT run learning."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lstmq.config import Config, TrainConfig, load_config
from lstmq.model import LSTMClassifier
from lstmq.pipeline import SplitArrays
from lstmq.quant import QATNumerics
from lstmq.gradients import cross_entropy
from lstmq.train import (
    Trainer,
    TrainState,
    create_train_states,
    ema_rate,
    make_optimizer,
    seed_groups,
    select_best,
    train_step,
)

FEATURES, CLASSES, HIDDEN, TIME, BATCH = 4, 3, 8, 12, 16


def tree_equal(a, b) -> bool:
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b))


def synthetic_split(n: int, seed: int = 0, noise: float = 0.3) -> SplitArrays:
    """3 classes told apart by the sign pattern of feature 0: +1, alternating, -1.

    <float32>[n, TIME, FEATURES], lengths 4..TIME, zeros after each clip's length.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int32) % CLASSES
    lengths = rng.integers(4, TIME + 1, n).astype(np.int32)
    t = np.arange(TIME)
    patterns = np.stack([np.ones(TIME), (-1.0) ** t, -np.ones(TIME)])  # [class, time]
    x = noise * rng.standard_normal((n, TIME, FEATURES))
    x[:, :, 0] += patterns[labels]
    x[t[None, :] >= lengths[:, None]] = 0.0
    return SplitArrays(x=x.astype(np.float32), lengths=lengths, labels=labels,
                       speakers=np.array(["s"] * n), names=tuple(f"{i}" for i in range(n)))


# make_optimizer -------------------------------------------------------------------------


def learning_rates(cfg: TrainConfig, steps_per_epoch: int) -> np.ndarray:
    """The step sizes the optimiser applies: with a scalar param at 0, unit gradients and no
    weight decay, Adam's normalised update is -lr(t) * 1 / (1 + eps)."""
    tx = make_optimizer(cfg, steps_per_epoch)
    params = jnp.zeros((), jnp.float32)
    state = tx.init(params)
    update = jax.jit(lambda state: tx.update(jnp.ones((), jnp.float32), state, params))
    rates = []
    for _ in range(cfg.epochs * steps_per_epoch):
        step, state = update(state)
        rates.append(-float(step))
    return np.asarray(rates)


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(epochs=6, learning_rate=0.01, warmup_epochs=2.0, weight_decay=0.0,
                      grad_clip=1.0)
    rates = learning_rates(cfg, steps_per_epoch=5)
    warmup = 10
    assert rates[0] == 0.0  # starts from zero
    np.testing.assert_allclose(rates[:warmup + 1], np.linspace(0, 0.01, warmup + 1), rtol=1e-5)
    assert np.all(np.diff(rates[:warmup + 1]) > 0)
    assert np.all(np.diff(rates[warmup:]) < 0)  # cosine decay after the peak
    assert rates.max() == pytest.approx(0.01, rel=1e-5)
    assert 0.01 * 0.01 < rates[-1] < 0.01 * 0.05  # towards 1% of the peak


def test_flat_optimizer_matches_per_leaf_updates():
    cfg = TrainConfig(epochs=2, learning_rate=0.01, warmup_epochs=0.5, weight_decay=0.01,
                      grad_clip=1.0)
    flat = make_optimizer(cfg, steps_per_epoch=4)
    per_leaf = make_optimizer(cfg, steps_per_epoch=4, flat=False)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
    states = [flat.init(params), per_leaf.init(params)]
    assert optax.tree_utils.tree_get(states[0], "mu").shape == (16,)  # one vector
    assert optax.tree_utils.tree_get(states[1], "mu")["w"].shape == (3, 4)  # per array
    for step in range(6):
        grads = jax.tree_util.tree_map(
            lambda p: jnp.asarray(rng.normal(size=p.shape) * (step + 1), jnp.float32), params)
        (flat_update, states[0]), (leaf_update, states[1]) = (
            flat.update(grads, states[0], params), per_leaf.update(grads, states[1], params))
        for key in params:
            np.testing.assert_allclose(flat_update[key], leaf_update[key], rtol=1e-5, atol=1e-8)
        assert jax.tree_util.tree_structure(flat_update) == jax.tree_util.tree_structure(params)
        params = optax.apply_updates(params, flat_update)


def test_gradients_are_clipped_by_global_norm():
    cfg = TrainConfig(epochs=1, learning_rate=1.0, warmup_epochs=0.0, weight_decay=0.0,
                      grad_clip=1.0)
    tx = make_optimizer(cfg, steps_per_epoch=10)
    params = {"a": jnp.zeros(3, jnp.float32)}
    # Adam normalises each coordinate, so clipping shows only through eps: compare the
    # clipped state against one built from the already-clipped gradient.
    update = jax.jit(lambda grads: tx.update(grads, tx.init(params), params)[1])
    big = {"a": jnp.array([30.0, 40.0, 0.0], jnp.float32)}  # norm 50
    state_big = update(big)
    state_small = update({"a": big["a"] / 50.0})
    mu_big = optax.tree_utils.tree_get(state_big, "mu")  # the flat vector of every parameter
    mu_small = optax.tree_utils.tree_get(state_small, "mu")
    np.testing.assert_allclose(mu_big, mu_small, rtol=1e-6)
    assert np.abs(np.asarray(mu_big)).max() < 0.1  # (1 - b1) * 40/50, not (1 - b1) * 40


# cross_entropy --------------------------------------------------------------------------


def test_cross_entropy_is_weighted_sum_of_negative_log_likelihoods():
    logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [-3.0, 1.0, 4.0], [1.0, 2.0, 3.0]])
    labels = jnp.array([0, 2, 1, 2])
    weight = jnp.array([1.0, 0.5, 2.0, 0.0])
    z = np.asarray(logits, np.float64)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -log_probs[np.arange(4), np.asarray(labels)]
    got = cross_entropy(logits, labels, weight, 0.0)
    assert got.shape == () and got.dtype == jnp.float32
    assert float(got) == pytest.approx(float(np.sum(nll * np.asarray(weight))), rel=1e-6)


def test_zero_weight_rows_contribute_nothing():
    logits = jnp.array([[2.0, 0.5, -1.0], [0.3, -0.2, 0.1]])
    labels = jnp.array([0, 2])
    weight = jnp.array([1.0, 0.0])
    changed = logits.at[1].set(jnp.array([50.0, -50.0, 0.0]))
    base = cross_entropy(logits, labels, weight, 0.0)
    assert float(cross_entropy(changed, jnp.array([0, 1]), weight, 0.0)) == float(base)
    assert float(base) == pytest.approx(float(cross_entropy(logits[:1], labels[:1],
                                                            weight[:1], 0.0)), rel=1e-7)


def test_label_smoothing_matches_manual_targets():
    logits = jnp.array([[2.0, 0.5, -1.0], [0.3, -0.2, 0.1]])
    labels = jnp.array([0, 2])
    smoothing = 0.1
    z = np.asarray(logits, np.float64)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    targets = np.full((2, 3), smoothing / 3)
    targets[np.arange(2), np.asarray(labels)] += 1 - smoothing
    want = -(targets * log_probs).sum()
    got = cross_entropy(logits, labels, jnp.ones(2), smoothing)
    assert float(got) == pytest.approx(want, rel=1e-6)


# train_step and create_train_states ------------------------------------------------------


MODEL = LSTMClassifier(HIDDEN, 2, CLASSES, dropout=0.1)
TX = make_optimizer(TrainConfig(epochs=6, learning_rate=0.01, warmup_epochs=0.5), 10)


@functools.cache
def jitted_init():
    return jax.jit(lambda seed: create_train_states(MODEL, TX, seed, 2, FEATURES))


@functools.cache
def jitted_step():
    """train_step of every seed (leading axis), as the Trainer runs it."""
    return jax.jit(jax.vmap(train_step, in_axes=(0, None, None, None, None)))


def batch_arrays(split: SplitArrays, weight=None):
    weight = np.ones(len(split), np.float32) if weight is None else weight
    return (jnp.asarray(split.x), jnp.asarray(split.lengths), jnp.asarray(split.labels),
            jnp.asarray(weight))


def test_states_differ_per_seed_and_repeat_per_seed():
    init = jitted_init()
    states = init(0)
    assert isinstance(states, TrainState)
    assert states.params["readout"]["kernel"].shape == (2, HIDDEN, CLASSES)
    np.testing.assert_array_equal(states.step, [0, 0])
    first = jax.tree_util.tree_map(lambda a: a[0], states.params)
    second = jax.tree_util.tree_map(lambda a: a[1], states.params)
    kernels = [p for p in jax.tree_util.tree_leaves(first) if p.ndim == 2]
    assert all(not np.array_equal(a, b) for a, b in
               zip(kernels, [p for p in jax.tree_util.tree_leaves(second) if p.ndim == 2]))
    assert not np.array_equal(states.dropout_key[0], states.dropout_key[1])
    assert tree_equal(init(0).params, states.params)
    # seed k's second state is seed k+1's first: seeds are k, k+1, ...
    assert tree_equal(jax.tree_util.tree_map(lambda a: a[0], init(1).params), second)


def test_init_params_replace_the_random_init_per_seed():
    """Fine-tuning: ``init_params`` (stacked per seed) become the params; keys stay per seed."""
    random = jitted_init()(0)
    given = jax.tree_util.tree_map(lambda a: 0.5 * a[::-1], random.params)  # seed 1's, seed 0's
    states = jax.jit(lambda p: create_train_states(MODEL, TX, 0, 2, FEATURES, p))(given)
    assert tree_equal(states.params, given)
    np.testing.assert_array_equal(states.dropout_key, random.dropout_key)
    np.testing.assert_array_equal(states.step, [0, 0])


def test_train_step_decreases_loss_and_reports_sums():
    split = synthetic_split(BATCH, seed=1)
    x, lengths, labels, weight = batch_arrays(split)
    step = jitted_step()
    states = jitted_init()(0)
    losses = []
    for _ in range(50):
        states, metrics = step(states, x, lengths, labels, weight)
        losses.append(np.asarray(metrics["loss"]) / np.asarray(metrics["count"]))
    losses = np.asarray(losses)  # [steps, seeds]
    np.testing.assert_array_equal(metrics["count"], [BATCH, BATCH])
    assert metrics["loss"].dtype == jnp.float32
    np.testing.assert_array_equal(states.step, [50, 50])
    assert np.all(losses[0] > 0.9 * np.log(CLASSES))  # starts near chance
    assert np.all(losses[-5:].mean(0) < 0.5 * losses[0])  # both seeds learn
    assert np.all(np.asarray(metrics["correct"]) >= 0.75 * BATCH)


def test_padding_entries_do_not_move_the_params():
    """A batch whose extra rows have weight 0 trains exactly like the batch without them."""
    split = synthetic_split(BATCH, seed=2)
    x, lengths, labels, _ = batch_arrays(split)
    half = np.r_[np.ones(BATCH // 2), np.zeros(BATCH // 2)].astype(np.float32)
    garbage_x = x.at[BATCH // 2:].set(7.0)
    garbage_labels = labels.at[BATCH // 2:].set(0)
    step = jitted_step()
    a, metrics = step(jitted_init()(0), x, lengths, labels, jnp.asarray(half))
    b, _ = step(jitted_init()(0), garbage_x, lengths, garbage_labels, jnp.asarray(half))
    np.testing.assert_array_equal(metrics["count"], [BATCH // 2] * 2)
    for leaf_a, leaf_b in zip(jax.tree_util.tree_leaves(a.params),
                              jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_allclose(leaf_a, leaf_b, rtol=0, atol=1e-7)


def trained_states(x, lengths, labels, weight, **options):
    """Seed states after 60 steps of ``train_step(..., **options)`` on one batch, asserting
    that they learned it (at least 75% of the clips right at the last step)."""
    step = jax.jit(lambda states: jax.vmap(
        lambda s: train_step(s, x, lengths, labels, weight, **options))(states))
    states = jitted_init()(0)
    for _ in range(60):
        states, metrics = step(states)
    assert np.all(np.asarray(metrics["correct"]) >= 0.75 * BATCH)
    return states


def test_mixup_loss_weighs_both_labels_and_still_learns():
    """With mixup the step's loss is lam * CE(own label) + (1 - lam) * CE(partner's label), on
    the mixed clips; training on it still learns the task."""
    from lstmq.batch_augment import mixup
    from lstmq.gradients import summed_gradients

    x, lengths, labels, weight = batch_arrays(synthetic_split(BATCH, seed=6))
    states = trained_states(x, lengths, labels, weight, mixup_alpha=0.4)

    state = jax.tree_util.tree_map(lambda a: a[0], states)  # trained: logits far from equal
    key = jax.random.PRNGKey(9)
    _, metrics = jax.jit(lambda s: summed_gradients(s, key, x, lengths, labels, weight,
                                                    mixup_alpha=0.4))(state)
    mixed, longer, partner, lam = mixup(jax.random.fold_in(key, 2), x, lengths, weight, 0.4)
    logits = MODEL.apply({"params": state.params}, mixed, longer, train=True,
                         rngs={"dropout": key})
    log_p = np.asarray(jax.nn.log_softmax(logits), np.float64)
    rows, own = np.arange(BATCH), np.asarray(labels)
    lam, partner = np.asarray(lam, np.float64), np.asarray(partner)
    want = -(lam * log_p[rows, own] + (1 - lam) * log_p[rows, own[partner]]).sum()
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
    own_only = -log_p[rows, own].sum()
    assert abs(want - own_only) > 1e-2 * own_only  # the partner's label counts


def test_dropout_mask_differs_per_seed_and_per_step():
    """Each seed drops out with its own key, folded with the step number."""
    x, lengths, labels, weight = batch_arrays(synthetic_split(BATCH, seed=5))
    states = jitted_init()(0)
    same_params = jax.tree_util.tree_map(lambda a: jnp.stack([a[0], a[0]]), states.params)
    states = states.replace(params=same_params)
    step = jitted_step()
    _, now = step(states, x, lengths, labels, weight)
    _, later = step(states.replace(step=states.step + 1), x, lengths, labels, weight)
    now, later = np.asarray(now["loss"]), np.asarray(later["loss"])
    assert abs(now[0] - now[1]) > 1e-4  # same params, different seeds' masks
    assert np.all(np.abs(now - later) > 1e-4)  # same params, next step's masks


def test_training_is_deterministic_for_a_seed():
    split = synthetic_split(BATCH, seed=3)
    arrays = batch_arrays(split)
    step = jitted_step()

    def run():
        states = jitted_init()(0)
        for _ in range(3):
            states, _ = step(states, *arrays)
        return states

    first, second = run(), run()
    assert tree_equal(first.params, second.params)
    assert tree_equal(first.opt_state, second.opt_state)
    assert not tree_equal(first.params, jitted_init()(0).params)


# moving average of the parameters --------------------------------------------------------


def test_ema_rate_grows_to_the_decay():
    rates = np.asarray([ema_rate(0.99, step) for step in (0, 1, 10, 100, 10_000)])
    np.testing.assert_allclose(rates, [0.1, 2 / 11, 11 / 20, 101 / 110, 0.99],
                               rtol=1e-6)
    assert ema_rate(0.0, 5) == 0.0  # decay 0: the average is the params


def test_ema_is_the_moving_average_and_leaves_training_alone():
    """Each step: ema <- r * ema + (1 - r) * params with r = ema_rate(decay, step after it);
    the params themselves train exactly as without an average."""
    x, lengths, labels, weight = batch_arrays(synthetic_split(BATCH, seed=6))
    decay = 0.95
    step = jax.jit(jax.vmap(functools.partial(train_step, ema_decay=decay),
                            in_axes=(0, None, None, None, None)))
    plain = jitted_init()(0)
    states = jax.jit(lambda: create_train_states(MODEL, TX, 0, 2, FEATURES, ema=True))()
    assert plain.ema_params is None and plain.eval_params() is plain.params
    assert tree_equal(states.ema_params, plain.params)  # starts at the initial params
    expected = jax.tree_util.tree_map(np.asarray, states.ema_params)
    for n in range(1, 4):
        plain, _ = jitted_step()(plain, x, lengths, labels, weight)
        states, _ = step(states, x, lengths, labels, weight)
        rate = float(ema_rate(decay, n))
        expected = jax.tree_util.tree_map(lambda e, p: rate * e + (1 - rate) * np.asarray(p),
                                          expected, states.params)
    assert tree_equal(states.params, plain.params)
    for got, want in zip(jax.tree_util.tree_leaves(states.eval_params()),
                         jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert not tree_equal(states.ema_params, states.params)


def test_sharded_steps_update_the_average_like_whole_batches():
    model = LSTMClassifier(HIDDEN, 1, CLASSES)
    whole, _ = run_trainer(seeds=1, threads=0, model=model, ema_decay=0.9)
    sharded, _ = run_trainer(seeds=1, threads=0, shards=2, model=model, ema_decay=0.9)
    for a, b in zip(jax.tree_util.tree_leaves(whole.ema_params),
                    jax.tree_util.tree_leaves(sharded.ema_params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not tree_equal(whole.ema_params, whole.params)


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_trainer_refuses_an_ema_decay_outside_0_1(decay):
    with pytest.raises(ValueError, match="ema_decay"):
        Trainer(trainer_config(ema_decay=decay), MODEL, synthetic_split(16))


# Trainer --------------------------------------------------------------------------------


def trainer_config(**train) -> Config:
    overrides = [f"train.{k}={v}" for k, v in train.items()]
    return load_config(overrides=[f"model.hidden={HIDDEN}", f"model.num_classes={CLASSES}",
                                  "model.dropout=0.0", *overrides])


@pytest.mark.parametrize("n, batch_size, bucket", [(37, 8, 4), (16, 16, 5), (5, 8, 16)])
def test_epoch_batches_cover_every_clip_once(n, batch_size, bucket):
    rng = np.random.default_rng(n)
    lengths = rng.integers(1, 41, n).astype(np.int32)
    frames = -(-int(lengths.max()) // bucket) * bucket  # padded like pipeline.pad_batch
    split = SplitArrays(x=np.zeros((n, frames, FEATURES), np.float32), lengths=lengths,
                        labels=np.zeros(n, np.int32), speakers=np.array(["s"] * n),
                        names=tuple(map(str, range(n))))
    config = trainer_config(batch_size=batch_size, bucket_frames=bucket)
    trainer = Trainer(config, LSTMClassifier(HIDDEN, 2, CLASSES), split)
    for seed in (0, 1):
        batches = trainer.epoch_batches(np.random.default_rng(seed))
        assert len(batches) == -(-n // batch_size)
        real = []
        for batch in batches:
            assert batch.index.dtype == np.int32 and batch.weight.dtype == np.float32
            assert batch.index.shape == batch.weight.shape == (batch_size,)
            assert set(np.unique(batch.weight)) <= {0.0, 1.0}
            chosen = batch.index[batch.weight == 1.0]
            real.extend(chosen.tolist())
            assert batch.frames % bucket == 0
            assert lengths[batch.index].max() <= batch.frames <= frames
            assert batch.frames - bucket < lengths[batch.index].max()  # no wasted bucket
            # padding entries repeat a real clip (valid index, zero weight)
            assert np.all(batch.weight[len(chosen):] == 0.0)
        assert sorted(real) == list(range(n))


def test_epoch_batches_shuffle_between_epochs():
    split = synthetic_split(48)
    trainer = Trainer(trainer_config(batch_size=8, bucket_frames=4), MODEL, split)
    orders = [np.concatenate([b.index for b in trainer.epoch_batches(np.random.default_rng(e))])
              for e in (0, 1)]
    assert not np.array_equal(*orders)
    again = np.concatenate([b.index for b in trainer.epoch_batches(np.random.default_rng(0))])
    np.testing.assert_array_equal(orders[0], again)


@pytest.mark.parametrize("seeds, threads, sizes", [
    (1, 0, [1]), (3, 0, [1, 1, 1]), (3, 1, [3]), (3, 2, [2, 1]), (5, 2, [2, 3]), (2, 8, [1, 1])])
def test_seed_groups_cut_the_seed_axis_into_contiguous_slices(seeds, threads, sizes):
    groups = seed_groups(seeds, threads)
    assert [g.stop - g.start for g in groups] == sizes
    assert groups[0].start == 0 and groups[-1].stop == seeds
    assert all(a.stop == b.start for a, b in zip(groups, groups[1:]))


@pytest.mark.parametrize("seeds, threads", [(0, 0), (2, -1)])
def test_seed_groups_refuse_impossible_counts(seeds, threads):
    with pytest.raises(ValueError, match="seed"):
        seed_groups(seeds, threads)


ONE_LAYER = LSTMClassifier(HIDDEN, 1, CLASSES, dropout=0.1)  # one layer: short compiles


def run_trainer(seeds: int, threads: int, epochs: int = 2, shards: int = 1, model=ONE_LAYER,
                ema_decay: float = 0.0):
    split = synthetic_split(40, seed=5)
    config = trainer_config(batch_size=8, bucket_frames=TIME, epochs=epochs, seeds=seeds,
                            seed_threads=threads, batch_shards=shards, ema_decay=ema_decay)
    trainer = Trainer(config, model, split)
    states = create_train_states(model, trainer.tx, 0, seeds, FEATURES, ema=ema_decay > 0)
    history = []
    for epoch in range(epochs):
        states, metrics = trainer.run_epoch(states, epoch)
        history.append(metrics)
    return states, history


def test_a_seed_on_its_own_thread_trains_as_if_alone():
    """One thread per seed runs the one-seed program: seed 0 of three equals seed 0 alone."""
    alone, alone_history = run_trainer(seeds=1, threads=0)
    three, history = run_trainer(seeds=3, threads=0)
    assert tree_equal(jax.tree_util.tree_map(lambda a: a[:1], three.params), alone.params)
    np.testing.assert_array_equal(history[-1]["loss"][:1], alone_history[-1]["loss"])
    assert history[-1]["loss"].shape == (3,)
    assert not np.allclose(history[-1]["loss"][0], history[-1]["loss"][1])  # distinct seeds


def test_threaded_seed_groups_match_one_vmapped_program():
    vmapped, vmapped_history = run_trainer(seeds=3, threads=1)
    threaded, threaded_history = run_trainer(seeds=3, threads=2)
    np.testing.assert_array_equal(threaded.step, [10, 10, 10])
    for a, b in zip(jax.tree_util.tree_leaves(vmapped.params),
                    jax.tree_util.tree_leaves(threaded.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(vmapped_history[-1]["accuracy"], threaded_history[-1]["accuracy"])


def test_batch_shards_sum_to_the_whole_batch_gradient():
    """Without dropout the shards' summed gradients are the batch's: same training."""
    model = LSTMClassifier(HIDDEN, 1, CLASSES)
    whole, whole_history = run_trainer(seeds=2, threads=1, model=model)
    sharded, sharded_history = run_trainer(seeds=2, threads=1, shards=4, model=model)
    np.testing.assert_array_equal(sharded.step, whole.step)
    for a, b in zip(jax.tree_util.tree_leaves(whole.params),
                    jax.tree_util.tree_leaves(sharded.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(sharded_history[-1][key], whole_history[-1][key], rtol=1e-5)
    moved = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), whole.params,
        create_train_states(model, optax.sgd(0.0), 0, 2, FEATURES).params))
    assert max(moved) > 1e-3  # training moved the parameters


def test_batch_shards_draw_their_own_dropout_masks():
    sharded, _ = run_trainer(seeds=1, threads=0, shards=2, epochs=1)
    again, _ = run_trainer(seeds=1, threads=0, shards=2, epochs=1)
    whole, _ = run_trainer(seeds=1, threads=0, shards=1, epochs=1)
    assert tree_equal(sharded.params, again.params)  # deterministic
    assert not tree_equal(sharded.params, whole.params)


@pytest.mark.parametrize("shards", [0, 3])
def test_batch_shards_must_divide_the_batch(shards):
    with pytest.raises(ValueError, match="batch_shards"):
        trainer_config(batch_size=8, batch_shards=shards)  # refused with the config


def test_select_best_picks_per_seed():
    best = {"w": jnp.zeros((3, 2, 2)), "b": jnp.zeros((3,))}
    candidate = {"w": jnp.ones((3, 2, 2)), "b": jnp.full((3,), 5.0)}
    chosen = select_best(best, candidate, np.array([True, False, True]))
    np.testing.assert_array_equal(chosen["w"][:, 0, 0], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(chosen["w"][1], np.zeros((2, 2)))
    np.testing.assert_array_equal(chosen["b"], [5.0, 0.0, 5.0])


def test_tiny_qat_run_learns():
    """QAT int8 numerics, hidden 8, 96 steps of the seed-vmapped Trainer on 3 separable classes.

    Measured: epoch accuracy 0.46 -> 1.0 from the 9th epoch on (chance is 1/3), loss
    1.07 -> 0.017.
    One layer keeps the compile short; the two-layer QAT model is covered in test_quant.py.
    """
    split = synthetic_split(48, seed=4)
    config = trainer_config(batch_size=BATCH, bucket_frames=TIME, epochs=32, learning_rate=0.02,
                            warmup_epochs=1, seeds=1)
    model = LSTMClassifier(HIDDEN, 1, CLASSES, numerics=QATNumerics(input_clip=3.0))
    trainer = Trainer(config, model, split)
    states = jax.jit(lambda: create_train_states(model, trainer.tx, 0, 1, FEATURES))()
    history = []
    for epoch in range(config.train.epochs):
        states, metrics = trainer.run_epoch(states, epoch)
        history.append(metrics)
    np.testing.assert_array_equal(states.step, [96])
    assert history[0]["accuracy"][0] < 0.6
    assert history[-1]["accuracy"][0] > 0.8  # training accuracy over the last epoch's batches
    assert history[-1]["loss"][0] < 0.5 * history[0]["loss"][0]


SHARDED_RUN = """
import json, sys
import jax, numpy as np
from lstmq.config import load_config
from lstmq.runner import train_and_evaluate
from lstmq.runs import load_run
folder, out, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = load_config(overrides=[f"data.path={folder}", "data.split=official", "data.val_fraction=0",
                                "features.cache=false", "model.hidden=4", "model.layers=1",
                                "train.seeds=2", "train.seed_threads=1", "train.batch_size=8",
                                "train.epochs=2", f"train.seed_devices={devices}"])
train_and_evaluate(config, out, progress=False)
print(json.dumps({"devices": len(jax.devices()), "params": [np.asarray(p).tolist()
                  for p in jax.tree_util.tree_leaves(load_run(out).params)]}))
"""


def test_seeds_split_over_host_devices_train_as_on_one(wav_folder, tmp_path):
    """Two CPU host devices (XLA's --xla_force_host_platform_device_count), each holding one
    seed of a vmapped program: the same parameters as the program on one device."""
    import json
    import os
    import subprocess
    import sys

    results = {}
    for devices in (1, 2):
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
        done = subprocess.run([sys.executable, "-c", SHARDED_RUN, str(wav_folder),
                               str(tmp_path / f"run{devices}"), str(devices)],
                              capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        results[devices] = json.loads(done.stdout.strip().splitlines()[-1])
    assert results[2]["devices"] == 2
    for one, two in zip(results[1]["params"], results[2]["params"]):
        np.testing.assert_allclose(np.array(one), np.array(two), rtol=1e-5, atol=1e-6)


def test_a_seed_mesh_needs_the_devices_and_a_multiple_of_them():
    from lstmq.train import seed_mesh

    assert seed_mesh(3, 1) is None
    with pytest.raises(ValueError, match="JAX sees"):
        seed_mesh(4, len(jax.devices()) + 1)


def test_sharpness_aware_gradient_is_taken_at_the_moved_parameters():
    """loss = sum(a p^2) / 2: the SAM gradient is a (p + rho g / |g|) with g = a p; a zero
    gradient leaves p in place."""
    from lstmq.gradients import sharpness_aware_gradients

    a = {"w": jnp.array([1.0, 4.0]), "b": jnp.array([2.0])}
    p = {"w": jnp.array([3.0, -1.0]), "b": jnp.array([0.5])}
    loss_fn = lambda q: (0.5 * sum(jnp.sum(a[k] * q[k] ** 2) for k in q), None)
    g = {k: a[k] * p[k] for k in p}
    norm = np.sqrt(sum(float(jnp.sum(v ** 2)) for v in g.values()))
    out = sharpness_aware_gradients(loss_fn, p, g, 0.1)
    for k in p:
        np.testing.assert_allclose(out[k], a[k] * (p[k] + 0.1 * g[k] / norm), rtol=1e-6)
    zero = {k: jnp.zeros_like(v) for k, v in p.items()}
    np.testing.assert_allclose(sharpness_aware_gradients(loss_fn, zero, zero, 0.1)["w"], [0, 0])


def test_sam_training_still_learns_and_reports_the_unmoved_loss():
    from lstmq.gradients import summed_gradients

    x, lengths, labels, weight = batch_arrays(synthetic_split(BATCH, seed=6))
    states = trained_states(x, lengths, labels, weight, sam_rho=0.05)
    state = jax.tree_util.tree_map(lambda a: a[0], states)
    key = jax.random.PRNGKey(3)
    grads = jax.jit(lambda s, rho: summed_gradients(s, key, x, lengths, labels, weight,
                                                    sam_rho=rho), static_argnums=1)
    plain, plain_metrics = grads(state, 0.0)
    sam, sam_metrics = grads(state, 0.05)
    assert float(sam_metrics["loss"]) == float(plain_metrics["loss"])
    difference = optax.tree.norm(jax.tree_util.tree_map(lambda a, b: a - b, sam, plain))
    assert float(difference) > 1e-3 * float(optax.tree.norm(plain))

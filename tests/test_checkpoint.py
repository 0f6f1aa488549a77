"""Parameter files (msgpack), training checkpoints (orbax) and atomic writes."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmq import io
from lstmq.checkpoint import CheckpointError, TrainingCheckpoints, load_params, save_params


def params_tree(seed: int = 0, hidden: int = 4) -> dict:
    """A stacked (2 seeds) param tree shaped like LSTMClassifier's, with awkward values."""
    rng = np.random.default_rng(seed)

    def leaf(*shape):
        return jnp.asarray(rng.standard_normal((2, *shape)).astype(np.float32))

    tree = {"lstm_0": {"input": {"kernel": leaf(3, 4 * hidden), "bias": leaf(4 * hidden)},
                       "cell": {"recurrent": {"kernel": leaf(hidden, 4 * hidden)}}},
            "readout": {"kernel": leaf(hidden, 5), "bias": leaf(5)}}
    # values whose bits must survive: signed zero, subnormal, extremes
    tree["readout"]["bias"] = tree["readout"]["bias"].at[0, :4].set(
        jnp.array([-0.0, 1e-45, np.finfo(np.float32).max, -np.finfo(np.float32).tiny]))
    return tree


def like(tree):
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def assert_bit_identical(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))


# save_params / load_params --------------------------------------------------------------


def test_params_round_trip_bit_exact(tmp_path):
    tree = params_tree()
    path = tmp_path / "run" / "params.msgpack"  # parent folders are created
    save_params(path, tree)
    assert_bit_identical(load_params(path, like(tree)), tree)
    assert [p.name for p in path.parent.iterdir()] == ["params.msgpack"]  # no temp files


def test_wrong_shape_names_file_and_tensor(tmp_path):
    path = tmp_path / "params.msgpack"
    save_params(path, params_tree(hidden=4))
    with pytest.raises(CheckpointError) as error:
        load_params(path, like(params_tree(hidden=6)))
    message = str(error.value)
    assert str(path) in message
    assert "/lstm_0/cell/recurrent/kernel" in message and "(2, 4, 16)" in message


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    path = tmp_path / "params.msgpack"
    tree = params_tree()
    save_params(path, tree)
    other = like(tree)
    other["lstm_1"] = other.pop("lstm_0")
    with pytest.raises(CheckpointError) as error:
        load_params(path, other)
    assert "/lstm_1 missing" in str(error.value) and "/lstm_0 unexpected" in str(error.value)


@pytest.mark.parametrize("data", [b"", b"\x00\x01garbage", b"\xc1"], ids=["empty", "junk", "nil"])
def test_corrupt_bytes_raise_checkpoint_error(tmp_path, data):
    path = tmp_path / "params.msgpack"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="params.msgpack"):
        load_params(path, like(params_tree()))


def test_truncated_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "params.msgpack"
    save_params(path, params_tree())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="params.msgpack"):
        load_params(path, like(params_tree()))


def test_missing_file_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.msgpack"):
        load_params(tmp_path / "nothing.msgpack", like(params_tree()))


# TrainingCheckpoints ---------------------------------------------------------------------


def training_tree(seed: int = 0):
    return {"states": params_tree(seed), "best": {"val": np.array([0.25, -1.0]),
                                                  "epoch": np.array([3, 0])}}


def test_training_checkpoint_round_trip(tmp_path):
    checkpoints = TrainingCheckpoints(tmp_path / "checkpoints")
    assert checkpoints.latest_epoch() is None
    checkpoints.save(1, training_tree(1))
    checkpoints.save(2, training_tree(2))
    assert checkpoints.latest_epoch() == 2
    restored = checkpoints.restore(2, jax.tree_util.tree_map(np.zeros_like, training_tree()))
    checkpoints.close()
    assert_bit_identical(restored, training_tree(2))
    # A new manager over the same folder (a resumed process) sees the same latest epoch.
    again = TrainingCheckpoints(tmp_path / "checkpoints")
    assert again.latest_epoch() == 2
    assert_bit_identical(again.restore(2, training_tree()), training_tree(2))
    again.close()


def test_only_the_latest_checkpoint_is_kept(tmp_path):
    checkpoints = TrainingCheckpoints(tmp_path / "checkpoints")
    for epoch in (1, 2, 3):
        checkpoints.save(epoch, training_tree(epoch))
    assert checkpoints.manager.all_steps() == [3]
    checkpoints.close()


def test_ctrl_c_during_a_save_lets_the_write_end_before_it_leaves(tmp_path, monkeypatch):
    """An interrupt while orbax writes closes the manager (its background work ends, so no
    thread outlives the interpreter), then goes on; the saved epoch is there afterwards."""
    checkpoints = TrainingCheckpoints(tmp_path / "checkpoints")
    manager, closed = checkpoints.manager, []
    wait = manager.wait_until_finished

    def interrupted():  # Ctrl-C once the write is under way (save also waits before it)
        if any(checkpoints.directory.iterdir()):
            raise KeyboardInterrupt
        return wait()

    monkeypatch.setattr(manager, "wait_until_finished", interrupted)
    monkeypatch.setattr(manager, "close", lambda: closed.append(wait()) or None)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(1, training_tree(1))
    assert len(closed) == 1
    checkpoints.close()  # once only
    assert len(closed) == 1
    monkeypatch.undo()
    manager.close()
    assert TrainingCheckpoints(tmp_path / "checkpoints").latest_epoch() == 1


def test_a_state_of_attributes_restores_and_its_mismatch_is_named(tmp_path):
    from flax import struct

    @struct.dataclass
    class State:
        params: dict
        step: np.ndarray

    checkpoints = TrainingCheckpoints(tmp_path / "checkpoints")
    state = State(params=params_tree(1), step=np.array([7], np.int32))
    checkpoints.save(1, {"states": state})
    assert_bit_identical(checkpoints.restore(1, {"states": State(params_tree(), np.array([0], np.int32))}),
                         {"states": state})
    with pytest.raises(CheckpointError, match="states/params/readout/kernel saved"):
        checkpoints.restore(1, {"states": State(params_tree(hidden=6), np.array([0], np.int32))})
    checkpoints.close()


@pytest.mark.parametrize("change", ["shape", "missing", "extra"])
def test_structure_mismatch_raises_checkpoint_error(tmp_path, change):
    checkpoints = TrainingCheckpoints(tmp_path / "checkpoints")
    checkpoints.save(1, training_tree())
    target = training_tree()
    if change == "shape":
        target["states"] = params_tree(hidden=6)
    elif change == "missing":
        del target["states"]["readout"]
    else:
        target["best"]["extra"] = np.zeros(2)
    with pytest.raises(CheckpointError) as error:
        checkpoints.restore(1, target)
    checkpoints.close()
    assert "checkpoints" in str(error.value) and "epoch 1" in str(error.value)
    named = {"shape": "saved (", "missing": "unexpected states/readout",
             "extra": "missing best/extra"}[change]
    assert named in str(error.value)


# atomic writes --------------------------------------------------------------------------


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_writes_replace_whole_files(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    io.atomic_write_json(path, {"a": 1, "b": [1.5, None]})
    io.atomic_write_json(path, {"a": 2})
    assert io.read_json(path) == {"a": 2}
    assert path.read_text().endswith("\n")
    io.atomic_write_text(tmp_path / "out" / "note.txt", "héllo")
    assert (tmp_path / "out" / "note.txt").read_bytes() == "héllo".encode()
    assert leftovers(path.parent) == ["metrics.json", "note.txt"]


def test_failed_serialisation_keeps_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    io.atomic_write_json(path, {"accuracy": 0.5})
    with pytest.raises(TypeError):
        io.atomic_write_json(path, {"accuracy": object()})
    assert io.read_json(path) == {"accuracy": 0.5}
    assert leftovers(tmp_path) == ["metrics.json"]


def test_failure_during_write_removes_temp_file_and_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "params.msgpack"
    io.atomic_write_bytes(path, b"old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_bytes(path, b"new bytes that never land")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == ["params.msgpack"]


def test_interrupt_during_write_removes_temp_file(tmp_path, monkeypatch):
    """KeyboardInterrupt is a BaseException: the temp file must still go."""
    path = tmp_path / "history.json"

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.atomic_write_json(path, [1, 2])
    monkeypatch.undo()
    assert leftovers(tmp_path) == []


def test_read_json_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        io.read_json(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        io.read_json(bad)

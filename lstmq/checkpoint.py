"""Training checkpoints (orbax, for resume) and the final parameters of a run (msgpack)."""

from __future__ import annotations

import hashlib

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import serialization

from lstmq.io import atomic_write_bytes


class CheckpointError(ValueError):
    """A checkpoint or parameter file is missing, corrupt or does not match the model."""


class TrainingCheckpoints:
    """Keeps the latest epoch's full training state under ``workdir/checkpoints``."""

    def __init__(self, directory: str | Path, keep: int = 1):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers=ocp.StandardCheckpointHandler())
        self._closed = False

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def save(self, epoch: int, tree: Any) -> None:
        """Write ``tree`` as ``epoch`` and wait for it. On Ctrl-C the manager is closed first
        (its background writes end) so that no orbax thread outlives the interpreter's
        shutdown; an unfinished epoch's temporary folder is removed by the next run."""
        try:
            self.manager.save(epoch, args=ocp.args.StandardSave(tree))
            self.manager.wait_until_finished()
        except KeyboardInterrupt:
            self.close()
            raise

    def restore(self, epoch: int, like: Any) -> Any:
        """Restore into the structure of ``like``; a structure mismatch is a CheckpointError."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        problem = _layout_difference(_shapes(self.manager.item_metadata(epoch).tree),
                                     _shapes(abstract))
        if problem:  # refused before orbax starts reading, so no read is left pending
            raise CheckpointError(f"{self.directory}: checkpoint of epoch {epoch} does not "
                                  f"match this run's model/optimizer ({problem})")
        try:
            return self.manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{self.directory}: checkpoint of epoch {epoch} does not match this run's "
                f"model/optimizer ({error})") from None

    def close(self) -> None:
        """Wait for pending writes and release the manager (once; later calls do nothing)."""
        if not self._closed:
            self._closed = True
            self.manager.close()


def _key_name(entry: Any) -> str:
    """One step of a tree path by its name alone: an attribute of the training state and the
    dict key orbax records for it read the same."""
    for field in ("key", "name", "idx"):
        if hasattr(entry, field):
            return str(getattr(entry, field))
    return str(entry)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {"/".join(map(_key_name, path)): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _layout_difference(saved: dict[str, tuple[int, ...]], wanted: dict[str, tuple[int, ...]]
                       ) -> str:
    """What keeps a checkpoint of layout ``saved`` from filling ``wanted`` ('' if nothing)."""
    missing = sorted(wanted.keys() - saved.keys())
    unexpected = sorted(saved.keys() - wanted.keys())
    reshaped = [f"{key} saved {saved[key]}, expected {wanted[key]}"
                for key in sorted(wanted.keys() & saved.keys()) if saved[key] != wanted[key]]
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
        [f"unexpected {', '.join(unexpected)}"] if unexpected else []) + reshaped
    return "; ".join(parts)


def save_params(path: str | Path, params: Any) -> str:
    """Write ``params`` atomically; returns the file's sha256 (hex) for ``load_params``."""
    data = serialization.to_bytes(params)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_params(path: str | Path, like: Any, sha256: str | None = None) -> Any:
    """Load parameters saved by ``save_params`` into the structure of ``like``; with
    ``sha256`` (what ``save_params`` returned), the file must be exactly the one written.

    Raises:
      CheckpointError: missing file, changed or corrupt bytes, or shapes that differ from
        ``like``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: parameter file not found")
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"{path}: contents differ from the sha256 recorded when the run "
                              "was written (damaged or replaced); train the run again")
    try:
        state = serialization.msgpack_restore(data)
    except Exception as error:  # msgpack raises several unrelated types
        raise CheckpointError(f"{path}: not a readable parameter file ({error})") from None
    expected = serialization.to_state_dict(like)
    mismatches = _compare_shapes(expected, state, "")
    if mismatches:
        raise CheckpointError(f"{path}: parameters do not match the model: "
                              + "; ".join(mismatches[:5]))
    return serialization.from_state_dict(like, state)


def _compare_shapes(expected: Any, found: Any, prefix: str) -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(found, dict):
            return [f"{prefix or '/'} is not a mapping"]
        problems = [f"{prefix}/{k} missing" for k in expected if k not in found]
        problems += [f"{prefix}/{k} unexpected" for k in found if k not in expected]
        for key in expected:
            if key in found:
                problems += _compare_shapes(expected[key], found[key], f"{prefix}/{key}")
        return problems
    shape = getattr(found, "shape", None)
    if shape != getattr(expected, "shape", None):
        return [f"{prefix} has shape {shape}, model expects {getattr(expected, 'shape', None)}"]
    return []

"""A run end to end: config -> data -> model -> training -> metrics, checkpoints and plots.

Run directory layout:

| file | what |
|---|---|
| ``training.json`` | the config and data of the training under way (written when it starts) |
| ``run.json`` | the finished run: config, data, every derived value (hidden size, input clip, normalisation, classes), the sha256 of ``params.msgpack`` |
| ``params.msgpack`` | selected parameters of every seed, stacked on a leading axis |
| ``metrics.json`` | test metrics (mean/min/max over seeds, per class, confusion), history |
| ``checkpoints/`` | latest full training state, for resuming an interrupted run |
| ``confusion.png``, ``history.png`` | plots |
| ``teacher/`` | with ``train.teacher_seeds``: the float run it was distilled from |

A folder belongs to one config and one dataset: a training resumes only when both match
(``train.epochs`` may grow, settings that only change how it runs may differ), otherwise it
is refused unless ``overwrite``. A lock keeps two trainings out of one folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lstmq import evaluate
from lstmq.batch_augment import make_spec_augment
from lstmq.budget import hidden_from_config
from lstmq.checkpoint import CheckpointError, TrainingCheckpoints, save_params
from lstmq.compilation import CompileClock, enable_persistent_cache
from lstmq.config import Config, config_to_dict
from lstmq.data import load_dataset
from lstmq.distill import teacher_targets
from lstmq.io import FolderLock, atomic_write_json, read_json
from lstmq.pipeline import PreparedData, SplitArrays, check_prepared_for, prepare_data
from lstmq.recipe import calibrate_input_clip
from lstmq.runs import (Derived, clip_differences, feature_differences, load_run, model_from_config,
                        record_checksum, source_digests)
from lstmq.train import Trainer, create_train_states, select_best

log = logging.getLogger("lstmq")
# Settings that change how a run executes, not what it computes: may differ on resume.
EXECUTION_KEYS = ("train.seed_threads", "train.seed_devices", "features.workers", "features.cache",
                  "data.path", "data.source", "data.cache_dir", "data.tfds_manual_dir")
RUN_FILES = ("run.json", "training.json", "params.msgpack", "metrics.json", "history.json",
             "confusion.png", "history.png")


class RunFolderError(CheckpointError):
    """A run folder holds another config's or another dataset's run."""


class TrainingDivergedError(RuntimeError):
    """The training loss stopped being a finite number."""


def derive(config: Config, data: PreparedData) -> Derived:
    clip = data.normalizer.input_clip or config.quant.input_clip or calibrate_input_clip(
        data.train.x, config.quant.input_percentile, data.train.lengths)
    hidden = hidden_from_config(config.model, config.budget, config.quant.weight_bits,
                                data.input_size, len(data.classes))
    digest = None
    if config.features.frontend == "integer":
        from lstmq.device import tables_digest  # pylint: disable=import-outside-toplevel
        from lstmq.frontend import make_tables  # pylint: disable=import-outside-toplevel

        digest = tables_digest(make_tables(config.features, data.info.sample_rate))
    return Derived(hidden=hidden, input_size=data.input_size, input_clip=clip,
                   normalizer=data.normalizer,
                   seeds=tuple(config.train.seed + s for s in range(config.train.seeds)),
                   classes=data.classes, sample_rate=data.info.sample_rate,
                   frontend_digest=digest)


def _initial_params(config: Config, derived: Derived, fingerprint: str) -> Any | None:
    """Stacked per-seed parameters of the run named by ``quant.init_from`` (fine-tuning).

    Seed ``s`` of this run starts from seed ``s`` of the source run, which must have read the
    same features and trained on this run's training clips (``fingerprint``: this run's data).
    """
    if not config.quant.init_from:
        return None
    source = load_run(config.quant.init_from)
    changed = feature_differences(source.config.features, config.features)
    if changed:
        raise CheckpointError(f"{config.quant.init_from}: cannot start this run "
                              f"(quant.init_from): it read other features "
                              f"({'; '.join(changed)})")
    other_clips = clip_differences(source, config, fingerprint)
    if other_clips:
        raise CheckpointError(f"{config.quant.init_from}: cannot start this run "
                              f"(quant.init_from): it trained on {'; '.join(other_clips)}, so "
                              "its training clips may be this run's validation or test clips")
    mine = (derived.hidden, config.model.layers, derived.input_size, derived.classes)
    theirs = (source.derived.hidden, source.config.model.layers, source.derived.input_size,
              source.derived.classes)
    if mine != theirs:
        raise CheckpointError(
            f"{config.quant.init_from}: its model (hidden {theirs[0]}, {theirs[1]} layers, "
            f"{theirs[2]} inputs, classes {list(theirs[3])}) does not match this run's "
            f"(hidden {mine[0]}, {mine[1]} layers, {mine[2]} inputs, classes {list(mine[3])})")
    seeds = len(derived.seeds)
    if len(source.derived.seeds) < seeds:
        raise CheckpointError(f"{config.quant.init_from}: has {len(source.derived.seeds)} "
                              f"seed(s), this run trains {seeds}")
    return jax.tree_util.tree_map(lambda p: p[:seeds], source.params)


def _flat(values: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, fields in values.items()
            for key, value in fields.items()}


RUN_FOLDER_KEYS = ("quant.init_from", "train.distill_from")  # name a run folder


def _same_folder(a: Any, b: Any) -> bool:
    return (isinstance(a, str) and isinstance(b, str) and Path(a).is_dir() and Path(b).is_dir()
            and os.path.samefile(a, b))


def config_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Keys whose values keep ``wanted`` from resuming a run recorded with ``recorded``."""
    old, new = _flat(recorded), _flat(wanted)
    changed = []
    for key in sorted(set(old) | set(new)):
        if key in EXECUTION_KEYS or old.get(key) == new.get(key):
            continue
        if key in RUN_FOLDER_KEYS and _same_folder(old.get(key), new.get(key)):
            continue  # one run folder, named by another path
        if key == "train.epochs" and isinstance(old.get(key), int) and new[key] >= old[key]:
            continue  # more epochs continue from the last checkpoint
        changed.append(f"{key} ({old.get(key)!r} -> {new.get(key)!r})")
    return changed


def source_changes(recorded: dict[str, Any], sources: dict[str, str | None]) -> list[str]:
    """The runs named by ``quant.init_from`` / ``train.distill_from`` whose parameters are no
    longer those a recorded run started from or learned from (a record written before the
    sources were recorded is not checked)."""
    if "sources" not in recorded:
        return []
    config = recorded.get("config", {})
    return [f"{key} {config.get(key.split('.')[0], {}).get(key.split('.')[1])} as it was "
            f"(params sha256 {str(recorded['sources'].get(key))[:12]}, now {str(digest)[:12]}): "
            "it has been trained again since" for key, digest in sources.items()
            if recorded["sources"].get(key) != digest]


def claim_folder(workdir: Path, record: dict[str, Any], overwrite: bool) -> None:
    """Make sure ``workdir`` may hold this run; with ``overwrite``, clear an old one.

    Raises:
      RunFolderError: the folder holds a run of another config or dataset, or checkpoints
        of unknown origin, and ``overwrite`` is false.
    """
    found = next((workdir / name for name in ("training.json", "run.json")
                  if (workdir / name).is_file()), None)
    problem = None
    if found is not None:
        old = read_json(found)
        changed = config_differences(old.get("config", {}), record["config"])
        if changed:
            problem = f"was trained with another config (differs in {', '.join(changed)})"
        elif old.get("data", {}).get("fingerprint") != record["data"]["fingerprint"]:
            problem = (f"was trained on other data (fingerprint "
                       f"{old.get('data', {}).get('fingerprint')}, now {record['data']['fingerprint']})")
        elif changed_sources := source_changes(old, record["sources"]):
            problem = "started from or learned from " + "; ".join(changed_sources)
    elif (workdir / "checkpoints").exists() or (workdir / "params.msgpack").exists():
        problem = "holds checkpoints or parameters of an unknown run"
    if problem is None:
        return
    if not overwrite:
        raise RunFolderError(f"{workdir}: {problem}; choose another --out or remove the folder "
                             "(lstmq train --overwrite, train_and_evaluate(..., overwrite=True), "
                             "starts it afresh)")
    log.warning("%s: %s; overwriting it", workdir, problem)
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    for name in RUN_FILES:
        (workdir / name).unlink(missing_ok=True)


def train_and_evaluate(config: Config, workdir: str | Path, data: PreparedData | None = None,
                       progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Train ``config.train.seeds`` seeds together, select by validation, test, write outputs.

    Resumes an interrupted run of the same config and data from its last checkpoint.

    Raises:
      RunFolderError: ``workdir`` holds another run (see ``claim_folder``).
      lstmq.io.FolderLockedError: another process trains into ``workdir``.
      TrainingDivergedError: the loss became NaN or infinite (nothing of the epoch is kept).
      CheckpointError: the teacher (``train.teacher_seeds`` or ``train.distill_from``) is
        missing or reads other features (``teacher_folder``, ``lstmq.distill.check_teacher``).
    """
    workdir = Path(workdir)
    enable_persistent_cache()
    with FolderLock(workdir, remove_temporary=True):
        if data is None:
            data = prepare_data(config, progress=progress)
        check_prepared_for(data, config)
        derived = derive(config, data)
        record = {"config": config_to_dict(config), "derived": derived.to_dict(),
                  "data": {**data.info.to_dict(), "train": len(data.train),
                           "val": len(data.val), "test": len(data.test)},
                  "sources": source_digests(config)}
        claim_folder(workdir, record, overwrite)
        if config.train.teacher_seeds > 0:
            teacher = teacher_folder(config, workdir, data, progress, overwrite)
            config = dataclasses.replace(config, train=dataclasses.replace(
                config.train, distill_from=str(teacher)))  # for _train; the record keeps the stage
        return _train(config, workdir, data, derived, record, progress)


def train_or_reuse(config: Config, workdir: str | Path, data: PreparedData | None = None,
                   progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """``train_and_evaluate``, skipped when ``workdir`` holds this config's finished run.

    An interrupted run resumes from its checkpoint; a finished run of another config or
    data is refused (``RunFolderError``).
    """
    workdir = Path(workdir)
    if (workdir / "metrics.json").is_file() and (workdir / "run.json").is_file():
        record, metrics = read_json(workdir / "run.json"), read_json(workdir / "metrics.json")
        same_config = not config_differences(record.get("config", {}), config_to_dict(config)) \
            and record["config"]["train"]["epochs"] == config.train.epochs
        if same_config and metrics.get("params_sha256") == record.get("params_sha256") \
                and not source_changes(record, source_digests(config)):
            fingerprint = (data if data is not None
                           else load_dataset(config.data, progress=progress)).fingerprint
            if record.get("data", {}).get("fingerprint") == fingerprint:
                return metrics
    return train_and_evaluate(config, workdir, data=data, progress=progress, overwrite=overwrite)


TEACHER_FOLDER = "teacher"
TEACHER_SEED_OFFSET = 1000  # the teacher's seeds never coincide with its student's


def teacher_config(config: Config) -> Config:
    """The float run that teaches ``config`` (``train.teacher_seeds`` > 0): the same data,
    features, model and schedule, float, ``teacher_seeds`` seeds from ``seed +
    TEACHER_SEED_OFFSET``, no teacher of its own."""
    train = dataclasses.replace(config.train, seeds=config.train.teacher_seeds, teacher_seeds=0,
                                seed=config.train.seed + TEACHER_SEED_OFFSET, distill_from=None,
                                distill_source="rows")
    quant = dataclasses.replace(config.quant, mode="float", init_from=None)
    return dataclasses.replace(config, train=train, quant=quant)


def teacher_folder(config: Config, workdir: str | Path, data: PreparedData,
                   progress: bool = True, overwrite: bool = False) -> Path:
    """The finished teacher of a run with ``train.teacher_seeds``: trained (or resumed, or
    reused) in ``<workdir>/teacher``; for a run fine-tuned from another (``quant.init_from``),
    that run's teacher, so both stages learn from one teacher.

    Raises:
      CheckpointError: the run it fine-tunes has no finished teacher.
    """
    if config.quant.init_from:
        folder = Path(config.quant.init_from) / TEACHER_FOLDER
        if not (folder / "run.json").is_file():
            raise CheckpointError(
                f"{folder}: no finished teacher; train.teacher_seeds with quant.init_from "
                f"distills from the teacher of the run it fine-tunes (train "
                f"{config.quant.init_from} with train.teacher_seeds first, or set it to 0)")
        return folder
    folder = Path(workdir) / TEACHER_FOLDER
    log.info("teacher stage: %d float seed(s) in %s", config.train.teacher_seeds, folder)
    train_or_reuse(teacher_config(config), folder, data, progress, overwrite)
    return folder


def _train(config: Config, workdir: Path, data: PreparedData, derived: Derived,
           record: dict[str, Any], progress: bool) -> dict[str, Any]:
    log.info("hidden size %d (%s), input clip %.3f, %d classes", derived.hidden,
             "solved from budget" if config.model.hidden == "auto" else "configured",
             derived.input_clip, derived.num_classes)
    model = model_from_config(config, derived)
    soft = None
    if config.train.distill_from:
        soft = teacher_targets(config.train.distill_from, config, derived, data.train,
                               record["data"]["fingerprint"])
        log.info("distilling from %s (weight %.2f, temperature %.1f)", config.train.distill_from,
                 config.train.distill_weight, config.train.distill_temperature)
    trainer = Trainer(config, model, data.train, augment=make_spec_augment(config.augment),
                      soft_targets=soft)
    states = create_train_states(model, trainer.tx, config.train.seed, config.train.seeds,
                                 derived.input_size,
                                 _initial_params(config, derived, record["data"]["fingerprint"]),
                                 ema=config.train.ema_decay > 0, adversary=trainer.adversary)
    states = trainer.place(states)  # on the seed mesh with train.seed_devices
    seeds = len(derived.seeds)
    best = {"params": jax.tree_util.tree_map(jnp.copy, states.eval_params()),  # donated states
            "val": np.full(seeds, -1.0), "epoch": np.zeros(seeds, int)}
    history: list[dict[str, Any]] = []
    checkpoints = TrainingCheckpoints(workdir / "checkpoints")
    start_epoch = 0
    latest = checkpoints.latest_epoch()
    if latest is not None:
        restored = checkpoints.restore(latest, {"states": states, "best": best})
        states, best = restored["states"], restored["best"]
        history = read_json(workdir / "history.json")[:latest]
        start_epoch = latest
        log.info("%s: resumed from epoch %d of %d", workdir, latest, config.train.epochs)
    elif (workdir / "run.json").is_file():  # a finished run whose checkpoints are gone
        log.warning("%s: no checkpoint in %s to continue the finished run from; training "
                    "from the start", workdir, workdir / "checkpoints")
    atomic_write_json(workdir / "training.json", record)  # only once the folder is known good

    train_seconds = sum(row["seconds"] for row in history)
    clock = CompileClock()
    if start_epoch < config.train.epochs:
        log.info("compiling the training step (the first epoch includes it; a second run of "
                 "these shapes reads it from the compilation cache)")
    try:  # pending checkpoint writes end before anything leaves (Ctrl-C, a diverged loss)
        bar = tqdm(range(start_epoch, config.train.epochs), disable=not progress,
                   desc=f"train h={derived.hidden} x{seeds} seeds", initial=start_epoch,
                   total=config.train.epochs)
        for epoch in bar:
            start = time.perf_counter()
            states, metrics = trainer.run_epoch(states, epoch)
            jax.block_until_ready(states.params)
            seconds = time.perf_counter() - start
            if not np.all(np.isfinite(metrics["loss"])):
                bad = [s for s, loss in zip(derived.seeds, metrics["loss"])
                       if not np.isfinite(loss)]
                raise TrainingDivergedError(
                    f"{workdir}: training loss is not finite in epoch {epoch + 1} (seed(s) {bad}); "
                    f"lower train.learning_rate ({config.train.learning_rate}) or check the data. "
                    f"The checkpoint of epoch {epoch} is kept.")
            train_seconds += seconds
            row = {"epoch": epoch + 1, "seconds": seconds,
                   "train_loss": metrics["loss"].tolist(),
                   "train_accuracy": metrics["accuracy"].tolist()}
            if "speaker_accuracy" in metrics:
                row["train_speaker_accuracy"] = metrics["speaker_accuracy"].tolist()
            if len(data.val):
                val_acc = _accuracy(trainer.predict(states.eval_params(), data.val),
                                    data.val.labels)
                row["val_accuracy"] = val_acc.tolist()
                improved = val_acc >= best["val"] if config.train.select == "best_val" \
                    else np.ones(seeds, bool)
            else:
                improved = np.ones(seeds, bool)
                val_acc = best["val"]
            best = {"params": select_best(best["params"], states.eval_params(), improved),
                    "val": np.where(improved, val_acc, best["val"]),
                    "epoch": np.where(improved, epoch + 1, best["epoch"])}
            if epoch == start_epoch:
                row["compile_seconds"] = clock.seconds
                log.info("epoch %d: %.1f s training; tracing and compiling the training and "
                         "validation steps took %.1f s (%d program(s) read from the compilation "
                         "cache)", epoch + 1, seconds, clock.seconds, clock.cache_hits)
            history.append(row)
            atomic_write_json(workdir / "history.json", history)
            checkpoints.save(epoch + 1, {"states": states, "best": best})
            bar.set_postfix(loss=f"{np.mean(metrics['loss']):.3f}",
                            train=f"{np.mean(metrics['accuracy']):.3f}",
                            val=f"{np.mean(val_acc):.3f}" if len(data.val) else "-")
    finally:
        checkpoints.close()

    params = best["params"]
    logits = trainer.predict(params, data.test)
    result = test_report(logits, data.test, derived.seeds, derived.classes)
    result.update({
        "params": int(sum(x[0].size for x in jax.tree_util.tree_leaves(params))),
        "hidden": derived.hidden,
        "epochs": config.train.epochs,
        "selected_epoch": best["epoch"].tolist(),
        "val_accuracy": [float(v) if v >= 0 else None for v in best["val"]],
        "train_seconds": train_seconds,
        # the first epoch compiles every batch shape; later epochs show the throughput
        "first_epoch_seconds": history[0]["seconds"] if history else 0.0,
        "seconds_per_epoch": float(np.median([r["seconds"] for r in history[1:]]))
        if len(history) > 1 else train_seconds / max(1, len(history)),
        "history": history,
        "config": record["config"],
        "derived": record["derived"],
        "data": record["data"],
    })
    # run.json records the parameters' digest (load_run checks it), and so does metrics.json,
    # written last: a reused run's metrics belong to its parameters.
    digest = save_params(workdir / "params.msgpack", params)
    final = {**record, "params_sha256": digest}
    atomic_write_json(workdir / "run.json", {**final, "record_sha256": record_checksum(final)})
    result["params_sha256"] = digest
    write_run_outputs(workdir, result)
    return result


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.mean(np.argmax(logits, -1) == labels[None, :], axis=-1)


def test_report(logits: np.ndarray, split: SplitArrays, seeds: tuple[int, ...],
                classes: tuple[str, ...]) -> dict[str, Any]:
    """Metrics of ``<seeds, n, classes>`` logits: per seed, pooled over seeds, per speaker."""
    if logits.shape[-1] != len(classes):
        raise ValueError(f"logits have {logits.shape[-1]} classes, the run has {len(classes)}")
    if len(split) == 0:
        raise ValueError("no clips to evaluate")
    predictions = np.argmax(logits, -1)
    per_seed = [evaluate.classification_metrics(split.labels, p, classes) for p in predictions]
    pooled = evaluate.classification_metrics(np.tile(split.labels, len(predictions)),
                                             predictions.reshape(-1), classes)
    accuracies = [m["accuracy"] for m in per_seed]
    return {
        "test_accuracy": float(np.mean(accuracies)),
        "test_accuracy_summary": evaluate.summarize(accuracies),
        "test_accuracy_per_seed": dict(zip(map(str, seeds), accuracies)),
        "classes": list(classes),
        "per_class": pooled["per_class"],  # pooled over seeds
        "confusion": pooled["confusion"],
        "per_speaker": evaluate.per_group_accuracy(
            np.tile(split.labels, len(predictions)), predictions.reshape(-1),
            np.tile(split.speakers, len(predictions))),
        "test_count": len(split),
    }


def write_run_outputs(workdir: Path, result: dict[str, Any]) -> None:
    """The plots, then ``metrics.json``: a run with metrics has its plots."""
    evaluate.plot_confusion(result["confusion"], workdir / "confusion.png",
                            f"test accuracy {result['test_accuracy'] * 100:.2f}%",
                            result["classes"])
    if result.get("history"):
        evaluate.plot_history(result["history"], workdir / "history.png")
    atomic_write_json(workdir / "metrics.json", result)

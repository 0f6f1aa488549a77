"""A run end to end: config -> data -> model -> training -> metrics, checkpoints and plots.

Run directory layout:

| file | what |
|---|---|
| ``run.json`` | the config and every derived value (hidden size, input clip, normalisation) |
| ``params.msgpack`` | selected parameters of every seed, stacked on a leading axis |
| ``metrics.json`` | test metrics (mean/min/max over seeds, per class, confusion), history |
| ``checkpoints/`` | latest full training state, for resuming an interrupted run |
| ``confusion.png``, ``history.png`` | plots |
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lstmq import evaluate
from lstmq.augment import make_spec_augment
from lstmq.budget import hidden_from_config
from lstmq.checkpoint import CheckpointError, TrainingCheckpoints, load_params, save_params
from lstmq.config import Config, config_from_dict, config_to_dict
from lstmq.features import Normalizer
from lstmq.io import atomic_write_json, read_json
from lstmq.model import LSTMClassifier
from lstmq.pipeline import PreparedData, SplitArrays, prepare_data
from lstmq.quant import QATNumerics, calibrate_input_clip
from lstmq.train import Trainer, create_train_states, predict_split, select_best

log = logging.getLogger("lstmq")


@dataclasses.dataclass(frozen=True)
class Derived:
    """Values computed from a config and the training data (never written into the config)."""

    hidden: int
    input_size: int
    input_clip: float
    normalizer: Normalizer
    seeds: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "input_size": self.input_size,
                "input_clip": self.input_clip, "normalizer": self.normalizer.to_dict(),
                "seeds": list(self.seeds)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Derived":
        return cls(hidden=int(values["hidden"]), input_size=int(values["input_size"]),
                   input_clip=float(values["input_clip"]),
                   normalizer=Normalizer.from_dict(values["normalizer"]),
                   seeds=tuple(values["seeds"]))


def model_from_config(config: Config, derived: Derived, mode: str | None = None,
                      **numerics_options) -> LSTMClassifier:
    """The one place where config fields become model constructor arguments."""
    mode = mode or config.quant.mode
    numerics = None
    if mode == "qat":
        numerics = QATNumerics(input_clip=derived.input_clip,
                               weight_bits=config.quant.weight_bits, **numerics_options)
    return LSTMClassifier(hidden=derived.hidden, layers=config.model.layers,
                          num_classes=config.model.num_classes, dropout=config.model.dropout,
                          numerics=numerics, readout=config.model.readout)


def derive(config: Config, data: PreparedData) -> Derived:
    train_frames = [data.train.x[i, :n] for i, n in enumerate(data.train.lengths)]
    clip = config.quant.input_clip or calibrate_input_clip(train_frames,
                                                           config.quant.input_percentile)
    hidden = hidden_from_config(config.model, config.budget, data.input_size)
    return Derived(hidden=hidden, input_size=data.input_size, input_clip=clip,
                   normalizer=data.normalizer,
                   seeds=tuple(config.train.seed + s for s in range(config.train.seeds)))


def _initial_params(config: Config, derived: Derived) -> Any | None:
    """Stacked per-seed parameters of the run named by ``quant.init_from`` (fine-tuning).

    Seed ``s`` of this run starts from seed ``s`` of the source run.
    """
    if not config.quant.init_from:
        return None
    source = load_run(config.quant.init_from)
    if source.derived.hidden != derived.hidden or source.config.model.layers != config.model.layers:
        raise CheckpointError(
            f"{config.quant.init_from}: its model (hidden {source.derived.hidden}, "
            f"{source.config.model.layers} layers) does not match this run's "
            f"(hidden {derived.hidden}, {config.model.layers} layers)")
    seeds = len(derived.seeds)
    if len(source.derived.seeds) < seeds:
        raise CheckpointError(f"{config.quant.init_from}: has {len(source.derived.seeds)} "
                              f"seed(s), this run trains {seeds}")
    return jax.tree_util.tree_map(lambda p: p[:seeds], source.params)


def train_and_evaluate(config: Config, workdir: str | Path, data: PreparedData | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Train ``config.train.seeds`` seeds together, select by validation, test, write outputs."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = data or prepare_data(config, progress=progress)
    derived = derive(config, data)
    log.info("hidden size %d (%s), input clip %.3f", derived.hidden,
             "solved from budget" if config.model.hidden == "auto" else "configured",
             derived.input_clip)
    run_info = {"config": config_to_dict(config), "derived": derived.to_dict(),
                "data": {"source": data.source, "fingerprint": data.fingerprint,
                         "train": len(data.train), "val": len(data.val), "test": len(data.test)}}
    atomic_write_json(workdir / "run.json", run_info)

    model = model_from_config(config, derived)
    trainer = Trainer(config, model, data.train, augment=make_spec_augment(config.augment))
    states = create_train_states(model, trainer.tx, config.train.seed, config.train.seeds,
                                 derived.input_size, _initial_params(config, derived),
                                 ema=config.train.ema_decay > 0)
    seeds = len(derived.seeds)
    best = {"params": jax.tree_util.tree_map(jnp.copy, states.eval_params()),  # donated states
            "val": np.full(seeds, -1.0), "epoch": np.zeros(seeds, int)}
    history: list[dict[str, Any]] = []
    checkpoints = TrainingCheckpoints(workdir / "checkpoints")
    start_epoch = 0
    latest = checkpoints.latest_epoch()
    if latest is not None and latest > config.train.epochs:
        raise CheckpointError(f"{workdir}: holds a run trained for {latest} epochs, more than "
                              f"train.epochs={config.train.epochs}; use another --out")
    if latest is not None:
        restored = checkpoints.restore(latest, {"states": states, "best": best})
        states, best = restored["states"], restored["best"]
        history = read_json(workdir / "history.json")[:latest]
        start_epoch = latest
        log.info("resumed from epoch %d", latest)

    train_seconds = sum(row["seconds"] for row in history)
    bar = tqdm(range(start_epoch, config.train.epochs), disable=not progress,
               desc=f"train h={derived.hidden} x{seeds} seeds", initial=start_epoch,
               total=config.train.epochs)
    for epoch in bar:
        start = time.perf_counter()
        states, metrics = trainer.run_epoch(states, epoch)
        jax.block_until_ready(states.params)
        seconds = time.perf_counter() - start
        train_seconds += seconds
        row = {"epoch": epoch + 1, "seconds": seconds,
               "train_loss": metrics["loss"].tolist(),
               "train_accuracy": metrics["accuracy"].tolist()}
        if len(data.val):
            val_acc = _accuracy(trainer.predict(states.eval_params(), data.val), data.val.labels)
            row["val_accuracy"] = val_acc.tolist()
            improved = val_acc >= best["val"] if config.train.select == "best_val" \
                else np.ones(seeds, bool)
        else:
            improved = np.ones(seeds, bool)
            val_acc = np.full(seeds, np.nan)
        best = {"params": select_best(best["params"], states.eval_params(), improved),
                "val": np.where(improved, val_acc, best["val"]),
                "epoch": np.where(improved, epoch + 1, best["epoch"])}
        history.append(row)
        atomic_write_json(workdir / "history.json", history)
        checkpoints.save(epoch + 1, {"states": states, "best": best})
        bar.set_postfix(loss=f"{np.mean(metrics['loss']):.3f}",
                        train=f"{np.mean(metrics['accuracy']):.3f}",
                        val=f"{np.mean(val_acc):.3f}" if len(data.val) else "-")
    checkpoints.close()

    params = best["params"]
    save_params(workdir / "params.msgpack", params)
    logits = trainer.predict(params, data.test)
    result = test_report(logits, data.test, derived.seeds)
    result.update({
        "params": int(sum(x[0].size for x in jax.tree_util.tree_leaves(params))),
        "hidden": derived.hidden,
        "epochs": config.train.epochs,
        "selected_epoch": best["epoch"].tolist(),
        "val_accuracy": best["val"].tolist(),
        "train_seconds": train_seconds,
        # the first epoch compiles every batch shape; later epochs show the throughput
        "first_epoch_seconds": history[0]["seconds"] if history else 0.0,
        "seconds_per_epoch": float(np.median([r["seconds"] for r in history[1:]]))
        if len(history) > 1 else train_seconds / max(1, len(history)),
        "history": history,
        "config": config_to_dict(config),
        "derived": derived.to_dict(),
    })
    write_run_outputs(workdir, result)
    return result


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.mean(np.argmax(logits, -1) == labels[None, :], axis=-1)


def test_report(logits: np.ndarray, split: SplitArrays, seeds: tuple[int, ...]) -> dict[str, Any]:
    """Metrics of ``<seeds, n, classes>`` logits: per seed, pooled over seeds, per speaker."""
    predictions = np.argmax(logits, -1)
    per_seed = [evaluate.classification_metrics(split.labels, p) for p in predictions]
    pooled = evaluate.classification_metrics(np.tile(split.labels, len(predictions)),
                                             predictions.reshape(-1))
    accuracies = [m["accuracy"] for m in per_seed]
    return {
        "test_accuracy": float(np.mean(accuracies)),
        "test_accuracy_summary": evaluate.summarize(accuracies),
        "test_accuracy_per_seed": dict(zip(map(str, seeds), accuracies)),
        "per_class": pooled["per_class"],  # pooled over seeds
        "confusion": pooled["confusion"],
        "per_speaker": evaluate.per_group_accuracy(
            np.tile(split.labels, len(predictions)), predictions.reshape(-1),
            np.tile(split.speakers, len(predictions))),
        "test_count": len(split),
    }


def write_run_outputs(workdir: Path, result: dict[str, Any]) -> None:
    atomic_write_json(workdir / "metrics.json", result)
    evaluate.plot_confusion(result["confusion"], workdir / "confusion.png",
                            f"test accuracy {result['test_accuracy'] * 100:.2f}%")
    if result.get("history"):
        evaluate.plot_history(result["history"], workdir / "history.png")


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run loaded from disk."""

    directory: Path
    config: Config
    derived: Derived
    params: Any  # stacked over seeds

    def model(self, mode: str | None = None, **numerics_options) -> LSTMClassifier:
        return model_from_config(self.config, self.derived, mode, **numerics_options)


def load_run(directory: str | Path) -> Run:
    """Load ``run.json`` and ``params.msgpack``; mismatches raise CheckpointError."""
    directory = Path(directory)
    if not (directory / "run.json").is_file():
        raise CheckpointError(f"{directory}: not a run directory (no run.json)")
    info = read_json(directory / "run.json")
    config = config_from_dict(info["config"])
    derived = Derived.from_dict(info["derived"])
    model = model_from_config(config, derived)
    like = jax.eval_shape(lambda: create_train_states(
        model, _dummy_tx(), 0, len(derived.seeds), derived.input_size).params)
    params = load_params(directory / "params.msgpack", like)
    return Run(directory, config, derived, params)


def _dummy_tx():
    import optax

    return optax.identity()


def predict_run(run: Run, split: SplitArrays, mode: str | None = None,
                **numerics_options) -> np.ndarray:
    """Logits ``<seeds, n, classes>`` of a loaded run on any prepared split.

    ``mode="qat"`` on a float run is post-training quantization: static int8 (the default)
    or weight-only with ``activations=False``.
    """
    model = model_from_config(run.config, run.derived, mode, **numerics_options)
    predict = jax.jit(jax.vmap(lambda p, x, l: model.apply({"params": p}, x, l),
                               in_axes=(0, None, None)))
    return predict_split(predict, run.params, split, 512, run.config.train.bucket_frames)


def evaluate_run(directory: str | Path, data: str | Path | None = None, integer: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Re-evaluate a trained run on its own test split or on any folder/archive of WAVs."""
    from lstmq.data import load_recordings
    from lstmq.pipeline import prepare_recordings

    run = load_run(directory)
    if data is None:
        prepared = prepare_data(run.config, progress=progress)
        split, source = prepared.test, f"{prepared.source} ({run.config.data.split} test split)"
    else:
        dataset = load_recordings(data, sample_rate=run.config.data.sample_rate,
                                  resample=True, require_all_classes=False)
        split = prepare_recordings(dataset, run.config, run.derived.normalizer, progress)
        source = dataset.source
    if integer:
        from lstmq.integer import convert_run, predict_int_split

        logits = predict_int_split(convert_run(run), split)
        path = "integer"
    else:
        logits = predict_run(run, split)
        path = run.config.quant.mode
    report = test_report(logits, split, run.derived.seeds)
    return {"run": str(directory), "data": source, "path": path, **report}

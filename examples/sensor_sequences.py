"""Non-audio sequences through QAT, integer conversion, ``predict_int`` and the audit.

    python examples/sensor_sequences.py --out runs/sensors

Synthetic 6-axis motion traces (3 accelerometer + 3 gyroscope channels, 20-60 samples each)
of four activities (rest, walk, run, jump) stand in for your own sensor data: any
``x <float32>[N, T, F]`` with real lengths and labels trains the same way
(``lstmq.train_arrays``). The float model is fine-tuned quantization-aware, converted to
int8/int16/int32 arithmetic, checked float-free, and its bytes are counted. About 30 s on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

import lstmq
from lstmq.checkpoint import CheckpointError  # a run folder of other settings (RunFolderError)
from lstmq.io import FolderLockedError

ACTIVITIES = ("rest", "walk", "run", "jump")


def synthetic_traces(count: int = 480, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x <float32>[N, 60, 6], lengths <int32>[N], labels <str>[N])."""
    rng = np.random.default_rng(seed)
    frames = 60
    x = np.zeros((count, frames, 6), np.float32)
    lengths = rng.integers(20, frames + 1, count).astype(np.int32)
    labels = rng.integers(0, len(ACTIVITIES), count)
    rate = {0: 0.0, 1: 1.8, 2: 3.0, 3: 1.0}  # step frequency (Hz) at 20 samples/s
    for i, (n, a) in enumerate(zip(lengths, labels)):
        t = np.arange(n) / 20.0
        phase = rng.uniform(0, 2 * np.pi)
        gait = np.sin(2 * np.pi * rate[a] * t + phase)
        x[i, :n, 2] = 1.0 + (0.2 + 0.3 * (a == 2)) * gait  # vertical acceleration
        x[i, :n, 0] = 0.3 * gait * (a in (1, 2))
        if a == 3:  # jumps: sharp peaks
            x[i, :n, 2] += 2.0 * (np.sin(2 * np.pi * t + phase) > 0.95)
        x[i, :n, 3:] = 0.5 * np.gradient(x[i, :n, :3], axis=0)
        x[i, :n] += 0.05 * rng.standard_normal((n, 6))
    return x, lengths, np.array([ACTIVITIES[a] for a in labels])


def run(out: Path, epochs: int = 10, qat_epochs: int = 4, count: int = 480) -> dict:
    x, lengths, labels = synthetic_traces(count)
    settings = ["model.hidden=16", "model.layers=1", "model.dropout=0.1", "train.seeds=1",
                "train.batch_size=16", "model.readout=mean", "features.normalize=global", "data.val_fraction=0.15"]
    config = lstmq.load_config(overrides=[*settings, f"train.epochs={epochs}"])
    float_run, float_metrics = lstmq.train_arrays(x, lengths, labels, config, out / "float",
                                                  classes=ACTIVITIES)
    qat_config = lstmq.load_config(overrides=[
        *settings, *lstmq.finetune_overrides(out / "float", epochs=qat_epochs)])
    qat_run, qat_metrics = lstmq.train_arrays(x, lengths, labels, qat_config, out / "qat",
                                              classes=ACTIVITIES)
    data = lstmq.prepare_arrays(x, lengths, labels, qat_config, classes=ACTIVITIES)
    integer = lstmq.predict_path(qat_run, data.test, "qat-integer")[0]
    simulated = lstmq.predict_path(qat_run, data.test, "qat")[0]
    agreement = float(np.mean(np.argmax(integer, -1) == np.argmax(simulated, -1)))
    accuracy = float(np.mean(np.argmax(integer, -1) == data.test.labels))
    model = lstmq.integer_models(qat_run)[0]
    audit = lstmq.audit_float_free(lstmq.predict_int, model,
                                   lstmq.quantize_input(model, data.test.x[:4]),
                                   data.test.lengths[:4])
    size = lstmq.count_bytes(jax.tree_util.tree_map(lambda p: p[0], qat_run.params),
                             lstmq.Precision(qat_run.config.quant.weight_bits))
    print(f"classes {list(qat_run.classes)}; float test {float_metrics['test_accuracy'] * 100:.1f}%, "
          f"QAT {qat_metrics['test_accuracy'] * 100:.1f}%, integer {accuracy * 100:.1f}% "
          f"({agreement * 100:.1f}% of predictions equal to QAT); {size.total:,} bytes at int8; "
          f"predict_int float-free ({audit.num_equations} equations)")
    return {"float_accuracy": float_metrics["test_accuracy"], "integer_accuracy": accuracy,
            "agreement": agreement, "bytes": size.total, "classes": list(qat_run.classes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="result folder")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--qat-epochs", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        run(args.out, args.epochs, args.qat_epochs)
    except (lstmq.DataError, lstmq.ConfigError, CheckpointError, FolderLockedError) as error:
        print(f"error: {error}", file=sys.stderr)  # e.g. --out holding runs of other settings
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Your own folder of labelled WAVs to an exported integer model, in a few calls.

    python examples/own_audio_to_integer_model.py --data my_words/ --out runs/my_words
    python examples/own_audio_to_integer_model.py --demo --out runs/demo   (synthetic words)

``--data`` is any layout lstmq reads (docs/data.md): ``root/<label>/*.wav`` folders (with
Speech Commands' lists, if present), a CSV/TSV manifest, FSDD names, or an archive of one.
The script trains a float model whose hidden size fits a 36,864-byte budget at int8,
fine-tunes it quantization-aware, converts it to the integer model, proves the integer
model float-free, exports it (artifact + C header) and labels a few clips with the artifact.
About 40 s on 2 CPU cores with ``--demo``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile

import lstmq
from lstmq.checkpoint import CheckpointError  # a run folder of other settings (RunFolderError)
from lstmq.io import FolderLockedError

DEMO_WORDS = ("go", "stop", "left", "right")


def write_demo_data(root: Path, sample_rate: int = 16000) -> Path:
    """Four 'words' (chirps of different pitch and sweep) by four 'speakers', 16 kHz."""
    rng = np.random.default_rng(0)
    for w, word in enumerate(DEMO_WORDS):
        for speaker in range(4):
            for take in range(6):
                t = np.arange(int(sample_rate * rng.uniform(0.25, 0.4))) / sample_rate
                pitch = 220 * 2 ** (w / 2 + speaker / 12)
                wave = 0.4 * np.sin(2 * np.pi * (pitch + 400 * (w % 2) * t) * t)
                wave += 0.02 * rng.standard_normal(t.size)
                path = root / word / f"spk{speaker}_nohash_{take}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, (wave * 32767).astype(np.int16), sample_rate)
    return root


def run(data: Path, out: Path, epochs: int = 12, qat_epochs: int = 4) -> dict:
    settings = [f"data.path={data}", "model.hidden=auto", "model.layers=1",
                "quant.weight_bits=8", "budget.bytes=36864", "train.seeds=1",
                "train.batch_size=16", "model.dropout=0.1"]
    float_config = lstmq.load_config(overrides=[*settings, f"train.epochs={epochs}"])
    data_arrays = lstmq.prepare_data(float_config, progress=False)
    print(f"{data_arrays.source}: classes {list(data_arrays.classes)}, "
          f"{len(data_arrays.train)} train / {len(data_arrays.val)} val / "
          f"{len(data_arrays.test)} test clips")
    float_metrics = lstmq.train_and_evaluate(float_config, out / "float", data_arrays,
                                             progress=False)
    qat_config = lstmq.load_config(overrides=[
        *settings, *lstmq.finetune_overrides(out / "float", epochs=qat_epochs)])
    lstmq.train_and_evaluate(qat_config, out / "qat", data_arrays, progress=False)

    run_ = lstmq.load_run(out / "qat")
    integer = lstmq.predict_path(run_, data_arrays.test, "qat-integer")
    accuracy = float(np.mean(np.argmax(integer[0], -1) == data_arrays.test.labels))
    model = lstmq.integer_models(run_)[0]
    x = lstmq.quantize_input(model, data_arrays.test.x[:2])
    audit = lstmq.audit_float_free(lstmq.predict_int, model, x, data_arrays.test.lengths[:2])
    report = lstmq.export_run(out / "qat", out / "model.lstmqz", c_header=out / "model.h")
    print(f"hidden {run_.derived.hidden}: float test {float_metrics['test_accuracy'] * 100:.1f}%, "
          f"integer test {accuracy * 100:.1f}%; predict_int float-free "
          f"({audit.num_equations} equations, dtypes {sorted(audit.dtypes)})")
    print(report.summary())

    from lstmq.inference import artifact_predictor, format_predictions, predict_files

    first = sorted(p for p in Path(data).rglob("*.wav"))[:3] if Path(data).is_dir() else []
    if first:
        print(format_predictions(predict_files(artifact_predictor(out / "model.lstmqz"), first)))
    return {"classes": list(run_.classes), "hidden": run_.derived.hidden,
            "float_accuracy": float_metrics["test_accuracy"], "integer_accuracy": accuracy,
            "param_bytes": report.param_bytes, "artifact": str(report.path)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="your labelled recordings")
    parser.add_argument("--demo", action="store_true", help="write synthetic words and use them")
    parser.add_argument("--out", type=Path, required=True, help="result folder")
    parser.add_argument("--epochs", type=int, default=12, help="float epochs")
    parser.add_argument("--qat-epochs", type=int, default=4, help="QAT fine-tuning epochs")
    args = parser.parse_args(argv)
    if args.demo == (args.data is not None):
        parser.error("give --data PATH or --demo")
    data = write_demo_data(args.out / "demo_data") if args.demo else args.data
    try:
        run(data, args.out, args.epochs, args.qat_epochs)
    except (lstmq.DataError, lstmq.ConfigError, CheckpointError, FolderLockedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""PCM to label without a float: a run's integer model as the device runs it, checked.

    python -m experiments.device --run RUN --out runs/device [--float-run FLOAT_RUN] [--golden 20]

RUN is a QAT run trained with ``features.frontend: integer`` (e.g. ``python -m
experiments.ptq_vs_qat --set features.frontend=integer`` gives ``runs/random/qat``). For
one seed the script:

1. computes the test split's logits from int16 PCM with the jnp path (``pcm_to_logits``)
   and checks them against the run's own integer evaluation (features, ``predict_int``);
2. writes the C library (``lstmq export --c-dir``), builds it with the system compiler and
   runs every test clip through it (the host engine): logits bit-exact with jnp?;
3. builds it for a Cortex-M3 and runs ``--golden`` clips on QEMU mps2-an385 (when the
   tools are installed): bit-exact?, soft-float symbols, flash, RAM, stack;
4. audits ``pcm_to_logits`` float-free (PCM to logits, front end included);
5. times integer evaluation of the test split by the C engine (int8 features, 2 threads)
   and by jnp against the float model's batched evaluation (``--float-run``, or RUN's float
   source), in this process, as ratios.

Writes <out>/device.json and device.md. About 2 minutes for FSDD's 600 test clips.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from experiments import common
from lstmq.audit import audit_float_free
from lstmq.c_engine import c_engine
from lstmq.c_export import write_c_library
from lstmq.cortex_m import CortexMError, missing_tools, run_on_cortex_m3
from lstmq.device import batch_pcm, device_model, jnp_logits, pcm_to_logits
from lstmq.frontend import pcm_int16
from lstmq.inference import run_dataset
from lstmq.integer import predict_int, quantize_input, stack_models
from lstmq.paths import integer_models, predict_path
from lstmq.pipeline import prepare_recordings
from lstmq.runs import load_run, model_from_config
from lstmq.splits import make_split
from lstmq.prediction import predict_split


def _timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up (compiles)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(run_dir: str | Path, out: str | Path, float_run: str | Path | None = None,
        golden: int = 20, seed_index: int = 0) -> dict[str, Any]:
    out = Path(out)
    qat = load_run(run_dir)
    device = device_model(qat, seed_index)
    dataset = run_dataset(qat)
    test_index = make_split(dataset, qat.config.data).test
    test = dataset.subset(test_index)
    pcm = [pcm_int16(a) for a in test.audio]
    common.say(f"{len(pcm)} test clips of {dataset.source}")

    from_pcm = jnp_logits(device, pcm)
    split = prepare_recordings(test, qat.config, qat.derived.normalizer, progress=False)
    one = _one_seed(qat, seed_index)
    from_features = predict_path(one, split, "qat-integer", engine="jnp")[0]
    accuracy = float(np.mean(np.argmax(from_pcm, -1) == test.labels))

    library = write_c_library(device.model, out / "c", qat.config.quant.weight_bits,
                              qat.classes, device, pcm[:golden], from_pcm[:golden])
    engine = c_engine(device.model, qat.config.quant.weight_bits, qat.classes, device)
    host = None
    if engine is not None:
        try:
            c_logits = engine.pcm_logits(pcm)
            features = [np.asarray(quantize_input(device.model, split.x[i, :n]))
                        for i, n in enumerate(split.lengths)]
            c_seconds = _timed(lambda: engine.features_logits(features))
        finally:
            engine.close()
        host = {"clips": len(pcm), "bit_exact": int(np.sum(np.all(c_logits == from_pcm, -1)))}
        common.say(f"C host build: {host['bit_exact']} of {host['clips']} clips bit-exact")

    cortex = None
    if not missing_tools():
        try:
            report = run_on_cortex_m3(library.folder)
            cortex = {k: v for k, v in report.to_dict().items() if k != "output"}
            common.say(f"Cortex-M3 (QEMU mps2-an385): {report.bit_exact} of {report.clips} "
                       f"bit-exact, soft-float symbols {list(report.soft_float_symbols)}, flash "
                       f"{report.flash_bytes:,} B, RAM {report.ram_bytes:,} B")
        except CortexMError as error:
            cortex = {"error": str(error)[:500]}
    else:
        cortex = {"skipped": f"missing {', '.join(missing_tools())}"}

    batch, lengths, frames = batch_pcm(pcm[:4], device)
    audits = [audit_float_free(lambda p, l, s=step: pcm_to_logits(device, p, l, frames, s),
                               batch, lengths) for step in device.steps]  # every speed's pass

    timing = _timing(qat, float_run, split, seed_index, c_seconds if engine else None)
    result = {
        "experiment": "device", "run": str(run_dir), "seed_index": seed_index,
        "test_clips": len(pcm), "integer_test_accuracy": accuracy,
        "pcm_equals_features_path": bool(np.array_equal(from_pcm, from_features)),
        "host": host, "cortex_m3": cortex,
        "audit": {"function": "lstmq.device.pcm_to_logits", "passes": len(audits),
                  "equations": sum(a.num_equations for a in audits),
                  "dtypes": sorted(set().union(*(a.dtypes for a in audits)))},
        "library": {"layer_bytes": library.layer_bytes, "frontend_bytes": library.frontend_bytes,
                    "constant_bytes": library.constant_bytes,
                    "readonly_bytes": library.readonly_bytes, "max_frames": library.max_frames,
                    "macs_per_frame": library.macs_per_frame,
                    "macs_per_second": library.macs_per_second},
        "timing": timing, "environment": common.environment()}
    common.write_results(out, "device", result, format_report(result))
    return result


def _one_seed(run, seed_index: int):
    import dataclasses  # pylint: disable=import-outside-toplevel

    return dataclasses.replace(run, params=jax.tree_util.tree_map(
        lambda p: p[seed_index:seed_index + 1], run.params),
        derived=dataclasses.replace(run.derived, seeds=(run.derived.seeds[seed_index],)))


def _timing(qat, float_run, split, seed_index: int, c_seconds: float | None) -> dict[str, Any]:
    """Seconds to evaluate the split once, compilation excluded (each predictor is jitted
    once and called again)."""
    source = float_run or qat.config.quant.init_from
    if source is None:
        return {"skipped": "no float run (--float-run)"}
    base = _one_seed(load_run(source), seed_index)
    bucket = qat.config.train.bucket_frames
    model = model_from_config(base.config, base.derived, "float")
    float_predict = jax.jit(jax.vmap(lambda p, x, l: model.apply({"params": p}, x, l),
                                     in_axes=(0, None, None)))
    float_seconds = _timed(lambda: predict_split(float_predict, base.params, split, 512, bucket))
    integer = integer_models(_one_seed(qat, seed_index))
    stacked = stack_models(integer)
    batched = jax.jit(jax.vmap(predict_int, in_axes=(0, None, None)))
    integer_predict = lambda p, x, l: batched(p, quantize_input(integer[0], x), l)  # noqa: E731
    jnp_seconds = _timed(lambda: predict_split(integer_predict, stacked, split, 512, bucket))
    clips = len(split)
    rows = {"float (jnp, batched)": float_seconds, "integer (jnp, batched)": jnp_seconds}
    if c_seconds is not None:
        rows["integer (C engine, 2 threads)"] = c_seconds
    return {name: {"seconds": s, "clips_per_second": clips / s,
                   "throughput_vs_float": float_seconds / s} for name, s in rows.items()}


def format_report(result: dict[str, Any]) -> str:
    lib, cortex, host = result["library"], result["cortex_m3"] or {}, result["host"] or {}
    lines = ["# PCM to label without a float", "",
             f"Run `{result['run']}`, seed index {result['seed_index']}: integer test accuracy "
             f"{result['integer_test_accuracy'] * 100:.2f}% on {result['test_clips']} clips "
             f"from PCM; PCM path equals the features path: {result['pcm_equals_features_path']}.",
             "", f"- C host build: {host.get('bit_exact', '-')} of {host.get('clips', '-')} "
             "test clips bit-exact with jnp.",
             "- Cortex-M3 (QEMU mps2-an385): " + (
                 f"{cortex['bit_exact']} of {cortex['clips']} golden clips bit-exact; soft-float "
                 f"symbols: {cortex['soft_float_symbols'] or 'none'}; flash {cortex['flash_bytes']:,} "
                 f"B (.text {cortex['text_bytes']:,} + .rodata {cortex['rodata_bytes']:,}); RAM "
                 f"{cortex['ram_bytes']:,} B (.data {cortex['data_bytes']:,} + .bss "
                 f"{cortex['bss_bytes']:,} + stack {cortex['stack_bytes']:,})"
                 if "clips" in cortex else str(cortex)),
             f"- Read-only bytes: layer parameters {lib['layer_bytes']:,}, front-end tables "
             f"{lib['frontend_bytes']:,}, constants {lib['constant_bytes']:,}: "
             f"{lib['readonly_bytes']:,} in all; buffers for {lib['max_frames']} frames.",
             f"- {lib['macs_per_frame']:,} multiply-accumulates per frame, "
             f"{lib['macs_per_second'] / 1e6:.2f} M per second of audio.",
             f"- Float-free audit of `{result['audit']['function']}` (PCM to logits): "
             f"{result['audit']['equations']} equations over {result['audit'].get('passes', 1)} "
             f"pass(es) (speed 1 and each speed vote), dtypes "
             f"{', '.join(result['audit']['dtypes'])}.",
             ""]
    timing = result["timing"]
    if "skipped" not in timing:
        lines += [common.markdown_table(
            ["evaluation of the test split", "seconds", "clips/s", "throughput vs float"],
            [[name, f"{t['seconds']:.3f}", f"{t['clips_per_second']:,.0f}",
              f"{t['throughput_vs_float']:.2f}x"] for name, t in timing.items()]), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.script_parser(__doc__, "python -m experiments.device", "runs/device",
                                  trains=False)
    parser.add_argument("--run", type=Path, required=True, help="QAT run, integer front end")
    parser.add_argument("--float-run", type=Path, help="float run timed against (default: the "
                        "run's quant.init_from)")
    parser.add_argument("--golden", type=int, default=20, help="clips run on the Cortex-M3")
    parser.add_argument("--seed-index", type=int, default=0)
    args = parser.parse_args(argv)
    common.setup_logging()
    result = run(args.run, args.out, args.float_run, args.golden, args.seed_index)
    print(format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(common.guarded(main))

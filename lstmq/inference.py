"""Using a trained run or an exported artifact: re-evaluation and prediction on new files.

``evaluate_run`` scores a run on its own test split (the recorded data, refused when its
fingerprint differs from the training data's) or on any labelled folder/archive/manifest.
``predict_files`` labels WAV files with a run (any numerics path) or an integer artifact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lstmq.audio import AudioError, conform, decode_wav
from lstmq.config import Config, FeatureConfig
from lstmq.data import DataError, Dataset, load_dataset, load_recordings
from lstmq.normalization import Normalizer
from lstmq.pipeline import SplitArrays, prepare_recordings
from lstmq.runner import test_report
from lstmq.runs import Run, load_run
from lstmq.sources import open_folder
from lstmq.splits import make_split

log = logging.getLogger("lstmq")


def _not_audio(where: str | Path, what: str) -> str:
    """The one line for audio given to a model of feature arrays (no front end to run)."""
    return (f"{where}: {what} trained on feature arrays, not audio; nothing to featurize WAV "
            "files with (score sequences with lstmq.predict_path(run, lstmq.arrays_split(run, "
            "x, lengths)))")


def run_dataset(run: Run) -> Dataset:
    """The dataset a run was trained on, loaded from where run.json says, checked by its
    fingerprint.

    Raises:
      DataError: the data is missing, or differs from the training data.
    """
    if run.data.get("layout") == "arrays":
        raise DataError(
            f"{run.directory}: trained on in-memory arrays ({run.data.get('source')}), which "
            "the run does not keep; its test scores are in metrics.json, and new sequences are "
            "scored with lstmq.predict_path(run, lstmq.arrays_split(run, x, lengths))")
    recorded = run.data.get("location")
    path = recorded if recorded and Path(recorded).exists() else None
    dataset = load_dataset(run.config.data, path)
    expected = run.data.get("fingerprint")
    if expected and dataset.fingerprint != expected:
        raise DataError(
            f"{dataset.source}: fingerprint {dataset.fingerprint} differs from the data "
            f"{run.directory} was trained on ({expected}, {run.data.get('source')}); its test "
            "split would mix in other clips. Pass the training data (data.path / $LSTMQ_DATA), "
            "or --data FOLDER to evaluate on a labelled set of your own")
    return dataset


def run_test_split(run: Run, progress: bool = True) -> tuple[SplitArrays, str]:
    """The run's own test split, featurized with its statistics, and a description."""
    dataset = run_dataset(run)
    test = dataset.subset(make_split(dataset, run.config.data).test)
    split = prepare_recordings(test, run.config, run.derived.normalizer, progress)
    return split, f"{dataset.source}, {run.config.data.split} test split"


def evaluate_run(directory: str | Path, data: str | Path | None = None, path: str | None = None,
                 integer: bool = False, progress: bool = True,
                 resample: bool | None = None) -> dict[str, Any]:
    """Score a run on its test split, or on every clip of ``data`` (any labelled layout).

    ``path`` is a numerics path (``lstmq.paths``); ``integer`` picks the run's integer path;
    ``resample`` (for ``data``) resamples clips at another rate, default the run's
    ``data.resample``.
    """
    from lstmq.paths import predict_path

    run = load_run(directory)
    path = _chosen_path(run, path, integer)
    if data is None:
        split, source = run_test_split(run, progress)
    else:
        if run.derived.sample_rate is None:
            raise DataError(_not_audio(directory, "trained"))
        # the run's own layout, classes, rate and resampling policy, as for its training data
        dataset = load_recordings(data, run.config.data.format, run.classes,
                                  run.derived.sample_rate,
                                  run.config.data.resample if resample is None else resample)
        split, source = prepare_recordings(dataset, run.config, run.derived.normalizer,
                                           progress), dataset.source
    report = test_report(predict_path(run, split, path), split, run.derived.seeds, run.classes)
    return {"run": str(directory), "data": source, "path": path, **report}


def _chosen_path(run: Run, path: str | None, integer: bool) -> str:
    """``path`` if given, else the run's integer path (``integer``) or the one it trained."""
    from lstmq.paths import integer_path, trained_path

    if path is not None and integer:
        raise ValueError(f"{run.directory}: give a numerics path or integer=True, not both "
                         f"(path={path!r})")
    return path or (integer_path(run) if integer else trained_path(run))


def summary_line(report: dict[str, Any]) -> str:
    """One line: accuracy over seeds, clips, path, data."""
    s = report["test_accuracy_summary"]
    spread = (f" (min {s['min'] * 100:.2f}%, max {s['max'] * 100:.2f}%, {s['n']} seeds)"
              if s["n"] > 1 else "")
    return (f"{report['path']}: accuracy {s['mean'] * 100:.2f}%{spread} on "
            f"{report['test_count']} clips of {report['data']}")


@dataclasses.dataclass(frozen=True)
class Predictor:
    """What predicting needs: front end, classes and a logits function of one model."""

    features: FeatureConfig
    normalizer: Normalizer
    sample_rate: int
    classes: tuple[str, ...]
    logits: Any  # (SplitArrays) -> <float32|int32>[n, classes]
    logit_scale: float  # real value of one logit unit (1.0 for float paths)
    description: str
    bucket_frames: int = 16


def wav_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """WAV files named directly or found (recursively, sorted) in folders; what a folder's
    walk leaves out (other audio formats, dangling links, linked folders) is logged."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]  # one file or folder, not a sequence of one-letter names
    if not paths:
        raise DataError("no WAV file or folder given")
    found = []
    for given in map(Path, paths):
        if given.is_dir():
            tree = open_folder(given)
            for note in tree.skipped:
                log.warning("%s", note)
            found += [given / p for p in tree.wavs()]
        elif given.is_file():
            found.append(given)
        else:
            raise DataError(f"{given}: no such file or folder")
    if not found:
        raise DataError(f"no .wav files in {', '.join(map(str, paths))}")
    return found


def _clips(files: list[Path], sample_rate: int, resample: bool) -> Dataset:
    audio = []
    for file in files:
        try:
            samples, rate = decode_wav(file.read_bytes(), str(file))
            audio.append(conform(samples, rate, sample_rate, resample, str(file)))
        except AudioError as error:
            raise DataError(str(error)) from None
        except OSError as error:
            raise DataError(f"{file}: cannot be read ({error.strerror or error})") from None
    count = len(files)
    digest = hashlib.sha256()  # the feature cache is keyed by it
    for file, clip in zip(files, audio):
        digest.update(str(file).encode() + b"\0" + clip.tobytes())
    return Dataset(audio=tuple(audio), labels=np.zeros(count, np.int32), classes=(),
                   speakers=np.array([""] * count), partition=np.array([""] * count),
                   names=tuple(map(str, files)), sample_rate=sample_rate,
                   fingerprint=digest.hexdigest(), source=f"{count} files", layout="files")


def run_predictor(directory: str | Path, path: str | None = None, integer: bool = False,
                  seed_index: int = 0) -> Predictor:
    """A predictor of one seed of a run along a numerics path."""
    import jax

    from lstmq.integer import logit_scale
    from lstmq.paths import INTEGER_PATHS, check_path, predict_path

    run = load_run(directory)
    if not 0 <= seed_index < len(run.derived.seeds):
        raise ValueError(f"{directory}: seed index {seed_index} out of range "
                         f"({len(run.derived.seeds)} seeds)")
    path = _chosen_path(run, path, integer)
    check_path(run, path)  # a misspelt path fails here, not at the first prediction
    one = dataclasses.replace(  # a run of this one seed: parameters and seed list alike
        run, params=jax.tree_util.tree_map(lambda p: p[seed_index:seed_index + 1], run.params),
        derived=dataclasses.replace(run.derived, seeds=run.derived.seeds[seed_index:seed_index + 1]))
    params = jax.tree_util.tree_map(lambda p: np.asarray(p[0]), one.params)
    scale = logit_scale(params, run.config.quant.weight_bits) if path in INTEGER_PATHS else 1.0
    if run.derived.sample_rate is None:
        raise DataError(_not_audio(directory, "trained"))
    return Predictor(run.config.features, run.derived.normalizer, run.derived.sample_rate,
                     run.classes, lambda split: predict_path(one, split, path)[0], scale,
                     f"{directory} ({path}, seed {run.derived.seeds[seed_index]})",
                     run.config.train.bucket_frames)


def artifact_predictor(artifact: str | Path) -> Predictor:
    """A predictor of an exported integer artifact (its front end from the manifest)."""
    from lstmq.artifact import ArtifactError, load_artifact
    from lstmq.integer import predict_int_split

    model, manifest = load_artifact(artifact)
    front = manifest.get("front_end")
    if not front or "classes" not in manifest:
        raise ArtifactError(f"{artifact}: the manifest has no front end or class list; "
                            "re-export it with this lstmq")
    if front.get("sample_rate") is None:
        raise ArtifactError(_not_audio(artifact, "exported from a run"))
    features = FeatureConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                                for k, v in front["features"].items()})
    return Predictor(features, Normalizer.from_dict(front["normalizer"]),
                     int(front["sample_rate"]), tuple(manifest["classes"]),
                     lambda split: predict_int_split([model], split)[0],
                     float(manifest.get("logit_scale", 1.0)), f"{artifact} (integer)")


def predict_files(predictor: Predictor, paths: str | os.PathLike | Sequence[str | os.PathLike],
                  resample: bool = False) -> list[dict[str, Any]]:
    """Label every WAV file named in ``paths`` (one path, or several; folders are searched).

    Returns:
      One row per file: file, label, score (softmax probability of the label), logits.
    """
    files = wav_files(paths)
    clips = _clips(files, predictor.sample_rate, resample)
    config = Config(features=predictor.features)
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, bucket_frames=predictor.bucket_frames))
    split = prepare_recordings(clips, config, predictor.normalizer, progress=False)
    logits = np.asarray(predictor.logits(split))
    scaled = logits.astype(np.float64) * predictor.logit_scale
    if split.votes and np.issubdtype(logits.dtype, np.integer):  # integer votes are summed
        scaled /= 1 + len(split.votes)  # the score is that of the passes' mean logits
    probabilities = np.exp(scaled - scaled.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    rows = []
    for file, row_logits, row_p in zip(files, logits, probabilities):
        best = int(np.argmax(row_logits))
        rows.append({"file": str(file), "label": predictor.classes[best],
                     "score": float(row_p[best]), "logits": row_logits.tolist()})
    return rows


def format_predictions(rows: list[dict[str, Any]]) -> str:
    """A table: file, label, score."""
    width = max([4, *(len(r["file"]) for r in rows)])
    label = max([5, *(len(r["label"]) for r in rows)])
    lines = [f"{'file':<{width}}  {'label':<{label}}  score"]
    lines += [f"{r['file']:<{width}}  {r['label']:<{label}}  {r['score']:.3f}" for r in rows]
    return "\n".join(lines)

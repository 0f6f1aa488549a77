"""Any labelled audio: the folders, manifest and FSDD layouts, their detection, archives of
each, class lists, sample rates, and the splits every dataset gets."""

from __future__ import annotations

import logging
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lstmq import data, splits
from lstmq.config import DataConfig, FeatureConfig
from lstmq.data import DataError
from lstmq.features import extract_mfcc, frame_sizes

THREE = ("down", "left", "up")
TWELVE = tuple(f"word{i:02d}" for i in range(12))


def tar_folder(folder: Path, target: Path, wrapper: str | None = "dataset") -> Path:
    with tarfile.open(target, "w:gz") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                relative = path.relative_to(folder).as_posix()
                archive.add(path, arcname=f"{wrapper}/{relative}" if wrapper else relative)
    return target


def zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, arcname=path.relative_to(folder).as_posix())
    return target


# --- folders layout -----------------------------------------------------------------------


def test_folders_layout_labels_speakers_and_lists(make_folders_dataset):
    root = make_folders_dataset(THREE, lists=True)
    dataset = data.load_recordings(root)
    assert dataset.layout == "folders" and dataset.classes == THREE
    assert len(dataset) == 3 * 3 * 4 and list(dataset.names) == sorted(dataset.names)
    i = dataset.names.index("left/bob_nohash_2.wav")
    assert (dataset.classes[dataset.labels[i]], dataset.speakers[i]) == ("left", "bob")
    own = dict(zip(dataset.names, dataset.partition))
    assert own["up/cid_nohash_3.wav"] == "test" and own["up/bob_nohash_0.wav"] == "validation"
    assert own["up/ann_nohash_1.wav"] == "train"
    assert np.bincount(dataset.labels).tolist() == [12, 12, 12]


def test_folders_without_lists_have_no_own_split_and_no_speaker_without_nohash(tmp_path,
                                                                               write_wav):
    for label in ("cat", "dog"):
        for take in range(3):
            write_wav(tmp_path / "pets" / label / f"clip{take}.wav",
                      np.full(800, 1000 * (take + 1), np.int16))
    dataset = data.load_recordings(tmp_path / "pets")
    assert dataset.classes == ("cat", "dog") and set(dataset.partition.tolist()) == {""}
    assert set(dataset.speakers.tolist()) == {""}
    with pytest.raises(DataError, match="defines no split of its own"):
        splits.make_split(dataset, DataConfig(split="official"))
    with pytest.raises(DataError, match="no speaker is known"):
        splits.make_split(dataset, DataConfig(split="speaker", test_speaker="x"))


def test_background_noise_folder_is_skipped_with_a_note(make_folders_dataset, write_wav, caplog):
    root = make_folders_dataset(THREE)
    write_wav(root / "_background_noise_" / "white.wav", np.zeros(8000, np.int16))
    (root / "testing_list.txt").write_text("up/zed_nohash_0.wav\n")  # names no clip
    with caplog.at_level(logging.WARNING, logger="lstmq"):
        dataset = data.load_recordings(root)
    assert dataset.classes == THREE
    assert "_background_noise_" in caplog.text and "skipped" in caplog.text
    assert "1 entries of the split lists name no clip" in caplog.text


def test_a_wav_outside_the_class_folders_is_refused(make_folders_dataset, write_wav):
    root = make_folders_dataset(THREE)
    write_wav(root / "stray.wav", np.zeros(800, np.int16))
    with pytest.raises(DataError, match="stray.wav: not inside a class folder"):
        data.load_recordings(root, format="folders")


def test_split_folders_above_the_class_folders_are_refused_or_noted(make_folders_dataset,
                                                                   tmp_path, caplog):
    root = make_folders_dataset(THREE)
    nested = tmp_path / "nested"
    for part in ("train", "test"):
        shutil.copytree(root, nested / part)
    with pytest.raises(DataError, match=r"class folders \(test, train\) are split names"):
        data.load_recordings(nested)
    two = tmp_path / "two"  # two copies of a dataset side by side: labels one level down
    for name in ("mine", "theirs"):
        shutil.copytree(root, two / name)
    with caplog.at_level(logging.WARNING, logger="lstmq"):
        assert data.load_recordings(two).classes == ("mine", "theirs")
    assert "holds the same subfolders (down, left, up)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lstmq"):
        data.load_recordings(root)  # the clips directly in their class folders: no note
    assert "subfolders" not in caplog.text


def test_archives_of_the_folders_layout_equal_the_folder(make_folders_dataset, tmp_path):
    root = make_folders_dataset(THREE, lists=True)
    folder = data.load_recordings(root)
    for archive in (tar_folder(root, tmp_path / "wrapped.tar.gz"),
                    tar_folder(root, tmp_path / "bare.tgz", wrapper=None),
                    zip_folder(root, tmp_path / "bare.zip")):
        other = data.load_recordings(archive)
        assert other.names == folder.names and other.classes == folder.classes
        np.testing.assert_array_equal(other.partition, folder.partition)
        np.testing.assert_array_equal(other.speakers, folder.speakers)
        assert all(np.array_equal(a, b) for a, b in zip(other.audio, folder.audio))


def test_twelve_classes_at_16_khz_work_with_no_edits(make_folders_dataset):
    root = make_folders_dataset(TWELVE, speakers=("ann", "bob"), takes=2, sample_rate=16000)
    dataset = data.load_recordings(root)
    assert dataset.sample_rate == 16000 and dataset.num_classes == 12
    sizes = frame_sizes(FeatureConfig(), 16000)
    assert (sizes.window, sizes.n_fft, sizes.hop, sizes.fmax) == (512, 512, 256, 8000.0)
    # The same 0.2 s clip gives the same number of frames at either rate.
    frames = [extract_mfcc(np.zeros(int(0.2 * rate), np.float32) + 0.01, rate,
                           FeatureConfig()).shape[0] for rate in (8000, 16000)]
    assert frames[0] == frames[1]


def test_mixed_rates_are_refused_naming_a_file_unless_a_rate_is_set(make_folders_dataset,
                                                                   write_wav):
    root = make_folders_dataset(THREE)
    write_wav(root / "up" / "eve_nohash_0.wav", np.zeros(1600, np.int16), sample_rate=16000)
    with pytest.raises(DataError, match="eve_nohash_0.wav: sample rate differs"):
        data.load_recordings(root)
    with pytest.raises(DataError, match="eve_nohash_0.wav: sample rate 16000 Hz, expected 8000"):
        data.load_recordings(root, sample_rate=8000)
    assert data.load_recordings(root, sample_rate=8000, resample=True).sample_rate == 8000


# --- classes ------------------------------------------------------------------------------


def test_explicit_classes_fix_the_order_and_refuse_unknown_labels(make_folders_dataset):
    root = make_folders_dataset(THREE)
    order = ("up", "down", "left")
    dataset = data.load_recordings(root, classes=order)
    assert dataset.classes == order
    i = dataset.names.index("up/ann_nohash_0.wav")
    assert dataset.labels[i] == 0
    with pytest.raises(DataError, match=r"label\(s\) \['up'\] are not in data.classes"):
        data.load_recordings(root, classes=("down", "left"))
    with pytest.raises(DataError, match="lists a class twice"):
        data.load_recordings(root, classes=("up", "up", "down", "left"))


def test_a_single_class_is_refused(make_folders_dataset):
    with pytest.raises(DataError, match="1 class .*at least 2"):
        data.load_recordings(make_folders_dataset(("only",)))


# --- manifest layout ----------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_manifest_lists_paths_labels_speakers_and_split(make_manifest_dataset, delimiter):
    manifest = make_manifest_dataset(THREE, delimiter=delimiter)
    dataset = data.load_recordings(manifest)
    assert dataset.layout == "manifest" and dataset.classes == THREE and len(dataset) == 36
    i = dataset.names.index("audio/bob/left-1.wav")
    assert (dataset.speakers[i], dataset.partition[i]) == ("bob", "train")
    split = splits.make_split(dataset, DataConfig(split="official", val_fraction=0.25))
    assert set(dataset.speakers[split.test].tolist()) == {"cid"}
    assert data.load_recordings(manifest.parent).names == dataset.names  # found in its folder


@pytest.mark.parametrize("edit, problem", [
    (lambda t: t.replace("path,label", "file,label"), "no 'path' column"),
    (lambda t: t.replace(",train\n", ",holdout\n", 1), "split 'holdout' is not one of"),
    (lambda t: t + t.splitlines()[1] + "\n", "listed twice"),
    (lambda t: t.replace("audio/ann/down-0.wav", "audio/ann/gone.wav"), "gone.wav: no such file"),
    (lambda t: t.replace("audio/ann/down-0.wav,down", "audio/ann/down-0.wav,"), "empty path or label"),
])
def test_bad_manifests_are_refused_naming_the_line_or_file(make_manifest_dataset, edit, problem):
    manifest = make_manifest_dataset(THREE)
    manifest.write_text(edit(manifest.read_text()))
    with pytest.raises(DataError, match=problem) as error:
        data.load_recordings(manifest)
    assert "manifest.csv" in str(error.value) or "gone.wav" in str(error.value)


def test_a_manifests_speaker_column_is_part_of_the_fingerprint(make_manifest_dataset):
    """Other speakers move a speaker split: a run must not take the data as its own."""
    manifest = make_manifest_dataset(THREE)
    before = data.load_recordings(manifest)
    lines = manifest.read_text().splitlines()
    speakers = sorted(set(before.speakers.tolist()))
    swap = {speakers[0]: speakers[1], speakers[1]: speakers[0]}
    manifest.write_text("\n".join([lines[0]] + [
        ",".join(swap.get(v, v) if i == 2 else v for i, v in enumerate(line.split(",")))
        for line in lines[1:]]) + "\n")
    after = data.load_recordings(manifest)
    assert after.names == before.names and list(after.speakers) != list(before.speakers)
    assert after.fingerprint != before.fingerprint


def test_an_archive_holding_a_manifest(make_manifest_dataset, tmp_path):
    manifest = make_manifest_dataset(THREE)
    direct = data.load_recordings(manifest)
    archived = data.load_recordings(tar_folder(manifest.parent, tmp_path / "m.tar.gz"))
    assert archived.layout == "manifest" and archived.names == direct.names
    assert all(np.array_equal(a, b) for a, b in zip(archived.audio, direct.audio))


# --- FSDD layout and detection ------------------------------------------------------------


def test_detection_and_an_explicit_format(wav_folder, make_folders_dataset):
    assert data.load_recordings(wav_folder).layout == "fsdd"
    assert data.load_recordings(make_folders_dataset(THREE)).layout == "folders"
    nested = wav_folder.parent / "sorted"
    for path in wav_folder.glob("*.wav"):  # FSDD clips sorted into digit folders
        target = nested / path.name.split("_")[0] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    assert data.load_recordings(nested).layout == "fsdd"  # the digit folders agree
    release = tar_folder(wav_folder, wav_folder.parent / "fsdd.tar.gz",
                         wrapper="free-spoken-digit-dataset-1.0.10/recordings")  # as released
    assert data.load_recordings(release).layout == "fsdd"
    as_folders = data.load_recordings(nested, format="folders")
    assert as_folders.layout == "folders" and as_folders.classes == tuple(map(str, range(10)))
    with pytest.raises(DataError, match="not one of auto"):
        data.load_recordings(wav_folder, format="speechcommands")


def test_fsdd_names_in_class_folders_are_refused_unless_a_format_is_set(tmp_path, write_wav,
                                                                       synthetic_clip):
    root = tmp_path / "tones"
    for k, label in enumerate(("low", "mid", "high")):
        for take in range(6):  # named like FSDD clips, but the folders are the labels
            write_wav(root / label / f"{take % 10}_{label}take_{take}.wav",
                      synthetic_clip(k, 0, take))
    for tree in (root, tar_folder(root, tmp_path / "tones.tar.gz")):
        with pytest.raises(DataError, match=rf"^{re.escape(str(tree))}: the WAV files have FSDD "
                           r"names .* lie in several folders \(high, low, mid\); set "
                           "data.format to fsdd or folders"):
            data.load_recordings(tree)
    as_folders = data.load_recordings(root, format="folders")
    assert as_folders.layout == "folders" and as_folders.classes == ("high", "low", "mid")
    assert as_folders.names.index("low/3_lowtake_3.wav") in np.flatnonzero(
        as_folders.labels == as_folders.classes.index("low"))
    as_fsdd = data.load_recordings(root, format="fsdd")
    assert as_fsdd.layout == "fsdd" and as_fsdd.classes == tuple(map(str, range(10)))
    assert sorted(set(as_fsdd.speakers.tolist())) == ["hightake", "lowtake", "midtake"]


def test_a_flat_folder_with_a_non_fsdd_name_says_how_to_lay_out_other_data(wav_folder,
                                                                           write_wav):
    write_wav(wav_folder / "hello.wav", np.zeros(800, np.int16))
    with pytest.raises(DataError, match="hello.wav: file name must look like .* class folders"):
        data.load_recordings(wav_folder)


# --- splits of any dataset ----------------------------------------------------------------


def test_random_split_is_stratified_by_default(make_folders_dataset):
    dataset = data.load_recordings(make_folders_dataset(THREE, takes=10))
    split = splits.make_split(dataset, DataConfig(test_size=0.2, val_fraction=0.25))
    assert np.bincount(dataset.labels[split.test]).tolist() == [6, 6, 6]
    assert np.bincount(dataset.labels[split.val]).tolist() == [6, 6, 6]
    assert len(np.intersect1d(split.test, np.concatenate([split.train, split.val]))) == 0


def test_a_class_too_small_to_stratify_is_named(make_folders_dataset, write_wav):
    root = make_folders_dataset(THREE, takes=10)
    write_wav(root / "yes" / "ann_nohash_0.wav", np.full(800, 500, np.int16))
    dataset = data.load_recordings(root)
    with pytest.raises(DataError, match=r"fewer than 2 clips: 'yes' \(1\)"):
        splits.make_split(dataset, DataConfig(test_size=0.2))


def test_speaker_disjoint_split_keeps_every_speaker_on_one_side(make_folders_dataset):
    speakers = tuple(f"s{i}" for i in range(6))
    dataset = data.load_recordings(make_folders_dataset(THREE, speakers=speakers, takes=2))
    split = splits.make_split(dataset, DataConfig(split="speaker_disjoint", test_size=0.34,
                                                  val_fraction=0.25))
    sides = [set(dataset.speakers[part].tolist()) for part in (split.train, split.val, split.test)]
    assert all(sides) and not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert len(sides[2]) == 2 and len(sides[1]) == 1
    assert sum(map(len, sides)) == 6


def test_official_split_uses_the_lists_validation_too(make_folders_dataset):
    dataset = data.load_recordings(make_folders_dataset(THREE, lists=True))
    split = splits.make_split(dataset, DataConfig(split="official"))
    assert set(dataset.partition[split.test].tolist()) == {"test"}
    assert set(dataset.partition[split.val].tolist()) == {"validation"} and len(split.val) == 3


def test_leave_one_speaker_out_over_any_speaker_field(make_manifest_dataset):
    dataset = data.load_recordings(make_manifest_dataset(THREE))
    for speaker in ("ann", "bob", "cid"):
        split = splits.make_split(dataset, DataConfig(split="speaker", test_speaker=speaker))
        assert set(dataset.speakers[split.test].tolist()) == {speaker}
        assert speaker not in set(dataset.speakers[np.concatenate([split.train, split.val])])

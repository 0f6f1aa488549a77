"""Tests of lstmq.data: parsing, sources, audio policy, downloads and splits."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import shutil
import sys
import tarfile
import threading
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from lstmq import data, download, splits, tfds_source
from lstmq.config import DataConfig
from lstmq.data import DataError
from lstmq.data_errors import DataUnavailableError

SPEAKERS = ("alice", "bob")  # as written by the wav_folder fixture
FSDD_V1_0_9_SHA256 = "8bc44cde129d505cbbb6b365c09f80c663f2aa77578afc634e6141a2f87100c0"


def make_tar(folder: Path, target: Path, prefix: str = "release/recordings") -> Path:
    with tarfile.open(target, "w:gz") as archive:
        for wav in sorted(folder.iterdir()):
            archive.add(wav, arcname=f"{prefix}/{wav.name}")
    return target


def make_zip(folder: Path, target: Path, prefix: str = "release/recordings") -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for wav in sorted(folder.iterdir()):
            archive.write(wav, arcname=f"{prefix}/{wav.name}")
    return target


# --- file names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("7_jackson_32.wav", (7, "jackson", 32)),
        ("0_george_0.wav", (0, "george", 0)),
        ("9_mary_ann_49.WAV", (9, "mary_ann", 49)),
        ("some/dir/3_theo_12.wav", (3, "theo", 12)),
    ],
)
def test_parse_name_accepts_fsdd_names(name, expected):
    assert data.parse_name(name) == expected


@pytest.mark.parametrize(
    "name, problem",
    [
        ("10_george_1.wav", "not 0-9"),
        ("x_george_1.wav", "not 0-9"),
        ("1_george_a.wav", "not an integer"),
        ("1_george_-1.wav", "not an integer"),
        ("1_george.wav", "must look like"),
        ("1__3.wav", "empty speaker"),
        ("1_george_1.mp3", "must look like"),
    ],
)
def test_parse_name_rejects_bad_names(name, problem):
    with pytest.raises(DataError, match=problem) as error:
        data.parse_name(name)
    assert name in str(error.value)


# --- loading ------------------------------------------------------------------------


def test_folder_tar_and_zip_give_identical_datasets(wav_folder, tmp_path):
    folder = data.load_recordings(wav_folder)
    archives = [make_tar(wav_folder, tmp_path / "r.tar.gz"), make_zip(wav_folder, tmp_path / "r.zip")]
    assert len(folder) == 10 * 2 * 5
    assert list(folder.names) == sorted(folder.names)
    for path in archives:
        other = data.load_recordings(path)
        assert other.names == folder.names
        assert other.fingerprint == download.file_sha256(path)
        for field in ("labels", "speakers", "partition"):
            np.testing.assert_array_equal(getattr(other, field), getattr(folder, field))
        for a, b in zip(other.audio, folder.audio):
            np.testing.assert_array_equal(a, b)


def test_loaded_audio_is_scaled_pcm_with_parsed_metadata(wav_folder, synthetic_clip):
    dataset = data.load_recordings(wav_folder)
    i = dataset.names.index("3_bob_5.wav")
    assert (dataset.labels[i], dataset.speakers[i], dataset.partition[i]) == (3, "bob", "train")
    assert dataset.partition[dataset.names.index("3_bob_4.wav")] == "test"  # takes 0-4
    assert dataset.classes == tuple(str(d) for d in range(10)) and dataset.layout == "fsdd"
    assert dataset.labels.dtype == np.int32
    assert dataset.audio[i].dtype == np.float32 and dataset.sample_rate == 8000
    np.testing.assert_array_equal(dataset.audio[i], synthetic_clip(3, 1, 5) / np.float32(32768))


def test_folder_fingerprint_tracks_names_and_bytes(wav_folder, write_wav, synthetic_clip):
    before = data.load_recordings(wav_folder).fingerprint
    assert data.load_recordings(wav_folder).fingerprint == before
    write_wav(wav_folder / "3_bob_5.wav", synthetic_clip(3, 1, 5)[::-1].copy())
    edited = data.load_recordings(wav_folder).fingerprint
    (wav_folder / "3_bob_5.wav").rename(wav_folder / "3_bob_8.wav")
    renamed = data.load_recordings(wav_folder).fingerprint
    assert len({before, edited, renamed}) == 3


def test_subset_selects_clips_and_changes_fingerprint(wav_folder):
    dataset = data.load_recordings(wav_folder)
    part = dataset.subset([5, 2])
    assert part.names == (dataset.names[5], dataset.names[2])
    np.testing.assert_array_equal(part.labels, dataset.labels[[5, 2]])
    assert part.audio[1] is dataset.audio[2]
    assert part.fingerprint != dataset.fingerprint
    assert dataset.subset(np.array([5, 2])).fingerprint == part.fingerprint
    assert dataset.subset([2, 5]).fingerprint != part.fingerprint


def _bad_file_cases(write_wav, synthetic_clip):
    tone = synthetic_clip(3, 0, 9)
    return {
        "3_alice_9.wav corrupt": (lambda p: p.write_bytes(b"RIFF junk, not audio" * 10), "not a readable WAV"),
        "3_alice_9.wav empty": (lambda p: write_wav(p, np.zeros(0, np.int16)), "empty audio"),
        "3_alice_9.wav short": (lambda p: write_wav(p, tone[:399]), "too short"),
        "3_alice_9.wav flac": (lambda p: write_wav(p, tone, format="FLAC"), "FLAC audio, not a WAV"),
        "3_alice_9.wav nan": (lambda p: write_wav(p, np.full(800, np.nan), subtype="FLOAT"), "NaN"),
        "3_alice_x.wav name": (lambda p: write_wav(p, tone), "not an integer"),
        "3_alice_9.wav rate": (lambda p: write_wav(p, tone, sample_rate=16000),
                               "sample rate differs .*16000 Hz"),
    }


@pytest.mark.parametrize(
    "case", ["3_alice_9.wav corrupt", "3_alice_9.wav empty", "3_alice_9.wav short", "3_alice_9.wav flac",
             "3_alice_9.wav nan", "3_alice_x.wav name", "3_alice_9.wav rate"]
)
def test_bad_file_is_refused_naming_it(case, wav_folder, write_wav, synthetic_clip, tmp_path):
    name = case.split()[0]
    make, problem = _bad_file_cases(write_wav, synthetic_clip)[case]
    make(wav_folder / name)
    with pytest.raises(DataError, match=problem) as error:
        data.load_recordings(wav_folder)
    assert str(wav_folder / name) in str(error.value)
    archive = make_tar(wav_folder, tmp_path / "bad.tar.gz")  # same file inside an archive
    with pytest.raises(DataError, match=problem) as error:
        data.load_recordings(archive)
    assert f"{archive}:release/recordings/{name}" in str(error.value)


def test_clip_of_exactly_minimum_length_is_accepted(wav_folder, write_wav, synthetic_clip):
    write_wav(wav_folder / "3_alice_9.wav", synthetic_clip(3, 0, 9)[:400])  # 400 samples = 0.05 s
    assert len(data.load_recordings(wav_folder)) == 101


def test_other_rate_is_resampled_when_asked(wav_folder, write_wav, synthetic_clip):
    import librosa  # pylint: disable=import-outside-toplevel

    tone = synthetic_clip(3, 0, 9, sample_rate=16000)
    write_wav(wav_folder / "3_alice_9.wav", tone, sample_rate=16000)
    dataset = data.load_recordings(wav_folder, sample_rate=8000, resample=True)
    clip = dataset.audio[dataset.names.index("3_alice_9.wav")]
    assert clip.shape == (tone.size // 2,) and clip.dtype == np.float32
    expected = librosa.resample(tone / np.float32(32768), orig_sr=16000, target_sr=8000)
    np.testing.assert_allclose(clip, expected, atol=1e-6)


def test_stereo_is_mixed_down_to_mono(wav_folder, write_wav, synthetic_clip):
    left, right = synthetic_clip(3, 0, 9), synthetic_clip(4, 1, 9)
    write_wav(wav_folder / "3_alice_9.wav", np.stack([left, right], axis=1))
    dataset = data.load_recordings(wav_folder)
    clip = dataset.audio[dataset.names.index("3_alice_9.wav")]
    expected = (left.astype(np.float32) + right.astype(np.float32)) / 2 / 32768
    np.testing.assert_allclose(clip, expected, atol=1e-7)


def test_fsdd_keeps_its_ten_classes_and_a_split_refuses_a_missing_one(wav_folder):
    for wav in wav_folder.glob("9_*.wav"):
        wav.unlink()
    dataset = data.load_recordings(wav_folder)  # e.g. to evaluate on a subset
    assert len(dataset) == 90 and dataset.num_classes == 10
    with pytest.raises(DataError, match=r"training clips lack class\(es\) \['9'\]") as error:
        splits.make_split(dataset, DataConfig(split="official", val_fraction=0))
    assert str(wav_folder) in str(error.value)


def test_duplicate_file_names_are_refused(wav_folder, write_wav, synthetic_clip):
    write_wav(wav_folder / "extra" / "3_bob_5.wav", synthetic_clip(3, 1, 5))
    with pytest.raises(DataError, match="duplicate file name"):
        data.load_recordings(wav_folder)


def test_empty_folder_non_archive_and_corrupt_archive_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .wav files") as error:
        data.load_recordings(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(error.value)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(DataError, match="not a folder, a .csv/.tsv manifest or a .tar.gz"):
        data.load_recordings(notes)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08 definitely not gzip")
    with pytest.raises(DataError, match="corrupted or unreadable archive") as error:
        data.load_recordings(broken)
    assert str(broken) in str(error.value)
    with pytest.raises(DataError, match="no such file"):
        data.load_recordings(tmp_path / "absent")


# --- locating and downloading -------------------------------------------------------


def test_locate_picks_the_archive_with_the_configured_sha(wav_folder, tmp_path):
    releases = tmp_path / "releases"
    releases.mkdir()
    first = make_tar(wav_folder, releases / "a.tar.gz", prefix="a")
    second = make_tar(wav_folder, releases / "b.tar.gz", prefix="b")
    assert data.locate_recordings(releases, download.file_sha256(second)) == second
    assert data.locate_recordings(releases, download.file_sha256(first)) == first
    with pytest.raises(DataError, match="no archive has the expected sha256 0000") as error:
        data.locate_recordings(releases, "0000")
    assert "a.tar.gz" in str(error.value) and download.file_sha256(second) in str(error.value)
    assert data.locate_recordings(wav_folder, "0000") == wav_folder


def test_resolve_order_path_then_env_then_download(wav_folder, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("LSTMQ_DATA", str(other))
    assert data.resolve_data_path(DataConfig(path=str(wav_folder))) == wav_folder
    monkeypatch.setenv("LSTMQ_DATA", str(wav_folder))
    assert data.resolve_data_path(DataConfig()) == wav_folder
    assert data.resolve_data_path(DataConfig(source="path")) == wav_folder
    calls = []
    monkeypatch.setattr(data, "download_archive", lambda *args: calls.append(args) or other)
    assert data.resolve_data_path(DataConfig(source="download")) == other
    monkeypatch.delenv("LSTMQ_DATA")
    assert data.resolve_data_path(DataConfig(cache_dir="c"), progress=False) == other
    known = download.KNOWN_URLS[DataConfig.url]
    assert calls == [(DataConfig.url, known, None, True), (DataConfig.url, known, "c", False)]
    with pytest.raises(DataError, match="neither data.path nor"):
        data.resolve_data_path(DataConfig(source="path"))
    with pytest.raises(DataError, match="tfds"):
        data.resolve_data_path(DataConfig(source="tfds"))


@pytest.fixture
def http_folder(tmp_path, monkeypatch):
    """(folder, base URL, request log) of an HTTP server on 127.0.0.1 serving folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            requests.append(self.path)

    for variable in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(variable, "127.0.0.1,localhost")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def _files_under(folder: Path) -> list[Path]:
    """Files in a cache folder, but for the download lock (``.lock``), which is no data."""
    return [p for p in folder.rglob("*") if p.is_file() and p.name != ".lock"] \
        if folder.exists() else []


def test_download_verifies_and_caches(http_folder, wav_folder, tmp_path):
    served, base, requests = http_folder
    archive = make_tar(wav_folder, served / "v1.tar.gz")
    digest = download.file_sha256(archive)
    cache = tmp_path / "cache"
    path = download.download_archive(f"{base}/v1.tar.gz", digest, cache, progress=False)
    assert path.parent == cache and download.file_sha256(path) == digest
    assert download.download_archive(f"{base}/v1.tar.gz", digest, cache, progress=False) == path
    assert len(requests) == 1  # the second call was served from the cache
    assert len(data.load_recordings(path)) == 100


def test_download_checksum_mismatch_leaves_nothing(http_folder, wav_folder, tmp_path):
    served, base, _ = http_folder
    actual = download.file_sha256(make_tar(wav_folder, served / "v1.tar.gz"))
    wrong = hashlib.sha256(b"something else").hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="checksum mismatch") as error:
        download.download_archive(f"{base}/v1.tar.gz", wrong, cache, progress=False)
    message = str(error.value)
    assert f"{base}/v1.tar.gz" in message and wrong in message and actual in message
    assert _files_under(cache) == []


def test_download_http_error_is_a_data_error(http_folder, tmp_path):
    _, base, _ = http_folder
    with pytest.raises(DataUnavailableError, match="point lstmq at a local copy") as error:
        download.download_archive(f"{base}/missing.tar.gz", "0" * 64, tmp_path / "cache", progress=False)
    assert f"{base}/missing.tar.gz" in str(error.value)
    assert _files_under(tmp_path / "cache") == []


def test_download_of_local_path_and_file_url(wav_folder, tmp_path):
    archive = make_tar(wav_folder, tmp_path / "v1.tar.gz")
    digest = download.file_sha256(archive)
    assert download.download_archive(str(archive), digest, tmp_path / "cache") == archive
    assert download.download_archive(archive.as_uri(), digest, tmp_path / "cache") == archive
    with pytest.raises(DataError, match=f"expected sha256 {'1' * 64}, got {digest}"):
        download.download_archive(archive.as_uri(), "1" * 64, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# --- TFDS ---------------------------------------------------------------------------


def test_tfds_missing_tells_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install 'lstmq\[tfds\]'") as error:
        tfds_source.load_tfds(DataConfig(source="tfds"))
    assert isinstance(error.value, DataError)


def _fake_tfds(examples, seen):
    """A module with the slice of the TFDS API that load_tfds uses."""

    class Builder:
        def __init__(self, name, data_dir=None):
            seen.update(name=name, data_dir=data_dir)

        def download_and_prepare(self, download_config=None):
            seen["manual_dir"] = getattr(download_config, "manual_dir", None)

        def as_dataset(self, split):
            seen["split"] = split
            return examples

    def download_config(manual_dir=None):
        return types.SimpleNamespace(manual_dir=manual_dir)

    download = types.SimpleNamespace(DownloadConfig=download_config)
    return types.SimpleNamespace(builder=Builder, download=download, as_numpy=lambda ds: iter(ds))


def test_tfds_examples_become_a_dataset(monkeypatch, tmp_path, synthetic_clip):
    examples = [
        {"audio": synthetic_clip(d, s, t).astype(np.int64), "label": np.int64(d),
         "audio/filename": f"{d}_{SPEAKERS[s]}_{t}.wav".encode()}
        for t in (7, 5) for s in (1, 0) for d in range(10)
    ]
    seen = {}
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", _fake_tfds(examples, seen))
    cfg = DataConfig(source="tfds", tfds_manual_dir="manual", cache_dir=str(tmp_path))
    dataset = data.load_dataset(cfg)
    assert seen == {"name": "spoken_digit", "data_dir": str(tmp_path / "tensorflow_datasets"),
                    "manual_dir": "manual", "split": "train"}
    assert len(dataset) == 40 and list(dataset.names) == sorted(dataset.names)
    i = dataset.names.index("4_bob_7.wav")
    assert (dataset.labels[i], dataset.speakers[i], dataset.partition[i]) == (4, "bob", "train")
    np.testing.assert_array_equal(dataset.audio[i], synthetic_clip(4, 1, 7) / np.float32(32768))
    examples[0]["label"] = np.int64(5)
    with pytest.raises(DataError, match="disagrees with the file name"):
        tfds_source.load_tfds(cfg)


@pytest.mark.fsdd
@pytest.mark.slow
def test_real_tfds_matches_the_v1_0_9_archive(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    given = os.environ.get("LSTMQ_DATA")
    if not given:
        pytest.skip("set LSTMQ_DATA to the folder holding free-spoken-digit-dataset-1.0.9.tar.gz")
    archive = data.locate_recordings(given, FSDD_V1_0_9_SHA256)
    if not archive.is_file() or download.file_sha256(archive) != FSDD_V1_0_9_SHA256:
        pytest.skip(f"{given} holds no FSDD v1.0.9 archive")
    manual = tmp_path / "manual"
    manual.mkdir()
    shutil.copy(archive, manual / "free-spoken-digit-dataset-1.0.9.tar.gz")  # the name TFDS registers
    cfg = DataConfig(source="tfds", tfds_manual_dir=str(manual), cache_dir=str(tmp_path / "cache"))
    from_tfds, direct = data.load_dataset(cfg), data.load_recordings(archive)
    assert len(from_tfds) == 2500 and from_tfds.names == direct.names
    np.testing.assert_array_equal(from_tfds.labels, direct.labels)
    for a, b in zip(from_tfds.audio, direct.audio):
        np.testing.assert_array_equal(a, b)


# --- splits -------------------------------------------------------------------------


def test_official_split_uses_takes_0_to_4_for_test(wav_folder):
    dataset = data.load_recordings(wav_folder)
    split = splits.make_split(dataset, DataConfig(split="official", val_fraction=0.2))
    takes = np.array([data.parse_name(n)[2] for n in dataset.names])
    assert set(takes[split.test].tolist()) == {0, 4}
    assert set(takes[np.concatenate([split.train, split.val])].tolist()) == {5, 6, 7}
    assert (split.test.size, split.train.size + split.val.size, split.val.size) == (40, 60, 12)


def test_speaker_split_and_unknown_speaker(wav_folder):
    dataset = data.load_recordings(wav_folder)
    split = splits.make_split(dataset, DataConfig(split="speaker", test_speaker="bob", val_fraction=0.2))
    assert set(dataset.speakers[split.test].tolist()) == {"bob"} and split.test.size == 50
    assert set(dataset.speakers[np.concatenate([split.train, split.val])].tolist()) == {"alice"}
    with pytest.raises(DataError, match="'carol' is not among the speakers") as error:
        splits.make_split(dataset, DataConfig(split="speaker", test_speaker="carol"))
    assert "alice, bob" in str(error.value)


def test_val_is_carved_from_train_only_and_stratified(wav_folder):
    dataset = data.load_recordings(wav_folder)
    cfg = DataConfig(split="official", val_fraction=0.2, split_seed=3)
    split = splits.make_split(dataset, cfg)
    without_val = splits.make_split(dataset, DataConfig(split="official", val_fraction=0.0))
    np.testing.assert_array_equal(split.test, without_val.test)  # test untouched by val
    np.testing.assert_array_equal(np.sort(np.concatenate([split.train, split.val])), without_val.train)
    assert without_val.val.size == 0
    counts = np.bincount(dataset.labels[split.val], minlength=10)  # 6 training clips per digit
    assert split.val.size == 12 and counts.min() == 1 and counts.max() == 2
    again = splits.make_split(dataset, cfg)
    np.testing.assert_array_equal(again.val, split.val)
    assert not np.array_equal(splits.make_split(dataset, DataConfig(split="official", val_fraction=0.2,
                                                                  split_seed=4)).val, split.val)


def test_split_errors(wav_folder):
    dataset = data.load_recordings(wav_folder)
    with pytest.raises(DataError, match="val_fraction"):
        splits.make_split(dataset, DataConfig(val_fraction=1.0))
    with pytest.raises(DataError, match="test_size"):
        splits.make_split(dataset, DataConfig(test_size=0.0))
    with pytest.raises(DataError, match="stratified validation"):
        splits.make_split(dataset, DataConfig(split="official", val_fraction=0.05))  # 3 clips < 10 classes
    no_nines_in_train = dataset.subset(~((dataset.labels == 9) & (dataset.partition == "train")))
    with pytest.raises(DataError, match=r"training clips lack class\(es\) \['9'\]"):
        splits.make_split(no_nines_in_train, DataConfig(split="official", val_fraction=0.0))


@pytest.mark.fsdd
def test_real_archive_contents(fsdd_dataset, fsdd_archive):
    if fsdd_archive.is_file():  # $LSTMQ_DATA may also name a folder of the WAVs
        assert fsdd_dataset.fingerprint == download.file_sha256(fsdd_archive) == \
            download.KNOWN_URLS[DataConfig.url]
    assert sorted(set(fsdd_dataset.speakers.tolist())) == [
        "george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    assert np.bincount(fsdd_dataset.labels).tolist() == [300] * 10
    assert fsdd_dataset.names[:3] == ("0_george_0.wav", "0_george_1.wav", "0_george_10.wav")
    lengths = np.array([a.size for a in fsdd_dataset.audio])
    assert (lengths.min(), lengths.max()) == (1148, 18262)
    assert max(float(np.abs(a).max()) for a in fsdd_dataset.audio) <= 1.0


@pytest.mark.fsdd
def test_real_random_split_matches_the_reference_study(fsdd_dataset):
    study = DataConfig(stratify=False)  # the reference study's unstratified split
    split = splits.make_split(fsdd_dataset, dataclasses.replace(study, val_fraction=0.0))
    assert (split.train.size, split.val.size, split.test.size) == (2400, 0, 600)
    train, test = train_test_split(np.arange(3000), test_size=0.2, random_state=42)
    np.testing.assert_array_equal(split.test, np.sort(test))
    np.testing.assert_array_equal(split.train, np.sort(train))
    with_val = splits.make_split(fsdd_dataset, study)
    assert (with_val.train.size, with_val.val.size, with_val.test.size) == (2160, 240, 600)
    np.testing.assert_array_equal(with_val.test, split.test)
    assert np.intersect1d(with_val.val, split.test).size == 0
    counts = np.bincount(fsdd_dataset.labels[with_val.val], minlength=10)
    expected = 0.1 * np.bincount(fsdd_dataset.labels[split.train], minlength=10)
    assert np.all(np.abs(counts - expected) <= 1)  # stratified on the training labels
    from lstmq.config import load_config  # pylint: disable=import-outside-toplevel

    for name in ("task_a", "task_b_float", "task_b_qat"):  # the study's configs keep its split
        same = splits.make_split(fsdd_dataset, load_config(name).data)
        assert all(np.array_equal(a, b) for a, b in zip(
            (same.train, same.val, same.test), (with_val.train, with_val.val, with_val.test)))
    again = splits.make_split(fsdd_dataset, study)
    for a, b in zip((again.train, again.val, again.test), (with_val.train, with_val.val, with_val.test)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.fsdd
def test_real_official_and_speaker_splits(fsdd_dataset):
    official = splits.make_split(fsdd_dataset, DataConfig(split="official"))
    assert official.test.size == 300 and official.train.size + official.val.size == 2700
    george = splits.make_split(fsdd_dataset, DataConfig(split="speaker", test_speaker="george"))
    assert george.test.size == 500
    assert "george" not in set(fsdd_dataset.speakers[np.concatenate([george.train, george.val])].tolist())
    nested = splits.make_split(fsdd_dataset, DataConfig(split="speaker", test_speaker="george",
                                                      val_speaker="theo"))
    assert set(fsdd_dataset.speakers[nested.val].tolist()) == {"theo"} and nested.val.size == 500
    assert nested.train.size == 2000


def test_validation_speaker(wav_folder):
    for path in sorted(wav_folder.glob("*_bob_*.wav")):  # a third speaker: carol sounds like bob
        shutil.copy(path, path.with_name(path.name.replace("_bob_", "_carol_")))
    dataset = data.load_recordings(wav_folder)
    test, held = "alice", "carol"
    split = splits.make_split(dataset, DataConfig(split="speaker", test_speaker=test, val_speaker=held))
    assert set(dataset.speakers[split.val].tolist()) == {held}
    assert held not in set(dataset.speakers[split.train].tolist())
    assert len(split.train) + len(split.val) + len(split.test) == len(dataset)
    with pytest.raises(DataError, match="also the test speaker"):
        splits.make_split(dataset, DataConfig(split="speaker", test_speaker=test, val_speaker=test))
    with pytest.raises(DataError, match="not among the training speakers"):
        splits.make_split(dataset, DataConfig(split="speaker", test_speaker=test, val_speaker="zed"))
    with pytest.raises(DataError, match="needs a speaker split"):
        splits.make_split(dataset, DataConfig(split="official", val_speaker=held))

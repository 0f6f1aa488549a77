"""No silent wrong answer: each case a hostile user tried becomes a clear error (naming the
file or key, exit code 2 on the command line) or a correct result.

Numbered as in docs/reliability.md. Trainings here are tiny (one layer of hidden 4, one
seed, one epoch) on the synthetic FSDD-named folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lstmq import data, download
from lstmq.artifact import ArtifactError, load_artifact, manifest_checksum
from lstmq.checkpoint import CheckpointError
from lstmq.cli import main
from lstmq.config import ConfigError, load_config
from lstmq.data import DataError
from lstmq.io import FolderLock, FolderLockedError, atomic_write_json, read_json
from lstmq.pipeline import prepare_data
from lstmq.runner import RunFolderError, TrainingDivergedError, train_and_evaluate

pytestmark = pytest.mark.filterwarnings(
    "ignore:Implicit conversion of an array to a dtype:DeprecationWarning")


def tiny(folder, *extra) -> list[str]:
    return [f"data.path={folder}", "data.split=official", "data.val_fraction=0",
            "features.cache=false", "model.hidden=4", "model.layers=1", "train.seeds=1",
            "train.batch_size=8", "train.epochs=1", *extra]


def train(folder, out, *extra, **options):
    return train_and_evaluate(load_config(overrides=tiny(folder, *extra)), out, progress=False,
                              **options)


def make_tar(folder: Path, target: Path) -> Path:
    with tarfile.open(target, "w:gz") as archive:
        for wav in sorted(folder.iterdir()):
            archive.add(wav, arcname=f"release/recordings/{wav.name}")
    return target


def flipped(path: Path, target: Path, positions, mask: int = 0xFF) -> Path:
    raw = bytearray(path.read_bytes())
    for p in positions:
        raw[p] ^= mask
    target.write_bytes(bytes(raw))
    return target


# 1. corrupted archives -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["middle", "end", "one bit"])
def test_1_a_corrupted_tar_gz_is_refused(wav_folder, tmp_path, where):
    archive = make_tar(wav_folder, tmp_path / "good.tar.gz")
    size = archive.stat().st_size
    positions, mask = {"middle": (range(size // 2, size // 2 + 16), 0xFF),
                       "end": (range(size - 40, size - 24), 0xFF),
                       "one bit": ([size // 3], 0x04)}[where]
    bad = flipped(archive, tmp_path / "bad.tar.gz", positions, mask)
    with pytest.raises(DataError, match="corrupted or unreadable archive") as error:
        data.load_recordings(bad)
    assert str(bad) in str(error.value)


def test_1_a_corrupted_zip_member_is_refused(wav_folder, tmp_path):
    target = tmp_path / "good.zip"
    with zipfile.ZipFile(target, "w") as archive:  # stored: the flipped byte is audio data
        for wav in sorted(wav_folder.iterdir()):
            archive.write(wav, arcname=f"recordings/{wav.name}")
    bad = flipped(target, tmp_path / "bad.zip", [target.stat().st_size // 2])
    with pytest.raises(DataError, match="CRC|corrupted"):
        data.load_recordings(bad)


def test_1_a_known_release_name_or_a_configured_sha256_must_match(wav_folder, tmp_path):
    fake = make_tar(wav_folder, tmp_path / "free-spoken-digit-dataset-1.0.10.tar.gz")
    with pytest.raises(DataError, match="checksum mismatch: the known release"):
        data.load_recordings(fake)
    other = make_tar(wav_folder, tmp_path / "mine.tar.gz")
    assert len(data.load_recordings(other)) == 100  # unknown name, no sha256: CRC only
    with pytest.raises(DataError, match="checksum mismatch: data.sha256"):
        data.load_recordings(other, sha256="0" * 64)
    config = load_config(overrides=[f"data.path={other}", f"data.sha256={'1' * 64}"])
    with pytest.raises(DataError, match="checksum mismatch"):
        data.load_dataset(config.data)


# 2, 3, 5. run folders ----------------------------------------------------------------------


def test_2_a_folder_of_another_config_is_refused_unless_overwritten(wav_folder, tmp_path, capsys):
    out = tmp_path / "run"
    train(wav_folder, out)
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(RunFolderError, match=r"data.split \('official' -> 'random'\)"):
        train(wav_folder, out, "data.split=random")
    assert (out / "metrics.json").read_bytes() == before
    args = ["train", "--out", str(out), "--quiet"]
    for override in tiny(wav_folder, "data.split=random"):
        args += ["--set", override]
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert read_json(out / "run.json")["config"]["data"]["split"] == "random"
    assert read_json(out / "metrics.json")["data"]["fingerprint"]


def test_2_other_data_in_the_same_folder_is_refused(wav_folder, tmp_path, write_wav):
    out = tmp_path / "run"
    train(wav_folder, out)
    write_wav(wav_folder / "3_alice_9.wav", np.zeros(800, np.int16))  # the data changed
    with pytest.raises(RunFolderError, match="trained on other data"):
        train(wav_folder, out, "train.epochs=2")


def test_3_a_locked_folder_is_refused_in_and_across_processes(wav_folder, tmp_path):
    out = tmp_path / "run"
    with FolderLock(out), pytest.raises(FolderLockedError, match="another lstmq process"):
        train(wav_folder, out)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from lstmq.io import FolderLock
        with FolderLock({str(out)!r}):
            print("locked", flush=True)
            time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError):
            train(wav_folder, out)
    finally:
        holder.kill()
        holder.wait()
    stale = out / ".metrics.json.x1y2.tmp"  # an atomic write the killed holder left
    stale.write_text("{")
    train(wav_folder, out)  # the lock died with its process
    assert not stale.exists()


def test_5_a_failed_rerun_leaves_the_finished_run_intact(wav_folder, tmp_path):
    out = tmp_path / "run"
    train(wav_folder, out)
    saved = {name: (out / name).read_bytes() for name in ("run.json", "params.msgpack",
                                                          "metrics.json")}
    for path in (out / "checkpoints").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    with pytest.raises((CheckpointError, ValueError, OSError)):
        train(wav_folder, out, "train.epochs=2")
    assert {name: (out / name).read_bytes() for name in saved} == saved
    from lstmq.inference import evaluate_run

    assert evaluate_run(out, progress=False)["test_count"] == 40


# 4. non-finite values --------------------------------------------------------------------


def test_4_huge_samples_are_refused_naming_the_clip(wav_folder, write_wav):
    huge = np.full(1600, 1e30, np.float32) * np.sign(np.sin(np.arange(1600)))
    write_wav(wav_folder / "3_alice_9.wav", huge, subtype="FLOAT")
    with pytest.raises(DataError, match="3_alice_9.wav: its features hold NaN or infinite"):
        prepare_data(load_config(overrides=tiny(wav_folder)), progress=False)


def test_4_a_diverging_training_stops_and_writes_no_nan(wav_folder, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match="not finite in epoch 1"):
        train(wav_folder, out, "train.learning_rate=1e30", "train.grad_clip=0",
              "train.epochs=3", "train.warmup_epochs=0")
    assert not (out / "metrics.json").exists() and not (out / "run.json").exists()
    for path in out.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {path}"))


def test_4_nan_settings_and_nan_results_never_pass(tmp_path):
    with pytest.raises(ConfigError, match="train.learning_rate: must be a finite number"):
        load_config(overrides=["train.learning_rate=.nan"])
    with pytest.raises(ValueError, match="non-finite"):
        atomic_write_json(tmp_path / "x.json", {"accuracy": float("nan")})
    assert not (tmp_path / "x.json").exists()


# 6. the byte budget at export --------------------------------------------------------------


def test_6_one_weight_width_and_the_budget_enforced_at_export(wav_folder, tmp_path, capsys):
    with pytest.raises(ConfigError, match="budget.weight_bits"):
        load_config(overrides=["budget.weight_bits=4"])  # one source: quant.weight_bits
    out = tmp_path / "run"
    train(wav_folder, out, "quant.mode=qat", "model.hidden=auto", "budget.bytes=4096")
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "m.lstmqz")]) == 0
    assert "within the 4,096-byte budget" in capsys.readouterr().out
    record = read_json(out / "run.json")
    record["config"]["budget"]["bytes"] = 1000  # a run whose model no longer fits its budget
    atomic_write_json(out / "run.json", signed(record))  # as if written so
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "n.lstmqz")]) == 2
    assert "over the budget of 1,000" in capsys.readouterr().err
    assert not (tmp_path / "n.lstmqz").exists()


def test_6_a_closed_stdout_ends_the_command_without_a_traceback():
    """`lstmq budget ... | head` once printed a BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "lstmq", "budget", "--bytes", "36864",
                               "--layers", "2", "--bits", "4"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert "Traceback" not in done.stderr, done.stderr


# 7. config values ------------------------------------------------------------------------


@pytest.mark.parametrize("override, key", [
    ("quant.weight_bits=3", "quant.weight_bits"),
    ("quant.activation_bits=8", "quant.activation_bits"),
    ("model.dropout=-0.1", "model.dropout"),
    ("model.dropout=1.0", "model.dropout"),
    ("train.learning_rate=0", "train.learning_rate"),
    ("train.learning_rate=-0.001", "train.learning_rate"),
    ("train.grad_clip=-1", "train.grad_clip"),
    ("train.warmup_epochs=-1", "train.warmup_epochs"),
    ("augment.copies=-2", "augment.copies"),
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=-3", "train.epochs"),
    ("quant.input_clip=0", "quant.input_clip"),
    ("model.layers=0", "model.layers"),
    ("features.hop_ms=0", "features.hop_ms"),
    ("features.n_mfcc=0", "features.n_mfcc"),
    ("data.path=", "data.path"),
    ("model.num_classes=1", "model.num_classes"),
    ("train.batch_shards=3", "train.batch_shards"),
    ("=3", "empty key"),
])
def test_7_bad_values_are_refused_naming_the_key(override, key, capsys, tmp_path):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=[override])
    assert main(["train", "--out", str(tmp_path / "x"), "--set", override]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_7_duplicate_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  epochs: 5\n")
    with pytest.raises(ConfigError, match="duplicate key 'epochs'") as error:
        load_config(path)
    assert str(path) in str(error.value)


# 8. artifacts ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    from lstmq.artifact import write_artifact
    from lstmq.integer import convert_params
    from lstmq.model import LSTMClassifier

    import jax
    import jax.numpy as jnp

    model = LSTMClassifier(hidden=6, layers=1, num_classes=3)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 5)), jnp.ones((1,), jnp.int32))
    integer = convert_params(jax.tree_util.tree_map(np.asarray, params["params"]), 3.0)
    path = tmp_path_factory.mktemp("artifact") / "model.lstmqz"
    write_artifact(integer, path, 8)
    return path


def _edit(src: Path, dst: Path, tensor: str | None = None, array=None, manifest=None,
          resign: bool = True) -> Path:
    """A tampered copy: one tensor replaced (its sha256 updated), the manifest edited."""
    with zipfile.ZipFile(src) as old:
        members = {i.filename: old.read(i) for i in old.infolist()}
    values = json.loads(members["manifest.json"])
    if tensor is not None:
        buffer = io.BytesIO()
        np.save(buffer, array)
        members[f"tensors/{tensor}.npy"] = buffer.getvalue()
        entry = next(t for t in values["tensors"] if t["name"] == tensor)
        entry["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    if manifest is not None:
        manifest(values)
    if resign:
        values["manifest_sha256"] = manifest_checksum(values)
    members["manifest.json"] = json.dumps(values).encode()
    with zipfile.ZipFile(dst, "w") as new:
        for name, blob in members.items():
            new.writestr(name, blob)
    return dst


def test_8_shifts_and_multipliers_out_of_range_are_refused(artifact, tmp_path):
    model, _ = load_artifact(artifact)
    shift = model["lstm_0/input/requant_shift"].copy()
    shift[0] = 100
    with pytest.raises(ArtifactError, match=r"requant_shift holds 100, outside \[-31, 31\]"):
        load_artifact(_edit(artifact, tmp_path / "a.lstmqz", "lstm_0/input/requant_shift", shift))
    multiplier = model["lstm_0/cell/recurrent/requant_multiplier"].copy()
    multiplier[1] = -5
    with pytest.raises(ArtifactError, match="requant_multiplier holds -5"):
        load_artifact(_edit(artifact, tmp_path / "b.lstmqz",
                            "lstm_0/cell/recurrent/requant_multiplier", multiplier))


def test_8_a_member_declaring_gigabytes_is_refused_before_it_is_read(artifact, tmp_path):
    raw = bytearray(artifact.read_bytes())
    name = b"tensors/lstm_0/input/kernel.npy"
    central = raw.rfind(b"PK\x01\x02", 0, raw.rfind(name))  # its central directory entry
    struct.pack_into("<I", raw, central + 24, 2**31)  # uncompressed size: 2 GiB
    bad = tmp_path / "big.lstmqz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="declares 2,147,483,648 bytes"):
        load_artifact(bad)


def test_8_a_missing_shape_or_an_absurd_npy_header_is_an_artifact_error(artifact, tmp_path):
    def drop_shape(values):
        del values["tensors"][0]["shape"]

    with pytest.raises(ArtifactError, match="malformed tensor list"):
        load_artifact(_edit(artifact, tmp_path / "a.lstmqz", manifest=drop_shape))
    header = b"\x93NUMPY\x01\x00v\x00{'descr': '|i1', 'fortran_order': False, 'shape': (1000000000000,), }"
    header = header.ljust(10 + 0x76 - 1) + b"\n"
    name = "lstm_0/input/kernel"

    def resign_blob(values):
        entry = next(t for t in values["tensors"] if t["name"] == name)
        entry["sha256"] = hashlib.sha256(header).hexdigest()

    with zipfile.ZipFile(artifact) as old:
        members = {i.filename: old.read(i) for i in old.infolist()}
    members[f"tensors/{name}.npy"] = header
    values = json.loads(members["manifest.json"])
    resign_blob(values)
    values["manifest_sha256"] = manifest_checksum(values)
    members["manifest.json"] = json.dumps(values).encode()
    bad = tmp_path / "npy.lstmqz"
    with zipfile.ZipFile(bad, "w") as new:
        for member, blob in members.items():
            new.writestr(member, blob)
    with pytest.raises(ArtifactError, match="1000000000000"):
        load_artifact(bad)


def test_8_the_manifest_protects_its_own_fields(artifact, tmp_path):
    def to_mean(values):
        values["readout"] = "mean"

    with pytest.raises(ArtifactError, match="fails its checksum"):
        load_artifact(_edit(artifact, tmp_path / "a.lstmqz", manifest=to_mean, resign=False))


# 9, 10. tracebacks and silent losses -------------------------------------------------------


def test_9_an_unreadable_wav_is_a_data_error(wav_folder, monkeypatch):
    real = Path.read_bytes
    target = wav_folder / "3_bob_5.wav"

    def read_bytes(self):
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(DataError, match="3_bob_5.wav: cannot be read \\(Permission denied\\)"):
        data.load_recordings(wav_folder)


def test_9_export_to_a_folder_and_ctrl_c_are_one_line(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["export", "--run", str(tmp_path), "--out", str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err

    import lstmq.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lstmq.runner, "train_and_evaluate", interrupted)
    assert main(["train", "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]


def test_10_dangling_links_and_unreadable_folders_are_reported(wav_folder, tmp_path,
                                                               monkeypatch, caplog):
    (wav_folder / "9_bob_8.wav").symlink_to(tmp_path / "gone.wav")
    real_walk = os.walk

    def walk(top, onerror=None, **kwargs):
        onerror(PermissionError(13, "Permission denied", str(wav_folder / "locked")))
        yield from real_walk(top, onerror=onerror, **kwargs)

    monkeypatch.setattr(os, "walk", walk)
    with caplog.at_level(logging.WARNING, logger="lstmq"):
        dataset = data.load_recordings(wav_folder)
    assert len(dataset) == 100
    assert "9_bob_8.wav: dangling link; skipped" in caplog.text
    assert "locked: folder cannot be read (Permission denied); skipped" in caplog.text


def test_10_a_truncated_wav_is_refused(wav_folder):
    path = wav_folder / "3_bob_5.wav"
    path.write_bytes(path.read_bytes()[:-200])  # the header still declares the full length
    with pytest.raises(DataError, match="3_bob_5.wav: truncated WAV file .*200 more bytes"):
        data.load_recordings(wav_folder)


# 11, 12. logging and smaller cases -------------------------------------------------------


def test_11_a_resumed_run_says_so(wav_folder, tmp_path, capsys):
    args = ["train", "--out", str(tmp_path / "run"), "--quiet"]
    for override in tiny(wav_folder):
        args += ["--set", override]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--set", "train.epochs=2"]) == 0
    assert "resumed from epoch 1 of 2" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # a finished run without its checkpoints
    assert main([*args, "--set", "train.epochs=3"]) == 0
    assert "no checkpoint in" in capsys.readouterr().err


def test_12_a_killed_downloads_leftover_is_removed(tmp_path, wav_folder):
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    archive = make_tar(wav_folder, served / "v.tar.gz")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tmpk1ll3d").write_bytes(b"half a download")  # as a killed download leaves it
    (cache / download.PARTIAL_LIST).write_text("tmpk1ll3d\n")
    (cache / "tmpN0tOurs").write_bytes(b"another program's file in a shared cache")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v.tar.gz"
        os.environ.setdefault("NO_PROXY", "127.0.0.1")
        path = download.download_archive(url, download.file_sha256(archive), cache, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert path.is_file() and not (cache / "tmpk1ll3d").exists()
    assert (cache / "tmpN0tOurs").is_file()  # only lstmq's own leftover goes
    assert not (cache / download.PARTIAL_LIST).exists()


def test_12_a_download_notes_its_temporary_file_before_writing_it(tmp_path, monkeypatch):
    import pooch

    cache, seen = tmp_path / "cache", []

    def fake_download(url, output_file, instance):  # what pooch's HTTP downloader does
        seen.append((download._partial_list(cache).read_text().split(), Path(output_file).name))
        Path(output_file).write_bytes(b"archive")

    monkeypatch.setattr(pooch.downloaders, "choose_downloader",
                        lambda url, progressbar: fake_download)
    digest = hashlib.sha256(b"archive").hexdigest()
    path = download.download_archive("http://127.0.0.1:9/a.tar.gz", digest, cache, progress=False)
    (noted, name), = seen
    assert noted == [name] and name.startswith("tmp") and path.read_bytes() == b"archive"
    assert not (cache / name).exists() and not (cache / download.PARTIAL_LIST).exists()


def test_12_a_second_process_waits_for_the_download_lock_instead_of_failing(tmp_path):
    import threading

    acquired = threading.Event()

    def second():
        with FolderLock(tmp_path, wait=True, holder="downloading into this cache"):
            acquired.set()

    with FolderLock(tmp_path, holder="downloading into this cache"):
        with pytest.raises(FolderLockedError, match="another lstmq process is downloading into "
                                                    "this cache; wait for it$"):
            with FolderLock(tmp_path, holder="downloading into this cache", advice="wait for it"):
                pass
        waiter = threading.Thread(target=second)
        waiter.start()
        assert not acquired.wait(0.5)  # blocked while the first holds the lock
    waiter.join(10)
    assert acquired.is_set()


def test_12_eval_follows_the_runs_resampling_rule_and_names_files(wav_folder, tmp_path,
                                                                 write_wav, synthetic_clip):
    out = tmp_path / "run"
    train(wav_folder, out)
    other = tmp_path / "rate"
    write_wav(other / "3_bob_5.wav", synthetic_clip(3, 1, 5, sample_rate=16000), 16000)
    from lstmq.inference import evaluate_run

    with pytest.raises(DataError, match="3_bob_5.wav: sample rate 16000 Hz, expected 8000.*"
                                        "--resample of lstmq eval --data"):
        evaluate_run(out, data=other, progress=False)
    assert main(["eval", "--run", str(out), "--data", str(other), "--resample", "--quiet"]) == 0
    assert evaluate_run(out, data=other, progress=False, resample=True)["test_count"] == 1
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "3_bob_5.wav").write_bytes(b"RIFF not really audio" * 10)
    with pytest.raises(DataError, match="not a readable WAV") as error:
        data.load_recordings(corrupt)
    assert "BytesIO" not in str(error.value)


def test_12_an_unknown_key_in_run_json_names_the_file(wav_folder, tmp_path):
    from lstmq.runs import load_run

    out = tmp_path / "run"
    train(wav_folder, out)
    record = read_json(out / "run.json")
    record["config"]["train"]["turbo"] = True  # a run of a newer lstmq, say
    atomic_write_json(out / "run.json", signed(record))
    with pytest.raises(CheckpointError, match="run.json: unknown config key.*train.turbo"):
        load_run(out)


def test_15_an_edited_run_json_is_refused_not_read_with_swapped_classes(wav_folder, tmp_path):
    from lstmq.runs import load_run

    out = tmp_path / "run"
    train(wav_folder, out)
    record = read_json(out / "run.json")
    classes = record["derived"]["classes"]
    record["derived"]["classes"] = [classes[1], classes[0], *classes[2:]]
    atomic_write_json(out / "run.json", record)
    with pytest.raises(CheckpointError, match="run.json: its contents differ from the sha256"):
        load_run(out)
    del record["record_sha256"]  # a run written before the record was signed loads unchecked
    atomic_write_json(out / "run.json", record)
    assert load_run(out).classes[0] == classes[1]


def signed(record: dict) -> dict:
    from lstmq.runs import record_checksum

    return {**record, "record_sha256": record_checksum(record)}


# 13. damaged parameters, outputs that are folders, leftovers -------------------------------


def test_13_changed_parameters_are_refused_by_their_recorded_digest(wav_folder, tmp_path,
                                                                    capsys):
    from lstmq.runs import load_run

    out = tmp_path / "run"
    train(wav_folder, out)
    assert len(read_json(out / "run.json")["params_sha256"]) == 64
    params = out / "params.msgpack"
    raw = bytearray(params.read_bytes())
    raw[-3] ^= 0x01  # the low bits of the last float: still a well-formed msgpack file
    params.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="params.msgpack: contents differ from the sha256"):
        load_run(out)
    assert main(["eval", "--run", str(out), "--quiet"]) == 2
    assert "contents differ from the sha256" in capsys.readouterr().err


def test_13_outputs_that_are_folders_or_files_are_refused_before_any_work(wav_folder, tmp_path,
                                                                          capsys):
    out = tmp_path / "run"
    train(wav_folder, out)  # a float run: export's default path is its ptq-integer
    assert main(["eval", "--run", str(out), "--quiet", "--out", str(tmp_path)]) == 2
    assert "is a folder; give the report's file name" in capsys.readouterr().err
    artifact = tmp_path / "m.lstmqz"
    assert main(["export", "--run", str(out), "--out", str(artifact),
                 "--c-header", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err and not artifact.exists()
    assert main(["export", "--run", str(out), "--out", str(artifact)]) == 0
    assert read_json(out / "run.json")["config"]["quant"]["mode"] == "float"
    from lstmq.artifact import load_artifact

    assert load_artifact(artifact)[1]["path"] == "ptq-integer"
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    args = ["train", "--out", str(file), "--quiet"]
    for override in tiny(wav_folder):
        args += ["--set", override]
    assert main(args) == 2
    assert "notes.txt: exists and is not a folder" in capsys.readouterr().err
    assert file.read_text() == "mine"


def test_13_a_training_that_fails_on_its_data_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--out", str(out), "--quiet", "--set",
                 f"data.path={tmp_path / 'missing'}"]) == 2
    assert "missing" in capsys.readouterr().err and not out.exists()


def test_13_a_float32_run_asked_for_its_integer_model_says_how_to_train_one(wav_folder,
                                                                           tmp_path, capsys):
    out = tmp_path / "run"
    train(wav_folder, out, "quant.weight_bits=32")
    assert main(["eval", "--run", str(out), "--integer", "--quiet"]) == 2
    assert "quant.weight_bits=32; an integer model needs 4 or 8" in capsys.readouterr().err


def test_13_a_finished_run_is_reused_only_for_the_same_data_and_its_own_metrics(wav_folder,
                                                                                tmp_path):
    import shutil

    from lstmq.runner import train_or_reuse

    out = tmp_path / "run"
    config = load_config(overrides=tiny(wav_folder))
    first = train_or_reuse(config, out, progress=False)
    assert train_or_reuse(config, out, progress=False) == first  # reused as is
    other = tmp_path / "other"
    shutil.copytree(wav_folder, other)
    clip = sorted(other.iterdir())[0]
    clip.write_bytes(clip.read_bytes()[:-2] + b"\x01\x00")
    with pytest.raises(RunFolderError, match="trained on other data"):  # not reused silently
        train_or_reuse(load_config(overrides=tiny(other)), out, progress=False)
    metrics = read_json(out / "metrics.json")
    metrics["params_sha256"] = "0" * 64  # metrics of other parameters (an interrupted rewrite)
    atomic_write_json(out / "metrics.json", metrics)
    again = train_or_reuse(config, out, progress=False)  # trained again, not reused
    assert again["params_sha256"] == read_json(out / "run.json")["params_sha256"]


def test_13_a_run_folder_named_by_another_path_is_the_same_folder(tmp_path, monkeypatch):
    from lstmq.runner import config_differences

    (tmp_path / "float").mkdir()
    monkeypatch.chdir(tmp_path)
    recorded = {"quant": {"init_from": str(tmp_path / "float")}}
    assert config_differences(recorded, {"quant": {"init_from": "float"}}) == []
    assert config_differences(recorded, {"quant": {"init_from": "elsewhere"}})
    (tmp_path / "task_a").mkdir()  # a folder does not hide the built-in config of its name
    assert load_config("task_a").model.layers == 2


def test_13_experiment_scripts_report_the_users_errors_in_one_line(capsys, monkeypatch):
    from experiments import common

    monkeypatch.setattr("sys.argv", ["task_a.py"])

    def bad_config():
        load_config(overrides=["train.epoch=3"])

    assert common.guarded(bad_config) == 2
    err = capsys.readouterr().err
    assert err.startswith("task_a: error: ") and "train.epoch" in err and len(err.splitlines()) == 1


def test_15_predicting_a_folder_names_what_its_walk_leaves_out(tmp_path, caplog):
    from lstmq.inference import wav_files

    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "ok.wav").write_bytes(b"RIFF")  # listed, not decoded here
    (folder / "notes.mp3").write_bytes(b"ID3")
    (folder / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    with caplog.at_level(logging.WARNING, logger="lstmq"):
        assert wav_files(folder) == [folder / "ok.wav"]  # one folder, given as a Path
    said = " ".join(record.getMessage() for record in caplog.records)
    assert "gone.wav: dangling link; skipped" in said and ".mp3" in said


def test_15_a_cache_that_cannot_be_created_is_named_as_such_not_as_a_failed_download(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match=r"file/cache: the download cache cannot be created .*"
                                        r"data.cache_dir or \$LSTMQ_CACHE"):
        download.download_archive("http://127.0.0.1:9/a.tar.gz", "0" * 64, blocker / "cache",
                                  progress=False)


def test_15_eval_out_where_nothing_can_be_written_is_refused_before_the_evaluation(
        tmp_path, monkeypatch, capsys):
    import lstmq.inference

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(lstmq.inference, "evaluate_run",
                        lambda *args, **kwargs: pytest.fail("evaluated before the check"))
    assert main(["eval", "--run", str(tmp_path), "--out", str(blocker / "eval.json")]) == 2
    assert "file/eval.json: its folder cannot be made" in capsys.readouterr().err
    with pytest.raises(OSError, match=r"x/report.json: cannot be written \("):
        atomic_write_json(blocker / "x" / "report.json", {})


def test_15_predict_path_refuses_a_split_prepared_under_other_features(wav_folder, tmp_path):
    from lstmq.paths import predict_path
    from lstmq.runs import load_run

    out = tmp_path / "run"
    train(wav_folder, out)
    run = load_run(out)
    own = prepare_data(run.config, progress=False).test
    assert predict_path(run, own).shape[1] == len(own)  # made alike: scored
    other = load_config(overrides=[*tiny(wav_folder), "features.n_mels=20"])
    with pytest.raises(DataError, match=r"run: the split was prepared under other settings than "
                                        r"this run's: features.n_mels \(prepared 20, the run's 40\)"):
        predict_path(run, prepare_data(other, progress=False).test)
    unnormalised = load_config(overrides=[*tiny(wav_folder), "features.normalize=none"])
    with pytest.raises(DataError, match="features.normalize .*the normalisation statistics"):
        predict_path(run, prepare_data(unnormalised, progress=False).test)

"""The robustness suite: exact SNRs, babble from other speakers and classes, deterministic
copies, and `lstmq robustness` end to end on a tiny run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lstmq.augment import add_at_snr
from lstmq.cli import main
from lstmq.data import DataError, from_arrays
from lstmq.io import read_json
from lstmq.robustness import (Condition, babble_noise, babble_talkers, corrupt_dataset,
                              format_markdown)


def _snr_db(clean, noisy):
    clean = np.asarray(clean, np.float64)
    return 10 * np.log10(np.mean(clean**2) / np.mean((np.asarray(noisy, np.float64) - clean) ** 2))


def _voice(seed, seconds=0.3, rate=8000, level=0.2):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * rng.uniform(150, 900) * t)
            * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _pool():
    speakers = ["ann", "bob", "cid", "dan"]
    audio, labels, who = [], [], []
    for s, speaker in enumerate(speakers):
        for digit in range(3):
            audio.append(_voice(10 * s + digit, 0.1 + 0.05 * digit))
            labels.append(str(digit))
            who.append(speaker)
    return from_arrays(audio, labels, 8000, speakers=who,
                       names=[f"{d}_{w}_{i}" for i, (d, w) in enumerate(zip(labels, who))])


@pytest.mark.parametrize("snr", [20.0, 10.0, 5.0, 0.0, -5.0])
def test_add_at_snr_sets_the_ratio_of_whole_clip_powers(snr):
    clean = _voice(0)
    noisy = add_at_snr(clean, np.random.default_rng(1).standard_normal(len(clean)), snr)
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    assert abs(_snr_db(clean, noisy) - snr) < 0.01


def test_add_at_snr_clips_and_refuses_what_it_cannot_do():
    loud = np.full(100, 0.99, np.float32)
    assert np.max(np.abs(add_at_snr(loud, np.random.default_rng(0).standard_normal(100), -10))) <= 1
    quiet = add_at_snr(np.zeros(4000, np.float32), np.random.default_rng(0).standard_normal(4000), 0)
    assert np.sqrt(np.mean(quiet.astype(np.float64) ** 2)) == pytest.approx(1e-4, rel=1e-3)
    with pytest.raises(ValueError, match="shape"):
        add_at_snr(loud, np.ones(99), 10)
    with pytest.raises(ValueError, match="silent"):
        add_at_snr(loud, np.zeros(100), 10)


def test_conditions_parse_and_name_themselves():
    assert Condition.parse("clean") == Condition("clean")
    assert Condition.parse("babble:10").name == "babble:10"
    assert Condition.parse("pitch:-4").label == "pitch -4 st"
    assert Condition.parse("speed:1.15").label == "speed x1.15"
    for bad, message in [("pink:10", "kind"), ("white", "number"), ("white:loud", "number"),
                         ("speed:9", "speed"), ("pitch:20", "12"), ("clean:3", "no value"),
                         ("white:nan", "finite"), ("babble:-100", "SNR"), ("white:500", "SNR")]:
        with pytest.raises(ValueError, match=message):
            Condition.parse(bad)


def test_babble_never_holds_the_clips_speaker_or_class_and_mixes_distinct_voices():
    pool = _pool()
    for seed in range(20):
        rng = np.random.default_rng(seed)
        chosen = babble_talkers(pool, "ann", 1, 3, rng)
        assert len(chosen) == 3
        assert "ann" not in pool.speakers[chosen] and 1 not in pool.labels[chosen]
        assert len(set(pool.speakers[chosen])) == 3  # three other speakers exist
    more = babble_talkers(pool, "ann", 1, 8, np.random.default_rng(0))  # 6 candidates
    assert len(more) == 8 and len(set(more.tolist())) == 6
    unknown = babble_talkers(pool, "", 0, 2, np.random.default_rng(0))  # speaker not known
    assert 0 not in pool.labels[unknown]
    lone = pool.subset(pool.speakers == "ann")
    with pytest.raises(DataError, match="another speaker"):
        babble_talkers(lone, "ann", 0, 2, np.random.default_rng(0))


def test_babble_noise_loops_each_voice_at_unit_rms():
    voices = [_voice(1, 0.05), _voice(2, 0.1, level=0.01)]
    noise = babble_noise(voices, 2000, np.random.default_rng(0))
    assert noise.shape == (2000,)
    alone = [babble_noise([v], 2000, np.random.default_rng(5)) for v in voices]
    for one in alone:  # a looped unit-RMS clip keeps unit RMS over whole periods
        assert np.sqrt(np.mean(one**2)) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("condition", ["white:10", "babble:5", "pitch:3", "speed:1.15"])
def test_corrupted_copies_are_deterministic_fingerprinted_and_at_their_snr(condition):
    pool = _pool()
    test = pool.subset(np.arange(0, len(pool), 2))
    cond = Condition.parse(condition)
    a, b = corrupt_dataset(test, cond, pool, seed=0), corrupt_dataset(test, cond, pool, seed=0)
    other = corrupt_dataset(test, cond, pool, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a.audio, b.audio))
    assert a.fingerprint == b.fingerprint != test.fingerprint
    np.testing.assert_array_equal(a.labels, test.labels)
    if cond.kind in ("white", "babble"):
        assert a.fingerprint != other.fingerprint
        assert not all(np.array_equal(x, y) for x, y in zip(a.audio, other.audio))
        for clean, noisy in zip(test.audio, a.audio):
            assert abs(_snr_db(clean, noisy) - cond.value) < 0.05
    if cond.kind == "speed":
        assert all(abs(len(x) - len(y) / 1.15) <= 2 for x, y in zip(a.audio, test.audio))
    assert corrupt_dataset(test, Condition("clean"), pool) is test


TINY = ["features.cache=false", "model.hidden=8", "model.layers=1", "train.seeds=2",
        "train.batch_size=8", "train.epochs=2"]


def test_robustness_cli_scores_every_condition_and_path(make_folders_dataset, tmp_path, capsys):
    root = make_folders_dataset(("down", "left", "up"))
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--quiet", "--set", f"data.path={root}"]
    for override in TINY:
        args += ["--set", override]
    assert main(args) == 0
    assert main(["eval", "--run", str(run), "--quiet", "--out", str(tmp_path / "eval.json")]) == 0
    capsys.readouterr()
    out = tmp_path / "robust"
    assert main(["robustness", "--run", str(run), "--out", str(out), "--quiet",
                 "--condition", "clean", "--condition", "babble:10", "--condition", "pitch:4",
                 "--talkers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| babble 10 dB |" in printed and "ptq-integer" in printed
    report = read_json(out / "robustness.json")
    assert (out / "robustness.png").stat().st_size > 0
    assert report["paths"] == ["float", "ptq-integer"] and len(report["rows"]) == 6
    assert report["conditions"] == ["clean", "babble:10", "pitch:4"]
    clean = {r["path"]: r for r in report["rows"] if r["condition"] == "clean"}
    evaluated = read_json(tmp_path / "eval.json")
    assert clean["float"]["per_seed"] == evaluated["test_accuracy_per_seed"]
    assert set(clean["float"]["per_speaker"]) == {"ann", "bob", "cid"}
    assert format_markdown(report) == (out / "robustness.md").read_text()
    assert "each clip read once" in (out / "robustness.md").read_text()
    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    for extra, message in ((["--out", str(taken)], "taken.txt: exists and is not a folder"),
                           (["--seed", "-1"], "noise seed must be at least 0")):
        assert main(["robustness", "--run", str(run), "--quiet", "--condition", "white:10",
                     *extra]) == 2
        assert message in capsys.readouterr().err

    qat = tmp_path / "qat"
    args = ["train", "--out", str(qat), "--quiet", "--set", f"data.path={root}",
            "--set", "quant.mode=qat", "--set", f"quant.init_from={run}"]
    for override in TINY:
        args += ["--set", override]
    assert main(args) == 0
    assert main(["robustness", "--run", str(run), "--run", str(qat), "--out", str(out / "both"),
                 "--quiet", "--condition", "white:5", "--condition", "clean"]) == 0
    both = read_json(out / "both" / "robustness.json")
    assert both["paths"] == ["float", "ptq-integer", "qat", "qat-integer"]
    assert [r["per_seed"] for r in both["rows"] if r["condition"] == "clean"][:2] == [
        clean["float"]["per_seed"], clean["ptq-integer"]["per_seed"]]
    assert main(["robustness", "--run", str(run), "--on", "val", "--quiet",
                 "--condition", "white:10"]) == 0
    on_val = read_json(run / "robustness_val" / "robustness.json")
    assert on_val["scored"] == "val" and on_val["test_count"] != report["test_count"]
    capsys.readouterr()
    assert main(["robustness", "--run", str(run), "--run", str(run), "--quiet"]) == 2
    assert "belongs to 2 of the runs" in capsys.readouterr().err

    assert main(["robustness", "--run", str(run), "--condition", "pink:3", "--quiet"]) == 2
    assert "pink:3" in capsys.readouterr().err
    _check_speed_votes_score_the_run_without_retraining(run, tmp_path, capsys)
    assert main(["robustness", "--run", str(run), "--path", "qat", "--quiet"]) == 2
    assert "needs a qat run" in capsys.readouterr().err


def _run_test_clips(run):
    from lstmq.inference import run_dataset
    from lstmq.splits import make_split

    dataset = run_dataset(run)
    return dataset.subset(make_split(dataset, run.config.data).test)


def _check_speed_votes_score_the_run_without_retraining(run, tmp_path, capsys):
    from lstmq.paths import predict_path
    from lstmq.pipeline import prepare_recordings
    from lstmq.robustness import with_vote_speeds
    from lstmq.runs import load_run

    out = tmp_path / "voted"
    assert main(["robustness", "--run", str(run), "--out", str(out), "--quiet", "--condition",
                 "clean", "--vote-speed", "0.9", "--vote-speed", "1.1"]) == 0
    report = read_json(out / "robustness.json")
    assert report["vote_speeds"] == [0.9, 1.1]
    assert "read at its own speed and at x0.9, x1.1" in (out / "robustness.md").read_text()
    voted = with_vote_speeds(load_run(run), (0.9, 1.1))
    test = prepare_recordings(_run_test_clips(voted), voted.config, voted.derived.normalizer,
                              progress=False)
    assert len(test.votes) == 2
    logits = predict_path(voted, test, "ptq-integer")
    expected = np.mean(np.argmax(logits, -1) == test.labels, -1)
    row = next(r for r in report["rows"] if r["path"] == "ptq-integer")
    assert list(row["per_seed"].values()) == pytest.approx(expected.tolist())
    plain = predict_path(voted, dataclasses.replace(test, votes=()), "ptq-integer")
    assert not np.array_equal(logits, plain)
    capsys.readouterr()
    assert main(["robustness", "--run", str(run), "--quiet", "--condition", "clean",
                 "--vote-speed", "1.0"]) == 2
    assert "features.vote_speeds" in capsys.readouterr().err

"""Speaker folds of any dataset with a speaker field: leave-one-speaker-out, and nested folds
that pick settings on validation speakers without ever reading a test speaker.

A fold is a list of config overrides, so a study trains it with the same config plus them.
"""

from __future__ import annotations

from collections.abc import Sequence

from lstmq.config import Config
from lstmq.data import load_dataset
from lstmq.splits import speakers_of


def dataset_speakers(config: Config) -> list[str]:
    """The speakers of the dataset a config names, sorted."""
    return speakers_of(load_dataset(config.data))


def leave_one_speaker_out(speakers: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(held-out speaker, overrides) for each speaker: that speaker is the test set, the
    validation set is carved from the other speakers' clips."""
    return [(s, ["data.split=speaker", f"data.test_speaker={s}"]) for s in speakers]


def nested_speaker_folds(speakers: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(validation speaker, overrides) per fold: speaker s is test, the next speaker
    (cyclically) is validation, so a setting is scored on a voice training never heard
    while the test speaker's clips are never read."""
    speakers = list(speakers)
    if len(speakers) < 3:
        raise ValueError(f"nested speaker folds need at least 3 speakers, got {len(speakers)}")
    return [(val, ["data.split=speaker", f"data.test_speaker={test}", f"data.val_speaker={val}"])
            for test, val in zip(speakers, speakers[1:] + speakers[:1])]

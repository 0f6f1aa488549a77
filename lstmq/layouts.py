"""Dataset layouts: which clips a file tree holds, with their labels, speakers and own split.

| layout | files | label | speaker | own split |
|---|---|---|---|---|
| ``fsdd`` | ``{digit}_{speaker}_{index}.wav`` in one folder | the digit, classes "0".."9" | from the name | takes 0-4 test |
| ``folders`` | ``root/<label>/**.wav`` | the class folder | before ``_nohash_`` in the name, if there | ``validation_list.txt`` / ``testing_list.txt`` beside the class folders |
| ``manifest`` | a .csv/.tsv with ``path,label[,speaker][,split]`` | the column | the column | the column (train/validation/test) |

``auto`` detection: a .csv/.tsv path or a top-level ``manifest.csv``/``manifest.tsv`` is a
manifest; WAVs in one folder that carry FSDD names (all or mostly) are FSDD, and so are
FSDD-named WAVs in several folders when some lie at the top or every folder is its clips'
digit; FSDD names only in other folders (perhaps class folders) are refused, asking for
``data.format``; anything else is the folders layout (``data.format`` overrides the detection).
An archive's single wrapper folder (``name/<label>/x.wav``) is looked through. Folders whose
names start with ``_`` (Speech Commands' ``_background_noise_``) hold no class and are skipped
with a note.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from pathlib import PurePosixPath

from lstmq.sources import FileTree, SourceError, is_wav

LAYOUTS = ("fsdd", "folders", "manifest")
FSDD_CLASSES = tuple(str(d) for d in range(10))
FSDD_TEST_TAKES = 5  # takes 0-4 form FSDD's official test set
SPLIT_NAMES = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation",
                  "val": "validation", "valid": "validation", "dev": "validation",
                  "test": "test", "testing": "test"}
_LISTS = {"validation_list.txt": "validation", "testing_list.txt": "test"}
_MANIFESTS = ("manifest.csv", "manifest.tsv")
_INDEX = re.compile(r"[0-9]+")
NOHASH = "_nohash_"


class LayoutError(SourceError):
    """Files that do not form a dataset of the layout; names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One clip: where it is in the tree and what the layout says about it."""

    path: str  # path in the tree
    name: str  # unique name; datasets are sorted by it
    label: str
    speaker: str = ""  # "" when the layout does not know
    partition: str = ""  # the dataset's own split: train, validation, test, or ""


def split_name(value: str) -> str:
    """The split a dataset's own split value names (train/validation/test, also training,
    val, valid, dev, testing; any case, spaces trimmed); "" for "". Raises LayoutError."""
    value = value.strip().lower()
    if value and value not in _SPLIT_ALIASES:
        raise LayoutError(f"split {value!r} is not one of {', '.join(SPLIT_NAMES)}")
    return _SPLIT_ALIASES.get(value, "")


def parse_fsdd_name(name: str, where: str | None = None) -> tuple[int, str, int]:
    """Split ``{digit}_{speaker}_{index}.wav`` into (digit, speaker, index).

    Raises:
      LayoutError: naming ``where`` (default: the name) and what is wrong.
    """
    where = where or name
    base = PurePosixPath(name).name
    stem, _, ext = base.rpartition(".")
    parts = stem.split("_")
    if ext.lower() != "wav" or len(parts) < 3:
        raise LayoutError(f"{where}: file name must look like {{digit}}_{{speaker}}_{{index}}.wav")
    digit, speaker, index = parts[0], "_".join(parts[1:-1]), parts[-1]
    if len(digit) != 1 or digit not in "0123456789":
        raise LayoutError(f"{where}: digit {digit!r} in the file name is not 0-9")
    if not speaker:
        raise LayoutError(f"{where}: empty speaker name in the file name")
    if not _INDEX.fullmatch(index):
        raise LayoutError(f"{where}: index {index!r} in the file name is not an integer")
    return int(digit), speaker, int(index)


def _is_fsdd_name(name: str) -> bool:
    try:
        parse_fsdd_name(name)
    except LayoutError:
        return False
    return True


def dataset_root(tree: FileTree) -> str:
    """The folder of ``tree`` that holds the dataset: "" or an archive's wrapper folder."""
    wavs = tree.wavs()
    if tree.kind != "archive" or not wavs:
        return ""
    tops = {PurePosixPath(p).parts[0] for p in wavs}
    deep = all(len(PurePosixPath(p).parts) >= 3 for p in wavs)
    return tops.pop() if len(tops) == 1 and deep else ""


def _relative(path: str, root: str) -> str:
    return path[len(root) + 1:] if root else path


def detect_layout(tree: FileTree, manifest: str | None = None) -> str:
    """``fsdd``, ``folders`` or ``manifest`` for a tree (``manifest``: a given manifest file).

    Raises:
      LayoutError: FSDD-named WAVs that all lie in several folders, not their digits.
    """
    if manifest is not None or find_manifest(tree) is not None:
        return "manifest"
    wavs = tree.wavs()
    named = sum(_is_fsdd_name(p) for p in wavs)
    folders = {PurePosixPath(p).parent for p in wavs}
    # Mostly FSDD names in one folder (then the FSDD rules name the file whose name is wrong).
    if wavs and len(folders) == 1 and 2 * named > len(wavs):
        return "fsdd"
    if wavs and named == len(wavs):
        # FSDD names in several folders: FSDD if some sit beside the folders (no class folder)
        # or the folders are their digits (the labels agree either way), else perhaps class
        # folders whose files look like FSDD's; do not guess.
        root = dataset_root(tree)
        if (any(len(PurePosixPath(_relative(p, root)).parts) < 2 for p in wavs)
                or all(PurePosixPath(p).parent.name == PurePosixPath(p).name[0] for p in wavs)):
            return "fsdd"
        shown = sorted(_relative(f.as_posix(), root) for f in folders)
        more = ", ..." if len(shown) > 3 else ""
        raise LayoutError(
            f"{tree.location}: the WAV files have FSDD names ({{digit}}_{{speaker}}_{{index}}.wav) "
            f"but lie in several folders ({', '.join(shown[:3])}{more}); set data.format to fsdd "
            "or folders (labels from the digits in the names, or from the folders)")
    return "folders"


def find_manifest(tree: FileTree) -> str | None:
    """A top-level ``manifest.csv``/``.tsv`` (in an archive, also inside its one top folder)."""
    depth = 2 if tree.kind == "archive" else 1
    found = [p for p in tree.paths
             if PurePosixPath(p).name in _MANIFESTS and len(PurePosixPath(p).parts) <= depth]
    return min(found, key=lambda p: len(PurePosixPath(p).parts)) if found else None


def fsdd_entries(tree: FileTree) -> list[Entry]:
    """FSDD clips: names are the file names (so splits do not depend on the folder)."""
    entries = []
    for path in tree.wavs():
        try:
            digit, speaker, index = parse_fsdd_name(path, tree.where(path))
        except LayoutError as error:
            raise LayoutError(f"{error} (a folder of FSDD-named WAVs is read as FSDD; put "
                              "other clips in root/<label>/ class folders or list them in a "
                              "manifest)"
                              ) from None
        entries.append(Entry(path, PurePosixPath(path).name, str(digit), speaker,
                             "test" if index < FSDD_TEST_TAKES else "train"))
    return entries


def _read_list(tree: FileTree, path: str) -> list[str]:
    text = tree.read(path).decode("utf-8", errors="strict")
    return [line.strip().replace("\\", "/") for line in text.splitlines() if line.strip()]


def folder_entries(tree: FileTree) -> tuple[list[Entry], list[str]]:
    """Clips of ``root/<label>/**.wav``, and notes of what was skipped."""
    root = dataset_root(tree)
    notes: list[str] = []
    partition: dict[str, str] = {}
    for list_name, part in _LISTS.items():
        list_path = f"{root}/{list_name}" if root else list_name
        if list_path in tree.paths:
            for item in _read_list(tree, list_path):
                partition[item] = part
    has_lists = _has_lists(tree, root)
    entries, skipped_folders = [], {}
    for path in tree.wavs():
        relative = PurePosixPath(_relative(path, root))
        if len(relative.parts) < 2:
            raise LayoutError(f"{tree.where(path)}: not inside a class folder (the folders "
                              "layout is root/<label>/**.wav)")
        label = relative.parts[0]
        if label.startswith("_"):
            skipped_folders[label] = skipped_folders.get(label, 0) + 1
            continue
        stem = relative.stem
        speaker = stem.split(NOHASH)[0] if NOHASH in stem else ""
        key = relative.as_posix()
        own_split = partition.pop(key, "train") if has_lists else ""
        entries.append(Entry(path, key, label, speaker, own_split))
    notes += _misplaced_root_notes(tree, root, entries)
    for label, count in sorted(skipped_folders.items()):
        notes.append(f"{tree.where(f'{root}/{label}' if root else label)}: {count} WAV(s) in a "
                     "folder starting with '_' (no class) skipped")
    if partition:
        example = next(iter(partition))
        notes.append(f"{tree.where(root or '.')}: {len(partition)} entries of the split lists "
                     f"name no clip (e.g. {example}); ignored")
    return entries, notes


_SPLIT_NAMES = frozenset({*_SPLIT_ALIASES, "eval"})


def _misplaced_root_notes(tree: FileTree, root: str, entries: list[Entry]) -> list[str]:
    """Refuses class folders that are all split names (root/train/<label>/...); a note when
    every class folder holds the same subfolders (perhaps the labels, one level down)."""
    labels = sorted({entry.label for entry in entries})
    where = tree.where(root or ".")
    if labels and all(label.lower() in _SPLIT_NAMES for label in labels):
        raise LayoutError(
            f"{where}: the class folders ({', '.join(labels)}) are split names; the folders "
            "layout is root/<label>/**.wav: point data.path at one split's folder, or list the "
            "clips with their split in a manifest (path,label,split)")
    below: dict[str, set[str]] = {label: set() for label in labels}
    for entry in entries:
        parts = PurePosixPath(entry.name).parts
        below[entry.label].add(parts[1] if len(parts) > 2 else "")
    shared = {frozenset(names) for names in below.values()}
    if len(labels) > 1 and len(shared) == 1:
        names = sorted(shared.pop())
        if len(names) > 1 and "" not in names:
            return [f"{where}: every class folder ({', '.join(labels)}) holds the same subfolders "
                    f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); if those are "
                    "the labels, point data.path one level down"]
    return []


def _has_lists(tree: FileTree, root: str) -> bool:
    return any((f"{root}/{name}" if root else name) in tree.paths for name in _LISTS)


def manifest_entries(tree: FileTree, manifest: str) -> list[Entry]:
    """Clips a CSV/TSV manifest lists (columns ``path,label`` and optional ``speaker``,
    ``split``); paths are relative to the manifest's folder."""
    where = tree.where(manifest)
    try:
        text = tree.read(manifest).decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise LayoutError(f"{where}: not UTF-8 text ({error})") from None
    reader = csv.DictReader(io.StringIO(text), 
                            dialect=csv.excel_tab if manifest.lower().endswith(".tsv") else csv.excel)
    columns = [c.strip().lower() for c in (reader.fieldnames or [])]
    for required in ("path", "label"):
        if required not in columns:
            raise LayoutError(f"{where}: no '{required}' column (found {columns or 'none'}); "
                              "a manifest has columns path,label and optionally speaker,split")
    reader.fieldnames = columns
    base = PurePosixPath(manifest).parent
    entries, seen = [], {}
    for line, row in enumerate(reader, start=2):
        if None in row:
            raise LayoutError(f"{where}, line {line}: more fields than columns")
        path = (row.get("path") or "").strip().replace("\\", "/")
        label = (row.get("label") or "").strip()
        if not path or not label:
            raise LayoutError(f"{where}, line {line}: empty path or label")
        try:
            split = split_name(row.get("split") or "")
        except LayoutError as error:
            raise LayoutError(f"{where}, line {line}: {error}") from None
        if not is_wav(path):
            raise LayoutError(f"{where}, line {line}: {path} is not a .wav file")
        member = path if PurePosixPath(path).is_absolute() else (base / path).as_posix()
        if member in seen:
            raise LayoutError(f"{where}, line {line}: {path} is listed twice (also line "
                              f"{seen[member]})")
        seen[member] = line
        entries.append(Entry(member, path, label, (row.get("speaker") or "").strip(),
                             split))
    if not entries:
        raise LayoutError(f"{where}: the manifest lists no clips")
    return entries


def read_entries(tree: FileTree, layout: str = "auto",
                 manifest: str | None = None) -> tuple[str, list[Entry], list[str]]:
    """(layout, clips sorted by name, notes of what was skipped) of a tree.

    Raises:
      LayoutError: an unknown layout, no clips, or files that break the layout's rules.
    """
    if layout == "auto":
        layout = detect_layout(tree, manifest)
    notes = list(tree.skipped)
    if layout == "fsdd":
        entries = fsdd_entries(tree)
    elif layout == "folders":
        entries, more = folder_entries(tree)
        notes += more
    elif layout == "manifest":
        manifest = manifest or find_manifest(tree)
        if manifest is None:
            raise LayoutError(f"{tree.location}: data.format is 'manifest' but there is no "
                              "manifest.csv/manifest.tsv (or point data.path at the manifest)")
        entries = manifest_entries(tree, manifest)
    else:
        raise LayoutError(f"data.format {layout!r} is not one of auto, {', '.join(LAYOUTS)}")
    if not entries:
        raise LayoutError(f"{tree.location}: no .wav files found")
    names: dict[str, str] = {}
    for entry in entries:
        if entry.name in names:
            raise LayoutError(f"{tree.where(entry.path)}: duplicate file name (also "
                              f"{tree.where(names[entry.name])})")
        names[entry.name] = entry.path
    return layout, sorted(entries, key=lambda e: e.name), notes

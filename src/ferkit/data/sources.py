"""Readers that list what a raw FER dataset holds, before any pixel is decoded.

Each reader turns a source into :class:`Item` records (one per face to prepare) and
:class:`Skipped` records (what it had to leave out, with the reason). Three layouts:

- ``folder``: image folders, one sub-folder per class, optionally under split folders
  (``train/val/test``, ``Training/PublicTest/PrivateTest``, ``train/test``).
- ``fer2013-csv``: the original ``fer2013.csv`` (``emotion,pixels,Usage``).
- ``ferplus``: Microsoft's FER+ layout, split folders with a header-less ``label.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferkit.classes import (
    FER2013_CSV_CLASSES,
    FERPLUS_EMOTIONS,
    FERPLUS_VOTE_COLUMNS,
    canonical_name,
)
from ferkit.images import is_image_path
from ferkit.outputs import path_text

FORMATS = ("folder", "fer2013-csv", "ferplus")


#: Folder names that mean a split, lower-cased. FER2013's PublicTest is its validation set.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "fer2013train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "publictest": "val",
    "fer2013valid": "val",
    "test": "test",
    "testing": "test",
    "privatetest": "test",
    "fer2013test": "test",
}


SPLIT_ORDER = ("train", "val", "test")


# Files that operating systems and tools leave in image folders; never worth a report.
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "label.csv"})


@dataclass
class Item:
    """One face to prepare: where its pixels come from and what it is labelled."""

    name: str  # path relative to the source (or "file.csv:row N"), used in reports
    label: str  # canonical class name
    split: str | None = None
    path: str | None = None  # file to decode; None when pixels are given
    pixels: np.ndarray | None = None  # already-decoded gray pixels (fer2013.csv)
    votes: np.ndarray | None = None  # FER+ votes over FERPLUS_EMOTIONS
    crop_box: tuple[int, int, int, int] | None = None  # x, y, w, h inside the image
    tight_crop: bool = False  # the source guarantees the image is a face crop


@dataclass
class Skipped:
    """Something left out of a prepared dataset, and why."""

    name: str
    kind: str
    reason: str
    split: str | None = None
    label: str | None = None  # the item's class, when it was known (evaluation counts it)

    def as_dict(self) -> dict[str, str | None]:
        record = {"path": self.name, "split": self.split, "kind": self.kind, "reason": self.reason}
        if self.label is not None:
            record["label"] = self.label
        return record


@dataclass
class SourceListing:
    format: str
    items: list[Item] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    classes: list[str] | None = None  # fixed class list where the format defines one
    source_names: dict[str, set[str]] = field(default_factory=dict)  # canonical -> spellings
    hashed_files: dict[str, str] = field(default_factory=dict)  # name -> sha1, read here


def split_alias(name: str) -> str | None:
    """Return ``train``/``val``/``test`` for a folder name that means a split, else None."""
    return SPLIT_ALIASES.get(name.strip().lower().replace("_", "").replace("-", ""))


def _visible_children(folder: Path) -> list[Path]:
    return sorted(child for child in folder.iterdir() if not child.name.startswith("."))


def _is_ferplus_split(folder: Path) -> bool:
    return (folder / "label.csv").is_file()


def _is_fer2013_csv(path: Path) -> bool:
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        header = handle.readline().lower()
    return "emotion" in header and "pixels" in header


def detect_format(source: Path) -> str:
    """Work out which of :data:`FORMATS` a source is in.

    Raises:
        FileNotFoundError: the source does not exist.
        ValueError: the source is in no format ferkit reads.
    """
    if not source.exists():
        raise FileNotFoundError(
            f"{source}: source not found; give an image folder, a fer2013.csv file or a "
            "FER+ folder (see data/README.md for how to obtain them)"
        )
    if source.is_file():
        if _is_fer2013_csv(source):
            return "fer2013-csv"
        raise ValueError(
            f"{source}: a file source must be a fer2013.csv with columns emotion,pixels[,Usage]"
        )
    if _is_ferplus_split(source):
        return "ferplus"
    children = [child for child in _visible_children(source) if child.is_dir()]
    if children and any(_is_ferplus_split(child) for child in children):
        return "ferplus"
    csv_files = [child for child in _visible_children(source) if _is_fer2013_csv(child)]
    if not children and len(csv_files) == 1:
        return "fer2013-csv"
    return "folder"


def list_source(
    source: Path, source_format: str = "auto", ferplus_mode: str = "plurality"
) -> SourceListing:
    """List the items of a source in the given (or detected) format."""
    source = Path(source)
    detected = detect_format(source)
    if source_format == "auto":
        source_format = detected
    if source_format == "folder":
        return _list_image_folder(source)
    if source_format == "fer2013-csv":
        if source.is_dir():
            source = next(c for c in _visible_children(source) if _is_fer2013_csv(c))
        return _list_fer2013_csv(source)
    if source_format == "ferplus":
        return _list_ferplus(source, ferplus_mode)
    raise ValueError(f"unknown format {source_format!r}; choose auto or one of {FORMATS}")


def _list_image_folder(root: Path) -> SourceListing:
    listing = SourceListing(format="folder")
    children = _visible_children(root)
    folders = [child for child in children if child.is_dir()]
    aliases = {folder: split_alias(folder.name) for folder in folders}
    split_folders = [folder for folder in folders if aliases[folder]]
    if split_folders and len(split_folders) != len(folders):
        others = [folder.name for folder in folders if not aliases[folder]]
        raise ValueError(
            f"{root}: mixes split folders ({', '.join(f.name for f in split_folders)}) with "
            f"other folders ({', '.join(others)}); put every class folder inside a split "
            "folder, or remove the split folders"
        )
    for child in children:
        if child.is_file() and child.name.lower() not in _IGNORED_NAMES:
            listing.skipped.append(
                Skipped(
                    _relative(child, root), "not_in_class_folder", "file outside any class folder"
                )
            )
    if split_folders:
        seen_splits: dict[str, Path] = {}
        for folder in split_folders:
            split = aliases[folder]
            if split in seen_splits:
                raise ValueError(
                    f"{root}: folders {seen_splits[split].name!r} and {folder.name!r} both mean "
                    f"the {split!r} split; keep one"
                )
            seen_splits[split] = folder
            _list_class_folders(folder, root, split, listing)
    else:
        _list_class_folders(root, root, None, listing)
    return listing


def _list_class_folders(folder: Path, root: Path, split: str | None, listing: SourceListing):
    for child in _visible_children(folder):
        if child.is_file():
            if child.name.lower() not in _IGNORED_NAMES and child.parent != root:
                listing.skipped.append(
                    Skipped(
                        _relative(child, root),
                        "not_in_class_folder",
                        "file outside any class folder",
                        split,
                    )
                )
            continue
        label = canonical_name(path_text(child.name))
        listing.source_names.setdefault(label, set()).add(path_text(child.name))
        visible = [
            path
            for path in child.rglob("*")
            if not any(part.startswith(".") for part in path.relative_to(child).parts)
        ]
        files = sorted(path for path in visible if path.is_file())
        for path in sorted(p for p in visible if p.is_symlink() and not p.exists()):
            listing.skipped.append(
                Skipped(
                    _relative(path, root), "unreadable", "broken or looping symbolic link", split
                )
            )
        found = 0
        for path in files:
            name = _relative(path, root)
            if path.name.lower() in _IGNORED_NAMES:
                continue
            if not is_image_path(path):
                listing.skipped.append(
                    Skipped(
                        name,
                        "not_image",
                        f"not an image file (extension {path.suffix or 'none'!r})",
                        split,
                    )
                )
                continue
            listing.items.append(Item(name=name, label=label, split=split, path=str(path)))
            found += 1
        if found == 0:
            listing.skipped.append(
                Skipped(
                    _relative(child, root),
                    "empty_class",
                    "class folder holds no image files",
                    split,
                )
            )


def _relative(path: Path, root: Path) -> str:
    """The name shown for a file in reports: its path inside the source, as readable
    text even when the file name is not valid UTF-8 (see :func:`ferkit.outputs.path_text`)."""
    return path_text(path.relative_to(root).as_posix())


#: Longest text of a bad value quoted in a reason, so a huge field makes a short message.
_QUOTE_LIMIT = 20


class _MalformedRow(ValueError):
    """A CSV row that cannot be read; the message is the reason."""


def _quote(text: str) -> str:
    """``repr`` of a value for a reason, shortened when long."""
    if len(text) <= _QUOTE_LIMIT:
        return repr(text)
    return f"{text[:_QUOTE_LIMIT]!r}... ({len(text)} characters)"


def _split_csv_line(line: str) -> list[str]:
    """Split one line of a CSV file into fields.

    Lines are split one at a time, so one bad line (a field over the ``csv`` module's size
    limit, a stray quote) costs that row only and every later row is still read. The
    files read here never quote a field across lines.
    """
    try:
        return next(csv.reader([line]), [])
    except csv.Error as error:
        raise _MalformedRow(f"cannot split the line into fields ({error})") from None


def _row_problem(error: Exception) -> str:
    if isinstance(error, _MalformedRow):
        return str(error)
    return f"cannot parse the row ({type(error).__name__}: {error})"


def _is_blank(fields: list[str]) -> bool:
    return all(not field.strip() for field in fields)


def _is_ascii_digits(text: str) -> bool:
    # str.isdigit alone also accepts other scripts' digits ('٣', '３', '²').
    return text.isascii() and text.isdigit()


_FER2013_SIDE = 48


_DIGITS_AS_D = bytes.maketrans(b"0123456789", b"d" * 10)


def _list_fer2013_csv(path: Path) -> SourceListing:
    """List ``fer2013.csv``: one item per good row, a ``malformed_row`` record per bad one.

    A row is good when its emotion is one ASCII integer 0..6, its pixels are 48x48
    space-separated ASCII integers 0..255 and its Usage (when the column exists) names a
    split. An empty Usage is a bad row when other rows name their split (its split is
    unknown, and guessing one could put a test face into train); when every Usage is
    empty, the file has no splits and ``prepare`` makes them. The header may start with
    a UTF-8 byte-order mark; its column names are read regardless of case and
    surrounding spaces.

    Raises:
        ValueError: the header does not name the columns emotion and pixels.
    """
    listing = SourceListing(format="fer2013-csv", classes=sorted(FER2013_CSV_CLASSES))
    listing.hashed_files[path.name] = _sha1_file(path)
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        try:
            header = [column.strip().lower() for column in _split_csv_line(handle.readline())]
            emotion_column, pixels_column = header.index("emotion"), header.index("pixels")
        except ValueError:
            raise ValueError(f"{path}: header must name the columns emotion and pixels") from None
        usage_column = header.index("usage") if "usage" in header else None
        rows: list[Item | Skipped] = []  # in file order, until the splits are known
        for row_number, line in enumerate(handle, start=2):
            name = f"{path.name}:row {row_number}"
            try:
                row = _split_csv_line(line)
                if _is_blank(row):
                    continue
                item = _parse_fer2013_row(row, emotion_column, pixels_column, usage_column)
            except Exception as error:  # one bad row must never end the listing
                rows.append(Skipped(name, "malformed_row", _row_problem(error)))
                continue
            item.name = name
            rows.append(item)
    has_splits = any(isinstance(record, Item) and record.split for record in rows)
    for record in rows:
        if isinstance(record, Skipped):
            listing.skipped.append(record)
        elif record.split or not has_splits:
            listing.items.append(record)
        else:  # prepare keeps the source's splits: a face of none would belong to none
            listing.skipped.append(
                Skipped(record.name, "malformed_row", _EMPTY_USAGE, label=record.label)
            )
    for label in listing.classes:
        listing.source_names[label] = {str(FER2013_CSV_CLASSES.index(label))}
    return listing


_EMPTY_USAGE = (
    "empty Usage, while other rows name their split; fill in Training, PublicTest or "
    "PrivateTest (or empty every row's Usage to have ferkit split the rows)"
)


def _parse_fer2013_row(
    row: list[str], emotion_column: int, pixels_column: int, usage_column: int | None
) -> Item:
    """Read one fer2013.csv row, raising :class:`_MalformedRow` with the reason."""
    needed = max(emotion_column, pixels_column, usage_column or 0) + 1
    if len(row) < needed:
        raise _MalformedRow(f"row has {len(row)} fields, expected at least {needed}")
    emotion_text = row[emotion_column].strip()
    # The length bound keeps int() away from huge digit strings.
    if (
        not _is_ascii_digits(emotion_text)
        or len(emotion_text) > 3
        or int(emotion_text) >= len(FER2013_CSV_CLASSES)
    ):
        raise _MalformedRow(f"emotion {_quote(emotion_text)} is not an integer 0..6")
    values = _parse_pixels(row[pixels_column])
    split = None
    if usage_column is not None:
        usage = row[usage_column].strip()
        split = split_alias(usage)
        if usage and split is None:
            raise _MalformedRow(f"Usage {_quote(usage)} is not Training, PublicTest or PrivateTest")
    pixels = values.astype(np.uint8).reshape(_FER2013_SIDE, _FER2013_SIDE)
    label = FER2013_CSV_CLASSES[int(emotion_text)]
    return Item(name="", label=label, split=split, pixels=pixels, tight_crop=True)


def _parse_pixels(text: str) -> np.ndarray:
    """Read 48x48 space-separated pixel values, each one to three ASCII digits 0..255."""
    tokens = text.split()
    if len(tokens) != _FER2013_SIDE * _FER2013_SIDE:
        raise _MalformedRow(f"pixels has {len(tokens)} values, expected 2304 (48x48)")
    # The whole field is checked at once, as bytes: a loop over the 2304 values would
    # cost as much as parsing them. Each digit becomes a "d", anything non-ASCII a "?".
    shape = text.encode("ascii", "replace").translate(_DIGITS_AS_D)
    if shape.translate(None, b"d \t") or b"dddd" in shape:
        bad = next((t for t in tokens if not _is_ascii_digits(t) or len(t) > 3), None)
        if bad is None:
            raise _MalformedRow("pixel values must be separated by spaces")
        raise _MalformedRow(f"pixel {_quote(bad)} is not an integer 0..255")
    values = np.array(tokens, dtype=np.int64)
    if values.max() > 255:
        raise _MalformedRow("pixel values outside 0..255")
    return values


FERPLUS_MODES = ("plurality", "majority")


def ferplus_label(votes: np.ndarray, mode: str = "plurality") -> tuple[int | None, str | None]:
    """Turn ten FER+ vote counts into a class index over :data:`FERPLUS_EMOTIONS`.

    ``plurality`` keeps the most-voted column, ``majority`` also requires it to hold more
    than half of all votes (Microsoft's strict rule). Either way, faces whose top column
    is ``unknown`` or ``NF`` (not a face), or whose top count is tied, are dropped.

    Returns:
        ``(index, None)`` for a kept face, ``(None, reason)`` for a dropped one.
    """
    top = votes.max()
    if top <= 0:
        return None, "no votes"
    winners = np.flatnonzero(votes == top)
    if len(winners) > 1:
        tied = ", ".join(FERPLUS_VOTE_COLUMNS[i] for i in winners)
        return None, f"tied vote ({tied})"
    winner = int(winners[0])
    if FERPLUS_VOTE_COLUMNS[winner] == "unknown":
        return None, "majority vote is unknown"
    if FERPLUS_VOTE_COLUMNS[winner] == "NF":
        return None, "majority vote is not a face (NF)"
    if mode == "majority" and top * 2 <= votes.sum():
        return None, "no strict majority (top emotion has half the votes or fewer)"
    return winner, None


def _list_ferplus(source: Path, mode: str = "plurality") -> SourceListing:
    if mode not in FERPLUS_MODES:
        raise ValueError(f"unknown FER+ vote rule {mode!r}; choose one of {FERPLUS_MODES}")
    listing = SourceListing(format="ferplus", classes=sorted(FERPLUS_EMOTIONS))
    if _is_ferplus_split(source):
        split_dirs = [(source, split_alias(source.name))]
    else:
        split_dirs = []
        for child in _visible_children(source):
            if child.is_dir() and _is_ferplus_split(child):
                split = split_alias(child.name)
                if split is None:
                    raise ValueError(
                        f"{child}: FER+ split folder name not recognised; expected "
                        "FER2013Train, FER2013Valid or FER2013Test"
                    )
                split_dirs.append((child, split))
    for folder, split in split_dirs:
        _list_ferplus_split(folder, source, split, mode, listing)
    for label in FERPLUS_EMOTIONS:
        listing.source_names[label] = {FERPLUS_VOTE_COLUMNS[FERPLUS_EMOTIONS.index(label)]}
    return listing


#: Most votes one FER+ row may hold in all. FER+ has ten annotators per image; the bound
#: leaves room for re-annotated variants and keeps the normalised soft labels finite.
FERPLUS_MAX_VOTES = 1000


# A plain decimal number: ASCII digits, no sign, exponent, underscore, nan or inf.
_PLAIN_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


# Characters that turn a name into a path: separators, a drive ("C:x.png"), NUL.
_PATH_CHARACTERS = frozenset("/\\:\0")


def _parse_votes(fields: list[str]) -> np.ndarray:
    """Read one row's FER+ vote counts, raising :class:`_MalformedRow` for bad ones.

    Each count must be a plain decimal number >= 0 (FER+ writes whole numbers 0..10;
    fractional vote shares are accepted too) and the counts must sum to at most
    :data:`FERPLUS_MAX_VOTES`. That rules out ``nan`` and ``inf``, which would break the
    vote rule and the soft labels.
    """
    rule = f"vote counts must be finite numbers >= 0 summing to at most {FERPLUS_MAX_VOTES}"
    texts = [text.strip() for text in fields]
    for text in texts:
        if not _PLAIN_NUMBER.fullmatch(text):
            raise _MalformedRow(f"{rule}, not {_quote(text)}")
    votes = np.array([float(text) for text in texts], dtype=np.float64)
    total = votes.sum()
    if not math.isfinite(total) or total > FERPLUS_MAX_VOTES:
        raise _MalformedRow(f"{rule}; these sum to {total:g}")
    return votes


def _is_plain_file_name(name: str) -> bool:
    """True for a file name that stays inside its folder: no path, drive or ``..``."""
    return name not in ("", ".", "..") and not _PATH_CHARACTERS.intersection(name)


def _parse_face_box(text: str) -> tuple[int, int, int, int] | None:
    """FER+ writes the face box as "(x, y, w, h)"."""
    numbers = text.strip().strip("()").split(",")
    if len(numbers) != 4:
        return None
    try:
        box = tuple(int(float(number)) for number in numbers)
    except (ValueError, OverflowError):  # not a number, nan, inf
        return None
    return box if box[2] > 0 and box[3] > 0 else None  # type: ignore[return-value]


def _parse_ferplus_row(row: list[str]) -> tuple[str, np.ndarray, tuple[int, int, int, int]]:
    """Read one label.csv row into (image name, votes, face box).

    Raises:
        _MalformedRow: the row is not ``image name, "(x, y, w, h)", ten vote counts``.
    """
    if len(row) != 2 + len(FERPLUS_VOTE_COLUMNS):
        raise _MalformedRow(f"row has {len(row)} fields, expected 12")
    image_name = row[0].strip()
    if not _is_plain_file_name(image_name):
        raise _MalformedRow(
            "image name must be a file name inside the split folder, not a path "
            f"({_quote(image_name)})"
        )
    votes = _parse_votes(row[2:])
    box = _parse_face_box(row[1])
    if box is None:
        raise _MalformedRow(f"face box {_quote(row[1])} is not (x, y, w, h)")
    return image_name, votes, box


def _list_ferplus_split(
    folder: Path, root: Path, split: str | None, mode: str, listing: SourceListing
) -> None:
    """List one FER+ split folder from its header-less ``label.csv``.

    A row whose image name is a path rather than a file name in ``folder``, whose counts
    break the rule of :func:`_parse_votes` or whose face box is not four numbers is a
    ``malformed_row``; the other rows are still listed.
    """
    label_file = folder / "label.csv"
    prefix = "" if folder == root else f"{folder.name}/"
    listing.hashed_files[f"{prefix}label.csv"] = _sha1_file(label_file)
    labelled: set[str] = set()
    # Votes come in FERPLUS_EMOTIONS order; items carry them in the sorted class order.
    to_sorted = [FERPLUS_EMOTIONS.index(label) for label in sorted(FERPLUS_EMOTIONS)]
    with open(label_file, newline="", encoding="utf-8-sig", errors="replace") as handle:
        for row_number, line in enumerate(handle, start=1):
            where = f"{prefix}label.csv:row {row_number}"
            row: list[str] = []
            try:
                row = _split_csv_line(line)
                if _is_blank(row):
                    continue
                image_name, votes, box = _parse_ferplus_row(row)
            except Exception as error:  # one bad row must never end the listing
                listing.skipped.append(Skipped(where, "malformed_row", _row_problem(error), split))
                # Its row accounts for the image, which is not also reported as unlabelled.
                if row:
                    labelled.add(row[0].strip())
                continue
            labelled.add(image_name)
            name = prefix + image_name
            image_path = folder / image_name
            if not image_path.is_file():
                listing.skipped.append(
                    Skipped(
                        name, "missing_file", "listed in label.csv but the file is missing", split
                    )
                )
                continue
            winner, reason = ferplus_label(votes, mode)
            if winner is None:
                listing.skipped.append(Skipped(name, "vote_dropped", reason, split))
                continue
            listing.items.append(
                Item(
                    name=name,
                    label=FERPLUS_EMOTIONS[winner],
                    split=split,
                    path=str(image_path),
                    votes=votes[: len(FERPLUS_EMOTIONS)][to_sorted],
                    crop_box=box,
                    tight_crop=True,
                )
            )
    for path in _visible_children(folder):
        if path.is_file() and is_image_path(path) and path.name not in labelled:
            listing.skipped.append(
                Skipped(prefix + path.name, "unlabelled", "image has no row in label.csv", split)
            )


def _sha1_file(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

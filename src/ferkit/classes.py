"""The one place that defines expression class names and their order.

Datasets spell the same expression in many ways (``Angry``, ``anger``, ``happiness``,
``Surprised``). Every reader maps folder names and label columns through
:func:`canonical_name`, and every split of a prepared dataset orders its classes with
:func:`class_order`, so label ``3`` means the same thing in train, val and test.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Expressions ferkit knows by name: the seven of FER2013 plus FER+'s contempt.
CANONICAL_CLASSES: tuple[str, ...] = (
    "angry",
    "contempt",
    "disgust",
    "fear",
    "happy",
    "neutral",
    "sad",
    "surprise",
)

_SYNONYMS: dict[str, tuple[str, ...]] = {
    "angry": ("anger", "angry", "mad", "angered", "annoyed"),
    "contempt": ("contempt", "contemptuous", "contemptful"),
    "disgust": ("disgust", "disgusted", "disgusting", "disgusts"),
    "fear": ("fear", "fearful", "afraid", "scared", "fright", "frightened"),
    "happy": ("happy", "happiness", "joy", "joyful", "smile", "smiling"),
    "neutral": ("neutral", "neutrality", "calm"),
    "sad": ("sad", "sadness", "sorrow", "unhappy"),
    "surprise": ("surprise", "surprised", "suprise", "surprising", "shock", "shocked"),
}

#: Lower-case spelling -> canonical name. Extend it here, nowhere else.
SYNONYMS: dict[str, str] = {
    spelling: canonical for canonical, spellings in _SYNONYMS.items() for spelling in spellings
}

#: FER2013's ``emotion`` column: 0..6 in the order of the original challenge.
FER2013_CSV_CLASSES: tuple[str, ...] = (
    "angry",
    "disgust",
    "fear",
    "happy",
    "sad",
    "surprise",
    "neutral",
)

#: FER+ ``label.csv`` vote columns after ``image_name, face_box``.
FERPLUS_VOTE_COLUMNS: tuple[str, ...] = (
    "neutral",
    "happy",
    "surprise",
    "sad",
    "angry",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
FERPLUS_EMOTIONS: tuple[str, ...] = FERPLUS_VOTE_COLUMNS[:8]


def canonical_name(name: str) -> str:
    """Map a dataset's class name onto ferkit's canonical spelling.

    Matching is case-insensitive and ignores surrounding spaces, ``-`` and ``_``
    separators. A name outside the synonym table is returned unchanged, so datasets with
    classes of their own keep them.
    """
    key = name.strip().lower().replace("-", " ").replace("_", " ")
    key = " ".join(key.split())
    if key in SYNONYMS:
        return SYNONYMS[key]
    return name.strip()


def class_order(names: Iterable[str]) -> list[str]:
    """Return the canonical, sorted, de-duplicated class list for a set of names."""
    canonical = {canonical_name(name) for name in names}
    return sorted(canonical, key=lambda name: (name.lower(), name))

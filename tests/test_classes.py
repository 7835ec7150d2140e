import pytest

from ferkit.classes import CANONICAL_CLASSES, SYNONYMS, canonical_name, class_order


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("anger", "angry"),
        ("Angry", "angry"),
        (" HAPPINESS ", "happy"),
        ("sadness", "sad"),
        ("Surprised", "surprise"),
        ("fearful", "fear"),
        ("disgusted", "disgust"),
        ("Contempt", "contempt"),
        ("Neutral", "neutral"),
    ],
)
def test_synonyms_map_to_canonical_names(spelling, expected):
    assert canonical_name(spelling) == expected


def test_unknown_names_stay_as_they_are():
    assert canonical_name("Smirk") == "Smirk"
    assert canonical_name("  Smirk ") == "Smirk"


def test_every_synonym_targets_a_canonical_class():
    assert set(SYNONYMS.values()) == set(CANONICAL_CLASSES)


def test_class_order_is_sorted_and_merges_spellings():
    assert class_order(["Sad", "sadness", "Happy", "anger"]) == ["angry", "happy", "sad"]

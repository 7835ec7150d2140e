"""Dataset exploration used by the notebooks: class balance, pixel statistics, sample
faces, duplicates, and label agreement between two labellings of the same faces (FER2013
against FER+)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def ensure_prepared(
    source: str | os.PathLike[str], out: str | os.PathLike[str], **settings: Any
) -> Any:
    """The prepared dataset at ``out``, preparing ``source`` there first if needed.

    Returns:
        A :class:`ferkit.data.dataset.PreparedDataset`.
    """
    from ferkit.data.dataset import PreparedDataset
    from ferkit.data.prepare import PrepareConfig, prepare

    out = Path(out)
    if not (out / "manifest.json").is_file():
        prepare(source, out, PrepareConfig(**settings), progress=False)
    return PreparedDataset(out)


def class_balance(dataset: Any) -> Any:
    """Faces per class (rows) and split (columns), with each class's share of train."""
    from ferkit.extras import import_pandas

    pd = import_pandas("dataset exploration")

    splits = dataset.manifest["splits"]
    table = pd.DataFrame(
        {name: info["per_class"] for name, info in splits.items()}, index=dataset.classes
    ).fillna(0)
    table = table.astype(int)
    first = next(iter(splits))
    table[f"{first} share"] = (table[first] / table[first].sum()).round(4)
    return table


def pixel_statistics(split: Any) -> Any:
    """Per class: mean and spread of brightness, mean per-face contrast, and the share
    of nearly flat faces (per-face standard deviation under 10 grey levels: often blank
    or broken images)."""
    from ferkit.extras import import_pandas

    pd = import_pandas("dataset exploration")

    images = split.images.reshape(len(split.images), -1).astype(np.float32)
    brightness = images.mean(axis=1)
    contrast = images.std(axis=1)
    rows = {}
    for index, name in enumerate(split.classes):
        members = split.labels == index
        if not members.any():
            continue
        rows[name] = {
            "faces": int(members.sum()),
            "mean_brightness": float(brightness[members].mean()),
            "brightness_std": float(brightness[members].std()),
            "mean_contrast": float(contrast[members].mean()),
            "flat_faces_share": float((contrast[members] < 10).mean()),
        }
    return pd.DataFrame(rows).T


def sample_faces(split: Any, per_class: int = 8, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``per_class`` faces of each class drawn with ``seed``, and their class names."""
    rng = np.random.default_rng(seed)
    chosen, titles = [], []
    for index, name in enumerate(split.classes):
        members = np.flatnonzero(split.labels == index)
        picked = rng.choice(members, size=min(per_class, len(members)), replace=False)
        chosen.extend(picked)
        titles.extend([name] * len(picked))
    return split.images[np.array(chosen, dtype=int)], titles


def duplicate_summary(dataset: Any) -> dict[str, int]:
    """Counts of duplicate groups found when the dataset was prepared."""
    duplicates = dataset.manifest.get("duplicates", {})
    return {key: value for key, value in duplicates.items() if isinstance(value, int)}


def label_agreement(a_split: Any, b_split: Any, **match_settings: Any) -> tuple[Any, dict]:
    """How two labellings of the same faces agree.

    Returns:
        A crosstab (rows: ``a``'s labels, columns: ``b``'s) of the matched faces, and a
        summary: faces matched and the share with the same class name.
    """
    from ferkit.extras import import_pandas

    pd = import_pandas("dataset exploration")

    from ferkit.data.matching import match_faces

    in_a, in_b = match_faces(a_split.images, b_split.images, **match_settings)
    labels_a = [a_split.classes[i] for i in a_split.labels[in_a]]
    labels_b = [b_split.classes[i] for i in b_split.labels[in_b]]
    table = pd.crosstab(
        pd.Series(labels_a, name=f"{a_split.name} (a)"),
        pd.Series(labels_b, name=f"{b_split.name} (b)"),
    )
    same = float(np.mean([x == y for x, y in zip(labels_a, labels_b, strict=True)]))
    summary = {
        "faces_in_a": len(a_split.images),
        "faces_in_b": len(b_split.images),
        "matched": len(in_a),
        "same_label_share": same,
    }
    return table, summary

"""``ferkit soft-labels``: teacher targets for knowledge distillation.

Writes a copy of a prepared dataset whose training targets mix each face's label with the
mean calibrated probabilities of one or more teacher models, and/or with the vote
distributions of another dataset's copies of the same faces (FER+ for FER2013, matched by
pixels: :mod:`ferkit.data.matching`). Training on it with ``--soft-labels`` (either engine)
distils the teachers into one model: for example the behaviour of one model with the
accuracy of another, or FER2013's labels softened by FER+'s ten annotators. Other splits
keep their labels, as one-hot soft labels, so validation still scores against the truth.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.data.dataset import MANIFEST_NAME, PreparedDataset
from ferkit.outputs import output_folder


def _teacher(teacher: str | os.PathLike[str] | None, classes: list[str], source: Any) -> Any:
    """Load a teacher model and check that it predicts the dataset's classes."""
    from ferkit.models.folder import load_model

    model = load_model(teacher)
    if list(model.classes) != list(classes):
        raise ValueError(
            f"{teacher or 'default'}: classes {model.classes} differ from {source}'s "
            f"{classes}; a teacher must predict the same classes"
        )
    return model


def write_teacher_labels(
    source: str | os.PathLike[str],
    teachers: Sequence[str | os.PathLike[str] | None],
    out: str | os.PathLike[str],
    *,
    votes: str | os.PathLike[str] | None = None,
    label_weight: float = 0.5,
    splits: Sequence[str] = ("train",),
    batch_size: int = 512,
    overwrite: bool = False,
) -> Path:
    """Copy the prepared dataset ``source`` to ``out`` with distillation targets.

    Args:
        source: a folder written by ``ferkit prepare``.
        teachers: models as :func:`ferkit.models.folder.load_model` takes them (``None`` or
            ``"default"``: the bundled model); their probabilities are averaged.
        out: the new dataset folder; it must not hold anything yet unless ``overwrite``
            (which replaces only an earlier ``soft-labels`` output; see
            :mod:`ferkit.outputs`).
        label_weight: weight of the label (or the source's own soft label); the teachers
            share the rest.
        votes: a dataset prepared with soft labels (FER+ with ``--soft-labels``) holding
            copies of the faces; each matched face's votes count as one more teacher, and
            faces without a copy are left to the other teachers (or their label alone).
        splits: the splits that get teacher targets.

    Raises:
        ValueError: no teacher, a weight outside [0, 1], an unknown split, or a teacher
            whose classes differ from the dataset's.
        FileExistsError: ``out`` holds files (see ``overwrite``).
    """

    if not teachers and votes is None:
        raise ValueError("give at least one teacher model or a dataset of votes")
    if not 0.0 <= label_weight <= 1.0:
        raise ValueError(f"label_weight must be between 0 and 1, not {label_weight}")
    data = PreparedDataset(source)
    unknown = sorted(set(splits) - set(data.splits))
    if unknown:
        raise ValueError(f"{source}: no split {unknown}; it has {data.splits}")
    from ferkit.models.folder import resolve_model

    local_teachers = [path for t in teachers if (path := resolve_model(t)) is not None]
    inputs = [source, *local_teachers, *([votes] if votes is not None else [])]
    vote_data = None if votes is None else PreparedDataset(votes)
    matched: dict[str, int] = {}
    with output_folder(out, "soft-labels", overwrite=overwrite, inputs=inputs) as staging:
        # Loaded once the output folder is known to be usable: a refusal comes first.
        models = [_teacher(teacher, data.classes, source) for teacher in teachers]
        for name in data.splits:
            split = data.split(name)
            targets = split.one_hot() if split.soft_labels is None else split.soft_labels
            if name in splits:
                opinions = [
                    model.predict_proba(split.images, batch_size=batch_size) for model in models
                ]
                if vote_data is not None:
                    from ferkit.data.matching import matched_votes

                    try:
                        found = matched_votes(split, [vote_data.split(s) for s in vote_data.splits])
                    except ValueError as error:
                        raise ValueError(f"--votes {votes}: {error}") from None
                    matched[name] = int(np.isfinite(found[:, 0]).sum())
                    if not matched[name]:
                        raise ValueError(
                            f"--votes {votes}: none of the {len(split)} faces of {source}'s "
                            f"{name} split is there; give a dataset of the same faces prepared "
                            "the same way (FER+ with --faces crop for FER2013)"
                        )
                    opinions.append(found)
                stacked = np.stack(opinions)
                has_opinion = np.isfinite(stacked[:, :, 0])  # (teachers, faces)
                count = has_opinion.sum(axis=0)
                teacher = np.where(has_opinion[:, :, None], stacked, 0.0).sum(axis=0)
                teacher = teacher / np.maximum(count, 1)[:, None]
                weight = np.where(count > 0, 1.0 - label_weight, 0.0)[:, None]
                targets = (1.0 - weight) * targets + weight * teacher
            np.savez(
                staging / data.manifest["splits"][name]["file"],
                images=split.images,
                labels=split.labels,
                paths=split.paths,
                soft_labels=np.asarray(targets, dtype=np.float32),
            )
        manifest = dict(data.manifest)
        manifest["teacher_labels"] = {
            "source": str(source),
            "teachers": [str(teacher or "default") for teacher in teachers],
            "votes": None if votes is None else str(votes),
            "votes_matched": matched,
            "label_weight": label_weight,
            "splits": list(splits),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return out

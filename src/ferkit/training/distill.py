"""``ferkit soft-labels``: teacher targets for knowledge distillation.

Writes a copy of a prepared dataset whose training targets mix each face's label with the
(weighted) mean calibrated probabilities of one or more teacher models, and/or with the vote
distributions of another dataset's copies of the same faces (FER+ for FER2013, matched by
pixels: :mod:`ferkit.data.matching`). Training on it with ``--soft-labels`` (either engine)
distils the teachers into one model: for example the behaviour of one model with the
accuracy of another, or FER2013's labels softened by FER+'s ten annotators. Other splits
keep their labels, as one-hot soft labels, so validation still scores against the truth.
Each teacher's own probabilities are kept beside the mixed targets, so the cache of
teacher opinions is computed once and other mixtures can be made from it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.data.dataset import MANIFEST_NAME, PreparedDataset
from ferkit.outputs import output_folder

logger = logging.getLogger(__name__)


@dataclass
class Teacher:
    """A teacher model seen through a dataset's class list and face shape.

    A teacher may know more classes than the dataset (FER+'s contempt, say): its
    probabilities for the dataset's classes, matched by name through the synonym table,
    are kept and renormalised, and the others dropped (as ``--votes`` does with FER+'s
    votes). Faces of another shape than the teacher's input (48x48 grey for a 112x112
    colour network) are converted with :func:`ferkit.images.resize_face`.
    """

    model: Any
    name: str
    columns: list[int]  # the teacher's output for each dataset class, in dataset order
    dropped: list[str]  # the teacher's classes that the dataset lacks

    def predict_proba(self, faces: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Calibrated probabilities over the dataset's classes for ``uint8`` faces."""
        shape = tuple(self.model.image_shape)
        rows = []
        for start in range(0, len(faces), batch_size):
            batch = faces[start : start + batch_size]
            if tuple(batch.shape[1:]) != shape:
                from ferkit.images import resize_face

                size, _, channels = shape
                batch = np.stack([resize_face(face, size, channels) for face in batch])
            probabilities = self.model.predict_proba(batch, batch_size=batch_size)
            kept = probabilities[:, self.columns]
            rows.append(kept / np.maximum(kept.sum(axis=1, keepdims=True), 1e-12))
        if not rows:
            return np.zeros((0, len(self.columns)), dtype=np.float32)
        return np.concatenate(rows).astype(np.float32)


def load_teacher(
    teacher: str | os.PathLike[str] | None, classes: Sequence[str], source: Any = "the dataset"
) -> Teacher:
    """Load a teacher model for a dataset of ``classes``.

    Raises:
        ValueError: the teacher lacks one of the dataset's classes (naming them).
    """
    from ferkit.classes import canonical_name
    from ferkit.models.folder import load_model

    model = load_model(teacher)
    known = [canonical_name(name) for name in model.classes]
    missing = [name for name in classes if canonical_name(name) not in known]
    if missing:
        raise ValueError(
            f"{teacher or 'default'}: classes {model.classes} lack {missing} of {source}'s "
            f"{list(classes)}; a teacher must predict every class of the dataset"
        )
    columns = [known.index(canonical_name(name)) for name in classes]
    dropped = [name for i, name in enumerate(model.classes) if i not in columns]
    if dropped:
        logger.info("teacher %s: %s dropped, the rest renormalised", teacher, dropped)
    return Teacher(model, str(teacher or "default"), columns, dropped)


def _weights(given: Sequence[float] | None, count: int, what: str) -> list[float]:
    if given is None:
        return [1.0] * count
    weights = [float(w) for w in given]
    if len(weights) != count:
        raise ValueError(f"{len(weights)} {what} weights for {count} {what}s; give one each")
    if any(not w >= 0 for w in weights):
        raise ValueError(f"{what} weights must be zero or positive, not {weights}")
    return weights


def write_teacher_labels(
    source: str | os.PathLike[str],
    teachers: Sequence[str | os.PathLike[str] | None],
    out: str | os.PathLike[str],
    *,
    votes: str | os.PathLike[str] | None = None,
    label_weight: float = 0.5,
    teacher_weights: Sequence[float] | None = None,
    votes_weight: float = 1.0,
    splits: Sequence[str] = ("train",),
    batch_size: int = 512,
    overwrite: bool = False,
) -> Path:
    """Copy the prepared dataset ``source`` to ``out`` with distillation targets.

    Each face's target is ``label_weight`` x its label plus the rest times the weighted
    mean of the teachers' calibrated probabilities (and of its votes, when it has a copy
    in ``votes``). Every teacher's own probabilities are kept beside the targets, in the
    split file's ``teacher_probabilities`` (teachers, then the votes; NaN rows where a
    face has no votes), so another mixture can be made from them without the models.

    Args:
        source: a folder written by ``ferkit prepare``.
        teachers: models as :func:`ferkit.models.folder.load_model` takes them (``None`` or
            ``"default"``: the bundled model). A teacher with classes the dataset lacks
            (``ferplus``'s contempt) has them dropped and the rest renormalised; faces are
            resized and converted to each teacher's input shape.
        out: the new dataset folder; it must not hold anything yet unless ``overwrite``
            (which replaces only an earlier ``soft-labels`` output; see
            :mod:`ferkit.outputs`).
        votes: a dataset prepared with soft labels (FER+ with ``--soft-labels``) holding
            copies of the faces; each matched face's votes count as one more teacher, and
            faces without a copy are left to the other teachers (or their label alone).
        label_weight: weight of the label (or the source's own soft label); the teachers
            share the rest.
        teacher_weights: relative weight of each teacher in their mean (default: equal).
        votes_weight: relative weight of the votes beside the teachers' (default 1: one
            more teacher).
        splits: the splits that get teacher targets.

    Raises:
        ValueError: no teacher, a weight outside [0, 1] or negative, an unknown split, or
            a teacher that lacks one of the dataset's classes.
        FileExistsError: ``out`` holds files (see ``overwrite``).
    """

    if not teachers and votes is None:
        raise ValueError("give at least one teacher model or a dataset of votes")
    if not 0.0 <= label_weight <= 1.0:
        raise ValueError(f"label_weight must be between 0 and 1, not {label_weight}")
    weights = _weights(teacher_weights, len(teachers), "teacher")
    if votes is not None:
        weights += _weights([votes_weight], 1, "votes")
    if not sum(weights) > 0:
        raise ValueError("the teacher weights are all zero; give at least one positive weight")
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
        models = [load_teacher(teacher, data.classes, source) for teacher in teachers]
        for name in data.splits:
            split = data.split(name)
            targets = split.one_hot() if split.soft_labels is None else split.soft_labels
            extra = {}
            if name in splits:
                opinions = [model.predict_proba(split.images, batch_size) for model in models]
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
                targets_before = targets
                targets = mix_targets(targets, stacked, weights, label_weight)
                extra["teacher_probabilities"] = stacked.astype(np.float32)
                extra["label_targets"] = np.asarray(targets_before, dtype=np.float32)
            np.savez(
                staging / data.manifest["splits"][name]["file"],
                images=split.images,
                labels=split.labels,
                paths=split.paths,
                soft_labels=np.asarray(targets, dtype=np.float32),
                **extra,
            )
        manifest = dict(data.manifest)
        manifest["teacher_labels"] = {
            "source": str(source),
            "teachers": [str(teacher or "default") for teacher in teachers],
            "teacher_weights": weights[: len(teachers)],
            "teacher_classes_dropped": {m.name: m.dropped for m in models if m.dropped},
            "teacher_input_shapes": {m.name: list(m.model.image_shape) for m in models},
            "votes": None if votes is None else str(votes),
            "votes_weight": None if votes is None else weights[-1],
            "votes_matched": matched,
            "label_weight": label_weight,
            "splits": list(splits),
            "teacher_probabilities": (
                "each relabelled split file's 'teacher_probabilities': float32 (opinions, "
                "faces, classes), the teachers in order then the votes; NaN rows: no opinion; "
                "'label_targets': the targets before mixing"
            ),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def mix_targets(
    targets: np.ndarray, opinions: np.ndarray, weights: Sequence[float], label_weight: float
) -> np.ndarray:
    """``label_weight`` x ``targets`` + the rest x the weighted mean of ``opinions``.

    Args:
        targets: ``(faces, classes)`` one-hot labels or soft labels.
        opinions: ``(opinions, faces, classes)``; a NaN row is no opinion on that face, and
            the weights of the others are renormalised; a face with none keeps its target.
        weights: one per opinion.
    """
    weight = np.asarray(weights, dtype=np.float64)[:, None]
    has_opinion = np.isfinite(opinions[:, :, 0])  # (opinions, faces)
    present = np.where(has_opinion, weight, 0.0)  # (opinions, faces)
    total = present.sum(axis=0)
    mean = np.where(has_opinion[:, :, None], opinions, 0.0) * present[:, :, None]
    mean = mean.sum(axis=0) / np.maximum(total, 1e-12)[:, None]
    share = np.where(total > 0, 1.0 - label_weight, 0.0)[:, None]
    return ((1.0 - share) * targets + share * mean).astype(np.float32)


def remix_teacher_labels(
    cache: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    label_weight: float = 0.5,
    teacher_weights: Sequence[float] | None = None,
    votes_weight: float = 1.0,
    overwrite: bool = False,
) -> Path:
    """Another mixture of the teacher probabilities that :func:`write_teacher_labels`
    kept in ``cache``, without running the teachers again: a copy of ``cache`` with new
    targets (``ferkit soft-labels CACHE --out DIR`` with no ``--teacher``/``--votes``).

    Args:
        cache: a dataset written by :func:`write_teacher_labels`.
        teacher_weights: one per teacher of ``cache``, in its manifest's order.
        votes_weight: the votes' weight, when ``cache`` was made with votes.

    Raises:
        ValueError: ``cache`` keeps no teacher probabilities, or weights that do not fit.
    """
    if not 0.0 <= label_weight <= 1.0:
        raise ValueError(f"label_weight must be between 0 and 1, not {label_weight}")
    data = PreparedDataset(cache)
    record = data.manifest.get("teacher_labels") or {}
    if "teacher_probabilities" not in record:
        raise ValueError(
            f"{cache}: keeps no teacher probabilities; give --teacher models or --votes, or "
            "a dataset written by 'ferkit soft-labels' with them"
        )
    teachers = record["teachers"]
    weights = _weights(teacher_weights, len(teachers), "teacher")
    if record.get("votes") is not None:
        weights += _weights([votes_weight], 1, "votes")
    if not sum(weights) > 0:
        raise ValueError("the teacher weights are all zero; give at least one positive weight")
    with output_folder(out, "soft-labels", overwrite=overwrite, inputs=[cache]) as staging:
        for name in data.splits:
            file = data.manifest["splits"][name]["file"]
            with np.load(data.folder / file) as arrays:
                arrays = dict(arrays)
            if "teacher_probabilities" in arrays:
                before = arrays.get("label_targets")
                if before is None:  # caches written before the targets were kept
                    before = np.eye(len(data.classes), dtype=np.float32)[arrays["labels"]]
                arrays["soft_labels"] = mix_targets(
                    before, arrays["teacher_probabilities"], weights, label_weight
                )
            np.savez(staging / file, **arrays)
        manifest = dict(data.manifest)
        manifest["teacher_labels"] = {
            **record,
            "teacher_weights": weights[: len(teachers)],
            "votes_weight": None if record.get("votes") is None else weights[-1],
            "label_weight": label_weight,
            "remixed_from": str(cache),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return Path(out)

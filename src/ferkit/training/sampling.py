"""What a run trains on and in which order, for both engines: the splits (limited,
or validation carved from train), targets, each epoch's seeded order (shuffled or
class-balanced), class weights and mixup."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ferkit.data.dataset import PreparedDataset, Split
from ferkit.training.config import TrainConfig

logger = logging.getLogger(__name__)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a class-stratified random subset of about ``size`` items."""
    if not size or size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = max(1, round(len(members) * size / len(labels)))
        chosen.append(rng.choice(members, min(take, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def subset_split(split: Split, indices: np.ndarray) -> Split:
    return Split(
        name=split.name,
        images=split.images[indices],
        labels=split.labels[indices],
        paths=split.paths[indices],
        classes=split.classes,
        soft_labels=None if split.soft_labels is None else split.soft_labels[indices],
    )


def split_targets(split: Split, soft: bool) -> np.ndarray:
    if soft:
        if split.soft_labels is None:
            raise ValueError(
                f"split {split.name!r} has no soft labels; prepare FER+ with --soft-labels"
            )
        return split.soft_labels.astype(np.float32)
    return split.one_hot()


def epoch_order(split: Split, config: TrainConfig, epoch_seed: int) -> np.ndarray:
    """The face order of one epoch for the NumPy pipeline: a seeded permutation, or with
    balanced sampling equal draws per class (each class cycling through a shuffle)."""
    rng = np.random.default_rng(epoch_seed)
    if config.sampling != "balanced":
        return rng.permutation(len(split))
    steps = math.ceil(len(split) / config.batch_size)
    members = [np.flatnonzero(split.labels == label) for label in range(len(split.classes))]
    members = [rng.permutation(indices) for indices in members if len(indices)]
    draws = rng.integers(len(members), size=steps * config.batch_size)
    order = np.empty(len(draws), dtype=np.int64)
    for index, indices in enumerate(members):
        picks = np.flatnonzero(draws == index)
        order[picks] = indices[np.arange(len(picks)) % len(indices)]
    return order


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """``n / (k * count_c)`` for each class: rare classes weigh more."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    counts[counts == 0] = 1
    weights = len(labels) / (n_classes * counts)
    return {index: float(weight) for index, weight in enumerate(weights)}


def carve_validation(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split ``split`` into (train, val), stratified and seeded: ``fraction`` of each class
    with at least two faces goes to val (at least one face of each such class).

    Raises:
        ValueError: no class has two faces, so nothing can be held out.
    """
    rng = np.random.default_rng(seed)
    held_out = []
    for label in np.unique(split.labels):
        members = np.flatnonzero(split.labels == label)
        if len(members) < 2:
            continue
        take = min(len(members) - 1, max(1, round(len(members) * fraction)))
        held_out.append(rng.choice(members, take, replace=False))
    if not held_out:
        raise ValueError(
            f"split {split.name!r} has no class with two faces, so no validation split can be "
            "carved from it; prepare more data"
        )
    val_indices = np.sort(np.concatenate(held_out))
    train_indices = np.setdiff1d(np.arange(len(split)), val_indices)
    return subset_split(split, train_indices), subset_split(split, val_indices)


def run_splits(
    config: TrainConfig, data: PreparedDataset, announce: bool = False
) -> tuple[Split, Split]:
    """The training and validation faces of a run, limited as configured.

    When the data has no ``val_split`` (a small folder that ``prepare`` could not split),
    ``val_fraction`` of the training faces is carved out as validation, seeded, the same
    way on every call (resume, finish, bundle).
    """
    train_split = data.split(config.train_split)
    if config.val_split in data.splits:
        val_split = data.split(config.val_split)
    elif config.val_fraction > 0:
        train_split, val_split = carve_validation(train_split, config.val_fraction, config.seed)
        if announce:
            logger.warning(
                "%s has no %r split: validating on %d faces (%g of each class, seed %d) "
                "carved from %r, which trains on the other %d",
                config.data, config.val_split, len(val_split), config.val_fraction,
                config.seed, config.train_split, len(train_split),
            )  # fmt: skip
    else:
        raise ValueError(
            f"{config.data}: no {config.val_split!r} split (it has {', '.join(data.splits)}); "
            "choose one with val_split, or set val_fraction to carve one from train"
        )
    train_split = subset_split(
        train_split, stratified_subset(train_split.labels, config.limit_train, config.seed)
    )
    val_split = subset_split(
        val_split, stratified_subset(val_split.labels, config.limit_val, config.seed)
    )
    return train_split, val_split


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's order, augmentation and mixup: a resumed run repeats it."""
    return seed * 100_003 + epoch


def mixup_pairs(n: int, alpha: float, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Mixup for one batch of ``n``: each face's weight ``lam`` (Beta(alpha, alpha)) and the
    partner it is mixed with, seeded by the epoch's seed and the step. The batch becomes
    ``lam * x + (1 - lam) * x[partner]``, targets alike."""
    rng = np.random.default_rng([seed, step])
    lam = rng.beta(alpha, alpha, size=n).astype(np.float32)
    return lam, rng.permutation(n)


def mix(values: Any, lam: Any, partner: Any) -> Any:
    """``lam * values + (1 - lam) * values[partner]``, ``lam`` broadcast over each face's
    values (NumPy arrays or torch tensors)."""
    lam = lam.reshape((-1,) + (1,) * (values.ndim - 1))
    return lam * values + (1 - lam) * values[partner]

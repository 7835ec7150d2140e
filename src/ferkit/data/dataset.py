"""Load a dataset written by ``ferkit prepare`` as NumPy arrays or a ``tf.data.Dataset``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The file that makes a folder a prepared dataset (classes, splits, counts, settings).
MANIFEST_NAME = "manifest.json"


@dataclass
class Split:
    """One split of a prepared dataset."""

    name: str
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    paths: np.ndarray  # str (N,), relative to the source
    classes: list[str]
    soft_labels: np.ndarray | None = None  # float32 (N, n_classes), rows sum to 1

    def __len__(self) -> int:
        return len(self.labels)

    def one_hot(self) -> np.ndarray:
        return np.eye(len(self.classes), dtype=np.float32)[self.labels]


class PreparedDataset:
    """A prepared dataset folder: its manifest, classes and splits.

    Example:
        >>> data = PreparedDataset("data/fer2013")       # doctest: +SKIP
        >>> train = data.split("train")                   # doctest: +SKIP
        >>> dataset = data.tf_dataset("train", batch_size=64, shuffle=True, seed=0)  # +SKIP
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST_NAME
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{self.folder}: no {MANIFEST_NAME}; it is not a prepared dataset. "
                f"Run: ferkit prepare SOURCE --out {self.folder}"
            )
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        self.classes: list[str] = list(self.manifest["classes"])
        self._cache: dict[str, Split] = {}

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def split(self, name: str) -> Split:
        """Load one split into memory (cached)."""
        if name not in self.manifest["splits"]:
            raise KeyError(f"{self.folder}: no split {name!r}; it has {', '.join(self.splits)}")
        if name not in self._cache:
            with np.load(self.folder / self.manifest["splits"][name]["file"]) as arrays:
                self._cache[name] = Split(
                    name=name,
                    images=arrays["images"],
                    labels=arrays["labels"].astype(np.int64),
                    paths=arrays["paths"],
                    classes=self.classes,
                    soft_labels=arrays.get("soft_labels"),
                )
        return self._cache[name]

    def tf_dataset(
        self,
        name: str,
        *,
        batch_size: int = 64,
        shuffle: bool = False,
        seed: int = 0,
        soft: bool = False,
        one_hot: bool = False,
        drop_remainder: bool = False,
    ) -> Any:
        """Return a split as a batched, prefetched ``tf.data.Dataset`` of ``(images, y)``.

        Images stay ``uint8``: models rescale inside their graph. ``y`` is the integer
        label, a one-hot row (``one_hot``), or the FER+ vote distribution (``soft``).
        """
        return to_tf_dataset(
            self.split(name),
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            soft=soft,
            one_hot=one_hot,
            drop_remainder=drop_remainder,
        )


def to_tf_dataset(
    split: Split,
    *,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    soft: bool = False,
    one_hot: bool = False,
    drop_remainder: bool = False,
) -> Any:
    """Wrap a :class:`Split` in a ``tf.data.Dataset`` (see :meth:`PreparedDataset.tf_dataset`)."""
    from ferkit.extras import import_tensorflow

    tf = import_tensorflow()
    if soft:
        if split.soft_labels is None:
            raise ValueError(
                f"split {split.name!r} has no soft labels; prepare FER+ with --soft-labels"
            )
        targets = split.soft_labels
    elif one_hot:
        targets = split.one_hot()
    else:
        targets = split.labels
    dataset = tf.data.Dataset.from_tensor_slices((split.images, targets))
    if shuffle:
        dataset = dataset.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def load_split(folder: str | os.PathLike[str], name: str) -> Split:
    """Load one split of a prepared dataset as NumPy arrays."""
    return PreparedDataset(folder).split(name)

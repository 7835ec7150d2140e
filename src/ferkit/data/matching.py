"""Find the same faces in two prepared datasets, by their pixels.

FER+ relabelled FER2013's faces with ten votes each, but the copies in circulation differ
in file names and encoding (PNG files in Microsoft's layout, JPEG files in the image-folder
copies of FER2013). Matching on pixels links them anyway, so one dataset's labels can be
used as extra targets, or as a second opinion, for the other's faces.
"""

from __future__ import annotations

import numpy as np

from ferkit.data.dataset import Split

#: Largest mean absolute pixel difference (0..255) of two copies of one face. JPEG copies
#: of FER2013 differ from the PNG originals by about 1.3; different faces by 30 or more.
MATCH_MAX_MEAN_ABS = 6.0

_SMALL_SIDE = 16  # faces are compared at this side first, then checked at full size


def _small(images: np.ndarray) -> np.ndarray:
    """Faces as float vectors at ``_SMALL_SIDE`` px (area averaging), or at full size when
    the side is not a multiple of it."""
    grey = images.astype(np.float32)
    grey = grey.mean(axis=-1) if grey.ndim == 4 else grey
    n, side = len(grey), grey.shape[1]
    if side % _SMALL_SIDE or grey.shape[2] != side:
        return grey.reshape(n, -1)
    step = side // _SMALL_SIDE
    return grey.reshape(n, _SMALL_SIDE, step, _SMALL_SIDE, step).mean(axis=(2, 4)).reshape(n, -1)


def _nearest(rows: np.ndarray, others: np.ndarray, chunk: int) -> np.ndarray:
    other_norms = (others**2).sum(axis=1)
    best = np.empty(len(rows), dtype=np.int64)
    for start in range(0, len(rows), chunk):
        distances = other_norms[None, :] - 2.0 * rows[start : start + chunk] @ others.T
        best[start : start + chunk] = distances.argmin(axis=1)
    return best


def match_faces(
    a: np.ndarray,
    b: np.ndarray,
    *,
    max_mean_abs: float = MATCH_MAX_MEAN_ABS,
    mutual: bool = True,
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Pair each face of ``a`` with the same face in ``b`` (another copy of the dataset,
    re-encoded: FER2013's JPEGs against FER+'s PNGs).

    The nearest face at low resolution is kept when the full-size faces differ by at most
    ``max_mean_abs`` grey levels on average and, with ``mutual``, when the face of ``a`` is
    also the nearest to its partner (which leaves out faces that appear twice in ``a``;
    without it each copy gets the partner).

    Returns:
        Index arrays ``(in_a, in_b)`` of the matched pairs.
    """
    empty = np.zeros(0, dtype=np.int64)
    if len(a) == 0 or len(b) == 0:
        return empty, empty
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"faces of shape {a.shape[1:]} and {b.shape[1:]} cannot be matched; prepare both "
            "datasets at the same --size and --channels"
        )
    small_a, small_b = _small(a), _small(b)
    a_to_b = _nearest(small_a, small_b, chunk)
    keep = np.ones(len(a), dtype=bool)
    if mutual:
        keep &= _nearest(small_b, small_a, chunk)[a_to_b] == np.arange(len(a))
    flat_a = a.reshape(len(a), -1).astype(np.float32)
    gap = np.abs(flat_a - b[a_to_b].reshape(len(a), -1).astype(np.float32)).mean(axis=1)
    keep &= gap <= max_mean_abs
    return np.flatnonzero(keep), a_to_b[keep]


def matched_votes(split: Split, votes: list[Split]) -> np.ndarray:
    """Vote distributions of another dataset's copies of ``split``'s faces.

    ``votes`` are splits of a dataset prepared with soft labels (FER+ with
    ``--soft-labels``). Its classes are mapped onto ``split``'s by name, through the
    synonym table (:func:`ferkit.classes.canonical_name`); votes for classes
    ``split`` does not have (FER+'s contempt) are dropped and the rest renormalised.

    Returns:
        ``float32 (N, n_classes)``: each matched face's distribution, and a row of NaN for
        a face with no copy (or whose votes all went to dropped classes).
    """
    from ferkit.classes import canonical_name

    classes = [canonical_name(name) for name in split.classes]
    for other in votes:
        if other.soft_labels is None:
            raise ValueError(
                f"split {other.name!r} has no vote distributions; prepare FER+ with --soft-labels"
            )
        if not set(classes) & {canonical_name(name) for name in other.classes}:
            raise ValueError(f"no class in common between {split.classes} and {other.classes}")

    def column(other: Split, name: str) -> np.ndarray:
        names = [canonical_name(n) for n in other.classes]  # "anger" is "angry"...
        if name in names:
            return other.soft_labels[:, names.index(name)]
        return np.zeros(len(other), dtype=np.float32)

    reference = np.concatenate([other.images for other in votes])
    columns = [np.stack([column(other, name) for name in classes], axis=1) for other in votes]
    distributions = np.concatenate(columns)
    result = np.full((len(split), len(classes)), np.nan, dtype=np.float32)
    in_split, in_votes = match_faces(split.images, reference, mutual=False)
    rows = distributions[in_votes]
    totals = rows.sum(axis=1, keepdims=True)
    kept = totals[:, 0] > 0
    result[in_split[kept]] = rows[kept] / totals[kept]
    return result

"""Find the same faces in two prepared datasets, by their pixels.

FER+ relabelled FER2013's faces with ten votes each, but the copies in circulation differ
in file names and encoding (PNG files in Microsoft's layout, JPEG files in the image-folder
copies of FER2013). Matching on pixels links them anyway, so one dataset's labels can be
used as extra targets, or as a second opinion, for the other's faces.
"""

from __future__ import annotations

import numpy as np

from ferkit.data.dataset import Split

#: Largest root-mean-square pixel difference (0..255) of two copies of one face. JPEG
#: copies of FER2013 differ from the PNG originals by about 2; different faces by 40+.
MATCH_MAX_RMSE = 8.0

_SMALL_SIDE = 16  # faces are compared at this side first, then checked at full size


def _small(images: np.ndarray) -> np.ndarray:
    """Faces as float vectors at ``_SMALL_SIDE`` px (area averaging; side a multiple)."""
    grey = images.astype(np.float32).mean(axis=-1) if images.ndim == 4 else images
    n, side = len(grey), grey.shape[1]
    if side % _SMALL_SIDE:
        raise ValueError(f"faces of {side} px cannot be matched; use a multiple of {_SMALL_SIDE}")
    step = side // _SMALL_SIDE
    return grey.reshape(n, _SMALL_SIDE, step, _SMALL_SIDE, step).mean(axis=(2, 4)).reshape(n, -1)


def match_faces(
    query: np.ndarray,
    reference: np.ndarray,
    *,
    max_rmse: float = MATCH_MAX_RMSE,
    chunk: int = 1024,
) -> np.ndarray:
    """For each face of ``query``, the index of the same face in ``reference``, or -1.

    Both are ``uint8`` arrays of faces of one size, ``(N, H, W)`` or ``(N, H, W, C)``. The
    nearest reference face at low resolution is accepted when the full-size faces differ by
    at most ``max_rmse`` grey levels.
    """
    if len(query) == 0 or len(reference) == 0:
        return np.full(len(query), -1, dtype=np.int64)
    if query.shape[1:3] != reference.shape[1:3]:
        raise ValueError(
            f"faces of {query.shape[1:3]} and {reference.shape[1:3]} px cannot be matched; "
            "prepare both datasets at the same --size"
        )
    small_query, small_reference = _small(query), _small(reference)
    reference_norms = (small_reference**2).sum(axis=1)
    nearest = np.empty(len(query), dtype=np.int64)
    for start in range(0, len(query), chunk):
        block = small_query[start : start + chunk]
        distances = reference_norms[None, :] - 2.0 * block @ small_reference.T
        nearest[start : start + chunk] = distances.argmin(axis=1)
    full_query = query.reshape(len(query), -1).astype(np.float32)
    full_nearest = reference[nearest].reshape(len(query), -1).astype(np.float32)
    rmse = np.sqrt(((full_query - full_nearest) ** 2).mean(axis=1))
    return np.where(rmse <= max_rmse, nearest, -1)


def matched_votes(split: Split, votes: list[Split]) -> np.ndarray:
    """Vote distributions of another dataset's copies of ``split``'s faces.

    ``votes`` are splits of a dataset prepared with soft labels (FER+ with
    ``--soft-labels``). Its classes are mapped onto ``split``'s by name; votes for classes
    ``split`` does not have (FER+'s contempt) are dropped and the rest renormalised.

    Returns:
        ``float32 (N, n_classes)``: each matched face's distribution, and a row of NaN for
        a face with no copy (or whose votes all went to dropped classes).
    """
    classes = split.classes
    for other in votes:
        if other.soft_labels is None:
            raise ValueError(
                f"split {other.name!r} has no vote distributions; prepare FER+ with --soft-labels"
            )
        shared = set(classes) & set(other.classes)
        if not shared:
            raise ValueError(f"no class in common between {classes} and {other.classes}")
    reference = np.concatenate([other.images for other in votes])
    columns = [
        np.stack(
            [
                other.soft_labels[:, other.classes.index(name)]
                if name in other.classes
                else np.zeros(len(other), dtype=np.float32)
                for name in classes
            ],
            axis=1,
        )
        for other in votes
    ]
    distributions = np.concatenate(columns)
    result = np.full((len(split), len(classes)), np.nan, dtype=np.float32)
    index = match_faces(split.images, reference)
    found = index >= 0
    rows = distributions[index[found]]
    totals = rows.sum(axis=1, keepdims=True)
    kept = totals[:, 0] > 0
    positions = np.flatnonzero(found)[kept]
    result[positions] = rows[kept] / totals[kept]
    return result

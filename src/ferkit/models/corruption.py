"""Random image corruptions for training: the shifts real photos bring, at random strength.

A face that reaches the model at prediction time has often been blurred, shrunk and
enlarged again, JPEG-compressed, taken with a noisy sensor, exposed differently or partly
covered. Training with ``augment.corruption = p`` gives each training face, with
probability ``p``, one of these :data:`KINDS` at a random strength:

- ``blur``: Gaussian blur, sigma 0.6, 1.2 or 2.0 px (at 48 px);
- ``downscale``: shrunk to 1/2, 1/3 or 1/4 of its side by area averaging, then enlarged
  bilinearly;
- ``jpeg``: 8x8 block DCT quantised with the JPEG luminance table at a quality from 8 to 60,
  most often near 8 (JPEG's own arithmetic, without its entropy coding; needs a side that
  is a multiple of 8);
- ``noise``: Gaussian sensor noise, sigma 2 to 20 grey levels;
- ``gamma``: gamma 0.45 to 2.2;
- ``occlusion``: a dark band across the eyes (sunglasses) or a flat band over the lower face
  (a mask, a hand, a scarf), at a random height and grey level.

Every corruption here is a fixed linear map along the image's rows and columns (a matrix
built once with NumPy) or an element-wise formula, so one function, :func:`corrupt`, runs on
Keras tensors inside the model (the Keras engine) and on PyTorch tensors (the torch engine).
The random strengths come in as arguments, drawn by each engine from its own seeded
generator. The robustness benchmark (:mod:`ferkit.evaluation.robustness`) measures the
same shifts with independent, real implementations (OpenCV's JPEG encoder and resizing).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

#: The corruption kinds, in the order of the random kind index.
KINDS: tuple[str, ...] = ("blur", "downscale", "jpeg", "noise", "gamma", "occlusion")

#: Random numbers each face needs: apply?, kind, and three strengths.
DRAWS = 5

_BLUR_SIGMAS = (0.6, 1.2, 2.0)  # at 48 px; scaled with the side
_DOWNSCALE_FACTORS = (2, 3, 4)

# The JPEG standard's luminance quantisation table (ITU T.81, Annex K).
_JPEG_LUMINANCE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.float32,
)


def _gaussian_matrix(side: int, sigma: float) -> np.ndarray:
    """Blur along one axis as a matrix, with edge rows renormalised (no dark border)."""
    positions = np.arange(side, dtype=np.float64)
    weights = np.exp(-0.5 * ((positions[:, None] - positions[None, :]) / sigma) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _resize_matrix(source: int, target: int) -> np.ndarray:
    """Linear interpolation from ``source`` to ``target`` samples (half-pixel centres)."""
    matrix = np.zeros((target, source), dtype=np.float64)
    for row in range(target):
        position = min(max((row + 0.5) * source / target - 0.5, 0.0), source - 1.0)
        low = math.floor(position)
        high = min(low + 1, source - 1)
        matrix[row, low] += 1.0 - (position - low)
        matrix[row, high] += position - low
    return matrix


def _downscale_matrix(side: int, factor: int) -> np.ndarray:
    """Area-average down to ``side / factor`` samples, then linear back up to ``side``."""
    small = max(1, round(side / factor))
    down = np.zeros((small, side), dtype=np.float64)
    for row in range(small):
        start, stop = row * side / small, (row + 1) * side / small
        for column in range(side):
            overlap = min(stop, column + 1) - max(start, column)
            if overlap > 0:
                down[row, column] = overlap
    down /= down.sum(axis=1, keepdims=True)
    return (_resize_matrix(small, side) @ down).astype(np.float32)


def _dct_matrix(size: int = 8) -> np.ndarray:
    """The orthonormal DCT-II matrix (JPEG's transform)."""
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    matrix = np.sqrt(2.0 / size) * np.cos(np.pi * (2 * n + 1) * k / (2 * size))
    matrix[0] /= np.sqrt(2.0)
    return matrix.astype(np.float32)


@functools.cache
def constants(side: int) -> dict[str, np.ndarray]:
    """The fixed matrices for faces of ``side`` pixels (NumPy; each engine converts them).

    Raises:
        ValueError: ``side`` is not a multiple of 8 (JPEG works on 8x8 blocks).
    """
    if side % 8:
        raise ValueError(
            f"augment.corruption needs faces whose side is a multiple of 8 (JPEG's 8x8 "
            f"blocks), not {side} px: prepare the data with --size 48 (or 56, 64, ...), or "
            "set augment.corruption to 0"
        )
    scale = side / 48.0
    return {
        **{
            f"blur{i}": _gaussian_matrix(side, sigma * scale)
            for i, sigma in enumerate(_BLUR_SIGMAS)
        },
        **{f"down{i}": _downscale_matrix(side, f) for i, f in enumerate(_DOWNSCALE_FACTORS)},
        "dct": _dct_matrix(),
        "jpeg_table": _JPEG_LUMINANCE,
        "rows": ((np.arange(side, dtype=np.float32) + 0.5) / side),
    }


def _along_axes(xp: Any, images: Any, matrix: Any, channels_last: bool) -> Any:
    """``matrix @ image @ matrix.T`` on each image and channel."""
    if channels_last:
        return xp.einsum("ih,bhwc,jw->bijc", matrix, images, matrix)
    return xp.einsum("ih,bchw,jw->bcij", matrix, images, matrix)


def _pick(xp: Any, u: Any, versions: list[Any]) -> Any:
    """Per face, the version chosen by ``u`` in [0, 1) (equal shares)."""
    result = versions[-1]
    for i in range(len(versions) - 2, -1, -1):
        result = xp.where(u < (i + 1) / len(versions), versions[i], result)
    return result


def _jpeg(xp: Any, images: Any, quality: Any, c: dict[str, Any], channels_last: bool) -> Any:
    """JPEG's block DCT quantisation at a per-face quality (1..100).

    Every tensor stays at five dimensions or fewer (TensorFlow broadcasts no more): the
    channels share an axis with the block columns (channels last) or block rows (first).
    """
    shape = tuple(images.shape)  # the batch dimension may be unknown (None) in a graph
    side, channels = (shape[1], shape[3]) if channels_last else (shape[2], shape[1])
    blocks = side // 8
    # The IJG scaling of the table by quality; one table per face.
    scale = xp.where(quality < 50.0, 5000.0 / quality, 200.0 - 2.0 * quality)
    table = xp.clip(
        xp.floor((c["jpeg_table"][None] * xp.reshape(scale, (-1, 1, 1)) + 50.0) / 100.0),
        1.0,
        255.0,
    )  # (B, 8, 8)
    if channels_last:
        # (B, p, 8, q, 8 * C): block rows p, pixel rows u, block columns q, (x, channel)
        x = xp.reshape(images, (-1, blocks, 8, blocks, 8, channels))
        coefficients = xp.einsum("uv,bpvqwc,xw->bpuqxc", c["dct"], x - 128.0, c["dct"])
        coefficients = xp.reshape(coefficients, (-1, blocks, 8, blocks, 8 * channels))
        table = xp.concatenate([table[..., None]] * channels, axis=-1)
        table = xp.reshape(table, (-1, 1, 8, 1, 8 * channels))
        quantised = xp.round(coefficients / table) * table
        quantised = xp.reshape(quantised, (-1, blocks, 8, blocks, 8, channels))
        restored = xp.einsum("vu,bpvqwc,wx->bpuqxc", c["dct"], quantised, c["dct"])
    else:
        # (B, C * p, 8, q, 8)
        x = xp.reshape(images, (-1, channels * blocks, 8, blocks, 8))
        coefficients = xp.einsum("uv,bpvqw,xw->bpuqx", c["dct"], x - 128.0, c["dct"])
        table = xp.reshape(table, (-1, 1, 8, 1, 8))
        quantised = xp.round(coefficients / table) * table
        restored = xp.einsum("vu,bpvqw,wx->bpuqx", c["dct"], quantised, c["dct"])
    return xp.reshape(restored + 128.0, (-1, *shape[1:]))


def corrupt(
    xp: Any,
    images: Any,
    draws: Any,
    noise: Any,
    rate: float,
    c: dict[str, Any],
    *,
    channels_last: bool = True,
) -> Any:
    """Give each face, with probability ``rate``, one random corruption of :data:`KINDS`.

    Args:
        xp: the array namespace: ``keras.ops`` or ``torch``.
        images: a float batch in 0..255, ``(B, H, W, C)`` (``channels_last``) or
            ``(B, C, H, W)``, with ``H == W``.
        draws: uniform numbers in [0, 1), ``(B, DRAWS)``: apply?, kind, three strengths.
        noise: standard normal numbers shaped like ``images``.
        rate: the share of faces that get a corruption.
        c: :func:`constants` for the side, as tensors of ``xp``.
    """

    def column(i: int) -> Any:
        shape = (-1, 1, 1, 1)
        return xp.reshape(draws[:, i], shape)

    apply, kind, s1, s2, s3 = (column(i) for i in range(DRAWS))
    rows = c["rows"]
    rows = xp.reshape(rows, (1, -1, 1, 1) if channels_last else (1, 1, -1, 1))

    blurred = _pick(
        xp, s1, [_along_axes(xp, images, c[f"blur{i}"], channels_last) for i in range(3)]
    )
    shrunk = _pick(
        xp, s1, [_along_axes(xp, images, c[f"down{i}"], channels_last) for i in range(3)]
    )
    # quality 8..60, most often near the low end
    compressed = _jpeg(xp, images, 8.0 + 52.0 * s1[:, 0, 0, 0] ** 1.5, c, channels_last)
    noisy = images + (2.0 + 18.0 * s1) * noise
    gamma = xp.exp((2.0 * s1 - 1.0) * math.log(2.2))
    exposed = 255.0 * (xp.clip(images, 0.0, 255.0) / 255.0) ** gamma
    # Occlusion: sunglasses (dark band over the eyes) or a flat lower-face band.
    eyes_top = 0.22 + 0.1 * s2
    eyes = (rows >= eyes_top) & (rows < eyes_top + 0.12 + 0.08 * s3)
    lower = rows >= 0.52 + 0.18 * s2
    dark = 50.0 * s3
    flat = 60.0 + 170.0 * s3
    covered = xp.where(s1 < 0.5, xp.where(eyes, dark, images), xp.where(lower, flat, images))

    versions = [blurred, shrunk, compressed, noisy, exposed, covered]
    corrupted = _pick(xp, kind, versions)
    result = xp.where(apply < rate, corrupted, images)
    return xp.clip(result, 0.0, 255.0)

"""Image decoding that copes with what real datasets contain.

Any size, colour mode (grayscale, RGB, RGBA, palette, 16-bit, CMYK) and common format
(JPEG, PNG, BMP, TIFF, WebP, GIF) becomes a ``uint8`` array, with the EXIF orientation
applied. Anything that cannot be decoded raises :class:`ImageReadError`, which names
the file and says why, so batch jobs can record it and go on.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Video file extensions that ``predict`` reads as videos.
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
)
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm"}
)

#: Default pixel budget of one decoded image (40 megapixels: about 120 MB as RGB). Larger
#: JPEGs are decoded at a reduced scale (JPEG's draft mode: 1/2, 1/4 or 1/8), which costs no
#: accuracy since faces are classified at 48x48; larger images of other formats are refused.
DEFAULT_MAX_PIXELS = 40_000_000


_MAGIC = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG": "PNG",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def sniff_format(data: bytes) -> str | None:
    """Name the image format a file's first bytes announce, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _MAGIC.items() if data.startswith(magic)), None)


class ImageReadError(ValueError):
    """An image could not be decoded; ``reason`` says why in a few words and ``kind``
    classifies it (``unreadable``, ``not_image`` or ``too_large``)."""

    def __init__(self, path: str | os.PathLike[str], reason: str, kind: str = "unreadable"):
        self.path = path if isinstance(path, str) else os.fsdecode(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path}: {reason}")


#: How the faces of an input are found: ``crop`` takes the whole image as one face,
#: ``detect`` runs the face detector, ``auto`` decides per image (:func:`looks_like_crop`).
FACE_MODES = ("auto", "crop", "detect")
#: In ``auto`` mode, images at most this many pixels on their longer side, and roughly
#: square, are taken as ready-cut face crops (FER2013's are 48x48).
DEFAULT_CROP_MAX_SIDE = 128


def looks_like_crop(shape: tuple[int, ...], max_side: int = DEFAULT_CROP_MAX_SIDE) -> bool:
    """Whether an image of this shape is a ready-cut face crop rather than a photo: small
    (longer side at most ``max_side``) and roughly square (sides within a ratio of 1.5)."""
    height, width = shape[:2]
    if min(height, width) < 1:
        return False
    return max(height, width) <= max_side and max(height, width) / min(height, width) <= 1.5


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """Return whether a file name has an image extension ferkit decodes."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _to_8bit(image: Image.Image) -> Image.Image:
    """Bring 16-bit, 32-bit integer and float images down to 8-bit grayscale."""
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return Image.fromarray(array)
    array = array.astype(np.float64)
    if image.mode.startswith("I") and array.max(initial=0) > 255:
        array = array / 257.0  # 16-bit range onto 8-bit
    elif image.mode == "F" and array.max(initial=0) <= 1.0:
        array = array * 255.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def normalise_mode(image: Image.Image, color: bool) -> Image.Image:
    """Any PIL image as 8-bit RGB (``color``) or grayscale: 16-bit and float images are
    rescaled, palettes expanded, transparency put on white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _to_8bit(image)
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        # Transparent pixels carry arbitrary colour: put the image on a white background.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    target = "RGB" if color else "L"
    if image.mode != target:
        image = image.convert(target)
    return image


def _too_large(width: int, height: int, max_pixels: int) -> str:
    return (
        f"image is {width}x{height} ({width * height / 1e6:.0f} megapixels), over the pixel "
        f"budget of {max_pixels / 1e6:.0f} megapixels; downscale it, or raise the budget "
        "with --max-pixels"
    )


def _within_budget(image: Image.Image, max_pixels: int, source: str | os.PathLike[str]) -> None:
    """Shrink a JPEG while decoding when it is over budget; refuse other formats."""
    width, height = image.size
    if width * height <= max_pixels:
        return
    if image.format == "JPEG":
        scale = 1
        while scale < 8 and width * height / (scale * scale) > max_pixels:
            scale *= 2
        image.draft(image.mode, (math.ceil(width / scale), math.ceil(height / scale)))
        if image.size[0] * image.size[1] <= max_pixels:
            return
    raise ImageReadError(source, _too_large(width, height, max_pixels), "too_large")


def decode_image(
    data: bytes,
    *,
    color: bool = True,
    source: str | os.PathLike[str] = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode encoded image bytes into ``uint8`` RGB ``(H, W, 3)`` or gray ``(H, W)``.

    Args:
        data: the encoded file content.
        color: RGB when true, 8-bit grayscale when false.
        source: the name used in error messages.
        max_pixels: pixel budget; JPEGs above it are decoded at a reduced scale, other
            images above it are refused, so memory stays bounded whatever the input.

    Raises:
        ImageReadError: empty, truncated, corrupt, non-image or over-budget data.
    """
    if len(data) == 0:
        raise ImageReadError(source, "empty file (0 bytes): re-download or delete it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette warnings are not our business
            image = Image.open(io.BytesIO(data))
            _within_budget(image, max_pixels, source)
            image.load()
            image = ImageOps.exif_transpose(image)
            image = normalise_mode(image, color)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        announced = sniff_format(data)
        if announced:
            raise ImageReadError(
                source,
                f"corrupt or truncated image (starts like a {announced} but cannot be decoded)",
            ) from None
        raise ImageReadError(
            source,
            "not an image: no known image format recognised in the file's content",
            "not_image",
        ) from None
    except Image.DecompressionBombError as error:
        # Raised by Pillow's own guard while reading the header, before any pixel decodes.
        pixels = next(iter(re.findall(r"\d+", str(error))), "?")
        raise ImageReadError(
            source,
            f"image has {pixels} pixels, beyond what can be decoded safely; downscale it",
            "too_large",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(source, f"corrupt or truncated image ({error})") from None
    array = np.asarray(image, dtype=np.uint8)
    if array.size == 0:
        raise ImageReadError(source, "image has no pixels")
    return array


def read_image(
    path: str | os.PathLike[str], *, color: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read an image file into a ``uint8`` array (see :func:`decode_image`).

    Raises:
        FileNotFoundError: the path does not exist.
        ImageReadError: the file cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file; check the path")
    return decode_image(path.read_bytes(), color=color, source=path, max_pixels=max_pixels)


def resize_face(face: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Resize a face image to ``(size, size, channels)`` ``uint8`` without keeping aspect.

    Faces are expected to be roughly square already (crops); area interpolation when
    shrinking keeps fine detail such as wrinkles, which matter for expressions.
    """
    import cv2  # local import: OpenCV is heavy and most callers never resize

    if face.ndim == 2:
        face = face[:, :, None]
    if channels == 1 and face.shape[2] == 3:
        face = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)[:, :, None]
    elif channels == 3 and face.shape[2] == 1:
        face = np.repeat(face, 3, axis=2)
    if face.shape[0] != size or face.shape[1] != size:
        shrinking = face.shape[0] > size or face.shape[1] > size
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        face = cv2.resize(face, (size, size), interpolation=interpolation)
        if face.ndim == 2:
            face = face[:, :, None]
    return np.ascontiguousarray(face, dtype=np.uint8)

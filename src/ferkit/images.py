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
from typing import NamedTuple

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

#: Most scans (start-of-scan segments) a JPEG may have. libjpeg decodes every scan of a
#: progressive JPEG as a pass over all the image's blocks, so a small file of hundreds of
#: near-empty scans costs seconds of CPU before a pixel comes out. Encoders write about 10
#: (libjpeg's default progression: 10 for colour, 6 for gray); libjpeg-turbo leaves the
#: limit to its caller (``djpeg -maxscans``, ``TJPARAM_SCANLIMIT``: none by default). A
#: JPEG over the pixel budget, decoded at a reduced scale, gets as many passes over the
#: budget's pixels, since each scan still covers the full resolution.
MAX_JPEG_SCANS = 100
#: Most marker segments the scan count reads before it gives up on a file (a JPEG has
#: tens): it bounds the count's own cost on a file made of nothing but markers.
MAX_JPEG_SEGMENTS = 10_000


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
    classifies it (``unreadable``, ``not_image``, ``too_large``, or ``too_complex``: more
    work to decode than an image of its size should take)."""

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


#: Pixels of a 16-bit or float image brought to 8 bits at a time: the float32 copy the
#: arithmetic needs stays a few MB, whatever the image's size.
_STRIP_PIXELS = 1 << 20


def _to_8bit(image: Image.Image) -> Image.Image:
    """Bring 16-bit, 32-bit integer and float images down to 8-bit grayscale.

    The image is converted a strip of rows at a time into one ``uint8`` array, so the
    conversion adds one byte per pixel to the image, not a float64 copy of it (a 40
    megapixel 16-bit PNG of 90 KB would otherwise take over 1 GB).
    """
    width, height = image.size
    high = image.getextrema()[1]  # over the whole image, before any strip is scaled
    if image.mode.startswith("I") and high > 255:
        divisor, factor = 257.0, 1.0  # 16-bit range onto 8-bit
    elif image.mode == "F" and high <= 1.0:
        divisor, factor = 1.0, 255.0
    else:
        divisor, factor = 1.0, 1.0
    gray = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _STRIP_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        strip = np.asarray(image.crop((0, top, width, bottom)), dtype=np.float32)
        strip = np.rint(strip / divisor * factor)
        gray[top:bottom] = np.clip(np.nan_to_num(strip, copy=False), 0, 255)
    return Image.fromarray(gray, mode="L")


#: Modes that :func:`normalise_mode` brings to 8-bit gray ("L") when asked for gray.
_GRAY_MODES = frozenset({"L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


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


#: A marker: 0xFF and a code that is not stuffing (0x00), TEM (0x01), a restart marker
#: (0xD0-0xD7), SOI (0xD8, met again only in a broken file) or a fill byte (0xFF). In
#: entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\x01\xd0-\xd8\xff]")
_EOI, _SOS, _APP0, _DHT, _SOF_PROGRESSIVE = 0xD9, 0xDA, 0xE0, 0xC4, 0xC2
#: The segments a plain JPEG (:attr:`JpegScans.plain`) has before its first scan: JFIF
#: (APP0, whole), quantisation and Huffman tables, restart interval, comments, its one
#: baseline, extended or progressive frame header, and the scan. No other application
#: segment: EXIF and XMP carry an orientation, ICC a profile, Adobe's a colour transform.
_PLAIN_HEADER = frozenset({_APP0, 0xDB, _DHT, 0xDD, 0xFE, 0xC0, 0xC1, _SOF_PROGRESSIVE, _SOS})
_JFIF_LENGTH = 16
#: Start-of-frame markers (0xC0-0xCF but DHT, JPG and DAC): they give the image's size.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class JpegScans(NamedTuple):
    """What a JPEG's markers say about the work of decoding it."""

    count: int  #: scans (start-of-scan segments)
    pixels: int  #: of the frame at full resolution; 0 when no frame header was read
    #: Whether the file is a plain 8-bit gray or YCbCr JPEG: one baseline or progressive
    #: frame, a header of only the segments of :data:`_PLAIN_HEADER` one after another,
    #: only Huffman tables between its scans, and its end-of-image marker; no EXIF or XMP
    #: (so no orientation to apply), no colour profile or transform. OpenCV decodes one
    #: to the very pixels Pillow gives, and fails where Pillow fails (:func:`decode_image`).
    plain: bool = False
    components: int = 0  #: of the frame: 1 gray, 3 colour; 0 when no frame header was read


def count_jpeg_scans(data: bytes) -> JpegScans | None:
    """The scans of the JPEG ``data`` and its full-resolution pixels, from its markers.

    Segments are skipped by their length, so a thumbnail inside an EXIF segment is not
    counted, and entropy-coded data is searched for the next marker in C. The count
    ends at the end of the image (EOI) or where the file is truncated or malformed (the
    decoder then reports it), and costs microseconds per segment.

    Returns:
        The scans and pixels, or None when the file has more than
        :data:`MAX_JPEG_SEGMENTS` marker segments (no encoder writes that many).
    """
    scans = pixels = frames = components = 0
    position, end = 2, len(data)
    plain, progressive, ended = True, False, False
    for _ in range(MAX_JPEG_SEGMENTS):
        marker = _JPEG_MARKER.search(data, position)
        if marker is None:
            break
        at, code = marker.end(), data[marker.end() - 1]
        if scans:  # a marker after entropy-coded data, which holds no stray start of image
            plain &= data.find(b"\xff\xd8", position, marker.start()) < 0
        if code == _EOI or at + 2 > end:
            ended = code == _EOI
            break
        length = int.from_bytes(data[at : at + 2], "big")
        if length < 2:  # malformed: the decoder names it
            break
        if not scans:  # the header: segment after segment, each of a plain kind
            plain &= marker.start() == position and code in _PLAIN_HEADER
            plain &= code != _APP0 or length >= _JFIF_LENGTH
        else:  # between the scans of a progressive JPEG: Huffman tables and scans only
            plain &= progressive and code in (_DHT, _SOS)
        scans += code == _SOS
        if code in _SOF and at + 8 <= end:  # length, precision, height, width, components
            height = int.from_bytes(data[at + 3 : at + 5], "big")
            pixels = max(pixels, height * int.from_bytes(data[at + 5 : at + 7], "big"))
            frames, components = frames + 1, data[at + 7]
            plain &= data[at + 2] == 8 and components in (1, 3)
            progressive = code == _SOF_PROGRESSIVE
        position = at + length
    else:
        return None
    plain &= ended and frames == 1 and scans > 0
    return JpegScans(scans, pixels, plain, components)


def _check_jpeg_scans(data: bytes, source: str | os.PathLike[str], max_pixels: int) -> JpegScans:
    """Refuse a JPEG whose scans would cost far more to decode than its size suggests;
    return what its markers say when it is within the limits.

    libjpeg decodes each scan over every block of the full-resolution image, also when
    it scales the output down (:func:`_within_budget`), so the work is scans x pixels:
    at most :data:`MAX_JPEG_SCANS` passes over the pixel budget.
    """
    scans = count_jpeg_scans(data)
    if scans is None:
        what = f"over {MAX_JPEG_SEGMENTS:,} marker segments (a JPEG has tens)"
    elif scans.count > MAX_JPEG_SCANS:
        what = (
            f"{scans.count} scans, over the {MAX_JPEG_SCANS} ferkit decodes (a progressive "
            "JPEG has about 10; each is a pass over the whole image)"
        )
    elif scans.count * scans.pixels > MAX_JPEG_SCANS * max_pixels:
        what = (
            f"{scans.count} scans of {scans.pixels / 1e6:.3g} megapixels, each a pass over "
            "all of them even when decoded at a reduced scale: more work than "
            f"{MAX_JPEG_SCANS} passes over the pixel budget of {max_pixels / 1e6:.3g} "
            "megapixels (--max-pixels)"
        )
    else:
        return scans
    raise ImageReadError(
        source,
        f"JPEG has {what}, so decoding it would stall for seconds; re-encode it as a "
        "baseline JPEG, e.g. 'jpegtran -optimize in.jpg > out.jpg'",
        "too_complex",
    )


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


#: Bytes a pixel takes at the peak of :func:`decode_image` (RGB), by the mode the file
#: decodes to: Pillow's image (4 bytes a pixel for RGB, 2 for 16-bit), the conversions
#: of :func:`normalise_mode` (a white background and a composite for transparency) and
#: the returned array (3). Measured peaks on 25-megapixel images are at most these.
_DECODE_BYTES_PER_PIXEL = {"1": 5, "L": 5, "I;16": 7, "I;16B": 7, "I;16L": 7, "I;16N": 7,
                           "I": 9, "F": 9, "P": 14, "PA": 14, "LA": 14, "La": 14,
                           "RGBA": 14, "RGBa": 14}  # fmt: skip
#: Bytes a pixel of any other mode (RGB, CMYK, YCbCr...) takes at the peak of decoding.
_DECODE_BYTES_PER_PIXEL_OTHER = 8


def decode_memory(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """About the most memory, in bytes, :func:`decode_image` takes to decode ``data`` to
    RGB, read from the image's header before a pixel is decoded (a JPEG over
    ``max_pixels`` counts as decoded at its reduced scale). Data that is not an image
    costs nothing here: decoding it fails before it takes memory."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            width, height, mode = image.width, image.height, image.mode
    except Exception:  # decode_image says what is wrong with it; a plain JPEG, which
        # OpenCV decodes, is counted from its markers whatever Pillow makes of it
        scans = count_jpeg_scans(data) if data.startswith(b"\xff\xd8\xff") else None
        if scans is not None and scans.plain:
            return min(scans.pixels, max_pixels) * _DECODE_BYTES_PER_PIXEL_OTHER
        return 0
    per_pixel = _DECODE_BYTES_PER_PIXEL.get(mode, _DECODE_BYTES_PER_PIXEL_OTHER)
    return min(width * height, max_pixels) * per_pixel


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
        ImageReadError: empty, truncated, corrupt, non-image or over-budget data, or a
            JPEG whose scans are too much work (:data:`MAX_JPEG_SCANS`; refused from its
            markers, before decoding).
    """
    if len(data) == 0:
        raise ImageReadError(source, "empty file (0 bytes): re-download or delete it")
    array = None
    if data.startswith(b"\xff\xd8\xff"):
        scans = _check_jpeg_scans(data, source, max_pixels)
        # Gray wanted of a colour file is Pillow's: its luma is not the file's own Y.
        wanted = color or scans.components == 1
        if scans.plain and wanted and scans.pixels <= min(max_pixels, _pillow_pixel_limit()):
            array = _decode_plain_jpeg(data)
    if array is None:
        array = _decode_with_pillow(data, color, source, max_pixels)
    if array.size == 0:
        raise ImageReadError(source, "image has no pixels")
    if color and array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return array


def _decode_with_pillow(
    data: bytes, color: bool, source: str | os.PathLike[str], max_pixels: int
) -> np.ndarray:
    """Any image Pillow reads, as ``uint8`` RGB or gray (gray files stay gray: the
    caller expands them), the EXIF orientation applied (see :func:`decode_image`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette warnings are not our business
            image = Image.open(io.BytesIO(data))
            _within_budget(image, max_pixels, source)
            image.load()
            image = ImageOps.exif_transpose(image)
            # A gray image becomes RGB in NumPy below: Pillow's RGB takes 4 bytes a pixel.
            gray = image.mode in _GRAY_MODES
            image = normalise_mode(image, color and not gray)
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
    return np.asarray(image, dtype=np.uint8)


#: The most pixels OpenCV decodes (``CV_IO_MAX_IMAGE_PIXELS``).
_OPENCV_MAX_PIXELS = 1 << 30


def _pillow_pixel_limit() -> int:
    """The most pixels Pillow decodes (over twice ``Image.MAX_IMAGE_PIXELS`` it refuses a
    file as a decompression bomb), within OpenCV's own limit of 2**30."""
    limit = Image.MAX_IMAGE_PIXELS
    return min(2 * limit, _OPENCV_MAX_PIXELS) if limit else _OPENCV_MAX_PIXELS


def _decode_plain_jpeg(data: bytes) -> np.ndarray | None:
    """A plain JPEG (:attr:`JpegScans.plain`) decoded by OpenCV in one call that
    releases the GIL, about ten times faster than Pillow on a small face crop; the same
    libjpeg-turbo decoding gives the same pixels: gray ``(H, W)`` or RGB ``(H, W, 3)``.
    None when OpenCV cannot decode it, and :func:`decode_image` then asks Pillow."""
    import cv2

    try:
        array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if array is None or array.size == 0 or array.dtype != np.uint8:
        return None
    if array.ndim == 2:
        return array
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB) if array.shape[2] == 3 else None


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

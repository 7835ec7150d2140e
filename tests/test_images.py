import io
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from ferkit import images
from ferkit.images import (
    MAX_JPEG_SCANS,
    ImageReadError,
    count_jpeg_scans,
    decode_image,
    decode_memory,
    read_image,
    resize_face,
)


def _gradient(height=40, width=60):
    return np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))


@pytest.mark.parametrize("extension", ["jpg", "png", "bmp", "tiff", "webp", "gif"])
def test_common_formats_decode_to_uint8(tmp_path, extension):
    path = tmp_path / f"face.{extension}"
    Image.fromarray(_gradient(), mode="L").save(path)
    gray = read_image(path, color=False)
    rgb = read_image(path, color=True)
    assert gray.shape == (40, 60) and gray.dtype == np.uint8
    assert rgb.shape == (40, 60, 3)
    # Left edge dark, right edge bright, whatever the codec.
    assert gray[:, :5].mean() < 40 and gray[:, -5:].mean() > 200


def test_rgba_is_put_on_white(tmp_path):
    pixels = np.zeros((10, 10, 4), dtype=np.uint8)
    pixels[..., 3] = 0  # fully transparent
    Image.fromarray(pixels, mode="RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png", color=False).min() == 255


def test_palette_image(tmp_path):
    Image.fromarray(_gradient(), mode="L").convert("P").save(tmp_path / "p.png")
    gray = read_image(tmp_path / "p.png", color=False)
    assert gray[:, -5:].mean() > 200


def test_sixteen_bit_png_is_scaled_to_eight_bit(tmp_path):
    pixels = (np.linspace(0, 65535, 60).astype(np.uint16)[None, :]).repeat(40, axis=0)
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    gray = read_image(tmp_path / "deep.png", color=False)
    assert gray[0, 0] == 0 and gray[0, -1] == 255


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        (np.array([[0, 128, 129, 385, 65535]], np.uint16), [0, 0, 1, 1, 255]),  # / 257
        (np.array([[0, 100, 255, 7, 1]], np.int32), [0, 100, 255, 7, 1]),  # 8-bit range kept
        (np.array([[0.0, 0.5, 1.0, np.nan, 0.002]], np.float32), [0, 128, 255, 0, 1]),  # x 255
        (np.array([[-5.0, 3.4, 300.0, 254.5, 12.0]], np.float32), [0, 3, 255, 254, 12]),
    ],
)
def test_deep_and_float_images_convert_exactly(pixels, expected):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "TIFF" if pixels.dtype != np.uint16 else "PNG")
    rgb = decode_image(buffer.getvalue())
    assert rgb.dtype == np.uint8 and rgb.shape == (*pixels.shape, 3)
    assert rgb[..., 0].tolist() == [expected] and (rgb == rgb[..., :1]).all()


def test_a_large_sixteen_bit_png_decodes_without_float_copies(tmp_path):
    """A 36-megapixel 16-bit PNG (about 90 KB) decodes within a few bytes a pixel: its
    16-bit pixels, the 8-bit gray and the RGB array (it took 26 bytes a pixel, over
    900 MB, in float64 copies of the whole image)."""
    side = 6000
    pixels = np.full((side, side), 40000, np.uint16)
    pixels[::97, ::89] = 1234
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    del pixels
    measure = (
        "import resource, sys\n"
        "from ferkit.images import decode_image\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "rgb = decode_image(data)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(rgb.shape, rgb[0, 0, 0], rgb[0, 1, 0], (after - before) * 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", measure, str(tmp_path / "deep.png")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert result.stdout.startswith(f"({side}, {side}, 3) 5 156 "), result.stdout
    grown = result.stdout.split()[-1]
    # 2 bytes (16-bit) + 1 (gray) + 1 (its array) + 3 (RGB), and a few MB of strips.
    assert int(grown) < 7 * side * side, f"decoding took {int(grown) / 2**20:.0f} MB"


def test_decode_memory_is_read_from_the_header_and_bounds_the_decoding():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((300, 400), np.uint16)).save(buffer, "PNG")
    assert decode_memory(buffer.getvalue()) == 7 * 300 * 400
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 3000)).save(buffer, "JPEG")
    # A JPEG over the pixel budget counts as decoded at its reduced scale.
    assert decode_memory(buffer.getvalue(), max_pixels=1_000_000) == 8 * 1_000_000
    assert decode_memory(b"not an image") == 0


def test_exif_orientation_is_honoured(tmp_path):
    pixels = np.zeros((40, 60), dtype=np.uint8)
    pixels[:, 30:] = 255  # right half white
    image = Image.fromarray(pixels, mode="L")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    gray = read_image(tmp_path / "rotated.jpg", color=False)
    assert gray.shape == (60, 40)
    # After a clockwise turn the white right half is at the bottom.
    assert gray[-10:].mean() > 200 and gray[:10].mean() < 50


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty file"),
        (b"this is plain text, not pixels", "not an image"),
        (b"\xff\xd8\xff\xe0" + bytes(range(200)), "corrupt or truncated"),
    ],
)
def test_bad_bytes_raise_a_clear_error(content, match):
    with pytest.raises(ImageReadError, match=match) as caught:
        decode_image(content, source="bad.jpg")
    assert caught.value.path == "bad.jpg"


def test_truncated_png(tmp_path):
    Image.fromarray(_gradient(), mode="L").save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    with pytest.raises(ImageReadError, match="truncated"):
        decode_image(data[: len(data) // 2], source="half.png")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
        read_image(tmp_path / "nope.jpg")


def _jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _many_scans(size: int, scans: int) -> bytes:
    """A progressive JPEG of a flat gray square with ``scans`` scans: its last scan, an
    AC refinement that is all end-of-band, repeated. Each repeat is a few bytes, yet a
    pass over every block for libjpeg (300 of them at 4096x4096: 3.4 s of CPU)."""
    data = _jpeg(Image.new("L", (size, size), 128), progressive=True)
    written = data.count(b"\xff\xda")  # no thumbnail, and entropy data never holds FFDA
    last_scan = data.rindex(b"\xff\xda")
    return data[:-2] + data[last_scan:-2] * (scans - written) + b"\xff\xd9"


def test_a_jpeg_of_hundreds_of_scans_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "scans.jpg"
    path.write_bytes(_many_scans(4096, 300))

    def never(*args, **kwargs):
        raise AssertionError("the image was handed to the decoder")

    monkeypatch.setattr(Image, "open", never)
    started = time.perf_counter()
    with pytest.raises(
        ImageReadError, match=r"scans\.jpg: JPEG has 300 scans, over the 100"
    ) as caught:
        read_image(path)
    assert time.perf_counter() - started < 0.5  # the marker scan, not the decode
    assert caught.value.kind == "too_complex" and "jpegtran" in caught.value.reason


def test_a_jpeg_decoded_at_a_reduced_scale_pays_its_scans_at_full_scale():
    """Draft decoding shrinks the output, not the passes over the full-size blocks."""
    budget = 256 * 256 // 4  # 256x256 is then decoded at half size
    assert decode_image(_many_scans(256, 25), color=False, max_pixels=budget).shape == (128, 128)
    with pytest.raises(ImageReadError, match=r"26 scans of 0.0655 megapixels") as caught:
        decode_image(_many_scans(256, 26), max_pixels=budget)
    assert caught.value.kind == "too_complex" and "--max-pixels" in caught.value.reason


def test_prepare_and_the_server_report_a_jpeg_of_too_many_scans(tmp_path):
    from ferkit.data.prepare import PrepareConfig, prepare
    from ferkit.serve.engine import error_status

    happy = tmp_path / "faces" / "happy"
    happy.mkdir(parents=True)
    (happy / "scans.jpg").write_bytes(_many_scans(64, 300))
    Image.new("L", (48, 48), 128).save(happy / "flat.png")
    config = PrepareConfig(faces="crop")
    manifest = prepare(tmp_path / "faces", tmp_path / "out", config, progress=False).manifest
    assert [(e["path"], e["kind"]) for e in manifest["skipped"]] == [
        ("happy/scans.jpg", "too_complex")
    ]
    assert manifest["failed"] == 1  # an input failure: exit status 3
    assert error_status(ImageReadError("scans.jpg", "300 scans", "too_complex")) == 413


def test_jpegs_within_the_scan_limit_decode():
    assert decode_image(_many_scans(64, MAX_JPEG_SCANS), color=False).shape == (64, 64)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    # Restart markers and 0xFF00 stuffing in the entropy data are not markers.
    progressive = _jpeg(Image.fromarray(noise), progressive=True, restart_marker_blocks=1)
    assert count_jpeg_scans(progressive) == (10, 64 * 64, True, 3)
    assert count_jpeg_scans(_jpeg(Image.fromarray(noise))).count == 1
    # A segment's content is skipped by its length: an embedded thumbnail's scans (here
    # a comment full of SOS bytes) are not the image's.
    payload = b"\xff\xda\x00\x08" * 300
    comment = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
    with_comment = progressive[:2] + comment + progressive[2:]
    assert count_jpeg_scans(with_comment).count == 10
    assert decode_image(with_comment).shape == (64, 64, 3)


def _decoded_by_pillow(data: bytes, color: bool, monkeypatch) -> np.ndarray:
    with monkeypatch.context() as patch:
        patch.setattr("ferkit.images._decode_plain_jpeg", lambda *args: None)
        return decode_image(data, color=color)


def test_plain_jpegs_decode_by_opencv_to_pillows_pixels(monkeypatch):
    """Plain 8-bit gray and YCbCr JPEGs, baseline or progressive, are decoded by OpenCV
    (in one call) to the very pixels of Pillow's; gray wanted of a colour file goes to
    Pillow, whose luma is not the file's own."""
    rng = np.random.default_rng(1)
    colour = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    gray = Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8))
    calls, real = [], images._decode_plain_jpeg

    def recorded(data: bytes) -> np.ndarray | None:
        array = real(data)
        calls.append(array is not None)
        return array

    for image in (colour, gray):
        for options in ({}, {"progressive": True}, {"subsampling": 0, "quality": 95}):
            data = _jpeg(image, **options)
            scans = count_jpeg_scans(data)
            assert scans.plain and scans.components == (3 if image is colour else 1)
            assert images._decode_plain_jpeg(data) is not None
            for color in (True, False):
                calls.clear()
                with monkeypatch.context() as patch:
                    patch.setattr(images, "_decode_plain_jpeg", recorded)
                    decoded = decode_image(data, color=color)
                assert calls == ([] if image is colour and not color else [True])
                assert decoded.dtype == np.uint8
                np.testing.assert_array_equal(decoded, _decoded_by_pillow(data, color, monkeypatch))


def test_jpegs_that_are_not_plain_are_left_to_pillow(monkeypatch):
    """What OpenCV would read otherwise than Pillow goes to Pillow: an orientation (EXIF
    or XMP), a colour transform (Adobe, CMYK), a missing end, and malformed structure
    that libjpeg passes over but Pillow refuses."""
    rng = np.random.default_rng(2)
    colour = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    good = _jpeg(colour)
    body = good[:-2]  # without its end-of-image marker
    exif = Image.Exif()
    exif[0x0112] = 6
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        b'22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/">'
        b"<tiff:Orientation>8</tiff:Orientation></rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    sos = body[body.index(b"\xff\xda") :][:14]  # a scan header
    not_plain = {
        "exif": _jpeg(colour, exif=exif),
        "xmp": _jpeg(colour, xmp=xmp),
        "cmyk": _jpeg(colour.convert("CMYK")),
        "no end": body,
        "TEM in the header": good[:2] + b"\xff\x01" + good[2:],
        "short JFIF": good[:2] + b"\xff\xe0\x00\x07JFIF\x00" + good[2:],
        "reserved marker after the scan": body + b"\xff\x02\x00\x02\xff\xd9",
        "second scan of a baseline frame": body + sos + b"\xff\xd9",
        "start of image in the scan": body + b"\xff\xd8\xff\xd9",
    }
    for name, data in not_plain.items():
        scans = count_jpeg_scans(data)
        assert scans is not None and not scans.plain, name
        try:
            expected = _decoded_by_pillow(data, True, monkeypatch)
        except ImageReadError as error:
            with pytest.raises(ImageReadError) as caught:
                decode_image(data)
            assert str(caught.value) == str(error), name
        else:
            np.testing.assert_array_equal(decode_image(data), expected)
    assert decode_image(not_plain["exif"]).shape == (53, 37, 3)  # turned
    assert decode_image(not_plain["xmp"]).shape == (53, 37, 3)
    with pytest.raises(ImageReadError, match="corrupt"):
        decode_image(not_plain["TEM in the header"])
    # Over Pillow's decompression-bomb limit a plain JPEG is refused as Pillow refuses it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)
    with pytest.raises(ImageReadError, match="1961 pixels") as caught:
        decode_image(good)
    assert caught.value.kind == "too_large"


def test_the_scan_count_survives_garbage_cheaply():
    data = _jpeg(Image.new("RGB", (32, 32), (20, 90, 160)), progressive=True)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for cut in range(2, len(data)):  # truncated anywhere
        assert count_jpeg_scans(data[:cut]).count <= 10
    for _ in range(200):  # random bytes after the start-of-image marker
        count_jpeg_scans(b"\xff\xd8" + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    markers_only = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 1_000_000  # 4 MB of empty comments
    assert count_jpeg_scans(markers_only) is None
    assert time.perf_counter() - started < 2
    with pytest.raises(ImageReadError, match="marker segments") as caught:
        decode_image(markers_only, source="comments.jpg")
    assert caught.value.kind == "too_complex"


def test_resize_face_shapes():
    rgb = np.random.default_rng(0).integers(0, 255, (100, 90, 3), dtype=np.uint8)
    assert resize_face(rgb, 48, 1).shape == (48, 48, 1)
    assert resize_face(rgb, 48, 3).shape == (48, 48, 3)
    gray = rgb[..., 0]
    assert resize_face(gray, 64, 3).shape == (64, 64, 3)
    same = resize_face(gray[:48, :48], 48, 1)
    np.testing.assert_array_equal(same[..., 0], gray[:48, :48])

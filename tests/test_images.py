import numpy as np
import pytest
from PIL import Image

from ferkit.images import ImageReadError, decode_image, read_image, resize_face


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


def test_resize_face_shapes():
    rgb = np.random.default_rng(0).integers(0, 255, (100, 90, 3), dtype=np.uint8)
    assert resize_face(rgb, 48, 1).shape == (48, 48, 1)
    assert resize_face(rgb, 48, 3).shape == (48, 48, 3)
    gray = rgb[..., 0]
    assert resize_face(gray, 64, 3).shape == (64, 64, 3)
    same = resize_face(gray[:48, :48], 48, 1)
    np.testing.assert_array_equal(same[..., 0], gray[:48, :48])

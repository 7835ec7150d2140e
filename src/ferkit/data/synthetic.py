"""Drawn cartoon faces for the demo and for tests that must run without any dataset.

The expressions differ in mouth and brow shape, so even a tiny model can learn them;
nothing here pretends to be a real face.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Folder names the demo uses: deliberately mixed spellings, mapped by the synonym table.
DEMO_FOLDERS = {"happy": "Happy", "sad": "sadness", "surprise": "Surprised", "angry": "anger"}


_FORMATS = ("jpg", "png", "bmp", "webp", "tiff")


def draw_face(expression: str, size: int = 64, seed: int = 0) -> Image.Image:
    """Draw one grayscale cartoon face showing ``expression`` (happy, sad, surprise, angry,
    neutral), with a random shift, scale and noise from ``seed``."""
    rng = np.random.default_rng(seed)
    scale = size / 64.0
    canvas = Image.new("L", (size, size), int(rng.integers(20, 80)))
    draw = ImageDraw.Draw(canvas)
    dx, dy = rng.normal(0, 2.0 * scale, size=2)

    def point(x: float, y: float) -> tuple[float, float]:
        return (x * scale + dx, y * scale + dy)

    skin = int(rng.integers(150, 220))
    draw.ellipse([*point(10, 6), *point(54, 60)], fill=skin)
    for eye_x in (24, 40):
        draw.ellipse([*point(eye_x - 3, 24), *point(eye_x + 3, 30)], fill=30)
    if expression == "happy":
        draw.arc([*point(22, 34), *point(42, 50)], 20, 160, fill=20, width=max(1, round(2 * scale)))
    elif expression == "sad":
        draw.arc(
            [*point(22, 42), *point(42, 56)], 200, 340, fill=20, width=max(1, round(2 * scale))
        )
    elif expression == "surprise":
        draw.ellipse([*point(28, 40), *point(36, 52)], fill=20)
        for eye_x in (24, 40):
            draw.arc([*point(eye_x - 5, 14), *point(eye_x + 5, 22)], 200, 340, fill=40)
    elif expression == "angry":
        draw.line([*point(28, 46), *point(36, 46)], fill=20, width=max(1, round(2 * scale)))
        draw.line([*point(18, 18), *point(29, 23)], fill=20, width=max(1, round(2 * scale)))
        draw.line([*point(46, 18), *point(35, 23)], fill=20, width=max(1, round(2 * scale)))
    else:
        draw.line([*point(26, 46), *point(38, 46)], fill=20, width=max(1, round(2 * scale)))
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=0.6 * scale))
    pixels = np.asarray(canvas, dtype=np.float64) + rng.normal(0, 6, size=(size, size))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


def make_image_folder(
    root: str | os.PathLike[str],
    per_class: int = 40,
    seed: int = 0,
    with_bad_files: bool = False,
    folders: dict[str, str] | None = None,
) -> Path:
    """Write an image-folder dataset of drawn faces: one folder per class, mixed formats,
    sizes and colour modes. With ``with_bad_files``, add a corrupt JPEG, a truncated PNG,
    a zero-byte file, a text file and an empty class folder, as real scraped sets have.

    Returns:
        The root folder.
    """
    root = Path(root)
    folders = folders or DEMO_FOLDERS
    for index, (expression, folder_name) in enumerate(sorted(folders.items())):
        folder = root / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            item_seed = seed * 1_000_003 + index * 10_007 + number
            size = (48, 64, 96)[number % 3]
            image = draw_face(expression, size=size, seed=item_seed)
            extension = _FORMATS[number % len(_FORMATS)]
            if number % 4 == 1:
                image = image.convert("RGB")
            elif number % 4 == 2:
                image = image.convert("RGBA")
                extension = "png"
            elif number % 4 == 3 and extension in ("png", "bmp"):
                image = image.convert("P")
            image.save(folder / f"{folder_name.lower()}_{number:04d}.{extension}")
    if with_bad_files:
        first = root / sorted(folders.values())[0]
        (first / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(64))
        (first / "empty.jpg").write_bytes(b"")
        (first / "notes.txt").write_text("not an image\n")
        good = next(path for path in sorted(first.iterdir()) if path.suffix == ".png")
        (first / "truncated.png").write_bytes(good.read_bytes()[:-40])
        (root / "fear").mkdir(exist_ok=True)
    return root

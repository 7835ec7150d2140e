"""Draw results on images and video frames, and plot emotions over time."""

from __future__ import annotations

from typing import Any

import numpy as np

# One colour per canonical class (RGB); classes outside this map get grey.
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "angry": (220, 50, 47),
    "contempt": (133, 153, 0),
    "disgust": (108, 113, 196),
    "fear": (211, 54, 130),
    "happy": (255, 200, 0),
    "neutral": (200, 200, 200),
    "sad": (38, 139, 210),
    "surprise": (42, 161, 152),
}


def class_color(name: str) -> tuple[int, int, int]:
    return CLASS_COLORS.get(name, (160, 160, 160))


def draw_results(image: np.ndarray, faces: list[Any]) -> np.ndarray:
    """A copy of an RGB image with each face's box, label and probability bars drawn.

    Args:
        image: ``uint8`` RGB, any size; the output has the same size.
        faces: :class:`ferkit.recognize.FaceResult` objects.
    """
    import cv2

    canvas = np.ascontiguousarray(image.copy())
    height, width = canvas.shape[:2]
    scale = max(0.35, min(width, height) / 900)
    thickness = max(1, round(2 * scale))
    for face in faces:
        x, y, w, h = face.box
        color = class_color(face.label)
        cv2.rectangle(canvas, (x, y), (x + w, y + h), color, thickness)
        title = f"{face.label} {face.probabilities[face.label]:.0%}"
        if getattr(face, "track_id", None) is not None:
            title = f"#{face.track_id} {title}"
        (text_w, text_h), baseline = cv2.getTextSize(
            title, cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, thickness
        )
        top = max(0, y - text_h - baseline - 4)
        cv2.rectangle(canvas, (x, top), (x + text_w + 4, top + text_h + baseline + 4), color, -1)
        cv2.putText(
            canvas,
            title,
            (x + 2, top + text_h + 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.8 * scale,
            (0, 0, 0),
            thickness,
            cv2.LINE_AA,
        )
        _draw_bars(canvas, face, x, y, w, h, scale)
    return canvas


def _draw_bars(canvas: np.ndarray, face: Any, x: int, y: int, w: int, h: int, scale: float):
    """Probability bars beside the box (right of it when there is room, else inside):
    a dark panel with each class's short name and value, then its bar."""
    import cv2

    height, width = canvas.shape[:2]
    bar_h = max(10, round(18 * scale))
    font = bar_h / 32
    text_w = cv2.getTextSize("sur 0.00 ", cv2.FONT_HERSHEY_SIMPLEX, font, 1)[0][0]
    bar_w = max(30, round(w * 0.4))
    panel_w = text_w + bar_w + 4
    left = x + w + 4 if x + w + 4 + panel_w < width else max(0, x + 2)
    top = y
    for name, probability in face.probabilities.items():
        if top + bar_h > height:
            break
        cv2.rectangle(canvas, (left, top), (left + panel_w, top + bar_h), (30, 30, 30), -1)
        cv2.putText(
            canvas,
            f"{name[:3]} {probability:.2f}",
            (left + 2, top + bar_h - max(2, bar_h // 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            font,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        filled = round(bar_w * float(probability))
        bar_left = left + text_w + 2
        if filled > 0:
            cv2.rectangle(
                canvas,
                (bar_left, top + 2),
                (bar_left + filled, top + bar_h - 2),
                class_color(name),
                -1,
            )
        top += bar_h


def plot_emotions_over_time(
    times: dict[int, list[float]],
    probabilities: dict[int, list[np.ndarray]],
    classes: list[str],
    shares: dict[int, dict[str, float]],
    title: str = "",
) -> Any:
    """Smoothed probability of each class over time for each track, and time shares.

    Args:
        times, probabilities: per track id, the timestamps and smoothed probabilities.
        shares: per track id, the share of its frames spent in each label.

    Returns:
        The Matplotlib figure.
    """
    from ferkit.plots import _pyplot

    plt = _pyplot()
    tracks = sorted(times) or [-1]
    fig, axes = plt.subplots(
        len(tracks),
        2,
        figsize=(12, 3.2 * len(tracks)),
        squeeze=False,
        gridspec_kw={"width_ratios": [3, 1]},
    )
    for row, track in enumerate(tracks):
        line_ax, bar_ax = axes[row]
        if track in times:
            values = np.asarray(probabilities[track])
            for index, name in enumerate(classes):
                line_ax.plot(
                    times[track],
                    values[:, index],
                    label=name,
                    color=np.array(class_color(name)) / 255,
                )
            share = shares.get(track, {})
            bar_ax.barh(
                classes,
                [share.get(name, 0.0) for name in classes],
                color=[np.array(class_color(name)) / 255 for name in classes],
            )
        line_ax.set_ylim(0, 1)
        line_ax.set_xlabel("time (s)")
        line_ax.set_ylabel("probability (smoothed)")
        line_ax.set_title(f"{title} track {track}" if track >= 0 else f"{title}: no faces")
        bar_ax.set_xlim(0, 1)
        bar_ax.set_title("share of time")
        if row == 0:
            line_ax.legend(loc="upper right", fontsize=7, ncol=4)
    fig.tight_layout()
    return fig

"""What a face does over a video, from its geometry frame by frame: blinks, smiling and
head turns, per track.

- **Blinks**: the mean of ``eyeBlinkLeft`` and ``eyeBlinkRight`` against the track's own
  baseline (the median of its scores within :data:`BASELINE_S` seconds either side),
  with hysteresis: a blink starts when the score rises :data:`BLINK_RISE` above the
  baseline and ends when it falls back within :data:`BLINK_FALL` of it; a closure longer
  than :data:`BLINK_MAX_S` is not a blink. The baseline matters: a face looking down or
  laughing keeps its blink scores high (0.5 to 0.6 on ``test.mp4``), where a fixed
  threshold would see one endless blink; a blink on a 30 frames/s video lasts 2 to 4
  frames and peaks at only 0.33 to 0.54 (the six blinks of ``woman2.mp4``, each checked
  by eye), since the frames in the middle of a blink are blurred.
- **Smile intensity**: the mean of ``mouthSmileLeft`` and ``mouthSmileRight``; its mean
  over the track, and the share of its time at :data:`SMILE_ON` or more.
- **Head turns**: the yaw beyond :data:`HEAD_TURN_DEGREES` either way for
  :data:`HEAD_TURN_MIN_S` seconds or more (ending when it comes back within
  :data:`HEAD_TURN_RETURN_DEGREES` of the threshold), named by the side the subject
  turns to: their own ``left`` for a positive yaw (towards the image's right, see
  :mod:`ferkit.geometry`).

Samples more than :data:`MAX_GAP_S` seconds apart (a track lost for a while, or ``every``
skipping frames) end a blink or turn in progress: the blink is not counted, the turn
ends at its last sample. Blinks need every frame: with ``--every 3`` most are missed.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

#: Seconds either side of a sample whose scores make its blink baseline.
BASELINE_S = 2.0
#: How far above its baseline a blink score starts a blink, and within how much of it
#: the blink ends.
BLINK_RISE = 0.2
BLINK_FALL = 0.1
#: Longest closure counted as a blink, in seconds (longer: the eyes were closed).
BLINK_MAX_S = 0.8
#: Smile intensity at or above which a frame counts as smiling.
SMILE_ON = 0.5
#: A head turn: |yaw| beyond this many degrees ...
HEAD_TURN_DEGREES = 20.0
#: ... for at least this many seconds; it ends when |yaw| falls below the threshold
#: less this many degrees.
HEAD_TURN_MIN_S = 1.0
HEAD_TURN_RETURN_DEGREES = 5.0
#: Samples further apart than this end an event in progress.
MAX_GAP_S = 0.5


def _frame_interval(times: np.ndarray) -> float:
    """The typical time between samples (what one sample stands for)."""
    steps = np.diff(times)
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else 0.0


def blink_baseline(times: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each sample's blink baseline: the median score within :data:`BASELINE_S` seconds."""
    low = np.searchsorted(times, times - BASELINE_S, side="left")
    high = np.searchsorted(times, times + BASELINE_S, side="right")
    return np.array([np.median(scores[a:b]) for a, b in zip(low, high, strict=True)])


def blink_times(times: Any, scores: Any) -> list[float]:
    """The times (seconds) at which blinks peak, from one track's blink scores.

    Args:
        times: the samples' times in seconds, increasing.
        scores: the mean of ``eyeBlinkLeft`` and ``eyeBlinkRight`` at each.
    """
    times = np.asarray(times, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if len(times) < 2:
        return []
    rise = scores - blink_baseline(times, scores)
    found: list[float] = []
    start = None  # index where the blink in progress began
    for index in range(1, len(times)):
        gap = times[index] - times[index - 1] > MAX_GAP_S
        if start is not None and gap:
            start = None  # lost in the middle: not counted
        if start is None:
            # A blink starts where the score crosses the threshold, from below.
            if not gap and rise[index] >= BLINK_RISE > rise[index - 1]:
                start = index
            continue
        if rise[index] < BLINK_FALL:
            if times[index] - times[start] <= BLINK_MAX_S:
                peak = start + int(np.argmax(scores[start:index]))
                found.append(round(float(times[peak]), 3))
            start = None
    return found


def head_turns(times: Any, yaws: Any) -> list[dict[str, Any]]:
    """One track's head turns: ``{"start_s", "end_s", "direction", "peak_yaw"}`` each,
    ``direction`` the subject's own side (``left`` for a positive yaw)."""
    times = np.asarray(times, dtype=np.float64)
    yaws = np.asarray(yaws, dtype=np.float64)
    interval = _frame_interval(times)
    turns: list[dict[str, Any]] = []
    start = None
    side = 0.0

    def close(end: int) -> None:
        if times[end] - times[start] + interval >= HEAD_TURN_MIN_S:
            span = yaws[start : end + 1]
            peak = float(span[np.argmax(np.abs(span))])
            turns.append({
                "start_s": round(float(times[start]), 3),
                "end_s": round(float(times[end] + interval), 3),
                "direction": "left" if side > 0 else "right",
                "peak_yaw": round(peak, 1),
            })  # fmt: skip

    for index, yaw in enumerate(yaws):
        if start is not None:
            gap = times[index] - times[index - 1] > MAX_GAP_S
            back = side * yaw < HEAD_TURN_DEGREES - HEAD_TURN_RETURN_DEGREES
            if gap or back:
                close(index - 1)
                start = None
        if start is None and abs(yaw) >= HEAD_TURN_DEGREES:
            start, side = index, float(np.sign(yaw))
    if start is not None:
        close(len(yaws) - 1)
    return turns


def track_activity(times: Any, blink: Any, smile: Any, yaw: Any) -> dict[str, Any]:
    """One track's blinks, smile and head turns (see the module's docstring)."""
    times = np.asarray(times, dtype=np.float64)
    smile = np.asarray(smile, dtype=np.float64)
    seconds = float(times[-1] - times[0] + _frame_interval(times)) if len(times) else 0.0
    blinks = blink_times(times, blink)
    return {
        "seconds": round(seconds, 3),
        "blinks": len(blinks),
        "blink_rate_per_min": round(len(blinks) * 60.0 / seconds, 1) if seconds > 0 else None,
        "blink_times_s": blinks,
        "smile_mean": round(float(smile.mean()), 4) if len(smile) else None,
        "smile_share": round(float((smile >= SMILE_ON).mean()), 4) if len(smile) else None,
        "head_turns": head_turns(times, yaw),
    }


class ActivityTally:
    """Collects the geometry of each track's faces frame by frame; :meth:`summary` gives
    :func:`track_activity` per track."""

    def __init__(self) -> None:
        self.samples: dict[int, list[tuple[float, float, float, float]]] = defaultdict(list)

    def add(self, track_id: int, time_s: float, geometry: Any) -> None:
        """One face's geometry (:class:`ferkit.geometry.FaceGeometry`) at ``time_s``."""
        scores = geometry.blendshapes
        blink = (scores["eyeBlinkLeft"] + scores["eyeBlinkRight"]) / 2.0
        smile = (scores["mouthSmileLeft"] + scores["mouthSmileRight"]) / 2.0
        self.samples[track_id].append((time_s, blink, smile, geometry.yaw))

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{track id (text): track_activity(...)}``, in track order."""
        return {
            str(track): track_activity(*np.asarray(rows, dtype=np.float64).T)
            for track, rows in sorted(self.samples.items())
        }

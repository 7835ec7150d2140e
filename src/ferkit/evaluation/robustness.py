"""The robustness benchmark: accuracy and calibration under the shifts real photos bring.

``ferkit evaluate --corruptions`` scores a model on the same labelled faces after each of
:data:`SHIFTS` at three severities, and reports accuracy, expected calibration error and
how often the label stays the one given on the clean face, for each condition and as the
mean over all of them (the *robustness mean*).

The shifts are written independently of the training corruptions
(:mod:`ferkit.models.corruption`): the real JPEG codec and OpenCV's resampling here,
block-DCT and matrix approximations there, and shifts here that training does not
simulate at all (contrast, colour-to-grey conversions, off-centre boxes, hand-shaped
occlusion). Each shift is seeded per (seed, shift, severity), so a figure is reproducible.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

SEVERITIES = (1, 2, 3)


@dataclass(frozen=True)
class Shift:
    """One kind of image shift, with what each severity does."""

    name: str
    group: str
    levels: tuple[str, str, str]
    apply: Callable[[np.ndarray, int, np.random.Generator], np.ndarray]  # one HxWxC face


def _cv2() -> Any:
    import cv2

    return cv2


def _as_face(result: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(result), 0, 255).astype(np.uint8).reshape(like.shape)


def _per_channel(face: np.ndarray, function: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply an OpenCV function to an HxWxC face, keeping the channel axis."""
    result = function(face if face.shape[-1] == 3 else face[..., 0])
    return result.reshape(face.shape)


def _jpeg(face: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    cv2 = _cv2()
    quality = (30, 15, 7)[severity - 1]
    colour = face.shape[-1] == 3
    image = cv2.cvtColor(face, cv2.COLOR_RGB2BGR) if colour else face[..., 0]  # OpenCV: BGR
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode a face")
    if colour:
        return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE).reshape(face.shape)


def _blur(face: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    cv2 = _cv2()
    sigma = (0.8, 1.4, 2.2)[severity - 1] * face.shape[0] / 48
    return _per_channel(face, lambda image: cv2.GaussianBlur(image, (0, 0), sigma))


def _downscale(face: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A small face in the photo: fewer pixels, enlarged as the pipeline enlarges crops."""
    cv2 = _cv2()
    side = face.shape[0]
    small = max(4, round(side * (0.6, 0.4, 0.25)[severity - 1]))

    def resample(image: np.ndarray) -> np.ndarray:
        shrunk = cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA)
        return cv2.resize(shrunk, (side, side), interpolation=cv2.INTER_CUBIC)

    return _as_face(_per_channel(face.astype(np.float32), resample), face)


def _noise(face: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise: shot noise that grows with the signal plus read noise."""
    read, gain = ((3.0, 0.3), (6.0, 0.6), (10.0, 1.2))[severity - 1]
    values = face.astype(np.float64)
    shot = rng.poisson(values / gain) * gain if gain else values
    return _as_face(shot + rng.normal(0.0, read, face.shape), face)


def _brightness(face: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Under- or over-exposure (a gain on the linear signal, clipped), either way at random."""
    gain = ((0.6, 1.5), (0.4, 2.0), (0.25, 2.8))[severity - 1][int(rng.integers(2))]
    return _as_face(face.astype(np.float64) * gain, face)


def _contrast(face: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Flat light or haze: pixel values pulled towards the face's mean."""
    factor = (0.6, 0.4, 0.25)[severity - 1]
    values = face.astype(np.float64)
    mean = values.mean()
    return _as_face(mean + (values - mean) * factor, face)


def _gamma(face: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A different tone curve (camera or display), darker or lighter mid-tones at random."""
    gamma = (1.5, 2.0, 2.8)[severity - 1]
    gamma = gamma if rng.integers(2) else 1.0 / gamma
    return _as_face(255.0 * (face.astype(np.float64) / 255.0) ** gamma, face)


# Channel weights of colour-to-grey conversions, as alternatives to the BT.601 weights
# that ferkit's own pipeline (and FER2013) use.
GREY_WEIGHTS = {
    1: ("BT.709", (0.2126, 0.7152, 0.0722)),
    2: ("channel mean", (1 / 3, 1 / 3, 1 / 3)),
    3: ("red channel", (1.0, 0.0, 0.0)),
}
_BT601 = np.array([0.299, 0.587, 0.114])
# A skin-like colour for a grey face: red lifted, blue lowered in the shadows, as skin
# reflects (exponents per channel on the 0..1 grey value).
_SKIN_EXPONENTS = np.array([0.75, 1.0, 1.4])


def _grey(face: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Another colour-to-grey weighting. A colour face (3 channels) is re-weighted
    directly; a grey face is first given a skin-like colour whose BT.601 grey is the face
    itself, which is what the other weighting is then compared with."""
    weights = np.array(GREY_WEIGHTS[severity][1])
    values = face.astype(np.float64) / 255.0
    if face.shape[-1] == 3:
        grey = values @ weights
        return _as_face(np.repeat(grey[..., None] * 255.0, 3, axis=-1), face)
    colour = values[..., :1] ** _SKIN_EXPONENTS  # (H, W, 3)
    reference = colour @ _BT601
    # Rescale so the colour's own BT.601 grey reproduces the face.
    ratio = np.divide(values[..., 0], reference, out=np.ones_like(reference), where=reference > 0)
    colour = np.clip(colour * ratio[..., None], 0.0, 1.0)
    return _as_face((colour @ weights) * 255.0, face)


def _warp(face: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    side = face.shape[0]
    return _per_channel(
        face,
        lambda image: cv2.warpAffine(
            image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        ),
    )


def _rotate(face: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A head tilt the eye-levelling did not undo, either way at random."""
    cv2 = _cv2()
    angle = (7.0, 14.0, 25.0)[severity - 1] * (1 if rng.integers(2) else -1)
    centre = (face.shape[0] / 2 - 0.5, face.shape[0] / 2 - 0.5)
    return _warp(face, cv2.getRotationMatrix2D(centre, angle, 1.0))


def _box_jitter(face: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A detector's box off-centre and of another size: shifted by up to ``s`` of the side
    in a random direction and scaled by up to ``1 ± s``."""
    cv2 = _cv2()
    spread = (0.06, 0.12, 0.2)[severity - 1]
    side = face.shape[0]
    direction = rng.uniform(0, 2 * np.pi)
    shift = spread * side * np.array([np.cos(direction), np.sin(direction)])
    scale = 1.0 + spread * (1 if rng.integers(2) else -1)
    centre = (side / 2 - 0.5, side / 2 - 0.5)
    matrix = cv2.getRotationMatrix2D(centre, 0.0, 1.0 / scale)
    matrix[:, 2] += shift
    return _warp(face, matrix)


def _glasses(face: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Tinted to dark glasses: two lenses over the eyes and a bridge."""
    cv2 = _cv2()
    side = face.shape[0]
    mask = np.zeros((side, side), np.float32)
    eye_y = side * rng.uniform(0.36, 0.42)
    for eye_x in (0.3, 0.7):
        centre = (round(side * eye_x), round(eye_y))
        axes = (round(side * 0.15), round(side * 0.1))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, -1)
    cv2.line(mask, (round(side * 0.42), round(eye_y)), (round(side * 0.58), round(eye_y)), 1.0, 2)
    opacity = (0.5, 0.75, 0.95)[severity - 1]
    tint = 20.0
    return _blend(face, mask * opacity, tint)


def _hand(face: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A hand over the mouth and cheek, from the left or right: a skin-toned blob."""
    cv2 = _cv2()
    side = face.shape[0]
    mask = np.zeros((side, side), np.float32)
    size = (0.22, 0.3, 0.4)[severity - 1]
    left = bool(rng.integers(2))
    centre_x = side * (0.3 if left else 0.7) + rng.uniform(-0.05, 0.05) * side
    centre = (round(centre_x), round(side * rng.uniform(0.68, 0.78)))
    angle = rng.uniform(-30, 30)
    cv2.ellipse(
        mask, centre, (round(side * size), round(side * size * 0.6)), angle, 0, 360, 1.0, -1
    )
    skin = float(np.percentile(face, 70)) + 10.0
    return _blend(face, mask, skin, texture=rng.normal(0.0, 6.0, mask.shape))


def _mask(face: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A face mask: a light band from below the nose (or higher) down to the chin."""
    side = face.shape[0]
    top = side * ((0.66, 0.58, 0.5)[severity - 1] + rng.uniform(-0.02, 0.02))
    rows = np.arange(side, dtype=np.float32)[:, None]
    mask = np.broadcast_to((rows >= top).astype(np.float32), (side, side))
    shade = rng.uniform(150.0, 230.0)
    gradient = np.broadcast_to(
        np.linspace(-12.0, 12.0, side, dtype=np.float32)[:, None], mask.shape
    )
    return _blend(face, mask, shade, texture=gradient)


def _blend(
    face: np.ndarray, mask: np.ndarray, value: float, texture: np.ndarray | float = 0.0
) -> np.ndarray:
    cv2 = _cv2()
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.8)[..., None]
    cover = value + np.asarray(texture, dtype=np.float64)
    if np.ndim(cover) == 2:
        cover = cover[..., None]
    return _as_face(face * (1.0 - soft) + cover * soft, face)


#: Every shift of the benchmark, by name, in report order.
SHIFTS: dict[str, Shift] = {
    shift.name: shift
    for shift in (
        Shift("jpeg", "image quality", ("quality 30", "quality 15", "quality 7"), _jpeg),
        Shift("blur", "image quality", ("sigma 0.8 px", "sigma 1.4 px", "sigma 2.2 px"), _blur),
        Shift("downscale", "image quality", ("60% side", "40% side", "25% side"), _downscale),
        Shift("noise", "image quality", ("read 3, gain .3", "6, .6", "10, 1.2"), _noise),
        Shift("brightness", "light", ("x0.6 or x1.5", "x0.4 or x2", "x0.25 or x2.8"), _brightness),
        Shift("contrast", "light", ("x0.6", "x0.4", "x0.25"), _contrast),
        Shift("gamma", "light", ("1.5 or 1/1.5", "2.0 or 1/2.0", "2.8 or 1/2.8"), _gamma),
        Shift("grey", "colour", tuple(GREY_WEIGHTS[s][0] for s in SEVERITIES), _grey),  # type: ignore[arg-type]
        Shift("rotate", "geometry", ("7 degrees", "14 degrees", "25 degrees"), _rotate),
        Shift("box_jitter", "geometry", ("6% shift/scale", "12%", "20%"), _box_jitter),
        Shift("glasses", "occlusion", ("50% tint", "75% tint", "95% tint"), _glasses),
        Shift("hand", "occlusion", ("small", "medium", "large"), _hand),
        Shift("mask", "occlusion", ("from 66% height", "from 58%", "from 50%"), _mask),
    )
}


def shift_faces(faces: np.ndarray, shift: str, severity: int, seed: int = 0) -> np.ndarray:
    """``faces`` (``uint8 (N, H, W, C)``) after ``shift`` at ``severity`` (1..3).

    Deterministic: the random choices (direction, tint, position) come from a generator
    seeded by ``seed``, the shift's name and the severity.
    """
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; choose from {', '.join(SHIFTS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, not {severity!r}")
    faces = np.asarray(faces)
    if faces.ndim != 4 or faces.dtype != np.uint8 or faces.shape[1] != faces.shape[2]:
        raise ValueError(
            f"faces must be uint8 (N, H, W, C) squares, not {faces.dtype} {faces.shape}"
        )
    rng = np.random.default_rng([seed, zlib.crc32(shift.encode()), severity])
    apply = SHIFTS[shift].apply
    return np.stack([apply(face, severity, rng) for face in faces]) if len(faces) else faces.copy()


def _scores(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    from ferkit.calibration import expected_calibration_error, softmax

    probabilities = softmax(logits, temperature)
    return {
        "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels)),
        "ece": expected_calibration_error(probabilities, labels),
        "confidence": float(probabilities.max(axis=1).mean()),
    }


def _cross_fitted_ece(
    clean: np.ndarray, shifted: list[np.ndarray], labels: np.ndarray, *, across_shifts: bool
) -> dict[str, float]:
    """ECE on clean and shifted faces with a temperature fitted on the clean faces alone
    or (``across_shifts``) on clean and shifted faces together; measured honestly: fitted
    on one half of the faces, measured on the other, both ways round."""
    from ferkit.calibration import fit_temperature

    halves = np.arange(len(labels)) % 2
    clean_ece, shifted_ece = [], []
    for held_out in (0, 1):
        fit = halves != held_out
        pool = [clean[fit], *(s[fit] for s in shifted)] if across_shifts else [clean[fit]]
        temperature = fit_temperature(np.concatenate(pool), np.tile(labels[fit], len(pool)))
        test = ~fit
        clean_ece.append(_scores(clean[test], labels[test], temperature)["ece"])
        shifted_ece.append(
            float(np.mean([_scores(s[test], labels[test], temperature)["ece"] for s in shifted]))
        )
    return {"ece_clean": float(np.mean(clean_ece)), "ece_shifted_mean": float(np.mean(shifted_ece))}


def robustness(
    classifier: Any,
    faces: np.ndarray,
    labels: np.ndarray,
    *,
    shifts: list[str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``classifier`` on ``faces`` clean and after every shift at every severity.

    Args:
        classifier: a :class:`ferkit.models.folder.Classifier` (``predict_logits``,
            ``temperature``).
        faces: ``uint8 (N, H, W, C)`` faces of the model's input shape.
        labels: their true class indices into the model's classes.
        shifts: names from :data:`SHIFTS` (default: all).

    Returns:
        ``clean`` and per-condition scores (accuracy, ECE, mean confidence, and agreement:
        the share of faces whose label is the one predicted on the clean face), the mean
        over every condition (``mean``), a mean per shift, and ``calibration``: ECE with
        the model's temperature, and cross-fitted (on halves of the faces) with one fitted
        on the clean faces and with one fitted across the shifts (and the latter fitted on
        all faces, to ship).
    """
    from ferkit.calibration import fit_temperature
    from ferkit.outputs import progress_bar

    names = list(SHIFTS) if shifts is None else list(shifts)
    unknown = sorted(set(names) - set(SHIFTS))
    if unknown:
        raise ValueError(f"unknown shift(s) {unknown}; choose from {', '.join(SHIFTS)}")
    labels = np.asarray(labels, dtype=np.int64)
    temperature = float(classifier.temperature)
    clean_logits = classifier.predict_logits(faces)
    clean_predicted = clean_logits.argmax(axis=1)
    conditions, shifted_logits = [], []
    steps = [(name, severity) for name in names for severity in SEVERITIES]
    for name, severity in progress_bar(steps, desc="shifts", unit="shift", disable=not progress):
        logits = classifier.predict_logits(shift_faces(faces, name, severity, seed))
        shifted_logits.append(logits)
        conditions.append(
            {
                "shift": name,
                "group": SHIFTS[name].group,
                "severity": severity,
                "level": SHIFTS[name].levels[severity - 1],
                **_scores(logits, labels, temperature),
                "agreement": float(np.mean(logits.argmax(axis=1) == clean_predicted)),
            }
        )

    def mean_of(rows: list[dict[str, Any]]) -> dict[str, float]:
        return {
            key: float(np.mean([row[key] for row in rows]))
            for key in ("accuracy", "ece", "confidence", "agreement")
        }

    fitted = fit_temperature(
        np.concatenate([clean_logits, *shifted_logits]), np.tile(labels, 1 + len(shifted_logits))
    )
    shipped = _scores(clean_logits, labels, temperature)
    return {
        "faces": len(labels),
        "seed": seed,
        "severities": list(SEVERITIES),
        "clean": shipped,
        "mean": mean_of(conditions),
        "per_shift": {
            name: mean_of([row for row in conditions if row["shift"] == name]) for name in names
        },
        "conditions": conditions,
        "calibration": {
            "model_temperature": temperature,
            "model_temperature_ece_clean": shipped["ece"],
            "model_temperature_ece_shifted_mean": mean_of(conditions)["ece"],
            "shift_fitted_temperature": fitted,
            "clean_fitted_cross_validated": _cross_fitted_ece(
                clean_logits, shifted_logits, labels, across_shifts=False
            ),
            "shift_fitted_cross_validated": _cross_fitted_ece(
                clean_logits, shifted_logits, labels, across_shifts=True
            ),
        },
    }


def format_robustness(report: dict[str, Any]) -> str:
    """A plain-text table of a :func:`robustness` report: one row per shift."""
    lines = [
        f"{'shift':<12}{'severity 1':>12}{'severity 2':>12}{'severity 3':>12}{'mean':>9}"
        f"{'agree':>8}{'ECE':>8}",
        f"{'clean':<12}{'':>36}{report['clean']['accuracy']:>9.2%}{'':>8}"
        f"{report['clean']['ece']:>8.3f}",
    ]
    for name, mean in report["per_shift"].items():
        cells = [row for row in report["conditions"] if row["shift"] == name]
        lines.append(
            f"{name:<12}"
            + "".join(f"{row['accuracy']:>12.2%}" for row in cells)
            + f"{mean['accuracy']:>9.2%}{mean['agreement']:>8.2%}{mean['ece']:>8.3f}"
        )
    mean = report["mean"]
    lines.append(
        f"{'mean':<12}{'':>36}{mean['accuracy']:>9.2%}{mean['agreement']:>8.2%}{mean['ece']:>8.3f}"
    )
    return "\n".join(lines)


def write_robustness_csv(report: dict[str, Any], path: Any) -> None:
    """One row per condition (and the clean faces): accuracy, ECE, confidence, agreement."""
    import csv

    columns = ("shift", "group", "severity", "level", "accuracy", "ece", "confidence", "agreement")
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        clean = report["clean"]
        writer.writerow(["clean", "", 0, "", *(f"{clean[k]:.4f}" for k in columns[4:7]), "1.0000"])
        for row in report["conditions"]:
            writer.writerow([row[k] for k in columns[:4]] + [f"{row[k]:.4f}" for k in columns[4:]])


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of a :func:`robustness` report that a model card shows: clean and mean
    accuracy and ECE, and each shift's accuracy at every severity."""
    return {
        "clean": {k: report["clean"][k] for k in ("accuracy", "ece")},
        "mean": {k: report["mean"][k] for k in ("accuracy", "ece", "agreement")},
        "shifts": {
            name: {
                "group": SHIFTS[name].group if name in SHIFTS else "",
                "accuracy": [
                    row["accuracy"] for row in report["conditions"] if row["shift"] == name
                ],
                "levels": [row["level"] for row in report["conditions"] if row["shift"] == name],
                "mean": mean["accuracy"],
            }
            for name, mean in report["per_shift"].items()
        },
    }


def colour_consistency(classifier: Any, faces: np.ndarray) -> dict[str, Any]:
    """How a model's reading of real colour faces depends on the colour-to-grey weighting.

    ``faces`` are ``uint8 (N, H, W, 3)`` RGB crops; the reference is the BT.601 grey that
    ferkit's pipeline uses. For each weighting of :data:`GREY_WEIGHTS`: the share of faces
    whose label stays the reference's, and the mean total-variation distance between the
    probability vectors (0: identical, 1: disjoint).
    """
    from ferkit.calibration import softmax

    faces = np.asarray(faces)
    if faces.ndim != 4 or faces.shape[-1] != 3 or faces.dtype != np.uint8:
        raise ValueError(f"faces must be uint8 RGB (N, H, W, 3), not {faces.dtype} {faces.shape}")

    def probabilities(weights: np.ndarray) -> np.ndarray:
        grey = np.clip(np.rint(faces.astype(np.float64) @ weights), 0, 255).astype(np.uint8)
        return softmax(classifier.predict_logits(grey[..., None]), classifier.temperature)

    reference = probabilities(_BT601)
    rows = {}
    for name, weights in GREY_WEIGHTS.values():
        other = probabilities(np.asarray(weights))
        rows[name] = {
            "agreement": float(np.mean(other.argmax(axis=1) == reference.argmax(axis=1))),
            "total_variation": float(0.5 * np.abs(other - reference).sum(axis=1).mean()),
        }
    return {
        "faces": len(faces),
        "reference": "BT.601",
        "labels": [classifier.classes[i] for i in reference.argmax(axis=1)],
        "weightings": rows,
    }

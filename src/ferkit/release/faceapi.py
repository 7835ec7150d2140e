"""face-api's expression network as a ferkit teacher folder, built from the npm tarball.

The npm package ``@vladmandic/face-api`` (MIT) ships the expression net of face-api.js as
TensorFlow.js weights: ``model/face_expression_model-weights_manifest.json`` (names,
shapes and quantization of each tensor) and ``model/face_expression_model.bin`` (their
bytes, one after another). :func:`build_faceapi_teacher` reads both from a tarball the
user downloaded once (``npm pack @vladmandic/face-api@1.7.15``), refuses any tarball but
the recorded one, rebuilds the network in Keras and writes a model folder that ferkit
loads like its own (``ferkit evaluate --model OUT``, ``ferkit predict --model OUT``)::

    python -m ferkit.release.faceapi --tarball vladmandic-face-api-1.7.15.tgz --out DIR

Nothing is downloaded here, and the folder is never written into the package's assets.

The network, as face-api's ``FaceFeatureExtractor`` and ``FaceExpressionNet`` run it:
an RGB face padded to a square and resized to 112x112, minus the mean RGB
``(122.782, 117.001, 104.298)``, divided by 255; four dense blocks (each a stride-2
convolution, then three depthwise-separable convolutions whose inputs are the ReLU of
the sum of all earlier outputs of the block), with 32, 64, 128 and 256 channels; a 7x7
average pool; a fully connected layer to seven logits and a softmax. The folder's model
takes ferkit's usual input (``(N, 112, 112, 3)`` floats in 0..255) with the mean and scale
inside the graph, and puts out the logits in ferkit's class order (``labels.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FACEAPI_PACKAGE = "@vladmandic/face-api"
FACEAPI_VERSION = "1.7.15"
#: SHA-256 of ``npm pack @vladmandic/face-api@1.7.15`` (vladmandic-face-api-1.7.15.tgz).
FACEAPI_TARBALL_SHA256 = "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031"
FACEAPI_TARBALL_NAME = "vladmandic-face-api-1.7.15.tgz"

MODEL_DIR_IN_TARBALL = "package/model"
MANIFEST_NAME = "face_expression_model-weights_manifest.json"
LICENSE_IN_TARBALL = "package/LICENSE"

INPUT_SIZE = 112
#: Subtracted from the 0..255 RGB input before dividing by 255 (FaceFeatureExtractor.ts).
MEAN_RGB = (122.782, 117.001, 104.298)
#: face-api's output order (FaceExpressions.ts).
FACEAPI_CLASSES = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
BLOCK_CHANNELS = (32, 64, 128, 256)

COMMAND = "faceapi-teacher"

#: Bytes per value of each stored dtype (TF.js ``DTYPE_VALUE_SIZE_MAP``).
_STORED_DTYPES = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "float16": np.dtype("<f2"),
}


class TarballMismatchError(ValueError):
    """The tarball is not the one whose checksum ferkit recorded."""


def _dequantize(raw: bytes, spec: dict[str, Any]) -> np.ndarray:
    """One tensor of a TF.js weights manifest from its stored bytes."""
    name, dtype = spec["name"], spec["dtype"]
    if dtype not in ("float32", "int32"):
        raise ValueError(f"{name}: dtype {dtype!r} is not supported (float32 or int32)")
    quantization = spec.get("quantization")
    stored = quantization["dtype"] if quantization else dtype
    values = np.frombuffer(raw, dtype=_STORED_DTYPES[stored])
    if stored in ("uint8", "uint16"):
        if "scale" not in quantization or "min" not in quantization:
            raise ValueError(f"{name}: {stored} quantization needs 'scale' and 'min'")
        # As TF.js does: value = q * scale + min, in double precision, stored as float32.
        values = values.astype(np.float64) * quantization["scale"] + quantization["min"]
        if dtype == "int32":
            values = np.round(values)
    elif stored == "float16" and dtype != "float32":
        raise ValueError(f"{name}: float16 quantization is only defined for float32 tensors")
    return values.astype(np.float32 if dtype == "float32" else np.int32).reshape(spec["shape"])


def decode_tfjs_weights(
    manifest: Sequence[dict[str, Any]], read_shard: Callable[[str], bytes]
) -> dict[str, np.ndarray]:
    """Every tensor of a TF.js weights manifest, dequantized, by name.

    Args:
        manifest: the parsed ``*-weights_manifest.json``: groups, each with ``paths``
            (its shard files, concatenated in order) and ``weights`` (``name``,
            ``shape``, ``dtype`` and an optional ``quantization``: ``uint8``/``uint16``
            with ``scale`` and ``min``, or ``float16``).
        read_shard: the bytes of a shard file, given its name in ``paths``.

    Raises:
        ValueError: an unsupported dtype or quantization, a tensor named twice, or shards
            whose length differs from what the manifest describes.
    """
    tensors: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join(read_shard(path) for path in group["paths"])
        offset = 0
        for spec in group["weights"]:
            quantization = spec.get("quantization")
            stored = quantization["dtype"] if quantization else spec["dtype"]
            if stored not in _STORED_DTYPES:
                raise ValueError(f"{spec['name']}: stored dtype {stored!r} is not supported")
            size = int(np.prod(spec["shape"], dtype=np.int64)) * _STORED_DTYPES[stored].itemsize
            if offset + size > len(data):
                raise ValueError(
                    f"{spec['name']}: the manifest needs {offset + size} bytes of "
                    f"{group['paths']} but they hold {len(data)}"
                )
            if spec["name"] in tensors:
                raise ValueError(f"{spec['name']}: named twice in the manifest")
            tensors[spec["name"]] = _dequantize(data[offset : offset + size], spec)
            offset += size
        if offset != len(data):
            raise ValueError(
                f"{group['paths']}: {len(data)} bytes, but the manifest describes {offset}"
            )
    return tensors


def read_tfjs_weights(manifest_path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors of a TF.js weights manifest on disk (shards beside it)."""
    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    return decode_tfjs_weights(manifest, lambda name: (manifest_path.parent / name).read_bytes())


def check_tarball(tarball: str | os.PathLike[str]) -> str:
    """The tarball's SHA-256, once checked against the recorded one.

    Raises:
        FileNotFoundError: no such file.
        TarballMismatchError: another file than the recorded face-api tarball.
    """
    from ferkit.models.folder import sha256_file

    tarball = Path(tarball)
    if not tarball.is_file():
        raise FileNotFoundError(
            f"{tarball}: no such file; make it once with 'npm pack "
            f"{FACEAPI_PACKAGE}@{FACEAPI_VERSION}'"
        )
    digest = sha256_file(tarball)
    if digest != FACEAPI_TARBALL_SHA256:
        raise TarballMismatchError(
            f"{tarball}: SHA-256 {digest} differs from the recorded {FACEAPI_TARBALL_SHA256} "
            f"of {FACEAPI_PACKAGE} {FACEAPI_VERSION}; this is another version or a changed "
            f"file: fetch it again with 'npm pack {FACEAPI_PACKAGE}@{FACEAPI_VERSION}'"
        )
    return digest


def read_tarball(tarball: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], str]:
    """The expression net's tensors and the licence text, read from an npm tarball
    (not checked: see :func:`check_tarball`)."""
    with tarfile.open(tarball, "r:gz") as archive:

        def member(name: str) -> bytes:
            handle = archive.extractfile(name)
            if handle is None:
                raise ValueError(f"{tarball}: {name} is not a file")
            return handle.read()

        manifest = json.loads(member(f"{MODEL_DIR_IN_TARBALL}/{MANIFEST_NAME}"))
        tensors = decode_tfjs_weights(
            manifest, lambda shard: member(f"{MODEL_DIR_IN_TARBALL}/{shard}")
        )
        licence = member(LICENSE_IN_TARBALL).decode("utf-8")
    return tensors, licence


def ferkit_order() -> tuple[list[str], list[int]]:
    """ferkit's names of face-api's classes in ferkit's order, and for each the index of
    face-api's output that holds it."""
    from ferkit.classes import canonical_name, class_order

    renamed = [canonical_name(name) for name in FACEAPI_CLASSES]
    classes = class_order(renamed)
    return classes, [renamed.index(name) for name in classes]


def build_keras_model(tensors: dict[str, np.ndarray]) -> Any:
    """face-api's expression net as a Keras model: ``(N, 112, 112, 3)`` RGB in 0..255 to
    seven logits in ferkit's class order (:func:`ferkit_order`)."""
    from ferkit.extras import import_keras

    keras = import_keras()
    layers = keras.layers
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="face")
    # face-api's normalize(x, mean).div(255), as x / 255 - mean / 255: constants of the
    # call (a Normalization layer's mean and variance become inputs in tf2onnx's graph).
    x = layers.Rescaling(
        1.0 / 255.0, offset=[-value / 255.0 for value in MEAN_RGB], name="faceapi_normalize"
    )(inputs)
    weights: list[tuple[Any, list[np.ndarray]]] = []  # set once the model is built
    used: set[str] = set()

    def take(*names: str) -> list[np.ndarray]:
        missing = [name for name in names if name not in tensors]
        if missing:
            raise ValueError(f"the manifest has no tensor {', '.join(missing)}")
        used.update(names)
        return [tensors[name] for name in names]

    def separable(name: str, channels: int, strides: int, tensor: Any) -> Any:
        layer = layers.SeparableConv2D(channels, 3, strides, "same", name=name.replace("/", "_"))
        suffixes = ("depthwise_filter", "pointwise_filter", "bias")
        weights.append((layer, take(*(f"{name}/{suffix}" for suffix in suffixes))))
        return layer(tensor)

    for block, channels in enumerate(BLOCK_CHANNELS):
        prefix = f"dense{block}"
        if block == 0:
            first = layers.Conv2D(channels, 3, 2, "same", name=f"{prefix}_conv0")
            weights.append((first, take(f"{prefix}/conv0/filters", f"{prefix}/conv0/bias")))
            outputs = [layers.ReLU(name=f"{prefix}_relu0")(first(x))]
        else:
            out = separable(f"{prefix}/conv0", channels, 2, x)
            outputs = [layers.ReLU(name=f"{prefix}_relu0")(out)]
        for conv in (1, 2, 3):
            # Each convolution sees the ReLU of the sum of the block's outputs so far.
            if len(outputs) == 1:
                block_input = outputs[0]
            else:
                summed = layers.Add(name=f"{prefix}_sum{conv}")(outputs)
                block_input = layers.ReLU(name=f"{prefix}_relu{conv}")(summed)
            outputs.append(separable(f"{prefix}/conv{conv}", channels, 1, block_input))
        x = layers.ReLU(name=f"{prefix}_out")(layers.Add(name=f"{prefix}_sum4")(outputs))
    x = layers.AveragePooling2D(7, strides=2, padding="valid", name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    _, order = ferkit_order()
    fc = layers.Dense(len(FACEAPI_CLASSES), name="fc")
    logits = fc(x)
    fc_weights, fc_bias = take("fc/weights", "fc/bias")
    weights.append((fc, [fc_weights[:, order], fc_bias[order]]))
    unused = sorted(set(tensors) - used)
    if unused:
        raise ValueError(f"the manifest holds tensors the network does not use: {unused}")
    model = keras.Model(inputs, logits, name="faceapi_expression")
    for layer, values in weights:
        layer.set_weights(values)
    return model


def _model_card(digest: str, parameters: int, difference: float, classes: list[str]) -> str:
    order = ", ".join(classes)
    return f"""# face-api expression net (teacher model)

The face expression network of the npm package `{FACEAPI_PACKAGE}` {FACEAPI_VERSION},
rebuilt by ferkit from its TensorFlow.js weights. Not trained by ferkit: a teacher and a
point of comparison.

## Source
- Package: `{FACEAPI_PACKAGE}@{FACEAPI_VERSION}` (`npm pack`), tarball
  `{FACEAPI_TARBALL_NAME}`, SHA-256 `{digest}`.
- Files: `{MODEL_DIR_IN_TARBALL}/{MANIFEST_NAME}` and `face_expression_model.bin`
  (uint8-quantized weights, dequantized as TF.js does: `q * scale + min`).
- The package is a fork of face-api.js 0.22.2 (Vincent Mühler); its README credits the
  original weights to face-api.js-models.
- Licence: MIT (`LICENSE` beside this card, copied from the package).
- Built with `python -m ferkit.release.faceapi --tarball {FACEAPI_TARBALL_NAME} --out DIR`;
  nothing is downloaded at run time.

## Model
- Input: a 112x112 RGB face crop, values 0..255 (`(N, 112, 112, 3)`); face-api's
  normalisation, `(x - [122.782, 117.001, 104.298]) / 255`, is inside the graph.
- Four densely connected blocks of depthwise-separable 3x3 convolutions (32, 64, 128,
  256 channels, each block halving the side), 7x7 average pooling, one fully connected
  layer; {parameters:,} parameters.
- Outputs: logits in ferkit's class order ({order}); face-api's own order is
  {", ".join(FACEAPI_CLASSES)} and its softmax is ferkit's with temperature 1
  (`calibration.json`: not fitted).
- `model.onnx` agrees with `model.keras` to {difference:.1e} (largest absolute logit
  difference on 32 random faces).

## Training data
What face-api's documentation says, and all that is known: "It has been trained on a
variety of images from publicly available datasets as well as images scraped from the
web. Note, that wearing glasses might decrease the accuracy of the prediction results."
Which datasets is not stated: FER2013 or FER+ may be among them, so its accuracy on them
may be optimistic. No accuracy figures are published for it.

## Limitations
- face-api feeds the net the box of its own face detector, padded to a square; ferkit's
  crops (a margin of 15% around the detector's box, eyes levelled) frame faces a little
  differently.
- Grey 48x48 crops (FER2013) are upscaled and copied to three channels: far from the
  colour photos it was trained on.
- Expressions are not emotions: the model reports what a face shows, not what a person
  feels.
"""


def build_faceapi_teacher(
    tarball: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write face-api's expression net as a ferkit model folder.

    The folder holds ``model.keras``, ``model.onnx``, ``labels.json``,
    ``calibration.json``, ``source.json`` (provenance and checks), ``MODEL_CARD.md``,
    ``LICENSE`` and ``checksums.json``.

    Args:
        tarball: ``vladmandic-face-api-1.7.15.tgz`` as ``npm pack`` writes it.
        out: the new folder; it must not hold anything yet unless ``overwrite`` (which
            replaces only an earlier output of this builder; see :mod:`ferkit.outputs`).

    Raises:
        TarballMismatchError: the tarball is not the recorded one.
        ValueError: ``out`` lies inside ferkit's installed models.
    """
    from ferkit.models.folder import ASSETS_DIR, ONNX_FILE, write_checksums
    from ferkit.outputs import output_folder

    out = Path(out)
    if out.resolve().is_relative_to(ASSETS_DIR.resolve()):
        raise ValueError(
            f"{out}: inside ferkit's installed models ({ASSETS_DIR}); the face-api teacher "
            "is built outside the package: choose another --out"
        )
    digest = check_tarball(tarball)
    tensors, licence = read_tarball(tarball)
    with output_folder(out, COMMAND, overwrite=overwrite, inputs=[tarball]) as staging:
        model = build_keras_model(tensors)
        model.save(staging / "model.keras")
        difference = _export_checked(model, staging / ONNX_FILE)
        classes, order = ferkit_order()
        parameters = int(model.count_params())
        (staging / "labels.json").write_text(json.dumps(classes, indent=2) + "\n")
        (staging / "calibration.json").write_text(json.dumps({"temperature": 1.0}, indent=2) + "\n")
        source = {
            "package": FACEAPI_PACKAGE,
            "version": FACEAPI_VERSION,
            "tarball": FACEAPI_TARBALL_NAME,
            "tarball_sha256": digest,
            "files": [f"{MODEL_DIR_IN_TARBALL}/{MANIFEST_NAME}", "face_expression_model.bin"],
            "licence": "MIT",
            "faceapi_classes": list(FACEAPI_CLASSES),
            "faceapi_output_of_each_class": dict(zip(classes, order, strict=True)),
            "image_shape": [INPUT_SIZE, INPUT_SIZE, 3],
            "mean_rgb": list(MEAN_RGB),
            "parameters": parameters,
            "onnx_max_abs_logit_difference": difference,
        }
        (staging / "source.json").write_text(json.dumps(source, indent=2) + "\n")
        (staging / "LICENSE").write_text(licence)
        (staging / "MODEL_CARD.md").write_text(_model_card(digest, parameters, difference, classes))
        write_checksums(staging)
    logger.info("wrote face-api's expression net to %s", out)
    return out


def calibrate_teacher(
    folder: str | os.PathLike[str], data: str | os.PathLike[str], split: str = "val"
) -> dict[str, Any]:
    """Fit the temperature of the teacher in ``folder`` on a prepared dataset's ``split``.

    face-api's softmax is far more confident than it is right on FER2013's faces (its
    expected calibration error there is about 0.3 at temperature 1), so its probabilities,
    averaged with other teachers', would outvote them whenever it is sure. A temperature
    fitted on held-out faces (as ``ferkit train`` fits every run's) makes its confidence
    mean what it says without changing one prediction. The faces are resized and turned to
    colour as :func:`ferkit.images.resize_face` does. ``calibration.json`` records the
    temperature, the data and the error before and after; the card and the checksums are
    renewed so the folder still loads.

    Returns:
        What ``calibration.json`` now holds.

    Raises:
        ValueError: the dataset lacks ``split`` or a class of the model.
    """
    from ferkit.calibration import expected_calibration_error, fit_temperature, softmax
    from ferkit.classes import canonical_name
    from ferkit.data.dataset import PreparedDataset
    from ferkit.images import resize_face
    from ferkit.models.folder import load_model, write_checksums

    folder = Path(folder)
    dataset = PreparedDataset(data)
    if split not in dataset.splits:
        raise ValueError(f"{data}: no split {split!r}; it has {', '.join(dataset.splits)}")
    faces = dataset.split(split)
    model = load_model(folder)
    known = [canonical_name(name) for name in model.classes]
    missing = [name for name in faces.classes if canonical_name(name) not in known]
    if missing:
        raise ValueError(f"{data}: classes {missing} are not among the model's {model.classes}")
    labels = np.array([known.index(canonical_name(faces.classes[i])) for i in faces.labels])
    size, _, channels = model.image_shape
    logits = np.concatenate(
        [
            model.predict_logits(np.stack([resize_face(f, size, channels) for f in chunk]))
            for chunk in np.array_split(faces.images, max(1, len(faces) // 512))
        ]
    )
    temperature = fit_temperature(logits, labels)
    record = {
        "temperature": temperature,
        "ece_before": float(expected_calibration_error(softmax(logits), labels, 15)),
        "ece_after": float(expected_calibration_error(softmax(logits, temperature), labels, 15)),
        "split": split,
        "data": str(dataset.manifest.get("source", data)),
        "faces": len(faces),
    }
    (folder / "calibration.json").write_text(json.dumps(record, indent=2) + "\n")
    card = folder / "MODEL_CARD.md"
    text = card.read_text().replace(
        "(`calibration.json`: not fitted)",
        f"(`calibration.json`: temperature {temperature:.3f}, fitted on {len(faces):,} faces "
        f"of {Path(record['data']).name} {split}; ECE {record['ece_before']:.3f} before, "
        f"{record['ece_after']:.3f} after)",
    )
    card.write_text(text)
    write_checksums(folder)
    return record


def _export_checked(model: Any, path: Path, seed: int = 0) -> float:
    """Export ``model`` to ONNX at ``path``; the largest logit difference from Keras on
    random faces.

    Raises:
        ValueError: the ONNX model disagrees with the Keras one beyond 1e-4.
    """
    from ferkit.inference.runtimes import OnnxModel
    from ferkit.release.export import export_onnx

    export_onnx(model, path)
    faces = np.random.default_rng(seed).integers(0, 256, (32, INPUT_SIZE, INPUT_SIZE, 3))
    classes, _ = ferkit_order()
    exported = OnnxModel(path, classes).predict_logits(faces.astype(np.uint8))
    reference = np.asarray(model.predict_on_batch(faces.astype(np.float32)))
    difference = float(np.abs(exported - reference).max())
    if difference > 1e-4:
        raise ValueError(f"{path}: the ONNX model's logits differ from Keras by {difference}")
    return difference


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ferkit.release.faceapi",
        description=f"Build the expression net of {FACEAPI_PACKAGE} {FACEAPI_VERSION} as a "
        "ferkit model folder (a teacher), from the tarball of 'npm pack "
        f"{FACEAPI_PACKAGE}@{FACEAPI_VERSION}'. Nothing is downloaded.",
    )
    parser.add_argument("--tarball", type=Path, required=True, help=FACEAPI_TARBALL_NAME)
    parser.add_argument("--out", type=Path, required=True, help="the new model folder")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier output of this command"
    )
    parser.add_argument(
        "--calibrate",
        type=Path,
        help="a prepared dataset (FER2013, from 'ferkit prepare') whose --calibrate-split "
        "fits the temperature (default: none: temperature 1)",
    )
    parser.add_argument("--calibrate-split", default="val", help="(default: val)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up lines
    try:
        out = build_faceapi_teacher(args.tarball, args.out, overwrite=args.overwrite)
        if args.calibrate is not None:
            record = calibrate_teacher(out, args.calibrate, args.calibrate_split)
            print(
                f"temperature {record['temperature']:.3f} fitted on {args.calibrate} "
                f"({args.calibrate_split}): ECE {record['ece_before']:.3f} -> "
                f"{record['ece_after']:.3f}"
            )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

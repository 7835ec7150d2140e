"""Export a model for deployment: ONNX and TensorFlow Lite, each float32 or int8.

``ferkit export --format onnx|tflite [--quantize int8]`` writes a folder that describes
itself, as a run folder does: the model file, ``labels.json``, ``calibration.json`` and
``export.json`` (format, source model, and how far the exported outputs are from the
Keras model's on check faces). :class:`ferkit.inference.runtimes.OnnxModel` and
``EmotionRecognizer(model=FOLDER)`` load such a folder without TensorFlow.

Augmentation layers live inside ferkit's models; the export traces the model with
``training=False``, so they vanish from the exported graph.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.models.folder import ONNX_FILE, ONNX_INT8_FILE, TFLITE_FILE, TFLITE_INT8_FILE

logger = logging.getLogger(__name__)


EXPORT_FORMATS = ("onnx", "tflite")


ONNX_OPSET = 17


def _inference_function(model: Any) -> tuple[Any, list[Any]]:
    import tensorflow as tf

    spec = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="face")]
    function = tf.function(lambda faces: model(faces, training=False), input_signature=spec)
    return function, spec


def export_onnx(model: Any, path: str | os.PathLike[str]) -> Path:
    """Write a Keras model as float32 ONNX (input ``face``: ``(N, H, W, C)`` 0..255)."""
    import tf2onnx

    function, spec = _inference_function(model)
    tf2onnx.convert.from_function(
        function, input_signature=spec, opset=ONNX_OPSET, output_path=str(path)
    )
    flatten_input_rescale(path)
    return Path(path)


def flatten_input_rescale(path: str | os.PathLike[str]) -> bool:
    """Rewrite an ONNX classifier in place so that its input rescaling (a chain of
    ``Mul``/``Add``/``Sub``/``Div`` by scalar constants on the ``(N, H, W, C)`` faces)
    runs on the faces flattened to one dimension, between two ``Reshape`` nodes.

    The outputs are bit-identical; ONNX Runtime is faster: with one channel last, its
    broadcasting walks the four-dimensional tensor a value at a time, which cost about a
    fifth of the ``fast`` model's int8 time. Returns whether the file changed (False for a
    file already rewritten or without such a chain).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    face = graph.input[0].name
    constants = {tensor.name: tensor for tensor in graph.initializer}

    def scalar(name: str) -> bool:
        return name in constants and int(np.prod(constants[name].dims)) == 1

    chain, current = [], face
    while True:
        consumers = [node for node in graph.node if current in node.input]
        if len(consumers) != 1 or consumers[0].op_type not in ("Mul", "Add", "Sub", "Div"):
            break
        node = consumers[0]
        others = [name for name in node.input if name != current]
        if len(others) != 1 or not scalar(others[0]):
            break
        chain.append(node)
        current = node.output[0]
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]]
    if not chain or not all(dims):
        return False
    prefix = chain[0].name.rsplit("/", 1)[0] or "rescale"
    flat_shape, face_shape = f"{prefix}/flat_shape", f"{prefix}/face_shape"
    graph.initializer.extend([
        numpy_helper.from_array(np.array([-1], dtype=np.int64), flat_shape),
        numpy_helper.from_array(np.array([-1, *dims], dtype=np.int64), face_shape),
    ])  # fmt: skip
    result = chain[-1].output[0]
    stale = {node.output[0] for node in chain}
    read, incoming = face, f"{prefix}/flat_faces"
    for node in chain:  # each node reads the flat tensor before it and writes a flat one
        node.input[list(node.input).index(read)] = incoming
        read = node.output[0]
        node.output[0] = incoming = f"{read}/flat"
    kept = [info for info in graph.value_info if info.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    nodes = list(graph.node)
    first, last = nodes.index(chain[0]), nodes.index(chain[-1])
    graph.node.insert(last + 1, helper.make_node(
        "Reshape", [chain[-1].output[0], face_shape], [result], name=f"{prefix}/unflatten"
    ))  # fmt: skip
    graph.node.insert(first, helper.make_node(
        "Reshape", [face, flat_shape], [f"{prefix}/flat_faces"], name=f"{prefix}/flatten"
    ))  # fmt: skip
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return True


def export_tflite(
    model: Any,
    path: str | os.PathLike[str],
    calibration_faces: np.ndarray | None = None,
    batch_size: int = 32,
) -> Path:
    """Write a Keras model as a TensorFlow Lite flatbuffer: float32, or int8 when
    ``calibration_faces`` are given (real faces ``(N, H, W, C)``; a thousand from the
    training split is plenty): per-channel int8 weights and int8 activations calibrated
    on them, float32 faces in and float32 logits out, so it runs wherever the float file
    does. LiteRT runs the int8 file with XNNPACK's int8 kernels."""
    import tensorflow as tf

    function, _ = _inference_function(model)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], model
    )
    if calibration_faces is not None:
        faces = np.asarray(calibration_faces, dtype=np.float32)
        if len(faces) == 0:
            raise ValueError("int8 quantization needs calibration faces; none were given")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [faces[start : start + batch_size]] for start in range(0, len(faces), batch_size)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    Path(path).write_bytes(converter.convert())
    return Path(path)


def quantize_onnx(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    calibration_faces: np.ndarray,
    batch_size: int = 128,
) -> Path:
    """Static int8 quantization (per-channel weights, uint8 activations, QDQ format).

    The input rescaling stays in float: quantized, it costs more than it saves (measured
    about 2,000 against 2,400 faces/s on the bundled model) and loses accuracy.

    Args:
        calibration_faces: real faces ``(N, H, W, C)`` that set the activation ranges; a
            thousand from the training split is plenty.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    faces = np.asarray(calibration_faces, dtype=np.float32)
    if len(faces) == 0:
        raise ValueError("int8 quantization needs calibration faces; none were given")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.start >= len(faces):
                return None
            batch = faces[self.start : self.start + batch_size]
            self.start += batch_size
            return {"face": batch}

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        float_nodes = [node.name for node in graph.node if "/rescale" in node.name]
        quantize_static(
            str(prepared),
            str(dest),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=float_nodes,
        )
    return Path(dest)


def calibration_faces_from(prepared_dir: str | os.PathLike[str], n: int, seed: int) -> np.ndarray:
    """``n`` faces drawn (seeded) from a prepared dataset's train split."""
    from ferkit.data.dataset import load_split

    split = load_split(prepared_dir, "train")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(split.images), size=min(n, len(split.images)), replace=False)
    return split.images[np.sort(chosen)]


def max_abs_difference(exported: Any, keras_model: Any, faces: np.ndarray) -> float:
    """Largest gap between an exported model's logits and the Keras model's on ``faces``."""
    reference = np.asarray(keras_model.predict_on_batch(np.asarray(faces, dtype=np.float32)))
    return float(np.abs(exported.predict_logits(faces) - reference).max())


def export_model(
    model: str | os.PathLike[str] | None,
    fmt: str,
    out: str | os.PathLike[str],
    *,
    quantize: str | None = None,
    calibration_data: str | os.PathLike[str] | None = None,
    n_calibration: int = 1024,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Export the bundled model (``model=None``) or a run/bundle/``.keras`` model.

    Args:
        fmt: ``onnx`` or ``tflite``.
        quantize: ``None`` or ``"int8"`` (needs ``calibration_data``).
        calibration_data: a prepared dataset folder whose train faces calibrate int8.
        overwrite: replace an earlier export in ``out`` (see :mod:`ferkit.outputs`).

    Returns:
        The output folder.
    """

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {EXPORT_FORMATS}, not {fmt!r}")
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', not {quantize!r}")
    if quantize and calibration_data is None:
        raise ValueError(
            "int8 needs real faces to calibrate: pass --calibration-data PREPARED_DIR "
            "(a folder written by 'ferkit prepare')"
        )
    from ferkit.outputs import output_folder

    with output_folder(out, "export", overwrite=overwrite, inputs=[model]) as staging:
        _export_into(staging, model, fmt, quantize, calibration_data, n_calibration, seed)
    return Path(out)


def _export_into(
    out: Path,
    model: str | os.PathLike[str] | None,
    fmt: str,
    quantize: str | None,
    calibration_data: str | os.PathLike[str] | None,
    n_calibration: int,
    seed: int,
) -> None:
    from ferkit.inference.runtimes import OnnxModel, TFLiteModel
    from ferkit.models.folder import load_model, write_checksums

    loaded = load_model(model)
    rng = np.random.default_rng(seed)
    check_faces = rng.integers(0, 256, size=(32, *loaded.image_shape)).astype(np.uint8)
    details: dict[str, Any] = {
        "format": fmt,
        "quantize": quantize,
        "source_model": str(loaded.source),
        "classes": loaded.classes,
        "image_shape": list(loaded.image_shape),
    }
    faces = None
    if quantize:
        faces = calibration_faces_from(calibration_data, n_calibration, seed)
        check_faces = faces[:32]
        details["calibration"] = {"data": str(calibration_data), "faces": len(faces)}
    if fmt == "onnx":
        path = export_onnx(loaded.model, out / ONNX_FILE)
        if faces is not None:
            path = quantize_onnx(path, out / ONNX_INT8_FILE, faces)
        exported: Any = OnnxModel(path, loaded.classes, loaded.temperature)
    else:
        name = TFLITE_FILE if faces is None else TFLITE_INT8_FILE
        path = export_tflite(loaded.model, out / name, faces)
        exported = TFLiteModel(path, loaded.classes, loaded.temperature)
    details["file"] = path.name
    details["max_abs_logit_difference"] = max_abs_difference(exported, loaded.model, check_faces)
    (out / "labels.json").write_text(json.dumps(loaded.classes) + "\n")
    (out / "calibration.json").write_text(
        json.dumps({"temperature": loaded.temperature}, indent=2) + "\n"
    )
    (out / "export.json").write_text(json.dumps(details, indent=2) + "\n")
    write_checksums(out)
    logger.info("exported %s to %s", loaded.source, path)


#: The int8 files a bundle carries, and what runs each.
INT8_FILES = {
    ONNX_INT8_FILE: "int8 ONNX Runtime",
    TFLITE_INT8_FILE: "int8 LiteRT (XNNPACK's int8 kernels)",
}

#: How the int8 files are quantized, as the model card says it.
INT8_METHOD = (
    "statically quantized: per-channel int8 weights, 8-bit activations calibrated on "
    "1,024 training faces"
)


def runtimes_section(runtimes: dict[str, dict[str, float]], default: str = "onnx") -> str:
    """The model card's "Runtimes" section: each exported file's val accuracy, and which
    one ``predict`` uses by default (``default``: ``onnx``, ``onnx-int8`` or
    ``tflite-int8``)."""
    from ferkit.models.folder import RUNTIME_FILES

    file = RUNTIME_FILES[default]
    if file in INT8_FILES:
        lead = (
            f"Prediction uses {INT8_FILES[file]} by default (`{file}`, {INT8_METHOD}), "
            "since it keeps float32's val accuracy within 0.3 points; `--backend onnx` runs "
            "`model.onnx` (same outputs as Keras)"
        )
    else:
        others = [f"`{name}` on {what}" for name, what in INT8_FILES.items() if name in runtimes]
        lead = "Prediction uses ONNX Runtime by default (`model.onnx`, same outputs as Keras)"
        if others:
            lead += f"; int8 ({INT8_METHOD}) runs faster: {', '.join(others)}"
    rows = "\n".join(
        f"| `{name}` | {values['val_accuracy']:.4f} | {values['max_abs_logit_difference']:.1e} |"
        for name, values in runtimes.items()
    )
    return (
        "## Runtimes\n"
        f"{lead}. Speeds: `ferkit benchmark classifier`.\n\n"
        "| file | val accuracy | max abs logit difference from Keras |\n|---|---|---|\n"
        f"{rows}\n"
    )


def add_runtimes_to_bundle(
    bundle_dir: str | os.PathLike[str],
    calibration_data: str,
    val_split: Any = None,
    tflite_int8: bool = False,
) -> dict:
    """Put float32 and int8 ONNX copies of a bundled model beside it (and an int8 LiteRT
    one with ``tflite_int8``), with checksums; int8 is calibrated on
    ``calibration_data``'s train faces.

    With ``val_split`` (a :class:`ferkit.data.dataset.Split`), each file's accuracy on it goes
    into the bundle's ``metrics.json`` under ``runtimes``.

    Returns:
        ``export.json`` of each file, keyed by file name.
    """
    from ferkit.inference.runtimes import load_classifier
    from ferkit.models.folder import write_checksums

    bundle_dir = Path(bundle_dir)
    records = {}
    with tempfile.TemporaryDirectory() as scratch:
        exports = [("onnx", None), ("onnx", "int8")]
        if tflite_int8:
            exports.append(("tflite", "int8"))
        for fmt, quantize in exports:
            folder = Path(scratch) / f"{fmt}-{quantize or 'float'}"
            export_model(
                bundle_dir, fmt, folder, quantize=quantize, calibration_data=calibration_data
            )
            details = json.loads((folder / "export.json").read_text())
            shutil.copy2(folder / details["file"], bundle_dir / details["file"])
            records[details["file"]] = details
    if val_split is not None:
        metrics_path = bundle_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        runtimes = {}
        for name, details in records.items():
            model = load_classifier(bundle_dir / name, verify=False)
            predicted = model.predict_logits(val_split.images).argmax(axis=1)
            runtimes[name] = {
                "val_accuracy": float((predicted == val_split.labels).mean()),
                "max_abs_logit_difference": details["max_abs_logit_difference"],
            }
        metrics["runtimes"] = runtimes
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
        card = bundle_dir / "MODEL_CARD.md"
        if card.is_file():
            text = card.read_text().split("\n## Runtimes\n")[0].rstrip("\n")
            card.write_text(text + "\n\n" + runtimes_section(runtimes))
    write_checksums(bundle_dir)
    return records

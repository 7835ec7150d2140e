"""Run a classifier without Keras: ONNX Runtime (float32 or int8) or LiteRT (float32 or
int8).

The bundled model ships with ``model.onnx``, ``model.int8.onnx`` and
``model.int8.tflite`` beside ``model.keras`` (all checksummed), so prediction needs
neither TensorFlow's import time (about 4 s) nor its per-call overhead.
:func:`load_classifier` picks the runtime:

- ``auto``: the runtime the model folder names as its default (``default_runtime`` in
  its ``metrics.json``: an int8 file that kept float32's accuracy), else ONNX float32
  when the folder has it (same predictions as Keras to about 1e-6), else Keras.
- ``onnx-int8``: int8 ONNX Runtime, about three to four times the batched throughput of
  float32 on a 2-core AVX-512 CPU for a fraction of a point of accuracy (see the model
  card).
- ``tflite-int8``: the int8 LiteRT file (XNNPACK's int8 kernels): on such a CPU about
  1.5 times int8 ONNX Runtime's faces/s in batches and twice one face at a time.
- ``keras``, ``onnx``, ``tflite``: that runtime, or an error saying what is missing.
- ``openvino``, ``openvino-int8``: the ONNX files run by OpenVINO (an optional extra).

Every runtime is a :class:`ferkit.models.folder.Classifier` (``predict_logits``,
``predict_proba``), as the Keras :class:`ferkit.models.folder.LoadedModel` is.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ferkit.extras import native_stderr_silenced
from ferkit.models.folder import Classifier, ModelLoadError, error_summary, read_metadata

BACKENDS = (
    "auto", "keras", "onnx", "onnx-int8", "tflite", "tflite-int8", "openvino", "openvino-int8"
)  # fmt: skip

#: The backends that run a LiteRT file.
TFLITE_BACKENDS = ("tflite", "tflite-int8")

#: OpenVINO runs the model's ONNX files (``pip install -e '.[openvino]'``).
OPENVINO_FILES = {"openvino": "onnx", "openvino-int8": "onnx-int8"}


class OnnxModel(Classifier):
    """An exported ONNX classifier run by ONNX Runtime on the CPU: ``threads`` of one
    call (default: one per core); ``spin``: whether those threads spin between calls
    (faster for back-to-back calls, but a spinning thread takes a core that another
    thread of the program, decoding say, is waiting for)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        classes: list[str],
        temperature: float = 1.0,
        threads: int | None = None,
        spin: bool = True,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        if not spin:  # threads sleep between calls, leaving the cores to other threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.source = Path(path)
        self.classes = list(classes)
        self.temperature = float(temperature)
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:
            raise ModelLoadError(
                f"{path}: not a loadable ONNX model ({error_summary(error)}); the file is damaged "
                "or not ONNX: export it again with 'ferkit export --format onnx'"
            ) from None
        face_input = self._session.get_inputs()[0]
        self._input = face_input.name
        self.image_shape = tuple(int(d) for d in face_input.shape[1:])
        outputs = self._session.get_outputs()[0].shape
        self.check_outputs(outputs[-1] if outputs and isinstance(outputs[-1], int) else None)

    def with_threads(self, threads: int | None, spin: bool = True) -> OnnxModel:
        """The same file in a session of its own on ``threads`` threads."""
        return OnnxModel(self.source, self.classes, self.temperature, threads, spin)

    def _run(self, faces: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: faces})[0]


class TFLiteModel(Classifier):
    """An exported TensorFlow Lite classifier run by the LiteRT interpreter (one batch at
    a time: the interpreter holds its tensors, so threads sharing it take turns)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        classes: list[str],
        temperature: float = 1.0,
        threads: int | None = None,
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.source = Path(path)
        self.classes = list(classes)
        self.temperature = float(temperature)
        try:
            self.threads = threads or os.cpu_count() or 1
            self._interpreter = Interpreter(str(path), num_threads=self.threads)
        except Exception as error:
            raise ModelLoadError(
                f"{path}: not a loadable TensorFlow Lite model ({error_summary(error)}); export "
                "it again with 'ferkit export --format tflite' (with '--quantize int8 "
                "--calibration-data PREPARED_DIR' for an int8 file)"
            ) from None
        detail = self._interpreter.get_input_details()[0]
        self._input = detail["index"]
        output = self._interpreter.get_output_details()[0]
        self._output = output["index"]
        self.image_shape = tuple(int(d) for d in detail["shape"][1:])
        self.check_outputs(int(output["shape"][-1]))
        self._batch = -1
        self._lock = threading.Lock()

    def with_threads(self, threads: int | None, spin: bool = True) -> TFLiteModel:
        """The same file in an interpreter of its own on ``threads`` threads (LiteRT's
        thread pool has no spinning setting, so ``spin`` changes nothing)."""
        return TFLiteModel(self.source, self.classes, self.temperature, threads)

    def _run(self, faces: np.ndarray) -> np.ndarray:
        with self._lock:
            if len(faces) != self._batch:
                self._interpreter.resize_tensor_input(self._input, faces.shape)
                with native_stderr_silenced():  # LiteRT announces its CPU delegate here
                    self._interpreter.allocate_tensors()
                self._batch = len(faces)
            self._interpreter.set_tensor(self._input, faces)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output).copy()


class OpenVinoModel(Classifier):
    """An exported ONNX classifier run by OpenVINO on the CPU, at float32 precision (on
    a 2-core AVX-512 CPU its int8 file runs faster than under ONNX Runtime; the float32
    one about as fast). One inference request per calling thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        classes: list[str],
        temperature: float = 1.0,
        threads: int | None = None,
    ) -> None:
        from ferkit.extras import missing_extra

        try:
            import openvino
        except ImportError:
            raise missing_extra("OpenVINO", "openvino", "--backend openvino") from None
        self.source = Path(path)
        self.classes = list(classes)
        self.temperature = float(temperature)
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",  # the numbers of ONNX Runtime, not bf16's
            "INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1,
        }
        try:
            core = openvino.Core()
            self._compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as error:
            raise ModelLoadError(
                f"{path}: OpenVINO cannot load it ({error_summary(error)}); export it again "
                "with 'ferkit export --format onnx'"
            ) from None
        face_input = self._compiled.inputs[0]
        self.image_shape = tuple(int(d) for d in face_input.get_partial_shape()[1:].to_shape())
        output = self._compiled.outputs[0].get_partial_shape()
        self.check_outputs(output[-1].get_length() if output[-1].is_static else None)
        self._requests = threading.local()

    def _run(self, faces: np.ndarray) -> np.ndarray:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        return np.array(request.infer({0: faces})[0], dtype=np.float32, copy=True)


def _model_folder(model: Path | None) -> Path:
    from ferkit.models.folder import DEFAULT_MODEL_DIR

    if model is None:
        return DEFAULT_MODEL_DIR
    return model if model.is_dir() else model.parent


def _runtime_files() -> dict[str, str]:
    """Each backend but Keras, and the file of a model folder that it runs."""
    from ferkit.models.folder import RUNTIME_FILES

    names = {b: name for b, name in RUNTIME_FILES.items() if b != "keras"}
    names.update({b: RUNTIME_FILES[onnx] for b, onnx in OPENVINO_FILES.items()})
    return names


def _auto_backend(folder: Path) -> str:
    """The runtime ``auto`` picks in a model folder: the one its ``metrics.json`` names
    as ``default_runtime`` (a bundle whose int8 file kept its accuracy) where that file is
    there, else the first of ONNX, int8 ONNX and LiteRT whose file is there, else Keras."""
    import json

    names = _runtime_files()
    try:
        chosen = json.loads((folder / "metrics.json").read_text()).get("default_runtime")
    except (OSError, ValueError, AttributeError):
        chosen = None
    if (
        isinstance(chosen, str)
        and chosen in names
        and chosen not in OPENVINO_FILES
        and (folder / names[chosen]).is_file()
    ):
        return chosen
    return next((b for b, name in names.items() if (folder / name).is_file()), "keras")


def default_backend(model: str | os.PathLike[str] | None = None) -> str:
    """The runtime that ``load_classifier(model)`` (``backend="auto"``) uses: what
    ``predict`` runs unless ``--backend`` says otherwise."""
    from ferkit.models.folder import resolve_model

    resolved = resolve_model(model)
    path = None if resolved is None else Path(resolved)
    if path is not None and path.is_file() and path.suffix in (".onnx", ".tflite"):
        return {".onnx": "onnx", ".tflite": "tflite"}[path.suffix]  # the file decides
    return _auto_backend(_model_folder(path))


def load_classifier(
    model: str | os.PathLike[str] | None = None,
    backend: str = "auto",
    *,
    verify: bool = True,
    threads: int | None = None,
) -> Classifier:
    """The classifier of ``model`` (bundled when ``None``) on the chosen runtime.

    ``model`` may be the name of an installed model (``"default"``, ``"ferplus"``; see
    ``ferkit models``), a run folder, a bundle folder, an export folder (from ``ferkit
    export``), or a ``.keras``/``.onnx``/``.tflite`` file. ``threads``: threads of one
    ONNX Runtime or LiteRT call (default: one per core; a server that runs calls in
    parallel gives each fewer).

    Raises:
        ValueError: unknown backend.
        FileNotFoundError: the model has no file for that runtime (the message says how
            to export one).
        ChecksumError: a bundled file does not match its checksum.
        ModelLoadError: the model file is damaged, or its outputs disagree with
            ``labels.json``.
    """
    from ferkit.models.folder import (
        load_model,
        resolve_model,
        verify_or_warn,
    )

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    model = resolve_model(model)
    if model is not None and not Path(model).exists():
        raise FileNotFoundError(f"{model}: no such model file or folder")
    model_suffixes = (".keras", ".h5", ".onnx", ".tflite")
    if model is not None and Path(model).is_file() and Path(model).suffix not in model_suffixes:
        raise ValueError(
            f"{model}: not a model file; give a .keras, .onnx or .tflite file, or a run, "
            "bundle or export folder"
        )
    folder = _model_folder(model)
    given_file = Path(model) if model is not None and Path(model).is_file() else None
    if given_file is not None and given_file.suffix in (".onnx", ".tflite"):
        if not (backend.startswith("openvino") and given_file.suffix == ".onnx"):
            backend = {".onnx": "onnx", ".tflite": "tflite"}[given_file.suffix]  # the file decides
        file = given_file
    else:
        names = _runtime_files()
        if backend == "auto":
            backend = _auto_backend(folder)
        if backend == "keras":
            return load_model(model, verify=verify)
        file = folder / names[backend]
        if not file.is_file():
            export = "--format tflite" if backend in TFLITE_BACKENDS else "--format onnx"
            if backend.endswith("-int8"):
                export += " --quantize int8 --calibration-data PREPARED_DIR"
            raise FileNotFoundError(
                f"{file}: missing; export the model to a folder of its own and load that: "
                f"'ferkit export --model {folder} {export} --out EXPORT_DIR', then "
                "--model EXPORT_DIR"
            )
    if verify:
        verify_or_warn(folder)
    classes, temperature = read_metadata(folder)
    if backend in TFLITE_BACKENDS:
        return TFLiteModel(file, classes, temperature, threads=threads)
    if backend in OPENVINO_FILES:
        return OpenVinoModel(file, classes, temperature, threads=threads)
    return OnnxModel(file, classes, temperature, threads=threads)

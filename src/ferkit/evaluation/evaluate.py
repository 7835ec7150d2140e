"""``ferkit evaluate``: metrics, plots and a self-contained HTML report for one model on one
dataset split.

The data is a prepared folder or any raw source ``ferkit prepare`` reads (prepared on the
fly, with face detection for photos). Faces the detector missed count as errors in a
separate end-to-end accuracy, so a weak detector cannot hide. Class names are matched
through the synonym table; faces of classes the model does not know are reported apart,
and the metrics say which classes they cover.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.faces import DEFAULT_DETECTOR

logger = logging.getLogger(__name__)


@dataclass
class EvalData:
    """Faces to evaluate on, with what was left out of them."""

    images: np.ndarray
    labels: np.ndarray  # indices into ``classes``
    paths: list[str]
    classes: list[str]
    split: str
    source: str
    skipped: list[dict[str, Any]] = field(default_factory=list)
    prepared_here: bool = False  # a raw source prepared for this evaluation

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        digest.update(json.dumps(self.classes).encode())
        return "sha256:" + digest.hexdigest()


def load_eval_data(
    data: str | os.PathLike[str],
    split: str | None = None,
    *,
    faces: str = "auto",
    detector: str = DEFAULT_DETECTOR,
    image_shape: tuple[int, int, int] = (48, 48, 1),
    progress: bool = True,
) -> EvalData:
    """Read a prepared folder, or prepare a raw source on the fly, and pick the split.

    The split is ``split`` when given, else ``test``, else the whole source when it has no
    splits of its own.

    Raises:
        FileNotFoundError: ``data`` does not exist.
        ValueError: the split is missing (the message lists those present) or the
            prepared faces do not have the model's input shape.
    """
    from ferkit.data.dataset import PreparedDataset
    from ferkit.data.prepare import PrepareConfig, prepare

    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: no such dataset folder or file")
    scratch = None
    try:
        if (data / "manifest.json").is_file():
            prepared = PreparedDataset(data)
        else:
            scratch = Path(tempfile.mkdtemp(prefix="ferkit-eval-"))
            size, _, channels = image_shape
            config = PrepareConfig(
                faces=faces,
                detector=detector,
                size=size,
                channels=channels,
                val_fraction=0.0,
                test_fraction=0.0,
            )
            prepared = PreparedDataset(
                prepare(data, scratch / "prepared", config, progress=progress).out_dir
            )
        manifest = prepared.manifest
        available = list(prepared.splits)
        # A source without splits of its own, prepared without carving val/test, is
        # evaluated whole (prepare puts all of it in "train").
        whole_source = available == ["train"] and not manifest["split_origin"].startswith("source")
        if split is None:
            if "test" in available:
                split = "test"
            elif whole_source:
                split = "train"
            else:
                raise ValueError(
                    f"{data}: has no test split; choose one with --split ({', '.join(available)})"
                )
        if split not in available:
            raise ValueError(f"{data}: no split {split!r}; it has {', '.join(available)}")
        chosen = prepared.split(split)
        if tuple(chosen.images.shape[1:]) != tuple(image_shape):
            raise ValueError(
                f"{data}: faces are {chosen.images.shape[1:]} but the model takes {image_shape}; "
                "prepare the data again with matching --size and --channels"
            )
        skipped = [
            entry
            for entry in manifest.get("skipped", [])
            if whole_source or entry.get("split") in (split, None)
        ]
        return EvalData(
            images=chosen.images,
            labels=chosen.labels,
            paths=[str(p) for p in chosen.paths],
            classes=list(chosen.classes),
            split="all" if whole_source else split,
            source=str(manifest.get("source", data)),
            skipped=skipped,
            prepared_here=scratch is not None,
        )
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def map_classes(
    data_classes: list[str], model_classes: list[str]
) -> tuple[dict[int, int], list[str]]:
    """Data class index -> model class index, through the synonym table.

    Returns:
        The mapping, and the data classes the model does not know.
    """
    from ferkit.classes import canonical_name

    model_index = {canonical_name(name): index for index, name in enumerate(model_classes)}
    mapping, unknown = {}, []
    for index, name in enumerate(data_classes):
        canonical = canonical_name(name)
        if canonical in model_index:
            mapping[index] = model_index[canonical]
        else:
            unknown.append(name)
    return mapping, unknown


def compute_metrics(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str], n_bins: int = 15
) -> dict[str, Any]:
    """Classification metrics over the classes present in ``labels``.

    Args:
        labels: true class indices into ``classes`` (the model's classes).
        probabilities: ``(N, len(classes))`` predicted probabilities.

    Returns:
        accuracy, balanced accuracy, macro-F1 (both over the classes present), top-2
        accuracy, accuracy with predictions restricted to the classes present, per-class
        precision/recall/F1/support, the confusion matrix (rows: classes present,
        columns: all model classes) and the expected calibration error.
    """
    from ferkit.calibration import expected_calibration_error
    from ferkit.metrics import confusion_matrix, per_class_scores

    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(labels) == 0:
        raise ValueError("no faces to compute metrics on")
    predicted = probabilities.argmax(axis=1)
    present = sorted(int(c) for c in np.unique(labels))
    full = confusion_matrix(labels, predicted, len(classes))
    scores = {name: values[present] for name, values in per_class_scores(full).items()}
    precision, recall, f1, support = (scores[k] for k in ("precision", "recall", "f1", "support"))
    top2 = np.argsort(-probabilities, axis=1)[:, :2]
    restricted = np.asarray(present)[probabilities[:, present].argmax(axis=1)]
    matrix = full[present]
    return {
        "faces": len(labels),
        "accuracy": float(np.mean(predicted == labels)),
        "balanced_accuracy": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1)),
        "top2_accuracy": float(np.mean((top2 == labels[:, None]).any(axis=1))),
        "accuracy_restricted_to_covered_classes": float(np.mean(restricted == labels)),
        "ece": float(expected_calibration_error(probabilities, labels, n_bins)),
        "per_class": {
            classes[c]: {
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for c, p, r, f, s in zip(present, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": {
            "rows": [classes[c] for c in present],
            "columns": list(classes),
            "counts": matrix.tolist(),
        },
    }


def tta_views(faces: np.ndarray, shift: int = 2) -> list[np.ndarray]:
    """The faces, flipped, and shifted by ``shift`` pixels up/down/left/right (edge-padded)."""
    padded = np.pad(faces, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    height, width = faces.shape[1:3]
    views = [faces, faces[:, :, ::-1]]
    for dy, dx in ((0, shift), (2 * shift, shift), (shift, 0), (shift, 2 * shift)):
        views.append(padded[:, dy : dy + height, dx : dx + width])
    return views


def predict_tta(classifier: Any, faces: np.ndarray, progress: bool = False) -> np.ndarray:
    """Probabilities averaged over :func:`tta_views`."""
    from ferkit.outputs import progress_bar

    views = tta_views(faces)
    bar = progress_bar(views, desc="TTA views", unit="view", disable=not progress, leave=False)
    return np.mean([classifier.predict_proba(view) for view in bar], axis=0)


def grad_cam(keras_model: Any, faces: np.ndarray, class_indices: np.ndarray) -> np.ndarray:
    """Grad-CAM heatmaps in [0, 1], one ``(H, W)`` map per face, for the given classes.

    Uses the last layer of the model with a spatial (4-D) output.
    """
    import keras
    import tensorflow as tf

    target = next(
        layer
        for layer in reversed(keras_model.layers)
        if len(getattr(layer, "output", np.zeros(0)).shape) == 4
        and not isinstance(layer, keras.layers.InputLayer)
        and layer.name != "augmentation"
    )
    probe = keras.Model(keras_model.inputs, [target.output, keras_model.output])
    inputs = tf.convert_to_tensor(np.asarray(faces, dtype=np.float32))
    with tf.GradientTape() as tape:
        features, logits = probe(inputs, training=False)
        score = tf.gather(logits, np.asarray(class_indices), axis=1, batch_dims=1)
    gradients = tape.gradient(score, features)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[..., None]
    cam = tf.image.resize(cam, faces.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)


def _file_sha256(path: Path) -> str | None:
    from ferkit.models.folder import sha256_file

    return "sha256:" + sha256_file(path) if path.is_file() else None


def evaluate(
    model: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] = "",
    out: str | os.PathLike[str] = "results/evaluation",
    *,
    split: str | None = None,
    tta: bool = False,
    faces: str = "auto",
    detector: str = DEFAULT_DETECTOR,
    backend: str = "auto",
    saliency_per_class: int = 2,
    mistakes: int = 24,
    corruptions: bool = False,
    votes: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a model (bundled when ``None``) on a dataset and write the results.

    Writes to ``out``: ``metrics.json``, ``classification_report.csv``,
    ``predictions.csv``, ``plots/*.png`` and ``report.html``; ``out`` must not hold
    results already unless ``overwrite`` (see :mod:`ferkit.outputs`).

    With ``corruptions``, also the robustness benchmark
    (:func:`ferkit.evaluation.robustness.robustness`: every shift at every severity) in
    ``metrics["robustness"]``, ``robustness.csv`` and ``plots/robustness.png``. With
    ``votes`` (a dataset prepared with soft labels holding copies of the faces, such as
    FER+ for FER2013), also the accuracy against those votes' plurality labels, in
    ``metrics["votes"]``.

    Returns:
        The metrics (as in ``metrics.json``).
    """
    from ferkit.outputs import output_folder

    # Read (and refused if unfit) before any work, not after it.
    vote_data = None if votes is None else (votes, *_vote_splits(votes))
    inputs = [data, *([votes] if votes is not None else [])]
    with output_folder(out, "evaluate", overwrite=overwrite, inputs=inputs) as staging:
        return _evaluate_into(
            staging, model, data, split, tta, faces, detector, backend, saliency_per_class,
            mistakes, progress, corruptions, vote_data,
        )  # fmt: skip


def _evaluate_into(
    out: Path,
    model: str | os.PathLike[str] | None,
    data: str | os.PathLike[str],
    split: str | None,
    tta: bool,
    faces: str,
    detector: str,
    backend: str,
    saliency_per_class: int,
    mistakes: int,
    progress: bool,
    corruptions: bool = False,
    vote_data: tuple[Any, Any, list[Any]] | None = None,
) -> dict[str, Any]:
    from ferkit.inference.runtimes import load_classifier

    classifier = load_classifier(model, backend)
    evaluation = load_eval_data(
        data, split, faces=faces, detector=detector,
        image_shape=tuple(classifier.image_shape), progress=progress,
    )  # fmt: skip
    classes = classifier.classes
    mapping, unknown_classes = map_classes(evaluation.classes, classes)
    known = np.array([int(label) in mapping for label in evaluation.labels], dtype=bool)
    if not known.any():
        raise ValueError(
            f"{data}: none of its classes ({', '.join(evaluation.classes)}) is one the model "
            f"knows ({', '.join(classes)}), even through the synonym table"
        )
    images = evaluation.images[known]
    labels = np.array([mapping[int(label)] for label in evaluation.labels[known]])
    paths = [path for path, keep in zip(evaluation.paths, known, strict=True) if keep]
    probabilities = classifier.predict_proba(images, progress=progress)
    metrics = compute_metrics(labels, probabilities, classes)
    metrics["end_to_end"] = _end_to_end(evaluation, classes, probabilities, labels)
    metrics["classes"] = _class_coverage(classes, evaluation.classes, mapping, unknown_classes)
    metrics["faces_of_unknown_classes"] = _unknown_class_faces(
        classifier, evaluation, known, unknown_classes
    )
    metrics.update(_provenance(classifier, evaluation))
    if tta:
        metrics["tta"] = _tta_metrics(classifier, images, labels, metrics, progress)
    if vote_data is not None:
        metrics["votes"] = _votes_metrics(vote_data, images, labels, paths, classes, probabilities)
    if corruptions:
        from ferkit.evaluation.robustness import robustness, write_robustness_csv

        metrics["robustness"] = robustness(classifier, images, labels, progress=progress)
        write_robustness_csv(metrics["robustness"], out / "robustness.csv")
    _write_tables(out, metrics, paths, labels, probabilities, classes)
    figures = _write_plots(
        out / "plots", model, classifier, metrics, images, labels, probabilities, classes,
        saliency_per_class, mistakes, progress,
    )  # fmt: skip
    metrics["plots"] = {name: str(path.relative_to(out)) for name, path in figures.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "report.html").write_text(render_report(metrics, figures))
    return metrics


def _vote_splits(votes: str | os.PathLike[str]) -> tuple[Any, list[Any]]:
    """The dataset given with ``--votes`` and its splits, each with vote distributions.

    Raises:
        FileNotFoundError: not a prepared dataset.
        ValueError: a split without vote distributions.
    """
    from ferkit.data.dataset import PreparedDataset

    other = PreparedDataset(votes)
    splits = [other.split(name) for name in other.splits]
    for split in splits:
        if split.soft_labels is None:
            raise ValueError(
                f"--votes {votes}: its {split.name} split has no vote distributions; give a "
                "dataset prepared with --soft-labels (FER+)"
            )
    return other, splits


def _votes_metrics(
    vote_data: tuple[Any, Any, list[Any]],
    images: np.ndarray,
    labels: np.ndarray,
    paths: list[str],
    classes: list[str],
    probabilities: np.ndarray,
) -> dict[str, Any]:
    """Accuracy against a second set of labels for the same faces: the plurality of the
    votes of their copies in the ``--votes`` dataset (FER+ for FER2013), over the model's
    classes; ``vote_data`` is its path, dataset and splits (:func:`_vote_splits`)."""
    from ferkit.data.dataset import Split
    from ferkit.data.matching import matched_votes

    votes, other, splits = vote_data
    faces = Split("evaluated", images, labels, np.asarray(paths), list(classes))
    try:
        found = matched_votes(faces, splits)
    except ValueError as error:
        raise ValueError(f"--votes {votes}: {error}") from None
    matched = np.isfinite(found[:, 0])
    if not matched.any():
        raise ValueError(
            f"--votes {votes}: none of the evaluated faces has a copy there; give a dataset of "
            "the same faces prepared the same way (FER+ with --faces crop for FER2013)"
        )
    # A tie between the top classes has no plurality label (as ferkit prepare's rule).
    top = found.max(axis=1, keepdims=True)
    tied = matched & ((np.abs(found - top) < 1e-6).sum(axis=1) > 1)
    scored = matched & ~tied
    vote_labels = found[scored].argmax(axis=1)
    predicted = probabilities[scored].argmax(axis=1)
    source = str(other.manifest.get("source", votes))
    return {
        "source": source,
        "name": Path(source).name,
        "faces": len(labels),
        "faces_matched": int(matched.sum()),
        "faces_tied": int(tied.sum()),
        "faces_scored": int(scored.sum()),
        "accuracy": float(np.mean(predicted == vote_labels)),
        "labels_agree_with_votes": float(np.mean(labels[scored] == vote_labels)),
        "mean_probability_of_votes": float(
            np.mean(np.sum(found[matched] * probabilities[matched], axis=1))
        ),
    }


def _unknown_class_faces(
    classifier: Any, evaluation: EvalData, known: np.ndarray, unknown_classes: list[str]
) -> dict[str, Any]:
    """Faces of classes the model does not know: reported apart, never silently dropped."""
    if known.all():
        return {}
    probabilities = classifier.predict_proba(evaluation.images[~known])
    found = {}
    for name in unknown_classes:
        members = np.array(
            [evaluation.classes[int(label)] == name for label in evaluation.labels[~known]]
        )
        picked = Counter(classifier.classes[i] for i in probabilities[members].argmax(axis=1))
        found[name] = {"faces": int(members.sum()), "predicted_as": dict(picked)}
    return found


def _end_to_end(
    evaluation: EvalData, classes: list[str], probabilities: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Accuracy counting as errors the items of a class the model knows whose face was not
    found (even when no face of that class was found at all)."""
    from ferkit.classes import canonical_name

    known_names = {canonical_name(name) for name in classes}
    no_face = [
        entry
        for entry in evaluation.skipped
        if entry["kind"] == "no_face" and canonical_name(entry.get("label") or "") in known_names
    ]
    correct = int((probabilities.argmax(axis=1) == labels).sum())
    return {
        "accuracy": correct / (len(labels) + len(no_face)),
        "faces_evaluated": len(labels),
        "no_face_found": len(no_face),
    }


def _class_coverage(
    classes: list[str], data_classes: list[str], mapping: dict[int, int], unknown: list[str]
) -> dict[str, Any]:
    covered = [classes[index] for index in sorted(set(mapping.values()))]
    return {
        "model": classes,
        "data": data_classes,
        "covered": covered,
        "model_classes_absent_from_data": [c for c in classes if c not in covered],
        "data_classes_unknown_to_model": unknown,
        "note": "accuracy, balanced accuracy, macro-F1 and per-class figures cover the "
        "'covered' classes; predictions may still be any model class",
    }


def _provenance(classifier: Any, evaluation: EvalData) -> dict[str, Any]:
    """What was evaluated: the skipped items, the model file and the data."""
    return {
        "skipped": {
            "counts": dict(Counter(entry["kind"] for entry in evaluation.skipped)),
            "items": evaluation.skipped,
        },
        "model": {
            "source": str(classifier.source),
            "sha256": _file_sha256(Path(classifier.source)),
            "runtime": type(classifier).__name__,
            "temperature": classifier.temperature,
        },
        "data": {
            "source": evaluation.source,
            "split": evaluation.split,
            "hash": evaluation.content_hash(),
            "prepared_here": evaluation.prepared_here,
        },
    }


def _tta_metrics(
    classifier: Any, images: np.ndarray, labels: np.ndarray, metrics: dict[str, Any], progress: bool
) -> dict[str, Any]:
    tta_metrics = compute_metrics(
        labels, predict_tta(classifier, images, progress=progress), classifier.classes
    )
    return {
        "views": "identity, horizontal flip, 4 shifts of 2 px",
        "accuracy": tta_metrics["accuracy"],
        "macro_f1": tta_metrics["macro_f1"],
        "accuracy_gain": tta_metrics["accuracy"] - metrics["accuracy"],
    }


def _write_tables(out, metrics, paths, labels, probabilities, classes) -> None:
    with open(out / "classification_report.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for name, row in metrics["per_class"].items():
            writer.writerow(
                [name, *(f"{row[k]:.4f}" for k in ("precision", "recall", "f1")), row["support"]]
            )
        writer.writerow(
            ["macro avg", "", metrics["balanced_accuracy"], metrics["macro_f1"], metrics["faces"]]
        )
        writer.writerow(["accuracy", "", "", metrics["accuracy"], metrics["faces"]])
    with open(out / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", "confidence", *[f"p_{c}" for c in classes]])
        for path, label, row in zip(paths, labels, probabilities, strict=True):
            writer.writerow(
                [path, classes[label], classes[int(row.argmax())], f"{row.max():.4f}",
                 *(f"{p:.4f}" for p in row)]
            )  # fmt: skip


def _write_plots(
    folder, model, classifier, metrics, images, labels, probabilities, classes,
    saliency_per_class, n_mistakes, progress=False,
) -> dict[str, Path]:  # fmt: skip
    """Draw and save every figure of the report, with a progress bar over them; without
    Matplotlib (the core install), none, with the reason in ``metrics["plots_skipped"]``."""
    from ferkit import plots
    from ferkit.extras import has_matplotlib, missing_extra
    from ferkit.outputs import progress_bar

    if not has_matplotlib():
        reason = str(missing_extra("Matplotlib", "report", "drawing the report's plots"))
        logger.warning("skipping plots: %s", reason)
        metrics["plots_skipped"] = reason
        return {}
    folder.mkdir(exist_ok=True)

    matrix = metrics["confusion_matrix"]
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probabilities[wrong].max(axis=1))][:n_mistakes]

    def mistakes_figure() -> Any:
        if not len(wrong):
            return None
        titles = [
            f"{classes[predicted[i]]} {probabilities[i].max():.0%}\n(true {classes[labels[i]]})"
            for i in wrong
        ]
        return plots.plot_face_grid(images[wrong], titles, title="most confident mistakes")

    history = _history_file(model)
    makers = {
        "confusion_counts": lambda: plots.plot_confusion_matrix(
            np.array(matrix["counts"]), matrix["rows"], matrix["columns"]
        ),
        "confusion_normalised": lambda: plots.plot_confusion_matrix(
            np.array(matrix["counts"]), matrix["rows"], matrix["columns"], normalize=True
        ),
        "per_class_f1": lambda: plots.plot_per_class_f1(metrics["per_class"]),
        "reliability": lambda: plots.plot_reliability(probabilities, labels, metrics["ece"]),
        "training_curves": lambda: plots.plot_training_curves(history) if history else None,
        "confident_mistakes": mistakes_figure,
        "robustness": lambda: (
            plots.plot_robustness(metrics["robustness"]) if "robustness" in metrics else None
        ),
        "saliency": lambda: _saliency_figure(
            model, classifier, images, labels, predicted, classes, saliency_per_class
        ),
    }
    written = {}
    bar = progress_bar(makers.items(), desc="plots", unit="plot", disable=not progress, leave=False)
    for name, make in bar:
        bar.set_postfix_str(name)
        figure = make()
        if figure is None:
            continue
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=100)
        written[name] = path
    return written


def _history_file(model: Any) -> Path | None:
    from ferkit.models.folder import DEFAULT_MODEL_DIR, resolve_model

    resolved = resolve_model(model)
    folder = DEFAULT_MODEL_DIR if resolved is None else resolved
    folder = folder if folder.is_dir() else folder.parent
    history = folder / "history.csv"
    return history if history.is_file() else None


def _saliency_figure(model, classifier, images, labels, predicted, classes, per_class) -> Any:
    """Grad-CAM for the first ``per_class`` faces of each class (needs the Keras model:
    the one evaluated when it ran on Keras, else the one beside the exported files)."""
    from ferkit import plots
    from ferkit.models.folder import LoadedModel, load_model

    if per_class <= 0:
        return None
    try:
        loaded = classifier if isinstance(classifier, LoadedModel) else load_model(model)
        keras_model = loaded.model
    except FileNotFoundError:
        logger.warning("no Keras model beside %s: skipping saliency maps", model)
        return None
    except ImportError as error:  # the core install: Grad-CAM needs Keras (ferkit[train])
        logger.warning("skipping saliency maps: %s", error)
        return None
    chosen = [
        i for c in sorted(set(labels.tolist())) for i in np.flatnonzero(labels == c)[:per_class]
    ]
    heatmaps = grad_cam(keras_model, images[chosen], predicted[chosen])
    titles = [f"true {classes[labels[i]]}\npred {classes[predicted[i]]}" for i in chosen]
    return plots.plot_saliency(images[chosen], heatmaps, titles)


def _embed(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(path.stem)}">'


def render_report(metrics: dict[str, Any], figures: dict[str, Path]) -> str:
    """One self-contained HTML page: summary, coverage, per-class table, plots, skipped."""
    escape = html.escape
    summary_rows = [
        ("faces evaluated", metrics["faces"]),
        ("accuracy", f"{metrics['accuracy']:.4f}"),
        ("balanced accuracy", f"{metrics['balanced_accuracy']:.4f}"),
        ("macro-F1", f"{metrics['macro_f1']:.4f}"),
        ("top-2 accuracy", f"{metrics['top2_accuracy']:.4f}"),
        ("expected calibration error", f"{metrics['ece']:.4f}"),
        (
            "end-to-end accuracy (missed faces count as errors)",
            f"{metrics['end_to_end']['accuracy']:.4f} "
            f"({metrics['end_to_end']['no_face_found']} faces not found)",
        ),
    ]
    if "tta" in metrics:
        summary_rows.append(
            ("accuracy with test-time augmentation",
             f"{metrics['tta']['accuracy']:.4f} (gain {metrics['tta']['accuracy_gain']:+.4f})")
        )  # fmt: skip
    if "votes" in metrics:
        summary_rows.append(
            (f"accuracy against the plurality of the votes of {metrics['votes']['source']} "
             f"for the same faces ({metrics['votes']['faces_scored']} of "
             f"{metrics['votes']['faces']} faces; {metrics['votes']['faces_tied']} with tied "
             "votes left out)",
             f"{metrics['votes']['accuracy']:.4f}")
        )  # fmt: skip
    robustness_section = ""
    if "robustness" in metrics:
        from ferkit.evaluation.robustness import format_robustness

        report = metrics["robustness"]
        summary_rows.append(
            ("robustness mean accuracy (every shift, every severity)",
             f"{report['mean']['accuracy']:.4f} (ECE {report['mean']['ece']:.4f})")
        )  # fmt: skip
        robustness_section = (
            "<h2>Robustness</h2><p>Accuracy on the same faces after each shift at three "
            "severities; <i>agree</i> is the share of faces keeping their clean label.</p>"
            f"<pre>{escape(format_robustness(report))}</pre>"
        )
    per_class = "".join(
        f"<tr><td>{escape(name)}</td><td>{row['precision']:.3f}</td><td>{row['recall']:.3f}</td>"
        f"<td>{row['f1']:.3f}</td><td>{row['support']}</td></tr>"
        for name, row in metrics["per_class"].items()
    )
    coverage = metrics["classes"]
    notes = [f"Metrics cover: {', '.join(coverage['covered'])}."]
    if coverage["model_classes_absent_from_data"]:
        notes.append(
            "The model also predicts classes absent from the data: "
            + ", ".join(coverage["model_classes_absent_from_data"])
            + f" (accuracy with predictions restricted to the covered classes: "
            f"{metrics['accuracy_restricted_to_covered_classes']:.4f})."
        )
    for name, info in metrics["faces_of_unknown_classes"].items():
        notes.append(
            f"{info['faces']} faces of class '{escape(name)}', which the model does not know, "
            f"were left out of the metrics; it called them {escape(str(info['predicted_as']))}."
        )
    skipped = metrics["skipped"]["items"]
    skipped_rows = "".join(
        f"<tr><td>{escape(str(s.get('path')))}</td><td>{escape(str(s.get('kind')))}</td>"
        f"<td>{escape(str(s.get('reason')))}</td></tr>"
        for s in skipped[:500]
    )
    plots = "".join(
        f"<figure><figcaption>{escape(name.replace('_', ' '))}</figcaption>{_embed(path)}</figure>"
        for name, path in figures.items()
    )
    if "plots_skipped" in metrics:
        plots = f"<p>No plots: {escape(metrics['plots_skipped'])}.</p>"
    summary = "".join(
        f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in summary_rows
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ferkit evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
figure {{ display: inline-block; margin: 1em; vertical-align: top; }}
img {{ max-width: 100%; }}
code {{ background: #f3f3f3; padding: 1px 4px; }}
</style></head><body>
<h1>ferkit evaluation</h1>
<p>Model <code>{escape(metrics["model"]["source"])}</code> ({escape(metrics["model"]["runtime"])},
{escape(str(metrics["model"]["sha256"]))})<br>
Data <code>{escape(metrics["data"]["source"])}</code>, split <b>{escape(metrics["data"]["split"])}</b>
({escape(metrics["data"]["hash"])})</p>
<h2>Summary</h2><table>{summary}</table>
<h2>Classes</h2><p>{"<br>".join(notes)}</p>
<h2>Per class</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{per_class}</table>
{robustness_section}
<h2>Plots</h2>{plots}
<h2>Skipped ({len(skipped)})</h2>
<table><tr><th>item</th><th>kind</th><th>reason</th></tr>{skipped_rows}</table>
</body></html>
"""

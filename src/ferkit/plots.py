"""Evaluation plots. Each takes ``ax=None`` (or draws its own grid) and returns the figure;
nothing opens a window."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def subplots(*grid: int, figsize: tuple[float, float], **options: Any) -> tuple[Any, Any]:
    """A new figure and its axes. Outside a notebook it is made without pyplot, so nothing
    process-wide changes (no backend is chosen, no figure stays open: a script or a
    server can draw from any thread); inside Jupyter it is pyplot's, which the notebook
    shows inline."""
    import sys

    from ferkit.extras import has_matplotlib, missing_extra

    if not has_matplotlib():
        raise missing_extra("Matplotlib", "report", "a plot")
    if "ipykernel" in sys.modules:
        import matplotlib.pyplot as plt

        return plt.subplots(*grid, figsize=figsize, **options)
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **options)


def _figure(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    if ax is None:
        fig, ax = subplots(figsize=size)
        return fig, ax
    return ax.figure, ax


def plot_confusion_matrix(
    matrix: np.ndarray,
    row_classes: list[str],
    column_classes: list[str],
    normalize: bool = False,
    ax: Any = None,
) -> Any:
    """Counts, or rows normalised to recall, with the value in every cell."""
    matrix = np.asarray(matrix, dtype=float)
    shown = matrix
    if normalize:
        totals = matrix.sum(axis=1, keepdims=True)
        shown = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    fig, ax = _figure(ax, (1.0 + 0.8 * len(column_classes), 1.0 + 0.7 * len(row_classes)))
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(column_classes)), column_classes, rotation=45, ha="right")
    ax.set_yticks(range(len(row_classes)), row_classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else " (counts)"))
    threshold = shown.max() / 2 if shown.size else 0
    for (row, column), value in np.ndenumerate(shown):
        text = f"{value:.2f}" if normalize else f"{int(value)}"
        color = "white" if value > threshold else "black"
        ax.text(column, row, text, ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    return fig


def plot_per_class_f1(per_class: dict[str, dict[str, float]], ax: Any = None) -> Any:
    """Horizontal bars of F1 per class, with precision and recall as markers."""
    names = list(per_class)
    fig, ax = _figure(ax, (6, 0.5 * len(names) + 1.5))
    positions = np.arange(len(names))
    ax.barh(positions, [per_class[n]["f1"] for n in names], color="#4c72b0", label="F1")
    ax.scatter([per_class[n]["precision"] for n in names], positions, marker="|", s=200,
               color="black", label="precision")  # fmt: skip
    ax.scatter([per_class[n]["recall"] for n in names], positions, marker="x", color="#dd8452",
               label="recall")  # fmt: skip
    ax.set_yticks(positions, [f"{n} ({per_class[n]['support']})" for n in names])
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.set_title("per-class F1 (support in brackets)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def reliability_bins(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, accuracy, count."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / np.maximum(counts, 1)
    accuracy = np.bincount(index, weights=correct, minlength=n_bins) / np.maximum(counts, 1)
    return mean_conf, accuracy, counts


def plot_reliability(
    probabilities: np.ndarray, labels: np.ndarray, ece: float | None = None, ax: Any = None
) -> Any:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    mean_conf, accuracy, counts = reliability_bins(probabilities, labels)
    fig, ax = _figure(ax, (5, 5))
    used = counts > 0
    width = 1 / len(counts)
    centers = (np.arange(len(counts)) + 0.5) * width
    ax.bar(centers[used], accuracy[used], width=width * 0.9, color="#4c72b0", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(mean_conf[used], accuracy[used], "o", color="#dd8452", label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    title = "reliability diagram"
    ax.set_title(title + (f" (ECE {ece:.3f})" if ece is not None else ""))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_training_curves(history_csv: str | os.PathLike[str]) -> Any:
    """Loss and accuracy per epoch, train against validation, from a run's history.csv."""
    import csv

    with open(history_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    drawn = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
    history = {
        name: np.array([float(row[name] or "nan") for row in rows])
        for name in drawn
        if rows and name in rows[0]
    }
    fig, axes = subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for column, style in ((metric, "-"), (f"val_{metric}", "--")):
            if column in history:
                ax.plot(history["epoch"], history[column], style, label=column)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_face_grid(
    faces: np.ndarray,
    titles: list[str],
    columns: int = 8,
    title: str = "",
    heatmaps: np.ndarray | None = None,
) -> Any:
    """A grid of face crops with a caption each (mistakes, samples per class), with
    ``heatmaps`` in [0, 1] overlaid when given (saliency)."""
    count = max(1, len(faces))
    rows = (count + columns - 1) // columns
    fig, axes = subplots(rows, columns, figsize=(1.7 * columns, 2.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for index, (ax, face, caption) in enumerate(zip(axes.ravel(), faces, titles, strict=False)):
        ax.imshow(face.squeeze(), cmap="gray" if face.shape[-1] == 1 else None, vmin=0, vmax=255)
        if heatmaps is not None:
            ax.imshow(heatmaps[index], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(caption, fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_saliency(
    faces: np.ndarray, heatmaps: np.ndarray, titles: list[str], columns: int = 6
) -> Any:
    """Faces with their Grad-CAM heatmaps overlaid."""
    return plot_face_grid(
        faces,
        titles,
        columns,
        title="Grad-CAM: where the model looked for its predicted class",
        heatmaps=heatmaps,
    )


def plot_comparison(table: Any, metrics: list[str]) -> Any:
    """Grouped bars: one group per metric, one bar per evaluation."""
    fig, ax = subplots(figsize=(1.6 * len(metrics) + 2, 4))
    width = 0.8 / max(1, len(table))
    for offset, (name, row) in enumerate(table.iterrows()):
        positions = np.arange(len(metrics)) + offset * width
        ax.bar(positions, [row.get(m, np.nan) for m in metrics], width=width, label=str(name))
    ax.set_xticks(np.arange(len(metrics)) + width * (len(table) - 1) / 2, metrics)
    ax.set_ylim(0, 1)
    ax.set_title("evaluations compared")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_robustness(report: dict[str, Any], ax: Any = None) -> Any:
    """Accuracy under each shift of the robustness benchmark: one bar per severity, with
    the clean accuracy and the mean over all shifts as lines."""
    fig, ax = _figure(ax, (9, 0.45 * len(report["per_shift"]) + 1.8))
    names = list(report["per_shift"])
    positions = np.arange(len(names))
    height = 0.27
    shades = ("#9ecae1", "#4292c6", "#08519c")
    for index, severity in enumerate(report["severities"]):
        values = [
            next(
                row["accuracy"]
                for row in report["conditions"]
                if row["shift"] == name and row["severity"] == severity
            )
            for name in names
        ]
        ax.barh(
            positions + (index - 1) * height, values, height=height, color=shades[index % 3],
            label=f"severity {severity}",
        )  # fmt: skip
    ax.axvline(report["clean"]["accuracy"], color="#222", linestyle="--", label="clean")
    ax.axvline(report["mean"]["accuracy"], color="#d62728", label="mean over shifts")
    ax.set_yticks(positions, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.set_title(
        f"robustness: clean {report['clean']['accuracy']:.1%}, "
        f"mean over shifts {report['mean']['accuracy']:.1%}"
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig

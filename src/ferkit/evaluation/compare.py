"""``ferkit compare``: several evaluations side by side (table, CSV, Markdown, plot)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

COMPARED_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "top2_accuracy",
    "end_to_end_accuracy",
    "ece",
    "tta_accuracy",
    "robustness_mean_accuracy",
    "votes_accuracy",
)


def load_result(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The main figures of one ``ferkit evaluate`` output folder.

    Raises:
        FileNotFoundError: the folder has no ``metrics.json``.
    """
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; give folders written by 'ferkit evaluate'")
    metrics = json.loads(path.read_text())
    return {
        "faces": metrics["faces"],
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro_f1"],
        "top2_accuracy": metrics["top2_accuracy"],
        "end_to_end_accuracy": metrics["end_to_end"]["accuracy"],
        "ece": metrics["ece"],
        "tta_accuracy": metrics.get("tta", {}).get("accuracy"),
        "robustness_mean_accuracy": metrics.get("robustness", {}).get("mean", {}).get("accuracy"),
        "votes_accuracy": metrics.get("votes", {}).get("accuracy"),
        "classes": ",".join(metrics["classes"]["covered"]),
        "model": metrics["model"]["source"],
        "data": f"{metrics['data']['source']} [{metrics['data']['split']}]",
    }


def compare(
    folders: list[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
) -> Any:
    """A DataFrame with one row per evaluation (indexed by folder name); with ``out``,
    also ``comparison.csv``, ``comparison.md`` and ``comparison.png`` there (``out`` must
    not hold results already unless ``overwrite``; see :mod:`ferkit.outputs`)."""
    from ferkit.extras import import_pandas

    pd = import_pandas("ferkit compare")
    from ferkit.outputs import output_folder
    from ferkit.plots import plot_comparison

    if not folders:
        raise ValueError("give at least one folder written by 'ferkit evaluate'")
    names = [Path(folder).name or str(folder) for folder in folders]
    if len(set(names)) < len(names):
        names = [str(folder) for folder in folders]
    table = pd.DataFrame([load_result(folder) for folder in folders], index=names)
    table.index.name = "evaluation"
    if out is not None:
        with output_folder(out, "compare", overwrite=overwrite, inputs=folders) as staging:
            table.to_csv(staging / "comparison.csv")
            (staging / "comparison.md").write_text(format_markdown(table) + "\n")
            shown = [m for m in COMPARED_METRICS if table[m].notna().any()]
            figure = plot_comparison(table, shown)
            figure.savefig(staging / "comparison.png", dpi=100)
    return table


def format_markdown(table: Any) -> str:
    """The comparison as a Markdown table (figures to 4 decimals)."""
    columns = ["faces", *COMPARED_METRICS, "classes"]
    lines = [
        "| evaluation | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, row in table.iterrows():
        cells = []
        for column in columns:
            value = row[column]
            if value is None:
                cells.append("")
            elif isinstance(value, float):
                cells.append("" if value != value else f"{value:.4f}")
            else:
                cells.append(str(value))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

"""
Title: Evaluate a model on a dataset
Description: Score the bundled model (or a run, bundle or export folder) on a prepared
    dataset: accuracy, macro-F1, per-class figures, calibration, and an HTML report.
Install: `pip install -e .` (the core install; with the `report` extra the report adds its
    plots, with the `train` extra Grad-CAM maps too).
Run: python examples/evaluate_model.py [--data PREPARED_OR_RAW] [--model MODEL] [--out DIR]

Without `--data` it draws a few cartoon faces per class (ferkit.data.synthetic) and
prepares them, so it runs anywhere in seconds; the figures then say how the model reads
drawings, not how it does on real faces. Give `--data data/prepared/fer2013 --split val`
for the real measure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ferkit import PrepareConfig, evaluate, prepare
from ferkit.data.synthetic import make_image_folder


def parse_args() -> argparse.Namespace:
    # The header's Description field, all its lines (up to Install:), as one paragraph.
    description = " ".join(__doc__.split("Description:")[1].split("\nInstall:")[0].split())
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", help="prepared dataset folder, or a raw source to prepare")
    parser.add_argument("--model", help="run, bundle or export folder (default: bundled)")
    parser.add_argument("--split", help="split to score (default: test)")
    parser.add_argument("--per-class", type=int, default=12, help="drawn faces per class")
    parser.add_argument("--out", help="evaluation folder to create (default: a temp folder)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="ferkit-example-") as scratch:
        scratch = Path(scratch)

        # Step 1: the data. A prepared folder (from `ferkit prepare`) is read as it is;
        # a raw source (FER2013's `val` folder, say) is prepared on the fly by evaluate()
        # and, having no splits of its own, scored whole. Without either, draw faces of
        # four expressions and prepare them: one sub-folder per class, under spellings
        # ("anger", "sadness", "Surprised"...) that ferkit maps to its class names.
        data = args.data
        if data is None:
            source = make_image_folder(scratch / "faces", per_class=args.per_class, seed=1)
            config = PrepareConfig(val_fraction=0.25, test_fraction=0.25, workers=1)
            data = prepare(source, scratch / "prepared", config, progress=False).out_dir

        # Step 2: evaluate. It writes metrics.json, classification_report.csv,
        # predictions.csv, plots/ and report.html into `out`, and returns the metrics.
        out = Path(args.out) if args.out else scratch / "evaluation"
        metrics = evaluate(args.model, data, out, split=args.split, progress=False)

        # Step 3: read the figures. They cover the classes the data holds (a model class
        # absent from the data is listed apart); `end_to_end` also counts faces the
        # detector missed in raw photos as errors.
        classes = metrics["classes"]
        print(f"model: {metrics['model']['source']} ({metrics['model']['runtime']})")
        print(f"data: {metrics['data']['source']}, split {metrics['data']['split']}")
        print(f"classes covered: {', '.join(classes['covered'])}")
        print(f"accuracy: {metrics['accuracy']:.4f}")
        print(f"balanced accuracy: {metrics['balanced_accuracy']:.4f}")
        print(f"macro-F1: {metrics['macro_f1']:.4f}")
        print(f"expected calibration error: {metrics['ece']:.4f}")
        print(f"{'class':<10} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>7}")
        for name, row in metrics["per_class"].items():
            print(
                f"{name:<10} {row['precision']:>9.3f} {row['recall']:>7.3f} "
                f"{row['f1']:>6.3f} {row['support']:>7}"
            )

        # Step 4: the same figures are in the folder, for scripts and for people.
        saved = json.loads((out / "metrics.json").read_text())
        assert saved["accuracy"] == metrics["accuracy"]
        if args.out:
            print(f"report: {out / 'report.html'}")
        else:
            print("(written to a temporary folder; --out DIR keeps metrics.json and report.html)")


if __name__ == "__main__":
    main()

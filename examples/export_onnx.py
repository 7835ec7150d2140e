"""
Title: Export a model to ONNX
Description: Export the bundled model (or a run) to an ONNX folder, load it with ONNX
    Runtime, check that it gives the Keras model's probabilities, and predict with it.
Install: `pip install -e '.[train]'` to export (TensorFlow, tf2onnx); the exported
    folder then loads with the core install alone.
Run: python examples/export_onnx.py [--model RUN_OR_BUNDLE] [--out DIR] [--faces N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import ferkit
from ferkit import EmotionRecognizer, load_classifier, load_model
from ferkit.data.synthetic import draw_face
from ferkit.images import resize_face
from ferkit.release.export import export_model

SAMPLE = Path(ferkit.__file__).resolve().parent / "assets" / "samples" / "justin.jpg"


def parse_args() -> argparse.Namespace:
    # The header's Description field, all its lines (up to Install:), as one paragraph.
    description = " ".join(__doc__.split("Description:")[1].split("\nInstall:")[0].split())
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", help="run, bundle folder or .keras file (default: bundled)")
    parser.add_argument("--out", help="export folder to create (default: a temp folder)")
    parser.add_argument("--faces", type=int, default=64, help="check faces to compare on")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="ferkit-example-") as scratch:
        out = Path(args.out) if args.out else Path(scratch) / "onnx"

        # Step 1: export (`ferkit export --format onnx`). The folder describes itself:
        # model.onnx, labels.json, calibration.json (the temperature), checksums.json and
        # export.json, which records the largest logit gap from Keras on check faces.
        export_model(args.model, "onnx", out)
        details = json.loads((out / "export.json").read_text())
        names = sorted(path.name for path in out.iterdir() if not path.name.startswith("."))
        print(f"exported {details['source_model']} to {out}: {', '.join(names)}")
        print(f"export.json: max |logit gap| {details['max_abs_logit_difference']:.2e}")

        # Step 2: load it on ONNX Runtime (no TensorFlow needed for this step), and the
        # Keras model it came from.
        onnx_model = load_classifier(out, backend="onnx")
        keras_model = load_model(args.model)
        size, _, channels = onnx_model.image_shape

        # Step 3: compare calibrated probabilities on faces: drawn ones, resized to the
        # model's input (any uint8 (N, H, W, C) crops would do, e.g. a prepared split).
        expressions = ["angry", "happy", "neutral", "sad", "surprise"]
        faces = np.stack(
            [
                resize_face(np.asarray(draw_face(expressions[i % 5], 64, seed=i)), size, channels)
                for i in range(args.faces)
            ]
        )
        gap = np.abs(onnx_model.predict_proba(faces) - keras_model.predict_proba(faces)).max()
        print(f"max |p_onnx - p_keras| on {len(faces)} faces: {gap:.2e}")

        # Step 4: predict from the exported folder, as `ferkit predict --model DIR` does.
        recognizer = EmotionRecognizer(model=out)
        for face in recognizer.predict(SAMPLE):
            print(f"{SAMPLE.name}: {face.label} (p={face.probabilities[face.label]:.2f})")
        if not args.out:
            print("(written to a temporary folder; --out DIR keeps the export)")


if __name__ == "__main__":
    main()

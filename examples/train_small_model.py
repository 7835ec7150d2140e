"""
Title: Train a small model from scratch
Description: The whole training pipeline in miniature: draw a dataset, prepare it, train
    a tiny CNN into a run folder, finish the run early, then load it and predict.
Install: `pip install -e '.[train]'` (TensorFlow and Keras).
Run: python examples/train_small_model.py [--per-class N] [--epochs N] [--out DIR]

The faces are cartoons (ferkit.data.synthetic), so it runs anywhere in seconds; for a
real model, prepare FER2013 and train with `ferkit train --config
configs/fer2013_default.yaml` (see the README).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from ferkit import (
    EmotionRecognizer,
    PrepareConfig,
    PreparedDataset,
    TrainConfig,
    load_classifier,
    load_model,
    prepare,
    train,
)
from ferkit.data.synthetic import draw_face, make_image_folder
from ferkit.models.config import AugmentConfig
from ferkit.training.finish import finish_now


def parse_args() -> argparse.Namespace:
    # The header's Description field, all its lines (up to Install:), as one paragraph.
    description = " ".join(__doc__.split("Description:")[1].split("\nInstall:")[0].split())
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--per-class", type=int, default=40, help="drawn faces per class")
    parser.add_argument("--epochs", type=int, default=6, help="epochs the run plans")
    parser.add_argument(
        "--stop-after", type=int, default=5, help="stop after this many epochs (0: never)"
    )
    parser.add_argument("--limit-train", type=int, default=0, help="training faces (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder to create faces/, prepared/, run/ in")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="ferkit-example-") as scratch:
        root = Path(args.out) if args.out else Path(scratch)

        # Step 1: a source dataset: one folder per class (Happy/, sadness/, Surprised/,
        # anger/), images of mixed sizes, formats and colour modes, as scraped sets are.
        source = make_image_folder(root / "faces", per_class=args.per_class, seed=args.seed)

        # Step 2: prepare it (`ferkit prepare`): class names mapped to ferkit's
        # (happy, sad, surprise, angry), faces converted to 48x48 grayscale, a stratified
        # train/val/test split; manifest.json records all of it.
        config = PrepareConfig(val_fraction=0.2, test_fraction=0.2, seed=args.seed, workers=1)
        prepared = prepare(source, root / "prepared", config, progress=False)
        data = PreparedDataset(prepared.out_dir)
        counts = {name: data.manifest["splits"][name]["count"] for name in data.splits}
        print(f"prepared: classes {', '.join(data.classes)}; faces per split {counts}")

        # Step 3: train (`ferkit train`). A tiny ferkit_cnn for a few epochs of a few
        # batches: augmentation off (`AugmentConfig.off()`'s settings), and batch-norm
        # statistics that settle in a few steps (`bn_momentum`; 0.99 suits long runs).
        # Other settings keep their defaults (AdamW, cosine schedule, label smoothing).
        # `stop_after_epochs` ends this call early, as a deadline or a killed process
        # would: the run folder stays resumable (`ferkit train --resume --out RUN`).
        settings = TrainConfig(
            data=str(data.folder),
            model={
                "arch": "ferkit_cnn",
                "widths": [8, 16, 32, 64],
                "bn_momentum": 0.5,
                "augment": asdict(AugmentConfig.off()),
            },
            epochs=args.epochs,
            batch_size=32,
            learning_rate=5e-3,
            warmup_epochs=0,
            limit_train=args.limit_train,
            seed=args.seed,
        )
        run = root / "run"
        result = train(settings, run, verbose=0, stop_after_epochs=args.stop_after or None)

        # Step 4: finish (`ferkit train --finish`). A run that completed its epochs is
        # finished already; one that stopped early is finished now: its best checkpoint
        # is calibrated on val (a temperature) and metrics.json written.
        if not (run / "metrics.json").is_file():
            result = finish_now(run)
        metrics = result.metrics
        files = sorted(path.name for path in run.iterdir() if not path.name.startswith("."))
        print(
            f"run: {run.name}/ holds {', '.join(files)}; "
            f"{metrics['epochs_trained']} of {settings.epochs} epochs, "
            f"val accuracy {metrics['val_accuracy']:.3f}, "
            f"temperature {metrics['calibration']['temperature']:.3f}"
        )
        if "finished_early" in metrics:
            print(f"finished early: {metrics['finished_early']}")

        # Step 5: load the run. load_model gives the Keras model (for training further,
        # Grad-CAM...); load_classifier gives calibrated probabilities on any runtime
        # (Keras here; ONNX once exported, see examples/export_onnx.py).
        keras_model = load_model(run)
        classifier = load_classifier(run)
        test = data.split("test")
        probabilities = classifier.predict_proba(test.images)
        accuracy = float((probabilities.argmax(axis=1) == test.labels).mean())
        print(
            f"loaded: {keras_model.model.count_params():,} parameters, classes "
            f"{json.loads((run / 'labels.json').read_text())}"
        )
        print(f"test accuracy: {accuracy:.3f} on {len(test)} faces")

        # Step 6: predict on new images. `faces="crop"` takes each whole image as one
        # face (a drawing has nothing for a face detector to find).
        recognizer = EmotionRecognizer(model=run, faces="crop")
        expressions = ["angry", "happy", "sad", "surprise"]
        drawings = [draw_face(name, size=64, seed=10_000 + i) for i, name in enumerate(expressions)]
        for name, faces in zip(expressions, recognizer.predict_batch(drawings), strict=True):
            face = faces[0]
            print(f"new {name} drawing: {face.label} (p={face.probabilities[face.label]:.2f})")
        if not args.out:
            print("(written to a temporary folder; --out DIR keeps the dataset and the run)")


if __name__ == "__main__":
    main()

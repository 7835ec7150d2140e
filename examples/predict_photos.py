"""
Title: Recognise expressions in photos
Description: Find every face in a few photos and read its expression with the bundled
    model, then show the results as a table (one row per face).
Install: `pip install -e '.[report]'` (the core install and pandas for the table); no
    TensorFlow needed.
Run: python examples/predict_photos.py [PHOTO ...] [--detector NAME] [--out DIR]

Without photos it reads the two sample photos that ship inside ferkit: a portrait of a
smiling man (`justin.jpg`) and a group selfie (`selfie-many-people.jpg`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ferkit
from ferkit import EmotionRecognizer, results_to_dataframe

SAMPLES = Path(ferkit.__file__).resolve().parent / "assets" / "samples"


def parse_args() -> argparse.Namespace:
    # The header's Description field, all its lines (up to Install:), as one paragraph.
    description = " ".join(__doc__.split("Description:")[1].split("\nInstall:")[0].split())
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("photos", nargs="*", help="photo files (default: ferkit's samples)")
    parser.add_argument(
        "--detector",
        default="blazeface-full",
        choices=["blazeface-full", "blazeface", "mtcnn", "haar"],
        help="face detector (mtcnn needs ferkit[train])",
    )
    parser.add_argument("--out", help="folder to write the table into, as predictions.csv")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    photos = args.photos or sorted(str(path) for path in SAMPLES.glob("*.jpg"))

    # Step 1: a recogniser. With no `model` it loads the model that ships with ferkit
    # (checksums verified) on its default runtime, int8 LiteRT, and the chosen detector.
    recognizer = EmotionRecognizer(detector=args.detector)
    print(f"classes: {', '.join(recognizer.classes)}")

    # Step 2: classify every face of every photo in one batch. Each photo gives an
    # ImageResult: a list of FaceResult (box, label, calibrated probabilities), or an
    # `error` saying why the photo could not be read; one bad photo never stops the rest.
    results = recognizer.predict_batch(photos)
    for photo, faces in zip(photos, results, strict=True):
        status = faces.error or f"{len(faces)} face(s), {faces.width}x{faces.height} px"
        print(f"{Path(photo).name}: {status}")

    # Step 3: one row per face as a pandas DataFrame: source, face index, box, detector
    # confidence, label and p_<class> for every class.
    # A photo that could not be read keeps a row with its `error` (reported above).
    table = results_to_dataframe(dict(zip(photos, results, strict=True)))
    faces_only = table[table["label"].notna()] if "label" in table else table.iloc[0:0]
    if faces_only.empty:
        print("no faces found")
    else:
        columns = ["source", "face", "x", "y", "width", "height", "label"]
        columns += [f"p_{name}" for name in recognizer.classes]
        shown = faces_only[columns].astype({name: int for name in columns[1:6]})
        shown["source"] = shown["source"].map(lambda source: Path(source).name)
        print(shown.to_string(index=False, float_format=lambda value: f"{value:.2f}"))

    # Step 4 (optional): keep the table.
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "predictions.csv", index=False)
        print(f"table written to {out / 'predictions.csv'}")


if __name__ == "__main__":
    main()

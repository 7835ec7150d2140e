"""
Title: Expressions over time in a video
Description: Stream a video through the bundled model frame by frame, follow each face
    with a track id, and report the share of time each face spends in each expression.
Install: the core install (`pip install -e .`); no TensorFlow needed; `--out` writes its
    table with pandas (`pip install -e '.[report]'`).
Run: python examples/predict_video.py [VIDEO] [--max-frames N] [--every N] [--out DIR]

Without a video it reads `woman2.mp4` from the shared sample folder:
`$FERKIT_SHARED/samples/woman2.mp4`, else `../shared/samples/woman2.mp4` beside the
repository. A webcam works too: pass its index (`0`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path


def default_video() -> Path:
    shared = os.environ.get("FERKIT_SHARED")
    root = Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"
    return root / "samples" / "woman2.mp4"


def parse_args() -> argparse.Namespace:
    # The header's Description field, all its lines (up to Install:), as one paragraph.
    description = " ".join(__doc__.split("Description:")[1].split("\nInstall:")[0].split())
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("video", nargs="?", default=str(default_video()), help="video file")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    parser.add_argument("--every", type=int, default=1, help="process every N-th frame")
    parser.add_argument(
        "--detect-every", type=int, default=1, help="run the detector every N processed frames"
    )
    parser.add_argument("--smoothing", type=float, default=0.5, help="time constant, seconds")
    parser.add_argument("--out", help="folder to write one row per face and frame into")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    source: str | int = int(args.video) if args.video.isdigit() else args.video
    if isinstance(source, str) and not Path(source).is_file():
        sys.exit(f"{source}: no such video; pass a video file (or set FERKIT_SHARED)")
    if args.out:  # checked before the frames are read, not after
        from ferkit.extras import import_pandas

        try:
            import_pandas("--out")
        except ImportError as error:
            sys.exit(str(error))

    from ferkit import EmotionRecognizer, results_to_dataframe

    # Step 1: the bundled model and the default detector (BlazeFace, full range).
    recognizer = EmotionRecognizer()

    # Step 2: stream the frames. predict_video yields one FrameResult at a time (index,
    # time_s, faces), so memory stays flat however long the video is. Each face carries
    # a track_id and probabilities smoothed over `smoothing_s` seconds (the frame's own
    # values stay in raw_label / raw_probabilities).
    labels_per_track: dict[int, Counter] = defaultdict(Counter)
    kept = []  # only with --out: every processed frame, for the table
    processed = with_face = 0
    started = time.perf_counter()
    frames = recognizer.predict_video(
        source,
        every=args.every,
        detect_every=args.detect_every,
        smoothing_s=args.smoothing,
        max_frames=args.max_frames,
    )
    for frame in frames:
        if not frame.processed:  # skipped by --every
            continue
        processed += 1
        with_face += bool(frame.faces)
        for face in frame.faces:
            labels_per_track[face.track_id][face.label] += 1
        if args.out:
            frame.image = None  # the table needs the faces, not the pixels
            kept.append(frame)
    seconds = time.perf_counter() - started
    print(
        f"{Path(str(source)).name}: {processed} frames processed in {seconds:.1f} s "
        f"({processed / max(seconds, 1e-9):.0f} frames/s), {with_face} with a face, "
        f"{len(labels_per_track)} track(s)"
    )

    # Step 3: the share of time per expression, over every face, then per track (each
    # face-frame counts once, with its smoothed label).
    overall = Counter()
    for counter in labels_per_track.values():
        overall.update(counter)

    def shares(counter: Counter) -> str:
        total = sum(counter.values())
        return ", ".join(f"{label} {count / total:.0%}" for label, count in counter.most_common())

    if not overall:
        print("no face found")
    else:
        print(f"share of time: {shares(overall)}")
        for track, counter in sorted(labels_per_track.items()):
            print(f"  track {track}: {shares(counter)}")

    # Step 4 (optional): one row per face and frame (frame, time_s, track_id, box, label,
    # p_<class>, raw_label, raw_p_<class>).
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results_to_dataframe(kept).to_csv(out / "frames.csv", index=False)
        print(f"rows written to {out / 'frames.csv'}")


if __name__ == "__main__":
    main()

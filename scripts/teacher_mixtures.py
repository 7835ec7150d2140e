"""Teachers, and weighted mixtures of their calibrated probabilities, on the three
validation measures (:mod:`ferkit.evaluation.selection`): FER2013 val accuracy, FER+
plurality agreement on the same faces, and end to end on labelled photos. No training:
each teacher runs once, its probabilities are cached in ``--out``, and every mixture on a
grid of weights is scored from them.

    python scripts/teacher_mixtures.py --data ~/ferkit-runs/data/fer2013 \
        --votes ~/ferkit-runs/data/ferplus --photos ../shared/datasets/taiwanese \
        --teacher default --teacher ferplus --teacher ~/ferkit-runs/teachers/faceapi \
        --out ~/ferkit-runs/teachers/mixtures

Writes ``probabilities.npz`` (per teacher), ``mixtures.csv`` (every mixture's figures)
and prints the teachers and the best mixtures by the mean of the three measures among
those with FER2013 val at least ``--floor``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def weight_grid(teachers: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector on the simplex with entries a multiple of ``step``."""
    units = round(1 / step)
    return [
        tuple(c * step for c in combo)
        for combo in itertools.product(range(units + 1), repeat=teachers)
        if sum(combo) == units
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared FER2013")
    parser.add_argument("--votes", type=Path, required=True, help="FER+ prepared --soft-labels")
    parser.add_argument("--photos", type=Path, required=True, help="class folders of photos")
    parser.add_argument("--teacher", action="append", required=True, help="model (repeat)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the cache and CSV")
    parser.add_argument("--step", type=float, default=0.1, help="grid step (default 0.1)")
    parser.add_argument("--floor", type=float, default=0.705, help="FER2013 val floor")
    parser.add_argument("--top", type=int, default=15, help="mixtures printed (default 15)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from ferkit.evaluation.selection import MEASURES, Probabilities, ValidationMeasures

    args.out.mkdir(parents=True, exist_ok=True)
    measures = ValidationMeasures(args.data, args.votes, args.photos)
    cache = args.out / "probabilities.npz"
    stored = dict(np.load(cache)) if cache.is_file() else {}
    found: dict[str, Probabilities] = {}
    for teacher in args.teacher:
        key = teacher.replace("/", "_")
        if f"{key}.val" not in stored:  # a teacher's folder changed: delete the cache
            probabilities = measures.probabilities(teacher)
            stored[f"{key}.val"], stored[f"{key}.photos"] = probabilities.val, probabilities.photos
            np.savez(cache, **stored)
        found[teacher] = Probabilities(stored[f"{key}.val"], stored[f"{key}.photos"])

    rows = []
    members = list(found.values())
    for weights in weight_grid(len(members), args.step):
        mixed = members[0].mixed(members[1:], list(weights))
        rows.append({**dict(zip(args.teacher, weights, strict=True)), **measures.score(mixed)})
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "mixtures.csv", index=False)
    shown = [*args.teacher, *MEASURES, "mean", "fer2013_val_balanced", "fer2013_val_ece"]
    singles = table[(table[args.teacher] == 1.0).any(axis=1)]
    print("teachers alone:\n" + singles[shown].to_string(index=False, float_format="%.4f"))
    eligible = table[table["fer2013_val"] >= args.floor].sort_values("mean", ascending=False)
    print(
        f"\nbest mixtures by the mean of {', '.join(MEASURES)} with FER2013 val >= "
        f"{args.floor:.1%} ({len(eligible)} of {len(table)}):\n"
        + eligible.head(args.top)[shown].to_string(index=False, float_format="%.4f")
    )
    if len(eligible):
        best = eligible.iloc[0].to_dict()
        (args.out / "best.json").write_text(json.dumps(best, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

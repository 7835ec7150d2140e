"""Score every kept epoch of a run (``keep_epoch_checkpoints: true``) on the three
validation measures of :mod:`ferkit.evaluation.selection`, and pick one by the rule fixed
before training: the best mean of FER2013 val accuracy, FER+ plurality agreement and
photos end to end, among the epochs with FER2013 val at least ``--floor``.

    python scripts/select_epoch.py ~/ferkit-runs/student --data ~/ferkit-runs/data/fer2013 \
        --votes ~/ferkit-runs/data/ferplus --photos ../shared/datasets/taiwanese \
        --baseline default

Writes ``selection.csv`` (every epoch, and the baseline) and ``selection.json`` (the rule,
the chosen epoch, its figures and the baseline's) into the run folder. ``--install``
copies the chosen epoch over ``checkpoints/best.keras`` (the previous best kept as
``best_by_val.keras``) and records it as the run's best epoch in ``state.json``, so
``ferkit train --finish`` calibrates it and ``ferkit bundle`` packages it.

``--recalibrate-bn N``: each epoch's batch-norm statistics are re-estimated on N clean
FER2013 train faces first (:mod:`ferkit.training.batchnorm`); those are the candidates,
and each epoch as trained is scored too, for the record (``candidate`` false).

``--interpolate MODEL --alphas A,B,...``: the candidates are the last epoch's weights
interpolated with MODEL's, the one it was fine-tuned from (:mod:`ferkit.training.
interpolate`), at each alpha; written to ``selection-interpolated.csv|json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def load_checkpoint(path: Path, classes: list[str], recalibrate_on=None):
    """A kept epoch as a teacher of :mod:`ferkit.training.distill` (temperature 1: the
    measures are accuracies); with ``recalibrate_on`` (clean train faces), its batch-norm
    statistics re-estimated on them."""
    from ferkit.extras import import_keras
    from ferkit.models.folder import LoadedModel
    from ferkit.models.keras_nets import custom_layers
    from ferkit.training.distill import Teacher

    keras = import_keras()
    custom_layers()
    model = keras.models.load_model(path, compile=False)
    if recalibrate_on is not None:
        from ferkit.training.batchnorm import recalibrate_batchnorm

        recalibrate_batchnorm(model, recalibrate_on, max_images=len(recalibrate_on))
    shape = tuple(int(d) for d in model.input_shape[1:])
    loaded = LoadedModel(model, list(classes), 1.0, path, shape)
    return Teacher(loaded, path.name, list(range(len(classes))), [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run folder with checkpoints/epoch_*.keras")
    parser.add_argument("--data", type=Path, required=True, help="prepared FER2013")
    parser.add_argument("--votes", type=Path, required=True, help="FER+ prepared --soft-labels")
    parser.add_argument("--photos", type=Path, required=True, help="class folders of photos")
    parser.add_argument("--floor", type=float, default=0.705, help="FER2013 val floor")
    parser.add_argument("--baseline", default="default", help="model to compare (default)")
    parser.add_argument("--install", action="store_true", help="make the chosen epoch best.keras")
    parser.add_argument(
        "--recalibrate-bn",
        type=int,
        default=0,
        metavar="N",
        help="re-estimate batch-norm statistics on N clean train faces (default: 0, no)",
    )
    parser.add_argument("--interpolate", metavar="MODEL", help="the model fine-tuned from")
    parser.add_argument("--alphas", default="0.25,0.5,0.75", help="weights of the last epoch")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from ferkit.evaluation.selection import MEASURES, ValidationMeasures, epoch_checkpoints

    checkpoints = epoch_checkpoints(args.run)
    if not checkpoints:
        print(f"{args.run}: no checkpoints/epoch_*.keras; train with keep_epoch_checkpoints")
        return 2
    classes = json.loads((args.run / "labels.json").read_text())
    measures = ValidationMeasures(args.data, args.votes, args.photos)
    baseline_scores = measures.score(measures.probabilities(args.baseline))
    rows = [{"model": args.baseline, "candidate": False, **baseline_scores}]
    clean = None
    if args.recalibrate_bn:
        from ferkit.data.dataset import PreparedDataset

        train = PreparedDataset(args.data).split("train").images
        clean = train[np.random.default_rng(0).permutation(len(train))[: args.recalibrate_bn]]
    builders = {}  # name: (candidate, build)
    if args.interpolate:
        from ferkit.models.folder import load_model
        from ferkit.training.interpolate import interpolate_weights

        start = load_model(args.interpolate).model
        last = checkpoints[-1]

        def interpolated(alpha: float):
            teacher = load_checkpoint(last, classes)
            interpolate_weights(teacher.model.model, start, alpha)
            return teacher

        for alpha in [float(a) for a in args.alphas.split(",")]:
            builders[f"{last.name}@{alpha:g}"] = (True, lambda a=alpha: interpolated(a))
    else:
        for path in checkpoints:
            builders[path.name] = (clean is None, lambda p=path: load_checkpoint(p, classes))
            if clean is not None:
                builders[f"{path.name}+bn"] = (
                    True, lambda p=path: load_checkpoint(p, classes, clean)
                )  # fmt: skip
    for name, (candidate, build) in builders.items():
        probabilities = measures.probabilities(build())
        rows.append({"model": name, "candidate": candidate, **measures.score(probabilities)})
        print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format="%.4f"), flush=True)
    table = pd.DataFrame(rows)
    stem = "selection-interpolated" if args.interpolate else "selection"
    table.to_csv(args.run / f"{stem}.csv", index=False)
    print(table.to_string(index=False, float_format="%.4f"))
    epochs = table[table["candidate"]]
    eligible = epochs[epochs["fer2013_val"] >= args.floor]
    recalibrated = (
        f" (batch-norm statistics re-estimated on {args.recalibrate_bn} clean train faces)"
        if clean is not None
        else ""
    )
    if args.interpolate:
        recalibrated = (
            f" (the last epoch's weights interpolated with {args.interpolate}'s at alphas "
            f"{args.alphas})"
        )
    rule = (
        f"best mean of {', '.join(MEASURES)} among epochs{recalibrated} with fer2013_val >= "
        f"{args.floor}; replaces the baseline only if that mean beats the baseline's"
    )
    chosen = None if eligible.empty else eligible.sort_values("mean").iloc[-1].to_dict()
    baseline = table.iloc[0].to_dict()
    verdict = chosen is not None and chosen["mean"] > baseline["mean"]
    summary = {"rule": rule, "chosen": chosen, "baseline": baseline, "replaces_baseline": verdict}
    (args.run / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    if args.install and chosen is not None:
        best = args.run / "checkpoints" / "best.keras"
        if best.exists() and not (args.run / "checkpoints" / "best_by_val.keras").exists():
            shutil.copy2(best, args.run / "checkpoints" / "best_by_val.keras")
        builders[chosen["model"]][1]().model.model.save(best)
        # The run's best epoch is now the chosen one: --finish records it in metrics.json.
        state_file = args.run / "state.json"
        state = json.loads(state_file.read_text())
        state["best_epoch"] = int(chosen["model"].split("_")[1].split(".")[0])
        if clean is not None:
            state["batchnorm_recalibrated_on"] = f"{len(clean)} FER2013 train faces (seed 0)"
        if args.interpolate:
            state["interpolated_with"] = (
                f"{args.interpolate}, alpha {chosen['model'].split('@')[1]}"
            )
        state["selected_by"] = f"scripts/select_epoch.py: {rule} (selection.json)"
        state_file.write_text(json.dumps(state, indent=2) + "\n")
        print(f"{best}: now {chosen['model']}; run 'ferkit train --finish --out {args.run}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())

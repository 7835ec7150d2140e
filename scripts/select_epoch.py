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

``--last N`` scores only the last N epochs; ``--mean-of`` names the measures whose mean
picks the epoch (default: all three); ``--replaces-within P``: the chosen epoch replaces
the baseline only if each of those measures is within P of the baseline's (default: only
if its mean beats the baseline's). The fast model's rule, for example::

    python scripts/select_epoch.py ~/ferkit-runs/fast --data ~/ferkit-runs/data/fer2013 \
        --votes ~/ferkit-runs/data/ferplus --photos ../shared/datasets/taiwanese \
        --last 5 --floor 0 --mean-of fer2013_val,photos --replaces-within 0.003

Torch-engine runs keep ``epoch_NNN.weights.npz``; they are scored as the Keras model
that ``ferkit train --finish`` would build from them.
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
    statistics re-estimated on them. ``path``: a ``.keras`` file, or a torch-engine run's
    ``.weights.npz``."""
    from ferkit.extras import import_keras
    from ferkit.models.folder import LoadedModel
    from ferkit.models.keras_nets import custom_layers
    from ferkit.training.distill import Teacher

    keras = import_keras()
    custom_layers()
    if path.name.endswith(".weights.npz"):
        from ferkit.training.finish import keras_model_from_run

        model = keras_model_from_run(path.parents[1], path)
    else:
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
    parser.add_argument("--last", type=int, default=0, help="score the last N epochs only")
    parser.add_argument(
        "--mean-of",
        default="fer2013_val,ferplus_plurality,photos",
        help="the measures whose mean picks the epoch (default: all three)",
    )
    parser.add_argument(
        "--replaces-within",
        type=float,
        default=None,
        metavar="P",
        help="replace the baseline only if each --mean-of measure is within P of its "
        "(default: only if the mean beats the baseline's)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from ferkit.evaluation.selection import MEASURES, ValidationMeasures, epoch_checkpoints

    checkpoints = epoch_checkpoints(args.run)
    if not checkpoints:
        print(
            f"{args.run}: no checkpoints/epoch_*.keras or epoch_*.weights.npz; train with "
            "keep_epoch_checkpoints"
        )
        return 2
    if args.last < 0:
        print("--last: give a number of epochs, 1 or more (0: every epoch)")
        return 2
    if args.last:
        checkpoints = checkpoints[-args.last :]
    mean_of = [name.strip() for name in args.mean_of.split(",") if name.strip()]
    if not mean_of or set(mean_of) - set(MEASURES):
        print(f"--mean-of: choose among {', '.join(MEASURES)}")
        return 2
    classes = json.loads((args.run / "labels.json").read_text())
    measures = ValidationMeasures(args.data, args.votes, args.photos)

    def scored(probabilities) -> dict:
        scores = measures.score(probabilities)
        if mean_of != list(MEASURES):
            scores["mean"] = float(np.mean([scores[name] for name in mean_of]))
        return scores

    rows = [
        {
            "model": args.baseline,
            "candidate": False,
            **scored(measures.probabilities(args.baseline)),
        }
    ]
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
        rows.append({"model": name, "candidate": candidate, **scored(probabilities)})
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
    which = f"the last {len(checkpoints)} " if args.last else ""
    replaces = (
        f"replaces the baseline only if each is within {args.replaces_within} of the baseline's"
        if args.replaces_within is not None
        else "replaces the baseline only if that mean beats the baseline's"
    )
    rule = (
        f"best mean of {', '.join(mean_of)} among {which}epochs{recalibrated} with "
        f"fer2013_val >= {args.floor}; {replaces}"
    )
    chosen = None if eligible.empty else eligible.sort_values("mean").iloc[-1].to_dict()
    baseline = table.iloc[0].to_dict()
    if args.replaces_within is not None:
        verdict = chosen is not None and all(
            chosen[name] >= baseline[name] - args.replaces_within for name in mean_of
        )
    else:
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

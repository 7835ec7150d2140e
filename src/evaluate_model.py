"""Evaluate a model (the bundled one by default) on labelled faces: metrics, plots and an HTML report.

The same as ``ferkit evaluate``, with the same flags (``python src/evaluate_model.py --help``);
runs from a checkout without installing ferkit (after ``pip install -r requirements.txt``).
"""

import sys

from ferkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))

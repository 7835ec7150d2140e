"""Train a model on a prepared dataset into a resumable run folder.

The same as ``ferkit train``, with the same flags (``python src/train_model.py --help``);
runs from a checkout without installing ferkit (after ``pip install -r requirements.txt``).
"""

import sys

from ferkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

"""Prepare a facial-expression dataset: find, align and crop the faces, and write a prepared dataset folder.

The same as ``ferkit prepare``, with the same flags (``python src/data_preprocessing.py --help``);
runs from a checkout without installing ferkit (after ``pip install -r requirements.txt``).
"""

import sys

from ferkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))

"""Stage 1, data: turn a source dataset into a prepared dataset, and read it back.

- :mod:`~ferkit.data.sources`: read FER2013 (CSV), FER+ and class-folder datasets.
- :mod:`~ferkit.data.prepare`: ``ferkit prepare``: detect, align and crop faces into a
  prepared dataset folder (``manifest.json`` + one ``.npz`` per split).
- :mod:`~ferkit.data.dataset`: :class:`PreparedDataset`, the reader of that folder.
- :mod:`~ferkit.data.synthetic`: drawn faces for tests and demos without data.
- :mod:`~ferkit.data.explore`: class counts, sample grids and split comparisons.
"""

from ferkit.data.dataset import MANIFEST_NAME, PreparedDataset, Split, load_split

__all__ = ["MANIFEST_NAME", "PreparedDataset", "Split", "load_split"]

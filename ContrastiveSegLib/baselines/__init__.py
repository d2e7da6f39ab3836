"""What a Slicer user would pick instead of ContrastiveSeg: the Segment Editor's auto-complete effects, run on
the same sparse labels (benchmarks/README.md).

Both are optional dependencies (``pip install contrastiveseg[baselines]``); each function raises ImportError
with a one-line ``pip install ...`` hint when its package is missing, so callers can skip that baseline.
Importing this package loads neither.
"""
from __future__ import annotations

from ContrastiveSegLib.baselines.fill_between import fill_between_slices
from ContrastiveSegLib.baselines.growcut import grow_from_seeds

__all__ = ["grow_from_seeds", "fill_between_slices"]

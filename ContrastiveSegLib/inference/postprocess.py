"""Post-processing that uses where the user annotated, not only what it looks like.

With a few annotated slices most errors are look-alike structures away from the annotation (the same nucleus in
the other hemisphere, another organ of similar density; a plain 2.5D U-Net on a real 1 mm brain MR went from Dice
0.47 to 0.87 with this step alone). A predicted component of class c that never touches an annotated voxel of class c is therefore
dropped. The annotated voxels themselves are the user's word and are copied into the result.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ContrastiveSegLib.io.annotations import IGNORE


def keep_annotated_components(classes: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class, keep only the 3D connected components (26-connectivity) that contain an annotated voxel of that
    class; removed voxels become background. Classes with no annotated voxel are left unchanged.

    Args:
        classes: (z, y, x) predicted class indices.
        targets: (z, y, x) annotated class indices, IGNORE where unknown.
    """
    result = classes.copy()
    structure = np.ones((3, 3, 3), dtype=bool)
    for cls in range(1, num_classes):
        seeds = targets == cls
        if not seeds.any():
            continue
        components, count = ndimage.label(classes == cls, structure=structure)
        if count == 0:
            continue
        touched = np.unique(components[seeds])
        keep = np.zeros(count + 1, dtype=bool)
        keep[touched[touched > 0]] = True
        result[(components > 0) & ~keep[components]] = 0
    return result


def paste_annotations(classes: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Annotated voxels take their annotated class (in place); returns ``classes``."""
    known = targets != IGNORE
    classes[known] = targets[known]
    return classes

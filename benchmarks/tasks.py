"""The benchmark's tasks (shared/design/benchmark.md): the bundled real sample at 2 mm and 1 mm, several
structures and axes, and CT-like phantoms with anisotropic spacing.

A task is a volume, a reference label map and the axis along which a person would annotate it. Arrays are
(z, y, x); spacing (x, y, z). Axis 0 = axial (k), 1 = coronal (j), 2 = sagittal (i) for these volumes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Task:
    name: str
    load: Callable[[], tuple[np.ndarray, np.ndarray, tuple, tuple]]  # image, reference, spacing, direction
    axis: int
    description: str
    structures: dict[int, str]


@lru_cache(maxsize=2)
def _mni(name: str):
    import SimpleITK as sitk

    from ContrastiveSegLib.data.sample import load_sample, ventricles_from_sample

    image, labels = load_sample(name)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    reference = sitk.GetArrayFromImage(labels).astype(np.uint8)
    ventricles = ventricles_from_sample(image, labels).astype(np.uint8)
    return array, reference, ventricles, image.GetSpacing(), image.GetDirection()


def _mni_tissue(name: str, keep: tuple[int, ...]):
    def load():
        array, reference, _, spacing, direction = _mni(name)
        return array, np.where(np.isin(reference, keep), reference, 0).astype(np.uint8), spacing, direction
    return load


def _mni_ventricles(name: str):
    def load():
        array, _, ventricles, spacing, direction = _mni(name)
        return array, ventricles, spacing, direction
    return load


def _phantom(shape, spacing, seed, organs):
    def load():
        from ContrastiveSegLib.data.phantoms import make_ct_phantom

        phantom = make_ct_phantom(shape, spacing, seed=seed, num_organs=organs)
        return phantom.image, phantom.labels.astype(np.uint8), phantom.spacing, phantom.direction
    return load


GMWM = {1: "grey matter", 2: "white matter"}
TASKS: dict[str, Task] = {task.name: task for task in [
    Task("mni2mm-gmwm-axial", _mni_tissue("mni152_2mm", (1, 2)), 0,
         "MNI152 T1 2 mm, grey + white matter, axial slices", GMWM),
    Task("mni2mm-wm-sagittal", _mni_tissue("mni152_2mm", (2,)), 2,
         "MNI152 T1 2 mm, white matter, sagittal slices", {2: "white matter"}),
    Task("mni2mm-ventricles-coronal", _mni_ventricles("mni152_2mm"), 1,
         "MNI152 T1 2 mm, lateral ventricles (small, deep, two look-alike halves), coronal slices",
         {1: "ventricles"}),
    Task("mni1mm-gmwm-axial", _mni_tissue("mni152_1mm", (1, 2)), 0,
         "MNI152 T1 1 mm (197 x 233 x 189), grey + white matter, axial slices", GMWM),
    Task("ct-phantom-organs-axial", _phantom((72, 192, 192), (1.6, 1.6, 2.5), 7, 4), 0,
         "CT-like phantom 192 x 192 x 72 at 1.6 x 1.6 x 2.5 mm, liver, kidneys, spleen, axial slices",
         {1: "liver", 2: "right kidney", 3: "spleen", 4: "left kidney"}),
]}

# What "ContrastiveSeg" means in the tables: rows of (method name, keyword arguments of api.segment).
# "network, random init" is the ablation baseline of the benchmark protocol; while no pretrained encoder is the
# default, it is the same configuration as the default.
OUR_METHODS: list[tuple[str, dict]] = [
    ("ContrastiveSeg", {}),
]

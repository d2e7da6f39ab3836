"""One scan made ready for training and prediction, once: the checked image, its decoded annotation and its
normalised slice stack.

Fine-tuning, the self-training round and prediction all need the same three things; building them once per run
(rather than once per stage) keeps the stages consistent (one intensity window, one annotation axis) and saves
re-normalising a large CT between stages. Arrays are (z, y, x); ``spacing`` is (x, y, z) mm.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ContrastiveSegLib.data.intensity import check_finite, foreground_window, normalise_intensity
from ContrastiveSegLib.data.slices import InputSpec, SliceStack
from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.annotations import IGNORE, SparseAnnotation, decode_annotation

DEFAULT_SPEC = InputSpec(context=1, coordinates=True)
"""The input of a new model: three neighbouring slices and two coordinate channels; its window is fitted per scan
(:func:`spec_for`)."""


def check_image(image: np.ndarray) -> None:
    """InputError unless ``image`` is a finite 3D numeric array."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3:
        raise InputError(f"image must be a 3D volume, got {image.ndim}D of shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise InputError(f"image must be numeric, got dtype {image.dtype}")
    check_finite(image)


def read_annotation(image: np.ndarray, labels: np.ndarray, axis: int | None = None,
                    label_values: tuple[int, ...] | None = None) -> SparseAnnotation:
    """The checked image's sparse annotation (:func:`~ContrastiveSegLib.io.annotations.decode_annotation`):
    ``labels`` must be an array of the image's shape; ``label_values`` decodes against a model's classes."""
    check_image(image)
    if not isinstance(labels, np.ndarray) or labels.shape != image.shape:
        shape = getattr(labels, "shape", None)
        raise InputError(f"labels of shape {shape} do not match the image's shape {image.shape}")
    return decode_annotation(labels, axis, label_values)


def spec_for(image: np.ndarray, annotation: SparseAnnotation) -> InputSpec:
    """A new model's input spec: :data:`DEFAULT_SPEC` with the intensity window fitted to the annotated
    structures (see :mod:`ContrastiveSegLib.data.intensity`)."""
    foreground = (annotation.target != 0) & (annotation.target != IGNORE)
    return dataclasses.replace(DEFAULT_SPEC, window=foreground_window(image, foreground))


@dataclass(frozen=True)
class PreparedCase:
    """A scan ready for the network.

    Attributes:
        image: (z, y, x) intensities as given.
        annotation: the decoded sparse annotation, or None (prediction without painted slices).
        stack: the normalised image as slices along the annotation axis, with the input spec that built it.
        spacing: (x, y, z) voxel size in mm.
    """

    image: np.ndarray
    annotation: SparseAnnotation | None
    stack: SliceStack
    spacing: tuple[float, float, float]

    @classmethod
    def build(cls, image: np.ndarray, annotation: SparseAnnotation | None, spacing, spec: InputSpec,
              axis: int | None = None) -> "PreparedCase":
        """Normalise ``image`` with ``spec``'s window and slice it along the annotation's axis (or ``axis`` when
        there is no annotation)."""
        axis = annotation.axis if annotation is not None else axis
        if axis is None:
            raise ValueError("a case without an annotation needs an axis")
        stack = SliceStack(normalise_intensity(image, spec.window), axis, spec)
        return cls(image, annotation, stack, tuple(float(v) for v in spacing))

    @property
    def axis(self) -> int:
        """The array axis the slices are taken along."""
        return self.stack.axis

    @property
    def spec(self) -> InputSpec:
        return self.stack.spec

    @property
    def targets(self) -> np.ndarray | None:
        """(S, H, W) uint8 training targets with the slices along :attr:`axis` first (class indices,
        :data:`~ContrastiveSegLib.io.annotations.IGNORE` off the painting), or None without an annotation."""
        if self.annotation is None:
            return None
        return np.moveaxis(self.annotation.target, self.annotation.axis, 0)

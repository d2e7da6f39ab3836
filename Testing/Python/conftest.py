"""Shared small fixtures for the segmentation-spine tests: a tiny two-structure phantom on a non-trivial grid,
written as NIfTI with a sparse label map (a few annotated slices, every other voxel unknown).

Everything here is deliberately small (16 x 48 x 48 voxels) so that a whole fine-tuning run takes seconds on one
CPU thread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

HANG_GUARD_S = 900
"""The timeout of a test that waits for a child process (torchrun ranks, the CLI in a fresh interpreter): a guard
against a hang, never against slowness. Generous because a fresh clone on a loaded 2-core machine once took over
120 s to start two torch.distributed ranks (issue 16, bug 8); a healthy run never comes near it."""

# Two cores are shared by several jobs: one thread each keeps the timings of the suite predictable.
torch.set_num_threads(1)

PHANTOM_SHAPE = (16, 48, 48)  # (z, y, x)
PHANTOM_SPACING = (0.9, 0.9, 2.5)  # (x, y, z) mm, anisotropic like a clinical scan
PHANTOM_ORIGIN = (-20.0, 15.5, 7.25)
ANNOTATED_SLICES = (4, 8, 11)  # along the array's first axis (ITK index axis k)


def rotation_direction(angle_deg: float = 20.0) -> tuple[float, ...]:
    """A proper (determinant +1) oblique direction matrix, row-major: a rotation about the z axis then the x axis."""
    a = math.radians(angle_deg)
    b = math.radians(angle_deg / 2)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return tuple(float(v) for v in (rx @ rz).ravel())


@dataclass
class Phantom:
    """image (z, y, x) float32; reference (z, y, x) uint8 with values 0, 1, 2; sparse (z, y, x) uint8 with only
    ``slices`` (along axis 0) annotated, zero elsewhere."""

    image: np.ndarray
    reference: np.ndarray
    sparse: np.ndarray
    slices: tuple[int, ...]


def make_phantom(shape: tuple[int, int, int] = PHANTOM_SHAPE, seed: int = 0,
                 slices: tuple[int, ...] = ANNOTATED_SLICES, noise: float = 12.0) -> Phantom:
    """Two ellipsoids of different brightness (class 1: 100, class 2: 60) on a background of 20, plus Gaussian noise.

    The ellipsoids span the middle slices along z, so every annotated slice holds both classes.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    nz, ny, nx = shape
    first = ((z - nz * 0.5) / (nz * 0.4)) ** 2 + ((y - ny * 0.38) / (ny * 0.2)) ** 2 + \
        ((x - nx * 0.32) / (nx * 0.18)) ** 2 <= 1
    second = ((z - nz * 0.5) / (nz * 0.42)) ** 2 + ((y - ny * 0.62) / (ny * 0.16)) ** 2 + \
        ((x - nx * 0.68) / (nx * 0.2)) ** 2 <= 1
    reference = np.zeros(shape, dtype=np.uint8)
    reference[first] = 1
    reference[second & ~first] = 2
    image = np.full(shape, 20.0, dtype=np.float32)
    image[reference == 1] = 100.0
    image[reference == 2] = 60.0
    image += rng.normal(0.0, noise, size=shape).astype(np.float32)
    sparse = np.zeros(shape, dtype=np.uint8)
    for s in slices:
        sparse[s] = reference[s]
    return Phantom(image, reference, sparse, tuple(slices))


def write_image(array: np.ndarray, path: Path, *, spacing=PHANTOM_SPACING, origin=PHANTOM_ORIGIN,
                direction: tuple[float, ...] | None = None) -> Path:
    """Write ``array`` (z, y, x) in the format of ``path``'s suffix with the given geometry (default: the phantom grid
    with an oblique direction)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction if direction is not None else rotation_direction())
    sitk.WriteImage(image, str(path))
    return path


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    """Dice overlap of label ``value`` between two label maps."""
    x, y = a == value, b == value
    return 2.0 * np.count_nonzero(x & y) / max(np.count_nonzero(x) + np.count_nonzero(y), 1)


@dataclass
class PhantomFiles:
    image: Path
    labels: Path
    phantom: Phantom
    folder: Path


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    return make_phantom()


@pytest.fixture
def phantom_files(tmp_path: Path, phantom: Phantom) -> PhantomFiles:
    """The phantom image and its sparse labels as .nii.gz on an oblique, anisotropic grid in ``tmp_path``."""
    image = write_image(phantom.image, tmp_path / "image.nii.gz")
    labels = write_image(phantom.sparse, tmp_path / "labels.nii.gz")
    return PhantomFiles(image, labels, phantom, tmp_path)


@pytest.fixture()
def scene():
    """A real MRML scene set up the way Slicer's application does for the Segmentations module, without Qt
    (slicer-core wheel): colour tables for label maps, the Segmentations logic registered. Cleared afterwards."""
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    mrml_scene = slicer.vtkMRMLScene()
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(mrml_scene)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(application)
    colors.SetMRMLScene(mrml_scene)  # creates the default colour tables label maps need
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLApplicationLogic(application)
    segmentations.SetMRMLScene(mrml_scene)
    application.SetModuleLogic("Segmentations", segmentations)
    yield mrml_scene
    mrml_scene.Clear(True)

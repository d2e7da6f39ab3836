"""Training batches from the annotated slices: class-balanced crops.

Few-label fine-tuning sees the same k slices hundreds of times, so what varies between steps is where the crop
falls and how it is deformed (the deformation: :mod:`ContrastiveSegLib.data.augment`). Crops centred on a
labelled voxel of a random class half the time keep small structures in view (nnU-Net's foreground
oversampling); the rest are uniform over the annotated voxels.
"""
from __future__ import annotations

import numpy as np
import torch
from monai.transforms.utils import compute_divisible_spatial_size

from ContrastiveSegLib.data.slices import SliceStack, pad_end
from ContrastiveSegLib.io.annotations import IGNORE

FOREGROUND_FRACTION = 0.5


class AnnotatedSliceSampler:
    """Draws (input, target) training batches from the annotated slices of a :class:`SliceStack`.

    Args:
        stack: the volume as 2.5D slices along the annotation axis.
        targets: (S, H, W) integer class targets in stack order, IGNORE where not annotated.
        slice_indices: the annotated slices (indices into the stack).
        patch: crop height and width (clipped to the slice, rounded up to ``divisor``).
    """

    def __init__(self, stack: SliceStack, targets: np.ndarray, slice_indices, patch: int, *, divisor: int,
                 seed: int = 0):
        self.stack = stack
        self.slice_indices = np.asarray(slice_indices)
        self.rng = np.random.default_rng(seed)
        height, width = stack.height, stack.width
        self.patch = compute_divisible_spatial_size((min(patch, height), min(patch, width)), divisor)
        self.inputs = stack.inputs(self.slice_indices)  # (k, C, H, W), the only slices training ever reads
        self.targets = torch.from_numpy(np.ascontiguousarray(targets[self.slice_indices])).long()  # (k, H, W)
        # Voxel positions per class (and of all annotated voxels) for crop centres.
        self.positions: dict[int, np.ndarray] = {}
        flat = self.targets.numpy().reshape(len(self.slice_indices), -1)
        annotated = np.argwhere(flat != IGNORE)
        self.annotated = annotated
        classes = flat[annotated[:, 0], annotated[:, 1]]
        for c in np.unique(classes):
            if c != 0:
                self.positions[int(c)] = annotated[classes == c]

    def centre(self) -> tuple[int, int, int]:
        """A crop centre (annotated slice, y, x): an annotated voxel of a random foreground class with probability
        ``FOREGROUND_FRACTION``, else any annotated voxel."""
        if self.positions and self.rng.random() < FOREGROUND_FRACTION:
            cls = self.rng.choice(list(self.positions))
            pool = self.positions[cls]
        else:
            pool = self.annotated
        s, flat_index = pool[self.rng.integers(len(pool))]
        y, x = divmod(int(flat_index), self.stack.width)
        return int(s), y, x

    def _crop(self, s: int, y: int, x: int) -> tuple[torch.Tensor, torch.Tensor]:
        ph, pw = self.patch
        image = self.inputs[s]
        target = self.targets[s]
        height, width = target.shape
        # Pad (image with its minimum, target with IGNORE) when the slice is smaller than the patch.
        if height < ph or width < pw:
            image = pad_end(image, ph, pw, value=float(image.min()))
            target = pad_end(target, ph, pw, value=IGNORE)
            height, width = target.shape
        top, left = _jittered_start(self.rng, y, ph, height), _jittered_start(self.rng, x, pw, width)
        return image[:, top:top + ph, left:left + pw], target[top:top + ph, left:left + pw]

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, ph, pw) float32 inputs and (B, 1, ph, pw) int64 targets (IGNORE where unknown), not augmented
        (augmentation runs batched on the training device: :class:`~ContrastiveSegLib.data.augment.BatchAugmenter`)."""
        crops = [self._crop(*self.centre()) for _ in range(batch_size)]
        return torch.stack([c[0] for c in crops]), torch.stack([c[1] for c in crops])[:, None]


class UnannotatedSliceSampler:
    """Crops of the slices nobody annotated, for IDEAL's bidirectional consistency (the two decoders label them
    for each other).

    Args:
        stack: the volume as 2.5D slices along the annotation axis.
        annotated: the annotated slices (excluded).
        patch: crop height and width (clipped to the slice, rounded up to ``divisor``).
        centres: optional ``() -> (slice, y, x)`` giving in-plane crop centres (the annotated sampler's
            class-balanced ones); without, centres are uniform over the slice.

    Why centres from the annotation (a choice, not measured: on the test phantom the crops are whole slices):
    uniform crops of a large slice are mostly background, and the structures, which move little between
    neighbouring slices, would rarely enter the consistency term; the annotated sampler's centres keep them in view.
    """

    def __init__(self, stack: SliceStack, annotated, patch: int, *, divisor: int, seed: int = 0,
                 centres=None):
        self.stack = stack
        self.slice_indices = np.setdiff1d(np.arange(stack.num_slices), np.asarray(annotated, dtype=int))
        if len(self.slice_indices) == 0:
            raise ValueError("every slice is annotated: there is nothing for the consistency term")
        self.rng = np.random.default_rng(seed + 1)
        self.patch = compute_divisible_spatial_size((min(patch, stack.height), min(patch, stack.width)), divisor)
        self.centres = centres

    def batch(self, batch_size: int) -> torch.Tensor:
        """(B, C, ph, pw) float32 crops at uniformly random unannotated slices (padded with the slice's minimum
        when it is smaller than the patch)."""
        ph, pw = self.patch
        slices = self.rng.choice(self.slice_indices, size=batch_size)
        images = self.stack.inputs(slices)
        if images.shape[-2] < ph or images.shape[-1] < pw:
            images = pad_end(images, ph, pw, value=float(images.min()))
        height, width = images.shape[-2:]
        crops = []
        for image in images:
            if self.centres is None:
                top, left = int(self.rng.integers(height - ph + 1)), int(self.rng.integers(width - pw + 1))
            else:
                _, y, x = self.centres()
                top, left = _jittered_start(self.rng, y, ph, height), _jittered_start(self.rng, x, pw, width)
            crops.append(image[:, top:top + ph, left:left + pw])
        return torch.stack(crops)


def _jittered_start(rng: np.random.Generator, centre: int, patch: int, size: int) -> int:
    """First index of a ``patch``-long window around ``centre``, shifted by up to a quarter patch either way and
    kept inside ``size``."""
    return int(np.clip(centre - patch // 2 + rng.integers(-patch // 4, patch // 4 + 1), 0, size - patch))

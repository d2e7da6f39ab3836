"""Felzenszwalb superpixels per volume, for LRC's region contrast (Yan et al., MICCAI 2023).

skimage's :func:`~skimage.segmentation.felzenszwalb` is 2D, so a volume is segmented slice by slice along
``axis`` inside a body mask (the largest connected component above an intensity threshold, holes filled per
slice). Ids are unique in the whole volume (each slice's ids are offset past the previous slice's), and -1
marks voxels outside the body. The result depends only on the voxels and the parameters, so it is computed
once per volume and cached on disk under a content hash (:func:`cached_superpixels`).

Arrays are (z, y, x) numpy arrays; ids are int32.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.segmentation import felzenszwalb

from ContrastiveSegLib.errors import InputError

OUTSIDE = -1
_CACHE_VERSION = 1  # bump when the algorithm changes so stale cache files are not reused
_PERCENTILE_VOXELS = 1 << 22  # intensity percentiles from a regular subsample of at most ~4M voxels


@dataclass(frozen=True)
class SuperpixelParams:
    """Parameters of :func:`compute_superpixels` (defaults and reasons in docs/methods.md).

    Attributes:
        scale: Felzenszwalb's k on intensities rescaled to [0, 1] (1.0); higher merges more.
        sigma: Gaussian pre-smoothing in pixels (0.8).
        min_size: smallest superpixel in pixels (100; 400 leaves under ten regions on a 1 mm brain slice).
        axis: array axis along which slices are taken (0: z).
        body_threshold: intensity above which a voxel may be body; None: 10 % of the way from the 1st to the
            99th intensity percentile (works for CT in HU and for MR).
        percentiles: intensity percentiles inside the body mapped to 0 and 1 before segmenting.
    """

    scale: float = 1.0
    sigma: float = 0.8
    min_size: int = 100
    axis: int = 0
    body_threshold: float | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        if not self.sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        if not isinstance(self.min_size, int) or self.min_size < 1:
            raise ValueError(f"min_size must be a positive integer, got {self.min_size!r}")
        if self.axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {self.axis!r}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")


def _check_volume(volume: np.ndarray) -> np.ndarray:
    if volume is None:
        raise InputError("volume is missing: superpixels need a 3-D (z, y, x) image")
    volume = np.asarray(volume)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise InputError(f"volume must be a 3-D (z, y, x) image, got shape {volume.shape}")
    if not (np.issubdtype(volume.dtype, np.number) and not np.issubdtype(volume.dtype, np.complexfloating)):
        raise InputError(f"volume must hold real numbers, got dtype {volume.dtype}")
    return volume


def _stride(shape: tuple[int, ...]) -> int:
    """The regular stride along every axis that leaves at most about _PERCENTILE_VOXELS voxels."""
    return max(1, int(np.ceil((float(np.prod(shape)) / _PERCENTILE_VOXELS) ** (1.0 / len(shape)))))


def body_mask(volume: np.ndarray, threshold: float | None = None, axis: int = 0) -> np.ndarray:
    """The body: the largest 3D connected component above ``threshold``, holes filled slice by slice.

    Args:
        volume: (z, y, x) image.
        threshold: intensity threshold; None: 10 % of the way from the 1st to the 99th percentile.
        axis: the slicing axis along which holes are filled (lungs, bowel gas enclosed by the body).

    Returns:
        (z, y, x) bool mask (all False if nothing exceeds the threshold).
    """
    volume = _check_volume(volume)
    if threshold is None:
        k = _stride(volume.shape)
        p1, p99 = np.percentile(volume[::k, ::k, ::k], [1.0, 99.0])
        threshold = p1 + 0.1 * (p99 - p1)
    above = volume > threshold
    labels, n = ndimage.label(above)
    if n == 0:
        return above
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    moved = np.moveaxis(body, axis, 0)  # a view: filling it fills ``body``
    for k in range(moved.shape[0]):
        moved[k] = ndimage.binary_fill_holes(moved[k])
    return body


def compute_superpixels(volume: np.ndarray, params: SuperpixelParams = SuperpixelParams()) -> np.ndarray:
    """Felzenszwalb superpixels of every slice along ``params.axis`` inside the body.

    Args:
        volume: (z, y, x) image (any real dtype; CT in HU or MR).
        params: see :class:`SuperpixelParams`.

    Returns:
        (z, y, x) int32 ids: >= 0 and unique in the volume inside the body (consecutive, slice after slice),
        -1 outside.
    """
    volume = _check_volume(volume)
    body = body_mask(volume, params.body_threshold, params.axis)
    ids = np.full(volume.shape, OUTSIDE, dtype=np.int32)
    if not body.any():
        return ids
    k = _stride(volume.shape)
    sample = volume[::k, ::k, ::k][body[::k, ::k, ::k]]
    lo, hi = np.percentile(sample if sample.size else volume[body], params.percentiles)
    scale = float(hi - lo) if hi > lo else 1.0
    vol_slices = np.moveaxis(volume, params.axis, 0)
    body_slices = np.moveaxis(body, params.axis, 0)
    id_slices = np.moveaxis(ids, params.axis, 0)  # a view into ``ids``
    offset = 0
    for k in range(vol_slices.shape[0]):
        inside = body_slices[k]
        if not inside.any():
            continue
        # Rescale to [0, 1] and flatten the outside to 0, so the body outline is a strong edge and the
        # background never joins a body superpixel.
        image = np.clip((vol_slices[k].astype(np.float64) - lo) / scale, 0.0, 1.0)
        image[~inside] = 0.0
        segments = felzenszwalb(image, scale=params.scale, sigma=params.sigma, min_size=params.min_size)
        _, local = np.unique(segments[inside], return_inverse=True)
        id_slices[k][inside] = local.astype(np.int32) + offset
        offset += int(local.max()) + 1
    return ids


def superpixel_cache_key(volume: np.ndarray, params: SuperpixelParams = SuperpixelParams()) -> str:
    """Hex digest identifying (voxels, shape, dtype, parameters, algorithm version)."""
    volume = _check_volume(volume)
    digest = hashlib.blake2b(digest_size=20)
    header = {"version": _CACHE_VERSION, "shape": volume.shape, "dtype": volume.dtype.str, "params": asdict(params)}
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(volume).data)
    return digest.hexdigest()


def cached_superpixels(
    volume: np.ndarray, cache_dir: str | os.PathLike | None, params: SuperpixelParams = SuperpixelParams()
) -> np.ndarray:
    """:func:`compute_superpixels`, read from / written to ``cache_dir`` (no cache if None).

    The file is ``superpixels-<content hash>.npz``, written to a temporary file in the same folder and then
    renamed, so a crash or a concurrent writer never leaves a partial file under the final name. A file that
    cannot be read or has the wrong shape is recomputed and replaced.
    """
    volume = _check_volume(volume)
    if cache_dir is None:
        return compute_superpixels(volume, params)
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"superpixels-{superpixel_cache_key(volume, params)}.npz"
    if path.is_file():
        try:
            with np.load(path) as stored:
                ids = stored["ids"]
            if ids.shape == volume.shape:
                return ids
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            pass  # unreadable or foreign file: recompute and overwrite
    ids = compute_superpixels(volume, params)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".superpixels-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, ids=ids)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ids

"""Felzenszwalb superpixels per volume: body mask, unique ids, -1 outside, tissue purity, on-disk cache."""
from __future__ import annotations

import numpy as np
import pytest

from ContrastiveSegLib.data import superpixels as sp
from ContrastiveSegLib.data.superpixels import (
    SuperpixelParams,
    body_mask,
    cached_superpixels,
    compute_superpixels,
    superpixel_cache_key,
)
from ContrastiveSegLib.errors import InputError

PARAMS = SuperpixelParams(min_size=20)  # small slices: keep superpixels small enough to see the organs


def phantom(seed=0):
    """(5, 40, 44) CT-like phantom and its tissue map: 0 air, 1 body, 2 organ, 3 air pocket inside the body.
    A small bright blob floats outside the body (not the largest component)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:5, :40, :44]
    tissue = np.zeros((5, 40, 44), np.int8)
    tissue[((y - 20) / 15.0) ** 2 + ((x - 22) / 17.0) ** 2 <= 1] = 1
    tissue[((y - 16) ** 2 + (x - 16) ** 2 <= 25) & (z >= 1)] = 2
    tissue[(y - 24) ** 2 + (x - 28) ** 2 <= 16] = 3
    intensity = np.array([-1000.0, 40.0, 200.0, -900.0])[tissue]
    intensity[:, 1:3, 1:3] = 300.0  # the outside blob
    return (intensity + rng.normal(0, 5, tissue.shape)).astype(np.float32), tissue


def test_body_mask_is_largest_component_with_holes_filled():
    volume, tissue = phantom()
    body = body_mask(volume)
    assert np.array_equal(body, tissue > 0)  # air pocket filled in, outside blob dropped
    assert not body_mask(np.zeros((2, 3, 3))).any()


def test_ids_unique_per_volume_and_minus_one_outside():
    volume, tissue = phantom()
    ids = compute_superpixels(volume, PARAMS)
    assert ids.dtype == np.int32 and ids.shape == volume.shape
    assert np.array_equal(ids == -1, tissue == 0)
    per_slice = [set(np.unique(ids[k][ids[k] >= 0]).tolist()) for k in range(ids.shape[0])]
    assert all(per_slice) and sum(len(s) for s in per_slice) == len(set().union(*per_slice))  # disjoint slices
    assert set().union(*per_slice) == set(range(int(ids.max()) + 1))  # consecutive from 0
    # Superpixels follow tissue: each one is (almost) a single tissue.
    inside = ids >= 0
    majority = sum(np.bincount(tissue[inside][ids[inside] == i]).max() for i in range(int(ids.max()) + 1))
    assert majority / inside.sum() > 0.97
    # The organ (absent from slice 0) and the air pocket are split from the body in every slice they are in.
    for k in range(1, 5):
        organ_ids = set(np.unique(ids[k][tissue[k] == 2]).tolist())
        body_ids = set(np.unique(ids[k][tissue[k] == 1]).tolist())
        assert len(organ_ids - body_ids) >= 1


def test_slicing_axis_keeps_every_superpixel_in_one_slice():
    volume, tissue = phantom()
    ids = compute_superpixels(volume, SuperpixelParams(min_size=5, axis=2))
    # Holes are filled in the slicing plane: the air pocket runs through all z, so in (z, y) slices it
    # mostly touches the border and stays outside.
    assert np.array_equal(ids == -1, ~body_mask(volume, axis=2))
    assert (ids[(tissue == 1) | (tissue == 2)] >= 0).all() and (ids[tissue == 3] == -1).mean() > 0.9
    for i in np.unique(ids[ids >= 0]):
        assert len(np.unique(np.nonzero(ids == i)[2])) == 1


def test_cache_hit_returns_identical_ids_without_recomputing(tmp_path, monkeypatch):
    volume, _ = phantom()
    first = cached_superpixels(volume, tmp_path, PARAMS)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name == f"superpixels-{superpixel_cache_key(volume, PARAMS)}.npz"

    def must_not_run(*args, **kwargs):
        raise AssertionError("recomputed despite a cache hit")

    monkeypatch.setattr(sp, "compute_superpixels", must_not_run)
    again = cached_superpixels(volume, tmp_path, PARAMS)
    assert np.array_equal(again, first) and again.dtype == np.int32
    # Other parameters or other voxels are other keys.
    assert superpixel_cache_key(volume, SuperpixelParams(min_size=21)) != superpixel_cache_key(volume, PARAMS)
    changed = volume.copy()
    changed[0, 0, 0] += 1
    assert superpixel_cache_key(changed, PARAMS) != superpixel_cache_key(volume, PARAMS)


def test_corrupt_cache_file_is_recomputed_atomically(tmp_path):
    volume, _ = phantom()
    expected = compute_superpixels(volume, PARAMS)
    path = tmp_path / f"superpixels-{superpixel_cache_key(volume, PARAMS)}.npz"
    path.write_bytes(b"not a zip file")
    ids = cached_superpixels(volume, tmp_path, PARAMS)
    assert np.array_equal(ids, expected)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    with np.load(path) as stored:
        assert np.array_equal(stored["ids"], expected)
    assert np.array_equal(cached_superpixels(volume, None, PARAMS), expected)


def test_bad_inputs_raise_value_errors_naming_them():
    with pytest.raises(InputError, match=r"volume must be a 3-D \(z, y, x\) image, got shape \(4, 4\)"):
        compute_superpixels(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="volume is missing"):
        cached_superpixels(None, None)
    with pytest.raises(ValueError, match="dtype"):
        compute_superpixels(np.zeros((2, 2, 2), dtype=bool).astype(object))
    with pytest.raises(ValueError, match="min_size"):
        SuperpixelParams(min_size=0)
    with pytest.raises(ValueError, match="axis"):
        SuperpixelParams(axis=3)

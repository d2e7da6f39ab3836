"""CT-like phantoms: determinism, labels and organ volumes, tissue HU ranges, geometry, speed, input checks."""
from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ContrastiveSegLib.evaluation.phantoms import ORGANS, make_ct_phantom, phantom_to_sitk
from ContrastiveSegLib.errors import InputError

# Organ volume as a percentage of the default 64 x 96 x 96 volume. Measured over seeds 0-19: liver 1.9-3.3,
# kidneys 0.11-0.33, spleen 0.26-0.71, pancreas 0.06-0.16, gallbladder 0.04-0.08 (seeds 0-149 stay inside these).
VOLUME_PERCENT = {"liver": (1.2, 4.5), "kidney_right": (0.08, 0.5), "spleen": (0.15, 1.0),
                  "kidney_left": (0.08, 0.5), "pancreas": (0.04, 0.3), "gallbladder": (0.02, 0.15)}


@pytest.fixture(scope="module")
def phantoms() -> list:
    return [make_ct_phantom(seed=seed, num_organs=6) for seed in range(4)]


def test_same_seed_same_phantom_other_seed_other_phantom():
    first, again, other = (make_ct_phantom(seed=seed) for seed in (7, 7, 8))
    assert np.array_equal(first.image, again.image) and np.array_equal(first.labels, again.labels)
    assert first.organ_hu == again.organ_hu
    assert np.mean(first.labels != other.labels) > 0.005  # organs moved / reshaped
    assert np.mean(np.abs(first.image - other.image) > 5) > 0.5  # noise and texture differ everywhere


@pytest.mark.parametrize("num_organs", [1, 3, 6])
def test_label_values_and_names(num_organs):
    phantom = make_ct_phantom(seed=1, num_organs=num_organs)
    assert set(np.unique(phantom.labels).tolist()) == set(range(num_organs + 1))
    assert phantom.label_names == {value: ORGANS[value - 1].name for value in range(1, num_organs + 1)}
    assert sorted(phantom.organ_hu) == list(range(1, num_organs + 1))


def test_each_organ_is_one_piece_of_the_stated_size(phantoms):
    for phantom in phantoms:
        for value, name in phantom.label_names.items():
            organ = phantom.labels == value
            low, high = VOLUME_PERCENT[name]
            assert low <= 100 * organ.mean() <= high, (name, 100 * organ.mean())
            assert ndimage.label(organ)[1] == 1, name


def test_organs_never_overwrite_each_other():
    # The first organs' draws do not depend on how many follow, so with more organs the first ones must be
    # unchanged: a later organ never takes voxels of an earlier one.
    three, six = make_ct_phantom(seed=4, num_organs=3), make_ct_phantom(seed=4, num_organs=6)
    assert np.array_equal(np.where(six.labels <= 3, six.labels, 0), three.labels)
    one = make_ct_phantom(seed=4, num_organs=1)
    assert np.array_equal(one.labels == 1, three.labels == 1)


def test_hounsfield_units_per_tissue(phantoms):
    for phantom in phantoms:
        image, labels = phantom.image, phantom.labels
        air = image[:, :4, :4]  # a corner of the field of view, outside the body
        assert -1010 <= np.median(air) <= -990 and 8 <= air.std() <= 25  # noise ~10-20 HU
        background = image[labels == 0]
        soft = np.round(background[(background > -60) & (background < 300)]).astype(int)
        assert 30 <= np.bincount(soft + 60).argmax() - 60 <= 50  # the commonest body voxel: soft tissue ~40
        assert -120 <= np.median(background[(background > -300) & (background < -40)]) <= -80  # fat
        assert 500 <= image.max() <= 1100  # vertebra (cortex 800-1000, blurred by the kernel)
        assert image.min() >= -1024
        for value, name in phantom.label_names.items():
            organ = image[labels == value]
            template = ORGANS[value - 1]
            assert template.hu[0] <= phantom.organ_hu[value] <= template.hu[1]
            # Kidneys have a dark sinus, and the blur mixes the surroundings into small organs (a gallbladder
            # next to the liver reads up to ~30 HU): allow 40 HU below and 15 above.
            assert template.hu[0] - 40 <= np.median(organ) <= template.hu[1] + 15, (name, np.median(organ))
            assert organ.max() < 300  # never over bone
        liver = np.median(image[labels == 1])
        assert 10 <= liver - 40 <= 40  # low contrast to soft tissue: not a thresholding task


def test_shape_spacing_and_geometry_are_honoured():
    phantom = make_ct_phantom(shape=(24, 40, 48), spacing=(0.7, 0.9, 3.0), seed=2, num_organs=2)
    assert phantom.image.shape == phantom.labels.shape == (24, 40, 48)
    assert phantom.image.dtype == np.float32 and phantom.labels.dtype == np.uint8
    assert phantom.spacing == (0.7, 0.9, 3.0)
    image, labels = phantom_to_sitk(phantom)
    assert image.GetSize() == labels.GetSize() == (48, 40, 24)
    assert image.GetSpacing() == pytest.approx((0.7, 0.9, 3.0)) and labels.GetSpacing() == image.GetSpacing()
    assert image.GetDirection() == pytest.approx(np.eye(3).ravel())
    # The volume is centred on (0, 0, 0): the middle of the voxel grid maps there.
    centre = image.TransformContinuousIndexToPhysicalPoint([(48 - 1) / 2, (40 - 1) / 2, (24 - 1) / 2])
    assert centre == pytest.approx((0.0, 0.0, 0.0), abs=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(labels), phantom.labels)
    assert np.array_equal(sitk.GetArrayFromImage(image), phantom.image)


@pytest.mark.parametrize("arguments", [dict(shape=(8, 96, 96)), dict(shape=(64, 96)), dict(num_organs=0),
                                       dict(num_organs=7), dict(spacing=(0.8, -0.8, 2.5))])
def test_bad_arguments_are_input_errors(arguments):
    with pytest.raises(InputError):
        make_ct_phantom(**arguments)

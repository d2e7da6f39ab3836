"""The bundled MNI152 sample: geometry, label values and volumes, reproducibility, the 1 mm variant, ventricles."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ContrastiveSegLib.data.sample import (GREY_MATTER, WHITE_MATTER, load_sample, make_mni_sample,
                                           tissue_labels, ventricles_from_sample)
from ContrastiveSegLib.errors import InputError


@pytest.fixture(scope="module")
def sample() -> tuple[sitk.Image, sitk.Image]:
    return load_sample("mni152_2mm")


def _corners(image: sitk.Image) -> np.ndarray:
    """Physical positions of the outer voxel edges (first and last corner), shape (2, 3)."""
    size = np.asarray(image.GetSize(), float)
    return np.array([image.TransformContinuousIndexToPhysicalPoint(list(index))
                     for index in (-0.5 * np.ones(3), size - 0.5)])


def test_bundled_sample_geometry_matches_the_1mm_template(sample):
    nilearn_datasets = pytest.importorskip("nilearn.datasets")
    image, labels = sample
    original = sitk.ReadImage(nilearn_datasets.MNI152_FILE_PATH)
    assert original.GetSize() == (197, 233, 189)
    assert image.GetSize() == labels.GetSize() == (99, 117, 95)  # floor((n - 1) / 2) + 1
    assert image.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    assert image.GetOrigin() == pytest.approx(original.GetOrigin(), abs=1e-4)
    assert image.GetDirection() == pytest.approx(original.GetDirection(), abs=1e-6)
    assert labels.GetOrigin() == pytest.approx(image.GetOrigin()) and labels.GetSpacing() == image.GetSpacing()
    # Same physical extent within one 2 mm voxel: here the 2 mm grid reaches 0.5 mm further out on each side.
    difference = np.abs(_corners(image) - _corners(original))
    assert difference.max() <= 2.0
    assert difference == pytest.approx(np.full((2, 3), 0.5), abs=1e-4)


def test_bundled_sample_values_and_tissue_volumes(sample):
    image, labels = sample
    assert image.GetPixelID() == sitk.sitkFloat32 and labels.GetPixelID() == sitk.sitkUInt8
    t1, tissue = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels)
    assert set(np.unique(tissue).tolist()) == {0, 1, 2}
    assert t1.min() >= 0 and t1.max() <= 255 and np.array_equal(t1, np.rint(t1))
    grey, white = np.mean(tissue == GREY_MATTER), np.mean(tissue == WHITE_MATTER)
    # Measured 12.5 % and 7.2 % of the box; GM+WM about 1.73 L (MNI space is larger than an average brain).
    assert 0.10 <= grey <= 0.15 and 0.05 <= white <= 0.10
    brain_ml = (grey + white) * tissue.size * 8.0 / 1000.0
    assert 1400 <= brain_ml <= 2000
    # T1 contrast: white matter brighter than grey matter, grey matter brighter than the dark rest.
    median = {value: np.median(t1[tissue == value]) for value in (0, 1, 2)}
    assert median[WHITE_MATTER] > median[GREY_MATTER] + 20 > median[0] + 40


def test_bundled_files_equal_what_make_mni_sample_gives():
    pytest.importorskip("nilearn")
    image, labels = load_sample("mni152_2mm")
    made_image, made_labels = make_mni_sample(2.0)
    for bundled, made in ((image, made_image), (labels, made_labels)):
        assert bundled.GetSize() == made.GetSize()
        assert bundled.GetOrigin() == pytest.approx(made.GetOrigin(), abs=1e-4)
        assert bundled.GetDirection() == pytest.approx(made.GetDirection(), abs=1e-6)
    # Exactly equal where these files were made; a different SimpleITK build may round a handful of voxels
    # (half-integer intensities, GM/WM ties) the other way, hence the 1e-4 allowance.
    t1, made_t1 = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(made_image)
    assert np.abs(t1 - made_t1).max() <= 1.0 and np.mean(t1 != made_t1) <= 1e-4
    assert np.mean(sitk.GetArrayFromImage(labels) != sitk.GetArrayFromImage(made_labels)) <= 1e-4


def test_1mm_sample_is_the_original_grid_with_the_same_tissue_fractions(sample):
    nilearn_datasets = pytest.importorskip("nilearn.datasets")
    image, labels = load_sample("mni152_1mm")
    original = sitk.ReadImage(nilearn_datasets.MNI152_FILE_PATH)
    assert image.GetSize() == original.GetSize() and image.GetSpacing() == original.GetSpacing()
    assert image.GetOrigin() == original.GetOrigin() and image.GetDirection() == original.GetDirection()
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(original).astype(np.float32))
    fine, coarse = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(sample[1])
    # Downsampling keeps tissue volumes: the fraction of the box (same extent) agrees within 0.3 points.
    for value in (GREY_MATTER, WHITE_MATTER):
        assert abs(np.mean(fine == value) - np.mean(coarse == value)) < 0.003


def test_tissue_rule_on_hand_made_probabilities():
    # (p_gm, p_wm) in 0..255; rest = 255 - p_gm - p_wm.
    p_gm = np.array([200, 40, 100, 90, 85, 10, 120])
    p_wm = np.array([40, 200, 90, 100, 85, 20, 5])
    # 100/90/65: GM though below 0.5; 90/100/65: WM; 85/85/85: tie -> GM; 10/20/225: rest; 120/5/130: rest.
    assert tissue_labels(p_gm, p_wm).tolist() == [1, 2, 1, 2, 1, 0, 0]


def test_unknown_sample_and_bad_spacing_are_input_errors():
    with pytest.raises(InputError, match="unknown sample"):
        load_sample("mni305")
    with pytest.raises(InputError, match="spacing_mm"):
        make_mni_sample(0.5)


def test_missing_nilearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)  # makes "from nilearn import ..." raise ImportError
    with pytest.raises(InputError, match="pip install nilearn"):
        load_sample("mni152_1mm")


def test_ventricles_are_two_mirror_image_deep_fluid_spaces(sample):
    image, labels = sample
    mask = ventricles_from_sample(image, labels)
    tissue, t1 = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(image)
    assert mask.shape == tissue.shape and mask.dtype == bool
    # 1,146 voxels of 8 mm^3 (9.2 mL) where this was written; lateral ventricles of young adults are ~5-20 mL.
    assert 700 <= mask.sum() <= 1600
    _, count = ndimage.label(mask)
    assert count == 2
    # The template is symmetric and x = 0 (the midline) is index 49 of 99: left-right flip maps it to itself.
    assert image.TransformIndexToPhysicalPoint((49, 0, 0))[0] == pytest.approx(0.0)
    mirrored = mask[:, :, ::-1]
    assert 2 * np.sum(mask & mirrored) / (mask.sum() + mirrored.sum()) >= 0.95
    assert np.all(tissue[mask] == 0)
    assert np.median(t1[mask]) < 0.6 * np.median(t1[tissue == GREY_MATTER])
    # Near the brain's centre: centroid within 25 mm of the brain's centroid.
    spacing = np.asarray(image.GetSpacing()[::-1])
    offset = (np.asarray(ndimage.center_of_mass(mask)) - np.asarray(ndimage.center_of_mass(tissue > 0))) * spacing
    assert np.linalg.norm(offset) <= 25.0

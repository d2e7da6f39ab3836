"""The bundled real sample: the MNI ICBM152 2009 T1 template with grey/white-matter labels.

The template (Fonov et al., NeuroImage 2011, "Unbiased average age-appropriate atlases for pediatric studies";
nonlinear symmetric 2009a version) ships inside nilearn with its tissue probability maps, 197 x 233 x 189 voxels
of 1 mm, uint8 0..255. ``make_mni_sample`` turns it into a (T1, tissue labels) pair; ``Resources/SampleData``
holds its 2 mm output (made by ``Resources/SampleData/make_sample.py``), so the demo and the tests need no
download. ``ventricles_from_sample`` derives a small deep structure (the lateral ventricles) for the benchmark.

Label values: 0 = rest (CSF, background), 1 = grey matter, 2 = white matter.
"""
from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.paths import sample_data_dir

BACKGROUND, GREY_MATTER, WHITE_MATTER = 0, 1, 2
LABEL_NAMES = {GREY_MATTER: "grey matter", WHITE_MATTER: "white matter"}

SAMPLE_FILES = {"mni152_2mm": ("mni152_t1_2mm.nii.gz", "mni152_tissue_2mm.nii.gz")}
ON_THE_FLY = {"mni152_1mm": 1.0}  # built from nilearn's copy when asked for, not shipped (too large)


def _nilearn_paths() -> tuple[str, str, str]:
    try:
        from nilearn import datasets
    except ImportError as error:
        raise InputError(f"the MNI152 template comes with nilearn, which is missing: pip install nilearn ({error})")
    return datasets.MNI152_FILE_PATH, datasets.GM_MNI152_FILE_PATH, datasets.WM_MNI152_FILE_PATH


def _target_grid(source: sitk.Image, spacing_mm: float) -> sitk.Image:
    """An empty grid of ``spacing_mm`` voxels with the source's origin and direction whose voxel centres stay
    inside the source's (first and last centres coincide for odd sizes at 2 mm): no extrapolated voxel, and the
    physical extent differs from the source's by less than one new voxel."""
    size = [int(math.floor((n - 1) * s / spacing_mm)) + 1 for n, s in zip(source.GetSize(), source.GetSpacing())]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing([spacing_mm] * 3)
    grid.SetOrigin(source.GetOrigin())
    grid.SetDirection(source.GetDirection())
    return grid


def _downsample(image: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """Linear resampling onto ``grid`` after an anti-aliasing Gaussian.

    At 2 mm the new voxel centres fall on every other old centre, so plain linear interpolation would be mere
    decimation (aliased, and blind to half the data). A 2 mm voxel integrates a 2 mm box; the Gaussian with the
    variance that a 2 mm box has beyond a 1 mm box, (2^2 - 1^2) / 12 mm^2 per axis, stands in for that.
    """
    image = sitk.Cast(image, sitk.sitkFloat32)
    variance = [max(0.0, (new**2 - old**2) / 12.0) for new, old in zip(grid.GetSpacing(), image.GetSpacing())]
    if max(variance) > 0:
        image = sitk.DiscreteGaussian(image, variance=variance, maximumKernelWidth=64, maximumError=0.001,
                                      useImageSpacing=True)
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def tissue_labels(p_gm: np.ndarray, p_wm: np.ndarray, scale: float = 255.0) -> np.ndarray:
    """Hard grey/white-matter labels from tissue probability maps (values 0..``scale``), any array shape.

    The voxel takes the most probable of grey matter, white matter and "rest" (``scale - p_gm - p_wm``: CSF and
    outside the brain); ties go to grey matter, then white matter. Wherever one class has p >= 0.5 this is the
    plain "p >= 0.5 and most probable" rule; it differs only on three-way partial-volume voxels (no class
    above 0.5, about 1 % of the brain at 1 mm), which that rule would leave as unlabelled holes between GM and
    WM although one tissue is clearly the most likely.
    """
    p_gm = p_gm.astype(np.float32, copy=False)
    p_wm = p_wm.astype(np.float32, copy=False)
    p_rest = np.float32(scale) - p_gm - p_wm
    grey = (p_gm >= p_wm) & (p_gm >= p_rest)
    white = ~grey & (p_wm > p_gm) & (p_wm >= p_rest)
    labels = np.zeros(p_gm.shape, np.uint8)
    labels[grey] = GREY_MATTER
    labels[white] = WHITE_MATTER
    return labels


def make_mni_sample(spacing_mm: float = 2.0) -> tuple[sitk.Image, sitk.Image]:
    """The MNI ICBM152 2009 T1 template and its GM/WM labels, on an isotropic ``spacing_mm`` grid.

    Args:
        spacing_mm: voxel size. 1.0 gives nilearn's original 197 x 233 x 189 grid untouched; larger values an
            anti-aliased linear resampling (see ``_downsample``) onto a grid with the same origin and direction
            and the same physical extent (within one voxel), e.g. 99 x 117 x 95 at 2 mm.
    Returns:
        (image, labels): float32 T1 in the template's 0..255 scale, rounded to whole numbers so that the uint8
        file of the bundled sample stores it losslessly (the source is uint8: nothing is lost); uint8 labels
        0 = rest, 1 = grey matter, 2 = white matter (``tissue_labels``; the probability maps are resampled the
        same way as the image, then labelled). Both carry the template's geometry.
    """
    try:
        spacing_ok = math.isfinite(float(spacing_mm)) and float(spacing_mm) >= 1.0
    except (TypeError, ValueError):
        spacing_ok = False
    if not spacing_ok:
        raise InputError(f"spacing_mm must be a number >= 1 (the template's own 1 mm or coarser), got {spacing_mm!r}")
    t1_path, gm_path, wm_path = _nilearn_paths()
    t1, gm, wm = (sitk.ReadImage(str(path)) for path in (t1_path, gm_path, wm_path))
    if spacing_mm == 1.0 and all(abs(s - 1.0) < 1e-6 for s in t1.GetSpacing()):
        image = sitk.Cast(t1, sitk.sitkFloat32)
        p_gm, p_wm = sitk.GetArrayViewFromImage(gm), sitk.GetArrayViewFromImage(wm)
    else:
        grid = _target_grid(t1, float(spacing_mm))
        smooth = _downsample(t1, grid)
        image = sitk.GetImageFromArray(np.rint(sitk.GetArrayViewFromImage(smooth)).astype(np.float32))
        image.CopyInformation(grid)
        p_gm = sitk.GetArrayFromImage(_downsample(gm, grid))
        p_wm = sitk.GetArrayFromImage(_downsample(wm, grid))
    labels = sitk.GetImageFromArray(tissue_labels(p_gm, p_wm))
    labels.CopyInformation(image)
    return image, labels


def load_sample(name: str = "mni152_2mm") -> tuple[sitk.Image, sitk.Image]:
    """A named sample as (float32 image, uint8 labels) SimpleITK images with geometry.

    ``"mni152_2mm"`` reads the bundled files (no nilearn needed); ``"mni152_1mm"`` is built from nilearn's
    copy of the template with ``make_mni_sample(1.0)``.
    """
    if name in ON_THE_FLY:
        return make_mni_sample(ON_THE_FLY[name])
    if name not in SAMPLE_FILES:
        raise InputError(f"unknown sample {name!r}; choose one of {sorted(SAMPLE_FILES) + sorted(ON_THE_FLY)}")
    folder = sample_data_dir()
    paths = [folder / file_name for file_name in SAMPLE_FILES[name]]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise InputError(f"sample {name!r} is incomplete, missing {missing}: reinstall, or run make_sample.py there")
    image = sitk.Cast(sitk.ReadImage(str(paths[0])), sitk.sitkFloat32)
    labels = sitk.Cast(sitk.ReadImage(str(paths[1])), sitk.sitkUInt8)
    return image, labels


def ventricles_from_sample(image: sitk.Image, labels: sitk.Image, search_radius_mm: float = 25.0) -> np.ndarray:
    """The lateral ventricles of a T1 brain with GM/WM labels, as a boolean (z, y, x) mask.

    A small deep structure for the benchmark (the sample's own labels are large). Ventricles are CSF: dark on
    T1, neither GM nor WM, enclosed by the brain in axial slices, and deep. Candidates are such voxels at least
    10 mm inside the brain's outline and in the darkest fifth of the range from CSF to grey matter (the
    ventricles' core: a looser threshold lets partial-volume voxels join them to the third ventricle and the
    cisterns). The lateral ventricles are the largest candidate component whose centroid lies above the
    brain's centre (the third ventricle and the quadrigeminal cistern lie below it) and within
    ``search_radius_mm`` of it, together with any such component at least 3/4 its size (the other
    hemisphere's ventricle where the septum separates them). On the template this gives two mirror-image
    components of about 5,200 voxels each at 1 mm (about 570 each at 2 mm).
    """
    intensity = sitk.GetArrayFromImage(image).astype(np.float32)
    tissue = sitk.GetArrayViewFromImage(labels)
    if intensity.shape != tissue.shape:
        raise InputError(f"image {intensity.shape} and labels {tissue.shape} differ in size")
    sampling = np.asarray(image.GetSpacing()[::-1], float)  # (z, y, x) mm
    brain = tissue > 0
    if not (tissue == GREY_MATTER).any():
        raise InputError("the label map holds no grey matter (label 1): is this a brain with GM/WM labels?")
    # Outline of the brain: close the sulci (3 mm), then fill each axial slice; a 3D fill would not do, since
    # the ventricles reach the outside through the aqueduct and the fourth ventricle.
    steps = max(1, int(round(3.0 / sampling.min())))
    closed = ndimage.binary_closing(np.pad(brain, steps), ndimage.generate_binary_structure(3, 1), steps)
    hull = np.stack([ndimage.binary_fill_holes(s) for s in closed[steps:-steps, steps:-steps, steps:-steps]])
    fluid = (ndimage.distance_transform_edt(hull, sampling=sampling) >= 10.0) & ~brain
    if not fluid.any():
        raise InputError("no fluid space deep inside the brain: is this a T1 brain with GM/WM labels?")
    csf_level = np.percentile(intensity[fluid], 5)
    grey_level = np.median(intensity[tissue == GREY_MATTER])
    candidates = fluid & (intensity < csf_level + 0.2 * (grey_level - csf_level))
    components, count = ndimage.label(candidates)
    ids = np.arange(1, count + 1)
    sizes = np.asarray(ndimage.sum_labels(candidates, components, ids))

    def physical(index_zyx: np.ndarray) -> np.ndarray:
        return np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index_zyx[::-1]]))

    centre = physical(np.asarray(ndimage.center_of_mass(brain)))
    offsets = np.array([physical(np.asarray(c)) - centre for c in ndimage.center_of_mass(candidates, components, ids)])
    # Superior is +z in both LPS (ITK) and RAS physical space.
    near = (np.linalg.norm(offsets, axis=1) <= search_radius_mm) & (offsets[:, 2] > 0) if count else np.zeros(0, bool)
    if not near.any():
        raise InputError(f"no dark fluid space above and within {search_radius_mm} mm of the brain's centre")
    keep = ids[near & (sizes >= 0.75 * sizes[near].max())]
    return np.isin(components, keep)

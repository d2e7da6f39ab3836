"""A sample a first-time user can segment in one click: the bundled MNI brain MR with 3 painted slices.

Registered in Slicer's Sample Data module (category "ContrastiveSeg"): pressing it loads the bundled 2 mm MNI152
T1 (Resources/SampleData, no download) and a segmentation where grey and white matter are painted on 3 axial
slices, chosen as the benchmark chooses them (evenly between 10 % and 90 % of the brain's extent), so pressing
Segment right away shows what the module does. Slicer's Sample Data module calls a source's ``customDownloader``
when its button is pressed (Slicer, Modules/Scripted/SampleData/SampleData.py, line 454); that is how a sample
that needs no download, and comes with its painting, is offered. No Qt here: the registration is given the
Sample Data logic class, so it is tested without Slicer's GUI.
"""
from __future__ import annotations

import numpy as np

CATEGORY = "ContrastiveSeg"
SAMPLE_NAME = "ContrastiveSeg brain MR, 3 painted slices"
PAINTED_SLICES = 3
STRUCTURES = ((1, "Grey matter", (0.95, 0.55, 0.20)), (2, "White matter", (0.30, 0.60, 1.00)))


def painted_slices(labels: np.ndarray, count: int = PAINTED_SLICES, axis: int = 0) -> list[int]:
    """The slices painted in the sample: ``count`` evenly between 10 % and 90 % of the structures' extent."""
    from ContrastiveSegLib.evaluation.metrics import choose_annotated_slices

    return [int(s) for s in choose_annotated_slices(labels, axis, count)]


def load_painted_sample(scene, count: int = PAINTED_SLICES):
    """Add the sample scan and its painted segmentation to ``scene``; returns (volume node, segmentation node)."""
    import SimpleITK as sitk

    from ContrastiveSegLib.data.sample import load_sample
    from ContrastiveSegLib.io.volume import Volume
    from ContrastiveSegLib.slicer import nodes

    image, labels = load_sample("mni152_2mm")
    geometry = (image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    volume_node = nodes.array_to_volume(Volume(sitk.GetArrayFromImage(image), *geometry), scene, "MNI152 T1")
    reference = sitk.GetArrayFromImage(labels)
    slices = painted_slices(reference, count)
    sparse = np.zeros_like(reference)
    sparse[slices] = reference[slices]
    segments = [nodes.SegmentInfo("", name, color, value) for value, name, color in STRUCTURES]
    segmentation_node = nodes.write_result(sparse, volume_node, segments, None, name="MNI152 painted slices")
    return volume_node, segmentation_node


def register_sample(sample_data_logic, scene_getter, thumbnail: str | None = None, on_loaded=None) -> None:
    """Register the sample with Slicer's Sample Data module.

    Args:
        sample_data_logic: ``SampleData.SampleDataLogic`` (its static ``registerCustomSampleDataSource``).
        scene_getter: returns the scene to load into (``lambda: slicer.mrmlScene``), read when pressed.
        thumbnail: the picture shown on the button.
        on_loaded: ``on_loaded(volume_node, segmentation_node)`` after loading (the module selects them).
    """

    def load(source=None):
        loaded = load_painted_sample(scene_getter())
        if on_loaded is not None:
            on_loaded(*loaded)
        return loaded

    sample_data_logic.registerCustomSampleDataSource(
        category=CATEGORY, sampleName=SAMPLE_NAME, uris=[], fileNames=[], nodeNames=[], customDownloader=load,
        thumbnailFileName=thumbnail)

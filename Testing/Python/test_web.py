"""The browser front end end to end: a real server (``contrastiveseg web``), headless Chromium, real mouse drags.

Paint 3 axial slices by dragging in the axial view, check on the server that the painted voxels lie on those
slices where the strokes went, press Segment (a few steps on the CPU, in the worker child), check the result on
the server and in the page's pixels, Save and read the files back. Every wait is on server state (read through
``window.trame.state``) or on the page's pixels, with a hang guard, never a fixed sleep.

Needs the ``web`` extra (trame-slicer pins slicer-core 5.11 / VTK 9.6, so it lives in its own venv) and Debian's
``chromium`` + ``chromium-driver``; .ci/run makes that venv and runs this file there. Also here: the trame-slicer
workaround checks, which fail once upstream fixes what ContrastiveSegLib/web/workarounds.py works around.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="needs the 'web' extra (pip install '.[web]'); .ci/run runs this file "
                    "in a venv that has it")
pytest.importorskip("selenium", reason="needs the 'web' extra (selenium)")

from ContrastiveSegLib.io.volume import read_volume, write_volume  # noqa: E402
from ContrastiveSegLib.paths import sample_data_dir  # noqa: E402

from ContrastiveSegLib.io.volume import Volume  # noqa: E402
from ContrastiveSegLib.web.driver import (CHROMEDRIVER, CHROMIUM, click, drag_across, set_state,  # noqa: E402
                                          start_browser, start_server, state, view_segment_pixels, views, wait_for)

SLICES = (8, 15, 22)  # painted axial slices of the cropped sample (30 slices)
UNPAINTED = 12  # a slice between them, where only the result can put colour
STRAY = 26  # painted by mistake, then undone


def crop_sample(folder: Path) -> Path:
    """30 axial slices of the bundled MNI152 T1 (2 mm), geometry kept: a small volume for a quick Segment."""
    sample = read_volume(sample_data_dir() / "mni152_t1_2mm.nii.gz")
    start = 30
    array = np.ascontiguousarray(sample.array[start:start + 30])
    direction = np.array(sample.direction).reshape(3, 3)
    origin = np.array(sample.origin) + direction @ (np.array([0, 0, start]) * np.array(sample.spacing))
    path = folder / "mni_crop.nii.gz"
    write_volume(Volume(array, sample.spacing, tuple(origin), sample.direction), path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web")
    scan = crop_sample(folder)
    running = start_server([scan], folder)
    yield dict(url=running.url, folder=folder, scan=scan, started=running.started, log=running.log)
    running.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver); "
                    ".ci/run installs them")
    downloads = tmp_path_factory.mktemp("downloads")
    driver = start_browser(downloads=downloads)
    driver.downloads = downloads
    yield driver
    driver.quit()


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_paint_segment_save_in_a_real_browser(server, browser):
    timings = {}
    browser.get(server["url"])
    wait_for(lambda: state(browser, "ready") and state(browser, "scan_name") == "mni_crop", "the page with the scan")
    timings["ready_s"] = time.monotonic() - server["started"]
    wait_for(lambda: state(browser, "clients") == 1, "the server to count this page")
    axial = views(browser)[0]  # the big axial view, left of the 3D, coronal and sagittal ones
    click(browser, "tool-paint")

    strokes = []
    for k in SLICES:
        set_state(browser, axial_slice=k)
        wait_for(lambda k=k: state(browser, "axial_shown") == k, f"the axial view on slice {k}")
        before = time.monotonic()
        drag_across(browser, axial)
        wait_for(lambda k=k: (state(browser, "painted") or {}).get("Segment 1", {}).get("k", {}).get(str(k)),
                 f"paint on slice {k} on the server")
        strokes.append(time.monotonic() - before)
        wait_for(lambda: view_segment_pixels(axial) >= 50, f"the stroke on slice {k} in the view",
                 timeout=60)
    timings["stroke_to_server_s"] = strokes

    # A stray stroke, then Undo: it is gone from the server's segmentation.
    set_state(browser, axial_slice=STRAY)
    wait_for(lambda: state(browser, "axial_shown") == STRAY, "the axial view on the stray slice")
    drag_across(browser, axial, dx=30, steps=3)
    wait_for(lambda: str(STRAY) in (state(browser, "painted") or {}).get("Segment 1", {}).get("k", {}),
             "the stray stroke on the server")
    click(browser, "undo")
    wait_for(lambda: sorted(map(int, state(browser, "painted")["Segment 1"]["k"])) == list(SLICES), "Undo")

    # On the server: only the three slices are painted, each by a horizontal band through the middle.
    report = state(browser, "painted")
    assert list(report) == ["Segment 1"] and sorted(map(int, report["Segment 1"]["k"])) == list(SLICES), report
    shape = read_volume(server["scan"]).array.shape  # (k, j, i) = (30, 109, 91)
    for k in SLICES:
        count, r0, r1, c0, c1 = report["Segment 1"]["k"][str(k)]
        rows, cols = r1 - r0 + 1, c1 - c0 + 1
        assert cols > 2 * rows and cols >= 10, f"slice {k}: a horizontal stroke, got {rows} rows x {cols} columns"
        assert abs((r0 + r1) / 2 - (shape[1] - 1) / 2) < 0.15 * shape[1], (k, r0, r1)
        assert abs((c0 + c1) / 2 - (shape[2] - 1) / 2) < 0.15 * shape[2], (k, c0, c1)
        assert count >= cols  # a band, not a line of dots
    assert state(browser, "painted_lines") == ["Segment 1: 3 axial slices (k = 8, 15, 22)"]

    # The unpainted slice between the strokes shows no segment colour yet.
    set_state(browser, axial_slice=UNPAINTED)
    wait_for(lambda: state(browser, "axial_shown") == UNPAINTED, "the axial view on the unpainted slice")
    # (the view's image is streamed after the slice moved: wait for it to show the unpainted slice)
    wait_for(lambda: 0 <= view_segment_pixels(axial) < 20, "the unpainted slice without segment colour",
             timeout=60)

    # Segment: a few steps on the CPU in the worker child; the page keeps answering while it runs.
    set_state(browser, device="cpu", preset="fast", steps="6", show_uncertainty=False)
    wait_for(lambda: state(browser, "steps") == "6", "the options")
    clicked = time.monotonic()
    click(browser, "segment")
    wait_for(lambda: state(browser, "running"), "the run to start", timeout=60)
    lines = set()
    wait_for(lambda: lines.add(state(browser, "run_line") or "") or state(browser, "run_count") == 1, "the run")
    assert state(browser, "run_ok") is True, (state(browser, "error"), server["log"].read_text()[-3000:])
    assert any(line.startswith("Fine-tuning") and "loss" in line for line in lines), lines
    result = state(browser, "result")["Segment 1"]
    assert result["slices"] > len(SLICES) and result["voxels"] > sum(v[0] for v in report["Segment 1"]["k"].values())

    # In the page: the result's colour now on the slice nobody painted.
    pixels = wait_for(lambda: view_segment_pixels(axial) >= 50, "the result in the axial view",
                      timeout=60)
    timings["segment_click_to_visible_s"] = time.monotonic() - clicked
    assert pixels
    browser.save_screenshot(str(server["folder"] / "web.png"))
    if os.environ.get("CONTRASTIVESEG_WEB_SCREENSHOT"):
        browser.save_screenshot(os.environ["CONTRASTIVESEG_WEB_SCREENSHOT"])

    # Suggest next slice: an unpainted axial slice, and "Go" moves the view there.
    suggestion = state(browser, "suggestion")
    match = re.match(r"Paint axial slice k = (\d+) next \(uncertainty 0\.\d\d\)$", suggestion)
    assert match and int(match.group(1)) not in SLICES, suggestion
    click(browser, "go-suggestion")
    wait_for(lambda: state(browser, "axial_shown") == int(match.group(1)), "Go to the suggested slice")

    # Save: the files are there and hold the result.
    click(browser, "save")
    saved = wait_for(lambda: (state(browser, "saved") or {}).get("seg"), "Save")
    saved = state(browser, "saved")
    labels = read_volume(saved["nifti"])
    assert labels.array.shape == shape and int((labels.array == 1).sum()) == result["voxels"]
    header = Path(saved["seg"]).read_bytes()[:4000].decode("latin-1")
    assert "Segment0_Name:=Segment 1" in header
    assert Path(saved["model"]).is_file() and Path(saved["model"] + ".segments.json").is_file()

    # Download: the browser receives the same bytes.
    click(browser, "download-nifti")
    downloaded = browser.downloads / Path(saved["nifti"]).name
    wait_for(lambda: downloaded.is_file() and downloaded.stat().st_size == Path(saved["nifti"]).stat().st_size,
             "the NIfTI download", timeout=60)
    assert downloaded.read_bytes() == Path(saved["nifti"]).read_bytes()
    print("web timings:", {k: (round(v, 2) if isinstance(v, float) else [round(x, 2) for x in v])
                           for k, v in timings.items()})


@pytest.mark.slow
def test_a_second_browser_is_told_one_session_at_a_time(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server["url"])
    wait_for(lambda: state(browser, "ready") and state(browser, "clients") == 1, "the first page")
    second = start_browser(1200, 800)
    try:
        second.get(server["url"])
        wait_for(lambda: state(second, "clients") == 2, "the second page")
        def message() -> str:
            shown = second.find_elements(By.ID, "second-session")
            return shown[0].text if shown else ""

        assert "one session at a time" in wait_for(message, "the message")
        assert not second.find_element(By.ID, "segment").is_enabled()
    finally:
        second.quit()
    wait_for(lambda: state(browser, "clients") == 1, "the second page to be gone", timeout=60)


@pytest.mark.slow
def test_cancel_stops_the_run_and_keeps_the_scene(server, browser):
    browser.get(server["url"])
    wait_for(lambda: state(browser, "ready") and state(browser, "clients") == 1
             and (state(browser, "painted") or {}).get("Segment 1"), "the page with the last result")
    before, runs = state(browser, "painted"), state(browser, "run_count")
    set_state(browser, device="cpu", preset="fast", steps="5000")
    wait_for(lambda: state(browser, "steps") == "5000", "the options")
    click(browser, "segment")
    wait_for(lambda: (state(browser, "run_line") or "").startswith("Fine-tuning"), "fine-tuning to start")
    click(browser, "cancel")
    wait_for(lambda: state(browser, "run_count") == runs + 1 and not state(browser, "running"), "the cancel")
    assert state(browser, "run_ok") is False and state(browser, "error") == ""
    assert state(browser, "run_line").startswith("Cancelled"), state(browser, "run_line")
    assert state(browser, "painted") == before


@pytest.mark.slow
def test_an_upload_opens_and_a_bad_one_is_one_line_in_the_page(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server["url"])
    wait_for(lambda: state(browser, "ready") and state(browser, "clients") == 1, "the page")
    bad = server["folder"] / "bad.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    upload = browser.find_element(By.CSS_SELECTOR, "input[type=file]")
    upload.send_keys(str(bad))
    error = wait_for(lambda: state(browser, "error"), "the upload's error")
    assert "\n" not in error and "bad.nii.gz" in error, error
    assert state(browser, "scan_name") == "mni_crop"  # the open scan is kept
    good = server["folder"] / "uploaded.nii.gz"
    good.write_bytes(server["scan"].read_bytes())
    upload.send_keys(str(good))
    wait_for(lambda: state(browser, "scan_name") == "uploaded", "the uploaded scan")
    assert state(browser, "error") == ""
    fresh = ["no annotated slice: paint at least one slice of a segment of 'uploaded segmentation'"]
    wait_for(lambda: state(browser, "painted_lines") == fresh, "the new scan's empty paint report", timeout=60)


# ---------------------------------------------------------------------------------- upstream workarounds
def _app_with_effect_before_views(name: str):
    from trame.app import get_server
    from trame_slicer.core import LayoutManager, SlicerApp
    from trame_slicer.rca_view import register_rca_factories
    from trame_slicer.segmentation import SegmentationEffectPaint

    server = get_server(name, client_type="vue3")
    app = SlicerApp()
    app.segmentation_editor.get_effect(SegmentationEffectPaint)  # parameters in the scene before the views
    register_rca_factories(app.view_manager, server)
    layout = LayoutManager(app.scene, app.view_manager, server)
    layout.register_layout_dict(LayoutManager.default_grid_configuration())
    return app


def test_workaround_paint_pipelines_still_made_without_views():
    """Fails when trame-slicer gives every effect pipeline its view: then delete workarounds.attach_views."""
    from ContrastiveSegLib.web import workarounds

    app = _app_with_effect_before_views("pipelines-check")
    missing = workarounds.pipelines_without_view(app)
    assert missing, "trame-slicer now gives effect pipelines their views: remove workarounds.attach_views"
    assert workarounds.attach_views(app) == len(missing)
    assert workarounds.pipelines_without_view(app) == []


def test_workaround_upstream_brush_still_a_sphere():
    """Fails when upstream's segmentation app starts with a 2D brush: then delete workarounds.use_2d_brush."""
    from trame_slicer.segmentation import SegmentationEffectPaint

    from ContrastiveSegLib.web import workarounds

    assert workarounds.upstream_app_brush_is_sphere(), \
        "trame-slicer's app now starts with a 2D brush: remove workarounds.use_2d_brush"
    app = _app_with_effect_before_views("brush-check")
    effect = app.segmentation_editor.get_effect(SegmentationEffectPaint)
    effect.set_use_sphere_brush(True)
    workarounds.use_2d_brush(effect)
    assert not effect.is_sphere_brush()

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

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="needs the 'web' extra (pip install '.[web]'); .ci/run runs this file "
                    "in a venv that has it")
pytest.importorskip("selenium", reason="needs the 'web' extra (selenium)")

from ContrastiveSegLib.io.volume import read_volume, write_volume  # noqa: E402
from ContrastiveSegLib.paths import sample_data_dir  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
HANG_S = 420  # a guard against a hang, not a speed check: CI's 2 cores may be loaded
SLICES = (8, 15, 22)  # painted axial slices of the cropped sample (30 slices)
UNPAINTED = 12  # a slice between them, where only the result can put colour


# ------------------------------------------------------------------------------------------------ helpers
def wait_for(condition, what: str, timeout: float = HANG_S, poll_s: float = 0.1):
    """Poll ``condition`` until it returns a true value (returned); fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def crop_sample(folder: Path) -> Path:
    """30 axial slices of the bundled MNI152 T1 (2 mm), geometry kept: a small volume for a quick Segment."""
    sample = read_volume(sample_data_dir() / "mni152_t1_2mm.nii.gz")
    start = 30
    array = np.ascontiguousarray(sample.array[start:start + 30])
    direction = np.array(sample.direction).reshape(3, 3)
    origin = np.array(sample.origin) + direction @ (np.array([0, 0, start]) * np.array(sample.spacing))
    path = folder / "mni_crop.nii.gz"
    from ContrastiveSegLib.io.volume import Volume

    write_volume(Volume(array, sample.spacing, tuple(origin), sample.direction), path)
    return path


def segment_pixels(png: bytes) -> int:
    """Pixels of the first segment's colour (reddish orange) in a screenshot: the grey scan has R ~ G ~ B."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int(((rgb[..., 0] - rgb[..., 2] > 80) & (rgb[..., 0] > 150)).sum())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web")
    scan = crop_sample(folder)
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log = open(folder / "server.log", "w")
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "ContrastiveSegLib", "web", str(scan), "--port", str(port),
                                "-o", str(folder / "out")], stdout=log, stderr=subprocess.STDOUT, env=env,
                               cwd=folder, start_new_session=True)

    def listening() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the server ended with {process.returncode}: {(folder / 'server.log').read_text()[-2000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, "the server to listen", timeout=240)
    yield dict(url=f"http://127.0.0.1:{port}/", folder=folder, scan=scan, started=started, log=folder / "server.log")
    os.killpg(process.pid, signal.SIGTERM)  # the server and any worker child it still has
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    log.close()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver); "
                    ".ci/run installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                     "--force-device-scale-factor=1"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def state(driver, key):
    return driver.execute_script("return window.trame && window.trame.state ? window.trame.state.get(arguments[0])"
                                 " : null", key)


def set_state(driver, **values) -> None:
    driver.execute_script("window.trame.state.update(arguments[0])", values)


def click(driver, element_id: str) -> None:
    """Click a page button as a user would, after scrolling the panel to it."""
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, element_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def drag_across(driver, element, dx: int = 70, steps: int = 7) -> None:
    """A left-button stroke through the middle of ``element``, from -dx to +dx pixels, as a user's mouse."""
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(driver, duration=30).move_to_element_with_offset(element, -dx, 0).click_and_hold()
    for _ in range(steps):
        chain = chain.move_by_offset(2 * dx // steps, 0)
    chain.release().perform()


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_paint_segment_save_in_a_real_browser(server, browser):
    from selenium.webdriver.common.by import By

    timings = {}
    browser.get(server["url"])
    wait_for(lambda: state(browser, "ready") and state(browser, "scan_name") == "mni_crop", "the page with the scan")
    timings["ready_s"] = time.monotonic() - server["started"]
    wait_for(lambda: state(browser, "clients") == 1, "the server to count this page")
    views = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "img.image-display-area"), "the views")
    axial = views[0]  # the big axial view, left of the 3D, coronal and sagittal ones
    click(browser, "tool-paint")

    strokes = []
    for k in SLICES:
        set_state(browser, axial_slice=k)
        wait_for(lambda k=k: state(browser, "axial_shown") == k, f"the axial view on slice {k}")
        before = time.monotonic()
        drag_across(browser, axial)
        painted = wait_for(lambda k=k: (state(browser, "painted") or {}).get("Segment 1", {}).get("k", {}).get(str(k)),
                           f"paint on slice {k} on the server")
        strokes.append(time.monotonic() - before)
    timings["stroke_to_server_s"] = strokes

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
    assert segment_pixels(axial.screenshot_as_png) < 20

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
    pixels = wait_for(lambda: segment_pixels(axial.screenshot_as_png) >= 50, "the result in the axial view",
                      timeout=60)
    timings["segment_click_to_visible_s"] = time.monotonic() - clicked
    assert pixels
    browser.save_screenshot(str(server["folder"] / "web.png"))
    if os.environ.get("CONTRASTIVESEG_WEB_SCREENSHOT"):
        browser.save_screenshot(os.environ["CONTRASTIVESEG_WEB_SCREENSHOT"])

    # Save: the files are there and hold the result.
    click(browser, "save")
    saved = wait_for(lambda: (state(browser, "saved") or {}).get("seg"), "Save")
    saved = state(browser, "saved")
    labels = read_volume(saved["nifti"])
    assert labels.array.shape == shape and int((labels.array == 1).sum()) == result["voxels"]
    header = Path(saved["seg"]).read_bytes()[:4000].decode("latin-1")
    assert "Segment0_Name:=Segment 1" in header
    assert Path(saved["model"]).is_file() and Path(saved["model"] + ".segments.json").is_file()
    print("web timings:", {k: (round(v, 2) if isinstance(v, float) else [round(x, 2) for x in v])
                           for k, v in timings.items()})


@pytest.mark.slow
def test_a_second_browser_is_told_one_session_at_a_time(server, browser):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    browser.get(server["url"])
    wait_for(lambda: state(browser, "ready") and state(browser, "clients") == 1, "the first page")
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,800"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    second = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
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

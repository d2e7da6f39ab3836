"""Drive the page as a user would, from Selenium and headless Chromium: for the end-to-end test and the benchmark.

Starts ``contrastiveseg web`` in its own process group, opens Debian's ``chromium`` through ``chromedriver``, reads
and sets the page's state (``window.trame.state``), clicks, drags real mouse strokes, and counts segment-coloured
pixels in a view's screenshot. Every wait polls a condition with a hang guard; none sleeps a fixed time.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


class Timeout(AssertionError):
    """A wait ran past its guard (an AssertionError, so a test reports it as a failure)."""


def wait_for(condition: Callable[[], object], what: str, timeout: float = 420.0, poll_s: float = 0.05):
    """Poll ``condition`` until it returns a true value (returned); Timeout naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running ``contrastiveseg web`` (stop with :meth:`stop`)."""

    process: subprocess.Popen
    url: str
    log: Path
    started: float

    def stop(self) -> None:
        """End the server and any worker child it still has (its whole process group)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_server(scans: list[str | os.PathLike], folder: Path, *, python: str = sys.executable,
                 timeout: float = 240.0) -> Server:
    """Start ``contrastiveseg web SCANS -o folder/out`` on a free port, logging to ``folder/server.log``; returns
    once it listens."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    log = folder / "server.log"
    started = time.monotonic()
    with open(log, "w") as stream:
        process = subprocess.Popen([python, "-m", "ContrastiveSegLib", "web", *map(str, scans), "--port", str(port),
                                    "-o", str(folder / "out")], stdout=stream, stderr=subprocess.STDOUT, env=env,
                                   cwd=folder, start_new_session=True)
    server = Server(process, f"http://127.0.0.1:{port}/", log, started)

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the server ended with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, "the server to listen", timeout=timeout)
    except BaseException:
        server.stop()
        raise
    return server


def start_browser(width: int = 1400, height: int = 900, downloads: Path | None = None):
    """Headless Chromium through chromedriver (Debian's packages), saving downloads into ``downloads``.
    RuntimeError when they are missing."""
    if not (CHROMIUM and CHROMEDRIVER):
        raise RuntimeError("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                     "--force-device-scale-factor=1"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def state(driver, key: str):
    """The page's state variable ``key`` (as the server last sent it), None before the page is connected."""
    return driver.execute_script("return window.trame && window.trame.state ? window.trame.state.get(arguments[0])"
                                 " : null", key)


def set_state(driver, **values) -> None:
    """Set page state as its widgets would (the server's change handlers run)."""
    driver.execute_script("window.trame.state.update(arguments[0])", values)


def click(driver, element_id: str) -> None:
    """Click a page button as a user would, after scrolling the panel to it."""
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, element_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def views(driver) -> list:
    """The slice and 3D views' images, the big axial view first (layout "Axial Primary")."""
    from selenium.webdriver.common.by import By

    return wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "img.image-display-area"), "the views")


def drag_across(driver, element, dx: int = 70, steps: int = 7) -> None:
    """A left-button stroke through the middle of ``element``, from -dx to +dx pixels, as a user's mouse."""
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(driver, duration=30).move_to_element_with_offset(element, -dx, 0).click_and_hold()
    for _ in range(steps):
        chain = chain.move_by_offset(2 * dx // steps, 0)
    chain.release().perform()


def segment_pixels(png: bytes) -> int:
    """Pixels of the first segment's colour (orange-red) in a screenshot; the grey scan has R ~ G ~ B."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((red - blue > 50) & (red - green > 40)).sum())


def view_segment_pixels(element) -> int:
    """:func:`segment_pixels` of a view's current image; -1 while the view has no size yet (before its first
    frame), so that waits for "no colour" or "colour" both keep waiting."""
    size = element.size
    if size["height"] < 2 or size["width"] < 2:
        return -1
    return segment_pixels(element.screenshot_as_png)

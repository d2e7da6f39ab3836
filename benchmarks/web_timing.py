"""How the browser front end feels: start-up, stroke to visible paint, Segment in the page vs the same run from the
CLI, memory of server, worker and browser, install size. Writes benchmarks/results/web.md (and web.json).

Runs in a Python with the ``web`` extra and Debian's chromium + chromium-driver (as .ci/run's web venv)::

    python benchmarks/web_timing.py --repeats 2 --steps 60

Each repeat starts a fresh server on the bundled MNI152 T1 (91 x 109 x 91, 2 mm), paints 3 axial slices by mouse
drags in headless Chromium, saves the painting (the CLI's label map), presses Segment (preset fast, CPU, one torch
thread) and, alternating which goes first, runs the same segmentation with ``contrastiveseg segment``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

import psutil

from ContrastiveSegLib.paths import sample_data_dir
from ContrastiveSegLib.web.driver import (click, drag_across, set_state, start_browser, start_server, state,
                                          view_segment_pixels, views, wait_for)

SLICES = (30, 45, 60)
UNPAINTED = 38
RESULTS = Path(__file__).resolve().parent / "results"


class PeakMemory:
    """Samples the RSS of a process tree every 0.2 s in a thread; ``peak`` is the largest sum seen (bytes)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def tree_rss(pid: int, *, children_only: bool = False) -> int:
    try:
        root = psutil.Process(pid)
        processes = root.children(recursive=True) + ([] if children_only else [root])
        return sum(p.memory_info().rss for p in processes if p.is_running())
    except psutil.Error:
        return 0


def web_run(folder: Path, scan: Path, steps: int) -> dict:
    """One fresh server + browser: start-up, three strokes, Save of the painting, Segment; times in seconds."""
    out: dict = {}
    server = start_server([scan], folder)
    browser = start_browser()
    try:
        browser.get(server.url)
        wait_for(lambda: state(browser, "ready") and state(browser, "scan_name") == scan.name.split(".")[0],
                 "the page with the scan")
        axial = views(browser)[0]
        wait_for(lambda: view_segment_pixels(axial) == 0, "the views")
        out["startup_s"] = time.monotonic() - server.started
        click(browser, "tool-paint")
        out["stroke_to_server_s"], out["stroke_to_visible_s"] = [], []
        for k in SLICES:
            set_state(browser, axial_slice=k)
            wait_for(lambda k=k: state(browser, "axial_shown") == k, f"slice {k}")
            wait_for(lambda: view_segment_pixels(axial) == 0, "an unpainted view", timeout=60)
            drag_across(browser, axial)
            released = time.monotonic()
            wait_for(lambda k=k: (state(browser, "painted") or {}).get("Segment 1", {}).get("k", {}).get(str(k)),
                     "the paint on the server", timeout=120)
            out["stroke_to_server_s"].append(time.monotonic() - released)
            wait_for(lambda: view_segment_pixels(axial) >= 50, "the paint in the view", poll_s=0.02,
                     timeout=120)
            out["stroke_to_visible_s"].append(time.monotonic() - released)
        click(browser, "save")
        saved = wait_for(lambda: (state(browser, "saved") or {}).get("nifti"), "Save")
        labels = folder / "painted.nii.gz"
        os.replace(saved, labels)
        out["labels"] = str(labels)
        set_state(browser, axial_slice=UNPAINTED, device="cpu", preset="fast", steps=str(steps),
                  show_uncertainty=True)
        wait_for(lambda: state(browser, "axial_shown") == UNPAINTED and state(browser, "steps") == str(steps),
                 "the options")
        out["server_rss_idle_mb"] = tree_rss(server.process.pid) / 2**20
        peak = PeakMemory(server.process.pid)
        clicked = time.monotonic()
        click(browser, "segment")
        wait_for(lambda: state(browser, "run_count") == 1, "the run", timeout=1800, poll_s=0.1)
        out["run_ok"] = state(browser, "run_ok")
        wait_for(lambda: view_segment_pixels(axial) >= 50, "the result in the view", timeout=120,
                 poll_s=0.02)
        out["segment_to_visible_s"] = time.monotonic() - clicked
        out["server_and_worker_peak_mb"] = peak.stop() / 2**20
        out["server_rss_after_mb"] = tree_rss(server.process.pid) / 2**20
        out["browser_rss_mb"] = tree_rss(browser.service.process.pid, children_only=True) / 2**20
        out["run_line"] = state(browser, "run_line")
    finally:
        browser.quit()
        server.stop()
    return out


def cli_run(folder: Path, scan: Path, labels: Path, steps: int) -> dict:
    """The same segmentation from the command line (what the worker child runs), timed from start to exit."""
    command = [sys.executable, "-m", "ContrastiveSegLib", "segment", str(scan), labels, "-o",
               str(folder / "cli.nii.gz"), "--preset", "fast", "--steps", str(steps), "--device", "cpu", "--seed", "0",
               "--probabilities", str(folder / "cli-probabilities.nrrd"), "--model-out",
               str(folder / "cli.safetensors"), "--progress", "none"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = PeakMemory(process.pid)
    _, stderr = process.communicate(timeout=1800)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(stderr.decode()[-2000:])
    return {"cli_s": seconds, "cli_peak_mb": peak.stop() / 2**20}


def install_size() -> dict:
    """Sizes (MiB) of this environment's site-packages, of torch in it, and of what the web extra adds."""
    import site

    site_packages = Path(site.getsitepackages()[0])

    def du(path: Path) -> float:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0

    web = ["trame", "trame_client", "trame_server", "trame_vuetify", "trame_rca", "trame_common", "trame_slicer",
           "wslink", "vtkmodules", "vtk.libs", "slicer", "slicer_core", "slicer_layer_dm", "LayerDMLib", "selenium", "aiohttp",
           "pillow_avif", "lxml"]
    return {"site_packages_mb": du(site_packages), "torch_mb": du(site_packages / "torch"),
            "web_packages_mb": sum(du(site_packages / name) for name in web)}


def write_report(runs: list[dict], sizes: dict, steps: int, path: Path) -> None:
    def med(key: str) -> float:
        return median(r[key] for r in runs)

    def each(key: str, digits: int = 1) -> str:
        return ", ".join(f"{r[key]:.{digits}f}" for r in runs)

    strokes_server = [s for r in runs for s in r["stroke_to_server_s"]]
    strokes_visible = [s for r in runs for s in r["stroke_to_visible_s"]]
    slower = (med("segment_to_visible_s") / med("cli_s") - 1) * 100
    loads = ", ".join(f"{r.get('load_1min', 0):.1f}" for r in runs)
    lines = [
        "# The browser front end: start-up, paint, Segment vs the CLI, memory, install size",
        "",
        f"`python benchmarks/web_timing.py --repeats {len(runs)} --steps {steps}` in the web venv "
        f"({platform.python_version()}, {os.cpu_count()} cores, no GPU, headless Chromium on the same machine, "
        f"1-minute load average after each repeat {loads}: other engineers' jobs were running). Scan: the bundled MNI152 T1, "
        f"91 x 109 x 91 at 2 mm; 3 axial slices painted by mouse drags; Segment with preset fast, {steps} steps, "
        "CPU, one torch thread, probabilities on. Medians over the repeats (each with a fresh server and browser).",
        "",
        "| measure | median | all runs | goal (issue 17) |",
        "|---|---|---|---|",
        f"| start-up: server start to usable page (scan shown) | {med('startup_s'):.1f} s | "
        f"{each('startup_s')} | 20 s on a quiet machine |",
        f"| stroke: mouse release to paint on the server | {median(strokes_server):.2f} s | "
        f"{', '.join(f'{s:.2f}' for s in strokes_server)} | |",
        f"| stroke: mouse release to paint visible in the page | {median(strokes_visible):.2f} s | "
        f"{', '.join(f'{s:.2f}' for s in strokes_visible)} | 0.5 s |",
        f"| Segment click to result visible in the page | {med('segment_to_visible_s'):.1f} s | "
        f"{each('segment_to_visible_s')} | |",
        f"| the same run from the CLI (start to exit) | {med('cli_s'):.1f} s | "
        f"{each('cli_s')} | |",
        f"| web vs CLI | {slower:+.0f} % | | at most +10 % |",
        f"| server RSS, scan open, idle | {med('server_rss_idle_mb'):.0f} MiB | | |",
        f"| server + worker child, peak during Segment | {med('server_and_worker_peak_mb'):.0f} MiB | | |",
        f"| CLI run alone, peak | {med('cli_peak_mb'):.0f} MiB | | |",
        f"| headless Chromium (all its processes) | {med('browser_rss_mb'):.0f} MiB | | |",
        f"| install: site-packages of the web venv (CPU torch) | {sizes['site_packages_mb'] / 1024:.1f} GiB | "
        f"torch {sizes['torch_mb'] / 1024:.1f} GiB, web extra's packages (trame, VTK, slicer-core, selenium) "
        f"{sizes['web_packages_mb']:.0f} MiB | |",
        "",
        "How each figure is taken: start-up from launching `contrastiveseg web SCAN` to the page connected with the "
        "scan in its views (Python imports, the MRML scene and four views, reading the scan); a stroke from the "
        "mouse release to the painted slice in the server's paint report, and to segment-coloured pixels in the "
        "axial view's streamed image (polled every 20 ms; the brush outline shows while dragging, so this is the "
        "slowest view of it); Segment from the click to the result's colour on an unpainted slice (writing the "
        "exchange files, the worker child, reading the result, probabilities and uncertainty back, surfaces for "
        "3D, the render and its stream), against the same `contrastiveseg segment` command line the worker runs, "
        "from start to exit, on the painting the page saved. Web and CLI runs alternate which goes first. Memory: "
        "resident set sizes sampled every 0.2 s (server with its worker child; all of Chromium's processes). "
        "Install size: this venv's site-packages (the `test` extra's ITK wheels included).",
        "",
    ]
    path.write_text("\n".join(lines))
    kept = [{k: v for k, v in r.items() if not k.startswith("labels")} for r in runs]  # temporary paths
    path.with_suffix(".json").write_text(json.dumps({"steps": steps, "runs": kept, "sizes": sizes}, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=RESULTS / "web.md")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the runs kept in the .json beside --out (no new runs)")
    args = parser.parse_args()
    if args.report_only:
        kept = json.loads(args.out.with_suffix(".json").read_text())
        write_report(kept["runs"], kept["sizes"], kept["steps"], args.out)
        print(args.out.read_text())
        return 0
    scan = sample_data_dir() / "mni152_t1_2mm.nii.gz"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            folder = Path(tmp) / f"run{repeat}"
            folder.mkdir()
            cli_first = repeat % 2 == 1
            run = web_run(folder, scan, args.steps) if not cli_first else None
            labels = Path(run["labels"]) if run else None
            if cli_first:  # the painting of the previous repeat, so the CLI can go first
                labels = folder / "painted.nii.gz"
                os.replace(runs[-1]["labels_copy"], labels)
                cli = cli_run(folder, scan, labels, args.steps)
                run = web_run(folder, scan, args.steps)
            else:
                cli = cli_run(folder, scan, labels, args.steps)
            run.update(cli)
            run["load_1min"] = os.getloadavg()[0]
            run["labels_copy"] = str(folder / "painted-copy.nii.gz")
            Path(run["labels_copy"]).write_bytes(Path(run["labels"]).read_bytes())
            print(json.dumps({k: v for k, v in run.items() if not k.startswith("labels")}), flush=True)
            runs.append(run)
    write_report(runs, install_size(), args.steps, args.out)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The browser page: Slicer's slice and 3D views and Segment Editor (trame-slicer) beside the ContrastiveSeg panel.

Thin by design: widgets gather inputs and call :class:`~.session.Session`; one asyncio ticker (every 0.25 s)
ticks the session's run driver (the bridge's :class:`~ContrastiveSegLib.slicer.driver.RunDriver`, which Slicer's
module ticks from a Qt timer: progress, the result, then the uncertainty scored in a worker child) and refreshes
the painted-slice summary when the paint changed. State the page shows (and the end-to-end test reads through
``window.trame.state``):

    scan_name, painted_lines, painted (see nodes.Annotation.painted_extents), run_line, run_fraction, running,
    run_ok, can_undo_result, suggestion, saved, error, clients, axial_slice / axial_slices

Needs the ``web`` extra (trame-slicer, which brings slicer-core 5.11 and VTK 9.6).
"""
from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from trame.app import TrameApp
from trame.decorators import change, trigger
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout

from trame_slicer.core import LayoutManager, SlicerApp
from vtkmodules.vtkCommonCore import vtkObject
from wslink.websocket import LinkProtocol
from trame_slicer.rca_view import register_rca_factories
from undo_stack import UndoStack
from trame_slicer.segmentation import (SegmentationEffectErase, SegmentationEffectNoTool,
                                       SegmentationEffectPaint)

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.options import DEFAULT_DEVICE, DEFAULT_PRESET, DEVICE_KINDS, PRESET_NAMES, RANDOM_INIT
from ContrastiveSegLib.paths import sample_data_dir
from ContrastiveSegLib.slicer.geometry import describe_axis
from ContrastiveSegLib.slicer.job import JobOptions
from ContrastiveSegLib.slicer.nodes import ijk_to_ras
from ContrastiveSegLib.web import MAX_UPLOAD_BYTES, workarounds
from ContrastiveSegLib.web.scans import ScanFolders
from ContrastiveSegLib.web.session import Session

SAMPLE_SCAN = "mni152_t1_2mm.nii.gz"
"""The bundled scan the page opens with one click (always readable, whatever folders were given)."""
TICK_S = 0.25
UNDO_STEPS = 20
LAYOUT = "Axial Primary"
TOOLS = {"navigate": SegmentationEffectNoTool, "paint": SegmentationEffectPaint, "erase": SegmentationEffectErase}

log = logging.getLogger("contrastiveseg.web")


def _encoders() -> list[str]:
    from ContrastiveSegLib.zoo.registry import shipped_encoders

    return [""] + [entry["name"] for entry in shipped_encoders()] + [RANDOM_INIT]


class ContrastiveSegWebApp(TrameApp):
    """One server, one scene, one page (a second browser is told that a session is open)."""

    def __init__(self, places, output_dir, server=None) -> None:
        super().__init__(server, client_type="vue3")
        sample = sample_data_dir() / SAMPLE_SCAN
        self.folders = ScanFolders([*places, sample] if sample.is_file() else list(places))
        self.slicer_app = SlicerApp()
        vtkObject.GlobalWarningDisplayOff()  # VTK 9.6 deprecation chatter from every view's interactor
        self.session = Session(self.slicer_app.scene, self.folders, output_dir)
        self.slicer_app.segmentation_editor.set_undo_stack(UndoStack(undo_limit=UNDO_STEPS))
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUT)
        self._paint_stamp = None
        self._clients = 0
        self._init_state()
        self._build_ui()
        self.server.controller.on_server_ready.add(self._on_ready)
        # Count open pages by their websockets (a closed or crashed tab counts down too, unlike the page's own
        # "exited" message, which a killed browser never sends).
        self.server.add_protocol_to_configure(lambda protocol: protocol.registerLinkProtocol(
            _ConnectionCounter(self._set_clients)))

    # ------------------------------------------------------------------------------------------ state
    def _init_state(self) -> None:
        s = self.state
        s.scan_choices = self.folders.listing()
        s.scan_name = ""
        s.scan_path = ""
        s.segments = []
        s.active_segment = ""
        s.new_segment_name = ""
        s.tool = "navigate"
        s.brush_size = 5.0
        s.painted_lines = []
        s.painted = {}
        s.encoder_choices = _encoders()
        s.encoder = ""
        s.device = DEFAULT_DEVICE
        s.device_choices = list(DEVICE_KINDS)
        s.preset = DEFAULT_PRESET
        s.preset_choices = list(PRESET_NAMES)
        s.steps = ""
        s.show_uncertainty = True
        s.running = False
        s.run_line = ""
        s.run_fraction = 0
        s.run_ok = None
        s.run_count = 0
        s.can_undo_result = False
        s.suggestion = ""
        s.model_path = ""
        s.saved = {}
        s.error = ""
        s.clients = 0
        s.axial_slice = 0
        s.axial_slices = 0
        s.axial_shown = -1
        s.result = {}
        s.ready = False

    # --------------------------------------------------------------------------------------------- ui
    def _build_ui(self) -> None:
        with SinglePageWithDrawerLayout(self.server, full_height=True) as layout:
            layout.title.set_text("ContrastiveSeg")
            layout.drawer.width = 360
            layout.footer.hide()
            with layout.toolbar:
                v3.VSpacer()
                html.Div("{{ scan_name }}", classes="text-body-2 mr-4", id="scan-name")
            with layout.drawer:
                self._panel()
            with layout.content:
                with html.Div(style="position: relative; height: 100%;"):
                    self.layout_manager.initialize_layout_grid(layout)
                    with v3.VOverlay(model_value=("clients > 1",), contained=True, persistent=True,
                                     classes="align-center justify-center"):
                        v3.VAlert("Another browser is connected to this server. ContrastiveSeg serves one session "
                                  "at a time: close the other page (or this one).", type="warning",
                                  id="second-session")
        self.ui = layout

    def _panel(self) -> None:
        with html.Div(classes="pa-3 d-flex flex-column ga-2"):
            v3.VAlert("{{ error }}", v_if="error", type="error", density="compact", closable=True,
                      click_close="error = ''", id="error")
            html.Div("Scan", classes="text-subtitle-2")
            v3.VBtn("Open the sample (MNI152 T1)", click=self.open_sample, block=True, id="open-sample",
                    disabled=("running",), prepend_icon="mdi-brain")
            v3.VCombobox(v_model=("scan_path",), items=("scan_choices",), label="Scan on the server",
                         density="compact", hide_details=True)
            v3.VBtn("Open", click=self.open_path, disabled=("running || !scan_path",), id="open-path",
                    density="compact")
            v3.VFileInput(v_model=("upload", None), label=f"Upload a scan (≤ {MAX_UPLOAD_BYTES >> 20} MiB)",
                          density="compact", hide_details=True, accept=".nii,.gz,.nrrd,.mha",
                          disabled=("running",))

            html.Div("Segments", classes="text-subtitle-2 mt-2")
            with v3.VChipGroup(v_model=("active_segment",), mandatory=True, column=True):
                v3.VChip("{{ s.name }}", v_for="s in segments", key="s.id", value=("s.id",), color=("s.color",),
                         variant="flat", filter=True)
            with html.Div(classes="d-flex ga-1"):
                v3.VTextField(v_model=("new_segment_name",), placeholder="New segment name", density="compact",
                              hide_details=True)
                v3.VBtn(icon="mdi-plus", click=self.add_segment, density="compact", id="add-segment")
            with v3.VBtnToggle(v_model=("tool",), mandatory=True, density="compact", divided=True):
                v3.VBtn("Navigate", value="navigate", id="tool-navigate")
                v3.VBtn("Paint", value="paint", id="tool-paint")
                v3.VBtn("Erase", value="erase", id="tool-erase")
            with html.Div(classes="d-flex ga-1"):
                v3.VBtn(icon="mdi-undo", click=self.undo, density="compact", id="undo")
                v3.VBtn(icon="mdi-redo", click=self.redo, density="compact", id="redo")
                v3.VSlider(v_model=("brush_size",), min=1, max=30, step=0.5, label="Brush", density="compact",
                           hide_details=True)
            v3.VSlider(v_model=("axial_slice",), min=0, max=("Math.max(axial_slices - 1, 0)",), step=1,
                       label="Axial slice", thumb_label=True, density="compact", hide_details=True,
                       disabled=("!axial_slices",))
            html.Div("{{ line }}", v_for="line in painted_lines", classes="text-caption", id="painted-lines")

            html.Div("Segment", classes="text-subtitle-2 mt-2")
            v3.VSelect(v_model=("encoder",), items=("encoder_choices",), label="Encoder (empty: default)",
                       density="compact", hide_details=True)
            with html.Div(classes="d-flex ga-1"):
                v3.VSelect(v_model=("device",), items=("device_choices",), label="Device", density="compact",
                           hide_details=True)
                v3.VSelect(v_model=("preset",), items=("preset_choices",), label="Preset", density="compact",
                           hide_details=True)
                v3.VTextField(v_model=("steps",), label="Steps", density="compact", hide_details=True,
                              id="steps")
            v3.VCheckbox(v_model=("show_uncertainty",), label="Show uncertainty", density="compact",
                         hide_details=True)
            with html.Div(classes="d-flex ga-1"):
                v3.VBtn("Segment", click=self.segment, color="primary", disabled=("running || clients > 1",),
                        id="segment")
                v3.VBtn("Refine", click=self.refine, disabled=("running || clients > 1",), id="refine")
                v3.VBtn("Cancel", click=self.cancel, v_if="running", color="error", id="cancel")
                v3.VBtn("Undo result", click=self.undo_result, v_if="can_undo_result && !running",
                        id="undo-result")
            v3.VProgressLinear(model_value=("run_fraction * 100",), v_if="running || run_line", height=6)
            html.Div("{{ run_line }}", classes="text-caption", id="run-line")
            with html.Div(v_if="suggestion", classes="d-flex ga-1 align-center"):
                html.Div("{{ suggestion }}", classes="text-caption", id="suggestion")
                v3.VBtn("Go", click=self.go_to_suggestion, density="compact", id="go-suggestion")

            html.Div("Save and predict", classes="text-subtitle-2 mt-2")
            v3.VBtn("Save segmentation and model", click=self.save, disabled=("running || !scan_name",),
                    id="save")
            with html.Div(v_if="saved.seg", classes="d-flex ga-1"):
                v3.VBtn(".seg.nrrd", density="compact", prepend_icon="mdi-download", id="download-seg",
                        click="utils.download(saved.seg_name, trigger('download', ['seg']), "
                              "'application/octet-stream')")
                v3.VBtn("NIfTI", density="compact", prepend_icon="mdi-download", id="download-nifti",
                        click="utils.download(saved.nifti_name, trigger('download', ['nifti']), "
                              "'application/gzip')")
                v3.VBtn("Model", v_if="saved.model", density="compact", prepend_icon="mdi-download",
                        id="download-model",
                        click="utils.download(saved.model_name, trigger('download', ['model']), "
                              "'application/octet-stream')")
            html.Div("{{ saved.text }}", v_if="saved.text", classes="text-caption", id="saved")
            with html.Div(classes="d-flex ga-1"):
                v3.VTextField(v_model=("model_path",), label="Saved model (empty: the last)", density="compact",
                              hide_details=True)
                v3.VBtn("Predict only", click=self.predict, disabled=("running || !scan_name",), id="predict")

    # ---------------------------------------------------------------------------------------- actions
    def _guard(self, action, *args) -> bool:
        """Run ``action``; a one-line InputError goes to the page, never a traceback."""
        try:
            action(*args)
            self.state.error = ""
            return True
        except InputError as error:
            self.state.error = str(error)
        except Exception as error:  # a defect: keep the server up and say it in one line
            log.exception("web action failed")
            self.state.error = f"internal error: {type(error).__name__}: {error}"
        return False

    def open_sample(self) -> None:
        self._guard(self._open, str(sample_data_dir() / SAMPLE_SCAN))

    def open_path(self) -> None:
        self._guard(self._open, self.state.scan_path)

    @change("upload")
    def _on_upload(self, upload, **_) -> None:
        if not upload:
            return
        files = upload if isinstance(upload, list) else [upload]
        entry = files[0]
        content = entry.get("content") or b""
        if isinstance(content, list):  # a large file arrives in chunks
            content = b"".join(content)
        if entry.get("size", len(content)) > MAX_UPLOAD_BYTES:
            self.state.error = f"'{entry.get('name')}' is larger than {MAX_UPLOAD_BYTES >> 20} MiB"
        elif self._guard(lambda: self._show(self.session.load_upload(entry.get("name", "upload"), content))):
            self.state.scan_name = self.session.volume_node.GetName()
        self.state.upload = None

    def _open(self, path: str) -> None:
        self._show(self.session.load_path(path))

    def _show(self, volume_node) -> None:
        """Show a freshly opened scan in every view and make its segmentation the one the editor paints."""
        app = self.slicer_app
        app.display_manager.show_volume_in_slice_background(volume_node)
        app.display_manager.show_volume_in_slice_foreground(None)
        editor = app.segmentation_editor
        editor.set_active_segmentation(self.session.segmentation_node, volume_node)
        editor.show_3d(True)  # the result as surfaces in the 3D view (volume rendering is slow in software)
        app.display_manager.reset_views()
        self.state.scan_name = volume_node.GetName()
        self.state.axial_slices = int(volume_node.GetImageData().GetDimensions()[2 - self._axial_axis()])
        self.state.axial_slice = self.state.axial_slices // 2
        self._set_axial(self.state.axial_slice)
        self.state.saved = {}
        self.state.suggestion = ""
        self.state.run_line = ""
        self._refresh_segments()
        self._set_tool(self.state.tool)

    def _refresh_segments(self) -> None:
        segments = [dict(id=i, name=n, color=c) for i, n, c in self.session.segment_names()]
        self.state.segments = segments
        ids = [s["id"] for s in segments]
        if self.state.active_segment not in ids and ids:
            self.state.active_segment = ids[-1]
        self._paint_stamp = None  # recount the painted slices on the next tick

    def add_segment(self) -> None:
        def add() -> None:
            self.state.active_segment = self.session.add_segment(self.state.new_segment_name)
            self.state.new_segment_name = ""
            self._refresh_segments()

        self._guard(add)

    @change("active_segment")
    def _on_active_segment(self, active_segment, **_) -> None:
        if active_segment and self.session.segmentation_node is not None:
            self.slicer_app.segmentation_editor.set_active_segment_id(active_segment)

    @change("tool", "brush_size")
    def _on_tool(self, tool, **_) -> None:
        self._set_tool(tool)

    def _set_tool(self, tool: str) -> None:
        if self.session.segmentation_node is None:
            return
        editor = self.slicer_app.segmentation_editor
        effect = editor.set_active_effect_type(TOOLS.get(tool, SegmentationEffectNoTool))
        workarounds.attach_views(self.slicer_app)
        if tool in ("paint", "erase") and effect is not None:
            workarounds.use_2d_brush(effect)
            effect.set_brush_diameter(float(self.state.brush_size))

    def undo(self) -> None:
        stack = self.slicer_app.segmentation_editor.undo_stack
        if stack is not None and stack.can_undo():
            stack.undo()

    def redo(self) -> None:
        stack = self.slicer_app.segmentation_editor.undo_stack
        if stack is not None and stack.can_redo():
            stack.redo()

    @change("axial_slice")
    def _on_axial_slice(self, axial_slice, **_) -> None:
        self._set_axial(axial_slice)

    def _axial_axis(self) -> int:
        """The array axis (0 = k, 1 = j, 2 = i) whose slices are axial: what the slider and "Go" move along."""
        matrix = ijk_to_ras(self.session.volume_node)
        planes = [describe_axis(matrix, axis) for axis in range(3)]
        return planes.index("axial") if "axial" in planes else 0

    def _set_axial(self, index) -> None:
        """Move the axial view to the scan's axial slice ``index`` (through that slice's centre)."""
        volume = self.session.volume_node
        if volume is None:
            return
        axis = self._axial_axis()
        dims = volume.GetImageData().GetDimensions()  # (i, j, k)
        ijk = [(d - 1) / 2 for d in dims]
        ijk[2 - axis] = float(index)
        centre = ijk_to_ras(volume) @ [*ijk, 1.0]
        for view in self.slicer_app.view_manager.get_slice_views():
            if view.get_orientation() == "Axial":
                view.set_slice_value(float(centre[2]))  # an axial view's offset is its S coordinate
        self.state.axial_shown = int(index)

    def _options(self) -> JobOptions:
        steps = str(self.state.steps or "").strip()
        if steps and not steps.isdigit():
            raise InputError(f"steps must be a whole number, got '{steps}'")
        return JobOptions(encoder=self.state.encoder or None, device=self.state.device, preset=self.state.preset,
                          steps=int(steps) if steps else None, show_uncertainty=bool(self.state.show_uncertainty))

    def segment(self) -> None:
        self._guard(lambda: self._start("segment"))

    def refine(self) -> None:
        self._guard(lambda: self._start("segment", refine=True))

    def predict(self) -> None:
        self._guard(lambda: self._start("predict", model_path=self.state.model_path or None))

    def _start(self, kind: str, **kwargs) -> None:
        if self._clients > 1:
            raise InputError("another browser is connected; one session at a time")
        self.slicer_app.segmentation_editor.set_active_effect_type(SegmentationEffectNoTool)
        self.state.tool = "navigate"
        self.session.start(kind, self._options(), **kwargs)
        self.state.running, self.state.run_ok, self.state.run_fraction = True, None, 0
        self.state.can_undo_result = False
        self.state.run_line = self.session.status.line

    def cancel(self) -> None:
        self._guard(self.session.cancel)  # returns at once; the ticker follows the run to its end

    def undo_result(self) -> None:
        if self._guard(self.session.undo_result):
            self._show_segmentation()
            self.state.can_undo_result, self.state.suggestion, self.state.result = False, "", {}
            self._refresh_segments()

    def go_to_suggestion(self) -> None:
        if self.session.suggestion is not None and self.session.suggestion_axis == self._axial_axis():
            self.state.axial_slice = int(self.session.suggestion[0])

    def save(self) -> None:
        def write() -> None:
            written = self.session.save()
            self._written = written
            saved = {key: str(path) for key, path in written.items()}
            saved.update({f"{key}_name": path.name for key, path in written.items()})
            saved["text"] = "Saved in " + str(next(iter(written.values())).parent) + ": " + ", ".join(
                p.name for p in written.values())
            self.state.saved = saved

        self._guard(write)

    @trigger("download")
    def download(self, kind: str):
        path = getattr(self, "_written", {}).get(kind)
        if path is None or not Path(path).is_file():
            return None
        return self.server.protocol.addAttachment(memoryview(Path(path).read_bytes()))

    # ------------------------------------------------------------------------------------- follow-up
    def _follow_run(self) -> None:
        if not self.state.running:
            return
        status = self.session.poll()
        with self.state:
            self.state.run_line = status.line
            self.state.run_fraction = status.fraction
            if not status.running:
                self.state.running = False
                self.state.run_ok = status.ok
                self.state.run_count += 1
                self.state.can_undo_result = self.session.can_undo
                if status.ok:
                    self._after_result()
                elif not status.cancelled:  # a cancel is what the user asked for: the run line says it
                    self.state.error = status.line

    def _show_segmentation(self) -> None:
        """Edit (and show) the session's segmentation node: a Predict only result, or the painting again."""
        session, editor = self.session, self.slicer_app.segmentation_editor
        if session.segmentation_node is not editor.active_segmentation_node:
            editor.set_active_segmentation(session.segmentation_node, session.volume_node)
            editor.show_3d(True)

    def _after_result(self) -> None:
        session, app = self.session, self.slicer_app
        self._show_segmentation()
        if session.uncertainty_node is not None and self.state.show_uncertainty:
            for view in app.view_manager.get_slice_views():
                view.set_foreground_volume_id(session.uncertainty_node.GetID())
                view.set_foreground_opacity(0.4)
        self.state.suggestion = session.suggestion_text()
        labels = session.label_map()
        self.state.result = {name: dict(voxels=int((labels == value).sum()),
                                        slices=int((labels == value).any(axis=(1, 2)).sum()))
                             for value, (_, name, _) in enumerate(session.segment_names(), start=1)}
        self._refresh_segments()

    def _paint_changed(self) -> bool:
        node = self.session.segmentation_node
        if node is None:
            return False
        segmentation = node.GetSegmentation()
        stamp = [segmentation.GetNumberOfSegments()]
        for n in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(n)
            representation = segment.GetRepresentation(segmentation.GetSourceRepresentationName())
            stamp.append(representation.GetMTime() if representation is not None else 0)
        if stamp == self._paint_stamp:
            return False
        self._paint_stamp = stamp
        return True

    def _refresh_painted(self) -> None:
        if self.state.running or not self._paint_changed():
            return
        lines, report = self.session.painted()
        with self.state:
            self.state.painted_lines = lines
            # JSON keys are strings: {segment: {plane: {"slice": [count, r0, r1, c0, c1]}}}
            self.state.painted = {name: {plane: {str(s): v for s, v in slices.items()}
                                         for plane, slices in planes.items()} for name, planes in report.items()}

    async def _ticker(self) -> None:
        while True:
            try:
                self._follow_run()
                self._refresh_painted()
            except Exception:  # keep following: a defect in one tick must not stop the page
                log.exception("web tick failed")
            await asyncio.sleep(TICK_S)

    def _on_ready(self, **_) -> None:
        workarounds.attach_views(self.slicer_app)
        asyncio.get_event_loop().create_task(self._ticker())
        self.state.ready = True
        self.state.flush()

    def _set_clients(self, count: int) -> None:
        self._clients = count
        with self.state:
            self.state.clients = count


class _ConnectionCounter(LinkProtocol):
    """Calls ``on_change(number of open websockets)`` when a page connects or goes away."""

    def __init__(self, on_change) -> None:
        super().__init__()
        self._ids: set[str] = set()
        self._on_change = on_change

    def onConnect(self, request, client_id) -> None:  # noqa: N802 (wslink's name)
        self._ids.add(client_id)
        self._on_change(len(self._ids))

    def onClose(self, client_id) -> None:  # noqa: N802
        self._ids.discard(client_id)
        self._on_change(len(self._ids))


def serve(places, *, host: str, port: int, output_dir: str | Path) -> int:
    """Start the page on ``host:port`` (blocking until Ctrl-C); open ``places[0]`` when it is a scan file."""
    from ContrastiveSegLib.web import DEFAULT_HOST

    if host != DEFAULT_HOST:
        print(f"contrastiveseg: warning: listening on {host}: anyone who can reach this machine on port {port} can "
              "open the page and its scans; prefer 127.0.0.1 with an SSH tunnel", file=sys.stderr)
    app = ContrastiveSegWebApp(places, output_dir)
    first = next((Path(p) for p in places if Path(p).is_file()), None)
    if first is not None:
        app._guard(app._open, str(first))
    print(f"contrastiveseg: web page on http://{'localhost' if host == DEFAULT_HOST else host}:{port}/",
          file=sys.stderr, flush=True)
    app.server.start(host=host, port=port, open_browser=False, timeout=0, show_connection_info=False)
    return 0

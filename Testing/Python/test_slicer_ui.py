"""The Slicer module's static parts, checked without Slicer: the .ui, the parameter node, the widget's names, the
CMake files, the icons; and the module's Logic run in batch mode against slicer-core with Slicer's Qt-only
pieces replaced by minimal stand-ins (the real widget can only run inside Slicer: Testing/Slicer does that).
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "ContrastiveSeg" / "ContrastiveSeg.py"
UI = ROOT / "ContrastiveSeg" / "Resources" / "UI" / "ContrastiveSeg.ui"

# Which Qt widget class can show which parameter type (Slicer's parameterNodeWrapper GUI connectors).
CONNECTORS = {
    "qMRMLNodeComboBox": ("vtkMRML",),
    "QComboBox": ("Choice",),
    "QCheckBox": ("bool",),
    "QSpinBox": ("int",),
    "QDoubleSpinBox": ("float",),
    "ctkSliderWidget": ("float",),
    "QLineEdit": ("str",),
    "ctkPathLineEdit": ("pathlib.Path",),
}


def _parameter_fields() -> dict[str, str]:
    """name -> annotation source of the @parameterNodeWrapper class in ContrastiveSeg.py."""
    tree = ast.parse(MODULE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list):
            return {item.target.id: ast.unparse(item.annotation) for item in node.body
                    if isinstance(item, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in ContrastiveSeg.py")


def _ui_widgets() -> dict[str, tuple[str, str | None]]:
    """widget name -> (class, SlicerParameterName or None) for every widget in the .ui."""
    root = ElementTree.parse(UI).getroot()
    widgets = {}
    for widget in root.iter("widget"):
        bound = None
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", "a dynamic property needs stdset=0"
                bound = prop.find("string").text
        widgets[widget.get("name")] = (widget.get("class"), bound)
    return widgets


def test_ui_is_valid_designer_xml():
    root = ElementTree.parse(UI).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "ContrastiveSeg"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    declared = {c.find("class").text for c in root.find("customwidgets")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared, "custom widgets must be declared"
    for connection in root.find("connections"):
        assert connection.find("receiver").text in names


def test_every_bound_widget_matches_a_parameter_of_the_right_type():
    fields = _parameter_fields()
    bound = {name: (cls, param) for name, (cls, param) in _ui_widgets().items() if param}
    assert len({param for _, param in bound.values()}) == len(bound), "one widget per parameter"
    for name, (cls, param) in bound.items():
        assert param in fields, f"{name} is bound to '{param}', which the parameter node does not have"
        assert any(token in fields[param] for token in CONNECTORS[cls]), \
            f"{name} ({cls}) cannot show {param}: {fields[param]}"
    internal = {"lastModelPath", "lastModelSegments", "lastProbabilitiesPath"}
    assert set(fields) - {p for _, p in bound.values()} == internal, "every user-facing field has a widget"


def test_widget_code_only_uses_widgets_the_ui_has():
    widgets = _ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text()))
    assert used, "the widget uses self.ui"
    assert used <= set(widgets), f"not in the .ui: {sorted(used - set(widgets))}"


def test_icons_are_128_pixel_pngs():
    from PIL import Image

    for path in (ROOT / "ContrastiveSeg/Resources/Icons/ContrastiveSeg.png",
                 ROOT / "Resources/Icons/ContrastiveSeg.png"):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (128, 128)


# ------------------------------------------------------------------------------------------------- CMake
FAKE_SLICER_CONFIG = """
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
set(BUILD_TESTING ON)
"""
FAKE_USE_SLICER = """
# Stand-ins for Slicer's macros that record what they were given.
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(_f IN LISTS MY_SCRIPTS MY_RESOURCES)
    if(NOT IS_ABSOLUTE ${_f})
      set(_f ${CMAKE_CURRENT_SOURCE_DIR}/${_f})
    endif()
    if(NOT EXISTS ${_f})
      message(FATAL_ERROR "missing ${_f}")
    endif()
  endforeach()
  foreach(_f IN LISTS MY_SCRIPTS)
    if(IS_ABSOLUTE ${_f})
      file(RELATIVE_PATH _f ${CMAKE_CURRENT_BINARY_DIR} ${_f})  # where ctkMacroCompilePythonScript puts it
    endif()
    file(APPEND ${CMAKE_BINARY_DIR}/record.txt "SCRIPT ${_f}\\n")
  endforeach()
  foreach(_f IN LISTS MY_RESOURCES)
    file(APPEND ${CMAKE_BINARY_DIR}/record.txt "RESOURCE ${_f}\\n")
  endforeach()
  file(APPEND ${CMAKE_BINARY_DIR}/record.txt "GENERIC_TESTS ${MY_WITH_GENERIC_TESTS}\\n")
endmacro()
macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "SLICER_ARGS" ${ARGN})
  file(APPEND ${CMAKE_BINARY_DIR}/record.txt "UNITTEST ${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT}\\n")
endmacro()
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_ships_every_library_file_beside_the_module(tmp_path):
    fake = tmp_path / "fake-slicer"
    fake.mkdir()
    (fake / "SlicerConfig.cmake").write_text(FAKE_SLICER_CONFIG)
    (fake / "UseSlicer.cmake").write_text(FAKE_USE_SLICER)
    (fake / "Empty.cmake").write_text("")
    build = tmp_path / "build"
    completed = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={fake}"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    record = (build / "record.txt").read_text().splitlines()
    scripts = {line.split(" ", 1)[1] for line in record if line.startswith("SCRIPT ")}
    library = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ContrastiveSegLib").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert scripts == {"ContrastiveSeg.py"} | library
    assert {"RESOURCE Resources/UI/ContrastiveSeg.ui", "RESOURCE Resources/Icons/ContrastiveSeg.png",
            "GENERIC_TESTS TRUE"} <= set(record)
    unittests = {Path(line.split(" ", 1)[1]).resolve() for line in record if line.startswith("UNITTEST ")}
    assert unittests == {MODULE.resolve(), (ROOT / "Testing/Slicer/ContrastiveSegSelfTest.py").resolve()}
    top = (ROOT / "CMakeLists.txt").read_text()
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top and "add_subdirectory(ContrastiveSeg)" in top


# --------------------------------------------------------------------------- the Logic in batch mode
slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")


def _stand_ins(monkeypatch, scene, tmp_path):
    """Just enough of Slicer's Qt-side Python (qt, i18n, parameterNodeWrapper, ScriptedLoadableModule) to import
    ContrastiveSeg.py and run its Logic without a GUI, on a slicer-core scene."""
    qt = types.ModuleType("qt")
    qt.QTimer = qt.QFileDialog = object

    class QSettings:  # one store per test, like a fresh user profile
        store: dict = {}

        def setValue(self, key, value):
            QSettings.store[key] = value

        def value(self, key, default=None):
            return QSettings.store.get(key, default)

    QSettings.store = {}
    qt.QSettings = QSettings
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")

    class Choice:
        def __init__(self, choices):
            self.choices = choices

    class WithinRange:
        def __init__(self, low, high):
            self.low, self.high = low, high

    def parameterNodeWrapper(cls):
        defaults = {name: getattr(cls, name, None) for name in cls.__annotations__}

        def __init__(self, node=None):
            for name, value in defaults.items():
                setattr(self, name, value)
        return type(cls.__name__, (), {"__init__": __init__, "__annotations__": cls.__annotations__})

    wrapper.Choice, wrapper.WithinRange, wrapper.parameterNodeWrapper = Choice, WithinRange, parameterNodeWrapper
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class Base:
        def __init__(self, *args):
            pass

        def getParameterNode(self):
            if not hasattr(type(self), "_node"):
                type(self)._node = None
            return type(self)._node

    scripted.ScriptedLoadableModule = scripted.ScriptedLoadableModuleWidget = Base
    scripted.ScriptedLoadableModuleLogic = scripted.ScriptedLoadableModuleTest = Base

    class Environment:
        def keys(self):
            return list(os.environ)

        def value(self, key):
            return os.environ[key]

    app = types.SimpleNamespace(temporaryPath=str(tmp_path / "slicer-tmp"), cachePath=str(tmp_path / "slicer-cache"),
                                startupEnvironment=Environment)
    for name, module in (("qt", qt), ("slicer.i18n", i18n), ("slicer.parameterNodeWrapper", wrapper),
                         ("slicer.ScriptedLoadableModule", scripted)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.syspath_prepend(str(MODULE.parent))
    monkeypatch.delitem(sys.modules, "ContrastiveSeg", raising=False)


@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell stands in for PythonSlicer")
def test_module_logic_segments_in_batch_mode(monkeypatch, tmp_path, scene):
    from test_slicer_bridge import FAKE_LIBRARY_CLI, _segmentation, _slab, _volume

    _stand_ins(monkeypatch, scene, tmp_path)
    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE_LIBRARY_CLI)
    python = tmp_path / "PythonSlicer"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.log"))

    import ContrastiveSeg

    logic = ContrastiveSeg.ContrastiveSegLogic()
    node = ContrastiveSeg.ContrastiveSegParameterNode()
    monkeypatch.setattr(logic, "getParameterNode", lambda: node)
    _, volume = _volume(scene, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    painted, _ = _segmentation(scene, volume, {"Liver": ((0.8, 0.3, 0.2), _slab([2, 6]))})
    node.inputVolume, node.inputSegmentation, node.device, node.preset = volume, painted, "cpu", "fast"
    assert logic.annotationSummary(volume, painted, node) == ["Liver: 2 axial slices (k = 2, 6)"]

    progress = []
    result = logic.segmentFromParameterNode(node, waitForCompletion=True, timeout=60,
                                            progressCallback=progress.append)
    assert result.ok, result.message
    assert [p.stage for p in progress] == ["done"]
    assert Path(node.lastModelPath).is_file() and node.lastModelSegments == "Liver"
    first_call = (tmp_path / "calls.log").read_text().splitlines()[0]
    assert "--device cpu" in first_call and "--preset fast" in first_call and "--init-model" not in first_call

    # The second run refines from the first run's model; "Suggest next slice" reads the last probabilities.
    second = logic.segmentFromParameterNode(node, waitForCompletion=True, timeout=60)
    assert second.ok
    assert f"--init-model {result.model_path}" in (tmp_path / "calls.log").read_text().splitlines()[1]
    plane, index, score = logic.suggestNextSlice(volume, painted, node, jump=False)
    assert (plane, index) == ("axial", 7) and score == pytest.approx(1.0, abs=1e-5)
    saved = tmp_path / "kept.safetensors"
    logic.saveModel(node, saved)
    assert saved.read_bytes() == b"weights" and Path(str(saved) + ".segments.json").is_file()
    assert result.segmentation_node.GetSegmentation().GetNumberOfSegments() == 1

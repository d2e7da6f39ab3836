"""The Slicer module's static parts, checked without Slicer: the .ui, the parameter node, the widget's names, the
CMake files, the icons; and the module's Logic run in batch mode against slicer-core with Slicer's Qt-only
pieces replaced by minimal stand-ins (the real widget can only run inside Slicer: Testing/Slicer does that).
"""
from __future__ import annotations

import ast
import enum
import os
import pathlib
import re
import shutil
import subprocess
import sys
import types
import typing
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
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
    from ContrastiveSegLib.slicer.panel import PATH_FIELDS

    # Path fields are text wired by hand (panel.PATH_FIELDS), each to a ctkPathLineEdit the .ui has, unbound.
    widgets = _ui_widgets()
    for name, param in PATH_FIELDS.items():
        assert widgets[name] == ("ctkPathLineEdit", None) and fields[param] == "str", name
    assert set(fields) - {p for _, p in bound.values()} - set(PATH_FIELDS.values()) == internal, \
        "every user-facing field has a widget"


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
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/RecordPackage.cmake)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
set(BUILD_TESTING ON)
"""
FAKE_USE_SLICER = """
# Stand-ins for Slicer's macros that record what they were given.
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  # As CTK's ctkMacroCompilePythonScript does: the whole scripted-modules folder of the build tree is installed.
  install(DIRECTORY ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/
    DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR} COMPONENT RuntimeLibraries USE_SOURCE_PERMISSIONS)
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
# Slicer_EXTENSION_CPACK stand-in: what the package would show as its category and licence.
FAKE_CPACK = """
file(APPEND ${CMAKE_BINARY_DIR}/record.txt "CATEGORY ${EXTENSION_CATEGORY}\\n")
file(APPEND ${CMAKE_BINARY_DIR}/record.txt "LICENSE ${EXTENSION_LICENSE_FILE}\\n")
"""


def _configure_with_fake_slicer(tmp_path) -> Path:
    fake = tmp_path / "fake-slicer"
    fake.mkdir()
    (fake / "SlicerConfig.cmake").write_text(FAKE_SLICER_CONFIG)
    (fake / "UseSlicer.cmake").write_text(FAKE_USE_SLICER)
    (fake / "Empty.cmake").write_text("")
    (fake / "RecordPackage.cmake").write_text(FAKE_CPACK)
    build = tmp_path / "build"
    completed = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={fake}"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return build


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_ships_every_library_file_beside_the_module(tmp_path):
    build = _configure_with_fake_slicer(tmp_path)
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


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_the_package_has_its_category_its_licence_and_the_encoders_once(tmp_path):
    build = _configure_with_fake_slicer(tmp_path)
    record = (build / "record.txt").read_text().splitlines()
    assert "CATEGORY Segmentation" in record
    assert f"LICENSE {ROOT / 'LICENSE'}" in record  # unset, Slicer's own licence would be shown and shipped
    completed = subprocess.run(["cmake", "--install", str(build), "--prefix", str(tmp_path / "installed")],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    installed = (build / "install_manifest.txt").read_text().splitlines()
    assert len(installed) == len(set(installed)), "a file installed twice"
    models = tmp_path / "installed/lib/Slicer-5.8/qt-scripted-modules/Resources/Models"
    shipped = sorted(p.name for p in (ROOT / "Resources/Models").iterdir() if p.is_file())
    assert shipped and sorted(p.name for p in models.iterdir()) == shipped  # ContrastiveSegLib.paths looks here


APACHE_2_0_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"  # https://www.apache.org/licenses/LICENSE-2.0.txt


def test_the_licence_is_the_full_apache_2_0_text():
    import hashlib

    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.md5(text).hexdigest() == APACHE_2_0_MD5
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = { text = "Apache-2.0" }' in pyproject  # the same licence the Python package declares


def _selector_offers(selector: ElementTree.Element, node) -> bool:
    """Whether a qMRMLNodeComboBox with the .ui properties of ``selector`` lists ``node``: the filter of Slicer's
    qMRMLSortFilterProxyModel::filterAcceptsRow for nodeTypes, showChildNodeTypes and hideChildNodeTypes."""
    properties = {p.get("name"): p for p in selector.findall("property")}
    types_ = [s.text for s in properties["nodeTypes"].iter("string")]
    show_child = properties["showChildNodeTypes"].find("bool").text != "false" if "showChildNodeTypes" in \
        properties else True
    hidden = [s.text for s in properties["hideChildNodeTypes"].iter("string")] if "hideChildNodeTypes" in \
        properties else []
    for node_type in types_:
        if not node.IsA(node_type) or (not show_child and node_type != node.GetClassName()):
            continue
        return not (show_child and any(node.IsA(h) for h in hidden))
    return False


# --------------------------------------------------------------------------- the Logic in batch mode
slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")


# ------------------------------------------------- Slicer's parameterNodeWrapper, as strict as Slicer's own
# Each behaviour below is taken from Slicer's Base/Python/slicer/parameterNodeWrapper (read at Slicer main,
# commit 583e9b37d50e, August 2026; the same in 5.6 - 5.12):
# - validators.py: WithinRange raises ValueError "Value must be within range [min, max], is v" (line 95),
#   Choice raises ValueError "Value is v, but must be in one of the following: ..." (line 137).
# - serializers.py: int/float fields check IsInstance(int) / IsInstance((int, float)) (NumberSerializer, line 246);
#   str, bool, path fields NotNone + IsInstance (lines 289, 362, 324); a bool reads back as == "True" (line 375);
#   a node field IsInstance of its class, None allowed (NodeSerializer, line 396); a pathlib.Path field defaults to
#   Path() (PathSerializer.default, line 331: "return self.type()"), stored as str(value) and read back with the
#   type (lines 338, 341); a type without a serializer raises "Unable to create serializer for type" (line 216).
# - guiConnectors.py: the ctkPathLineEdit connector writes str(value) to the widget (line 705), so an unset Path
#   shows "." (why the module's path fields are text, ContrastiveSegLib/slicer/panel.py PATH_FIELDS).
# - wrapper.py: every default is written into a new parameter node (line 45), so checked.
class _Validator:
    """Base of the validators below, as ``slicer.parameterNodeWrapper.Validator``."""

    def validate(self, value) -> None:
        raise NotImplementedError


class Choice(_Validator):
    """``slicer.parameterNodeWrapper.Choice``: the value must be one of ``choices``."""

    def __init__(self, choices):
        self.choices = choices

    def validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


class WithinRange(_Validator):
    """``slicer.parameterNodeWrapper.WithinRange``: ``minimum <= value <= maximum``."""

    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


def _serializer(kind):
    """(check, read back, default) of a parameter of type ``kind``, as Slicer's serializers have them
    (slicer/parameterNodeWrapper/serializers.py): the value is checked on every write, stored as the parameter
    node stores it (a string, or a node reference) and converted back on reading; a type Slicer cannot store is an
    error when the class is made."""

    def instance_of(accepted, none_allowed=False):
        number = accepted in (int, (int, float))

        def check(value):
            if value is None and none_allowed:
                return
            # True is an int to isinstance, but Slicer stores "True", which int() and float() cannot read back
            if value is None or not isinstance(value, accepted) or (number and isinstance(value, bool)):
                raise TypeError(f"Value must be of type '{accepted}', is type '{type(value)}' value '{value}'")
        return check

    if kind is int:
        return instance_of(int), lambda text: int(text), 0
    if kind is float:
        return instance_of((int, float)), lambda text: float(text), 0
    if kind is str:
        return instance_of(str), lambda text: text, ""
    if kind is bool:
        return instance_of(bool), lambda text: text == "True", False
    if kind in (pathlib.Path, pathlib.PurePath, pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath,
                pathlib.PureWindowsPath):
        return instance_of(kind), kind, kind()
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return instance_of(kind), lambda text: kind[text], next(iter(kind))
    if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode):
        check_type = instance_of(kind, none_allowed=True)

        def check(value):
            check_type(value)
            if value is not None and value.GetID() is None:  # Slicer would keep a reference to nothing
                raise ValueError(f"node '{value.GetName()}' is not in a scene: a parameter node cannot refer to it")
        return check, None, None
    raise TypeError(f"Unable to create serializer for type: {kind}")


def _to_text(value) -> str | None:
    if isinstance(value, enum.Enum):
        return value.name
    return str(value)


def parameterNodeWrapper(cls):
    """Stands in for Slicer's ``@parameterNodeWrapper`` and is as strict: typed attributes (an int field refuses
    "3" and True, a path field a string, a node field a node of another class), Choice and WithinRange checked on
    every write, every default written (and so checked) when a node is made, values read back as the parameter
    node stores them (a float field set to 0 reads 0.0). Stricter in one thing: assigning a name that is not a
    parameter fails (in Slicer it would only be lost with the scene)."""
    hints = typing.get_type_hints(cls, include_extras=True)  # Slicer resolves the annotations the same way
    parameters = {}
    for name, hint in hints.items():
        kind, extras = hint, []
        if typing.get_origin(hint) is typing.Annotated:
            kind, *extras = typing.get_args(hint)
        if any(not isinstance(extra, _Validator) for extra in extras):
            raise TypeError(f"{cls.__name__}.{name}: unsupported annotation {extras}")
        check, read, default = _serializer(kind)
        parameters[name] = ([check] + [extra.validate for extra in extras], read, getattr(cls, name, default))

    def make_property(name, checks, read):
        def get(self):
            stored = self._stored[name]
            return stored if read is None else read(stored)

        def set_(self, value):
            for check in checks:
                check(value)
            self._stored[name] = value if read is None else _to_text(value)
        return property(get, set_)

    namespace = {name: make_property(name, checks, read) for name, (checks, read, _) in parameters.items()}

    def __init__(self, parameterNode=None):
        object.__setattr__(self, "_stored", {})
        for name, (_, _, default) in parameters.items():
            setattr(self, name, default)  # Slicer writes each default into a new parameter node: checked here

    def __setattr__(self, name, value):
        if name not in parameters:
            raise AttributeError(f"{cls.__name__} has no parameter '{name}'")
        object.__setattr__(self, name, value)

    namespace.update(__init__=__init__, __setattr__=__setattr__, __doc__=cls.__doc__, __module__=cls.__module__,
                     __annotations__=cls.__annotations__, allParameters=dict.fromkeys(parameters))
    return type(cls.__name__, (), namespace)


def _stand_ins(monkeypatch, scene, tmp_path):
    """Just enough of Slicer's Qt-side Python (qt, i18n, parameterNodeWrapper, ScriptedLoadableModule) to import
    ContrastiveSeg.py and run its Logic without a GUI, on a slicer-core scene."""
    qt = types.ModuleType("qt")
    qt.QTimer = qt.QFileDialog = object

    class QShortcut:  # records what the panel binds: (key, context, slot)
        made: list = []

        def __init__(self, key, parent):
            self.key, self.context, self.slot = key, None, None
            QShortcut.made.append(self)

        def setContext(self, context):
            self.context = context

        def connect(self, signal, slot):
            assert signal == "activated()"
            self.slot = slot

    QShortcut.made = []
    qt.QShortcut, qt.QKeySequence = QShortcut, str
    qt.Qt = types.SimpleNamespace(WidgetWithChildrenShortcut="WidgetWithChildrenShortcut")

    class QSettings:  # one store per test, like a fresh user profile
        store: dict = {}

        def setValue(self, key, value):
            QSettings.store[key] = value

        def value(self, key, default=None):
            return QSettings.store.get(key, default)

        def contains(self, key):
            return key in QSettings.store

    QSettings.store = {}
    qt.QSettings = QSettings
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
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


def fake_pythonslicer(monkeypatch, scene, tmp_path) -> None:
    """The stand-ins, and a ``PythonSlicer`` on PATH that runs the fake CLI of test_slicer_bridge.py (the module's
    own workers, e.g. the uncertainty scoring, run for real)."""
    from test_slicer_bridge import FAKE_LIBRARY_CLI

    _stand_ins(monkeypatch, scene, tmp_path)
    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE_LIBRARY_CLI)
    python = tmp_path / "PythonSlicer"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.log"))


@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell stands in for PythonSlicer")
def test_module_logic_segments_in_batch_mode(monkeypatch, tmp_path, scene):
    from test_slicer_bridge import _segmentation, _slab, _volume

    fake_pythonslicer(monkeypatch, scene, tmp_path)
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


# ------------------------------------------------------------------- start-up, defaults, state folder
def test_the_input_volume_selector_never_offers_a_label_map(scene):
    selector = next(w for w in ElementTree.parse(UI).getroot().iter("widget")
                    if w.get("name") == "inputVolumeSelector")
    offered = {cls: _selector_offers(selector, scene.AddNewNodeByClass(cls))
               for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLVectorVolumeNode")}
    assert offered == {"vtkMRMLScalarVolumeNode": True, "vtkMRMLLabelMapVolumeNode": False,
                       "vtkMRMLVectorVolumeNode": False}


def _label_map_then_scan(scene):
    """A label map added before the scan (as when a segmentation is exported, then a scan is loaded)."""
    from ContrastiveSegLib.io.volume import Volume
    from ContrastiveSegLib.slicer import nodes

    identity = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    labels = nodes.array_to_volume(Volume(np.zeros((4, 5, 6), np.uint8), (1, 1, 1), (0, 0, 0), identity), scene,
                                   "labels", labelmap=True)
    scan = nodes.array_to_volume(Volume(np.ones((4, 5, 6), np.float32), (1, 1, 1), (0, 0, 0), identity), scene,
                                 "CT")
    return labels, scan


def test_a_new_scene_starts_from_the_first_scan_never_a_label_map(monkeypatch, tmp_path, scene):
    _stand_ins(monkeypatch, scene, tmp_path)
    import ContrastiveSeg

    logic = ContrastiveSeg.ContrastiveSegLogic()
    node = ContrastiveSeg.ContrastiveSegParameterNode()
    assert logic.firstScan(scene) is None
    logic.setDefaults(node, scene)
    assert node.inputVolume is None and node.device == "auto"
    labels, scan = _label_map_then_scan(scene)
    assert scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is labels  # what used to be chosen
    encoder = tmp_path / "mine.safetensors"
    encoder.write_bytes(b"encoder")
    logic.setDefaults(node, scene, device="cuda", encoderFile=str(encoder))
    assert node.inputVolume is scan and node.device == "cuda" and node.encoderFile == str(encoder)
    # A scene that has its volume keeps its own choices; an unknown saved device falls back to auto.
    node.device = "cpu"
    logic.setDefaults(node, scene, device="mps")
    assert node.device == "cpu"
    fresh = ContrastiveSeg.ContrastiveSegParameterNode()
    logic.setDefaults(fresh, scene, device="tpu", encoderFile=str(tmp_path / "gone.safetensors"))
    assert fresh.device == "auto" and fresh.encoderFile == "" and fresh.inputVolume is scan  # "": unset


def test_a_label_map_is_refused_as_the_volume_to_segment(scene):
    from ContrastiveSegLib.errors import InputError
    from ContrastiveSegLib.slicer.job import Job

    labels, _ = _label_map_then_scan(scene)
    with pytest.raises(InputError, match="'labels' is a label map, not a scan"):
        Job("predict", labels, model_path="model.safetensors")


class _FakeWidget:
    """A Qt widget stand-in: any property can be set; ``connect(signal, slot)`` records the slot."""

    def __init__(self) -> None:
        self.slots: dict[str, list] = {}
        self.currentPath = ""

    def connect(self, signal, slot) -> None:
        self.slots.setdefault(signal, []).append(slot)

    def emit(self, signal, *args) -> None:
        for slot in self.slots.get(signal, []):
            slot(*args)

    def setStyleSheet(self, text) -> None:
        pass


class _FakeComboBox(_FakeWidget):
    """QComboBox as Slicer's parameter-node binding uses it. As in Qt, clear() and adding the first item change
    the current index and emit currentIndexChanged; only the user's own choice also emits activated."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[str] = []
        self.currentIndex = -1

    def _move(self, index: int) -> None:
        if index != self.currentIndex:
            self.currentIndex = index
            self.emit("currentIndexChanged(int)", index)

    def clear(self) -> None:
        self.items = []
        self._move(-1)

    def addItem(self, text: str) -> None:
        self.items.append(text)
        if self.currentIndex == -1:
            self._move(0)

    def setCurrentIndex(self, index: int) -> None:
        self._move(index)

    def itemText(self, index: int) -> str:
        return self.items[index] if 0 <= index < len(self.items) else ""

    @property
    def currentText(self) -> str:
        return self.itemText(self.currentIndex)

    def choose(self, text: str) -> None:
        """What the user does: pick an entry from the list."""
        self._move(self.items.index(text))
        self.emit("activated(int)", self.currentIndex)


class _FakeUi:
    def __init__(self) -> None:
        self.deviceComboBox = _FakeComboBox()

    def __getattr__(self, name):
        widget = _FakeWidget()
        setattr(self, name, widget)
        return widget


def _start_module(monkeypatch, request, ContrastiveSeg, node):
    """Open the module's panel as Slicer does at start-up (setup), with ``node`` as the scene's parameter node.
    Binding the node refills the device combo box the way Slicer's QComboBox connector does."""
    import qt

    def connectGui(self, ui):
        combo = ui.deviceComboBox
        combo.clear()
        for choice in ContrastiveSeg.DEVICES:
            combo.addItem(choice)
        combo.setCurrentIndex(combo.items.index(self.device))
        combo.connect("currentIndexChanged(int)", lambda index: setattr(self, "device", combo.itemText(index)))
        return "tag"

    node_class = type(node)
    for name, value in (("connectGui", connectGui), ("disconnectGui", lambda self, tag: None),
                        ("AddObserver", lambda self, event, method, priority=0.0: 1),
                        ("RemoveObserver", lambda self, tag: None)):
        monkeypatch.setattr(node_class, name, value, raising=False)
    timer = type("QTimer", (), {"setSingleShot": lambda self, on: None, "setInterval": lambda self, ms: None,
                                "start": lambda self: None, "stop": lambda self: None,
                                "timeout": types.SimpleNamespace(connect=lambda slot: None)})
    monkeypatch.setattr(qt, "QTimer", timer)
    ui = _FakeUi()
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: types.SimpleNamespace(setMRMLScene=lambda scene: None))
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda widget: ui)
    monkeypatch.setattr(ContrastiveSeg.ContrastiveSegLogic, "getParameterNode", lambda self: node)
    base = sys.modules["slicer.ScriptedLoadableModule"].ScriptedLoadableModuleWidget
    monkeypatch.setattr(base, "setup", lambda self: None, raising=False)
    monkeypatch.setattr(base, "resourcePath", lambda self, path: path, raising=False)
    widget = ContrastiveSeg.ContrastiveSegWidget()
    widget.layout = types.SimpleNamespace(addWidget=lambda w: None)
    widget.parent = types.SimpleNamespace(isEntered=False)
    widget.setup()
    request.addfinalizer(widget.removeObservers)  # before the scene is cleared: the panel observes it
    return widget, ui


def test_the_saved_device_survives_start_up_and_the_users_choice_is_saved(monkeypatch, request, tmp_path,
                                                                          scene):
    _stand_ins(monkeypatch, scene, tmp_path)
    import ContrastiveSeg
    import qt

    _, scan = _label_map_then_scan(scene)
    qt.QSettings.store[ContrastiveSeg.SETTINGS_DEVICE] = "cuda"  # chosen in an earlier session
    node = ContrastiveSeg.ContrastiveSegParameterNode()
    _, ui = _start_module(monkeypatch, request, ContrastiveSeg, node)
    assert qt.QSettings.store[ContrastiveSeg.SETTINGS_DEVICE] == "cuda"
    assert node.device == "cuda" and ui.deviceComboBox.currentText == "cuda"
    assert node.inputVolume is scan  # not the label map added before it

    ui.deviceComboBox.choose("cpu")  # the user's choice is kept for the next session
    assert node.device == "cpu" and qt.QSettings.store[ContrastiveSeg.SETTINGS_DEVICE] == "cpu"

    restarted = ContrastiveSeg.ContrastiveSegParameterNode()  # next session: a new scene, a new panel
    _, ui = _start_module(monkeypatch, request, ContrastiveSeg, restarted)
    assert restarted.device == "cpu" and ui.deviceComboBox.currentText == "cpu"
    assert qt.QSettings.store[ContrastiveSeg.SETTINGS_DEVICE] == "cpu"


def test_the_state_folder_is_this_users_own(monkeypatch, tmp_path, scene):
    _stand_ins(monkeypatch, scene, tmp_path)
    import ContrastiveSeg

    logic = ContrastiveSeg.ContrastiveSegLogic()
    folder = logic.stateDirectory()
    assert folder.parent == tmp_path / "slicer-tmp" and folder.name.startswith("ContrastiveSeg-")
    assert folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == os.getuid()
    assert ContrastiveSeg.ContrastiveSegLogic().stateDirectory() == folder  # refine finds the last model


# ------------------------------------------------------------------ the parameter node, checked as Slicer does
def test_the_parameter_node_defaults_pass_slicers_checks(monkeypatch, tmp_path, scene):
    _stand_ins(monkeypatch, scene, tmp_path)
    import ContrastiveSeg

    from ContrastiveSegLib import options

    node = ContrastiveSeg.ContrastiveSegParameterNode()  # every default written, so checked (as in Slicer)
    assert (node.device, node.preset, node.encoder, node.axis) == (options.DEFAULT_DEVICE, options.DEFAULT_PRESET,
                                                                    ContrastiveSeg.DEFAULT_ENCODER, "auto")
    assert node.pretrainMethod in options.METHOD_NAMES and node.pretrainSteps == options.PRETRAIN_STEPS
    assert node.pretrainMinutes == 0.0 and type(node.pretrainMinutes) is float
    assert node.encoderFile == "" and node.inputVolume is None  # a text field: empty, never "."
    node.pretrainMinutes = 2  # an int is a float to Slicer, and reads back as one
    assert type(node.pretrainMinutes) is float


@pytest.mark.parametrize("name, value, error", [
    ("device", "gpu", ValueError),                 # not a Choice
    ("pretrainMethod", "random", ValueError),        # random initialisation is not offered as a run
    ("axis", "x", ValueError),
    ("gpuIndex", 16, ValueError),                  # outside WithinRange
    ("pretrainSteps", 0, ValueError),
    ("pretrainMinutes", -1.0, ValueError),
    ("steps", "3", TypeError),                     # typed attributes
    ("steps", True, TypeError),
    ("steps", 2.5, TypeError),
    ("showUncertainty", 1, TypeError),
    ("encoderFile", Path("encoder.safetensors"), TypeError),  # a text field now (panel.PATH_FIELDS)
    ("encoderFile", None, TypeError),
    ("lastModelPath", None, TypeError),
    ("inputVolume", "segmentation", TypeError),    # a node of another class
    ("batchsize", 4, AttributeError),              # not a parameter (a typo)
])
def test_the_parameter_node_refuses_what_slicer_refuses(monkeypatch, tmp_path, scene, name, value, error):
    _stand_ins(monkeypatch, scene, tmp_path)
    import ContrastiveSeg

    node = ContrastiveSeg.ContrastiveSegParameterNode()
    if value == "segmentation":
        value = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    before = getattr(node, name, None)
    with pytest.raises(error):
        setattr(node, name, value)
    assert getattr(node, name, None) == before  # a refused value changes nothing


def test_a_wrong_default_in_the_module_fails_here(monkeypatch, tmp_path, scene):
    """What CI catches: a default outside its Choice (here the preset list losing the default preset's name)."""
    _stand_ins(monkeypatch, scene, tmp_path)
    from ContrastiveSegLib import options

    monkeypatch.setattr(options, "DEFAULT_PRESET", "quick")
    import ContrastiveSeg

    with pytest.raises(ValueError, match="Value is quick, but must be in one of the following"):
        ContrastiveSeg.ContrastiveSegParameterNode()

    class Wrong:
        steps: typing.Annotated[int, WithinRange(1, 10)] = 0

    with pytest.raises(ValueError, match=r"within range \[1, 10\], is 0"):
        parameterNodeWrapper(Wrong)()
    with pytest.raises(TypeError, match="Unable to create serializer"):
        parameterNodeWrapper(type("Listed", (), {"__annotations__": {"values": set}}))

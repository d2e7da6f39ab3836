"""What the module's panel shows and listens to, as plain data and functions the widget only wires up.

The Qt widget (ContrastiveSeg/ContrastiveSeg.py) cannot run outside Slicer; everything it decides is here, so it
is tested against slicer-core: which segmentation events refresh the painted-slices summary, which parameter
changes do, the summary's text during a run, the keyboard shortcuts, and the path fields shown as text. No Qt.
"""
from __future__ import annotations

# vtkSegmentation events after which the summary of painted slices is read again. Painting with the Segment
# Editor changes a segment's binary labelmap, which fires SourceRepresentationModified (Slicer,
# Libs/vtkSegmentationCore/vtkSegmentation.h, enum at line 98: "Invoked when content of the source representation
# in a segment is changed"); SegmentModified is only for names, colours and tags (same enum: "the event is not
# invoked when content of a representation in a segment is changed"). Slicer before 5.4 called the first one
# MasterRepresentationModified: the widget takes whichever the running Slicer has.
SUMMARY_EVENTS = ("SourceRepresentationModified", "SegmentAdded", "SegmentRemoved", "SegmentModified")
LEGACY_EVENT_NAMES = {"SourceRepresentationModified": "MasterRepresentationModified"}

# Parameters whose change changes what the summary says (which grid it is read on, along which axis).
SUMMARY_PARAMETERS = ("inputVolume", "inputSegmentation", "axis", "allowResampling")

# Keyboard shortcuts, active while the pointer is in the module's panel (Qt.WidgetWithChildrenShortcut), so the
# Segment Editor's own keys (its Ctrl+Z undo included) keep working everywhere else.
SHORTCUT_SEGMENT = "Ctrl+Shift+S"
SHORTCUT_SUGGEST = "Ctrl+Shift+N"
SHORTCUT_UNDO = "Ctrl+Z"
SHORTCUTS = {"segment": SHORTCUT_SEGMENT, "suggest": SHORTCUT_SUGGEST, "undo": SHORTCUT_UNDO}

# The path fields of the panel: widget name -> parameter. They are text fields of the parameter node (empty when
# unset), wired by hand: Slicer's pathlib.Path parameters default to Path() (serializers.py, PathSerializer.default,
# line 331: "return self.type()") and the ctkPathLineEdit connector writes str(value) (guiConnectors.py, line
# 705), so an unset path would show ".".
PATH_FIELDS = {"encoderPathLineEdit": "encoderFile", "modelPathLineEdit": "modelFile",
               "pretrainFolderLineEdit": "pretrainFolder", "pretrainOutputLineEdit": "pretrainOutput"}

CHOOSE_TEXT = "Choose a volume and a segmentation painted on a few slices."
RUN_TEXT = {
    "segment": "Segmenting from the slices painted when Segment was pressed; paint on, the next run reads it.",
    "predict": "Segmenting with the saved model; the painted slices are not used.",
    "pretrain": "Pretraining an encoder; the summary comes back when it ends.",
}


def path_text(value) -> str:
    """What a path field shows for a stored value: "" for nothing (None, "", ".", Path()), else the path."""
    text = str(value) if value is not None else ""
    return "" if text in ("", ".") else text


def summary_state(node) -> tuple:
    """The parameters the summary depends on (:data:`SUMMARY_PARAMETERS`), compared between updates of the panel:
    a change means the summary must be read again."""
    if node is None:
        return ()
    values = []
    for name in SUMMARY_PARAMETERS:
        value = getattr(node, name)
        values.append(value.GetID() if hasattr(value, "GetID") else value)
    return tuple(values)


def summary_text(ready: bool, running_kind: str | None, lines: list[str] | None) -> str:
    """The summary label: during a run what the run uses, else the painted slices (``lines``), else what to
    choose."""
    if running_kind is not None:
        return RUN_TEXT.get(running_kind, RUN_TEXT["segment"])
    if not ready or lines is None:
        return CHOOSE_TEXT
    return "\n".join(lines)

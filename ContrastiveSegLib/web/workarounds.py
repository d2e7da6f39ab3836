"""trame-slicer behaviour this product needs changed, in one place (trame-slicer 2.0.0).

Each function says what upstream does, why it matters here, and what to delete once upstream changes;
Testing/Python/test_web.py checks that each problem is still there, so those tests fail (and say "remove the
workaround") on the release that fixes it.

1. **Paint pipelines without a view.** The Segment Editor's effect pipelines are made by the layered displayable
   manager for every view node when an effect's parameter node enters the scene. When that happens while the
   views are being made (or before them), ``SegmentationEditor._try_create_effect_pipeline`` asks the view
   manager for a view it has not registered yet and gives the pipeline ``None``. On activation the paint
   pipeline then builds no widget and fails with ``AttributeError: 'NoneType' object has no attribute
   'paint_interaction_stopped'``, so the paint brush does nothing (as in upstream's own segmentation app).
   :func:`attach_views` gives each such pipeline its view once the views exist.

2. **Sphere brush.** Upstream's segmentation app starts its brush as a sphere (``use_sphere_brush = True`` in
   its brush panel), so one stroke paints about as many slices as the brush is wide. Here every slice holding
   paint is an annotated slice the network learns from, so a stroke must stay on the slice it was drawn on:
   :func:`use_2d_brush` makes the brush a 2D disc (a cylinder one slice thick) whatever upstream's default.
"""
from __future__ import annotations


def pipelines_without_view(slicer_app) -> list:
    """The Segment Editor effect pipelines (of every registered effect) that have no view."""
    missing = []
    editor = slicer_app.segmentation_editor
    for effect in editor._effects.values():  # no public accessor in 2.0.0
        for reference in effect.pipelines:
            pipeline = reference()
            if pipeline is not None and getattr(pipeline, "_view", None) is None:
                missing.append(pipeline)
    return missing


def attach_views(slicer_app) -> int:
    """Workaround 1: give every effect pipeline that was made before its view existed that view.

    Call after the layout's views are made and before painting (again after any layout change). Returns how
    many pipelines it mended; 0 once upstream makes pipelines only for registered views.
    """
    mended = 0
    for pipeline in pipelines_without_view(slicer_app):
        view_node = pipeline.GetViewNode()
        view = slicer_app.view_manager.get_view(view_node) if view_node is not None else None
        if view is not None:
            pipeline.SetView(view)
            mended += 1
    return mended


def use_2d_brush(effect) -> None:
    """Workaround 2: a paint or erase effect with a 2D brush (paints only the slice under the mouse)."""
    if effect.is_sphere_brush():
        effect.set_use_sphere_brush(False)


def upstream_app_brush_is_sphere() -> bool:
    """Whether upstream's segmentation app still starts with a sphere brush (what workaround 2 is for)."""
    from trame_slicer.app.ui.segmentation.brush_parameters_ui import BrushParametersState

    return bool(BrushParametersState().use_sphere_brush)

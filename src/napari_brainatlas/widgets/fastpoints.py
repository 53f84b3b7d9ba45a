"""Fast path for large sections in napari: level-of-detail drawing and direct recolouring.

One full Points layer per section is kept (every cell, its features for hover, the
selection); only *which* cells are drawn changes. :class:`FastSections` sets each large
layer's ``shown`` mask from :class:`napari_brainatlas.lod.LevelOfDetail` for the current
view (camera zoom / centre, canvas size), debounced with a ``QTimer``: a
density-preserving subset when zoomed out, every cell in view when zoomed in. The total
number of drawn points over all sections stays near a budget, which is what keeps
software OpenGL (and modest GPUs) interactive.

Two places rely on napari internals (napari 0.9), because napari's public API has no
equivalent yet; both are isolated here with a fallback to the public behaviour, and
neither goes through the viewer a plugin dock is given (napari's proxy warns about
private attributes there): they touch only the layer objects this module creates or
tracks. Everything else here is public API (the overview layer's insertion restores the
layer selection through ``layers.selection``; :meth:`FastSections.drawn` counts
``shown``).

* napari's Points slicing ignores ``shown`` for 2D data (``_PointSliceRequest`` returns
  every index when no dimension is sliced). :func:`enable_shown_slicing` swaps the
  layer's slicing state for one whose request honours ``shown`` in 2D too. Without it
  (other napari versions) every cell is drawn, as before.
* ``layer.face_color = rgba`` validates the colours and rebuilds the layer's property
  dict (one object array per feature column: ~0.5 s per million cells), and setting the
  border colour as well refreshes the visual twice. :func:`set_colors` writes the RGBA
  array into the layer's colour managers and emits one ``face_color`` event; it falls
  back to the public setters when the internals differ. Both give the same colours
  (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..lod import (
    DEFAULT_BUDGET,
    MARGIN,
    SUBSET_BUDGET,
    LevelOfDetail,
    ViewRect,
    allocate_budget,
)

__all__ = [
    "DEBOUNCE_MS",
    "FAST_THRESHOLD",
    "FastSections",
    "enable_shown_slicing",
    "fast_layer_kwargs",
    "is_fast",
    "make_fast_layer",
    "set_colors",
    "set_colors_public",
]

#: sections with more cells than this use the fast path
FAST_THRESHOLD = 50_000
#: delay after the last camera / canvas change before the drawn subset is updated
DEBOUNCE_MS = 80
LOD_KEY = "_lod"
#: gap-filling passes of the overview at screen resolution (~ a 4 px point's radius)
OVERVIEW_FILL = 2


# ---------------------------------------------------------------------- slicing
_SHOWN_STATE_CLS = None


def _shown_state_class():
    """The slicing-state subclass whose requests honour ``shown`` in 2D (or None)."""
    global _SHOWN_STATE_CLS
    if _SHOWN_STATE_CLS is not None:
        return _SHOWN_STATE_CLS
    try:
        from napari.layers.points._slice import _PointSliceRequest, _PointSliceResponse
        from napari.layers.points.points import _PointsSlicingState
    except ImportError:  # pragma: no cover - other napari versions
        return None

    @dataclass(frozen=True)
    class _ShownSliceRequest(_PointSliceRequest):
        def __call__(self):
            if len(self.data) == 0 or list(self.slice_input.not_displayed):
                return super().__call__()  # napari already honours shown here
            idx = np.flatnonzero(self.shown)
            size = self.size[idx] if np.ndim(self.size) else self.size
            return _PointSliceResponse(
                indices=idx, size=size, slice_input=self.slice_input, request_id=self.id
            )

    class _ShownSlicingState(_PointsSlicingState):
        def make_slice_request_internal(self, slice_input, data_slice):
            return _ShownSliceRequest(
                slice_input=slice_input,
                data=self.layer.data,
                data_slice=data_slice,
                projection_mode=self.layer.projection_mode,
                size=self.layer.size,
                shown=self.layer.shown,
            )

    _SHOWN_STATE_CLS = _ShownSlicingState
    return _SHOWN_STATE_CLS


_FAST_POINTS_CLS = None


def _fast_points_class():
    """A napari ``Points`` subclass whose slicing honours ``shown`` in 2D from its first
    slice (so a million-cell layer is never sliced, thumbnailed and uploaded whole when
    it is created), or None on other napari versions. Same name and type string as
    napari's, so writers, controls and visuals treat it as a Points layer."""
    global _FAST_POINTS_CLS
    if _FAST_POINTS_CLS is not None:
        return _FAST_POINTS_CLS
    state_cls = _shown_state_class()
    if state_cls is None:  # pragma: no cover - other napari versions
        return None
    from napari.layers import Points as _NapariPoints

    class Points(_NapariPoints):
        __doc__ = _NapariPoints.__doc__

        def _get_layer_slicing_state(self, data, cache):
            return state_cls(layer=self, data=data, cache=cache)

    _FAST_POINTS_CLS = Points
    return Points


def enable_shown_slicing(layer) -> bool:
    """Make ``layer`` (a 2D Points layer) draw only its ``shown`` points. Returns False
    (and changes nothing) when this napari's internals are not the expected ones."""
    cls = _shown_state_class()
    state = getattr(layer, "_slicing_state", None)
    if cls is None or state is None:
        return False
    if isinstance(state, cls):
        return True
    if type(state) is not cls.__mro__[1]:
        return False
    state.__class__ = cls
    layer.refresh(extent=False, highlight=False)
    return True


# ---------------------------------------------------------------------- colours
def _as_rgba(rgba, n: int) -> np.ndarray:
    a = np.asarray(rgba, dtype=np.float32)
    if a.ndim != 2 or a.shape != (n, 4):
        raise ValueError(f"expected ({n}, 4) RGBA, got {a.shape}")
    return np.clip(a, 0.0, 1.0)


def set_colors_public(layer, rgba: np.ndarray) -> None:
    """Public napari path: border (the anti-aliased rim) then face, one refresh."""
    with layer.events.border_color.blocker():
        layer.border_color = rgba
    layer.face_color = rgba


def _set_colors_private(layer, rgba: np.ndarray) -> bool:
    try:
        from napari.layers.utils._color_manager_constants import ColorMode
    except ImportError:  # pragma: no cover
        return False
    managers = (getattr(layer, "_face", None), getattr(layer, "_border", None))
    if any(
        m is None
        or not isinstance(getattr(m, "__dict__", None), dict)
        or "colors" not in m.__dict__
        or "color_mode" not in m.__dict__
        for m in managers
    ):
        return False
    for m in managers:
        d = m.__dict__
        d["colors"] = rgba
        d["color_mode"] = ColorMode.DIRECT
        if "color_properties" in d:
            d["color_properties"] = None
        if "current_color" in d and len(rgba):
            d["current_color"] = rgba[-1].copy()
    layer.events.face_color()  # one refresh of the visual (face and rim)
    return True


def set_colors(layer, rgba, *, private: bool = True) -> None:
    """Give ``layer``'s points the (n, 4) RGBA colours (face and rim) without rebuilding
    the layer; ``private=False`` forces the public setters."""
    rgba = _as_rgba(rgba, len(layer.data))
    if private and _set_colors_private(layer, rgba):
        return
    set_colors_public(layer, rgba)


# ---------------------------------------------------------------------- layers
def fast_layer_kwargs(data, kwargs: dict, budget: int = SUBSET_BUDGET) -> tuple:
    """Layer data ``(data, kwargs)`` made ready for the fast path, before the layer is
    created (no napari call, so it can run in a worker thread): column-major points
    (napari's extent is a min/max over the rows, ~20x faster this way), the section's
    :class:`LevelOfDetail` in ``metadata['_lod']`` and the first draw's ``shown`` mask
    (a density-preserving subset of the whole section)."""
    data = np.asfortranarray(np.asarray(data, dtype=np.float64))
    kwargs = dict(kwargs)
    meta = dict(kwargs.get("metadata") or {})
    lod = LevelOfDetail(data)
    meta[LOD_KEY] = lod
    kwargs["metadata"] = meta
    kwargs["shown"] = lod.shown_mask(None, 0, budget) if lod.n > budget else True
    return data, kwargs


def make_fast_layer(data, kwargs: dict):
    """The napari Points layer for ``(data, kwargs)`` from :func:`fast_layer_kwargs`,
    drawing only its ``shown`` cells from the start (so the first upload to the GPU is
    the subset) and with its colours assigned directly (napari would validate a million
    face and border colours one array at a time)."""
    from napari.layers import Layer

    kw = dict(kwargs)
    face = kw.pop("face_color", None)
    border = kw.pop("border_color", None)
    same = (
        border is None
        or border is face
        or (np.shape(border) == np.shape(face) and np.array_equal(border, face))
    )
    if face is None or not same or np.ndim(face) != 2:
        kw["face_color"] = face if face is not None else "white"
        if border is not None:
            kw["border_color"] = border
        face = None
    cls = _fast_points_class()
    layer = cls(data, **kw) if cls is not None else Layer.create(data, kw, "points")
    enable_shown_slicing(layer)
    if face is not None:
        set_colors(layer, face)
    return layer


def is_fast(layer) -> bool:
    return isinstance(layer.metadata.get(LOD_KEY), LevelOfDetail)


# ---------------------------------------------------------------------- controller
class _State:
    """What the controller knows of one tracked layer's last update."""

    def __init__(self):
        self.rect = None  # grown view rectangle (data coords) of the last update
        self.idx = None  # indices of the cells in it
        self.full = True  # every cell in view drawn (no overview)
        self.overview = None  # the Image layer under the points, when zoomed out
        self.words = None  # rgba8 words of the layer's face colours
        self.limits = None  # the layer's own canvas_size_limits while zoomed out


class FastSections:
    """Keeps the drawn cells of every tracked (large) Points layer right for the view.

    When at most ``budget`` cells are in view (all tracked layers together) every one
    of them is drawn. Otherwise each layer shows an image overview of all its cells in
    view (an RGBA Image layer just under it, one screen pixel or one cell per image
    pixel) and a density-preserving subset of about ``subset`` points on top (hover,
    selection highlight); the split between layers follows their cells in view, so the
    density is the same everywhere.
    """

    def __init__(
        self,
        viewer,
        budget: int = DEFAULT_BUDGET,
        subset: int = SUBSET_BUDGET,
        debounce_ms: int = DEBOUNCE_MS,
        overview: bool = True,
    ):
        from qtpy.QtCore import QTimer

        self.viewer = viewer
        self.budget = int(budget)
        self.subset = int(subset)
        self.overview = bool(overview)
        self.layers: list = []
        self.updates = 0
        self._state: dict[int, _State] = {}
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(debounce_ms))
        self._timer.timeout.connect(self.update_now)
        cam = viewer.camera.events
        self._emitters = [
            cam.zoom,
            cam.center,
            viewer.canvas.events.size,
            viewer.dims.events.ndisplay,
        ]
        for ev in self._emitters:
            ev.connect(self.schedule)
        viewer.layers.events.removed.connect(self._on_removed)

    def close(self) -> None:
        self._timer.stop()
        for ev in self._emitters:
            ev.disconnect(self.schedule)
        self.viewer.layers.events.removed.disconnect(self._on_removed)
        for ly in list(self.layers):
            self.untrack(ly)

    # ---------------------------------------------------------------- layers
    @staticmethod
    def lod(layer) -> LevelOfDetail | None:
        lod = layer.metadata.get(LOD_KEY)
        return lod if isinstance(lod, LevelOfDetail) and lod.n == len(layer.data) else None

    @staticmethod
    def supported(layer) -> bool:
        """2D Points without rotation / shear / affine (the overview is axis-aligned)."""
        try:
            return (
                layer.ndim == 2
                and np.allclose(layer.affine.affine_matrix, np.eye(3))
                and np.allclose(layer.rotate, np.eye(2))
                and np.allclose(layer.shear, 0)
            )
        except Exception:  # noqa: BLE001
            return False

    def track(self, layer) -> bool:
        """Put ``layer`` on the fast path. False (layer left as it is) if it is not a
        plain 2D layer or this napari cannot draw a subset of a 2D layer."""
        if layer in self.layers:
            return True
        if not self.supported(layer) or not enable_shown_slicing(layer):
            return False
        if self.lod(layer) is None:
            layer.metadata[LOD_KEY] = LevelOfDetail(np.asarray(layer.data)[:, -2:])
        for ev in (
            layer.events.visible,
            layer.events.translate,
            layer.events.scale,
            layer.events.size,
        ):
            ev.connect(self.schedule)
        layer.events.data.connect(self._on_data)
        layer.events.face_color.connect(self._on_colors)
        lod = self.lod(layer)
        if lod._order is None:  # the range-query grid, built while the first frame draws
            import threading

            threading.Thread(target=lod._grid, daemon=True).start()
        self.layers.append(layer)
        self._state[id(layer)] = _State()
        self.schedule()
        return True

    def untrack(self, layer) -> None:
        if layer not in self.layers:
            return
        self.layers.remove(layer)
        for ev in (
            layer.events.visible,
            layer.events.translate,
            layer.events.scale,
            layer.events.size,
        ):
            ev.disconnect(self.schedule)
        layer.events.data.disconnect(self._on_data)
        layer.events.face_color.disconnect(self._on_colors)
        st = self._state.pop(id(layer), None)
        if st is not None and st.overview is not None and st.overview in self.viewer.layers:
            self.viewer.layers.remove(st.overview)

    def overview_layer(self, layer):
        st = self._state.get(id(layer))
        return None if st is None else st.overview

    def _on_removed(self, event) -> None:
        removed = event.value
        if removed in self.layers:
            self.untrack(removed)
            return
        for st in self._state.values():
            if st.overview is removed:
                st.overview = None

    def _on_data(self, event=None) -> None:
        for ly in self.layers:
            if self.lod(ly) is None:  # points added / removed: rebuild the index
                ly.metadata[LOD_KEY] = LevelOfDetail(np.asarray(ly.data)[:, -2:])
                self._state[id(ly)].words = None
        self.schedule()

    def _on_colors(self, event=None) -> None:
        """New face colours: redraw the overviews at once (the points follow by
        themselves)."""
        for ly in self.layers:
            st = self._state[id(ly)]
            st.words = None
            if not st.full and st.overview is not None:
                self._draw_overview(ly, st)

    # ---------------------------------------------------------------- view
    def schedule(self, *_) -> None:
        self._timer.start()

    def view_rect(self, layer) -> ViewRect | None:
        """The canvas's visible rectangle in ``layer``'s (y, x) data coordinates (None
        in 3D display: the whole section)."""
        v = self.viewer
        if v.dims.ndisplay != 2:
            return None
        h, w = (float(s) for s in v.canvas.size)
        zoom = float(v.camera.zoom) or 1.0
        displayed = list(v.dims.displayed)
        center = np.asarray(v.camera.center, float)[-2:]
        rect = ViewRect.from_center(center, (h / zoom, w / zoom))
        point = np.asarray(v.dims.point, float)
        corners = []
        for y, x in (
            (rect.y0, rect.x0),
            (rect.y0, rect.x1),
            (rect.y1, rect.x0),
            (rect.y1, rect.x1),
        ):
            p = point.copy()
            p[displayed] = (y, x)
            corners.append(np.asarray(layer.world_to_data(p), float)[-2:])
        c = np.array(corners)
        lo, hi = c.min(axis=0), c.max(axis=0)
        return ViewRect(lo[0], lo[1], hi[0], hi[1])

    def _screen_pixel(self, layer) -> float:
        """Size of one canvas pixel in ``layer``'s data units."""
        zoom = float(self.viewer.camera.zoom) or 1.0
        return 1.0 / (zoom * float(np.abs(np.asarray(layer.scale)[-2:]).min()))

    def update_now(self) -> None:
        """Set every tracked layer's drawn cells (and overview) for the current view."""
        self._timer.stop()
        live = [ly for ly in self.layers if ly.visible]
        for ly in self.layers:
            st = self._state[id(ly)]
            if not ly.visible and st.overview is not None:
                st.overview.visible = False
        if not live:
            return
        plans = []
        for ly in live:
            lod = self.lod(ly)
            if lod is None:
                ly.metadata[LOD_KEY] = lod = LevelOfDetail(np.asarray(ly.data)[:, -2:])
            r = self.view_rect(ly)
            idx = np.arange(lod.n) if r is None else lod.in_rect(r.grown(MARGIN))
            plans.append((ly, lod, r, idx))
        counts = [len(p[3]) for p in plans]
        full = sum(counts) <= self.budget
        subsets = allocate_budget(counts, self.subset)
        for (ly, lod, r, idx), sub in zip(plans, subsets):
            st = self._state[id(ly)]
            if full:
                mask = np.zeros(lod.n, dtype=bool)
                mask[idx] = True
            else:
                mask = lod.shown_mask(r, 0, max(sub, 1))
            st.rect = None if r is None else r.grown(MARGIN)
            st.idx, st.full = idx, full
            if ly.shown.shape != mask.shape or not np.array_equal(ly.shown, mask):
                ly.shown = mask
                self.updates += 1
            if full or not self.overview:
                if st.overview is not None:
                    st.overview.visible = False
                if st.limits is not None:
                    ly.canvas_size_limits, st.limits = st.limits, None
            else:
                if st.limits is None:
                    # under the overview the points are hover targets: no minimum
                    # on-screen size (vispy draws a clamped 4 px point as an 18 px
                    # sprite with its rim: 20x the fragments)
                    st.limits = tuple(ly.canvas_size_limits)
                    ly.canvas_size_limits = (0, st.limits[1])
                self._draw_overview(ly, st)

    def _draw_overview(self, layer, st: _State) -> None:
        from ..lod import rasterize, rgba8

        lod = self.lod(layer)
        if lod is None or st.idx is None or len(st.idx) == 0:
            return
        if st.words is None:
            st.words = rgba8(layer.face_color)
        rect = st.rect
        box = ViewRect(lod.lo[0], lod.lo[1], lod.hi[0], lod.hi[1])
        if rect is None:
            rect = box
        else:  # never beyond the section (the overview must not change the extent)
            rect = ViewRect(
                max(rect.y0, box.y0),
                max(rect.x0, box.x0),
                min(rect.y1, box.y1),
                min(rect.x1, box.x1),
            )
        cell = float(np.median(np.asarray(layer.size))) if len(layer.size) else 1.0
        pixel = max(self._screen_pixel(layer), cell)
        idx = st.idx
        fill = OVERVIEW_FILL if pixel <= self._screen_pixel(layer) * 1.01 else 0
        img, (y0, x0), px = rasterize(lod.yx[idx], st.words[idx], rect, pixel, fill=fill)
        scale = np.asarray(layer.scale, float)[-2:]
        translate = np.asarray(layer.translate, float)[-2:] + scale * (np.array([y0, x0]) + px / 2)
        ov = st.overview
        if ov is None or ov not in self.viewer.layers:
            from napari.layers import Image

            ov = Image(
                img,
                rgb=True,
                name=f"{layer.name} (overview)",
                scale=scale * px,
                translate=translate,
                contrast_limits=(0, 255),
                interpolation2d="nearest",
                blending="translucent_no_depth",
                metadata={"overview_of": layer.name},
            )
            layers = self.viewer.layers
            # the overview is not the layer the user works on: the selection stays
            selected, active = set(layers.selection), layers.selection.active
            layers.insert(layers.index(layer), ov)
            layers.selection.clear()
            layers.selection.update(selected)
            layers.selection.active = active
            st.overview = ov
        else:
            if not np.allclose(ov.scale, scale * px):
                ov.scale = scale * px
            if not np.allclose(ov.translate, translate):
                ov.translate = translate
            ov.data = img
        if not ov.visible:
            ov.visible = True

    def drawn(self) -> int:
        """Points drawn now over all tracked, visible layers (their ``shown`` cells: a
        tracked layer's slicing honours ``shown``, see :func:`enable_shown_slicing`)."""
        return int(sum(int(np.count_nonzero(ly.shown)) for ly in self.layers if ly.visible))

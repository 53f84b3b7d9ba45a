"""The 3D atlas dock: every registered cell of every open section at its CCF position.

All registered cells (Points layers holding an AnnData with ``obsm['ccf_coords']``) are
shown as ONE napari Points layer in 3D, CCF um (AP, DV, ML), with a level of detail
(:mod:`napari_brainatlas.lod3d`: a density-preserving subset of about ``BUDGET_3D``
cells for the camera when it rests and ``MOTION_BUDGET_3D`` while it moves, all cells in
view when few are), so millions of cells stay interactive in software OpenGL. Unlike the
2D fast path, the layer holds only the cells drawn now (the session holds them all and
swaps the subset in): a napari layer of millions of points costs seconds to build, and
hover and selection of single cells are not what the 3D view is for. Colour by any label, number or gene the
sections share; the atlas regions at an ontology depth as translucent surfaces; a click
on the brain highlights the region under the mouse (its cells keep their colours, the
others are dimmed, its surface is drawn stronger); a CCF plane (AP, DV or ML) moves
through the stack and emphasises the cells near it or hides the others; Export writes
the per-cell CCF table (BrainGlobe asr axes and the ABC atlas x_ccf/y_ccf/z_ccf columns).

The state lives in :class:`napari_brainatlas.widgets.atlas3d_session.Atlas3DSession`,
which holds copies of the sections' cells (:func:`.atlas3d_session.cells_copy`).
Gathering and colouring the cells, the region surfaces and the export
(``workflows.export_ccf``) are jobs of the dock base (:class:`._base.DockBase`: progress
bar with ETA, Cancel, one notification per error); the dock only moves their results
into layers. A request made while the same kind of job runs (a colour, a depth) waits
and runs when it ends, the latest one only.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSlider,
    QSpinBox,
    QVBoxLayout,
)

from ..io.backed import gene_values
from ..lod3d import OrthoView
from ._base import DockBase
from ._common import is_section_layer, paint, section_layers
from ._notify import show_info
from .atlas3d_session import AXES, Atlas3DSession, cells_copy

__all__ = ["CELLS_LAYER", "HIGHLIGHT_LAYER", "PLANE_LAYER", "REGIONS_LAYER", "Atlas3DWidget"]

CELLS_LAYER = "CCF cells (3D)"
REGIONS_LAYER = "atlas regions (3D)"
HIGHLIGHT_LAYER = "highlighted region (3D)"
PLANE_LAYER = "CCF plane"
#: the camera rests this long before the drawn cells are refined to the full budget
REFINE_MS = 250
MODES = ("off", "emphasise", "clip")


def _is_registered(layer) -> bool:
    """A section layer (not this dock's own) whose section has CCF coordinates."""
    return (
        is_section_layer(layer)
        and layer.name != CELLS_LAYER
        and "ccf_coords" in layer.metadata["adata"].obsm
    )


def _merge_meshes(meshes, alpha: float):
    """One surface (vertices, faces, vertex colours) of several region meshes."""
    verts, faces, cols, off = [], [], [], 0
    for m in meshes:
        verts.append(m.vertices)
        faces.append(m.faces + off)
        cols.append(np.tile([*m.rgb, alpha], (len(m.vertices), 1)))
        off += len(m.vertices)
    return (
        np.concatenate(verts).astype(np.float32),
        np.concatenate(faces).astype(np.int32),
        np.concatenate(cols).astype(np.float32),
    )


class Atlas3DWidget(DockBase):
    """Dock widget: all registered cells in 3D with the atlas, colours, regions, a plane."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.session = Atlas3DSession()
        self.layer = None
        self._idx = np.zeros(0, dtype=np.int64)
        self._meshes: list = []
        self._sources: list = []  # the layers' own AnnData, in session.sections order
        self._running: set[str] = set()
        self._pending: dict = {}
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFINE_MS)
        self._timer.timeout.connect(self.refine)
        self._moving = False
        self._build_ui()
        cam = napari_viewer.camera.events
        self._emitters = [cam.angles, cam.zoom, cam.center, napari_viewer.canvas.events.size]
        for ev in self._emitters:
            ev.connect(self._schedule)
        napari_viewer.mouse_drag_callbacks.append(self._on_click)
        self.setMinimumWidth(320)

    # ------------------------------------------------------------------ ui
    def _build_ui(self) -> None:
        lay = QVBoxLayout(self)
        self.refresh_btn = self.action_button(
            "Show registered sections in 3D",
            self.refresh,
            "Gather every registered cell of the open sections into one 3D layer",
        )
        lay.addWidget(self.refresh_btn)
        self.summary = QLabel("no registered section yet")
        self.summary.setWordWrap(True)
        lay.addWidget(self.summary)
        lay.addWidget(self.progress)
        lay.addLayout(self.run_row())
        self.status.setMinimumHeight(36)
        lay.addWidget(self.status)

        form = QFormLayout()
        self.color_combo = QComboBox()
        self.color_combo.setEditable(True)
        self.color_combo.activated.connect(lambda _: self.color_by(self.color_combo.currentText()))
        form.addRow("Colour by", self.color_combo)
        self.depth_spin = QSpinBox()
        self.depth_spin.setRange(0, 12)
        self.depth_spin.setValue(self.session.depth)
        self.depth_spin.valueChanged.connect(self.set_depth)
        form.addRow("Region depth", self.depth_spin)
        self.surfaces_box = QCheckBox("region surfaces")
        self.surfaces_box.setChecked(True)
        self.surfaces_box.toggled.connect(self._surfaces_visible)
        form.addRow("", self.surfaces_box)
        self.region_combo = QComboBox()
        self.region_combo.activated.connect(self._region_chosen)
        form.addRow("Highlight", self.region_combo)
        lay.addLayout(form)

        plane = QGroupBox("CCF plane")
        pf = QFormLayout(plane)
        self.axis_combo = QComboBox()
        self.axis_combo.addItems(list(AXES))
        self.axis_combo.currentIndexChanged.connect(lambda _: self._plane_changed())
        pf.addRow("Axis", self.axis_combo)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(list(MODES))
        self.mode_combo.currentIndexChanged.connect(lambda _: self._plane_changed())
        pf.addRow("Cells near it", self.mode_combo)
        self.plane_slider = QSlider(Qt.Horizontal)
        self.plane_slider.valueChanged.connect(lambda _: self._plane_changed())
        pf.addRow("Position (um)", self.plane_slider)
        self.thickness = QDoubleSpinBox()
        self.thickness.setRange(10.0, 5000.0)
        self.thickness.setValue(self.session.plane.thickness_um)
        self.thickness.setSuffix(" um")
        self.thickness.valueChanged.connect(lambda _: self._plane_changed())
        pf.addRow("Thickness", self.thickness)
        lay.addWidget(plane)

        ex = QHBoxLayout()
        self.units_combo = QComboBox()
        self.units_combo.addItems(["um", "voxel"])
        self.units_combo.setToolTip("Units of the BrainGlobe columns (ap/si/rl)")
        self.export_btn = self.action_button(
            "Export CCF table...",
            self._export_clicked,
            "Per-cell CCF coordinates: BrainGlobe asr axes and ABC atlas x/y/z_ccf columns",
        )
        ex.addWidget(self.units_combo)
        ex.addWidget(self.export_btn)
        lay.addLayout(ex)
        lay.addStretch(1)

    # ------------------------------------------------------------------ jobs
    def _run(self, kind: str, fn, *args, **kwargs):
        """``start_job`` for one ``kind`` of job at a time: a request while one runs
        waits (the latest replaces an older one) and starts when it ends."""
        if kind in self._running:
            self._pending[kind] = (fn, args, kwargs)
            return None
        self._running.add(kind)
        return self.start_job(fn, *args, on_end=lambda: self._ended(kind), **kwargs)

    def _ended(self, kind: str) -> None:
        self._running.discard(kind)
        nxt = self._pending.pop(kind, None)
        if nxt is not None:
            fn, args, kwargs = nxt
            self._run(kind, fn, *args, **kwargs)

    def cancel(self) -> None:
        """Stop the running jobs; requests waiting for them are dropped."""
        self._pending.clear()
        super().cancel()

    def _values(self, key: str | None):
        """The gene ``key``'s values per section (read here, from the layers' sections,
        as the Sections dock does), or None when ``key`` is not a gene."""
        if not self.session.needs_values(key):
            return None
        return [gene_values(ad, key) if key in ad.var_names else None for ad in self._sources]

    # ------------------------------------------------------------------ sections
    def section_layers(self) -> list:
        """Points layers holding a section with registered cells."""
        return section_layers(self.viewer, _is_registered)

    def refresh(self):
        """Gather every registered cell of the open sections (in a worker) and show it."""
        if self.busy:  # (the button is disabled meanwhile)
            self.set_status("a job is running: wait for it or Cancel it")
            return None
        s = self.session
        sources = [ly.metadata["adata"] for ly in self.section_layers()]
        sources = [ad for ad in sources if len(s.registered_sections([ad]))]
        self._sources = sources
        s.set_sections([cells_copy(ad) for ad in sources])
        if not s.sections:
            msg = "no registered section is open: register sections first"
            self.set_status(msg)
            show_info(msg)
            return None
        key = self.color_combo.currentText() or "default"
        self.set_status("gathering registered cells ...")
        return self._run(
            "prepare",
            s.prepare,
            key,
            atlas=s.default_atlas_name(),
            values=self._values(key),
            on_done=self._on_prepared,
            what="gathering registered cells",
            error_prefix="3D view failed: ",
            total=3,
            unit="steps",
        )

    def _keep_colors(self, key: str | None) -> None:
        """Give the layers' sections the legend colours the job wrote into the copies
        (``uns['<key>_colors']``, the scverse convention), here in the GUI thread."""
        name = f"{key}_colors"
        for src, cp in zip(self._sources, self.session.sections):
            if key and name in cp.uns:
                src.uns[name] = cp.uns[name]

    def _on_prepared(self, pts) -> None:
        s = self.session
        self._keep_colors(pts.color_by)
        labels, numbers, genes = s.keys()
        self.color_combo.blockSignals(True)
        self.color_combo.clear()
        self.color_combo.addItems(labels + numbers + genes)
        if s.color_by:
            self.color_combo.setCurrentText(s.color_by)
        self.color_combo.blockSignals(False)
        self._show_points()
        self._fill_plane_slider()
        self.summary.setText(
            f"{len(s.sections)} registered section(s), {pts.n:,} cells in CCF space "
            f"({s.atlas.name if s.atlas else 'no atlas'})"
        )
        self.set_depth(self.depth_spin.value())

    def _cell_size(self) -> float:
        from ..layers import cell_size_um

        pts = self.session.points
        sizes = []
        for i, ad in enumerate(self.session.sections[:8]):
            sizes.append(cell_size_um(np.asarray(ad.obsm["spatial"])[:, :2]))
        base = float(np.median(sizes)) if sizes else 20.0
        # a subset stands for more cells: grow the drawn points (at most 3x)
        return base * float(np.clip(np.sqrt(pts.n / max(self.session.budget, 1)), 1.0, 3.0))

    def _show_points(self) -> None:
        """One Points layer holding the cells drawn now (the level-of-detail subset of
        every registered cell; the session holds them all)."""
        from napari.layers import Points

        s = self.session
        self._moving = True  # first frame: the motion subset; the rest budget follows
        idx = np.flatnonzero(s.shown_mask(None, moving=True))
        if self.layer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
        self._idx = idx
        rgba = s.display_rgba()[idx]
        self.layer = Points(
            s.points.coords[idx],
            name=CELLS_LAYER,
            size=self._cell_size(),
            face_color=rgba,
            border_color=rgba,
            border_width=0.0,
            features=self._features(idx),
            canvas_size_limits=(2, 24),
            antialiasing=0.5,
            blending="translucent",
            metadata={"atlas3d": True, "cells": s.points.n},
        )
        self.viewer.add_layer(self.layer)
        self.viewer.dims.ndisplay = 3
        self.frame_brain()
        self.update_lod()
        self._timer.start()

    def _features(self, idx: np.ndarray):
        import pandas as pd

        pts = self.session.points
        return pd.DataFrame(
            {
                "section": pd.Categorical.from_codes(pts.section[idx], categories=pts.names),
                "cell": pts.rows[idx],
            }
        )

    def frame_brain(self) -> None:
        """Centre the camera on the atlas (else the cells) and zoom to fit it."""
        s = self.session
        if s.atlas is not None:
            lo, hi = np.zeros(3), np.asarray(s.atlas.shape_um, float)
        else:
            lo, hi = s.points.coords.min(0), s.points.coords.max(0)
        cam = self.viewer.camera
        cam.center = tuple((lo + hi) / 2.0)
        h, w = (float(v) for v in self.viewer.canvas.size)
        cam.zoom = 0.8 * min(h, w) / float(np.max(hi - lo) or 1.0)

    # ------------------------------------------------------------------ level of detail
    def _schedule(self, *_) -> None:
        """A camera change: draw the motion subset now, refine once the camera rests."""
        if self.layer is None:
            return
        if not self._moving:
            self._moving = True
            self.update_lod()
        self._timer.start()

    def refine(self) -> None:
        """The camera rests: draw the full budget for the current view."""
        self._timer.stop()
        self._moving = False
        self.update_lod()

    def current_view(self) -> OrthoView | None:
        v = self.viewer
        if v.dims.ndisplay != 3:
            return None
        cam = v.camera
        return OrthoView.from_camera(
            np.asarray(cam.center, float)[-3:],
            cam.view_direction,
            cam.up_direction,
            v.canvas.size,
            cam.zoom,
        )

    def update_lod(self) -> None:
        """Put the cells to draw for the current camera (and focus) into the layer."""
        if self.layer is None or self.layer not in self.viewer.layers:
            return
        mask = self.session.shown_mask(self.current_view(), moving=self._moving)
        if len(mask) != self.session.points.n:
            return
        idx = np.flatnonzero(mask)
        if len(idx) == len(self._idx) and np.array_equal(idx, self._idx):
            return
        self._idx = idx
        layer = self.layer
        with layer.events.data.blocker():
            layer.data = self.session.points.coords[idx]
        layer.features = self._features(idx)
        if len(idx):  # (napari's colour setters reject an empty array)
            paint(layer, self.session.display_rgba()[idx])
        layer.refresh()

    def drawn(self) -> int:
        """Cells drawn now."""
        return 0 if self.layer is None else len(self._idx)

    def drawn_indices(self) -> np.ndarray:
        """Indices (into the session's gathered cells) of the cells drawn now."""
        return self._idx

    # ------------------------------------------------------------------ colour
    def color_by(self, key: str | None):
        """Colour every cell by ``key`` (a shared label, number or gene)."""
        s = self.session
        if s.points is None:
            return None
        key = key or None
        self.set_status(f"colouring by {key} ...")
        return self._run(
            "colour",
            s.recolor,
            key,
            values=self._values(key),
            on_done=self._on_recoloured,
            what=f"colouring by {key}",
            error_prefix="colouring failed: ",
            show_progress=False,
        )

    def _on_recoloured(self, pts) -> None:
        if pts is not self.session.points:  # the cells were gathered anew meanwhile
            return
        self._keep_colors(pts.color_by)
        self._apply_colors()
        if pts.color_by and self.color_combo.currentText() != pts.color_by:
            self.color_combo.blockSignals(True)
            self.color_combo.setCurrentText(pts.color_by)
            self.color_combo.blockSignals(False)
        kind = pts.kind
        extra = f"{len(pts.legend)} categories" if kind == "categorical" else f"clim {pts.clim}"
        self.set_status(f"coloured by {pts.color_by}: {extra}")

    def _apply_colors(self) -> None:
        if self.layer is not None and self.layer in self.viewer.layers and len(self._idx):
            paint(self.layer, self.session.display_rgba()[self._idx])

    # ------------------------------------------------------------------ regions
    def set_depth(self, depth: int):
        """Regions at ontology ``depth``: the list to highlight from and their surfaces,
        built as a job (progress per region, Cancel)."""
        s = self.session
        s.depth = int(depth)
        if s.atlas is None:
            return None
        self.set_status(f"region surfaces at depth {s.depth} ...")
        return self._run(
            "surfaces",
            s.surfaces,
            s.depth,
            on_done=self._on_meshes,
            what="region surfaces",
            error_prefix="surfaces failed: ",
            unit="regions",
        )

    @property
    def meshes(self) -> list:
        """The region surfaces shown (at the depth of the last finished job)."""
        return self._meshes

    def _on_meshes(self, result) -> None:
        depth, ids, meshes = result
        onto = self.session.atlas.ontology
        self.region_combo.blockSignals(True)
        self.region_combo.clear()
        self.region_combo.addItem("(none)", None)
        for sid in ids:
            self.region_combo.addItem(f"{onto.acronym(sid)}  {onto.name(sid)}", sid)
        i = self.region_combo.findData(self.session.highlight)
        self.region_combo.setCurrentIndex(max(i, 0))
        self.region_combo.blockSignals(False)
        self._meshes = meshes
        self._replace_surface(REGIONS_LAYER, meshes, 0.15, "additive")
        self._show_highlight()
        self.set_status(f"{len(meshes)} region surfaces at depth {depth}")

    def _replace_surface(self, name: str, meshes, alpha: float, blending: str):
        from napari.layers import Surface

        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        if not meshes:
            return None
        verts, faces, cols = _merge_meshes(meshes, 1.0)
        layer = Surface(
            (verts, faces),
            name=name,
            vertex_colors=cols,
            opacity=alpha,
            blending=blending,
            shading="smooth",
            visible=self.surfaces_box.isChecked() or name == HIGHLIGHT_LAYER,
        )
        self.viewer.layers.insert(0, layer)  # under the cells
        return layer

    def _surfaces_visible(self, on: bool) -> None:
        if REGIONS_LAYER in self.viewer.layers:
            self.viewer.layers[REGIONS_LAYER].visible = bool(on)

    def _region_chosen(self, index: int) -> None:
        self.highlight(self.region_combo.itemData(index))

    def highlight(self, structure_id: int | None) -> int:
        """Highlight a region: its cells keep their colours, the others are dimmed."""
        s = self.session
        if s.points is None:
            return 0
        n = s.set_highlight(structure_id)
        self._apply_colors()
        self.update_lod()
        self._show_highlight()
        i = self.region_combo.findData(structure_id)
        if i >= 0 and self.region_combo.currentIndex() != i:
            self.region_combo.blockSignals(True)
            self.region_combo.setCurrentIndex(i)
            self.region_combo.blockSignals(False)
        label = s.region_label(structure_id)
        self.set_status(f"highlighted {label}: {n:,} cells" if label else "no highlight")
        return n

    def _show_highlight(self) -> None:
        """The highlighted region's surface: at once when it is among the shown ones,
        else built as a quick job."""
        sid = self.session.highlight
        m = next((m for m in self._meshes if m.structure_id == sid), None)
        if sid is None or m is not None or self.session.atlas is None:
            self._replace_surface(HIGHLIGHT_LAYER, [m] if m is not None else [], 0.3, "additive")
            return
        self._run(
            "highlight",
            self.session.region_surface,
            sid,
            on_done=lambda mesh, sid=sid: self._on_highlight_mesh(sid, mesh),
            what="highlight surface",
            show_progress=False,
        )

    def _on_highlight_mesh(self, sid: int, mesh) -> None:
        if self.session.highlight == sid:  # still the one asked for
            self._replace_surface(HIGHLIGHT_LAYER, [mesh] if mesh else [], 0.3, "additive")

    def _on_click(self, viewer, event):
        """A click (press and release without a drag) in 3D picks the region under it."""
        if viewer.dims.ndisplay != 3 or self.session.points is None:
            return
        yield
        dragged = False
        while event.type == "mouse_move":
            dragged = True
            yield
        if dragged:
            return
        self.pick(event.position, event.view_direction)

    def pick(self, position, view_direction) -> int | None:
        if position is None or view_direction is None:
            return None
        dims = list(self.viewer.dims.displayed)
        pos = np.asarray(position, float)[dims]
        vdir = np.asarray(view_direction, float)[dims]
        sid = self.session.pick(pos, vdir)
        self.highlight(sid)
        return sid

    # ------------------------------------------------------------------ plane
    def _fill_plane_slider(self) -> None:
        lo, hi = self.session.plane_range(AXES[self.axis_combo.currentText()])
        self.plane_slider.blockSignals(True)
        self.plane_slider.setRange(int(lo), int(hi))
        self.plane_slider.setValue(int((lo + hi) / 2))
        self.plane_slider.blockSignals(False)

    def set_plane(self, axis: int | None = None, position_um=None, mode=None, thickness_um=None):
        """Move the CCF plane (the dock's controls follow)."""
        if axis is not None:
            self.axis_combo.setCurrentIndex(int(axis))
        if mode is not None:
            self.mode_combo.setCurrentIndex(MODES.index(mode))
        if thickness_um is not None:
            self.thickness.setValue(float(thickness_um))
        if position_um is not None:
            self.plane_slider.setValue(int(round(float(position_um))))
        self._plane_changed()

    def _plane_changed(self) -> None:
        s = self.session
        axis = AXES[self.axis_combo.currentText()]
        if axis != s.plane.axis:
            s.set_plane(axis=axis)
            self._fill_plane_slider()
        p = s.set_plane(
            position_um=float(self.plane_slider.value()),
            thickness_um=float(self.thickness.value()),
            mode=self.mode_combo.currentText(),
        )
        if s.points is None:
            return
        self._apply_colors()
        self.update_lod()
        self._show_plane()
        near = s.near_plane()
        if near is not None:
            self.set_status(
                f"{int(near.sum()):,} cells within {p.thickness_um / 2:.0f} um of the plane "
                f"at {p.position_um:.0f} um"
            )

    def _show_plane(self) -> None:
        from napari.layers import Surface

        p = self.session.plane
        if PLANE_LAYER in self.viewer.layers:
            self.viewer.layers.remove(PLANE_LAYER)
        if p.mode == "off":
            return
        lo = np.zeros(3)
        hi = (
            np.asarray(self.session.atlas.shape_um, float)
            if self.session.atlas is not None
            else self.session.points.coords.max(0).astype(float)
        )
        a, b = [i for i in range(3) if i != p.axis]
        quad = np.zeros((4, 3))
        quad[:, p.axis] = p.position_um
        quad[:, a] = [lo[a], hi[a], hi[a], lo[a]]
        quad[:, b] = [lo[b], lo[b], hi[b], hi[b]]
        faces = np.array([[0, 1, 2], [0, 2, 3]])
        layer = Surface(
            (quad.astype(np.float32), faces),
            name=PLANE_LAYER,
            colormap="gray",
            opacity=0.15,
            blending="additive",
        )
        self.viewer.layers.insert(0, layer)

    # ------------------------------------------------------------------ export
    def _export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export per-cell CCF coordinates", "cells_ccf.csv", "CSV (*.csv *.csv.gz *.tsv)"
        )
        if path:
            self.export(path)

    def export(self, path, units: str | None = None):
        """Write the per-cell CCF table (``workflows.export_ccf``, as a job)."""
        s = self.session
        if not s.sections:
            show_info("no registered section to export")
            return None
        self.set_status(f"exporting to {path} ...")
        return self._run(
            "export",
            s.export,
            path,
            units=units or self.units_combo.currentText(),
            on_done=self._on_exported,
            what="export",
            error_prefix="export failed: ",
            unit="%",
        )

    def _on_exported(self, cells) -> None:
        self.set_status(f"wrote {cells.rows:,} cells to {cells.path}")

    def close(self) -> bool:
        self.cancel()
        self._timer.stop()
        for ev in self._emitters:
            ev.disconnect(self._schedule)
        if self._on_click in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_click)
        return super().close()

"""What the Registration dock draws, and where: the layers in atlas space and the
clicks on the section.

Coordinates. Section layers hold (y, x) section um (``layer.translate`` may place them
side by side). The user's clicks (midline, section landmarks) are read in world
coordinates and converted to the section's own um through its layer's
``translate``/``scale``. The atlas slice and everything drawn in atlas space (template,
outline, cells in atlas, atlas anchors, atlas landmarks) are in atlas-slice um (x = ML
or AP, y = DV), all translated by one offset (:meth:`Overlays.atlas_offset`) that puts
them to the right of the sections.

Layer names: ``template``, ``template outline``, ``<section> midline`` (+ ``midline
line``), ``<section> anchors (section)``, ``<section> anchors (atlas)``, ``<section> in
atlas``, ``landmarks (section)``, ``landmarks (atlas)``.
"""

from __future__ import annotations

import numpy as np

from .._common import find_layer, section_layers

__all__ = ["ANCHOR_COLORS", "GREY", "Overlays", "boundary_image", "cell_colors"]

#: colours of anchors 1..4 (section and atlas anchors share them)
ANCHOR_COLORS = np.array(
    [[1.0, 0.25, 0.25, 1], [0.2, 0.9, 0.2, 1], [0.3, 0.55, 1.0, 1], [1.0, 0.7, 0.0, 1]], dtype=float
)
GREY = np.array([0.6, 0.6, 0.6, 1.0])
LANDMARKS_SECTION = "landmarks (section)"
LANDMARKS_ATLAS = "landmarks (atlas)"
RESULT_LAYERS = ("in atlas", "anchors (section)", "anchors (atlas)")


def boundary_image(labels: np.ndarray) -> np.ndarray:
    """1 where a pixel differs from its right or lower neighbour (region outlines)."""
    b = np.zeros(labels.shape, dtype=np.uint8)
    b[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    b[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return b


def cell_colors(res, adata, atlas, own_labels: bool = False) -> np.ndarray:
    """RGBA per cell: the atlas colour of the region it lands in, or (``own_labels``)
    the colour of its own 'region' label (atlas colours when every label is an atlas
    acronym)."""
    xy = np.asarray(adata.obsm["spatial"], float)[:, :2]
    if own_labels:
        for key in ("region", "ccf_acronym"):
            if key in adata.obs.columns:
                return _label_colors(adata.obs[key].astype(str).to_numpy(), atlas.ontology)
    ids = res.slice_of(atlas).labels_at(res.transform(xy))
    uniq, inv = np.unique(ids, return_inverse=True)
    lut = np.array(
        [GREY if u == 0 else np.r_[np.array(atlas.ontology.rgb(u)) / 255, 1] for u in uniq]
    )
    return lut[inv.ravel()]


def _label_colors(vals: np.ndarray, ontology) -> np.ndarray:
    from ..._errors import BrainAtlasInputError
    from ...colors import categorical_colors

    ids = {}
    for v in np.unique(vals):
        try:
            ids[v] = ontology.id_of(v)
        except BrainAtlasInputError:  # not an atlas acronym: categorical colours
            return categorical_colors(vals)[0]
    rgba = np.tile(GREY, (len(vals), 1))
    for v, sid in ids.items():
        rgba[vals == v, :3] = np.array(ontology.rgb(sid)) / 255.0
    return rgba


class Overlays:
    """Draws into the viewer's layers (GUI thread only)."""

    def __init__(self, viewer):
        self.viewer = viewer

    # ------------------------------------------------------------------ layers
    def get(self, name: str):
        return find_layer(self.viewer, name)

    def replace_points(self, name: str, data, **kwargs):
        """Points layer ``name`` with ``data`` and ``kwargs``: updated in place when it
        exists (removing a layer makes napari collect garbage: half a second), else
        added."""
        from napari.layers import Points

        old = self.get(name)
        if not isinstance(old, Points):
            return self.viewer.add_points(data, name=name, **kwargs)
        text = kwargs.pop("text", None)
        old.selected_data = set()
        old.data = np.asarray(data, float)
        for key in ("translate", "scale", "size", "border_width", "blending"):
            if key in kwargs:
                setattr(old, key, kwargs.pop(key))
        for key in ("border_color", "face_color"):
            if key in kwargs:
                setattr(old, key, kwargs.pop(key))
        if text is not None:
            old.text = text
        old.refresh()
        return old

    def remove_result_layers(self, section: str) -> None:
        """Remove the layers that show a section's fit (cells in atlas, anchors)."""
        for what in RESULT_LAYERS:
            ly = self.get(f"{section} {what}")
            if ly is not None:
                self.viewer.layers.remove(ly)

    def raise_to_top(self, *names: str) -> None:
        for nm in names:
            ly = self.get(nm)
            if ly is not None:
                self.viewer.layers.move(self.viewer.layers.index(ly), len(self.viewer.layers))

    # ------------------------------------------------------------------ coordinates
    @staticmethod
    def world(layer) -> np.ndarray:
        """The layer's points as world (y, x)."""
        d = np.asarray(layer.data, dtype=float).reshape(-1, layer.ndim)[:, -2:]
        return d * np.asarray(layer.scale)[-2:] + np.asarray(layer.translate)[-2:]

    def to_section_xy(self, layer, section_layer) -> np.ndarray:
        """Points of ``layer`` as section (x, y) um (through world coordinates)."""
        w = self.world(layer)
        d = (w - np.asarray(section_layer.translate)[-2:]) / np.asarray(section_layer.scale)[-2:]
        return d[:, ::-1]

    def to_atlas_xy(self, layer) -> np.ndarray:
        """Points of ``layer`` as atlas-slice (x, y) um."""
        w = self.world(layer)
        return (w - np.asarray(self.atlas_offset()))[:, ::-1]

    def atlas_offset(self) -> tuple[float, float]:
        """World (y, x) where atlas-slice um (0, 0) is drawn: right of every section."""
        xs, ys = [], []
        for ly in section_layers(self.viewer):
            if len(ly.data):
                w = self.world(ly)
                ys += [w[:, 0].min()]
                xs += [w[:, 1].max(), w[:, 1].min()]
        if not xs:
            return 0.0, 0.0
        gap = 0.08 * (max(xs) - min(xs) + 1.0)
        return float(min(ys)), float(max(xs) + gap)

    @staticmethod
    def marker_size(section_layer) -> float:
        if section_layer is None or not len(section_layer.data):
            return 100.0
        ext = np.ptp(np.asarray(section_layer.data)[:, -2:], axis=0).max()
        return float(max(ext * 0.045, 1.0))

    # ------------------------------------------------------------------ atlas space
    def show_template(self, sl, colormap, features) -> None:
        """The template slice ``sl`` in atlas colours with its region outlines, and
        every atlas-space layer moved to the current offset."""
        res = sl.resolution_um
        off = self.atlas_offset()
        lab = self.get("template")
        if lab is None:
            lab = self.viewer.add_labels(
                sl.labels,
                name="template",
                scale=(res, res),
                translate=off,
                colormap=colormap,
                opacity=0.4,
                features=features,
                blending="translucent",
            )
            lab.editable = False
        else:
            lab.data = sl.labels
            lab.scale = (res, res)
            lab.translate = off
        out = self.get("template outline")
        b = boundary_image(sl.labels)
        if out is None:
            out = self.viewer.add_labels(
                b,
                name="template outline",
                scale=(res, res),
                translate=off,
                colormap={None: np.zeros(4), 0: np.zeros(4), 1: np.array([1.0, 1, 1, 0.9])},
                opacity=0.8,
                blending="translucent",
            )
            out.editable = False
        else:
            out.data = b
            out.scale = (res, res)
            out.translate = off
        for ly in self.viewer.layers:
            if ly.name.endswith((" in atlas", " anchors (atlas)")) or ly.name == LANDMARKS_ATLAS:
                ly.translate = off

    def draw_anchors(self, section_layer, res) -> None:
        """The fit's four anchors, numbered and colour-matched, on the section and on
        the template."""
        if section_layer is None or not len(res.anchors_section):
            return
        size = self.marker_size(section_layer)
        n = len(res.anchors_section)
        colors = ANCHOR_COLORS[np.arange(n) % len(ANCHOR_COLORS)]
        text = {
            "string": [str(i + 1) for i in range(n)],
            "color": "white",
            "size": 16,
            "anchor": "upper_left",
            "translation": [-size * 0.4, size * 0.4],
        }
        common = dict(face_color=colors, border_color="white", border_width=0.15, size=size)
        self.replace_points(
            f"{section_layer.name} anchors (section)",
            np.asarray(res.anchors_section, float)[:, ::-1],
            translate=tuple(section_layer.translate[-2:]),
            scale=tuple(section_layer.scale[-2:]),
            text=dict(text),
            **common,
        )
        self.replace_points(
            f"{section_layer.name} anchors (atlas)",
            np.asarray(res.anchors_atlas, float)[:, ::-1],
            translate=self.atlas_offset(),
            text=dict(text),
            **common,
        )

    def draw_cells(self, section_layer, res, rgba: np.ndarray) -> None:
        """The section's cells mapped into atlas space, coloured ``rgba``."""
        adata = section_layer.metadata["adata"]
        xy = np.asarray(adata.obsm["spatial"], float)[:, :2]
        # a little smaller than on the section: the template shows between the cells
        sz = section_layer.size
        size = 0.7 * float(np.mean(sz)) if np.size(sz) else 10.0
        name = section_layer.name
        self.replace_points(
            f"{name} in atlas",
            res.transform(xy)[:, ::-1],
            translate=self.atlas_offset(),
            face_color=rgba,
            border_color=rgba,
            border_width=0.0,
            size=size,
            blending="translucent_no_depth",
        )
        self.raise_to_top(f"{name} anchors (atlas)", f"{name} anchors (section)")

    # ------------------------------------------------------------------ clicks
    def midline_layer(self, section_layer, create: bool = False):
        """The '<section> midline' Points layer (world coordinates), created on demand
        with its '<section> midline line' path following its points."""
        name = f"{section_layer.name} midline"
        layer = self.get(name)
        if layer is None and create:
            layer = self.viewer.add_points(
                np.zeros((0, 2)),
                name=name,
                face_color="yellow",
                border_color="black",
                size=self.marker_size(section_layer),
            )
            size = self.marker_size(section_layer)
            layer.events.data.connect(
                lambda e=None, s=section_layer.name: self.draw_midline_line(s, size)
            )
        return layer

    def draw_midline_line(self, section: str, marker_size: float) -> None:
        layer = self.get(f"{section} midline")
        name = f"{section} midline line"
        line = self.get(name)
        pts = self.world(layer) if layer is not None else np.zeros((0, 2))
        if len(pts) < 2:
            if line is not None:
                line.data = []
            return
        path = pts[-2:]
        width = marker_size * 0.3
        if line is None:
            line = self.viewer.add_shapes(
                [path], shape_type="path", name=name, edge_color="yellow", edge_width=width
            )
            line.editable = False
            # keep the points above their line, so they stay draggable
            self.viewer.layers.move(self.viewer.layers.index(line), self.viewer.layers.index(layer))
        else:
            line.data = [path]
            line.shape_type = ["path"]
            line.edge_color = "yellow"
            line.edge_width = width

    def landmark_layers(self, size: float | None = None):
        """('landmarks (section)', 'landmarks (atlas)') Points layers, matched by order;
        created when ``size`` is given."""
        s, a = self.get(LANDMARKS_SECTION), self.get(LANDMARKS_ATLAS)
        if size is not None:
            style = dict(face_color="magenta", size=size, symbol="cross")
            if s is None:
                s = self.viewer.add_points(np.zeros((0, 2)), name=LANDMARKS_SECTION, **style)
            if a is None:
                a = self.viewer.add_points(
                    np.zeros((0, 2)),
                    name=LANDMARKS_ATLAS,
                    translate=self.atlas_offset(),
                    **style,
                )
        return s, a

    def landmark_pairs(self, section_layer, res, tol_um: float) -> np.ndarray:
        """(k, 4) rows x_s, y_s, x_atlas, y_atlas: the fit's anchors the user moved
        (by more than ``tol_um``), then the pairs of the landmark layers."""
        rows = []
        name = section_layer.name
        ls, la = self.get(f"{name} anchors (section)"), self.get(f"{name} anchors (atlas)")
        if (
            res is not None
            and ls is not None
            and la is not None
            and len(ls.data) == len(la.data) == len(res.anchors_section)
        ):
            s = self.to_section_xy(ls, section_layer)
            a = self.to_atlas_xy(la)
            s0 = np.asarray(res.anchors_section, float)
            a0 = np.asarray(res.anchors_atlas, float)
            moved = (np.linalg.norm(s - s0, axis=1) > tol_um) | (
                np.linalg.norm(a - a0, axis=1) > tol_um
            )
            rows += [np.r_[s[i], a[i]] for i in np.flatnonzero(moved)]
        s_l, a_l = self.landmark_layers()
        if s_l is not None and a_l is not None:
            k = min(len(s_l.data), len(a_l.data))
            if k:
                s = self.to_section_xy(s_l, section_layer)[:k]
                a = self.to_atlas_xy(a_l)[:k]
                rows += [np.r_[s[i], a[i]] for i in range(k)]
        return np.asarray(rows, float).reshape(-1, 4)

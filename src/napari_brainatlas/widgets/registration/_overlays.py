"""What the Registration dock draws, and where: the layers in atlas space and the
clicks on the section.

Coordinates. Section layers hold (y, x) section um (``layer.translate`` may place them
side by side). The atlas slice and everything drawn in atlas space (template, outline,
cells in atlas, checkerboard) are in atlas-slice um (x = ML or AP, y = DV), translated
by one offset (:meth:`Overlays.atlas_offset`) that puts them to the right of the
sections. The per-section midline and landmark layers hold world coordinates (no
translate): a click is converted to the section's own um through the section layer's
``translate``/``scale``, or to atlas-slice um through the offset, whichever side of the
canvas it lies on.

Layers (few, and named per section):

* ``template`` (Labels, the atlas slice in atlas colours) and ``template outline``
  (Labels, the region outlines at the chosen ontology level, drawn on top of the cells);
* ``checkerboard`` (Labels, shown on demand): the template and the section's own labels
  tile by tile;
* ``<section> in atlas`` (Points): the section's cells where the fit puts them, with
  features (cell id, own label, landed region, agreement) for hover;
* ``<section> landmarks`` (Points): the fit's four numbered anchors on the section and on
  the template (drag one and Re-fit) and the user's landmark pairs (``L1``, ``L2``, ...
  clicked on the section and on the template in the same order);
* ``<section> midline`` (Shapes): one line, drawn from a dorsal to a ventral point.

Only the shown section's atlas-space layers are visible (:meth:`Overlays.show_only`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._common import find_layer, section_layers

__all__ = [
    "AGREEMENT_COLORS",
    "ANCHOR_COLORS",
    "CHECKER",
    "GREY",
    "OUTLINE",
    "TEMPLATE",
    "Overlays",
    "cell_colors",
]

#: colours of anchors 1..4 (section and atlas anchors share them)
ANCHOR_COLORS = np.array(
    [[1.0, 0.25, 0.25, 1], [0.2, 0.9, 0.2, 1], [0.3, 0.55, 1.0, 1], [1.0, 0.7, 0.0, 1]], dtype=float
)
PAIR_COLOR = np.array([1.0, 0.0, 1.0, 1.0])
GREY = np.array([0.6, 0.6, 0.6, 1.0])
ONE_COLOR = np.array([1.0, 0.95, 0.4, 1.0])
#: agree, disagree, no label
AGREEMENT_COLORS = {
    1: np.array([0.2, 0.85, 0.35, 1.0]),
    0: np.array([1.0, 0.15, 0.45, 1.0]),
    -1: np.array([0.55, 0.55, 0.55, 0.8]),
}
TEMPLATE = "template"
OUTLINE = "template outline"
CHECKER = "checkerboard"
#: colour modes of the cells in atlas space
COLOR_MODES = ("agreement", "own label", "landed region", "one colour")
_LANDMARK_FEATURES = {"kind": "pair", "side": "", "n": 0, "label": ""}


def cell_colors(mode: str, *, agreement=None, own=None, landed_ids=None, ontology=None):
    """RGBA per cell for a colour ``mode`` of :data:`COLOR_MODES`: agree / disagree /
    no label; the section's own labels (atlas colours when they are atlas acronyms);
    the atlas colour of the landed region (``landed_ids`` at the chosen level); one
    colour. Falls back to one colour when what a mode needs is missing."""
    n = len(landed_ids) if landed_ids is not None else len(own) if own is not None else 0
    if mode == "agreement" and agreement is not None:
        out = np.empty((len(agreement.status), 4))
        for code, rgba in AGREEMENT_COLORS.items():
            out[agreement.status == code] = rgba
        return out
    if mode == "own label" and own is not None:
        return _label_colors(np.asarray(own, dtype=object).astype(str), ontology)
    if mode == "landed region" and landed_ids is not None and ontology is not None:
        uniq, inv = np.unique(np.asarray(landed_ids), return_inverse=True)
        lut = np.array(
            [GREY if u == 0 else np.r_[np.array(ontology.rgb(u)) / 255, 1] for u in uniq]
        )
        return lut[inv.ravel()]
    return np.tile(ONE_COLOR, (n, 1))


def _label_colors(vals: np.ndarray, ontology) -> np.ndarray:
    """Atlas colours when every label is an atlas acronym, else categorical colours."""
    from ...colors import categorical_colors
    from ...workflows.register_qc import own_label_ids

    if ontology is not None:
        ids, frac = own_label_ids(vals, ontology)
        if frac >= 0.999:
            rgba = np.tile(GREY, (len(vals), 1))
            for sid in np.unique(ids[ids > 0]):
                rgba[ids == sid, :3] = np.array(ontology.rgb(int(sid))) / 255.0
            return rgba
    return categorical_colors(vals)[0]


class Overlays:
    """Draws into the viewer's layers (GUI thread only)."""

    def __init__(self, viewer):
        self.viewer = viewer
        self._offset: tuple[float, float] | None = None

    # ------------------------------------------------------------------ layers
    def get(self, name: str):
        return find_layer(self.viewer, name)

    def replace_points(self, name: str, data, features=None, **kwargs):
        """Points layer ``name`` with ``data``, ``features`` and ``kwargs``: updated in
        place when it exists (removing a layer makes napari collect garbage: half a
        second), else added."""
        from napari.layers import Points

        data = np.asarray(data, float).reshape(-1, 2)
        old = self.get(name)
        if not isinstance(old, Points):
            if features is not None:
                kwargs["features"] = features
            return self.viewer.add_points(data, name=name, **kwargs)
        text = kwargs.pop("text", None)
        old.selected_data = set()
        old.data = data
        if features is not None:
            old.features = features
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

    def remove(self, *names: str) -> None:
        for nm in names:
            ly = self.get(nm)
            if ly is not None:
                self.viewer.layers.remove(ly)

    def remove_result_layers(self, section: str) -> None:
        """Remove what shows a section's fit: its cells in atlas space and the fit's
        anchors (the user's landmark pairs stay)."""
        self.remove(f"{section} in atlas")
        lm = self.get(f"{section} landmarks")
        if lm is not None and len(lm.data):
            keep = np.asarray(lm.features["kind"] != "anchor")
            self._set_landmarks(lm, np.asarray(lm.data)[keep], lm.features[keep])

    def raise_to_top(self, *names: str) -> None:
        for nm in names:
            ly = self.get(nm)
            if ly is not None:
                self.viewer.layers.move(self.viewer.layers.index(ly), len(self.viewer.layers))

    def show_only(self, section: str | None) -> None:
        """Only ``section``'s atlas-space layers (cells in atlas, landmarks) visible:
        another section's overlays never stay on the template."""
        for ly in self.viewer.layers:
            for suffix in (" in atlas", " landmarks"):
                if ly.name.endswith(suffix):
                    want = section is not None and ly.name == f"{section}{suffix}"
                    if ly.visible != want:
                        ly.visible = want

    # ------------------------------------------------------------------ coordinates
    @staticmethod
    def world(layer) -> np.ndarray:
        """The layer's points as world (y, x)."""
        d = np.asarray(layer.data, dtype=float).reshape(-1, layer.ndim)[:, -2:]
        return d * np.asarray(layer.scale)[-2:] + np.asarray(layer.translate)[-2:]

    @staticmethod
    def world_to_section(world, section_layer) -> np.ndarray:
        """World (y, x) -> the section's own (x, y) um."""
        w = np.asarray(world, float).reshape(-1, 2)
        d = (w - np.asarray(section_layer.translate)[-2:]) / np.asarray(section_layer.scale)[-2:]
        return d[:, ::-1]

    @staticmethod
    def section_to_world(xy, section_layer) -> np.ndarray:
        xy = np.asarray(xy, float).reshape(-1, 2)
        return (
            xy[:, ::-1] * np.asarray(section_layer.scale)[-2:]
            + np.asarray(section_layer.translate)[-2:]
        )

    def world_to_atlas(self, world) -> np.ndarray:
        """World (y, x) -> atlas-slice (x, y) um."""
        w = np.asarray(world, float).reshape(-1, 2)
        return (w - np.asarray(self.atlas_offset()))[:, ::-1]

    def atlas_to_world(self, xy) -> np.ndarray:
        xy = np.asarray(xy, float).reshape(-1, 2)
        return xy[:, ::-1] + np.asarray(self.atlas_offset())

    def to_section_xy(self, layer, section_layer) -> np.ndarray:
        """Points of ``layer`` as section (x, y) um (through world coordinates)."""
        return self.world_to_section(self.world(layer), section_layer)

    def to_atlas_xy(self, layer) -> np.ndarray:
        """Points of ``layer`` as atlas-slice (x, y) um."""
        return self.world_to_atlas(self.world(layer))

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

    def on_atlas_side(self, world) -> np.ndarray:
        """True for world points right of the sections (on the template)."""
        w = np.asarray(world, float).reshape(-1, 2)
        return w[:, 1] >= self.atlas_offset()[1]

    @staticmethod
    def marker_size(section_layer, atlas_width_um: float | None = None) -> float:
        """Anchor / landmark marker size (um): 3% of the section's extent, at most 1.5%
        of the atlas slice's width, so markers never cover the template."""
        ext = 3000.0
        if section_layer is not None and len(section_layer.data):
            ext = float(np.ptp(np.asarray(section_layer.data)[:, -2:], axis=0).max())
        size = 0.03 * ext
        if atlas_width_um:
            size = min(size, 0.015 * float(atlas_width_um))
        return float(max(size, 1.0))

    # ------------------------------------------------------------------ atlas space
    def _labels(self, name: str, data, res: float, off, **kwargs):
        ly = self.get(name)
        if ly is None:
            ly = self.viewer.add_labels(data, name=name, scale=(res, res), translate=off, **kwargs)
            ly.editable = False
        else:
            ly.data = data
            ly.scale = (res, res)
            ly.translate = off
        return ly

    def show_template(self, sl, colormap, features, outline: np.ndarray) -> None:
        """The template slice ``sl`` in atlas colours, its region ``outline`` (a 0/1
        image) on top, and every atlas-space layer moved to the current offset."""
        res = sl.resolution_um
        off = self.atlas_offset()
        self._labels(
            TEMPLATE,
            sl.labels,
            res,
            off,
            colormap=colormap,
            opacity=0.45,
            features=features,
            blending="translucent",
        )
        self._labels(
            OUTLINE,
            outline,
            res,
            off,
            colormap={None: np.zeros(4), 0: np.zeros(4), 1: np.array([1.0, 1, 1, 0.95])},
            opacity=0.9,
            blending="translucent",
        )
        self._follow_offset(off)

    def set_outline(self, outline: np.ndarray) -> None:
        ly = self.get(OUTLINE)
        if ly is not None:
            ly.data = outline

    def _follow_offset(self, off) -> None:
        """Move the atlas-space layers (and the atlas side of landmarks) with the offset."""
        for ly in self.viewer.layers:
            if ly.name.endswith(" in atlas") or ly.name == CHECKER:
                ly.translate = off
        old = self._offset
        self._offset = tuple(off)
        if old is None or np.allclose(old, off):
            return
        delta = np.asarray(off) - np.asarray(old)
        for ly in self.viewer.layers:
            if ly.name.endswith(" landmarks") and len(ly.data):
                d = np.asarray(ly.data, float).copy()
                side = ly.features["side"].to_numpy()
                atl = (side == "atlas") | ((side == "") & (d[:, 1] >= old[1]))
                d[atl] += delta
                ly.data = d

    def show_checkerboard(self, image, res: float, colormap, visible: bool = True):
        ly = self._labels(CHECKER, image, res, self.atlas_offset(), colormap=colormap, opacity=0.85)
        ly.visible = visible
        self.raise_to_top(OUTLINE)
        return ly

    def draw_cells(self, section_layer, mapped_xy, rgba, features: pd.DataFrame) -> None:
        """The section's cells mapped into atlas space (``mapped_xy`` atlas-slice um),
        coloured ``rgba``, with hover ``features``; the outline and the landmarks on
        top of them."""
        sz = section_layer.size
        size = 0.7 * float(np.mean(sz)) if np.size(sz) else 10.0
        name = section_layer.name
        self.replace_points(
            f"{name} in atlas",
            np.asarray(mapped_xy, float)[:, ::-1],
            features=features,
            translate=self.atlas_offset(),
            face_color=rgba,
            border_color=rgba,
            border_width=0.0,
            size=size,
            blending="translucent_no_depth",
        )
        self.raise_to_top(CHECKER, OUTLINE, f"{name} landmarks")

    def color_cells(self, section: str, rgba) -> None:
        ly = self.get(f"{section} in atlas")
        if ly is not None and len(rgba) == len(ly.data):
            ly.face_color = rgba
            ly.border_color = rgba

    # ------------------------------------------------------------------ landmarks
    def landmarks_layer(self, section_layer, size: float | None = None, create: bool = False):
        """The '<section> landmarks' Points layer (world coordinates), created on demand."""
        name = f"{section_layer.name} landmarks"
        ly = self.get(name)
        if ly is None and create:
            ly = self.viewer.add_points(
                np.zeros((0, 2)),
                name=name,
                features=pd.DataFrame(
                    {k: pd.Series(dtype=type(v)) for k, v in _LANDMARK_FEATURES.items()}
                ),
                face_color=PAIR_COLOR,
                border_color="white",
                border_width=0.15,
                size=size or 100.0,
                text=self._text(size or 100.0),
            )
            ly.feature_defaults = dict(_LANDMARK_FEATURES)
            ly.current_face_color = "magenta"
            ly.events.data.connect(lambda e=None, layer=ly: self._relabel(layer))
        return ly

    @staticmethod
    def _text(size: float) -> dict:
        return {
            "string": "{label}",
            "color": "white",
            "size": 11,
            "anchor": "upper_left",
            "translation": [-size * 0.4, size * 0.4],
        }

    def _relabel(self, layer) -> None:
        """Number the user's pairs per side (L1, L2, ...) after points were added,
        moved or removed."""
        n = len(layer.data)
        feats = layer.features
        if len(feats) != n or n == 0:
            return
        feats = feats.copy()
        pair = (feats["kind"] != "anchor").to_numpy()
        if not pair.any():
            return
        atl = self.on_atlas_side(self.world(layer))
        labels = feats["label"].astype(object).to_numpy()
        for side in (False, True):
            idx = np.flatnonzero(pair & (atl == side))
            labels[idx] = [f"L{k + 1}" for k in range(len(idx))]
        if list(labels) == list(feats["label"]):
            return
        feats["label"] = labels
        feats["kind"] = np.where(pair, "pair", feats["kind"].to_numpy())
        layer.features = feats

    def _set_landmarks(self, layer, world, feats: pd.DataFrame) -> None:
        feats = feats.reset_index(drop=True)
        colors = np.tile(PAIR_COLOR, (len(feats), 1))
        anchor = (feats["kind"] == "anchor").to_numpy()
        colors[anchor] = ANCHOR_COLORS[(feats["n"].to_numpy()[anchor].astype(int) - 1) % 4]
        layer.selected_data = set()
        layer.data = np.asarray(world, float).reshape(-1, 2)
        layer.features = feats
        if len(colors):
            layer.face_color = colors
        layer.refresh()

    def draw_anchors(self, section_layer, res, size: float) -> None:
        """The fit's four anchors, numbered and colour-matched, on the section and on
        the template (the user's pairs kept)."""
        if section_layer is None or not len(res.anchors_section):
            return
        ly = self.landmarks_layer(section_layer, size, create=True)
        ly.size = size
        ly.text = self._text(size)
        n = len(res.anchors_section)
        keep = (ly.features["kind"] != "anchor").to_numpy() if len(ly.data) else np.zeros(0, bool)
        old_w = np.asarray(ly.data, float).reshape(-1, 2)[keep]
        old_f = (
            ly.features[keep] if len(ly.data) else pd.DataFrame(columns=list(_LANDMARK_FEATURES))
        )
        w = np.vstack(
            [
                self.section_to_world(res.anchors_section, section_layer),
                self.atlas_to_world(res.anchors_atlas),
                old_w,
            ]
        )
        f = pd.DataFrame(
            {
                "kind": ["anchor"] * (2 * n),
                "side": ["section"] * n + ["atlas"] * n,
                "n": list(range(1, n + 1)) * 2,
                "label": [str(i) for i in range(1, n + 1)] * 2,
            }
        )
        self._set_landmarks(ly, w, pd.concat([f, old_f], ignore_index=True))

    def landmark_pairs(self, section_layer, res, tol_um: float) -> np.ndarray:
        """(k, 4) rows x_s, y_s, x_atlas, y_atlas: the fit's anchors the user moved
        (by more than ``tol_um``), then the user's pairs (matched by order)."""
        ly = self.get(f"{section_layer.name} landmarks")
        if ly is None or not len(ly.data):
            return np.zeros((0, 4))
        w = self.world(ly)
        f = ly.features
        rows = []
        kind, side = f["kind"].to_numpy(), f["side"].to_numpy()
        if res is not None and len(res.anchors_section):
            n = len(res.anchors_section)
            a_s = np.flatnonzero((kind == "anchor") & (side == "section"))
            a_a = np.flatnonzero((kind == "anchor") & (side == "atlas"))
            if len(a_s) == len(a_a) == n:
                order_s = np.argsort(f["n"].to_numpy()[a_s])
                order_a = np.argsort(f["n"].to_numpy()[a_a])
                s = self.world_to_section(w[a_s[order_s]], section_layer)
                a = self.world_to_atlas(w[a_a[order_a]])
                s0 = np.asarray(res.anchors_section, float)
                a0 = np.asarray(res.anchors_atlas, float)
                moved = (np.linalg.norm(s - s0, axis=1) > tol_um) | (
                    np.linalg.norm(a - a0, axis=1) > tol_um
                )
                rows += [np.r_[s[i], a[i]] for i in np.flatnonzero(moved)]
        pair = kind != "anchor"
        atl = self.on_atlas_side(w)
        ps = self.world_to_section(w[pair & ~atl], section_layer)
        pa = self.world_to_atlas(w[pair & atl])
        k = min(len(ps), len(pa))
        rows += [np.r_[ps[i], pa[i]] for i in range(k)]
        return np.asarray(rows, float).reshape(-1, 4)

    # ------------------------------------------------------------------ midline
    def midline_layer(self, section_layer, size: float, create: bool = False):
        """The '<section> midline' Shapes layer (world coordinates): one line from a
        dorsal to a ventral point."""
        name = f"{section_layer.name} midline"
        ly = self.get(name)
        if ly is None and create:
            ly = self.viewer.add_shapes(
                name=name, edge_color="yellow", edge_width=0.3 * size, face_color="transparent"
            )
            ly.current_edge_color = "yellow"
            ly.current_edge_width = 0.3 * size
        return ly

    def midline_world(self, section: str) -> np.ndarray | None:
        """(2, 2) world (y, x) of the last line drawn (its first and last vertex), None
        when there is none; a shape of one vertex gives (1, 2)."""
        ly = self.get(f"{section} midline")
        if ly is None or not len(ly.data):
            return None
        v = np.asarray(ly.data[-1], float)[:, -2:]
        v = v * np.asarray(ly.scale)[-2:] + np.asarray(ly.translate)[-2:]
        if len(v) < 2:
            return v[:1]
        return np.vstack([v[0], v[-1]])

    def set_midline(self, section_layer, world_yx, size: float) -> None:
        """Replace the section's midline by one line through ``world_yx`` ((2, 2))."""
        ly = self.midline_layer(section_layer, size, create=True)
        if len(ly.data):
            ly.selected_data = set(range(len(ly.data)))
            ly.remove_selected()
        ly.add_lines([np.asarray(world_yx, float).reshape(2, 2)], edge_color="yellow")

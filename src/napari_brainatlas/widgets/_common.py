"""Small pieces the docks share: finding section layers, a checklist of sections,
painting cells, legend swatches and gradients, feature columns.

A *section layer* is a napari Points layer whose ``metadata['adata']`` is an AnnData,
whoever added it (the Sections dock, the reader, the sample data, a script).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from anndata import AnnData
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor, QIcon, QLinearGradient, QPainter, QPixmap
from qtpy.QtWidgets import QGridLayout, QLabel, QListWidget, QListWidgetItem, QWidget

from ..colors import colormap_lut

__all__ = [
    "ColourBar",
    "SectionChecklist",
    "find_layer",
    "gradient_icon",
    "is_registered_section",
    "is_section_layer",
    "paint",
    "section_layers",
    "set_feature_columns",
    "swatch",
]


# ---------------------------------------------------------------------- layers
def is_section_layer(layer) -> bool:
    """A Points layer holding a section (``metadata['adata']`` is an AnnData)."""
    from napari.layers import Points

    return isinstance(layer, Points) and isinstance(layer.metadata.get("adata"), AnnData)


def is_registered_section(layer) -> bool:
    """A section layer whose AnnData has CCF coordinates and structure labels."""
    if not is_section_layer(layer):
        return False
    ad = layer.metadata["adata"]
    return "ccf_coords" in ad.obsm and (
        "ccf_id" in ad.obs.columns or "ccf_acronym" in ad.obs.columns
    )


def section_layers(viewer, keep: Callable = is_section_layer) -> list:
    """The viewer's section layers (``keep`` filters them), in layer-list order."""
    return [ly for ly in viewer.layers if keep(ly)]


def find_layer(viewer, name: str):
    """The layer called ``name``, or None."""
    return next((ly for ly in viewer.layers if ly.name == name), None)


def set_feature_columns(layer, columns: dict) -> None:
    """Add or replace feature columns (hover text, selection by value) of ``layer``;
    skipped when the features table is not one row per point."""
    feats = layer.features
    if len(feats) != len(layer.data):
        return
    feats = feats.copy()
    for name, values in columns.items():
        feats[name] = np.asarray(values)
    layer.features = feats


# ---------------------------------------------------------------------- colours
def paint(layer, rgba: np.ndarray) -> None:
    """Give the cells of ``layer`` the (n, 4) RGBA colours (face and its anti-aliased
    rim) with one refresh; large sections' colours are written directly (see
    :mod:`.fastpoints`, which keeps napari's internals in one place)."""
    from .fastpoints import is_fast, set_colors, set_colors_public

    if is_fast(layer):
        set_colors(layer, rgba)
    else:
        set_colors_public(layer, rgba)


def swatch(rgba, w: int = 14, h: int = 14) -> QIcon:
    """A square icon of one colour (legends)."""
    pm = QPixmap(w, h)
    c = np.clip(np.asarray(rgba, float) * 255, 0, 255).astype(int)
    pm.fill(QColor(int(c[0]), int(c[1]), int(c[2]), int(c[3]) if len(c) > 3 else 255))
    return QIcon(pm)


def gradient_icon(cmap: str, w: int = 80, h: int = 14) -> QIcon:
    """A horizontal colormap bar (legends of continuous values)."""
    pm = QPixmap(w, h)
    painter = QPainter(pm)
    grad = QLinearGradient(0, 0, w, 0)
    lut = colormap_lut(cmap, 16)
    for i, c in enumerate(lut):
        grad.setColorAt(i / (len(lut) - 1), QColor.fromRgbF(*[float(v) for v in c]))
    painter.fillRect(0, 0, w, h, grad)
    painter.end()
    return QIcon(pm)


class ColourBar(QWidget):
    """The colour bar of a continuous colouring: its name, the colormap strip, and the
    values at both ends (and the middle). Hidden while nothing continuous is shown."""

    def __init__(self, parent=None):
        super().__init__(parent)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 2, 0, 2)
        grid.setVerticalSpacing(1)
        self.title = QLabel("")
        self.strip = QLabel()
        self.strip.setFixedHeight(14)
        self.strip.setMinimumWidth(60)
        self.strip.setScaledContents(True)  # the strip fills the dock's width
        self.low, self.mid, self.high = QLabel(""), QLabel(""), QLabel("")
        self.mid.setAlignment(Qt.AlignHCenter)
        self.high.setAlignment(Qt.AlignRight)
        grid.addWidget(self.title, 0, 0, 1, 3)
        grid.addWidget(self.strip, 1, 0, 1, 3)
        grid.addWidget(self.low, 2, 0)
        grid.addWidget(self.mid, 2, 1)
        grid.addWidget(self.high, 2, 2)
        self.cmap = ""
        self.limits: tuple[float, float] | None = None
        self.setVisible(False)

    def show_range(self, name: str, cmap: str, low: float, high: float) -> None:
        """Show ``name`` coloured through ``cmap`` from ``low`` to ``high``."""
        self.cmap, self.limits = str(cmap), (float(low), float(high))
        self.title.setText(str(name))
        self.strip.setPixmap(gradient_icon(cmap, 256, 14).pixmap(256, 14))
        self.low.setText(f"{low:.3g}")
        self.mid.setText(f"{(low + high) / 2:.3g}")
        self.high.setText(f"{high:.3g}")
        self.setToolTip(f"{name}: {low:.4g} (left) to {high:.4g} (right), {cmap}")
        self.setVisible(True)

    def clear(self) -> None:
        self.cmap, self.limits = "", None
        self.setVisible(False)

    def text(self) -> str:
        """``name: low to high`` (empty when hidden)."""
        if self.limits is None:
            return ""
        return f"{self.title.text()}: {self.low.text()} to {self.high.text()}"


# ---------------------------------------------------------------------- checklist
class SectionChecklist(QListWidget):
    """A list of the viewer's section layers with a tick box each.

    It follows the layer list (layers added or removed). A section keeps the tick the
    user gave it; a new one gets ``default(layer, index, n_layers)`` (ticked unless
    told otherwise). ``keep`` chooses which layers are listed (all sections by default).
    ``refreshed`` is emitted after every listing.
    """

    refreshed = Signal()

    def __init__(
        self,
        viewer,
        keep: Callable = is_section_layer,
        default: Callable | None = None,
        min_height: int = 70,
        parent=None,
    ):
        super().__init__(parent)
        self.viewer = viewer
        self._keep = keep
        self._default = default or (lambda layer, i, n: True)
        self.setMinimumHeight(min_height)
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        self.refresh()

    def layers(self) -> list:
        """Every listed layer, in layer-list order."""
        return section_layers(self.viewer, self._keep)

    def refresh(self, *_) -> None:
        """List the sections again, keeping the user's ticks."""
        ticked = {
            self.item(i).text(): self.item(i).checkState() == Qt.Checked
            for i in range(self.count())
        }
        layers = self.layers()
        self.blockSignals(True)
        self.clear()
        for i, ly in enumerate(layers):
            item = QListWidgetItem(ly.name)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            on = ticked.get(ly.name, self._default(ly, i, len(layers)))
            item.setCheckState(Qt.Checked if on else Qt.Unchecked)
            self.addItem(item)
        self.blockSignals(False)
        self.refreshed.emit()

    def ticked_names(self) -> list[str]:
        return [
            self.item(i).text()
            for i in range(self.count())
            if self.item(i).checkState() == Qt.Checked
        ]

    def ticked_layers(self) -> list:
        """The ticked section layers, in layer-list order."""
        names = set(self.ticked_names())
        return [ly for ly in self.layers() if ly.name in names]

    def set_ticked(self, names: Iterable[str]) -> None:
        names = set(names)
        for i in range(self.count()):
            it = self.item(i)
            it.setCheckState(Qt.Checked if it.text() in names else Qt.Unchecked)

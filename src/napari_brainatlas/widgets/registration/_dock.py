"""The Registration dock widget: fit a section's cells to an atlas slice.

Widgets and one method per action; the state lives in a
:class:`~.session.RegistrationSession` (per-section clicks, fits, accept / undo / reset,
batch rows, state files), the drawing in :class:`~._overlays.Overlays`, and the engine
calls in :mod:`.._jobs` (``load_atlas``, ``register_one``, ``register_batch``), run as
jobs of the dock base (:mod:`.._base`): a worker thread, ``progress(done, total, info)``
delivered to the GUI thread (progress bar, cost curve), Cancel, one notification per
failure. Workers get copies of the sections' cells and never touch layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..._errors import BrainAtlasInputError
from .. import _jobs
from .._base import DockBase, snapshot
from .._common import section_layers
from .._notify import one_line, show_error
from ._overlays import Overlays, cell_colors
from .session import BATCH_COLUMNS, RegisterOptions, RegistrationSession

__all__ = ["RegistrationWidget"]


class _CostPlot(QWidget):
    """A small matplotlib cost curve (cost um per ICP iteration)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3, 1.2), dpi=80, facecolor="#262930")
        self.ax = fig.add_axes([0.16, 0.25, 0.8, 0.68])
        self.ax.set_facecolor("#262930")
        for s in self.ax.spines.values():
            s.set_color("#aaaaaa")
        self.ax.tick_params(colors="#dddddd", labelsize=7)
        self.ax.set_xlabel("iteration", color="#dddddd", fontsize=7, labelpad=1)
        self.ax.set_ylabel("cost um", color="#dddddd", fontsize=7, labelpad=1)
        (self.line,) = self.ax.plot([], [], color="#ffcc33", lw=1.2)
        self.canvas = FigureCanvasQTAgg(fig)
        self.canvas.setMinimumHeight(90)
        self.canvas.setMaximumHeight(90)
        self.canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.values: list[float] = []

    def set_values(self, values) -> None:
        self.values = [float(v) for v in values]
        y = np.asarray(self.values, float)
        self.line.set_data(np.arange(len(y)), y)
        if len(y):
            lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
            pad = max(hi - lo, 1e-6) * 0.08
            self.ax.set_xlim(0, max(len(y) - 1, 1))
            self.ax.set_ylim(lo - pad, hi + pad)
        self.canvas.draw_idle()

    def append(self, values) -> None:
        self.set_values(self.values + [float(v) for v in values])


def _row(*widgets, stretch_first: bool = False) -> QHBoxLayout:
    row = QHBoxLayout()
    for i, w in enumerate(widgets):
        if isinstance(w, str):
            w = QLabel(w)
        row.addWidget(w, 1 if (stretch_first and i == 0) else 0)
    return row


class RegistrationWidget(DockBase):
    """Dock widget: register a section to an atlas slice, check it and write it back."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.session = RegistrationSession()
        self.overlays = Overlays(self.viewer)
        self.atlas = None
        self._atlas_cmap = None
        self._atlas_feats = None
        #: optional ``hook(i, cost)`` called in the worker after every progress value
        self.progress_hook = None
        #: the template slice shown
        self.current_slice = None
        self._build_ui()
        self._blink_timer = QTimer(self)
        self._blink_timer.setInterval(450)
        self._blink_timer.timeout.connect(self._blink_tick)
        self.viewer.layers.events.inserted.connect(self._refresh_sections)
        self.viewer.layers.events.removed.connect(self._refresh_sections)
        self._refresh_sections()

    def sizeHint(self) -> QSize:
        return QSize(380, 900)

    # ================================================================== UI
    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        inner = QWidget()
        scroll.setWidget(inner)
        outer.addWidget(scroll)
        root = QVBoxLayout(inner)
        root.setContentsMargins(4, 4, 4, 4)
        root.setSpacing(4)
        for box in (
            self._atlas_box(),
            self._clicks_box(),
            self._register_box(),
            self._check_box(),
            self._batch_box(),
        ):
            root.addWidget(box)
        self.set_status("Load an atlas, pick a section, click its midline, Register.")
        root.addWidget(self.status)
        root.addStretch(1)
        self.idle_only(self.accept_button, self.undo_button, self.reset_button, self.load_button)
        self._scroll, self._inner = scroll, inner
        self._fit_width()

    def _atlas_box(self) -> QGroupBox:
        box = QGroupBox("Section and atlas")
        form = QFormLayout(box)
        self.section_combo = QComboBox()
        self.section_combo.setToolTip("A Points layer holding a section (metadata['adata'])")
        self.section_combo.currentTextChanged.connect(self._on_section_changed)
        form.addRow("Section:", self.section_combo)
        self.atlas_edit = QLineEdit("demo")
        self.atlas_edit.setToolTip(
            "'demo', an Allen annotation .nrrd or a BrainGlobe name (e.g. allen_mouse_25um)"
        )
        self.atlas_browse = QPushButton("...")
        self.atlas_browse.setMaximumWidth(30)
        self.atlas_browse.clicked.connect(self._choose_atlas)
        form.addRow("Atlas:", _row(self.atlas_edit, self.atlas_browse, stretch_first=True))
        self.ontology_edit = QLineEdit()
        self.ontology_edit.setPlaceholderText("ontology .csv/.json (for an .nrrd)")
        self.ontology_browse = QPushButton("...")
        self.ontology_browse.setMaximumWidth(30)
        self.ontology_browse.clicked.connect(self._choose_ontology)
        form.addRow("Ontology:", _row(self.ontology_edit, self.ontology_browse, stretch_first=True))
        self.load_atlas_button = self.action_button("Load atlas", self.load_atlas)
        form.addRow(self.load_atlas_button)
        self.plane_combo = QComboBox()
        self.plane_combo.addItems(["coronal", "sagittal"])
        self.plane_combo.currentTextChanged.connect(self._on_plane_changed)
        self.hemi_combo = QComboBox()
        self.hemi_combo.addItems(["both", "left", "right"])
        self.hemi_combo.currentTextChanged.connect(lambda _: self.show_template())
        form.addRow("Plane:", _row(self.plane_combo, "hemisphere:", self.hemi_combo))
        self.position_slider = QSlider(Qt.Horizontal)
        self.position_slider.setRange(0, 0)
        self.position_spin = QSpinBox()
        self.position_spin.setRange(0, 0)
        self.position_spin.setKeyboardTracking(False)
        self.position_spin.setMinimumWidth(90)
        self.position_slider.valueChanged.connect(self._on_slider)
        self.position_spin.valueChanged.connect(self._on_spin)
        form.addRow(
            "Position um:", _row(self.position_slider, self.position_spin, stretch_first=True)
        )
        self.estimate_button = self.action_button(
            "Estimate position",
            self.estimate_position,
            "Scan the whole axis for the best matching slice (slow: tens of fits)",
        )
        form.addRow(self.estimate_button)
        return box

    def _clicks_box(self) -> QGroupBox:
        box = QGroupBox("Midline and landmarks")
        form = QFormLayout(box)
        self.midline_button = QPushButton("Click midline")
        self.midline_button.setToolTip(
            "Add a '<section> midline' layer: click a dorsal, then "
            "a ventral point on the section's midline"
        )
        self.midline_button.clicked.connect(lambda: self.midline_layer(create=True, activate=True))
        self.clear_midline_button = QPushButton("Clear")
        self.clear_midline_button.clicked.connect(self.clear_midline)
        self.landmarks_button = QPushButton("Landmarks")
        self.landmarks_button.setToolTip(
            "Add 'landmarks (section)' / 'landmarks (atlas)' "
            "layers: click matching points in the same order"
        )
        self.landmarks_button.clicked.connect(lambda: self.landmark_layers(create=True))
        form.addRow(_row(self.midline_button, self.clear_midline_button, self.landmarks_button))
        return box

    def _register_box(self) -> QGroupBox:
        box = QGroupBox("Register")
        form = QFormLayout(box)
        self.max_iter_spin = QSpinBox()
        self.max_iter_spin.setRange(5, 5000)
        self.max_iter_spin.setValue(100)
        self.max_iter_spin.setToolTip("ICP iterations at most")
        form.addRow("Iterations:", self.max_iter_spin)
        self.nonlinear_check = QCheckBox("non-linear")
        self.nonlinear_check.setToolTip("Thin-plate refinement after the affine fit")
        self.refine_check = QCheckBox("refine position")
        self.refine_check.setToolTip(
            "Search the position (and angles, with region labels) around the slider's"
        )
        self.quick_check = QCheckBox("quick search")
        self.quick_check.setToolTip(
            "With region labels: the quick plane search (label-driven "
            "plane proposals + fits), about 3x faster than the full "
            "search and less accurate"
        )
        self.quick_check.setEnabled(False)
        self.refine_check.toggled.connect(self.quick_check.setEnabled)
        form.addRow(_row(self.nonlinear_check, self.refine_check, self.quick_check))
        self.register_button = self.action_button("Register", self.register)
        self.refit_button = self.action_button(
            "Re-fit", self.refit, "Fit again with the moved anchors and the landmark pairs"
        )
        form.addRow(self.run_row(self.register_button, self.refit_button))
        form.addRow(self.progress)
        self.cost_plot = _CostPlot()
        form.addRow(self.cost_plot)
        return box

    def _check_box(self) -> QGroupBox:
        box = QGroupBox("Check")
        form = QFormLayout(box)
        self.own_labels_check = QCheckBox("colour by own labels")
        self.own_labels_check.setToolTip(
            "Colour the cells in atlas space by the section's own "
            "'region' labels instead of the atlas region they hit"
        )
        self.own_labels_check.toggled.connect(lambda _: self._draw_cells_in_atlas())
        self.blink_button = QPushButton("Blink")
        self.blink_button.setCheckable(True)
        self.blink_button.toggled.connect(self.set_blink)
        form.addRow(_row(self.own_labels_check, self.blink_button))
        self.metrics_label = QLabel("no registration yet")
        self.metrics_label.setWordWrap(True)
        self.metrics_label.setMinimumHeight(self.metrics_label.fontMetrics().lineSpacing() * 5)
        self.metrics_label.setAlignment(Qt.AlignTop | Qt.AlignLeft)
        self.metrics_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        form.addRow(self.metrics_label)
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Write ccf_coords, ccf_id, ccf_acronym into the section")
        self.accept_button.clicked.connect(lambda: self.accept())
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(lambda: self.undo())
        self.reset_button = QPushButton("Reset")
        self.reset_button.clicked.connect(lambda: self.reset())
        form.addRow(_row(self.accept_button, self.undo_button, self.reset_button))
        self.save_button = QPushButton("Save state")
        self.save_button.clicked.connect(lambda: self.save_state())
        self.load_button = QPushButton("Load state")
        self.load_button.clicked.connect(lambda: self._choose_state())
        form.addRow(_row(self.save_button, self.load_button))
        return box

    def _batch_box(self) -> QGroupBox:
        box = QGroupBox("All sections")
        lay = QVBoxLayout(box)
        self.batch_table = QTableWidget(0, len(BATCH_COLUMNS))
        self.batch_table.setHorizontalHeaderLabels(list(BATCH_COLUMNS))
        self.batch_table.verticalHeader().setVisible(False)
        self.batch_table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.batch_table.setSelectionBehavior(QAbstractItemView.SelectRows)
        hdr = self.batch_table.horizontalHeader()
        hdr.setSectionResizeMode(QHeaderView.ResizeToContents)
        hdr.setStretchLastSection(True)
        self.batch_table.setMinimumHeight(80)
        self.batch_table.setMaximumHeight(120)
        lay.addWidget(self.batch_table)
        self.batch_button = self.action_button(
            "Register the rest with these settings", self.register_rest
        )
        lay.addWidget(self.batch_button)
        return box

    def _fit_width(self) -> None:
        """Never clip the contents sideways: the dock is at least as wide as they need
        (measured again once shown, with napari's style sheet applied)."""
        sb = self._scroll.verticalScrollBar().sizeHint().width()
        self._scroll.setMinimumWidth(self._inner.minimumSizeHint().width() + sb + 4)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._fit_width()

    # ================================================================== sections
    @property
    def section_name(self) -> str:
        return self.section_combo.currentText()

    @property
    def result(self):
        """The current section's registration (None before a fit)."""
        return self.session.result(self.section_name)

    def section_layers(self) -> list:
        return section_layers(self.viewer)

    def section_layer(self, name: str | None = None):
        name = name or self.section_name
        return next((ly for ly in self.section_layers() if ly.name == name), None)

    def _refresh_sections(self, *_) -> None:
        names = [ly.name for ly in self.section_layers()]
        current = self.section_combo.currentText()
        if names == [self.section_combo.itemText(i) for i in range(self.section_combo.count())]:
            return
        self.section_combo.blockSignals(True)
        self.section_combo.clear()
        self.section_combo.addItems(names)
        i = self.section_combo.findText(current)
        self.section_combo.setCurrentIndex(max(i, 0))
        self.section_combo.blockSignals(False)
        if self.section_combo.currentText() != current:
            self._on_section_changed(self.section_combo.currentText())
        self._sync_batch_table()

    def _on_section_changed(self, name: str) -> None:
        res = self.session.result(name)
        if res is not None:
            self._show_result(res)
        else:
            self.metrics_label.setText("no registration yet")
            self.cost_plot.set_values([])

    # ================================================================== atlas
    def _choose_atlas(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Atlas annotation", self.atlas_edit.text(), "NRRD (*.nrrd);;All files (*)"
        )
        if path:
            self.atlas_edit.setText(path)

    def _choose_ontology(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Ontology", self.ontology_edit.text(), "Ontology (*.csv *.json);;All files (*)"
        )
        if path:
            self.ontology_edit.setText(path)

    def load_atlas(self, spec: str | None = None, ontology: str | None = None):
        """Open the atlas in a worker (the 25 um CCF takes seconds); returns the worker."""
        if self.busy:
            show_error("a registration or atlas load is still running")
            return None
        spec = str(spec if spec is not None else self.atlas_edit.text()).strip() or "demo"
        ontology = str(ontology if ontology is not None else self.ontology_edit.text()).strip()
        self.atlas_edit.setText(spec)
        self.ontology_edit.setText(ontology)
        self.set_status(f"loading atlas {Path(spec).name} ...")
        return self.start_job(
            _jobs.load_atlas,
            spec,
            ontology,
            on_done=lambda out: self._on_atlas(out, spec, ontology),
            what=f"loading atlas {Path(spec).name}",
            error_prefix=f"cannot load atlas {spec}: ",
        )

    def _on_atlas(self, out, spec: str, ontology: str) -> None:
        self.atlas, self._atlas_cmap, self._atlas_feats = out
        self.session.set_atlas(self.atlas.name, self.atlas.version, spec, ontology)
        self._set_range()
        self.set_status(f"atlas {self.atlas.name} ({self.atlas.resolution_um:g} um) loaded")
        self.show_template()

    def _set_range(self) -> None:
        if self.atlas is None:
            return
        lo, hi = self.atlas.position_range_um(self.plane_combo.currentText())
        res = self.atlas.resolution_um
        top = int(hi - res)
        for w in (self.position_slider, self.position_spin):
            w.blockSignals(True)
            w.setRange(int(lo), top)
            w.setSingleStep(int(max(res, 1)))
            w.setValue(int(round(((lo + hi) / 2) / res) * res))
            w.blockSignals(False)
        self.position_slider.setPageStep(int(max(10 * res, 1)))

    def _on_plane_changed(self, plane: str) -> None:
        self.hemi_combo.setEnabled(plane == "coronal")
        self._set_range()
        self.show_template()

    def _on_slider(self, v: int) -> None:
        self.position_spin.blockSignals(True)
        self.position_spin.setValue(v)
        self.position_spin.blockSignals(False)
        self.show_template()

    def _on_spin(self, v: int) -> None:
        self.position_slider.blockSignals(True)
        self.position_slider.setValue(v)
        self.position_slider.blockSignals(False)
        self.show_template()

    @property
    def position_um(self) -> float:
        return float(self.position_slider.value())

    def set_position(self, um: float) -> None:
        """Move the position slider (and the template) to ``um``."""
        self.position_slider.setValue(round(um))

    @property
    def hemisphere(self) -> str:
        coronal = self.plane_combo.currentText() == "coronal"
        return self.hemi_combo.currentText() if coronal else "both"

    def show_template(self, sl=None) -> None:
        """Draw the template slice at the slider position (or ``sl``) in CCF colours, with
        its region outlines, in atlas-slice um."""
        if self.atlas is None:
            return
        from ...register.slices import atlas_slice

        if sl is None:
            try:
                sl = atlas_slice(
                    self.atlas, self.plane_combo.currentText(), self.position_um, self.hemisphere
                )
            except Exception as exc:  # noqa: BLE001 - one notification
                show_error(one_line(exc))
                return
        self.current_slice = sl
        self.overlays.show_template(sl, self._atlas_cmap, self._atlas_feats)
        self.set_status(f"{sl.plane} slice at {sl.position_um:.0f} um ({sl.hemisphere})")

    # ================================================================== clicks
    def midline_layer(self, create: bool = False, activate: bool = False, section=None):
        """The '<section> midline' Points layer (world coordinates), created on demand
        with its '<section> midline line' path drawn from its points."""
        sec = self.section_layer(section)
        if sec is None:
            if create:
                show_error("pick a section first")
            return None
        layer = self.overlays.midline_layer(sec, create=create)
        if layer is not None and activate:
            self.viewer.layers.selection.active = layer
            layer.mode = "add"
            self.set_status("click a dorsal, then a ventral point on the midline")
        return layer

    def clear_midline(self) -> None:
        layer = self.midline_layer()
        if layer is not None:
            layer.data = np.zeros((0, 2))

    def midline_xy(self, section: str | None = None):
        """The clicked midline as (2, 2) section (x, y) um (last two clicks), None when no
        point was clicked; raises BrainAtlasInputError for a single point."""
        sec = self.section_layer(section)
        layer = self.overlays.get(f"{section or self.section_name} midline")
        if sec is None or layer is None or len(layer.data) == 0:
            return None
        if len(layer.data) < 2:
            raise BrainAtlasInputError(
                f"the midline needs two points (dorsal, then ventral); {len(layer.data)} clicked"
            )
        return self.overlays.to_section_xy(layer, sec)[-2:]

    def landmark_layers(self, create: bool = False):
        """('landmarks (section)', 'landmarks (atlas)') Points layers, matched by order."""
        size = self.overlays.marker_size(self.section_layer()) if create else None
        s, a = self.overlays.landmark_layers(size)
        if create:
            self.viewer.layers.selection.active = s
            s.mode = "add"
            self.set_status(
                "click landmarks on the section, then the same ones, in the same "
                "order, on the template; Re-fit"
            )
        return s, a

    def landmark_pairs(self) -> np.ndarray:
        """(k, 4) rows x_s, y_s, x_atlas, y_atlas: moved anchors, then user landmarks."""
        sec = self.section_layer()
        if sec is None:
            return np.zeros((0, 4))
        tol = 0.5 * (self.atlas.resolution_um if self.atlas is not None else 1.0)
        return self.overlays.landmark_pairs(sec, self.result, tol)

    # ================================================================== register
    def options(self) -> RegisterOptions:
        """The settings of the dock every fit uses."""
        return RegisterOptions(
            plane=self.plane_combo.currentText(),
            hemisphere=self.hemisphere,
            max_iter=int(self.max_iter_spin.value()),
            nonlinear=self.nonlinear_check.isChecked(),
            refine_position=self.refine_check.isChecked(),
            quick_search=self.quick_check.isChecked(),
        )

    def _check_ready(self):
        if self.busy:
            show_error("a registration or atlas load is still running")
            return None
        if self.atlas is None:
            show_error("load an atlas first")
            return None
        sec = self.section_layer()
        if sec is None:
            show_error("no section: add a Points layer with a section (metadata['adata'])")
            return None
        return sec

    def register(self, landmarks=None, position_um=None):
        """Fit the current section in a worker; returns the worker (None when refused)."""
        sec = self._check_ready()
        if sec is None:
            return None
        try:
            midline = self.midline_xy()
        except BrainAtlasInputError as exc:
            self.fail(one_line(exc))
            return None
        position = self.position_um if position_um is None else position_um
        self.session.set_clicks(
            sec.name,
            midline=midline,
            landmarks=np.zeros((0, 4)) if landmarks is None else np.asarray(landmarks, float),
            position_um=position,
            hemisphere=self.hemisphere,
        )
        opts = self.options()
        kw = opts.kwargs()
        kw.update(position_um=position, midline=midline, landmarks=landmarks)
        self.cost_plot.set_values([])
        self.set_status(f"registering {sec.name} ...")
        return self.start_job(
            _jobs.register_one,
            snapshot(sec.metadata["adata"], with_x=False),
            self.atlas,
            sec.name,
            kw,
            hook=self.progress_hook,
            on_done=lambda res, n=sec.name: self._on_registered(res, n),
            on_progress=self._on_iteration,
            what="registration",
            error_prefix="registration failed: ",
            total=opts.max_iter,
            unit="it",
        )

    def estimate_position(self):
        """Register with the position scanned over the whole axis (slow)."""
        return self.register(position_um="auto")

    def refit(self):
        """Fit again, adding as landmark pairs the anchors the user moved and the pairs
        of the 'landmarks (section)' / 'landmarks (atlas)' layers."""
        pairs = self.landmark_pairs()
        res = self.result
        pos = res.position_um if res is not None else None
        return self.register(landmarks=pairs if len(pairs) else None, position_um=pos)

    def _on_iteration(self, done: int, total, info: dict) -> None:
        if "cost_um" in info:
            self.cost_plot.append([info["cost_um"]])

    def _kept(self, sec) -> dict:
        """What undo gives back with the section's AnnData: its features table."""
        return {"features": sec.features.copy()} if sec is not None else {}

    def _on_registered(self, res, name: str) -> None:
        sec = self.section_layer(name)
        adata = sec.metadata["adata"] if sec is not None else None
        self.session.fitted(name, res, adata=adata, kept=self._kept(sec))
        if name == self.section_name:
            self._show_result(res)
        self._sync_batch_table()
        self.set_status(
            f"{name}: registered at {res.position_um:.0f} um, confidence {res.confidence:.2f}"
        )

    # ================================================================== display
    def _show_result(self, res) -> None:
        """Template at the result's slice, anchors, cells in atlas space, numbers."""
        if self.atlas is None:
            return
        self.plane_combo.blockSignals(True)
        self.plane_combo.setCurrentText(res.plane)
        self.plane_combo.blockSignals(False)
        if res.plane == "coronal":
            self.hemi_combo.blockSignals(True)
            self.hemi_combo.setCurrentText(res.hemisphere)
            self.hemi_combo.blockSignals(False)
        self._set_range()
        for w in (self.position_slider, self.position_spin):
            w.blockSignals(True)
            w.setValue(round(res.position_um))
            w.blockSignals(False)
        self.show_template(res.slice_of(self.atlas))
        self.overlays.draw_anchors(self.section_layer(), res)
        self._draw_cells_in_atlas()
        self.cost_plot.set_values(res.cost_history)
        top = max(res.iterations, 1)
        self.progress.setRange(0, top)
        self.progress.setValue(res.iterations)
        self.progress.setFormat(f"{res.iterations} it")
        self.metrics_label.setText(self.metrics_text(res))

    @staticmethod
    def metrics_text(res) -> str:
        m = res.metrics
        return (
            f"position {res.position_um:.0f} um{' (estimated)' if res.position_estimated else ''}"
            f"{', mirrored' if res.mirrored else ''}\n"
            f"boundary distance: median {m.get('boundary_median_um', np.nan):.1f} um, "
            f"p95 {m.get('boundary_p95_um', np.nan):.1f} um\n"
            f"mask Dice {m.get('dice', np.nan):.3f}"
            + (f", label agreement {m['label_agreement']:.3f}" if "label_agreement" in m else "")
            + f"\niterations {res.iterations}, converged {'yes' if res.converged else 'no'}, "
            f"confidence {res.confidence:.2f}"
        )

    def cell_colors(self, res, adata) -> np.ndarray:
        """RGBA per cell: the atlas colour of the region it lands in, or (toggle) the
        colour of its own 'region' label."""
        return cell_colors(res, adata, self.atlas, self.own_labels_check.isChecked())

    def _draw_cells_in_atlas(self) -> None:
        res, sec = self.result, self.section_layer()
        if res is None or sec is None or self.atlas is None:
            return
        self.overlays.draw_cells(sec, res, self.cell_colors(res, sec.metadata["adata"]))

    def set_blink(self, on: bool) -> None:
        """Blink the cells in atlas space (QTimer), to compare them with the template."""
        ly = self.overlays.get(f"{self.section_name} in atlas")
        if on:
            self._blink_timer.start()
        else:
            self._blink_timer.stop()
            if ly is not None:
                ly.visible = True
        if self.blink_button.isChecked() != on:
            self.blink_button.setChecked(on)

    def _blink_tick(self) -> None:
        ly = self.overlays.get(f"{self.section_name} in atlas")
        if ly is not None:
            ly.visible = not ly.visible

    # ================================================================== accept / undo
    def accept(self):
        """Write the current registration into the section (obsm['ccf_coords'],
        obs['ccf_id'], obs['ccf_acronym'], uns['ccf_registration']) and its features."""
        sec = self.section_layer()
        if self.result is None or sec is None:
            show_error("nothing to accept: register the section first")
            return None
        try:
            out = self.session.accept(
                sec.name, sec.metadata["adata"], self.atlas, kept=self._kept(sec)
            )
        except Exception as exc:  # noqa: BLE001 - one notification
            show_error(one_line(exc, "accept failed: "))
            return None
        sec.metadata["adata"] = out
        feats = sec.features.copy()
        for col in ("ccf_id", "ccf_acronym"):
            feats[col] = out.obs[col].to_numpy()
        sec.features = feats
        self._sync_batch_table()
        self.set_status(f"{sec.name}: registration written (ccf_coords, ccf_id, ccf_acronym)")
        return out

    def _restore(self, name: str, snap) -> None:
        """Give the section what it held in ``snap`` and show that state."""
        sec = self.section_layer(name)
        if sec is not None and snap.adata is not None:
            sec.metadata["adata"] = snap.adata
            if "features" in snap.kept:
                sec.features = snap.kept["features"]
        if snap.result is None:
            self.overlays.remove_result_layers(name)
            if name == self.section_name:
                self.metrics_label.setText("no registration yet")
                self.cost_plot.set_values([])
        elif name == self.section_name:
            self._show_result(snap.result)
        self._sync_batch_table()

    def undo(self) -> bool:
        """Back to the state before the last fit / accept / load of this section."""
        name = self.section_name
        snap = self.session.undo(name)
        if snap is None:
            self.set_status("nothing to undo")
            return False
        self._restore(name, snap)
        self.set_status(f"{name}: undone")
        return True

    def reset(self) -> None:
        """Back to the section as it was before any registration."""
        name = self.section_name
        snap = self.session.reset(name)
        if snap is not None:
            self._restore(name, snap)
        self.set_status(f"{name}: reset")

    # ================================================================== save / load
    def state_path(self, name: str | None = None) -> Path:
        from ...register.state import default_state_path

        sec = self.section_layer(name)
        return default_state_path(
            sec.metadata["adata"] if sec is not None else None, name or self.section_name
        )

    def save_state(self, path=None):
        """Write the current section's registration state as JSON (atomic; default
        beside the data)."""
        name = self.section_name
        try:
            mid = self.midline_xy()
        except BrainAtlasInputError:  # a half-clicked midline is not saved
            mid = None
        if mid is not None:
            self.session.set_clicks(name, midline=mid)
        try:
            out = self.session.save(name, Path(path) if path else self.state_path())
        except Exception as exc:  # noqa: BLE001 - one notification
            show_error(one_line(exc, "cannot save: "))
            return None
        self.set_status(f"saved {out}")
        return out

    def _choose_state(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Registration state",
            str(self.state_path()),
            "Registration (*.json);;All files (*)",
        )
        if path:
            self.load_state(path)

    def load_state(self, path):
        """Read a saved registration for the current section (the atlas must match)."""
        name = self.section_name
        sec = self.section_layer(name)
        try:
            res = self.session.load(
                name,
                path,
                adata=sec.metadata["adata"] if sec is not None else None,
                kept=self._kept(sec),
            )
        except BrainAtlasInputError as exc:
            show_error(one_line(exc))
            return None
        self._show_result(res)
        self._sync_batch_table()
        self.set_status(f"{name}: registration loaded from {Path(path).name}")
        return res

    # ================================================================== batch
    def _sync_batch_table(self) -> None:
        rows = self.session.batch_rows([ly.name for ly in self.section_layers()])
        self.batch_table.setRowCount(len(rows))
        for r, vals in enumerate(rows):
            for c, v in enumerate(vals):
                item = QTableWidgetItem(v)
                item.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
                if c == 1 and v.startswith("failed"):
                    item.setToolTip(v)
                self.batch_table.setItem(r, c, item)

    def batch_rows(self) -> list[tuple[str, ...]]:
        t = self.batch_table
        return [
            tuple(t.item(r, c).text() if t.item(r, c) else "" for c in range(t.columnCount()))
            for r in range(t.rowCount())
        ]

    def register_rest(self):
        """Register every section without a result, with the current settings (plane,
        hemisphere, position, iterations, refine position, quick search, non-linear);
        each section's own midline layer is used when it has two points, else the
        midline-free fallback (as a full section)."""
        if self._check_ready() is None:
            return None
        names = self.session.unregistered([ly.name for ly in self.section_layers()])
        if not names:
            self.set_status("every section is registered already")
            return None
        jobs = []
        for name in names:
            try:
                mid = self.midline_xy(name)
            except BrainAtlasInputError:  # half-clicked: fall back
                mid = None
            adata = self.section_layer(name).metadata["adata"]
            jobs.append((name, snapshot(adata, with_x=False), mid))
        common = self.options().kwargs()
        common["position_um"] = self.position_um
        self.session.queue(names)
        self._sync_batch_table()
        self.set_status(f"registering {len(jobs)} section(s) ...")
        return self.start_job(
            _jobs.register_batch,
            jobs,
            self.atlas,
            common,
            on_done=self._on_batch_done,
            on_progress=self._on_batch_item,
            what="batch registration",
            total=len(jobs),
            unit="sections",
        )

    def _on_batch_item(self, done: int, total, info: dict) -> None:
        name = info.get("section")
        if name:
            self.session.set_status(name, str(info.get("status", "")))
            self._sync_batch_table()

    def _on_batch_done(self, outcomes: dict) -> None:
        counts: dict[str, int] = {}
        for name, out in outcomes.items():
            if isinstance(out, str):
                self.session.set_status(name, out)
                key = "failed" if out.startswith("failed") else out
            else:
                sec = self.section_layer(name)
                adata = sec.metadata["adata"] if sec is not None else None
                self.session.fitted(name, out, adata=adata, kept=self._kept(sec))
                if name == self.section_name:
                    self._show_result(out)
                key = "fitted"
            counts[key] = counts.get(key, 0) + 1
        self._sync_batch_table()
        summary = ", ".join(f"{n} {k}" for k, n in counts.items())
        self.set_status(f"batch registration finished: {summary}")

"""The Registration dock widget: fit a section's cells to an atlas slice.

Widgets and one method per action; the state lives in a
:class:`~.session.RegistrationSession` (per-section clicks: midline, landmarks, position,
cutting angles, flip, start pose; fits, accept / undo / reset, batch rows, state files),
the drawing in :class:`~._overlays.Overlays`, the checks in :mod:`._qc_panel` and
:mod:`napari_brainatlas.workflows.register_qc` / ``register_checks``, the batch and the
series in :mod:`._batch`. The engine calls run as jobs of the dock base (:mod:`.._base`):
a worker thread, ``progress(done, total, info)`` delivered to the GUI thread (progress
bar, cost curve), Cancel, one notification per failure. Workers get copies of the
sections' cells and never touch layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..._errors import BrainAtlasInputError
from .. import _jobs
from .._base import DockBase, snapshot
from .._common import section_layers
from .._notify import one_line, show_error
from ._batch import BatchMixin
from ._overlays import Overlays
from ._qc_panel import QCMixin
from .session import FLIPS, RegisterOptions, RegistrationSession

__all__ = ["RegistrationWidget"]


def show_warning(message: str) -> None:
    """One napari warning notification."""
    from napari.utils.notifications import show_warning as _show_warning

    _show_warning(str(message).replace("\n", " ")[:500])


class _CostPlot(QWidget):
    """A small matplotlib cost curve (cost um per ICP iteration; the stages of the fit
    coloured apart when the fit reports them)."""

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
        self._marks = []
        self.canvas = FigureCanvasQTAgg(fig)
        self.canvas.setMinimumHeight(90)
        self.canvas.setMaximumHeight(90)
        self.canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.values: list[float] = []
        self.stages: list[str] = []

    def set_values(self, values, stages=None) -> None:
        self.values = [float(v) for v in values]
        self.stages = [str(s) for s in stages] if stages is not None else []
        y = np.asarray(self.values, float)
        self.line.set_data(np.arange(len(y)), y)
        for m in self._marks:
            m.remove()
        self._marks = []
        if len(self.stages) == len(y):
            # a vertical line where the fit changes stage (a new start, the affine
            # stage): the cost may jump there
            for i in range(1, len(y)):
                if self.stages[i] != self.stages[i - 1]:
                    self._marks.append(self.ax.axvline(i - 0.5, color="#888888", lw=0.6))
        if len(y):
            lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
            pad = max(hi - lo, 1e-6) * 0.08
            self.ax.set_xlim(0, max(len(y) - 1, 1))
            self.ax.set_ylim(lo - pad, hi + pad)
        self.canvas.draw_idle()

    def append(self, values, stage=None) -> None:
        stages = self.stages + [str(stage)] * len(values) if stage is not None else None
        self.set_values(self.values + [float(v) for v in values], stages)


def _row(*widgets, stretch_first: bool = False) -> QHBoxLayout:
    row = QHBoxLayout()
    for i, w in enumerate(widgets):
        if isinstance(w, str):
            w = QLabel(w)
        row.addWidget(w, 1 if (stretch_first and i == 0) else 0)
    return row


def _spin(lo, hi, step, value, decimals=1, suffix="", tip="") -> QDoubleSpinBox:
    w = QDoubleSpinBox()
    w.setRange(lo, hi)
    w.setSingleStep(step)
    w.setDecimals(decimals)
    w.setValue(value)
    w.setKeyboardTracking(False)
    if suffix:
        w.setSuffix(suffix)
    if tip:
        w.setToolTip(tip)
    return w


class RegistrationWidget(QCMixin, BatchMixin, DockBase):
    """Dock widget: register a section to an atlas slice, check it and write it back."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.session = RegistrationSession()
        self.overlays = Overlays(self.viewer)
        self.atlas = None
        self._atlas_cmap = None
        self._atlas_feats = None
        self._units_warned: set[str] = set()
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
        return QSize(400, 900)

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
        self.set_status("Load an atlas, pick a section, draw its midline, Register.")
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
        self.hemi_combo.currentTextChanged.connect(self._on_hemisphere_changed)
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
        tip = (
            "Cutting angle of the template slice, degrees: the plane tilts by this angle "
            "about the slice's {} axis (the template follows at once)"
        )
        self.angle_x_spin = _spin(-15, 15, 0.5, 0.0, 1, " deg", tip.format("vertical"))
        self.angle_y_spin = _spin(-15, 15, 0.5, 0.0, 1, " deg", tip.format("horizontal"))
        self.angle_x_spin.valueChanged.connect(self._on_angles)
        self.angle_y_spin.valueChanged.connect(self._on_angles)
        form.addRow("Cut angles:", _row("x", self.angle_x_spin, "y", self.angle_y_spin))
        self.estimate_button = self.action_button(
            "Estimate position",
            self.estimate_position,
            "Scan the whole axis for the best matching slice (slow: tens of fits)",
        )
        form.addRow(self.estimate_button)
        return box

    def _clicks_box(self) -> QGroupBox:
        box = QGroupBox("Start: midline, pose, landmarks")
        form = QFormLayout(box)
        self.midline_button = QPushButton("Draw midline")
        self.midline_button.setToolTip(
            "Add a '<section> midline' layer: drag a line from a dorsal to a ventral point "
            "on the section's midline (a hemisection: along its cut edge)"
        )
        self.midline_button.clicked.connect(lambda: self.midline_layer(create=True, activate=True))
        self.clear_midline_button = QPushButton("Clear")
        self.clear_midline_button.clicked.connect(self.clear_midline)
        self.landmarks_button = QPushButton("Landmarks")
        self.landmarks_button.setToolTip(
            "Click points on the section, then the same ones, in the same order, on the "
            "template (the '<section> landmarks' layer); Re-fit"
        )
        self.landmarks_button.clicked.connect(lambda: self.landmarks_layer(create=True))
        form.addRow(_row(self.midline_button, self.clear_midline_button, self.landmarks_button))
        self.flip_combo = QComboBox()
        self.flip_combo.addItems(list(FLIPS))
        self.flip_combo.setToolTip(
            "Is the section mirrored (mounted the other face up)? auto: the fit decides "
            "(a full coronal section is read unmirrored)"
        )
        self.flip_combo.currentTextChanged.connect(self._on_pose_changed)
        self.rotation_spin = _spin(-180, 180, 5, 0.0, 1, " deg", "Turn the section's start pose")
        self.rotation_spin.setWrapping(True)
        self.scale_spin = _spin(
            0.001, 1000, 0.05, 1.0, 3, "", "Scale the section's start pose (wrong units: ~0.2)"
        )
        for w in (self.rotation_spin, self.scale_spin):
            w.valueChanged.connect(self._on_pose_changed)
        form.addRow("Flip:", _row(self.flip_combo, "turn:", self.rotation_spin))
        self.pose_reset_button = QPushButton("Reset pose")
        self.pose_reset_button.clicked.connect(self.reset_pose)
        form.addRow("Scale:", _row(self.scale_spin, self.pose_reset_button))
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
        self._clicks_to_widgets(name)
        self._refresh_compare_columns()
        res = self.session.result(name)
        self.overlays.show_only(name or None)
        if res is not None:
            self._show_result(res)
        else:
            self.metrics_label.setText("no registration yet")
            self.cost_plot.set_values([])
            self._fill_agreement_table(None)
            if self.atlas is not None:
                self.show_template()
                self._draw_pose_preview()
        self.check_units(name)

    def _clicks_to_widgets(self, name: str) -> None:
        """Show the section's own flip, start pose and cutting angles."""
        if not name:
            return
        c = self.session.state(name).clicks
        widgets = (
            (self.hemi_combo, lambda w: w.setCurrentText(c.hemisphere)),
            (self.flip_combo, lambda w: w.setCurrentText(c.flip)),
            (self.rotation_spin, lambda w: w.setValue(float(c.pose[0]))),
            (self.scale_spin, lambda w: w.setValue(float(c.pose[1]))),
            (self.angle_x_spin, lambda w: w.setValue(float(c.angles_deg[0]))),
            (self.angle_y_spin, lambda w: w.setValue(float(c.angles_deg[1]))),
        )
        for w, set_ in widgets:
            w.blockSignals(True)
            set_(w)
            w.blockSignals(False)
        if isinstance(c.position_um, (int, float)) and self.atlas is not None:
            for w in (self.position_slider, self.position_spin):
                w.blockSignals(True)
                w.setValue(round(c.position_um))
                w.blockSignals(False)

    def check_units(self, name: str | None = None):
        """Warn once (a notification and the status line) when the section's size or
        cell spacing does not fit the atlas, with the pixel size that would. Returns the
        :class:`~napari_brainatlas.workflows.register_checks.UnitCheck` (None without an
        atlas or a section)."""
        from ...workflows.register_checks import check_units

        name = name or self.section_name
        sec = self.section_layer(name)
        if self.atlas is None or sec is None:
            return None
        chk = check_units(sec.metadata["adata"], self.atlas, self.plane, name=name)
        if not chk.plausible and name not in self._units_warned:
            self._units_warned.add(name)
            self.set_status(chk.message)
            show_warning(chk.message)
        return chk

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
        from ...workflows.register_qc import SECTION_TISSUE_ID

        self.atlas, cmap, self._atlas_feats = out
        # colours of every structure (the outline and checkerboard levels use ancestors
        # the annotation never holds) and of the checkerboard's section tissue
        full = {int(k): np.asarray(v, np.float32) for k, v in self.atlas.ontology.lut().items()}
        full.update(cmap)
        full[SECTION_TISSUE_ID] = np.array([0.95, 0.95, 0.95, 1.0], np.float32)
        self._atlas_cmap = full
        self._units_warned.clear()
        self.session.set_atlas(self.atlas.name, self.atlas.version, spec, ontology)
        self._set_levels()
        self._refresh_compare_columns()
        self._set_range()
        self.set_status(f"atlas {self.atlas.name} ({self.atlas.resolution_um:g} um) loaded")
        self.show_template()
        self._draw_pose_preview()
        self.viewer.reset_view()  # the template and the sections in view
        self.check_units()

    def _set_range(self) -> None:
        if self.atlas is None:
            return
        lo, hi = self.atlas.position_range_um(self.plane)
        res = self.atlas.resolution_um
        top = int(hi - res)
        for w in (self.position_slider, self.position_spin):
            w.blockSignals(True)
            w.setRange(int(lo), top)
            w.setSingleStep(int(max(res, 1)))
            w.setValue(int(round(((lo + hi) / 2) / res) * res))
            w.blockSignals(False)
        self.position_slider.setPageStep(int(max(10 * res, 1)))

    @property
    def plane(self) -> str:
        return self.plane_combo.currentText()

    def _on_plane_changed(self, plane: str) -> None:
        self.hemi_combo.setEnabled(plane == "coronal")
        self._set_range()
        self.show_template()
        self._draw_pose_preview()

    def _on_hemisphere_changed(self, _=None) -> None:
        if self.section_name:
            self.session.set_clicks(self.section_name, hemisphere=self.hemi_combo.currentText())
        self.show_template()
        self._draw_pose_preview()

    def _on_slider(self, v: int) -> None:
        self.position_spin.blockSignals(True)
        self.position_spin.setValue(v)
        self.position_spin.blockSignals(False)
        self._on_position()

    def _on_spin(self, v: int) -> None:
        self.position_slider.blockSignals(True)
        self.position_slider.setValue(v)
        self.position_slider.blockSignals(False)
        self._on_position()

    def _on_position(self) -> None:
        if self.section_name:
            self.session.set_clicks(self.section_name, position_um=self.position_um)
        self.show_template()
        self._draw_pose_preview()

    def _on_angles(self, _=None) -> None:
        """A cutting angle changed: the template follows at once."""
        if self.section_name:
            self.session.set_clicks(self.section_name, angles_deg=self.angles_deg)
        self.show_template()
        self._draw_pose_preview()

    @property
    def position_um(self) -> float:
        return float(self.position_slider.value())

    @property
    def angles_deg(self) -> tuple[float, float]:
        return (float(self.angle_x_spin.value()), float(self.angle_y_spin.value()))

    def set_position(self, um: float) -> None:
        """Move the position slider (and the template) to ``um``."""
        self.position_slider.setValue(round(um))

    def set_angles(self, ax: float, ay: float) -> None:
        """Set the cutting angles (degrees; the template follows)."""
        self.angle_x_spin.setValue(float(ax))
        self.angle_y_spin.setValue(float(ay))

    @property
    def hemisphere(self) -> str:
        return self.hemi_combo.currentText() if self.plane == "coronal" else "both"

    def show_template(self, sl=None) -> None:
        """Draw the template slice at the slider position and cutting angles (or ``sl``)
        in CCF colours, with its region outlines at the chosen level, in atlas-slice um."""
        if self.atlas is None:
            return
        from ...register.slices import atlas_slice
        from ...workflows.register_qc import outline_image

        if sl is None:
            try:
                sl = atlas_slice(
                    self.atlas, self.plane, self.position_um, self.hemisphere, self.angles_deg
                )
            except Exception as exc:  # noqa: BLE001 - one notification
                show_error(one_line(exc))
                return
        self.current_slice = sl
        outline = outline_image(sl.labels, self.atlas.ontology, self.level)
        self.overlays.show_template(sl, self._atlas_cmap, self._atlas_feats, outline)
        a = sl.angles_deg
        tilt = f", angles {a[0]:g}/{a[1]:g} deg" if any(a) else ""
        self.set_status(f"{sl.plane} slice at {sl.position_um:.0f} um ({sl.hemisphere}){tilt}")

    # ================================================================== clicks
    def _marker_size(self, sec=None) -> float:
        width = None
        if self.current_slice is not None:
            width = self.current_slice.extent_um[0]
        return self.overlays.marker_size(sec or self.section_layer(), width)

    def midline_layer(self, create: bool = False, activate: bool = False, section=None):
        """The '<section> midline' Shapes layer (world coordinates), created on demand:
        one line from a dorsal to a ventral point."""
        sec = self.section_layer(section)
        if sec is None:
            if create:
                show_error("pick a section first")
            return None
        layer = self.overlays.midline_layer(sec, self._marker_size(sec), create=create)
        if layer is not None and activate:
            self.viewer.layers.selection.active = layer
            layer.mode = "add_line"
            self.set_status("drag a line from a dorsal to a ventral point of the midline")
        return layer

    def set_midline(self, xy, section: str | None = None) -> None:
        """Draw the midline from section (x, y) um ``xy`` ((2, 2), dorsal first)."""
        sec = self.section_layer(section)
        if sec is None:
            raise BrainAtlasInputError("no such section")
        world = self.overlays.section_to_world(np.asarray(xy, float).reshape(2, 2), sec)
        self.overlays.set_midline(sec, world, self._marker_size(sec))

    def clear_midline(self) -> None:
        layer = self.midline_layer()
        if layer is not None and len(layer.data):
            layer.selected_data = set(range(len(layer.data)))
            layer.remove_selected()

    def midline_xy(self, section: str | None = None):
        """The drawn midline as (2, 2) section (x, y) um (the last line), None when none
        was drawn; raises BrainAtlasInputError for a line of one point."""
        name = section or self.section_name
        sec = self.section_layer(name)
        world = self.overlays.midline_world(name)
        if sec is None or world is None:
            return None
        if len(world) < 2:
            raise BrainAtlasInputError(
                "the midline needs two points (drag from a dorsal to a ventral point)"
            )
        return self.overlays.world_to_section(world, sec)

    def landmarks_layer(self, create: bool = False):
        """The '<section> landmarks' layer: the fit's anchors and the user's pairs."""
        sec = self.section_layer()
        if sec is None:
            if create:
                show_error("pick a section first")
            return None
        ly = self.overlays.landmarks_layer(sec, self._marker_size(sec), create=create)
        if create and ly is not None:
            ly.visible = True
            self.viewer.layers.selection.active = ly
            ly.mode = "add"
            self.set_status(
                "click landmarks on the section, then the same ones, in the same order, on "
                "the template; Re-fit"
            )
        return ly

    def landmark_pairs(self) -> np.ndarray:
        """(k, 4) rows x_s, y_s, x_atlas, y_atlas: moved anchors, then user landmarks."""
        sec = self.section_layer()
        if sec is None:
            return np.zeros((0, 4))
        tol = 0.5 * (self.atlas.resolution_um if self.atlas is not None else 1.0)
        return self.overlays.landmark_pairs(sec, self.result, tol)

    # ================================================================== start pose
    @property
    def pose(self) -> tuple[float, float]:
        return (float(self.rotation_spin.value()), float(self.scale_spin.value()))

    def set_pose(self, rotation_deg: float = 0.0, scale: float = 1.0, flip: str | None = None):
        """Turn / scale (and flip) the current section's start pose (the preview follows)."""
        for w, v in ((self.rotation_spin, rotation_deg), (self.scale_spin, scale)):
            w.blockSignals(True)
            w.setValue(float(v))
            w.blockSignals(False)
        if flip is not None:
            self.flip_combo.blockSignals(True)
            self.flip_combo.setCurrentText(flip)
            self.flip_combo.blockSignals(False)
        self._on_pose_changed()

    def reset_pose(self) -> None:
        self.set_pose(0.0, 1.0, "auto")

    def _on_pose_changed(self, _=None) -> None:
        name = self.section_name
        if not name:
            return
        self.session.set_clicks(name, flip=self.flip_combo.currentText(), pose=self.pose)
        if self.result is None:
            self._draw_pose_preview()
        elif self.atlas is not None:
            self.set_status(
                "start pose set: Register fits from it (the fit shown is unchanged until then)"
            )

    def _draw_pose_preview(self) -> None:
        """Without a fit: the section's cells over the template in the start pose."""
        from ...workflows.register_pose import StartPose, placement

        sec = self.section_layer()
        if self.atlas is None or sec is None or self.result is not None:
            return
        c = self.session.state(sec.name).clicks
        if c.flip == "auto" and StartPose(*self.pose).identity:
            self.overlays.remove(f"{sec.name} in atlas")
            return
        xy = np.asarray(sec.metadata["adata"].obsm["spatial"], float)[:, :2]
        M = placement(
            xy,
            self.atlas,
            self.plane,
            self.position_um,
            self.hemisphere,
            self.angles_deg,
            StartPose(*self.pose),
            c.flip == "yes",
        )
        mapped = xy @ M[:2, :2].T + M[:2, 2]
        self._draw_mapped(sec, mapped, None)
        self.set_status("start pose preview: Register fits from this pose")

    def midline_xy_safe(self):
        try:
            return self.midline_xy()
        except BrainAtlasInputError:
            return None

    # ================================================================== register
    def options(self) -> RegisterOptions:
        """The settings of the dock every fit uses."""
        return RegisterOptions(
            plane=self.plane,
            hemisphere=self.hemisphere,
            max_iter=int(self.max_iter_spin.value()),
            nonlinear=self.nonlinear_check.isChecked(),
            refine_position=self.refine_check.isChecked(),
            quick_search=self.quick_check.isChecked(),
        )

    def fit_options(self, name: str, **changes) -> dict:
        """The ``register_section`` keywords for section ``name``: the dock's settings,
        its clicks (midline, flip, start pose, cutting angles) and ``changes``."""
        c = self.session.state(name).clicks
        kw = self.options().kwargs()
        kw.update(
            angles_deg=tuple(float(a) for a in c.angles_deg),
            mirrored=c.mirrored,
            start_pose={"rotation_deg": float(c.pose[0]), "scale": float(c.pose[1])},
        )
        kw.update(changes)
        return kw

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
            angles_deg=self.angles_deg,
            flip=self.flip_combo.currentText(),
            pose=self.pose,
        )
        opts = self.options()
        kw = self.fit_options(sec.name, position_um=position, midline=midline, landmarks=landmarks)
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
        of the '<section> landmarks' layer."""
        pairs = self.landmark_pairs()
        res = self.result
        pos = res.position_um if res is not None else None
        return self.register(landmarks=pairs if len(pairs) else None, position_um=pos)

    def _on_iteration(self, done: int, total, info: dict) -> None:
        if "cost_um" in info:
            stage = info.get("fit_stage")
            self.cost_plot.append([info["cost_um"]], stage)
            if stage and stage != getattr(self, "_last_stage", None):
                # a new start or the affine stage: the cost may jump here
                self._last_stage = stage
                self.set_status(f"registering {self.section_name}: {stage} fit ...")

    def _kept(self, sec) -> dict:
        """What undo gives back with the section's AnnData: its features table."""
        return {"features": sec.features.copy()} if sec is not None else {}

    def _on_registered(self, res, name: str) -> None:
        from ...workflows.register_checks import fitted_scale, scale_warning

        sec = self.section_layer(name)
        adata = sec.metadata["adata"] if sec is not None else None
        self.session.fitted(name, res, adata=adata, kept=self._kept(sec))
        if name == self.section_name:
            self._show_result(res)
        else:
            self.update_agreement(name)
        self._sync_batch_table()
        text = (
            f"{name}: registered at {res.position_um:.0f} um, scale {fitted_scale(res):.2f}, "
            f"confidence {res.confidence:.2f}"
        )
        warn = scale_warning(res, pixel_size_um=self._pixel_size(adata))
        if warn:
            text = f"{name}: {warn}"
            show_warning(text)
        self.set_status(text)

    @staticmethod
    def _pixel_size(adata) -> float:
        meta = adata.uns.get("napari_brainatlas", {}) if adata is not None else {}
        try:
            return float(meta.get("pixel_size_um", 1.0)) if isinstance(meta, dict) else 1.0
        except (TypeError, ValueError):
            return 1.0

    # ================================================================== display
    def _show_result(self, res) -> None:
        """Template at the result's slice, anchors, cells in atlas space, numbers."""
        if self.atlas is None:
            return
        self.plane_combo.blockSignals(True)
        self.plane_combo.setCurrentText(res.plane)
        self.plane_combo.blockSignals(False)
        self.hemi_combo.setEnabled(res.plane == "coronal")
        if res.plane == "coronal":
            self.hemi_combo.blockSignals(True)
            self.hemi_combo.setCurrentText(res.hemisphere)
            self.hemi_combo.blockSignals(False)
        self._set_range()
        for w, v in (
            (self.position_slider, round(res.position_um)),
            (self.position_spin, round(res.position_um)),
            (self.angle_x_spin, float(res.angles_deg[0])),
            (self.angle_y_spin, float(res.angles_deg[1])),
        ):
            w.blockSignals(True)
            w.setValue(v)
            w.blockSignals(False)
        self.show_template(res.slice_of(self.atlas))
        sec = self.section_layer()
        self.overlays.draw_anchors(sec, res, self._marker_size(sec))
        self.overlays.show_only(self.section_name)
        self.update_agreement(self.section_name, draw=True)
        stages = getattr(res, "cost_stages", None)
        self.cost_plot.set_values(res.cost_history, stages)
        top = max(res.iterations, 1)
        self.progress.setRange(0, top)
        self.progress.setValue(res.iterations)
        self.progress.setFormat(f"{res.iterations} it")
        self.metrics_label.setText(self.metrics_text(res))

    def metrics_text(self, res) -> str:
        from ...workflows.register_checks import SCALE_RANGE, fitted_scale

        m = res.metrics
        s = fitted_scale(res)
        odd = "" if SCALE_RANGE[0] <= s <= SCALE_RANGE[1] else " (implausible: check units)"
        agree = self._agreement.get(self.section_name) if hasattr(self, "_agreement") else None
        return (
            f"position {res.position_um:.0f} um{' (estimated)' if res.position_estimated else ''}"
            f"{', mirrored' if res.mirrored else ''}, scale {s:.2f}{odd}\n"
            f"boundary distance: median {m.get('boundary_median_um', np.nan):.1f} um, "
            f"p95 {m.get('boundary_p95_um', np.nan):.1f} um\n"
            f"mask Dice {m.get('dice', np.nan):.3f}"
            + (f", label agreement {m['label_agreement']:.3f}" if "label_agreement" in m else "")
            + f"\niterations {res.iterations}, converged {'yes' if res.converged else 'no'}, "
            f"confidence {res.confidence:.2f}"
            + (f"\n{agree.summary()}" if agree is not None else "")
        )

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
        self.session.set_agreement(sec.name, self._overall(sec.name))
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
        if name == self.section_name:
            self._clicks_to_widgets(name)
        if snap.result is None:
            self.overlays.remove_result_layers(name)
            self._agreement.pop(name, None)
            if name == self.section_name:
                self.metrics_label.setText("no registration yet")
                self.cost_plot.set_values([])
                self._fill_agreement_table(None)
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
        """The default state file of a section: in the user's registrations folder
        (never beside the input data)."""
        return self.session.state_path(name or self.section_name)

    def save_state(self, path=None):
        """Write the current section's registration state as JSON (atomic). Without
        ``path`` a file dialog asks, starting in the user's registrations folder."""
        name = self.section_name
        if path is None:
            default = self.state_path(name)
            default.parent.mkdir(parents=True, exist_ok=True)
            path, _ = QFileDialog.getSaveFileName(
                self, "Save registration state", str(default), "Registration (*.json)"
            )
            if not path:
                return None
        mid = self.midline_xy_safe()
        if mid is not None:
            self.session.set_clicks(name, midline=mid)
        try:
            out = self.session.save(name, Path(path))
        except Exception as exc:  # noqa: BLE001 - one notification
            show_error(one_line(exc, "cannot save: "))
            return None
        self.set_status(f"saved {out}")
        return out

    def load_state(self, path=None):
        """Read a saved registration for the current section (the atlas must match).
        Without ``path`` a file dialog asks."""
        name = self.section_name
        if path is None:
            start = self.state_path(name)
            folder = start.parent if start.parent.is_dir() else Path.home()
            path, _ = QFileDialog.getOpenFileName(
                self, "Registration state", str(folder), "Registration (*.json);;All files (*)"
            )
            if not path:
                return None
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
        c = self.session.state(name).clicks
        if c.midline is not None and sec is not None:
            self.set_midline(c.midline, name)
        self._clicks_to_widgets(name)
        self._show_result(res)
        self._sync_batch_table()
        self.set_status(f"{name}: registration loaded from {Path(path).name}")
        return res

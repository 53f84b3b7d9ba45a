"""The Registration dock widget: fit a section's cells to an atlas slice.

Coordinates. Section layers hold (y, x) section um (``layer.translate`` may place them
side by side). The user's clicks (midline, section landmarks) are read in world
coordinates and converted to the section's own um through its layer's
``translate``/``scale``. The atlas slice and everything drawn in atlas space (template,
outline, cells in atlas, atlas anchors, atlas landmarks) are in atlas-slice um (x = ML
or AP, y = DV), all translated by one offset that puts them to the right of the sections.

Threads. Atlas loading and every registration run in a napari ``thread_worker``; the
engine's ``progress(i, cost)`` callback (worker thread) only puts values in a queue that
a QTimer drains in the main thread (progress bar, cost curve). Cancel sets a
``threading.Event`` the engine's ``cancel()`` reads. Workers return a result or a
``_Failed``/``_Cancelled`` marker, never raise: one notification per failure.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._notify import one_line, show_error, show_info

__all__ = ["RegistrationWidget"]

#: colours of anchors 1..4 (section and atlas anchors share them), then landmarks
ANCHOR_COLORS = np.array(
    [[1.0, 0.25, 0.25, 1], [0.2, 0.9, 0.2, 1], [0.3, 0.55, 1.0, 1], [1.0, 0.7, 0.0, 1]], dtype=float
)
BATCH_COLUMNS = ("section", "status", "Dice", "edge um", "conf.")
GREY = np.array([0.6, 0.6, 0.6, 1.0])


class _Failed:
    def __init__(self, message: str):
        self.message = message


class _Cancelled:
    pass


# ---------------------------------------------------------------------- worker bodies
def _load_atlas_body(spec: str, ontology: str):
    """Worker: open the atlas and precompute its colours and hover table."""
    from ..atlas import Atlas

    try:
        atlas = Atlas.load(spec, ontology=ontology or None)
        ids = np.unique(np.asarray(atlas.annotation))
        ids = ids[ids != 0]
        lut = atlas.ontology.lut(ids)
        cmap = {None: np.zeros(4, np.float32), 0: np.zeros(4, np.float32)}
        cmap.update({int(k): np.asarray(v, np.float32) for k, v in lut.items() if int(k)})
        feats = pd.DataFrame(
            {
                "index": np.concatenate([[0], ids]).astype(np.int64),
                "acronym": [""] + [atlas.ontology.acronym(i) for i in ids],
                "name": ["outside the brain"] + [atlas.ontology.name(i) for i in ids],
            }
        )
        return atlas, cmap, feats
    except Exception as exc:  # noqa: BLE001 - one notification
        return _Failed(one_line(exc, context=f"cannot load atlas {spec}: "))


def _register_body(adata, atlas, kwargs: dict, q: queue.Queue, stop: threading.Event, hook=None):
    """Worker: one registration; progress goes into ``q`` (read in the main thread)."""
    from ..register import RegistrationCancelled, register_section

    def progress(i, cost):
        q.put((int(i), float(cost)))
        if hook is not None:
            hook(i, cost)

    try:
        return register_section(adata, atlas, progress=progress, cancel=stop.is_set, **kwargs)
    except RegistrationCancelled:
        return _Cancelled()
    except Exception as exc:  # noqa: BLE001 - one notification
        return _Failed(one_line(exc, context="registration failed: "))


def _batch_body(jobs: list, atlas, common: dict, stop: threading.Event):
    """Worker (generator): register each (name, adata, midline) job; yields
    (name, result | _Failed | _Cancelled). Without a midline the section is fitted as a
    full section (the engine's rotation sweep)."""
    from ..register import RegistrationCancelled, register_section

    for name, adata, midline in jobs:
        kw = dict(common)
        if midline is None:
            kw["hemisphere"] = "both"
        if stop.is_set():
            yield name, _Cancelled()
            return
        try:
            res = register_section(
                adata, atlas, midline=midline, section_name=name, cancel=stop.is_set, **kw
            )
            yield name, res
        except RegistrationCancelled:
            yield name, _Cancelled()
            return
        except Exception as exc:  # noqa: BLE001
            yield name, _Failed(one_line(exc, context=f"{name}: "))


def _boundary_image(labels: np.ndarray) -> np.ndarray:
    """1 where a pixel differs from its right or lower neighbour (region outlines)."""
    b = np.zeros(labels.shape, dtype=np.uint8)
    b[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    b[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return b


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


class RegistrationWidget(QWidget):
    """Dock widget: register a section to an atlas slice, check it and write it back."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.atlas = None
        self._atlas_cmap = None
        self._atlas_feats = None
        self._atlas_spec = ("", "")
        self._workers: list = []
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        #: optional ``hook(i, cost)`` called in the worker after every progress value
        self.progress_hook = None
        self._results: dict[str, object] = {}  # section name -> RegistrationResult
        self._accepted: dict[str, bool] = {}
        self._batch_status: dict[str, str] = {}
        self._history: dict[str, list] = {}  # section name -> undo stack
        self._original: dict[str, dict] = {}  # section name -> state before anything
        self._slice = None
        self._updating = False
        self._build_ui()
        self._poll = QTimer(self)
        self._poll.setInterval(40)
        self._poll.timeout.connect(self._drain_queue)
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
        from qtpy.QtWidgets import QFrame, QScrollArea

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

        box = QGroupBox("Section and atlas")
        form = QFormLayout(box)
        self.section_combo = QComboBox()
        self.section_combo.setToolTip("A Points layer holding a section (metadata['adata'])")
        self.section_combo.currentTextChanged.connect(self._on_section_changed)
        form.addRow("Section:", self.section_combo)
        row = QHBoxLayout()
        self.atlas_edit = QLineEdit("demo")
        self.atlas_edit.setToolTip(
            "'demo', an Allen annotation .nrrd or a BrainGlobe name (e.g. allen_mouse_25um)"
        )
        self.atlas_browse = QPushButton("...")
        self.atlas_browse.setMaximumWidth(30)
        self.atlas_browse.clicked.connect(self._choose_atlas)
        row.addWidget(self.atlas_edit, 1)
        row.addWidget(self.atlas_browse)
        form.addRow("Atlas:", row)
        row = QHBoxLayout()
        self.ontology_edit = QLineEdit()
        self.ontology_edit.setPlaceholderText("ontology .csv/.json (for an .nrrd)")
        self.ontology_browse = QPushButton("...")
        self.ontology_browse.setMaximumWidth(30)
        self.ontology_browse.clicked.connect(self._choose_ontology)
        row.addWidget(self.ontology_edit, 1)
        row.addWidget(self.ontology_browse)
        form.addRow("Ontology:", row)
        self.load_atlas_button = QPushButton("Load atlas")
        self.load_atlas_button.clicked.connect(lambda: self.load_atlas())
        form.addRow(self.load_atlas_button)
        row = QHBoxLayout()
        self.plane_combo = QComboBox()
        self.plane_combo.addItems(["coronal", "sagittal"])
        self.plane_combo.currentTextChanged.connect(self._on_plane_changed)
        self.hemi_combo = QComboBox()
        self.hemi_combo.addItems(["both", "left", "right"])
        self.hemi_combo.currentTextChanged.connect(lambda _: self.show_template())
        row.addWidget(self.plane_combo)
        row.addWidget(QLabel("hemisphere:"))
        row.addWidget(self.hemi_combo)
        form.addRow("Plane:", row)
        row = QHBoxLayout()
        self.position_slider = QSlider(Qt.Horizontal)
        self.position_slider.setRange(0, 0)
        self.position_spin = QSpinBox()
        self.position_spin.setRange(0, 0)
        self.position_spin.setKeyboardTracking(False)
        self.position_spin.setMinimumWidth(90)
        self.position_slider.valueChanged.connect(self._on_slider)
        self.position_spin.valueChanged.connect(self._on_spin)
        row.addWidget(self.position_slider, 1)
        row.addWidget(self.position_spin)
        form.addRow("Position um:", row)
        self.estimate_button = QPushButton("Estimate position")
        self.estimate_button.setToolTip(
            "Scan the whole axis for the best matching slice (slow: tens of fits)"
        )
        self.estimate_button.clicked.connect(lambda: self.estimate_position())
        form.addRow(self.estimate_button)
        root.addWidget(box)

        box = QGroupBox("Midline and landmarks")
        form = QFormLayout(box)
        row = QHBoxLayout()
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
        row.addWidget(self.midline_button)
        row.addWidget(self.clear_midline_button)
        row.addWidget(self.landmarks_button)
        form.addRow(row)
        root.addWidget(box)

        box = QGroupBox("Register")
        form = QFormLayout(box)
        self.max_iter_spin = QSpinBox()
        self.max_iter_spin.setRange(5, 5000)
        self.max_iter_spin.setValue(100)
        self.max_iter_spin.setToolTip("ICP iterations at most")
        form.addRow("Iterations:", self.max_iter_spin)
        row = QHBoxLayout()
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
        row.addWidget(self.nonlinear_check)
        row.addWidget(self.refine_check)
        row.addWidget(self.quick_check)
        form.addRow(row)
        row = QHBoxLayout()
        self.register_button = QPushButton("Register")
        self.register_button.clicked.connect(lambda: self.register())
        self.refit_button = QPushButton("Re-fit")
        self.refit_button.setToolTip("Fit again with the moved anchors and the landmark pairs")
        self.refit_button.clicked.connect(lambda: self.refit())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        row.addWidget(self.register_button)
        row.addWidget(self.refit_button)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%v it")
        form.addRow(self.progress_bar)
        self.cost_plot = _CostPlot()
        form.addRow(self.cost_plot)
        root.addWidget(box)

        box = QGroupBox("Check")
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.own_labels_check = QCheckBox("colour by own labels")
        self.own_labels_check.setToolTip(
            "Colour the cells in atlas space by the section's own "
            "'region' labels instead of the atlas region they hit"
        )
        self.own_labels_check.toggled.connect(lambda _: self._draw_cells_in_atlas())
        self.blink_button = QPushButton("Blink")
        self.blink_button.setCheckable(True)
        self.blink_button.toggled.connect(self.set_blink)
        row.addWidget(self.own_labels_check)
        row.addWidget(self.blink_button)
        form.addRow(row)
        self.metrics_label = QLabel("no registration yet")
        self.metrics_label.setWordWrap(True)
        self.metrics_label.setMinimumHeight(self.metrics_label.fontMetrics().lineSpacing() * 5)
        self.metrics_label.setAlignment(Qt.AlignTop | Qt.AlignLeft)
        self.metrics_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        form.addRow(self.metrics_label)
        row = QHBoxLayout()
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Write ccf_coords, ccf_id, ccf_acronym into the section")
        self.accept_button.clicked.connect(lambda: self.accept())
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(lambda: self.undo())
        self.reset_button = QPushButton("Reset")
        self.reset_button.clicked.connect(lambda: self.reset())
        row.addWidget(self.accept_button)
        row.addWidget(self.undo_button)
        row.addWidget(self.reset_button)
        form.addRow(row)
        row = QHBoxLayout()
        self.save_button = QPushButton("Save state")
        self.save_button.clicked.connect(lambda: self.save_state())
        self.load_button = QPushButton("Load state")
        self.load_button.clicked.connect(lambda: self._choose_state())
        row.addWidget(self.save_button)
        row.addWidget(self.load_button)
        form.addRow(row)
        root.addWidget(box)

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
        self.batch_button = QPushButton("Register the rest with these settings")
        self.batch_button.clicked.connect(lambda: self.register_rest())
        lay.addWidget(self.batch_button)
        root.addWidget(box)

        self.status = QLabel("Load an atlas, pick a section, click its midline, Register.")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        root.addStretch(1)
        self._scroll, self._inner = scroll, inner
        self._fit_width()

    def _fit_width(self) -> None:
        """Never clip the contents sideways: the dock is at least as wide as they need
        (measured again once shown, with napari's style sheet applied)."""
        sb = self._scroll.verticalScrollBar().sizeHint().width()
        self._scroll.setMinimumWidth(self._inner.minimumSizeHint().width() + sb + 4)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._fit_width()

    def _set_status(self, text: str) -> None:
        self.status.setText(text)

    # ================================================================== state
    @property
    def busy(self) -> bool:
        """True while an atlas loads or a registration runs."""
        return bool(self._workers)

    @property
    def section_name(self) -> str:
        return self.section_combo.currentText()

    @property
    def result(self):
        """The current section's registration (None before a fit)."""
        return self._results.get(self.section_name)

    def section_layer(self, name: str | None = None):
        name = name or self.section_name
        for ly in self.section_layers():
            if ly.name == name:
                return ly
        return None

    def section_layers(self) -> list:
        from napari.layers import Points

        return [
            ly
            for ly in self.viewer.layers
            if isinstance(ly, Points) and isinstance(ly.metadata.get("adata"), AnnData)
        ]

    def _refresh_sections(self, *_) -> None:
        if self._updating:
            return
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
        res = self._results.get(name)
        if res is not None:
            self._show_result(res)
        else:
            self.metrics_label.setText("no registration yet")
            self.cost_plot.set_values([])

    def wait_for_workers(self, msecs: int = 60000) -> None:
        for w in list(self._workers):
            w.await_workers(msecs)

    def _start(self, worker, on_returned, on_yielded=None) -> None:
        worker.returned.connect(on_returned)
        if on_yielded is not None:
            worker.yielded.connect(on_yielded)
        worker.errored.connect(lambda exc: show_error(one_line(exc, "registration: ")))
        worker.finished.connect(lambda w=worker: self._on_finished(w))
        self._workers.append(worker)
        self._set_buttons(False)
        worker.start()

    def _on_finished(self, worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        if not self._workers:
            self._poll.stop()
            self._drain_queue()
            self._set_buttons(True)

    def _set_buttons(self, idle: bool) -> None:
        for b in (
            self.register_button,
            self.refit_button,
            self.estimate_button,
            self.load_atlas_button,
            self.batch_button,
            self.accept_button,
            self.undo_button,
            self.reset_button,
            self.load_button,
        ):
            b.setEnabled(idle)
        self.cancel_button.setEnabled(not idle)

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
        from napari.qt.threading import thread_worker

        spec = str(spec if spec is not None else self.atlas_edit.text()).strip() or "demo"
        ontology = str(ontology if ontology is not None else self.ontology_edit.text()).strip()
        self.atlas_edit.setText(spec)
        self.ontology_edit.setText(ontology)
        self._set_status(f"loading atlas {Path(spec).name} ...")
        worker = thread_worker(_load_atlas_body, start_thread=False)(spec, ontology)
        self._start(worker, lambda out, s=(spec, ontology): self._on_atlas(out, s))
        return worker

    def _on_atlas(self, out, spec) -> None:
        if isinstance(out, _Failed):
            self._set_status(out.message)
            show_error(out.message)
            return
        self.atlas, self._atlas_cmap, self._atlas_feats = out
        self._atlas_spec = spec
        self._set_range()
        self._set_status(f"atlas {self.atlas.name} ({self.atlas.resolution_um:g} um) loaded")
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
        return (
            self.hemi_combo.currentText() if self.plane_combo.currentText() == "coronal" else "both"
        )

    def _atlas_offset(self) -> tuple[float, float]:
        """World (y, x) where atlas-slice um (0, 0) is drawn: right of every section."""
        xs, ys = [], []
        for ly in self.section_layers():
            if len(ly.data):
                w = (
                    np.asarray(ly.data)[:, -2:] * np.asarray(ly.scale)[-2:]
                    + np.asarray(ly.translate)[-2:]
                )
                ys += [w[:, 0].min()]
                xs += [w[:, 1].max(), w[:, 1].min()]
        if not xs:
            return 0.0, 0.0
        gap = 0.08 * (max(xs) - min(xs) + 1.0)
        return float(min(ys)), float(max(xs) + gap)

    def show_template(self, sl=None) -> None:
        """Draw the template slice at the slider position (or ``sl``) in CCF colours, with
        its region outlines, in atlas-slice um."""
        if self.atlas is None:
            return
        from ..register.slices import atlas_slice

        if sl is None:
            try:
                sl = atlas_slice(
                    self.atlas, self.plane_combo.currentText(), self.position_um, self.hemisphere
                )
            except Exception as exc:  # noqa: BLE001
                show_error(one_line(exc))
                return
        self._slice = sl
        res = sl.resolution_um
        off = self._atlas_offset()
        lab = self._get("template")
        if lab is None:
            lab = self.viewer.add_labels(
                sl.labels,
                name="template",
                scale=(res, res),
                translate=off,
                colormap=self._atlas_cmap,
                opacity=0.4,
                features=self._atlas_feats,
                blending="translucent",
            )
            lab.editable = False
        else:
            lab.data = sl.labels
            lab.scale = (res, res)
            lab.translate = off
        out = self._get("template outline")
        b = _boundary_image(sl.labels)
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
        for name in (self._n("in atlas"), self._n("anchors (atlas)"), "landmarks (atlas)"):
            ly = self._get(name)
            if ly is not None:
                ly.translate = off
        self._set_status(f"{sl.plane} slice at {sl.position_um:.0f} um ({sl.hemisphere})")

    # ================================================================== layers
    def _get(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401

    def _n(self, what: str, section: str | None = None) -> str:
        return f"{section or self.section_name} {what}"

    def _replace(self, name: str, data, **kwargs):
        """Points layer ``name`` with ``data`` and ``kwargs``: updated in place when it
        exists (removing a layer makes napari collect garbage: half a second), else
        added."""
        from napari.layers import Points

        old = self._get(name)
        if not isinstance(old, Points):
            return self.viewer.add_points(data, name=name, **kwargs)
        text = kwargs.pop("text", None)
        old.selected_data = set()
        old.data = np.asarray(data, float)
        for key in ("translate", "scale"):
            if key in kwargs:
                setattr(old, key, kwargs.pop(key))
        for key in ("size", "border_width", "blending", "border_color", "face_color"):
            if key in kwargs:
                setattr(old, key, kwargs.pop(key))
        if text is not None:
            old.text = text
        old.refresh()
        return old

    @staticmethod
    def _world(layer) -> np.ndarray:
        d = np.asarray(layer.data, dtype=float).reshape(-1, layer.ndim)[:, -2:]
        return d * np.asarray(layer.scale)[-2:] + np.asarray(layer.translate)[-2:]

    def _to_section_xy(self, layer, section_layer=None) -> np.ndarray:
        """Points of ``layer`` as section (x, y) um (through world coordinates)."""
        sec = section_layer or self.section_layer()
        w = self._world(layer)
        d = (w - np.asarray(sec.translate)[-2:]) / np.asarray(sec.scale)[-2:]
        return d[:, ::-1]

    def _to_atlas_xy(self, layer) -> np.ndarray:
        w = self._world(layer)
        return (w - np.asarray(self._atlas_offset()))[:, ::-1]

    def _marker_size(self, section_layer=None) -> float:
        sec = section_layer or self.section_layer()
        if sec is None or not len(sec.data):
            return 100.0
        ext = np.ptp(np.asarray(sec.data)[:, -2:], axis=0).max()
        return float(max(ext * 0.045, 1.0))

    def midline_layer(self, create: bool = False, activate: bool = False, section=None):
        """The '<section> midline' Points layer (world coordinates), created on demand
        with its '<section> midline line' path drawn from its points."""
        name = self._n("midline", section)
        layer = self._get(name)
        if layer is None and create:
            if self.section_layer(section) is None:
                show_error("pick a section first")
                return None
            layer = self.viewer.add_points(
                np.zeros((0, 2)),
                name=name,
                face_color="yellow",
                border_color="black",
                size=self._marker_size(self.section_layer(section)),
            )
            layer.events.data.connect(
                lambda e=None, s=section or self.section_name: self._draw_midline_line(s)
            )
        if layer is not None and activate:
            self.viewer.layers.selection.active = layer
            layer.mode = "add"
            self._set_status("click a dorsal, then a ventral point on the midline")
        return layer

    def _draw_midline_line(self, section: str) -> None:
        layer = self._get(self._n("midline", section))
        name = self._n("midline line", section)
        line = self._get(name)
        pts = self._world(layer) if layer is not None else np.zeros((0, 2))
        if len(pts) < 2:
            if line is not None:
                line.data = []
            return
        path = pts[-2:]
        width = self._marker_size(self.section_layer(section)) * 0.3
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

    def clear_midline(self) -> None:
        layer = self.midline_layer()
        if layer is not None:
            layer.data = np.zeros((0, 2))

    def midline_xy(self, section: str | None = None):
        """The clicked midline as (2, 2) section (x, y) um (last two clicks), None when no
        point was clicked; raises BrainAtlasInputError for a single point."""
        from .._errors import BrainAtlasInputError

        layer = self._get(self._n("midline", section))
        if layer is None or len(layer.data) == 0:
            return None
        if len(layer.data) < 2:
            raise BrainAtlasInputError(
                f"the midline needs two points (dorsal, then ventral); {len(layer.data)} clicked"
            )
        return self._to_section_xy(layer, self.section_layer(section))[-2:]

    def landmark_layers(self, create: bool = False):
        """('landmarks (section)', 'landmarks (atlas)') Points layers, matched by order."""
        s, a = self._get("landmarks (section)"), self._get("landmarks (atlas)")
        if create:
            size = self._marker_size()
            if s is None:
                s = self.viewer.add_points(
                    np.zeros((0, 2)),
                    name="landmarks (section)",
                    face_color="magenta",
                    size=size,
                    symbol="cross",
                )
            if a is None:
                a = self.viewer.add_points(
                    np.zeros((0, 2)),
                    name="landmarks (atlas)",
                    face_color="magenta",
                    size=size,
                    symbol="cross",
                    translate=self._atlas_offset(),
                )
            self.viewer.layers.selection.active = s
            s.mode = "add"
            self._set_status(
                "click landmarks on the section, then the same ones, in the same "
                "order, on the template; Re-fit"
            )
        return s, a

    # ================================================================== register
    def _common_kwargs(self) -> dict:
        return {
            "plane": self.plane_combo.currentText(),
            "hemisphere": self.hemisphere,
            "max_iter": int(self.max_iter_spin.value()),
            "nonlinear": self.nonlinear_check.isChecked(),
            "refine_position": self.refine_check.isChecked(),
            "plane_search": (
                "quick"
                if self.refine_check.isChecked() and self.quick_check.isChecked()
                else "joint"
            ),
        }

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
        except Exception as exc:  # noqa: BLE001
            show_error(one_line(exc))
            self._set_status(one_line(exc))
            return None
        kw = self._common_kwargs()
        kw.update(
            position_um=self.position_um if position_um is None else position_um,
            midline=midline,
            landmarks=landmarks,
            section_name=sec.name,
        )
        return self._run(sec, kw, "registering")

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

    def landmark_pairs(self) -> np.ndarray:
        """(k, 4) rows x_s, y_s, x_atlas, y_atlas: moved anchors, then user landmarks."""
        rows = []
        res = self.result
        ls, la = self._get(self._n("anchors (section)")), self._get(self._n("anchors (atlas)"))
        if (
            res is not None
            and ls is not None
            and la is not None
            and len(ls.data) == len(la.data) == len(res.anchors_section)
        ):
            s = self._to_section_xy(ls)
            a = self._to_atlas_xy(la)
            s0 = np.asarray(res.anchors_section, float)
            a0 = np.asarray(res.anchors_atlas, float)
            tol = 0.5 * (self.atlas.resolution_um if self.atlas is not None else 1.0)
            moved = (np.linalg.norm(s - s0, axis=1) > tol) | (np.linalg.norm(a - a0, axis=1) > tol)
            rows += [np.r_[s[i], a[i]] for i in np.flatnonzero(moved)]
        s_l, a_l = self._get("landmarks (section)"), self._get("landmarks (atlas)")
        if s_l is not None and a_l is not None:
            k = min(len(s_l.data), len(a_l.data))
            if k:
                s = self._to_section_xy(s_l)[:k]
                a = self._to_atlas_xy(a_l)[:k]
                rows += [np.r_[s[i], a[i]] for i in range(k)]
        return np.asarray(rows, float).reshape(-1, 4)

    def _run(self, sec, kwargs: dict, what: str):
        from napari.qt.threading import thread_worker

        self._stop.clear()
        self._queue = queue.Queue()
        self.cost_plot.set_values([])
        self.progress_bar.setRange(0, max(int(kwargs.get("max_iter", 100)), 1))
        self.progress_bar.setValue(0)
        adata = sec.metadata["adata"]
        worker = thread_worker(_register_body, start_thread=False)(
            adata, self.atlas, kwargs, self._queue, self._stop, self.progress_hook
        )
        name = sec.name
        self._set_status(f"{what} {name} ...")
        self._start(worker, lambda out, n=name, kw=kwargs: self._on_registered(out, n, kw))
        self._poll.start()
        return worker

    def cancel(self) -> None:
        """Ask the running registration(s) to stop (at the next iteration)."""
        self._stop.set()
        self._set_status("cancelling ...")

    def _drain_queue(self) -> None:
        vals = []
        while True:
            try:
                vals.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not vals:
            return
        i = vals[-1][0]
        if i > self.progress_bar.maximum():
            self.progress_bar.setMaximum(i)
        self.progress_bar.setValue(i)
        self.cost_plot.append([c for _, c in vals])

    def _on_registered(self, out, name: str, kwargs: dict) -> None:
        self._drain_queue()  # the last progress values first, then the result
        if isinstance(out, _Cancelled):
            self._set_status("registration cancelled; the previous state is kept")
            show_info("registration cancelled")
            return
        if isinstance(out, _Failed):
            self._set_status(out.message)
            show_error(out.message)
            return
        self._push(name)
        self._results[name] = out
        self._accepted[name] = False
        self._batch_status[name] = "fitted"
        if name == self.section_name:
            self._show_result(out)
        self._sync_batch_table()
        self._set_status(
            f"{name}: registered at {out.position_um:.0f} um, confidence {out.confidence:.2f}"
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
        self._draw_anchors(res)
        self._draw_cells_in_atlas()
        self.cost_plot.set_values(res.cost_history)
        self.progress_bar.setMaximum(max(res.iterations, self.progress_bar.maximum(), 1))
        self.progress_bar.setValue(res.iterations)
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

    def _draw_anchors(self, res) -> None:
        sec = self.section_layer()
        if sec is None or not len(res.anchors_section):
            return
        size = self._marker_size(sec)
        n = len(res.anchors_section)
        colors = ANCHOR_COLORS[np.arange(n) % len(ANCHOR_COLORS)]
        text = {
            "string": [str(i + 1) for i in range(n)],
            "color": "white",
            "size": 16,
            "anchor": "upper_left",
            "translation": [-size * 0.4, size * 0.4],
        }
        s = np.asarray(res.anchors_section, float)[:, ::-1]
        a = np.asarray(res.anchors_atlas, float)[:, ::-1]
        self._replace(
            self._n("anchors (section)"),
            s,
            translate=tuple(sec.translate[-2:]),
            scale=tuple(sec.scale[-2:]),
            face_color=colors,
            border_color="white",
            border_width=0.15,
            size=size,
            text=dict(text),
        )
        self._replace(
            self._n("anchors (atlas)"),
            a,
            translate=self._atlas_offset(),
            face_color=colors,
            border_color="white",
            border_width=0.15,
            size=size,
            text=dict(text),
        )

    def cell_colors(self, res, adata) -> np.ndarray:
        """RGBA per cell: the atlas colour of the region it lands in, or (toggle) the
        colour of its own 'region' label."""
        xy = np.asarray(adata.obsm["spatial"], float)[:, :2]
        if self.own_labels_check.isChecked():
            for key in ("region", "ccf_acronym"):
                if key in adata.obs.columns:
                    from ..colors import categorical_colors

                    vals = adata.obs[key].astype(str).to_numpy()
                    ont = self.atlas.ontology
                    rgba = np.tile(GREY, (len(vals), 1))
                    if all(v in ont._by_acronym for v in np.unique(vals)):
                        for v in np.unique(vals):
                            rgba[vals == v, :3] = np.array(ont.rgb(ont.id_of(v))) / 255.0
                    else:
                        rgba, _ = categorical_colors(vals)
                    return rgba
        ids = res.slice_of(self.atlas).labels_at(res.transform(xy))
        uniq, inv = np.unique(ids, return_inverse=True)
        lut = np.array(
            [GREY if u == 0 else np.r_[np.array(self.atlas.ontology.rgb(u)) / 255, 1] for u in uniq]
        )
        return lut[inv.ravel()]

    def _draw_cells_in_atlas(self) -> None:
        res, sec = self.result, self.section_layer()
        if res is None or sec is None or self.atlas is None:
            return
        adata = sec.metadata["adata"]
        xy = np.asarray(adata.obsm["spatial"], float)[:, :2]
        mapped = res.transform(xy)[:, ::-1]
        rgba = self.cell_colors(res, adata)
        # a little smaller than on the section: the template shows between the cells
        size = 0.7 * float(np.mean(sec.size)) if np.size(sec.size) else 10.0
        self._replace(
            self._n("in atlas"),
            mapped,
            translate=self._atlas_offset(),
            face_color=rgba,
            border_color=rgba,
            border_width=0.0,
            size=size,
            blending="translucent_no_depth",
        )
        # keep the anchors above the cells
        for nm in (self._n("anchors (atlas)"), self._n("anchors (section)")):
            ly = self._get(nm)
            if ly is not None:
                self.viewer.layers.move(self.viewer.layers.index(ly), len(self.viewer.layers))

    def set_blink(self, on: bool) -> None:
        """Blink the cells in atlas space (QTimer), to compare them with the template."""
        ly = self._get(self._n("in atlas"))
        if on:
            self._blink_timer.start()
        else:
            self._blink_timer.stop()
            if ly is not None:
                ly.visible = True
        if self.blink_button.isChecked() != on:
            self.blink_button.setChecked(on)

    def _blink_tick(self) -> None:
        ly = self._get(self._n("in atlas"))
        if ly is not None:
            ly.visible = not ly.visible

    # ================================================================== accept / undo
    def _snapshot(self, name: str) -> dict:
        sec = self.section_layer(name)
        return {
            "adata": sec.metadata["adata"] if sec is not None else None,
            "features": sec.features.copy() if sec is not None else None,
            "result": self._results.get(name),
            "accepted": self._accepted.get(name, False),
            "status": self._batch_status.get(name, ""),
        }

    def _push(self, name: str) -> None:
        snap = self._snapshot(name)
        self._original.setdefault(name, snap)
        self._history.setdefault(name, []).append(snap)

    def _restore(self, name: str, snap: dict) -> None:
        sec = self.section_layer(name)
        if sec is not None and snap["adata"] is not None:
            sec.metadata["adata"] = snap["adata"]
            sec.features = snap["features"]
        if snap["result"] is None:
            self._results.pop(name, None)
            for what in ("in atlas", "anchors (section)", "anchors (atlas)"):
                ly = self._get(self._n(what, name))
                if ly is not None:
                    self.viewer.layers.remove(ly)
            self.metrics_label.setText("no registration yet")
            self.cost_plot.set_values([])
        else:
            self._results[name] = snap["result"]
            if name == self.section_name:
                self._show_result(snap["result"])
        self._accepted[name] = snap["accepted"]
        self._batch_status[name] = snap["status"]
        self._sync_batch_table()

    def accept(self):
        """Write the current registration into the section (obsm['ccf_coords'],
        obs['ccf_id'], obs['ccf_acronym'], uns['ccf_registration']) and its features."""
        from ..register import apply_registration

        res, sec = self.result, self.section_layer()
        if res is None or sec is None:
            show_error("nothing to accept: register the section first")
            return None
        try:
            out = apply_registration(sec.metadata["adata"], res, self.atlas)
        except Exception as exc:  # noqa: BLE001
            show_error(one_line(exc, "accept failed: "))
            return None
        self._push(sec.name)
        sec.metadata["adata"] = out
        feats = sec.features.copy()
        for col in ("ccf_id", "ccf_acronym"):
            feats[col] = out.obs[col].to_numpy()
        sec.features = feats
        self._accepted[sec.name] = True
        self._batch_status[sec.name] = "accepted"
        self._sync_batch_table()
        self._set_status(f"{sec.name}: registration written (ccf_coords, ccf_id, ccf_acronym)")
        return out

    def undo(self) -> bool:
        """Back to the state before the last fit / accept / load of this section."""
        name = self.section_name
        stack = self._history.get(name) or []
        if not stack:
            self._set_status("nothing to undo")
            return False
        self._restore(name, stack.pop())
        self._set_status(f"{name}: undone")
        return True

    def reset(self) -> None:
        """Back to the section as it was before any registration."""
        name = self.section_name
        snap = self._original.pop(name, None)
        self._history.pop(name, None)
        if snap is not None:
            self._restore(name, snap)
        self._set_status(f"{name}: reset")

    # ================================================================== save / load
    def state_path(self, name: str | None = None) -> Path:
        from ..register.state import default_state_path

        sec = self.section_layer(name)
        return default_state_path(
            sec.metadata["adata"] if sec is not None else None, name or self.section_name
        )

    def save_state(self, path=None):
        """Write the current registration as JSON beside the data (atomic)."""
        from ..register.state import save_state

        res = self.result
        if res is None:
            show_error("nothing to save: register the section first")
            return None
        path = Path(path) if path else self.state_path()
        try:
            mid = self.midline_xy()
        except Exception:  # noqa: BLE001 - a half-clicked midline is not saved
            mid = None
        try:
            out = save_state(
                path,
                res,
                atlas_spec=self._atlas_spec[0],
                ontology=self._atlas_spec[1],
                midline=mid,
                accepted=self._accepted.get(self.section_name, False),
            )
        except Exception as exc:  # noqa: BLE001
            show_error(one_line(exc, "cannot save: "))
            return None
        self._set_status(f"saved {out}")
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
        from ..register.state import load_state

        try:
            doc = load_state(path)
        except Exception as exc:  # noqa: BLE001
            show_error(one_line(exc))
            return None
        res = doc["result"]
        if self.atlas is None or self.atlas.name != res.atlas:
            show_error(f"this registration was made on atlas {res.atlas!r}; load that atlas first")
            return None
        name = self.section_name
        self._push(name)
        self._results[name] = res
        self._accepted[name] = False
        self._batch_status[name] = "loaded"
        self._show_result(res)
        self._sync_batch_table()
        self._set_status(f"{name}: registration loaded from {Path(path).name}")
        return res

    # ================================================================== batch
    def _sync_batch_table(self) -> None:
        layers = self.section_layers()
        self.batch_table.setRowCount(len(layers))
        for r, ly in enumerate(layers):
            res = self._results.get(ly.name)
            m = res.metrics if res is not None else {}
            status = self._batch_status.get(ly.name) or ("fitted" if res is not None else "-")
            vals = (
                ly.name,
                status,
                f"{m['dice']:.3f}" if "dice" in m else "",
                f"{m['boundary_median_um']:.1f}" if "boundary_median_um" in m else "",
                f"{res.confidence:.2f}" if res is not None else "",
            )
            for c, v in enumerate(vals):
                item = QTableWidgetItem(v)
                item.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
                if c == 1 and status.startswith("failed"):
                    item.setToolTip(status)
                self.batch_table.setItem(r, c, item)

    def batch_rows(self) -> list[tuple[str, ...]]:
        t = self.batch_table
        return [
            tuple(t.item(r, c).text() if t.item(r, c) else "" for c in range(t.columnCount()))
            for r in range(t.rowCount())
        ]

    def register_rest(self):
        """Register every section without a result, with the current settings (plane,
        hemisphere, position, iterations, refine position, quick search, non-linear); each section's own
        midline layer is used when it has two points, else the midline-free fallback (as
        a full section)."""
        from napari.qt.threading import thread_worker

        if self._check_ready() is None:
            return None
        jobs = []
        for ly in self.section_layers():
            if ly.name in self._results:
                continue
            try:
                mid = self.midline_xy(ly.name)
            except Exception:  # noqa: BLE001 - half-clicked: fall back
                mid = None
            jobs.append((ly.name, ly.metadata["adata"], mid))
        if not jobs:
            self._set_status("every section is registered already")
            return None
        common = self._common_kwargs()
        common["position_um"] = self.position_um
        for name, _, _ in jobs:
            self._batch_status[name] = "queued"
        self._sync_batch_table()
        self._stop.clear()
        worker = thread_worker(_batch_body, start_thread=False)(
            jobs, self.atlas, common, self._stop
        )
        self._set_status(f"registering {len(jobs)} section(s) ...")
        self._start(
            worker,
            lambda _=None: self._set_status("batch registration finished"),
            on_yielded=self._on_batch_item,
        )
        return worker

    def _on_batch_item(self, item) -> None:
        name, out = item
        if isinstance(out, _Cancelled):
            self._batch_status[name] = "cancelled"
            show_info("registration cancelled")
        elif isinstance(out, _Failed):
            self._batch_status[name] = f"failed: {out.message}"
        else:
            self._push(name)
            self._results[name] = out
            self._accepted[name] = False
            self._batch_status[name] = "fitted"
            if name == self.section_name:
                self._show_result(out)
        self._sync_batch_table()

"""The Domains dock widget: connectivity-aware brain domains (SpaCon) of registered sections.

Choose the registered sections (Points layers whose ``metadata['adata']`` carries
``obsm['ccf_coords']`` and ``obs['ccf_id']`` / ``obs['ccf_acronym']``), a connectome
(an Oh et al. 2014 workbook or the built-in demo one) and train: the graph attention
autoencoder trains in a napari ``thread_worker`` (progress bar, Cancel). The alpha slider
then re-mixes the two stored embeddings and re-clusters (Leiden, in a worker) without
retraining, and every trained section is recoloured by ``obs['spacon_domain']``.
"""

from __future__ import annotations

import threading

import numpy as np
from anndata import AnnData
from qtpy.QtCore import QObject, QSize, Qt, Signal
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..colors import categorical_colors
from ._notify import one_line, show_error, show_info

__all__ = ["DomainsWidget", "is_registered_section"]

DOMAIN_KEY = "spacon_domain"


def is_registered_section(layer) -> bool:
    """A Points layer holding an AnnData with CCF coordinates and structure labels."""
    from napari.layers import Points

    if not isinstance(layer, Points):
        return False
    ad = layer.metadata.get("adata")
    return (
        isinstance(ad, AnnData)
        and "ccf_coords" in ad.obsm
        and ("ccf_id" in ad.obs.columns or "ccf_acronym" in ad.obs.columns)
    )


class _Bridge(QObject):
    """Carries training progress from the worker thread to the main thread."""

    progressed = Signal(int, int, float)


class _Failed:
    def __init__(self, message: str, cancelled: bool = False):
        self.message = message
        self.cancelled = cancelled


def _train_job(adatas, connectome_spec, ontology_path, p_max, epochs, seed, bridge, stop):
    """Worker body (no napari calls): prepare, train; failures come back as values."""
    from ..atlas import Ontology
    from ..atlas.demo_atlas import demo_ontology
    from ..domains import TrainingCancelled, load_connectome, prepare, train

    try:
        con = load_connectome(connectome_spec, p_max=p_max)
        onto = Ontology.from_file(ontology_path) if ontology_path else demo_ontology()
        data = prepare(adatas, con, onto, seed=seed)
        model = train(
            data,
            epochs=epochs,
            seed=seed,
            num_threads=1,
            progress=lambda e, n, loss: bridge.progressed.emit(e, n, float(loss)),
            cancel=stop.is_set,
        )
        return data, model
    except TrainingCancelled:
        return _Failed("training cancelled", cancelled=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one notification
        return _Failed(one_line(exc, context="training failed: "))


def _domains_job(model, alpha, resolution, seed):
    try:
        return alpha, model.domains(alpha, resolution=resolution, seed=seed)
    except Exception as exc:  # noqa: BLE001
        return _Failed(one_line(exc, context="clustering failed: "))


class DomainsWidget(QWidget):
    """Dock widget: train SpaCon on registered sections, colour them by domain."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._train_worker = None
        self._domain_worker = None
        self._pending_alpha: float | None = None
        self._stop = threading.Event()
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress)
        self.data = None
        self.model = None
        self.trained_layers: list = []
        self.labels: np.ndarray | None = None
        self.alpha_shown: float | None = None
        self._build_ui()
        self.setMinimumWidth(320)
        self.viewer.layers.events.inserted.connect(self._refresh_sections)
        self.viewer.layers.events.removed.connect(self._refresh_sections)
        self._refresh_sections()

    def sizeHint(self) -> QSize:
        return QSize(360, 560)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(4, 4, 4, 4)
        box = QGroupBox("Registered sections")
        lay = QVBoxLayout(box)
        self.section_list = QListWidget()
        self.section_list.setMinimumHeight(80)
        self.section_list.setToolTip(
            "Sections with CCF coordinates (run Register first); ticked ones are trained together"
        )
        lay.addWidget(self.section_list)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip(
            "List the sections registered since (the list also "
            "refreshes when layers are added or removed)"
        )
        self.refresh_button.clicked.connect(self._refresh_sections)
        lay.addWidget(self.refresh_button)
        root.addWidget(box)

        box = QGroupBox("Connectome")
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.connectome_edit = QLineEdit("demo")
        self.connectome_edit.setToolTip(
            "Oh et al. 2014 workbook (.xlsx with W_ipsi, W_contra) or 'demo'"
        )
        self.connectome_button = QPushButton("...")
        self.connectome_button.clicked.connect(self._choose_connectome)
        row.addWidget(self.connectome_edit, 1)
        row.addWidget(self.connectome_button)
        form.addRow("Matrix:", row)
        row = QHBoxLayout()
        self.ontology_edit = QLineEdit()
        self.ontology_edit.setPlaceholderText("demo ontology")
        self.ontology_edit.setToolTip("CCF structure tree .csv / .json (empty: the demo atlas)")
        self.ontology_button = QPushButton("...")
        self.ontology_button.clicked.connect(self._choose_ontology)
        row.addWidget(self.ontology_edit, 1)
        row.addWidget(self.ontology_button)
        form.addRow("Ontology:", row)
        self.p_max = QDoubleSpinBox()
        self.p_max.setRange(0.0, 1.0)
        self.p_max.setDecimals(3)
        self.p_max.setSingleStep(0.01)
        self.p_max.setSpecialValueText("off")
        self.p_max.setValue(0.0)
        self.p_max.setToolTip("Zero the weights whose p-value is at least this (off: keep all)")
        form.addRow("p-value mask:", self.p_max)
        root.addWidget(box)

        box = QGroupBox("Train")
        form = QFormLayout(box)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10000)
        self.epochs.setValue(30)
        form.addRow("Epochs:", self.epochs)
        row = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(lambda: self.train())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.train_button)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        form.addRow(self.progress)
        root.addWidget(box)

        box = QGroupBox("Domains")
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.alpha_slider = QSlider(Qt.Horizontal)
        self.alpha_slider.setRange(0, 100)
        self.alpha_slider.setValue(50)
        self.alpha_slider.setToolTip("0: spatial embedding only ... 1: connectivity only")
        self.alpha_slider.valueChanged.connect(self._on_alpha_changed)
        self.alpha_slider.sliderReleased.connect(self._on_alpha_released)
        self.alpha_label = QLabel("0.50")
        row.addWidget(self.alpha_slider, 1)
        row.addWidget(self.alpha_label)
        form.addRow("alpha:", row)
        self.resolution = QDoubleSpinBox()
        self.resolution.setRange(0.01, 20.0)
        self.resolution.setSingleStep(0.1)
        self.resolution.setValue(0.5)
        self.resolution.setKeyboardTracking(False)
        self.resolution.valueChanged.connect(lambda _: self.recluster())
        form.addRow("Leiden resolution:", self.resolution)
        root.addWidget(box)

        self.status = QLabel("Register sections, then train.")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        root.addStretch(1)

    def _set_status(self, text: str) -> None:
        self.status.setText(text)

    def _choose_connectome(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Connectome workbook", "", "Excel (*.xlsx);;All files (*)"
        )
        if path:
            self.connectome_edit.setText(path)

    def _choose_ontology(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Ontology", "", "Ontology (*.csv *.json);;All files (*)"
        )
        if path:
            self.ontology_edit.setText(path)

    # ------------------------------------------------------------------ sections
    def _refresh_sections(self, *_) -> None:
        checked = {
            self.section_list.item(i).text(): self.section_list.item(i).checkState()
            for i in range(self.section_list.count())
        }
        self.section_list.clear()
        for layer in self.viewer.layers:
            if is_registered_section(layer):
                item = QListWidgetItem(layer.name)
                item.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled)
                item.setCheckState(checked.get(layer.name, Qt.Checked))
                self.section_list.addItem(item)
        self.trained_layers = [ly for ly in self.trained_layers if ly in self.viewer.layers]

    def registered_layers(self) -> list:
        """Registered section layers, in list order."""
        return [ly for ly in self.viewer.layers if is_registered_section(ly)]

    def chosen_layers(self) -> list:
        ticked = {
            self.section_list.item(i).text()
            for i in range(self.section_list.count())
            if self.section_list.item(i).checkState() == Qt.Checked
        }
        return [ly for ly in self.registered_layers() if ly.name in ticked]

    # ------------------------------------------------------------------ training
    @property
    def busy(self) -> bool:
        return self._train_worker is not None or self._domain_worker is not None

    @property
    def alpha(self) -> float:
        return self.alpha_slider.value() / 100.0

    def train(self):
        """Train on the ticked sections in a worker; returns the worker (or None)."""
        from napari.qt.threading import thread_worker

        if self._train_worker is not None:
            return None
        self._refresh_sections()  # sections registered in place since the last listing
        layers = self.chosen_layers()
        if not layers:
            msg = "no registered sections: register sections to the atlas first"
            self._set_status(msg)
            show_error(msg)
            return None
        spec = self.connectome_edit.text().strip() or "demo"
        onto = self.ontology_edit.text().strip() or None
        p_max = self.p_max.value() or None
        adatas = [ly.metadata["adata"] for ly in layers]
        self._stop.clear()
        self._layers_training = layers
        self.progress.setValue(0)
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        n = sum(a.n_obs for a in adatas)
        self._set_status(f"training on {len(layers)} section(s), {n:,} cells ...")
        worker = thread_worker(_train_job, start_thread=False)(
            adatas, spec, onto, p_max, int(self.epochs.value()), 0, self._bridge, self._stop
        )
        worker.returned.connect(self._on_trained)
        worker.finished.connect(self._on_train_finished)
        self._train_worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop training after the current mini-batch."""
        self._stop.set()
        self._set_status("cancelling ...")

    def _on_progress(self, epoch: int, n_epochs: int, loss: float) -> None:
        self.progress.setValue(round(100 * epoch / max(n_epochs, 1)))
        self._set_status(f"epoch {epoch}/{n_epochs}, loss {loss:.4f}")

    def _on_train_finished(self) -> None:
        self._train_worker = None
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _on_trained(self, result) -> None:
        if isinstance(result, _Failed):
            self._set_status(result.message)
            if result.cancelled:
                show_info(result.message)
            else:
                show_error(result.message)
            return
        self.data, self.model = result
        self.trained_layers = list(self._layers_training)
        self.progress.setValue(100)
        n_conn = int((self.data.region >= 0).sum())
        self._set_status(
            f"trained: {self.data.n_cells:,} cells, {n_conn:,} with a "
            "connectivity row; clustering ..."
        )
        self.recluster()

    # ------------------------------------------------------------------ alpha
    def _on_alpha_changed(self, value: int) -> None:
        self.alpha_label.setText(f"{value / 100:.2f}")
        if not self.alpha_slider.isSliderDown():
            self.recluster()

    def _on_alpha_released(self) -> None:
        self.recluster()

    def set_alpha(self, alpha: float) -> None:
        """Move the slider (re-clusters when a model is trained)."""
        self.alpha_slider.setValue(round(float(alpha) * 100))

    def recluster(self, alpha: float | None = None):
        """Re-mix the stored embeddings at ``alpha`` (default: the slider) and re-cluster
        in a worker; the latest request wins while one is running."""
        from napari.qt.threading import thread_worker

        if self.model is None:
            return None
        alpha = self.alpha if alpha is None else float(alpha)
        if self._domain_worker is not None:
            self._pending_alpha = alpha
            return None
        self._set_status(f"clustering at alpha {alpha:.2f} ...")
        worker = thread_worker(_domains_job, start_thread=False)(
            self.model, alpha, float(self.resolution.value()), 0
        )
        worker.returned.connect(self._on_domains)
        worker.finished.connect(self._on_domains_finished)
        self._domain_worker = worker
        worker.start()
        return worker

    def _on_domains_finished(self) -> None:
        self._domain_worker = None
        if self._pending_alpha is not None:
            a, self._pending_alpha = self._pending_alpha, None
            self.recluster(a)

    def _on_domains(self, result) -> None:
        if isinstance(result, _Failed):
            self._set_status(result.message)
            show_error(result.message)
            return
        alpha, labels = result
        self.labels = labels
        self.alpha_shown = alpha
        self._apply(alpha, labels)

    def _apply(self, alpha: float, labels: np.ndarray) -> None:
        """Write the domains into the trained sections and recolour their layers."""
        from ..domains import write_results

        layers = [ly for ly in self.trained_layers if ly in self.viewer.layers]
        if len(layers) != len(self.trained_layers):
            self._set_status("a trained section was removed: train again")
            return
        adatas = [ly.metadata["adata"] for ly in layers]
        try:
            write_results(adatas, self.data, self.model, alpha, labels)
        except Exception as exc:  # noqa: BLE001
            msg = one_line(exc)
            self._set_status(msg)
            show_error(msg)
            return
        cats = [str(c) for c in range(int(labels.max()) + 1)]
        for ly, ad in zip(layers, adatas):
            vals = ad.obs[DOMAIN_KEY].astype(str).to_numpy()
            rgba, _ = categorical_colors(vals, categories=cats)
            feats = ly.features
            if len(feats) == len(vals):
                feats = feats.copy()
                feats[DOMAIN_KEY] = ad.obs[DOMAIN_KEY].to_numpy()
                ly.features = feats
            ly.border_color = rgba
            ly.face_color = rgba
        self._set_status(f"alpha {alpha:.2f}: {len(cats)} domains over {len(layers)} section(s)")

    def wait_for_workers(self, msecs: int = 120000) -> None:
        for w in (self._train_worker, self._domain_worker):
            if w is not None:
                w.await_workers(msecs)

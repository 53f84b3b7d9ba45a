"""The Domains dock widget: connectivity-aware brain domains (SpaCon) of registered sections.

Choose the registered sections (Points layers whose ``metadata['adata']`` carries
``obsm['ccf_coords']`` and ``obs['ccf_id']`` / ``obs['ccf_acronym']``), a connectome
(an Oh et al. 2014 workbook or the built-in demo one) and train: the graph attention
autoencoder trains as a job of the dock base (:func:`._jobs.train_domains`: progress per
epoch, Cancel). The alpha slider then re-mixes the two stored embeddings and re-clusters
(:func:`._jobs.cluster_domains`, also in a worker) without retraining, and every trained
section is recoloured by ``obs['spacon_domain']``.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
)

from ..colors import categorical_colors
from . import _jobs
from ._base import DockBase, snapshot
from ._common import SectionChecklist, is_registered_section, paint, set_feature_columns

__all__ = ["DomainsWidget", "is_registered_section"]

DOMAIN_KEY = "spacon_domain"


class DomainsWidget(DockBase):
    """Dock widget: train SpaCon on registered sections, colour them by domain."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self._clustering = False
        self._pending_alpha: float | None = None
        self._layers_training: list = []
        self.prepared = None
        self.data = None
        self.model = None
        self.trained_layers: list = []
        self.labels: np.ndarray | None = None
        self.alpha_shown: float | None = None
        self._build_ui()
        self.setMinimumWidth(320)
        self.viewer.layers.events.removed.connect(self._forget_removed)

    def sizeHint(self) -> QSize:
        return QSize(360, 560)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(4, 4, 4, 4)
        box = QGroupBox("Registered sections")
        lay = QVBoxLayout(box)
        self.section_list = SectionChecklist(self.viewer, keep=is_registered_section, min_height=80)
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
        self.train_button = self.action_button("Train", self.train)
        form.addRow(self.run_row(self.train_button))
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

        self.set_status("Register sections, then train.")
        root.addWidget(self.status)
        root.addStretch(1)

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
        """List the registered sections again (also those registered in place since)."""
        self.section_list.refresh()
        self._forget_removed()

    def _forget_removed(self, *_) -> None:
        self.trained_layers = [ly for ly in self.trained_layers if ly in self.viewer.layers]

    def registered_layers(self) -> list:
        """Registered section layers, in list order."""
        return self.section_list.layers()

    def chosen_layers(self) -> list:
        return self.section_list.ticked_layers()

    # ------------------------------------------------------------------ training
    @property
    def alpha(self) -> float:
        return self.alpha_slider.value() / 100.0

    def train(self):
        """Train on the ticked sections in a worker (then cluster at the slider's
        alpha); returns the worker (or None)."""
        if self.busy:
            return None
        self._refresh_sections()  # sections registered in place since the last listing
        layers = self.chosen_layers()
        if not layers:
            self.fail("no registered sections: register sections to the atlas first")
            return None
        adatas = [snapshot(ly.metadata["adata"]) for ly in layers]
        self._layers_training = layers
        n = sum(a.n_obs for a in adatas)
        epochs = int(self.epochs.value())
        self.set_status(f"training on {len(layers)} section(s), {n:,} cells ...")
        return self.start_job(
            _jobs.train_domains,
            adatas,
            self.connectome_edit.text().strip() or "demo",
            self.ontology_edit.text().strip() or None,
            p_max=self.p_max.value() or None,
            epochs=epochs,
            alpha=self.alpha,
            resolution=float(self.resolution.value()),
            on_done=self._on_trained,
            on_progress=self._on_progress,
            what="training",
            error_prefix="training failed: ",
            total=epochs,
            unit="epochs",
        )

    def _on_progress(self, epoch: int, n_epochs, info: dict) -> None:
        loss = info.get("loss")
        text = f", loss {loss:.4f}" if isinstance(loss, float) else ""
        self.set_status(f"epoch {epoch}/{n_epochs}{text}")

    def _on_trained(self, result) -> None:
        self.prepared, found = result
        self.data, self.model = self.prepared.data, found.model
        self.trained_layers = [ly for ly in self._layers_training if ly in self.viewer.layers]
        self._on_domains(found)
        if self.alpha_shown != self.alpha:  # the slider moved while it trained
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
        if self.model is None:
            return None
        alpha = self.alpha if alpha is None else float(alpha)
        if self._clustering:
            self._pending_alpha = alpha
            return None
        self._clustering = True
        self.set_status(f"clustering at alpha {alpha:.2f} ...")
        return self.start_job(
            _jobs.cluster_domains,
            self.prepared,
            self.model,
            alpha,
            resolution=float(self.resolution.value()),
            on_done=self._on_domains,
            on_end=self._on_domains_finished,
            what="clustering",
            show_progress=False,
        )

    def _on_domains_finished(self) -> None:
        self._clustering = False
        if self._pending_alpha is not None:
            a, self._pending_alpha = self._pending_alpha, None
            self.recluster(a)

    def _on_domains(self, found) -> None:
        """GUI thread: the domains into the trained sections, their layers recoloured."""
        layers = [ly for ly in self.trained_layers if ly in self.viewer.layers]
        if len(layers) != len(found.sections):
            self.set_status("a trained section was removed: train again")
            return
        self.labels, self.alpha_shown = found.labels, found.alpha
        cats = [str(c) for c in range(found.n_domains)]
        for ly, out in zip(layers, found.sections):
            ad = ly.metadata["adata"]
            ad.obs[DOMAIN_KEY] = out.obs[DOMAIN_KEY].values
            for key in [k for k in out.obsm if k.startswith("X_spacon")]:
                ad.obsm[key] = out.obsm[key]
            ad.uns["spacon"] = out.uns["spacon"]
            vals = ad.obs[DOMAIN_KEY].astype(str).to_numpy()
            set_feature_columns(ly, {DOMAIN_KEY: ad.obs[DOMAIN_KEY].to_numpy()})
            paint(ly, categorical_colors(vals, categories=cats)[0])
        self.set_status(
            f"alpha {found.alpha:.2f}: {len(cats)} domains over {len(layers)} section(s)"
        )

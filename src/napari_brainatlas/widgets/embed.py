"""Embed dock widget: train FuseMap on chosen sections in a worker, then colour cells by
joint Leiden clusters of the cell or tissue embedding and show a UMAP.

Widgets plus one job per action (:mod:`._jobs`: ``embed`` -
``workflows.embed_sections``, ``joint_clusters``, ``joint_umap``) run by the dock base
(:mod:`._base`): progress per epoch, Cancel (nothing is written then); the workers get
copies of the sections, and layers change in the GUI thread only.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QSize
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from . import _jobs
from ._base import DockBase, snapshot
from ._common import SectionChecklist, paint, set_feature_columns
from ._notify import show_info

__all__ = ["EMBEDDINGS", "EmbedWidget"]

EMBEDDINGS = {"cell": "X_fusemap_cell", "tissue": "X_fusemap_tissue"}
#: epochs per training phase: ``FuseMapSettings().epochs``, the default of ``FuseMap.train``
#: and ``napari-brainatlas embed`` (a test checks they agree; not imported here, so that the
#: dock loads without torch)
DEFAULT_EPOCHS = 3


class EmbedWidget(DockBase):
    """FuseMap embedding of the loaded sections."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.model = None
        self._layers: list = []
        self.setMinimumWidth(340)
        self._build_ui()

    def sizeHint(self) -> QSize:
        return QSize(360, 640)

    def _build_ui(self) -> None:
        box = QGroupBox("Sections")
        self.section_list = SectionChecklist(self.viewer)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh_sections)
        lay = QVBoxLayout(box)
        lay.addWidget(self.section_list)
        lay.addWidget(refresh)

        params = QGroupBox("Training")
        self.epochs = QSpinBox(minimum=1, maximum=200, value=DEFAULT_EPOCHS)
        self.n_latent = QSpinBox(minimum=2, maximum=256, value=64)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.seed = QSpinBox(minimum=0, maximum=10**6, value=0)
        self.train_button = self.action_button("Train", self.train)
        form = QFormLayout(params)
        form.addRow("Epochs per phase:", self.epochs)
        form.addRow("Latent dimensions:", self.n_latent)
        form.addRow("Device:", self.device)
        form.addRow("Seed:", self.seed)
        form.addRow(self.run_row(self.train_button))
        form.addRow(self.progress)

        view = QGroupBox("Explore")
        self.which = QComboBox()
        self.which.addItems(list(EMBEDDINGS))
        self.resolution = QDoubleSpinBox(minimum=0.05, maximum=10.0, value=1.0, singleStep=0.1)
        self.cluster_button = self.action_button(
            "Colour by Leiden clusters", self.colour_by_clusters
        )
        self.umap_button = self.action_button("Show UMAP", self.show_umap)
        vf = QFormLayout(view)
        vf.addRow("Embedding:", self.which)
        vf.addRow("Leiden resolution:", self.resolution)
        vf.addRow(self.cluster_button)
        vf.addRow(self.umap_button)

        main = QVBoxLayout(self)
        for w in (box, params, view, self.status):
            main.addWidget(w)
        main.addStretch(1)

    # ------------------------------------------------------------------ sections
    def refresh_sections(self, *_) -> None:
        """List the section layers again (new ones come ticked, unticks are kept)."""
        self.section_list.refresh()

    def chosen_layers(self) -> list:
        return self.section_list.ticked_layers()

    # ------------------------------------------------------------------ training
    def train(self):
        """Start training on the ticked sections; returns the worker (or None)."""
        if self.busy:
            return None
        layers = self.chosen_layers()
        if len(layers) < 2:
            self.fail("choose at least two sections to embed together")
            return None
        self._layers = layers
        n = sum(ly.metadata["adata"].n_obs for ly in layers)
        epochs = int(self.epochs.value())
        self.set_status(f"training FuseMap on {len(layers)} sections, {n:,} cells ...")
        return self.start_job(
            _jobs.embed,
            [snapshot(ly.metadata["adata"]) for ly in layers],
            [ly.name for ly in layers],
            epochs=epochs,
            n_latent=int(self.n_latent.value()),
            device=self.device.currentText(),
            seed=int(self.seed.value()),
            on_done=self._on_trained,
            on_progress=self._on_progress,
            what="embedding",
            total=2 * epochs,
            unit="epochs",
        )

    def _on_progress(self, epoch: int, n_epochs, losses: dict) -> None:
        text = ", ".join(
            f"{k} {v:.3g}"
            for k, v in sorted(losses.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        )
        self.set_status(f"epoch {epoch}/{n_epochs}: {text}")

    def _on_trained(self, result) -> None:
        """GUI thread: the embedded copies replace the sections' AnnData."""
        self.model = result.model
        embedded = result.sections
        for ly, ad in zip(self._layers, embedded):
            if ly in self.viewer.layers:
                ly.metadata["adata"] = ad
        self.set_status(
            "FuseMap done: obsm['X_fusemap_cell'] and "
            f"obsm['X_fusemap_tissue'] written for {len(embedded)} sections"
        )
        show_info("FuseMap done")

    # ------------------------------------------------------------------ views
    def _embedded_layers(self) -> list:
        key = EMBEDDINGS[self.which.currentText()]
        layers = [ly for ly in self.chosen_layers() if key in ly.metadata["adata"].obsm]
        if not layers:
            self.fail("no embedded sections: train first")
        return layers

    def colour_by_clusters(self):
        """Joint Leiden clusters of the chosen embedding (in a worker); colours and a
        features / obs column. Returns the worker (or None)."""
        layers = self._embedded_layers()
        if not layers or self.busy:
            return None
        kind = self.which.currentText()
        self.set_status(f"clustering the {kind} embedding ...")
        return self.start_job(
            _jobs.joint_clusters,
            [snapshot(ly.metadata["adata"], with_x=False) for ly in layers],
            EMBEDDINGS[kind],
            float(self.resolution.value()),
            on_done=lambda labels: self._show_clusters(layers, kind, labels),
            what="clustering",
        )

    def _show_clusters(self, layers, kind: str, labels) -> None:
        from ..colors import categorical_colors

        layers_labels = [(ly, lab) for ly, lab in zip(layers, labels) if ly in self.viewer.layers]
        col = f"fusemap_{kind}_leiden"
        cats = sorted(set(np.concatenate(labels)), key=lambda c: (len(c), c))
        for ly, lab in layers_labels:
            ly.metadata["adata"].obs[col] = lab
            set_feature_columns(ly, {col: lab})
            rgba, _ = categorical_colors(lab, categories=cats)
            paint(ly, rgba)
        self.set_status(
            f"coloured by {len(cats)} Leiden clusters of the {kind} embedding (obs['{col}'])"
        )

    def show_umap(self):
        """A Points layer with the joint UMAP (1 UMAP unit = 1000 um), beside the sections
        (computed in a worker). Returns the worker (or None)."""
        layers = self._embedded_layers()
        if not layers or self.busy:
            return None
        kind = self.which.currentText()
        self.set_status(f"UMAP of the {kind} embedding ...")
        return self.start_job(
            _jobs.joint_umap,
            [snapshot(ly.metadata["adata"], with_x=False) for ly in layers],
            EMBEDDINGS[kind],
            on_done=lambda maps: self._show_umap(layers, kind, maps),
            what="UMAP",
        )

    def _show_umap(self, layers, kind: str, maps) -> None:
        xy = np.vstack(maps) * 1000.0
        face = np.vstack([np.asarray(ly.face_color) for ly in layers])
        section = np.concatenate([[ly.name] * len(m) for ly, m in zip(layers, maps)])
        ok = np.isfinite(xy).all(axis=1)
        name = f"FuseMap UMAP ({kind})"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        right = max((ly.extent.world[1][1] for ly in self.viewer.layers), default=0.0)
        xy = xy[ok] - np.nanmin(xy[ok], axis=0)
        self.viewer.add_points(
            xy[:, ::-1],
            name=name,
            face_color=face[ok],
            size=150,
            border_width=0,
            border_color=face[ok],
            features={"section": section[ok]},
            translate=(0, right + 2000),
        )
        self.set_status(f"UMAP of the {kind} embedding, cells coloured as in their sections")

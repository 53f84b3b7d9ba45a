"""Embed dock widget: train FuseMap on chosen sections in a worker, then colour cells by
joint Leiden clusters of the cell or tissue embedding and show a UMAP.

Thin: the science is in :mod:`napari_brainatlas.fusemap` (``FuseMap``,
``views.joint_clusters``, ``views.joint_umap``). Training runs in a napari
``thread_worker``; progress crosses to the main thread through a Qt signal; layers are
changed in the main thread only.
"""

from __future__ import annotations

import threading

import numpy as np
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._notify import one_line, show_error, show_info
from .annotate import is_section_layer

EMBEDDINGS = {"cell": "X_fusemap_cell", "tissue": "X_fusemap_tissue"}


class _Bridge(QObject):
    progressed = Signal(int, int, str)


def _train_job(adatas, names, epochs, n_latent, device, seed, bridge, stop):
    """Worker thread: build and train FuseMap; returns embedded copies of the sections."""
    from ..fusemap import FuseMap

    model = FuseMap(
        [a.copy() for a in adatas], section_names=names, n_latent=n_latent, device=device, seed=seed
    )

    def progress(epoch, n_epochs, losses):
        text = ", ".join(
            f"{k} {v:.3g}" for k, v in sorted(losses.items()) if isinstance(v, (int, float))
        )
        bridge.progressed.emit(int(epoch), int(n_epochs), text)

    model.train(max_epochs=epochs, progress=progress, cancel=stop.is_set)
    return model, model.write_embeddings()  # into the copies made above


class EmbedWidget(QWidget):
    """FuseMap embedding of the loaded sections."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.model = None
        self._worker = None
        self._stop = threading.Event()
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress)
        self.setMinimumWidth(340)

        box = QGroupBox("Sections")
        self.section_list = QListWidget()
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh_sections)
        lay = QVBoxLayout(box)
        lay.addWidget(self.section_list)
        lay.addWidget(refresh)

        params = QGroupBox("Training")
        self.epochs = QSpinBox(minimum=1, maximum=200, value=5)
        self.n_latent = QSpinBox(minimum=2, maximum=256, value=64)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.seed = QSpinBox(minimum=0, maximum=10**6, value=0)
        self.train_button = QPushButton("Train")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.train_button.clicked.connect(self.train)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        form = QFormLayout(params)
        form.addRow("Epochs per phase:", self.epochs)
        form.addRow("Latent dimensions:", self.n_latent)
        form.addRow("Device:", self.device)
        form.addRow("Seed:", self.seed)
        row = QHBoxLayout()
        row.addWidget(self.train_button)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        form.addRow(self.progress)

        view = QGroupBox("Explore")
        self.which = QComboBox()
        self.which.addItems(list(EMBEDDINGS))
        self.resolution = QDoubleSpinBox(minimum=0.05, maximum=10.0, value=1.0, singleStep=0.1)
        self.cluster_button = QPushButton("Colour by Leiden clusters")
        self.umap_button = QPushButton("Show UMAP")
        self.cluster_button.clicked.connect(self.colour_by_clusters)
        self.umap_button.clicked.connect(self.show_umap)
        vf = QFormLayout(view)
        vf.addRow("Embedding:", self.which)
        vf.addRow("Leiden resolution:", self.resolution)
        vf.addRow(self.cluster_button)
        vf.addRow(self.umap_button)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        main = QVBoxLayout(self)
        for w in (box, params, view, self.status):
            main.addWidget(w)
        main.addStretch(1)
        self.viewer.layers.events.inserted.connect(self.refresh_sections)
        self.viewer.layers.events.removed.connect(self.refresh_sections)
        self.refresh_sections()

    # ------------------------------------------------------------------ sections
    def refresh_sections(self, *_):
        items = [self.section_list.item(i) for i in range(self.section_list.count())]
        unticked = {it.text() for it in items if it.checkState() != Qt.Checked}
        self.section_list.clear()
        for ly in self.viewer.layers:
            if is_section_layer(ly):  # new sections come ticked; the user's unticks are kept
                it = QListWidgetItem(ly.name)
                it.setFlags(it.flags() | Qt.ItemIsUserCheckable)
                it.setCheckState(Qt.Unchecked if ly.name in unticked else Qt.Checked)
                self.section_list.addItem(it)

    def chosen_layers(self) -> list:
        names = [
            self.section_list.item(i).text()
            for i in range(self.section_list.count())
            if self.section_list.item(i).checkState() == Qt.Checked
        ]
        return [self.viewer.layers[n] for n in names if n in self.viewer.layers]

    def _set_status(self, text: str) -> None:
        self.status.setText(text)

    # ------------------------------------------------------------------ training
    def train(self):
        """Start training on the ticked sections; returns the worker (or None)."""
        from napari.qt.threading import thread_worker

        if self._worker is not None:
            return None
        layers = self.chosen_layers()
        if len(layers) < 2:
            msg = "choose at least two sections to embed together"
            self._set_status(msg)
            show_error(msg)
            return None
        self._layers = layers
        self._stop.clear()
        self.progress.setValue(0)
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        n = sum(ly.metadata["adata"].n_obs for ly in layers)
        self._set_status(f"training FuseMap on {len(layers)} sections, {n:,} cells ...")
        worker = thread_worker(_train_job, start_thread=False)(
            [ly.metadata["adata"] for ly in layers],
            [ly.name for ly in layers],
            int(self.epochs.value()),
            int(self.n_latent.value()),
            self.device.currentText(),
            int(self.seed.value()),
            self._bridge,
            self._stop,
        )
        worker.returned.connect(self._on_trained)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        self._stop.set()
        self._set_status("cancelling after the current step ...")

    def _on_progress(self, epoch: int, n_epochs: int, losses: str) -> None:
        self.progress.setMaximum(max(n_epochs, 1))
        self.progress.setValue(min(epoch, n_epochs))
        self._set_status(f"epoch {epoch}/{n_epochs}: {losses}")

    def _on_error(self, exc) -> None:
        msg = one_line(exc, "embedding failed: ")
        self._set_status(msg)
        show_error(msg)

    def _on_finished(self) -> None:
        self._worker = None
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _on_trained(self, result) -> None:
        model, embedded = result
        self.model = model
        for ly, ad in zip(self._layers, embedded):
            ly.metadata["adata"] = ad
        word = (
            "cancelled; kept the weights reached" if getattr(model, "cancelled", False) else "done"
        )
        self._set_status(
            f"FuseMap {word}: obsm['X_fusemap_cell'] and "
            f"obsm['X_fusemap_tissue'] written for {len(embedded)} sections"
        )
        show_info(f"FuseMap {word}")

    # ------------------------------------------------------------------ views
    def _embedded_layers(self) -> list:
        key = EMBEDDINGS[self.which.currentText()]
        layers = [ly for ly in self.chosen_layers() if key in ly.metadata["adata"].obsm]
        if not layers:
            msg = "no embedded sections: train first"
            self._set_status(msg)
            show_error(msg)
        return layers

    def colour_by_clusters(self) -> None:
        """Joint Leiden clusters of the chosen embedding; colours and a features column."""
        from ..colors import categorical_colors
        from ..fusemap.views import joint_clusters
        from .fastpoints import set_colors

        layers = self._embedded_layers()
        if not layers:
            return
        kind = self.which.currentText()
        col = f"fusemap_{kind}_leiden"
        try:
            labels = joint_clusters(
                [ly.metadata["adata"] for ly in layers],
                EMBEDDINGS[kind],
                float(self.resolution.value()),
            )
        except Exception as exc:  # noqa: BLE001 - shown, never raised into Qt
            self._on_error(exc)
            return
        cats = sorted(set(np.concatenate(labels)), key=lambda c: (len(c), c))
        for ly, lab in zip(layers, labels):
            ly.metadata["adata"].obs[col] = lab
            feats = ly.features.copy()
            feats[col] = lab
            ly.features = feats
            rgba, _ = categorical_colors(lab, categories=cats)
            set_colors(ly, rgba)
        self._set_status(
            f"coloured by {len(cats)} Leiden clusters of the {kind} embedding (obs['{col}'])"
        )

    def show_umap(self) -> None:
        """A Points layer with the joint UMAP (1 UMAP unit = 1000 um), beside the sections."""
        from ..fusemap.views import joint_umap

        layers = self._embedded_layers()
        if not layers:
            return
        kind = self.which.currentText()
        try:
            maps = joint_umap([ly.metadata["adata"] for ly in layers], EMBEDDINGS[kind])
        except Exception as exc:  # noqa: BLE001
            self._on_error(exc)
            return
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
        self._set_status(f"UMAP of the {kind} embedding, cells coloured as in their sections")

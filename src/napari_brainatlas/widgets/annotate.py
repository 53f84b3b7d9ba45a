"""The Annotate dock widget: transfer labels from a reference onto query sections and
impute genes (thin front end of :mod:`napari_brainatlas.annotate`).

Reference: a FuseMap model folder (the embedded ``<section>.h5ad`` files beside it, or
ticked reference section layers holding ``obsm['X_fusemap_cell' / 'X_fusemap_tissue']``)
or, with no folder, the ticked reference section layers themselves (a FuseMap is then
trained on them first). Query: ticked section layers (Points layers whose
``metadata['adata']`` is an AnnData). The work runs in a napari ``thread_worker`` with a
progress bar and Cancel; results are written into the query layers' AnnData
(``obs['<label>_transfer']``, ``obs['<label>_transfer_uncertainty']``, the embeddings)
and the query layers are coloured by the label shown (legend) or its uncertainty
(colormap). "Impute gene" (completion over the gene embedding) colours the query cells
by the imputed gene (``impute_genes``: mean of the 50 nearest reference cells in the
shared embedding that measured it, else ``max(z_C E^T, 0)``) and stores
``obs['imputed_<GENE>']``. Errors: one notification.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from anndata import AnnData
from qtpy.QtCore import QObject, QSize, QStringListModel, Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
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
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .._errors import BrainAtlasInputError
from ..colors import categorical_colors, continuous_colors
from ..layers import label_columns
from ._notify import one_line, show_error, show_info
from .sections import _paint, _swatch

__all__ = ["AnnotateWidget", "is_section_layer"]

UNCERTAINTY = " uncertainty"


def is_section_layer(layer) -> bool:
    from napari.layers import Points

    return isinstance(layer, Points) and isinstance(layer.metadata.get("adata"), AnnData)


class _Bridge(QObject):
    progressed = Signal(int, int, str)


class _Failed:
    def __init__(self, message: str, cancelled: bool = False):
        self.message = message
        self.cancelled = cancelled


def _job(refs, queries, model_dir, labels, method, epochs, smooth, bridge, stop):
    """Worker body (no napari calls): [train], map the query, transfer the labels."""
    from ..annotate import map_query, transfer_labels
    from ..fusemap import CELL_KEY, FuseMap

    def cancel():
        return stop.is_set()

    try:
        if model_dir:
            from ..workflows import read_paths as _read
            from ..workflows import reference_files as _reference_files

            model = FuseMap.load(model_dir, device="cpu")
            if not refs:
                refs = _read(_reference_files(model, Path(model_dir), None), None)
            if not all(CELL_KEY in a.obsm for a in refs):
                raise BrainAtlasInputError(
                    "reference sections need FuseMap embeddings for a model "
                    "folder: untick them to use the files beside the folder"
                )
        else:
            if not refs:
                raise BrainAtlasInputError("tick reference sections or choose a model folder")
            model = FuseMap([a.copy() for a in refs], seed=0, device="cpu")
            model.train(
                max_epochs=epochs,
                cancel=cancel,
                progress=lambda e, n, _l: bridge.progressed.emit(e, 2 * n, "train"),
            )
            if model.cancelled:
                return _Failed("cancelled", cancelled=True)
            refs = model.write_embeddings(copy=True)
        mapping = map_query(
            model,
            queries,
            reference_sections=refs,
            epochs=epochs,
            cancel=cancel,
            progress=lambda e, n, _l: bridge.progressed.emit(
                n + e if not model_dir else e, 2 * n if not model_dir else n, "map query"
            ),
        )
        if mapping.cancelled:
            return _Failed("cancelled", cancelled=True)
        mapped = mapping.write_embeddings(copy=True)
        for lab in labels:
            if not all(lab in a.obs.columns for a in refs):
                raise BrainAtlasInputError(f"the reference sections have no obs['{lab}'] labels")
        out = transfer_labels(
            refs, mapped, labels=labels, method=method, smooth_regions=smooth, cancel=cancel
        )
        return mapping, out
    except Exception as exc:  # noqa: BLE001 - one notification
        return _Failed(one_line(exc, context="annotation failed: "))


class AnnotateWidget(QWidget):
    """Dock widget: reference + query sections -> transferred labels, uncertainty, imputation."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.mapping = None
        self.query_layers: list = []
        self.transferred: list[str] = []
        self.shown: str | None = None
        self.legend: dict = {}
        self._worker = None
        self._stop = threading.Event()
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress)
        self._build_ui()
        self.setMinimumWidth(340)
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self._refresh()

    def sizeHint(self) -> QSize:
        return QSize(380, 700)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(4, 4, 4, 4)
        box = QGroupBox("Reference")
        lay = QVBoxLayout(box)
        row = QHBoxLayout()
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("model folder (empty: train on the ticked sections)")
        self.model_button = QPushButton("...")
        self.model_button.clicked.connect(self._choose_model)
        row.addWidget(self.model_edit, 1)
        row.addWidget(self.model_button)
        lay.addLayout(row)
        self.reference_list = QListWidget()
        self.reference_list.setMinimumHeight(70)
        self.reference_list.itemChanged.connect(lambda _i: self._refresh_labels())
        lay.addWidget(self.reference_list)
        root.addWidget(box)

        box = QGroupBox("Query")
        lay = QVBoxLayout(box)
        self.query_list = QListWidget()
        self.query_list.setMinimumHeight(70)
        lay.addWidget(self.query_list)
        root.addWidget(box)

        box = QGroupBox("Transfer")
        form = QFormLayout(box)
        self.label_list = QListWidget()
        self.label_list.setMaximumHeight(90)
        form.addRow("Labels:", self.label_list)
        self.method = QComboBox()
        self.method.addItems(["mlp", "knn"])
        form.addRow("Classifier:", self.method)
        self.epochs = QSpinBox()
        self.epochs.setRange(0, 1000)
        self.epochs.setValue(15)
        form.addRow("Epochs:", self.epochs)
        self.smooth = QCheckBox("smooth region labels (k = 30)")
        self.smooth.setChecked(True)
        form.addRow(self.smooth)
        row = QHBoxLayout()
        self.run_button = QPushButton("Transfer")
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        form.addRow(self.progress)
        root.addWidget(box)

        box = QGroupBox("Results")
        form = QFormLayout(box)
        self.show_combo = QComboBox()
        self.show_combo.currentTextChanged.connect(self._on_show)
        form.addRow("Show:", self.show_combo)
        self.legend_list = QListWidget()
        self.legend_list.setMaximumHeight(120)
        form.addRow(self.legend_list)
        self.count_table = QTableWidget(0, 2)
        self.count_table.setHorizontalHeaderLabels(["label", "cells"])
        self.count_table.setMaximumHeight(140)
        form.addRow(self.count_table)
        self.gene_edit = QLineEdit()
        self.gene_edit.setPlaceholderText("gene symbol, Enter")
        self._gene_model = QStringListModel([])
        comp = QCompleter(self._gene_model, self)
        comp.setCaseSensitivity(Qt.CaseInsensitive)
        comp.setFilterMode(Qt.MatchContains)
        self.gene_edit.setCompleter(comp)
        self.gene_edit.returnPressed.connect(lambda: self.impute(self.gene_edit.text()))
        form.addRow("Impute gene:", self.gene_edit)
        root.addWidget(box)

        self.status = QLabel("Tick reference and query sections, then Transfer.")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        root.addStretch(1)

    def _set_status(self, text: str) -> None:
        self.status.setText(text)

    def _choose_model(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "FuseMap model folder")
        if d:
            self.model_edit.setText(d)

    # ------------------------------------------------------------------ lists
    def section_layers(self) -> list:
        return [ly for ly in self.viewer.layers if is_section_layer(ly)]

    def _refresh(self, *_) -> None:
        layers = self.section_layers()
        for lst, default_ref in ((self.reference_list, True), (self.query_list, False)):
            ticked = {
                lst.item(i).text(): lst.item(i).checkState() == Qt.Checked
                for i in range(lst.count())
            }
            lst.blockSignals(True)
            lst.clear()
            for k, ly in enumerate(layers):
                it = QListWidgetItem(ly.name)
                it.setFlags(it.flags() | Qt.ItemIsUserCheckable)
                is_last = k == len(layers) - 1
                on = ticked.get(ly.name, default_ref != is_last if len(layers) > 1 else default_ref)
                it.setCheckState(Qt.Checked if on else Qt.Unchecked)
                lst.addItem(it)
            lst.blockSignals(False)
        self._refresh_labels()

    def _ticked(self, lst) -> list:
        by_name = {ly.name: ly for ly in self.section_layers()}
        return [
            by_name[lst.item(i).text()]
            for i in range(lst.count())
            if lst.item(i).checkState() == Qt.Checked and lst.item(i).text() in by_name
        ]

    def reference_layers(self) -> list:
        return self._ticked(self.reference_list)

    def chosen_query_layers(self) -> list:
        return self._ticked(self.query_list)

    def _refresh_labels(self) -> None:
        refs = self.reference_layers()
        cols = []
        if refs:
            common = set.intersection(*(set(label_columns(ly.metadata["adata"])) for ly in refs))
            cols = [
                c
                for c in label_columns(refs[0].metadata["adata"])
                if c in common and not c.endswith("_transfer")
            ]
        ticked = self.labels()
        self.label_list.clear()
        for c in cols:
            it = QListWidgetItem(c)
            it.setFlags(it.flags() | Qt.ItemIsUserCheckable)
            on = c in ticked if ticked else c in ("celltype", "region")
            it.setCheckState(Qt.Checked if on else Qt.Unchecked)
            self.label_list.addItem(it)

    def labels(self) -> list[str]:
        return [
            self.label_list.item(i).text()
            for i in range(self.label_list.count())
            if self.label_list.item(i).checkState() == Qt.Checked
        ]

    def set_labels(self, labels) -> None:
        for i in range(self.label_list.count()):
            it = self.label_list.item(i)
            it.setCheckState(Qt.Checked if it.text() in labels else Qt.Unchecked)

    # ------------------------------------------------------------------ run
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _fail(self, msg: str) -> None:
        self._set_status(msg)
        show_error(msg)

    def run(self):
        """Start the transfer in a worker; returns the worker (or None on bad input)."""
        from napari.qt.threading import thread_worker

        if self._worker is not None:
            return None
        model_dir = self.model_edit.text().strip() or None
        queries = self.chosen_query_layers()
        refs = self.reference_layers()
        labels = self.labels()
        if not queries:
            return self._fail("tick at least one query section")
        if set(map(id, queries)) & set(map(id, refs)):
            return self._fail("a section cannot be both reference and query")
        if not refs and not model_dir:
            return self._fail("tick reference sections or choose a model folder")
        if not labels and refs:
            return self._fail("tick at least one label column to transfer")
        if model_dir and not (Path(model_dir) / "config.json").is_file():
            return self._fail(f"{model_dir} is not a model folder (no config.json)")
        labels = labels or ["celltype", "region"]
        self._stop.clear()
        self._pending = queries
        self.progress.setValue(0)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._set_status(f"annotating {len(queries)} query section(s) ...")
        worker = thread_worker(_job, start_thread=False)(
            [ly.metadata["adata"] for ly in refs],
            [ly.metadata["adata"] for ly in queries],
            model_dir,
            labels,
            self.method.currentText(),
            int(self.epochs.value()),
            self.smooth.isChecked(),
            self._bridge,
            self._stop,
        )
        worker.returned.connect(self._on_done)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        self._stop.set()

    def _on_progress(self, i: int, n: int, what: str) -> None:
        self.progress.setValue(round(100 * i / max(n, 1)))
        self._set_status(f"{what}: {i}/{n}")

    def _on_finished(self) -> None:
        self._worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _on_done(self, result) -> None:
        if isinstance(result, _Failed):
            self._set_status(result.message)
            (show_info if result.cancelled else show_error)(result.message)
            return
        mapping, outs = result
        layers = [ly for ly in self._pending if ly in self.viewer.layers]
        if len(layers) != len(outs):
            return self._fail("a query section was removed during the transfer")
        labels = list(outs[0].uns.get("label_transfer", {}))
        new_cols = [
            c for c in outs[0].obs.columns if c.endswith(("_transfer", "_transfer_uncertainty"))
        ]
        for ly, out in zip(layers, outs):
            ad = ly.metadata["adata"]
            for c in new_cols:
                ad.obs[c] = (
                    out.obs[c].to_numpy() if not hasattr(out.obs[c], "cat") else out.obs[c].values
                )
            for k in ("X_fusemap_cell", "X_fusemap_tissue"):
                ad.obsm[k] = out.obsm[k]
            feats = ly.features
            if len(feats) == ad.n_obs:
                feats = feats.copy()
                for c in new_cols:
                    feats[c] = ad.obs[c].to_numpy()
                ly.features = feats
        self.mapping = mapping
        self.query_layers = layers
        self.transferred = [c[: -len("_transfer")] for c in new_cols if c.endswith("_transfer")]
        self._gene_model.setStringList(list(mapping.gene_embedding().index))
        self.progress.setValue(100)
        items = []
        for lab in self.transferred:
            items += [lab, lab + UNCERTAINTY]
        self.show_combo.blockSignals(True)
        self.show_combo.clear()
        self.show_combo.addItems(items)
        self.show_combo.blockSignals(False)
        first = labels[0] if labels else self.transferred[0]
        self.show_label(first)
        n = sum(ly.metadata["adata"].n_obs for ly in layers)
        how = (
            "adversarial"
            if mapping.adversarial
            else "anchored"
            if mapping.anchored
            else "reconstruction"
        )
        self._set_status(f"transferred {', '.join(labels)} to {n:,} cells ({how} query mapping)")

    # ------------------------------------------------------------------ display
    def _on_show(self, text: str) -> None:
        if text:
            self.show_label(text)

    def show_label(self, key: str) -> None:
        """Colour the query layers by a transferred label (legend + counts) or, for
        '<label> uncertainty', by its uncertainty (viridis 0..1)."""
        layers = [ly for ly in self.query_layers if ly in self.viewer.layers]
        if not layers:
            return
        self.shown = key
        if self.show_combo.currentText() != key:
            self.show_combo.blockSignals(True)
            self.show_combo.setCurrentText(key)
            self.show_combo.blockSignals(False)
        self.legend_list.clear()
        if key.endswith(UNCERTAINTY):
            col = key[: -len(UNCERTAINTY)] + "_transfer_uncertainty"
            for ly in layers:
                rgba, _ = continuous_colors(
                    ly.metadata["adata"].obs[col].to_numpy(), clim=(0.0, 1.0)
                )
                _paint(ly, rgba)
            self.legend = {}
            self.legend_list.addItem("uncertainty 0 (dark) ... 1 (yellow)")
            return
        col = key + "_transfer"
        vals = [ly.metadata["adata"].obs[col].astype(str).to_numpy() for ly in layers]
        cats = sorted(set(np.concatenate(vals)) - {"nan", "None"})
        for ly, v in zip(layers, vals):
            rgba, legend = categorical_colors(v, categories=cats)
            _paint(ly, rgba)
        self.legend = legend
        allv = np.concatenate(vals)
        counts = {c: int((allv == c).sum()) for c in cats}
        for c in cats:
            self.legend_list.addItem(QListWidgetItem(_swatch(legend[c]), c))
        self.count_table.setRowCount(len(cats))
        for i, c in enumerate(sorted(cats, key=lambda c: -counts[c])):
            self.count_table.setItem(i, 0, QTableWidgetItem(c))
            self.count_table.setItem(i, 1, QTableWidgetItem(str(counts[c])))

    def impute(self, gene: str) -> bool:
        """Colour the query cells by the imputed gene; stores obs['imputed_<GENE>']."""
        from ..annotate import IMPUTED_PREFIX, impute_genes

        if self.mapping is None:
            self._fail("transfer first: imputation uses the mapped query embeddings")
            return False
        g = str(gene).strip().upper()
        try:
            for ly in self.query_layers:
                ad = ly.metadata["adata"]
                v = impute_genes(self.mapping, ad, [g])[g].to_numpy()
                ad.obs[IMPUTED_PREFIX + g] = v
                rgba, _ = continuous_colors(v, cmap="magma")
                _paint(ly, rgba)
        except Exception as exc:  # noqa: BLE001
            self._fail(one_line(exc))
            return False
        self.shown = IMPUTED_PREFIX + g
        self.legend_list.clear()
        self.legend_list.addItem(f"imputed {g} (magma, 1st-99th percentile)")
        self._set_status(f"imputed {g}")
        return True

    def wait_for_workers(self, msecs: int = 120000) -> None:
        if self._worker is not None:
            self._worker.await_workers(msecs)

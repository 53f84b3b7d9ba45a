"""The Annotate dock widget: transfer labels from a reference onto query sections and
impute genes (thin front end of :mod:`napari_brainatlas.workflows`).

Reference: a FuseMap model folder (the embedded ``<section>.h5ad`` files beside it, or
ticked reference section layers holding ``obsm['X_fusemap_cell' / 'X_fusemap_tissue']``)
or, with no folder, the ticked reference section layers themselves (a FuseMap is then
trained on them first). Query: ticked section layers. The work runs as one job
(:func:`._jobs.annotate`: ``workflows.label_transfer``) of the dock base: a progress
bar over training and mapping, Cancel. Results are written into the query layers' AnnData (``obs['<label>_transfer']``,
``obs['<label>_transfer_uncertainty']``, the embeddings) and the query layers are
coloured by the label shown (legend) or its uncertainty (colormap). "Impute gene"
(:func:`._jobs.impute`, also a job) colours the query cells by the imputed gene and
stores ``obs['imputed_<GENE>']``. Errors: one notification.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QSize, QStringListModel, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..colors import categorical_colors, continuous_colors
from ..layers import label_columns
from . import _jobs
from ._base import DockBase, snapshot
from ._common import SectionChecklist, is_section_layer, paint, set_feature_columns, swatch

__all__ = ["AnnotateWidget", "is_section_layer"]

UNCERTAINTY = " uncertainty"
EMBEDDING_KEYS = ("X_fusemap_cell", "X_fusemap_tissue")


def _default_reference(layer, i: int, n: int) -> bool:
    """Every section but the last is a reference at first (one alone: reference)."""
    return i != n - 1 if n > 1 else True


def _default_query(layer, i: int, n: int) -> bool:
    return i == n - 1 if n > 1 else False


class AnnotateWidget(DockBase):
    """Dock widget: reference + query sections -> transferred labels, uncertainty, imputation."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.mapping = None
        self.query_layers: list = []
        self.transferred: list[str] = []
        self.shown: str | None = None
        self.legend: dict = {}
        self._pending: list = []
        self._build_ui()
        self.setMinimumWidth(340)
        self.reference_list.refreshed.connect(self._refresh_labels)
        self._refresh_labels()

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
        self.reference_list = SectionChecklist(self.viewer, default=_default_reference)
        self.reference_list.itemChanged.connect(lambda _i: self._refresh_labels())
        lay.addWidget(self.reference_list)
        root.addWidget(box)

        box = QGroupBox("Query")
        lay = QVBoxLayout(box)
        self.query_list = SectionChecklist(self.viewer, default=_default_query)
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
        self.run_button = self.action_button("Transfer", self.run)
        form.addRow(self.run_row(self.run_button))
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

        self.set_status("Tick reference and query sections, then Transfer.")
        root.addWidget(self.status)
        root.addStretch(1)

    def _choose_model(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "FuseMap model folder")
        if d:
            self.model_edit.setText(d)

    # ------------------------------------------------------------------ lists
    def section_layers(self) -> list:
        return [ly for ly in self.viewer.layers if is_section_layer(ly)]

    def reference_layers(self) -> list:
        return self.reference_list.ticked_layers()

    def chosen_query_layers(self) -> list:
        return self.query_list.ticked_layers()

    def _refresh_labels(self, *_) -> None:
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
    def _check_input(self, model_dir, queries, refs, labels) -> str | None:
        if not queries:
            return "tick at least one query section"
        if set(map(id, queries)) & set(map(id, refs)):
            return "a section cannot be both reference and query"
        if not refs and not model_dir:
            return "tick reference sections or choose a model folder"
        if not labels and refs:
            return "tick at least one label column to transfer"
        if model_dir and not (Path(model_dir) / "config.json").is_file():
            return f"{model_dir} is not a model folder (no config.json)"
        return None

    def run(self):
        """Start the transfer in a worker; returns the worker (or None on bad input)."""
        if self.busy:
            return None
        model_dir = self.model_edit.text().strip() or None
        queries = self.chosen_query_layers()
        refs = self.reference_layers()
        labels = self.labels()
        problem = self._check_input(model_dir, queries, refs, labels)
        if problem:
            self.fail(problem)
            return None
        self._pending = queries
        self.set_status(f"annotating {len(queries)} query section(s) ...")
        epochs = int(self.epochs.value())
        return self.start_job(
            _jobs.annotate,
            [snapshot(ly.metadata["adata"]) for ly in refs],
            [snapshot(ly.metadata["adata"]) for ly in queries],
            model_dir=model_dir,
            labels=labels or ["celltype", "region"],
            method=self.method.currentText(),
            epochs=epochs,
            smooth=self.smooth.isChecked(),
            on_done=self._on_done,
            what="annotation",
            total=epochs if model_dir else 3 * epochs,
            unit="epochs",
        )

    def _on_done(self, result) -> None:
        """GUI thread: the transferred columns and embeddings into the query sections."""
        mapping, outs = result.mapping, result.sections
        layers = [ly for ly in self._pending if ly in self.viewer.layers]
        if len(layers) != len(outs):
            self.fail("a query section was removed during the transfer")
            return
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
            for k in EMBEDDING_KEYS:
                ad.obsm[k] = out.obsm[k]
            set_feature_columns(ly, {c: ad.obs[c].to_numpy() for c in new_cols})
        self.mapping = mapping
        self.query_layers = layers
        self.transferred = [c[: -len("_transfer")] for c in new_cols if c.endswith("_transfer")]
        self._gene_model.setStringList(list(mapping.gene_embedding().index))
        items = []
        for lab in self.transferred:
            items += [lab, lab + UNCERTAINTY]
        self.show_combo.blockSignals(True)
        self.show_combo.clear()
        self.show_combo.addItems(items)
        self.show_combo.blockSignals(False)
        self.show_label(labels[0] if labels else self.transferred[0])
        n = sum(ly.metadata["adata"].n_obs for ly in layers)
        how = (
            "adversarial"
            if mapping.adversarial
            else "anchored"
            if mapping.anchored
            else "reconstruction"
        )
        self.set_status(f"transferred {', '.join(labels)} to {n:,} cells ({how} query mapping)")

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
                values = ly.metadata["adata"].obs[col].to_numpy()
                paint(ly, continuous_colors(values, clim=(0.0, 1.0))[0])
            self.legend = {}
            self.legend_list.addItem("uncertainty 0 (dark) ... 1 (yellow)")
            return
        col = key + "_transfer"
        vals = [ly.metadata["adata"].obs[col].astype(str).to_numpy() for ly in layers]
        cats = sorted(set(np.concatenate(vals)) - {"nan", "None"})
        legend: dict = {}
        for ly, v in zip(layers, vals):
            rgba, legend = categorical_colors(v, categories=cats)
            paint(ly, rgba)
        self.legend = legend
        allv = np.concatenate(vals)
        counts = {c: int((allv == c).sum()) for c in cats}
        for c in cats:
            self.legend_list.addItem(QListWidgetItem(swatch(legend[c]), c))
        self.count_table.setRowCount(len(cats))
        for i, c in enumerate(sorted(cats, key=lambda c: -counts[c])):
            self.count_table.setItem(i, 0, QTableWidgetItem(c))
            self.count_table.setItem(i, 1, QTableWidgetItem(str(counts[c])))

    def impute(self, gene: str):
        """Impute ``gene`` for the query cells in a worker, then colour them by it and
        store obs['imputed_<GENE>']. Returns the worker (None when refused)."""
        if self.mapping is None:
            self.fail("transfer first: imputation uses the mapped query embeddings")
            return None
        g = str(gene).strip().upper()
        known = {str(x).upper() for x in self._gene_model.stringList()}
        if not g or g not in known:
            self.fail(f"gene {gene!r} is not in the model's gene embedding")
            return None
        if self.busy:
            return None
        layers = [ly for ly in self.query_layers if ly in self.viewer.layers]
        self.set_status(f"imputing {g} ...")
        return self.start_job(
            _jobs.impute,
            self.mapping,
            [snapshot(ly.metadata["adata"]) for ly in layers],
            g,
            on_done=lambda values: self._show_imputed(layers, g, values),
            what=f"imputing {g}",
            show_progress=False,
        )

    def _show_imputed(self, layers, gene: str, values) -> None:
        from ..annotate import IMPUTED_PREFIX

        for ly, v in zip(layers, values):
            if ly not in self.viewer.layers:
                continue
            ly.metadata["adata"].obs[IMPUTED_PREFIX + gene] = v
            paint(ly, continuous_colors(v, cmap="magma")[0])
        self.shown = IMPUTED_PREFIX + gene
        self.legend_list.clear()
        self.legend_list.addItem(f"imputed {gene} (magma, 1st-99th percentile)")
        self.set_status(f"imputed {gene}")

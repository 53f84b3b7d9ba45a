"""The Annotate dock widget: transfer labels from a reference onto query sections and
impute genes (thin front end of :mod:`napari_brainatlas.workflows`).

Reference: a FuseMap model folder (the embedded ``<section>.h5ad`` files beside it, or
ticked reference section layers holding ``obsm['X_fusemap_cell' / 'X_fusemap_tissue']``)
or, with no folder, the ticked reference section layers themselves (a FuseMap is then
trained on them first). Any subset of the reference sections may carry a label: the
label list shows every label column the reference has, with how many sections carry it
(read from the files beside a model folder when no section is ticked); nothing is
transferred that the user did not tick.

Query: ticked section layers. Transfer runs as one job (:func:`._jobs.annotate`:
``workflows.label_transfer``): a progress bar over training and mapping, Cancel. Results
go into the query layers' AnnData (``obs['<label>_transfer']``,
``obs['<label>_transfer_uncertainty']``, the embeddings); "Show" colours the query cells
by a label (legend, counts), its uncertainty or an imputed gene (colour bar).

"Impute" needs no transfer first: without a mapping the queries are mapped onto the
model (:func:`._jobs.map_and_impute`), and that mapping is kept for the next gene. The
imputed gene is stored as ``obs['imputed_<Gene>']`` in the data's spelling. A query
sharing few genes with the model is warned about (one notification, with the count).
Errors: one notification.
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
from ..workflows.checks import LOW_COUNTS_KEY
from ..workflows.embed import default_epochs
from . import _jobs
from ._base import DockBase, snapshot
from ._common import (
    ColourBar,
    SectionChecklist,
    is_section_layer,
    paint,
    set_feature_columns,
    swatch,
)
from ._notify import show_warning

__all__ = ["AnnotateWidget", "is_section_layer"]

UNCERTAINTY = " uncertainty"
IMPUTED = "imputed "
EMBEDDING_KEYS = ("X_fusemap_cell", "X_fusemap_tissue")
#: labels ticked by default when the reference offers them (visible ticks)
DEFAULT_LABELS = ("celltype", "region")


def _default_reference(layer, i: int, n: int) -> bool:
    """Every section but the last is a reference at first (one alone: reference)."""
    return i != n - 1 if n > 1 else True


def _default_query(layer, i: int, n: int) -> bool:
    return i == n - 1 if n > 1 else False


class AnnotateWidget(DockBase):
    """Dock widget: reference + query sections -> transferred labels, uncertainty, imputation."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.mapping = None  # the QueryMapping of the last transfer / mapping
        self.mapped = None  # workflows.transfer.Mapped of the query layers below
        self.query_layers: list = []
        self.transferred: list[str] = []
        self.shown: str | None = None
        self.legend: dict = {}
        self.warnings: list[str] = []
        self._pending: list = []
        self._model_labels: dict[str, list[str]] = {}
        self._model_genes: list[str] = []
        self._inspected: str | None = None
        self._build_ui()
        self.setMinimumWidth(340)
        self.reference_list.refreshed.connect(self._refresh_labels)
        self._refresh_labels()

    def sizeHint(self) -> QSize:
        return QSize(380, 760)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(4, 4, 4, 4)
        for part in (self._reference_box(), self._query_box(), self._transfer_box()):
            root.addWidget(part)
        root.addWidget(self._results_box())
        self.set_status("Tick reference and query sections, then Transfer or Impute.")
        root.addWidget(self.status)
        root.addStretch(1)

    def _reference_box(self) -> QGroupBox:
        box = QGroupBox("Reference")
        lay = QVBoxLayout(box)
        row = QHBoxLayout()
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("model folder (empty: train on the ticked sections)")
        self.model_edit.editingFinished.connect(self._inspect_model)
        self.model_button = QPushButton("...")
        self.model_button.clicked.connect(self._choose_model)
        row.addWidget(self.model_edit, 1)
        row.addWidget(self.model_button)
        lay.addLayout(row)
        self.reference_list = SectionChecklist(self.viewer, default=_default_reference)
        self.reference_list.itemChanged.connect(lambda _i: self._refresh_labels())
        lay.addWidget(self.reference_list)
        return box

    def _query_box(self) -> QGroupBox:
        box = QGroupBox("Query")
        lay = QVBoxLayout(box)
        self.query_list = SectionChecklist(self.viewer, default=_default_query)
        self.query_list.itemChanged.connect(lambda _i: self._forget_mapping())
        lay.addWidget(self.query_list)
        return box

    def _transfer_box(self) -> QGroupBox:
        box = QGroupBox("Transfer")
        form = QFormLayout(box)
        self.label_list = QListWidget()
        self.label_list.setMaximumHeight(90)
        self.label_list.setToolTip(
            "The reference's label columns; a label carried by only some reference "
            "sections is learnt from the cells that have it"
        )
        form.addRow("Labels:", self.label_list)
        self.method = QComboBox()
        self.method.addItems(["mlp", "knn"])
        form.addRow("Classifier:", self.method)
        self.epochs = QSpinBox()
        self.epochs.setRange(0, 1000)
        self.epochs.setValue(default_epochs())  # the one default (FuseMapSettings)
        self.epochs.setToolTip(
            "Query-mapping epochs (and training epochs per phase when no model folder is "
            "given); training stops early when the validation loss is flat"
        )
        form.addRow("Epochs:", self.epochs)
        self.smooth = QCheckBox("smooth region labels (k = 30)")
        self.smooth.setChecked(True)
        form.addRow(self.smooth)
        self.run_button = self.action_button("Transfer", self.run)
        form.addRow(self.run_row(self.run_button))
        form.addRow(self.progress)
        return box

    def _results_box(self) -> QGroupBox:
        box = QGroupBox("Results")
        form = QFormLayout(box)
        self.show_combo = QComboBox()
        self.show_combo.currentTextChanged.connect(self._on_show)
        form.addRow("Show:", self.show_combo)
        self.legend_list = QListWidget()
        self.legend_list.setMaximumHeight(120)
        form.addRow(self.legend_list)
        self.colour_bar = ColourBar()
        form.addRow(self.colour_bar)
        self.count_table = QTableWidget(0, 2)
        self.count_table.setHorizontalHeaderLabels(["label", "cells"])
        self.count_table.setMaximumHeight(140)
        form.addRow(self.count_table)
        row = QHBoxLayout()
        self.gene_edit = QLineEdit()
        self.gene_edit.setPlaceholderText("gene symbol")
        self._gene_model = QStringListModel([])
        comp = QCompleter(self._gene_model, self)
        comp.setCaseSensitivity(Qt.CaseInsensitive)
        comp.setFilterMode(Qt.MatchContains)
        self.gene_edit.setCompleter(comp)
        self.gene_edit.returnPressed.connect(lambda: self.impute(self.gene_edit.text()))
        self.impute_button = self.action_button(
            "Impute",
            lambda: self.impute(self.gene_edit.text()),
            "Impute the gene for the query cells (maps them onto the model first when "
            "no transfer did)",
        )
        row.addWidget(self.gene_edit, 1)
        row.addWidget(self.impute_button)
        form.addRow("Gene:", row)
        return box

    def _choose_model(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "FuseMap model folder")
        if d:
            self.model_edit.setText(d)
            self._inspect_model()

    # ------------------------------------------------------------------ lists
    def section_layers(self) -> list:
        return [ly for ly in self.viewer.layers if is_section_layer(ly)]

    def reference_layers(self) -> list:
        return self.reference_list.ticked_layers()

    def chosen_query_layers(self) -> list:
        return self.query_list.ticked_layers()

    def model_dir(self) -> str | None:
        return self.model_edit.text().strip() or None

    def _inspect_model(self):
        """Read the label columns and genes of the model folder's reference files (in a
        worker). Returns the worker (None when there is nothing new to read)."""
        model_dir = self.model_dir()
        self._forget_mapping()
        if model_dir == self._inspected:
            return None
        self._inspected = model_dir
        self._model_labels, self._model_genes = {}, []
        self._refresh_labels()
        if not model_dir:
            return None
        if not (Path(model_dir) / "config.json").is_file():
            self.fail(f"{model_dir} is not a model folder (no config.json)")
            return None
        return self.start_job(
            _jobs.model_labels,
            model_dir,
            on_done=self._on_model_labels,
            what="reading the model's reference",
            show_progress=False,
        )

    def _on_model_labels(self, result) -> None:
        self._model_labels, self._model_genes = result
        self._refresh_labels()
        if not self._model_labels and not self.reference_layers():
            self.set_status(
                "the model folder has no embedded reference files beside it: tick the "
                "embedded reference sections (one per model section)"
            )
        elif self._model_labels:
            self.set_status(f"model reference labels: {', '.join(self._model_labels)}")

    def offered_labels(self) -> dict[str, tuple[int, int]]:
        """``{label: (sections carrying it, reference sections)}``: from the ticked
        reference sections, else from the model folder's reference files."""
        from ..workflows.transfer import reference_labels

        refs = self.reference_layers()
        if refs:
            found = reference_labels([ly.metadata["adata"] for ly in refs])
            n = len(refs)
        else:
            found = self._model_labels
            n = len({s for names in found.values() for s in names})
        return {c: (len(names), n) for c, names in found.items()}

    def _refresh_labels(self, *_) -> None:
        offered = self.offered_labels()
        ticked = self.labels()
        self.label_list.blockSignals(True)
        self.label_list.clear()
        for c, (k, n) in offered.items():
            text = c if k == n else f"{c}  ({k} of {n} sections)"
            it = QListWidgetItem(text)
            it.setData(Qt.UserRole, c)
            it.setFlags(it.flags() | Qt.ItemIsUserCheckable)
            it.setToolTip(f"obs['{c}'] in {k} of {n} reference section(s)")
            on = c in ticked if ticked else c in DEFAULT_LABELS
            it.setCheckState(Qt.Checked if on else Qt.Unchecked)
            self.label_list.addItem(it)
        self.label_list.blockSignals(False)
        self._refresh_genes()

    def _refresh_genes(self) -> None:
        """The completer's genes, spelled as the data spells them: the mapped model's
        genes after a transfer, else the reference's (layers or the model's files)."""
        if self.mapped is not None:
            from ..workflows.genes import gene_spelling, model_genes

            spell = gene_spelling(
                model_genes(self.mapped.model), self.mapped.reference or [], self.mapped.sections
            )
            genes = set(spell.values())
        else:
            genes = {
                str(g) for ly in self.reference_layers() for g in ly.metadata["adata"].var_names
            }
            genes.update(self._model_genes)
        self._gene_model.setStringList(sorted(genes, key=str.lower))

    def labels(self) -> list[str]:
        return [
            self.label_list.item(i).data(Qt.UserRole)
            for i in range(self.label_list.count())
            if self.label_list.item(i).checkState() == Qt.Checked
        ]

    def set_labels(self, labels) -> None:
        for i in range(self.label_list.count()):
            it = self.label_list.item(i)
            it.setCheckState(Qt.Checked if it.data(Qt.UserRole) in labels else Qt.Unchecked)

    def _forget_mapping(self) -> None:
        """The query or the model changed: the next imputation maps again."""
        if self.busy:
            return
        self.mapped = None
        self.mapping = None

    # ------------------------------------------------------------------ run
    def _check_input(self, model_dir, queries, refs, labels) -> str | None:
        if not queries:
            return "tick at least one query section"
        if set(map(id, queries)) & set(map(id, refs)):
            return "a section cannot be both reference and query"
        if not refs and not model_dir:
            return "tick reference sections or choose a model folder"
        if model_dir and not (Path(model_dir) / "config.json").is_file():
            return f"{model_dir} is not a model folder (no config.json)"
        if not labels:
            if not self.label_list.count():
                return (
                    "the reference offers no label columns: tick labelled reference "
                    "sections (or the embedded reference files of the model folder)"
                )
            return "tick at least one label column to transfer"
        return None

    def run(self):
        """Start the transfer in a worker; returns the worker (or None on bad input)."""
        if self.busy:
            return None
        model_dir = self.model_dir()
        queries = self.chosen_query_layers()
        refs = self.reference_layers()
        labels = self.labels()
        problem = self._check_input(model_dir, queries, refs, labels)
        if problem:
            self.fail(problem)
            return None
        self._pending = queries
        self.set_status(f"annotating {len(queries)} query section(s): {', '.join(labels)} ...")
        epochs = int(self.epochs.value())
        return self.start_job(
            _jobs.annotate,
            [snapshot(ly.metadata["adata"]) for ly in refs],
            [_query_snapshot(ly) for ly in queries],
            model_dir=model_dir,
            labels=labels,
            method=self.method.currentText(),
            epochs=epochs,
            smooth=self.smooth.isChecked(),
            on_done=self._on_done,
            what="annotation",
            total=epochs if model_dir else 3 * epochs,
            unit="epochs",
        )

    def _write_mapped(self, layers, sections) -> None:
        """The embeddings of the mapped query copies into the query layers' AnnData."""
        for ly, out in zip(layers, sections):
            ad = ly.metadata["adata"]
            for k in EMBEDDING_KEYS:
                if k in out.obsm:
                    ad.obsm[k] = out.obsm[k]

    def _on_done(self, result) -> None:
        """GUI thread: the transferred columns and embeddings into the query sections."""
        from ..workflows.transfer import Mapped

        outs = result.sections
        layers = [ly for ly in self._pending if ly in self.viewer.layers]
        if len(layers) != len(outs):
            self.fail("a query section was removed during the transfer")
            return
        labels = list(result.labels)
        new_cols = [
            c
            for c in outs[0].obs.columns
            if c.endswith(("_transfer", "_transfer_uncertainty")) or c == LOW_COUNTS_KEY
        ]
        for ly, out in zip(layers, outs):
            ad = ly.metadata["adata"]
            for c in new_cols:
                ad.obs[c] = out.obs[c].values
            set_feature_columns(ly, {c: ad.obs[c].to_numpy() for c in new_cols})
        self._write_mapped(layers, outs)
        self.mapping = result.mapping
        self.mapped = Mapped(outs, result.mapping, result.model, result.reference, result.warnings)
        self.query_layers = layers
        self.transferred = [c[: -len("_transfer")] for c in new_cols if c.endswith("_transfer")]
        self._refresh_genes()
        self._set_show_items()
        self.show_label(labels[0] if labels else self.transferred[0])
        n = sum(ly.metadata["adata"].n_obs for ly in layers)
        mapping = result.mapping
        how = (
            "adversarial"
            if mapping.adversarial
            else "anchored"
            if mapping.anchored
            else "reconstruction"
        )
        record = outs[0].uns.get("label_transfer", {})
        learnt = _partly_labelled(record, len(result.reference))
        views = [lab for lab, r in record.items() if (r or {}).get("views") == "panels"]
        self.set_status(
            f"transferred {', '.join(labels)} to {n:,} cells ({how} query mapping"
            + (f"; {', '.join(views)} read through the panel views" if views else "")
            + ")"
            + (f"; {learnt}" if learnt else "")
        )
        self._warn(result.warnings)

    def _warn(self, warnings) -> None:
        self.warnings = list(warnings)
        for w in self.warnings:
            show_warning(w)
        if self.warnings:
            self.set_status(self.status.text() + ". Warning: " + " ".join(self.warnings))

    # ------------------------------------------------------------------ display
    def _set_show_items(self, extra: str | None = None) -> None:
        """The Show list: each transferred label and its uncertainty, and the imputed
        genes of the query layers (``extra`` added)."""
        items = []
        for lab in self.transferred:
            items += [lab, lab + UNCERTAINTY]
        genes = []
        for ly in self.query_layers:
            genes += [
                c[len("imputed_") :] for c in ly.metadata["adata"].obs if c.startswith("imputed_")
            ]
        if extra:
            genes.append(extra)
        items += [IMPUTED + g for g in dict.fromkeys(genes)]
        self.show_combo.blockSignals(True)
        self.show_combo.clear()
        self.show_combo.addItems(items)
        self.show_combo.blockSignals(False)

    def _on_show(self, text: str) -> None:
        if text:
            self.show_label(text)

    def _select_show(self, key: str) -> None:
        if self.show_combo.currentText() != key:
            self.show_combo.blockSignals(True)
            i = self.show_combo.findText(key)
            if i < 0:
                self.show_combo.addItem(key)
                i = self.show_combo.count() - 1
            self.show_combo.setCurrentIndex(i)
            self.show_combo.blockSignals(False)

    def show_label(self, key: str) -> None:
        """Colour the query layers by a transferred label (legend + counts), by
        '<label> uncertainty' (colour bar 0..1) or by 'imputed <Gene>' (colour bar)."""
        layers = [ly for ly in self.query_layers if ly in self.viewer.layers]
        if not layers:
            return
        self.shown = key
        self._select_show(key)
        self.legend_list.clear()
        self.count_table.setRowCount(0)
        self.legend = {}
        if key.endswith(UNCERTAINTY):
            col = key[: -len(UNCERTAINTY)] + "_transfer_uncertainty"
            values = [ly.metadata["adata"].obs[col].to_numpy() for ly in layers]
            self._show_continuous(layers, values, key, (0.0, 1.0), "viridis")
            return
        if key.startswith(IMPUTED):
            col = "imputed_" + key[len(IMPUTED) :]
            values = [ly.metadata["adata"].obs[col].to_numpy() for ly in layers]
            self._show_continuous(layers, values, key, None, "magma")
            self.shown = col
            return
        self.colour_bar.clear()
        self.legend_list.setVisible(True)
        self.count_table.setVisible(True)
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

    def _show_continuous(self, layers, values, name, clim, cmap) -> None:
        """Colour by numbers: one set of limits over all query layers, a colour bar."""
        if clim is None:
            finite = np.concatenate([v[np.isfinite(v)] for v in values])
            _, clim = continuous_colors(finite) if finite.size else (None, (0.0, 1.0))
        for ly, v in zip(layers, values):
            paint(ly, continuous_colors(v, clim=clim, cmap=cmap)[0])
        self.legend_list.setVisible(False)
        self.count_table.setVisible(False)
        self.colour_bar.show_range(name, cmap, *clim)

    # ------------------------------------------------------------------ impute
    def _resolve_gene(self, gene: str) -> str | None:
        """The gene as the data spells it (case-insensitive match), or None."""
        low = gene.lower()
        return next((g for g in self._gene_model.stringList() if g.lower() == low), None)

    def _mapped_queries_current(self) -> bool:
        if self.mapped is None:
            return False
        layers = [ly for ly in self.query_layers if ly in self.viewer.layers]
        return bool(layers) and layers == self.chosen_query_layers()

    def impute(self, gene: str):
        """Impute ``gene`` for the query cells in a worker (mapping them onto the model
        first when no transfer or earlier imputation did), then colour them by it and
        store ``obs['imputed_<Gene>']``. Returns the worker (None when refused)."""
        g = str(gene).strip()
        if not g:
            self.fail("type a gene symbol to impute")
            return None
        if self.busy:
            return None
        known = self._resolve_gene(g)
        if known is None and self._gene_model.stringList():
            self.fail(f"gene {g!r} is not among the model's genes")
            return None
        g = known or g
        if self._mapped_queries_current():
            layers = [ly for ly in self.query_layers if ly in self.viewer.layers]
            self.set_status(f"imputing {g} ...")
            return self.start_job(
                _jobs.impute,
                self.mapped,
                g,
                on_done=lambda imp: self._show_imputed(layers, imp),
                what=f"imputing {g}",
                total=len(layers),
                unit="sections",
            )
        return self._map_and_impute(g)

    def _map_and_impute(self, gene: str):
        model_dir = self.model_dir()
        queries, refs = self.chosen_query_layers(), self.reference_layers()
        problem = self._check_input(model_dir, queries, refs, ["-"])
        if problem:
            self.fail(problem)
            return None
        epochs = int(self.epochs.value())
        self.set_status(f"mapping {len(queries)} query section(s) to impute {gene} ...")
        return self.start_job(
            _jobs.map_and_impute,
            [snapshot(ly.metadata["adata"]) for ly in refs],
            [_query_snapshot(ly) for ly in queries],
            gene,
            model_dir=model_dir,
            epochs=epochs,
            on_done=lambda out: self._on_mapped_imputed(queries, out),
            what=f"imputing {gene}",
            total=epochs if model_dir else 3 * epochs,
            unit="epochs",
        )

    def _on_mapped_imputed(self, layers, out) -> None:
        mapped, imputed = out
        layers = [ly for ly in layers if ly in self.viewer.layers]
        if len(layers) != len(mapped.sections):
            self.fail("a query section was removed during the mapping")
            return
        self._write_mapped(layers, mapped.sections)
        self.mapped, self.mapping = mapped, mapped.mapping
        if self.query_layers != layers:
            self.transferred = []
        self.query_layers = layers
        self._refresh_genes()
        self._show_imputed(layers, imputed)
        self._warn(mapped.warnings)

    def _show_imputed(self, layers, imputed) -> None:
        from ..annotate import IMPUTED_PREFIX

        (gene,) = imputed.genes
        col = IMPUTED_PREFIX + gene
        for ly, out in zip(layers, imputed.sections):
            if ly in self.viewer.layers:
                ly.metadata["adata"].obs[col] = out.obs[col].to_numpy()
                set_feature_columns(ly, {col: out.obs[col].to_numpy()})
        self._set_show_items(gene)
        self.show_label(IMPUTED + gene)
        self.set_status(f"imputed {gene} ({imputed.method}): obs['{col}']")


def _query_snapshot(layer):
    """A copy of a query section without FuseMap embeddings: it is mapped onto the
    chosen model (an embedding from another model would not fit)."""
    a = snapshot(layer.metadata["adata"])
    for k in EMBEDDING_KEYS:
        a.obsm.pop(k, None)
    return a


def _partly_labelled(record: dict, n_refs: int) -> str:
    """``celltype learnt from S1 (1 of 2 reference sections)`` for labels not every
    reference section carries."""
    parts = []
    for lab, r in record.items():
        names = (r or {}).get("labelled_sections") or []
        if names and len(names) < n_refs:
            parts.append(
                f"{lab} learnt from {', '.join(names)} ({len(names)} of {n_refs} reference sections)"
            )
    return "; ".join(parts)

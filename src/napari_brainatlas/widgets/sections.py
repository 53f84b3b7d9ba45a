"""The Sections dock widget: open sections, list them, colour and select their cells.

Reading runs as a job of the dock base (:mod:`._base`: a worker thread, progress per
section, Cancel); layers are added and changed only in the GUI thread (``on_done``).
Every Points layer whose ``metadata['adata']`` is an AnnData is a section here, whoever
added it (this widget, the reader, the sample data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from qtpy.QtCore import QSize, QStringListModel, Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..colors import categorical_colors, continuous_colors
from ..io.backed import gene_values
from ..layers import GREY, HOVER_KEY, label_columns, numeric_columns, tile_offsets
from . import _jobs
from ._base import DockBase
from ._common import ColourBar, is_section_layer, paint, swatch
from ._notify import show_error

__all__ = ["COLORMAPS", "SectionsWidget"]

COLORMAPS = ("viridis", "magma", "inferno", "plasma", "cividis", "turbo", "gray", "Reds", "Blues")
NONE_ITEM = "(none)"
TABLE_COLUMNS = ("show", "section", "cells", "genes", "source")


def _numeric_columns_kept(result) -> list[str]:
    """Numeric columns a cell table kept as cell values in sections read without genes."""
    out: dict[str, None] = {}
    for _, kwargs, _ in result:
        ad = (kwargs.get("metadata") or {}).get("adata")
        if ad is None or ad.n_vars:
            continue
        meta = ad.uns.get("napari_brainatlas", {})
        if isinstance(meta, dict):
            out.update(dict.fromkeys(meta.get("numeric_columns", [])))
    return list(out)


class SectionsWidget(DockBase):
    """Dock widget listing the loaded sections, with colour-by and select-by controls."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self._layers: list = []
        self._updating = False
        # current colouring: key, source ('gene' | 'obs'), kind, clim, cmap, values
        self._color: dict = {}
        self._fast = None
        self._build_ui()
        # an explicit minimum lets the dock be narrower than Qt's guess from the contents
        self.setMinimumWidth(360)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        for layer in list(self.viewer.layers):
            self._track(layer)
        self._refresh()

    def sizeHint(self) -> QSize:
        return QSize(380, 720)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(4, 4, 4, 4)

        for part in (self._open_box(), self._table(), self._colour_box(), self._select_box()):
            root.addWidget(part)
        self.set_status("Open a file or folder of sections.")
        root.addWidget(self.status)
        root.addStretch(1)
        self._set_continuous_enabled(False)

    def _open_box(self) -> QGroupBox:
        box = QGroupBox("Open")
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText(".h5ad, .loom, .csv or a folder of csv files")
        self.path_edit.returnPressed.connect(self.load)
        self.load_button = self.action_button(
            "Load", self.load, "Read the file or folder typed on the left"
        )
        row.addWidget(self.path_edit, 1)
        row.addWidget(self.load_button)
        form.addRow(row)
        row = QHBoxLayout()
        self.open_button = self.action_button(
            "Open...", self._choose_file, "Choose a .h5ad, .loom or .csv file"
        )
        self.folder_button = self.action_button(
            "Open folder...",
            self._choose_folder,
            "Choose a folder of csv files (coordinates + counts)",
        )
        row.addWidget(self.open_button)
        row.addWidget(self.folder_button)
        form.addRow(row)
        self.pixel_size = QDoubleSpinBox()
        self.pixel_size.setRange(0.0, 1e6)
        self.pixel_size.setDecimals(4)
        self.pixel_size.setSingleStep(0.1)
        self.pixel_size.setSpecialValueText("auto (from file)")
        self.pixel_size.setValue(0.0)
        self.pixel_size.setToolTip(
            "Micrometres per coordinate unit; auto reads it from the "
            "file (Visium scale factors, osmFISH sizes) or uses 1"
        )
        form.addRow("Pixel size (um):", self.pixel_size)
        self.genes_check = QCheckBox("Numeric columns are genes (csv tables)")
        self.genes_check.setToolTip(
            "A csv / tsv cell table's numeric columns beside x/y are read as genes "
            "(all but per-cell measures such as Z or area). Unticked they stay cell "
            "values (colour by them under Annotation); text columns are always labels. "
            "A folder with a counts table takes its genes from there."
        )
        form.addRow(self.genes_check)
        self.tile_check = QCheckBox("Lay sections out side by side")
        self.tile_check.setChecked(True)
        self.tile_check.toggled.connect(self._retile)
        form.addRow(self.tile_check)
        row = QHBoxLayout()
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        return box

    def _table(self) -> QTableWidget:
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        hdr = self.table.horizontalHeader()
        hdr.setSectionResizeMode(QHeaderView.ResizeToContents)
        hdr.setStretchLastSection(True)
        self.table.setMinimumHeight(90)
        self.table.itemChanged.connect(self._on_item_changed)
        return self.table

    def _colour_box(self) -> QGroupBox:
        box = QGroupBox("Colour cells by")
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.gene_edit = QLineEdit()
        self.gene_edit.setPlaceholderText("gene name")
        self._gene_model = QStringListModel([])
        completer = QCompleter(self._gene_model, self)
        completer.setCaseSensitivity(Qt.CaseInsensitive)
        completer.setFilterMode(Qt.MatchContains)
        self.gene_edit.setCompleter(completer)
        self.gene_edit.returnPressed.connect(lambda: self.color_by_gene())
        self.gene_button = QPushButton("Show")
        self.gene_button.clicked.connect(lambda: self.color_by_gene())
        row.addWidget(self.gene_edit, 1)
        row.addWidget(self.gene_button)
        form.addRow("Gene:", row)
        self.annotation_combo = QComboBox()
        self.annotation_combo.setToolTip("An obs column: labels get a legend, numbers a colormap")
        self.annotation_combo.activated.connect(self._on_annotation_activated)
        form.addRow("Annotation:", self.annotation_combo)
        self.cmap_combo = QComboBox()
        self.cmap_combo.addItems(list(COLORMAPS))
        self.cmap_combo.currentTextChanged.connect(lambda _: self._recolor_continuous())
        form.addRow("Colormap:", self.cmap_combo)
        row = QHBoxLayout()
        self.clim_min = QDoubleSpinBox()
        self.clim_max = QDoubleSpinBox()
        for sb in (self.clim_min, self.clim_max):
            sb.setRange(-1e12, 1e12)
            sb.setDecimals(3)
            sb.setKeyboardTracking(False)
            sb.valueChanged.connect(lambda _: self._recolor_continuous(auto=False))
            row.addWidget(sb, 1)
        self.auto_button = QPushButton("Auto")
        self.auto_button.setToolTip("Contrast limits from the 1st and 99th percentile")
        self.auto_button.clicked.connect(lambda: self._recolor_continuous(auto=True))
        row.addWidget(self.auto_button)
        form.addRow("Contrast:", row)
        self.legend = QListWidget()
        self.legend.setMinimumHeight(80)
        self.legend.setSelectionMode(QAbstractItemView.NoSelection)
        form.addRow(self.legend)
        self.colour_bar = ColourBar()
        form.addRow(self.colour_bar)
        return box

    def _select_box(self) -> QGroupBox:
        box = QGroupBox("Select cells")
        form = QFormLayout(box)
        self.select_column = QComboBox()
        self.select_column.currentTextChanged.connect(self._fill_select_values)
        form.addRow("Label:", self.select_column)
        row = QHBoxLayout()
        self.select_value = QComboBox()
        self.select_button = QPushButton("Select")
        self.select_button.clicked.connect(lambda: self.select_cells())
        self.clear_button = QPushButton("Clear")
        self.clear_button.clicked.connect(self.clear_selection)
        row.addWidget(self.select_value, 1)
        row.addWidget(self.select_button)
        row.addWidget(self.clear_button)
        form.addRow("Value:", row)
        return box

    def _set_continuous_enabled(self, on: bool) -> None:
        for w in (self.cmap_combo, self.clim_min, self.clim_max, self.auto_button):
            w.setEnabled(on)

    # ------------------------------------------------------------------ loading
    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Open sections",
            self.path_edit.text(),
            "Sections (*.h5ad *.loom *.csv *.csv.gz *.tsv);;All files (*)",
        )
        if path:
            self.path_edit.setText(path)
            self.load(path)

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(
            self, "Open a folder of csv files", self.path_edit.text()
        )
        if path:
            self.path_edit.setText(path)
            self.load(path)

    def load(self, path: str | None = None):
        """Read ``path`` (default: the path box) in a worker thread; its sections become
        Points layers when it returns. Returns the worker (``None`` if nothing to do)."""
        path = str(path or self.path_edit.text()).strip()
        if not path:
            show_error("type or choose a file or folder to open")
            return None
        name = Path(path).name
        self.set_status(f"reading {name} ...")
        return self.start_job(
            _jobs.read_layer_data,
            path,
            self.pixel_size.value() or None,
            genes=True if self.genes_check.isChecked() else None,
            on_done=self._on_loaded,
            what=f"reading {name}",
            error_prefix=f"cannot open {name}: ",
            unit="sections",
        )

    @property
    def fast(self):
        """The level-of-detail controller of this viewer's large sections."""
        if self._fast is None:
            from .fastpoints import FastSections

            self._fast = FastSections(self.viewer)
        return self._fast

    def _on_loaded(self, result) -> None:
        """GUI thread: add the sections' layers."""
        from napari.layers import Layer

        from .fastpoints import LOD_KEY, make_fast_layer

        names = []
        for data, kwargs, ltype in result:
            fast = LOD_KEY in (kwargs.get("metadata") or {})
            layer = make_fast_layer(data, kwargs) if fast else Layer.create(data, kwargs, ltype)
            self.viewer.add_layer(layer)
            names.append(layer.name)
        if self.tile_check.isChecked():
            self._retile()
        if self._color:
            self._reapply()
        self.viewer.reset_view()
        n = sum(len(d) for d, _, _ in result)
        msg = f"loaded {len(names)} section(s), {n:,} cells: {', '.join(names)}"
        numbers = _numeric_columns_kept(result)
        if numbers:
            msg += (
                f". No genes: {len(numbers)} numeric column(s) kept as cell values "
                f"({', '.join(numbers[:4])}{', ...' if len(numbers) > 4 else ''}); tick "
                "'Numeric columns are genes' and load again to read them as genes"
            )
        self.set_status(msg)

    # ------------------------------------------------------------------ layers
    def _track(self, layer) -> bool:
        if not is_section_layer(layer) or layer in self._layers:
            return False
        self._layers.append(layer)
        layer.metadata.setdefault(HOVER_KEY, [])
        from .fastpoints import FAST_THRESHOLD, is_fast

        if is_fast(layer) or len(layer.data) > FAST_THRESHOLD:
            self.fast.track(layer)  # level of detail for large sections
        layer.events.visible.connect(self._sync_table)
        layer.events.name.connect(self._sync_table)
        return True

    def _on_layer_inserted(self, event) -> None:
        if self._track(event.value):
            self._refresh()

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if layer in self._layers:
            self._layers.remove(layer)
            for ev in (layer.events.visible, layer.events.name):
                ev.disconnect(self._sync_table)
            if not self._layers:
                self._color = {}
                self.legend.clear()
                self.colour_bar.clear()
            self._refresh()

    def _labels_union(self) -> list[str]:
        """Label (categorical) obs columns over all loaded sections."""
        out: dict[str, None] = {}
        for ly in self._layers:
            out.update(dict.fromkeys(label_columns(ly.metadata["adata"])))
        return list(out)

    def section_layers(self) -> list:
        """The Points layers this widget treats as sections, in table order."""
        return list(self._layers)

    def _retile(self, *_) -> None:
        layers = self._layers
        if not layers:
            return
        if self.tile_check.isChecked():
            offsets = tile_offsets([ly.metadata["adata"] for ly in layers])
        else:
            offsets = [(0.0, 0.0)] * len(layers)
        for ly, off in zip(layers, offsets):
            ly.translate = off
        self.viewer.reset_view()

    def _refresh(self) -> None:
        """Rebuild the table, the gene completer and the column combos."""
        self._sync_table()
        genes: set[str] = set()
        labels: dict[str, None] = {}
        numbers: dict[str, None] = {}
        for ly in self._layers:
            ad = ly.metadata["adata"]
            genes.update(map(str, ad.var_names))
            labels.update(dict.fromkeys(label_columns(ad)))
            numbers.update(dict.fromkeys(numeric_columns(ad)))
        self._gene_model.setStringList(sorted(genes, key=str.lower))
        current = self.annotation_combo.currentText()
        self.annotation_combo.blockSignals(True)
        self.annotation_combo.clear()
        self.annotation_combo.addItem(NONE_ITEM)
        self.annotation_combo.addItems(list(labels))
        self.annotation_combo.addItems([c for c in numbers if c not in labels])
        i = self.annotation_combo.findText(current)
        self.annotation_combo.setCurrentIndex(max(i, 0))
        self.annotation_combo.blockSignals(False)
        current = self.select_column.currentText()
        self.select_column.blockSignals(True)
        self.select_column.clear()
        self.select_column.addItems(list(labels))
        i = self.select_column.findText(current)
        self.select_column.setCurrentIndex(max(i, 0))
        self.select_column.blockSignals(False)
        self._fill_select_values(self.select_column.currentText())

    def _sync_table(self, *_) -> None:
        self._updating = True
        try:
            self.table.setRowCount(len(self._layers))
            for r, ly in enumerate(self._layers):
                ad = ly.metadata["adata"]
                meta = ad.uns.get("napari_brainatlas", {}) or {}
                show = QTableWidgetItem()
                show.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled)
                show.setCheckState(Qt.Checked if ly.visible else Qt.Unchecked)
                show.setToolTip("show or hide this section's layer")
                self.table.setItem(r, 0, show)
                src = str(meta.get("source", ""))
                for c, text in enumerate(
                    (ly.name, f"{ad.n_obs:,}", f"{ad.n_vars:,}", Path(src).name if src else "-"),
                    start=1,
                ):
                    item = QTableWidgetItem(text)
                    item.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
                    if c == 4:
                        item.setToolTip(src)
                    self.table.setItem(r, c, item)
        finally:
            self._updating = False

    def _on_item_changed(self, item) -> None:
        if self._updating or item.column() != 0:
            return
        r = item.row()
        if 0 <= r < len(self._layers):
            self._layers[r].visible = item.checkState() == Qt.Checked

    def set_section_visible(self, row: int, visible: bool) -> None:
        """Tick or untick the "show" box of table row ``row``."""
        self.table.item(row, 0).setCheckState(Qt.Checked if visible else Qt.Unchecked)

    # ------------------------------------------------------------------ colour
    def _on_annotation_activated(self, _index: int) -> None:
        key = self.annotation_combo.currentText()
        if key == NONE_ITEM:
            self.reset_colors()
        elif key:
            self.color_by_annotation(key)

    def _resolve_gene(self, gene: str) -> str | None:
        genes = self._gene_model.stringList()
        if gene in genes:
            return gene
        low = gene.lower()
        return next((g for g in genes if g.lower() == low), None)

    def color_by_gene(self, gene: str | None = None) -> None:
        """Colour every section's cells by ``gene`` (default: the gene box); sections
        that do not measure it turn grey."""
        gene = (gene if gene is not None else self.gene_edit.text()).strip()
        if not gene:
            return
        if not self._layers:
            self.set_status("no sections loaded")
            return
        found = self._resolve_gene(gene)
        if found is None:
            msg = f"gene {gene!r} is in none of the loaded sections"
            self.set_status(msg)
            show_error(msg)
            return
        self.gene_edit.setText(found)
        values = {}
        for ly in self._layers:
            ad = ly.metadata["adata"]
            values[id(ly)] = gene_values(ad, found) if found in ad.var_names else None
        self._color = {"key": found, "source": "gene", "kind": "continuous", "values": values}
        self._show_in_annotation(NONE_ITEM)  # the panel says what the cells show
        self._recolor_continuous(auto=True)

    def color_by_annotation(self, column: str) -> None:
        """Colour every section by obs ``column``: labels with a shared legend, numbers
        through the colormap."""
        if not self._layers:
            return
        self._show_in_annotation(column)
        self.gene_edit.clear()
        is_label = any(column in label_columns(ly.metadata["adata"]) for ly in self._layers)
        if not is_label:
            values = {}
            for ly in self._layers:
                obs = ly.metadata["adata"].obs
                values[id(ly)] = (
                    obs[column].to_numpy(dtype=float) if column in obs.columns else None
                )
            self._color = {"key": column, "source": "obs", "kind": "continuous", "values": values}
            self._recolor_continuous(auto=True)
            return
        cats: set[str] = set()
        for ly in self._layers:
            obs = ly.metadata["adata"].obs
            if column in obs.columns:
                cats.update(obs[column].dropna().astype(str).unique())
        categories = list(pd.Categorical(sorted(cats)).categories)
        missing = []
        legend = {}
        counts = dict.fromkeys(categories, 0)
        for ly in self._layers:
            obs = ly.metadata["adata"].obs
            if column in obs.columns:
                vals = obs[column].astype(object).where(obs[column].notna(), None).to_numpy()
                rgba, leg = categorical_colors(vals, categories=categories)
                legend.update(leg)
                for k, v in pd.Series(vals).dropna().astype(str).value_counts().items():
                    counts[k] = counts.get(k, 0) + int(v)
            else:
                rgba = np.tile(GREY, (len(ly.data), 1))
                missing.append(ly.name)
            self._set_hover(ly, None)
            paint(ly, rgba)
        self._color = {
            "key": column,
            "source": "obs",
            "kind": "categorical",
            "categories": categories,
        }
        self._set_continuous_enabled(False)
        self.colour_bar.clear()
        self.legend.clear()
        self.legend.setVisible(True)
        for cat in categories:
            item = QListWidgetItem(swatch(legend[cat]), f"{cat}  ({counts.get(cat, 0):,})")
            item.setData(Qt.UserRole, cat)
            self.legend.addItem(item)
        msg = f"coloured by {column}: {len(categories)} categories"
        if missing:
            msg += f"; no {column} in {', '.join(missing)} (grey)"
        self.set_status(msg)

    def _show_in_annotation(self, text: str) -> None:
        """Set the Annotation box to ``text`` without recolouring."""
        i = self.annotation_combo.findText(text)
        if i >= 0 and self.annotation_combo.currentIndex() != i:
            self.annotation_combo.blockSignals(True)
            self.annotation_combo.setCurrentIndex(i)
            self.annotation_combo.blockSignals(False)

    def _recolor_continuous(self, auto: bool = False) -> None:
        c = self._color
        if not c or c.get("kind") != "continuous":
            return
        values = c["values"]
        cmap = self.cmap_combo.currentText() or "viridis"
        if auto or "clim" not in c:
            finite = [v[np.isfinite(v)] for v in values.values() if v is not None]
            allv = np.concatenate(finite) if finite else np.zeros(0, np.float32)
            _, clim = continuous_colors(allv) if allv.size else (None, (0.0, 1.0))
            c["clim"] = clim
            for sb, v in ((self.clim_min, clim[0]), (self.clim_max, clim[1])):
                sb.blockSignals(True)
                sb.setValue(float(v))
                sb.blockSignals(False)
        else:
            lo, hi = self.clim_min.value(), self.clim_max.value()
            c["clim"] = (lo, hi if hi > lo else lo + 1e-6)
        missing = []
        for ly in self._layers:
            v = values.get(id(ly))
            if v is None or len(v) != len(ly.data):
                rgba = np.tile(GREY, (len(ly.data), 1))
                missing.append(ly.name)
            else:
                rgba, _ = continuous_colors(v, clim=c["clim"], cmap=cmap)
            if c["source"] == "gene":
                self._set_hover(ly, c["key"], v)
            else:
                self._set_hover(ly, None)
            paint(ly, rgba)
        self._set_continuous_enabled(True)
        self.legend.clear()
        self.legend.setVisible(False)
        lo, hi = c["clim"]
        self.colour_bar.show_range(c["key"], cmap, lo, hi)
        what = "gene" if c["source"] == "gene" else "annotation"
        msg = f"coloured by {what} {c['key']} ({cmap}, {lo:.3g} to {hi:.3g})"
        if missing:
            msg += f"; {c['key']} not measured in {', '.join(missing)} (grey)"
        self.set_status(msg)

    def _reapply(self) -> None:
        """Colour newly added sections like the others (when any section has the key)."""
        c = self._color
        key = c.get("key")
        if c.get("source") == "gene" and self._resolve_gene(key) is not None:
            self.color_by_gene(key)
        elif key and any(key in ly.metadata["adata"].obs.columns for ly in self._layers):
            self.color_by_annotation(key)

    def reset_colors(self) -> None:
        """Back to each section's own default colouring (and no hover gene column)."""
        from ..layers import color_values

        for ly in self._layers:
            _, rgba, _ = color_values(ly.metadata["adata"], ly.metadata.get("color_by"))
            self._set_hover(ly, None)
            paint(ly, rgba)
        self._color = {}
        self.legend.clear()
        self.legend.setVisible(True)
        self.colour_bar.clear()
        self._set_continuous_enabled(False)
        self.set_status("default colours")

    def _set_hover(self, layer, gene: str | None, values=None) -> None:
        """Keep one hover-only feature column: the gene the cells are coloured by."""
        feats = layer.features
        old = [c for c in layer.metadata.get(HOVER_KEY, []) if c in feats.columns]
        if gene is None and not old:
            return
        if gene is not None and old == [gene] and values is not None:
            return  # already there
        feats = feats.drop(columns=old)
        hover = []
        if gene is not None and gene not in feats.columns:
            feats[gene] = (
                np.asarray(values, np.float32)
                if values is not None
                else np.full(len(layer.data), np.nan, np.float32)
            )
            hover = [gene]
        layer.metadata[HOVER_KEY] = hover
        layer.features = feats

    def legend_categories(self) -> list[str]:
        """The categories the legend shows, in order (or the gene / column the colour
        bar shows)."""
        if self.colour_bar.limits is not None:
            return [self.colour_bar.title.text()]
        return [self.legend.item(i).data(Qt.UserRole) for i in range(self.legend.count())]

    # ------------------------------------------------------------------ select
    def _fill_select_values(self, column: str) -> None:
        vals: set[str] = set()
        for ly in self._layers:
            obs = ly.metadata["adata"].obs
            if column and column in obs.columns:
                vals.update(obs[column].dropna().astype(str).unique())
        current = self.select_value.currentText()
        self.select_value.clear()
        self.select_value.addItems(sorted(vals))
        i = self.select_value.findText(current)
        if i >= 0:
            self.select_value.setCurrentIndex(i)

    def select_cells(self, column: str | None = None, value: str | None = None) -> int:
        """Select (``layer.selected_data``) the cells whose ``column`` equals ``value`` in
        every visible section; returns how many were selected."""
        column = column or self.select_column.currentText()
        value = value if value is not None else self.select_value.currentText()
        if not column:
            return 0
        total, hit = 0, []
        for ly in self._layers:
            feats = ly.features
            if not ly.visible or column not in feats.columns:
                ly.selected_data = set()
                continue
            idx = np.flatnonzero(feats[column].astype(str).to_numpy() == str(value))
            ly.selected_data = set(idx.tolist())
            if idx.size:
                hit.append(ly)
                total += idx.size
        if hit:
            self.viewer.layers.selection.active = hit[0]
        self.set_status(
            f"selected {total:,} cells with {column} = {value} in {len(hit)} section(s)"
        )
        return total

    def clear_selection(self) -> None:
        for ly in self._layers:
            ly.selected_data = set()
        self.set_status("selection cleared")
